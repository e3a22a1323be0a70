//! The client-facing gateway: acceptors (TCP, WebSocket) feeding one connection driver.
//!
//! Dependencies point one way: the accept loop (here) → `conn` (handshake, session, the
//! connection's end) → `running` (reader and writer) → `request` (what a message does); `close`
//! and `transport` are leaves every phase uses.

mod close;
pub(crate) mod conn;
pub(crate) mod kcp;
mod mqtt;
mod pomelo;
mod request;
mod running;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod tls;
mod transport;
pub(crate) mod wire;
mod zinx;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

pub use close::{REASON_IDLE, REASON_SHUTDOWN};

use crate::session::codec::Pomelo;
use crate::session::Acceptor;
use crate::telemetry::DisconnectReason;
use crate::App;
use mqtt::Mqtt;
use wire::Wire;
use zinx::Zinx;

/// Pause after an accept error (e.g. out of file descriptors) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The gateway's listeners, each optional.
pub(crate) struct Listeners {
    pub tcp: Option<TcpListener>,
    pub ws: Option<TcpListener>,
    pub mqtt: Option<TcpListener>,
    pub mqtt_ws: Option<TcpListener>,
    pub zinx: Option<TcpListener>,
}

impl Listeners {
    pub(crate) fn any(&self) -> bool {
        self.tcp.is_some()
            || self.ws.is_some()
            || self.mqtt.is_some()
            || self.mqtt_ws.is_some()
            || self.zinx.is_some()
    }
}

/// The client protocols besides pomelo, built once at start from the configuration.
pub(crate) struct Wires {
    pub mqtt: Arc<Mqtt>,
    pub zinx: Arc<Zinx>,
}

impl Wires {
    /// Fails if the zinx tables or files are wrong.
    pub(crate) fn new(config: &crate::Config) -> Result<Self, String> {
        Ok(Self {
            mqtt: Arc::new(Mqtt::new(config)),
            zinx: Arc::new(Zinx::new(config)?),
        })
    }
}

/// Accepts connections on every listener until `stop` fires. Each connection runs as a task
/// owned by the app's tracker; `limit` caps how many run at once (each holds a permit until it
/// ends; beyond it, connections wait in the OS backlog). One loop for all listeners: a slot
/// that frees up goes to whichever listener has a connection waiting (with a loop per listener,
/// an idle listener's loop could hold the free slot while another's connection waits).
pub(crate) async fn accept_loop(
    app: App,
    listeners: Listeners,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
) {
    async fn accept(l: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
        match l {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        }
    }
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let (accepted, acceptor) = tokio::select! {
            r = accept(&listeners.tcp) => (r, Acceptor::Tcp),
            r = accept(&listeners.ws) => (r, Acceptor::Ws),
            r = accept(&listeners.mqtt) => (r, Acceptor::Mqtt),
            r = accept(&listeners.mqtt_ws) => (r, Acceptor::MqttWs),
            r = accept(&listeners.zinx) => (r, Acceptor::Zinx),
            _ = stop.cancelled() => return,
        };
        let (stream, remote) = match accepted {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, ?acceptor, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        metrics::counter!(
            crate::telemetry::CONNECTIONS_TOTAL,
            "acceptor" => conn::acceptor_label(acceptor)
        )
        .increment(1);
        // The connection's future is the task's own (no wrapper around it): every level of
        // `async` nesting is one more tag that each wake-up of the connection reads.
        let tasks = &app.inner().tasks;
        if let Some(tls) = &app.inner().tls {
            tasks.spawn(serve_tls(
                app.clone(),
                tls.acceptor(),
                stream,
                remote,
                acceptor,
                permit,
            ));
            continue;
        }
        match acceptor {
            Acceptor::Ws => {
                tasks.spawn(serve_ws(app.clone(), Either::Left(stream), remote, permit))
            }
            Acceptor::MqttWs => tasks.spawn(serve_mqtt_ws(
                app.clone(),
                Either::Left(stream),
                remote,
                permit,
            )),
            Acceptor::Mqtt => {
                let wire = app.inner().wires.mqtt.clone();
                tasks.spawn(serve_tcp(
                    app.clone(),
                    wire,
                    stream,
                    remote,
                    acceptor,
                    permit,
                ))
            }
            Acceptor::Zinx => {
                let wire = app.inner().wires.zinx.clone();
                tasks.spawn(serve_tcp(
                    app.clone(),
                    wire,
                    stream,
                    remote,
                    acceptor,
                    permit,
                ))
            }
            _ => {
                let wire = Arc::new(Pomelo);
                tasks.spawn(serve_tcp(
                    app.clone(),
                    wire,
                    stream,
                    remote,
                    Acceptor::Tcp,
                    permit,
                ))
            }
        };
    }
}

