//! `rookery serve`: runs the demo game with every module in one process.

use std::path::PathBuf;

use rookery::{CancellationToken, Config, Server};
use tokio::net::TcpListener;

/// Arguments of `rookery serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (environment overrides `ROOKERY_SECTION__KEY` apply on top).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// TCP acceptor address [default: 127.0.0.1:3250].
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// WebSocket acceptor address [default: 127.0.0.1:3251].
    #[arg(long, value_name = "ADDR")]
    pub ws: Option<String>,
    /// MQTT 3.1.1 acceptor address (mqant clients, mosquitto, MQTT.js) [default: none].
    #[arg(long, value_name = "ADDR")]
    pub mqtt: Option<String>,
    /// MQTT-over-WebSocket acceptor address (path /mqtt) [default: none].
    #[arg(long, value_name = "ADDR")]
    pub mqtt_ws: Option<String>,
    /// zinx framing acceptor address (msgIDs from [zinx] and [routes]) [default: none].
    #[arg(long, value_name = "ADDR")]
    pub zinx: Option<String>,
    /// KCP (UDP) acceptor address, pomelo protocol [default: none].
    #[arg(long, value_name = "ADDR")]
    pub kcp: Option<String>,
    /// Admin address: Prometheus /metrics, JSON /api/*, the dashboard at /
    /// [default: 127.0.0.1:3252].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// HTTP gateway address: POST /{module}/{handler}/{method} [default: 127.0.0.1:3253].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Heartbeat interval in seconds [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub heartbeat: Option<u64>,
    /// Run one process of a multi-process config: the modules and settings of
    /// `[processes.NAME]`.
    #[arg(long, value_name = "NAME", requires = "config")]
    pub process: Option<String>,
}

/// Default TCP address of the demo.
pub const DEFAULT_TCP: &str = "127.0.0.1:3250";
/// Default WebSocket address of the demo.
pub const DEFAULT_WS: &str = "127.0.0.1:3251";
/// Default admin address of the demo.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:3252";
/// Default HTTP gateway address of the demo.
pub const DEFAULT_HTTP: &str = "127.0.0.1:3253";