/// Serves a plain TCP connection speaking `wire`. (The returned future is the connection's own,
/// not wrapped: see [`accept_loop`].)
fn serve_tcp<W: Wire>(
    app: App,
    wire: Arc<W>,
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: Acceptor,
    permit: OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let transport = transport::tcp(stream, wire.decoder(app.config().gateway.max_packet_size));
    conn::serve(app, wire, transport, remote, acceptor, permit)
}

/// Serves a connection over any byte stream (TLS, KCP, a WebSocket's bytes) speaking `wire`.
pub(super) async fn serve_stream<W: Wire>(
    app: App,
    wire: Arc<W>,
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    remote: SocketAddr,
    acceptor: Acceptor,
    permit: OwnedSemaphorePermit,
) {
    let transport = transport::stream(io, wire.decoder(app.config().gateway.max_packet_size));
    Box::pin(conn::serve(app, wire, transport, remote, acceptor, permit)).await
}

/// Closes the sessions whose clients sent nothing for two heartbeat intervals, with reason
/// [`REASON_IDLE`], until `stop` fires. One sweep over the node's sessions every
/// [`sweep_period`] instead of a timer in every connection, which each request would poll: a
/// silent client is closed between two intervals and two intervals plus a period after its last
/// packet.
///
/// The same sweep lets protocols with delivery state (MQTT's QoS 1) send again what is still
/// unacknowledged. With MQTT clients, whose keep-alives set their own, shorter timeouts, it
/// looks at least once a second.
pub(crate) async fn close_idle(app: App, stop: CancellationToken) {
    let cfg = app.config();
    let idle = cfg.gateway.heartbeat_interval() * 2;
    let mqtt = cfg.gateway.mqtt.is_some() || cfg.gateway.mqtt_ws.is_some();
    let period = match mqtt {
        true => sweep_period(idle).min(Duration::from_secs(1)),
        false => sweep_period(idle),
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = tokio::time::Instant::now().into_std();
        for s in app.sessions().idle(now, idle) {
            s.kick_as(DisconnectReason::HeartbeatTimeout, REASON_IDLE);
        }
        if mqtt {
            // Only sessions whose pushes are their own (MQTT clients with a QoS 1
            // subscription) have anything to send again.
            for s in app.sessions().own_pushes() {
                s.codec().tick(&s, now);
            }
        }
    }
}

/// Writes the summary of the disconnect lines suppressed in each second (beyond
/// `gateway.disconnect_log_per_second`) once that second is over, until `stop` fires. A tick
/// with nothing suppressed writes nothing.
pub(crate) async fn summarise_disconnects(app: App, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => app.disconnects().summarise(),
            _ = stop.cancelled() => return,
        }
    }
}

/// How often [`close_idle`] looks: an eighth of the idle timeout, within 100 ms and 5 s.
fn sweep_period(idle: Duration) -> Duration {
    (idle / 8).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// A connection that did not get through its TLS handshake or WebSocket upgrade in time.
fn timed_out(app: &App, remote: SocketAddr, what: &str) {
    app.disconnects()
        .record(DisconnectReason::HandshakeTimeout, None, remote, None, what);
}

/// A TCP connection, plain or over TLS, under a WebSocket.
// The TLS side boxed: inline, its state (kilobytes) would be part of every plain WebSocket's.
pub(crate) type WsIo = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// Serves a connection on a TLS acceptor: the TLS handshake (within the handshake deadline),
/// then the packet protocol over it, or the WebSocket upgrade.
async fn serve_tls(
    app: App,
    tls: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    acceptor: Acceptor,
    permit: OwnedSemaphorePermit,
) {
    let cfg = &app.config().gateway;
    let stream = match timeout(cfg.handshake_timeout(), tls.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            metrics::counter!(crate::telemetry::HANDSHAKES_FAILED_TOTAL, "reason" => "tls")
                .increment(1);
            return;
        }
        Err(_) => return timed_out(&app, remote, "TLS handshake timeout"),
    };
    match acceptor {
        Acceptor::Ws => serve_ws(app, Either::Right(Box::new(stream)), remote, permit).await,
        Acceptor::MqttWs => {
            serve_mqtt_ws(app, Either::Right(Box::new(stream)), remote, permit).await
        }
        Acceptor::Mqtt => {
            let wire = app.inner().wires.mqtt.clone();
            serve_stream(app, wire, stream, remote, acceptor, permit).await
        }
        Acceptor::Zinx => {
            let wire = app.inner().wires.zinx.clone();
            serve_stream(app, wire, stream, remote, acceptor, permit).await
        }
        _ => serve_stream(app, Arc::new(Pomelo), stream, remote, Acceptor::Tcp, permit).await,
    }
}

// The upgrade callback signature is fixed by tungstenite.
#[allow(clippy::result_large_err)]
async fn serve_ws(app: App, stream: WsIo, remote: SocketAddr, permit: OwnedSemaphorePermit) {
    let cfg = &app.config().gateway;
    let path = cfg.ws_path.clone();
    let check_path = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == path {
            Ok(resp)
        } else {
            let mut err = ErrorResponse::new(Some("not found".into()));
            *err.status_mut() = StatusCode::NOT_FOUND;
            Err(err)
        }
    };
    // Boxed: the upgrade's state lives on the heap only while it runs, not for the connection's
    // whole life inside the connection task.
    let upgrade = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        check_path,
        Some(transport::ws_config(cfg.max_packet_size)),
    ));
    let ws = match timeout(cfg.handshake_timeout(), upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "websocket upgrade failed");
            return;
        }
        Err(_) => return timed_out(&app, remote, "websocket upgrade timeout"),
    };
    let max = cfg.max_packet_size;
    let transport = transport::ws(ws, max);
    conn::serve(
        app,
        Arc::new(Pomelo),
        transport,
        remote,
        Acceptor::Ws,
        permit,
    )
    .await
}

/// Serves an MQTT client over WebSocket: the upgrade on `mqtt.ws_path` (answering the `mqtt`
/// subprotocol), then MQTT over the messages' bytes (a packet may span messages, or share one).
#[allow(clippy::result_large_err)]
async fn serve_mqtt_ws(app: App, stream: WsIo, remote: SocketAddr, permit: OwnedSemaphorePermit) {
    let cfg = &app.config().gateway;
    let path = app.config().mqtt.ws_path.clone();
    let negotiate = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let refuse = |status, why: &str| {
            let mut err = ErrorResponse::new(Some(why.to_string()));
            *err.status_mut() = status;
            Err(err)
        };
        if req.uri().path() != path {
            return refuse(StatusCode::NOT_FOUND, "not found");
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|p| p.eq_ignore_ascii_case("mqtt"));
        match req.headers().contains_key("sec-websocket-protocol") {
            true if !offered => refuse(StatusCode::BAD_REQUEST, "subprotocol mqtt expected"),
            true => {
                resp.headers_mut().insert(
                    "sec-websocket-protocol",
                    tokio_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
                );
                Ok(resp)
            }
            false => Ok(resp),
        }
    };
    let upgrade = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        negotiate,
        Some(transport::ws_config(cfg.max_packet_size + 8)),
    ));
    let ws = match timeout(cfg.handshake_timeout(), upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "websocket upgrade failed");
            return;
        }
        Err(_) => return timed_out(&app, remote, "websocket upgrade timeout"),
    };
    let wire = app.inner().wires.mqtt.clone();
    let io = transport::ws_bytes(ws);
    serve_stream(app, wire, io, remote, Acceptor::MqttWs, permit).await
}