/// Builds the effective configuration: file (and process section), then environment, then
/// flags. Without a config file the demo's default acceptors apply; with one, the file decides.
pub fn config(args: &ServeArgs) -> Result<Config, Box<dyn std::error::Error + Send + Sync>> {
    let mut cfg = Config::load_process(args.config.as_deref(), args.process.as_deref())?;
    let demo_defaults = args.config.is_none();
    let gw = &mut cfg.gateway;
    if let Some(a) = &args.tcp {
        gw.tcp = Some(a.clone());
    }
    if let Some(a) = &args.ws {
        gw.ws = Some(a.clone());
    }
    for (flag, field) in [
        (&args.mqtt, &mut gw.mqtt),
        (&args.mqtt_ws, &mut gw.mqtt_ws),
        (&args.zinx, &mut gw.zinx),
        (&args.kcp, &mut gw.kcp),
    ] {
        if let Some(a) = flag {
            *field = Some(a.clone());
        }
    }
    if let Some(h) = args.heartbeat {
        gw.heartbeat = h;
    }
    if demo_defaults && gw.tcp.is_none() {
        gw.tcp = Some(DEFAULT_TCP.into());
    }
    if demo_defaults && gw.ws.is_none() {
        gw.ws = Some(DEFAULT_WS.into());
    }
    if demo_defaults {
        demo_protocols(&mut cfg);
    }
    if let Some(a) = &args.admin {
        cfg.admin.addr = Some(a.clone());
    }
    if let Some(a) = &args.http {
        cfg.http.addr = Some(a.clone());
    }
    if demo_defaults && cfg.admin.addr.is_none() {
        cfg.admin.addr = Some(DEFAULT_ADMIN.into());
    }
    if demo_defaults && cfg.http.addr.is_none() {
        cfg.http.addr = Some(DEFAULT_HTTP.into());
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The demo's settings for the other client protocols: MQTT clients (mosquitto_sub) log in with
/// their CONNECT username; mqant's `Login` and `Room` module types are the demo's modules; zinx
/// msgIDs 1 to 5 are the demo's routes and its pushes go out as 201 to 203.
fn demo_protocols(cfg: &mut Config) {
    cfg.mqtt.login = rookery::config::MqttLogin::Username;
    let mqant = &mut cfg.mqtt.mqant.modules;
    mqant.insert("Login".into(), "connector.entry".into());
    mqant.insert("Room".into(), "room.room".into());
    let routes = [
        "connector.entry.login",
        "room.room.join",
        "room.room.say",
        "room.room.leave",
        "room.room.list",
    ];
    for (id, route) in (1..).zip(routes) {
        cfg.zinx.routes.insert(id.to_string(), route.into());
    }
    for (id, push) in (201..).zip(["onJoin", "onMessage", "onLeave"]) {
        cfg.zinx.pushes.insert(push.into(), id);
    }
}

/// Runs the demo until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn run(
    args: ServeArgs,
    cfg: Config,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Bound before the node starts, so a taken port fails fast; the recorder is installed
    // before the routes are built so their metric handles record into it.
    // An address the user asked for must be free; the demo's default ones are skipped (with a
    // note) when taken, e.g. by another demo running.
    let admin = bind(
        cfg.admin.addr.as_deref(),
        "admin",
        explicit(&args, &args.admin),
    )
    .await?;
    let http = bind(
        cfg.http.addr.as_deref(),
        "HTTP gateway",
        explicit(&args, &args.http),
    )
    .await?;
    let metrics = admin.is_some().then(rookery_ops::install_metrics);
    let server = rookery_demo::modules(Server::builder(cfg)).start().await?;
    let tls = server.app().config().gateway.tls.is_some();
    if let Some(a) = server.tcp_addr() {
        let scheme = if tls { "tls://" } else { "" };
        println!("rookery: TCP on {scheme}{a}");
    }
    if let Some(a) = server.ws_addr() {
        let scheme = if tls { "wss" } else { "ws" };
        println!("rookery: WebSocket on {scheme}://{a}/");
    }
    if let Some(a) = server.mqtt_addr() {
        let scheme = if tls { "mqtts" } else { "mqtt" };
        println!("rookery: MQTT on {scheme}://{a}");
    }
    if let Some(a) = server.mqtt_ws_addr() {
        let scheme = if tls { "wss" } else { "ws" };
        let path = &server.app().config().mqtt.ws_path;
        println!("rookery: MQTT over WebSocket on {scheme}://{a}{path}");
    }
    if let Some(a) = server.zinx_addr() {
        println!("rookery: zinx on {a}");
    }
    if let Some(a) = server.kcp_addr() {
        println!("rookery: KCP on udp://{a}");
    }
    let ops_stop = CancellationToken::new();
    let mut ops = Vec::new();
    if let Some(l) = admin {
        println!("rookery: admin on http://{}/", l.local_addr()?);
        let app = server.app().clone();
        ops.push(tokio::spawn(rookery_ops::serve_admin(
            app,
            l,
            metrics,
            ops_stop.clone(),
        )));
    }
    if let Some(l) = http {
        println!("rookery: HTTP gateway on http://{}/", l.local_addr()?);
        let app = server.app().clone();
        ops.push(tokio::spawn(rookery_ops::serve_http_gateway(
            app,
            l,
            ops_stop.clone(),
        )));
    }
    // SIGHUP reads the TLS certificate and key again (certificates renewed in place).
    #[cfg(unix)]
    if server.app().config().gateway.tls.is_some() {
        let (app, stop) = (server.app().clone(), ops_stop.clone());
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = hup.recv() => match app.reload_tls() {
                        Ok(()) => tracing::info!("TLS certificate reloaded"),
                        Err(e) => tracing::error!(
                            error = %e,
                            cause = std::error::Error::source(&e).map(tracing::field::display),
                            "TLS certificate not reloaded; the current one stays"
                        ),
                    },
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    let node = server.app().node();
    println!(
        "rookery: node {} ({}) running [{}]",
        node.id,
        node.node_type,
        node.modules.join(", ")
    );
    let signal = {
        let stop = ops_stop.clone();
        async move {
            rookery::shutdown_signal().await;
            // The admin server and HTTP gateway stop accepting with the node; their in-flight
            // requests finish while it drains.
            stop.cancel();
        }
    };
    let report = server.run_until(signal).await;
    ops_stop.cancel();
    for task in ops {
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "ops server failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "ops server task failed"),
            Err(_) => tracing::warn!("ops server did not stop in 5 s"),
        }
    }
    #[cfg(feature = "otel")]
    let _ = tokio::task::spawn_blocking(otel::shutdown).await;
    println!(
        "rookery: stopped ({} sessions drained{})",
        report.sessions,
        if report.drained {
            ""
        } else {
            ", drain timed out"
        }
    );
    Ok(())
}

/// True if an ops address comes from a flag or the config file rather than the demo defaults.
fn explicit(args: &ServeArgs, flag: &Option<String>) -> bool {
    flag.is_some() || args.config.is_some()
}

/// Binds an ops listener when an address is configured. Failing to bind is an error when the
/// address was asked for (`required`), a note on stderr otherwise.
async fn bind(
    addr: Option<&str>,
    what: &str,
    required: bool,
) -> Result<Option<TcpListener>, Box<dyn std::error::Error + Send + Sync>> {
    let Some(a) = addr else {
        return Ok(None);
    };
    match TcpListener::bind(a).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if required => Err(format!("cannot listen for the {what} on {a}: {e}").into()),
        Err(e) => {
            eprintln!("rookery: {what} not started: cannot listen on {a}: {e}");
            Ok(None)
        }
    }
}

/// OpenTelemetry export of tracing spans (feature `otel`).
#[cfg(feature = "otel")]
pub mod otel {
    use std::sync::OnceLock;

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
    use tracing_subscriber::registry::LookupSpan;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    fn set(var: &str) -> bool {
        std::env::var(var).is_ok_and(|v| !v.is_empty())
    }

    /// A layer exporting spans over OTLP/HTTP (protobuf) in batches, when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; `None`
    /// otherwise. The service name is `OTEL_SERVICE_NAME`, else `rookery`.
    pub fn layer<S>() -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, Tracer>>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return None;
        }
        // The blocking HTTP client runs its own runtime: build it off the async runtime.
        let built = std::thread::spawn(|| {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
        })
        .join();
        let exporter = match built {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                eprintln!("rookery: OpenTelemetry export disabled: {e}");
                return None;
            }
            Err(_) => {
                eprintln!("rookery: OpenTelemetry export disabled: exporter setup panicked");
                return None;
            }
        };
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name("rookery");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("rookery");
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    /// Flushes and stops the exporter (blocking).
    pub fn shutdown() {
        if let Some(p) = PROVIDER.get() {
            if let Err(e) = p.shutdown() {
                eprintln!("rookery: OpenTelemetry shutdown: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_args() -> ServeArgs {
        ServeArgs {
            config: None,
            tcp: None,
            ws: None,
            mqtt: Some("127.0.0.1:0".into()),
            mqtt_ws: None,
            zinx: Some("127.0.0.1:0".into()),
            kcp: None,
            admin: None,
            http: None,
            heartbeat: None,
            process: None,
        }
    }

    /// Without a config, the demo's MQTT and zinx clients reach its routes as the README shows.
    #[test]
    fn the_demo_maps_mqtt_and_zinx_clients_to_its_routes() {
        let cfg = config(&demo_args()).expect("the demo's configuration");
        assert_eq!(cfg.gateway.mqtt.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(cfg.mqtt.login, rookery::config::MqttLogin::Username);
        assert_eq!(cfg.mqtt.mqant.modules["Login"], "connector.entry");
        assert_eq!(cfg.zinx.routes["1"], "connector.entry.login");
        assert_eq!(cfg.zinx.routes["5"], "room.room.list");
        assert_eq!(cfg.zinx.pushes["onMessage"], 202);
    }
}
