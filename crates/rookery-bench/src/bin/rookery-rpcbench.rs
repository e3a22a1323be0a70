//! `rookery-rpcbench`: the node-to-node rows of the benchmark suite (P5, P9) and its broadcast
//! driver (P8).
//!
//! Modes, each with a server side (`serve`) and a load side (`run`):
//! - `rpc-tcp`: a Rookery node calls another node's echo route with `app.rpc().call(..)` over
//!   the direct TCP transport;
//! - `rpc-nats`: the same over the NATS transport;
//! - `nats-raw`: plain async-nats request/reply against a responder that echoes the payload,
//!   through the same nats-server;
//! - `tonic`: tonic (gRPC) unary echo.
//!
//! Every mode echoes the same payload (`--payload`, sent as bytes) with `--concurrency` callers
//! in a closed loop for `--duration` seconds after `--warmup`, and prints one JSON line:
//! calls/s and latency percentiles in microseconds. Without `--addr` (rpc-tcp, tonic) the
//! server side runs in the same process, which is handy for smoke tests; the suite runs the two
//! sides as two processes pinned to different cores.
//!
//! `fanout` is the broadcast test: `--users` client connections (the pomelo/pitaya protocol over
//! TCP) log in and join one room; `--senders` of them send chat messages in a closed loop, each
//! delivered as a push to every member. Deliveries are counted at the clients. A flow-control
//! window (`--window` messages in flight through the fan-out at most) keeps every client's
//! backlog small, so that a server that drops slow clients is measured, not tripped. Route
//! names are options, so the same driver runs against pinus.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rookery::{Config, Context, Error, Module, ModuleInit, Raw, RunningServer, Target};
use rookery_protocol::{ClientHandshake, HandshakeSys, Message, PacketType, Route, RouteName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default payload: a 64-byte JSON document.
const DEFAULT_PAYLOAD: &str = r#"{"data":"0123456789abcdef0123456789abcdef0123456789abcdefghijk"}"#;
/// Route of the echo handler on the callee node (module `bench`).
const ECHO_ROUTE: &str = "bench.rpc.echo";
/// Node id and type of the callee node.
const CALLEE_ID: &str = "rpcbench-callee";
const CALLEE_TYPE: &str = "echo";
/// NATS subject of the raw responder.
const RAW_SUBJECT: &str = rookery_bench::RAW_NATS_SUBJECT;
/// gRPC method path of the tonic echo service.
const GRPC_SERVICE: &str = "rookery.bench.Echo";
const GRPC_PATH: &str = "/rookery.bench.Echo/Echo";

#[derive(Debug, Parser)]
#[command(
    name = "rookery-rpcbench",
    about = "Node-to-node RPC benchmarks (Rookery TCP/NATS, raw NATS, tonic) and the broadcast driver"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the server side of a mode until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Drive a mode's server and print one JSON line.
    Run(RunArgs),
    /// Broadcast: clients in one room, pushes counted at the clients; prints one JSON line.
    Fanout(FanoutArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Rookery `app.rpc()` over the direct TCP transport.
    RpcTcp,
    /// Rookery `app.rpc()` over the NATS transport.
    RpcNats,
    /// async-nats request/reply, no framework.
    NatsRaw,
    /// tonic (gRPC) unary.
    Tonic,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::RpcTcp => "rpc-tcp",
            Mode::RpcNats => "rpc-nats",
            Mode::NatsRaw => "nats-raw",
            Mode::Tonic => "tonic",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Mode.
    mode: Mode,
    /// Listen address (rpc-tcp: the callee's transport; tonic: the gRPC server).
    #[arg(long, default_value = "127.0.0.1:4400")]
    addr: String,
    /// NATS server URL (rpc-nats, nats-raw).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Runtime worker threads (default, or 0: one per available core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Mode.
    mode: Mode,
    /// Server address (rpc-tcp, tonic); without it the server side runs in this process.
    #[arg(long)]
    addr: Option<String>,
    /// NATS server URL (rpc-nats, nats-raw).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Callers, each with one call in flight.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds before the measurement (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Payload of each call (sent as bytes).
    #[arg(long, default_value = DEFAULT_PAYLOAD)]
    payload: String,
    /// Per-call deadline, seconds (a call past it counts as an error).
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Runtime worker threads (default, or 0: one per available core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Clone, clap::Args)]
struct FanoutArgs {
    /// Gateway address (pomelo/pitaya protocol over TCP).
    #[arg(long, default_value = "127.0.0.1:3250")]
    addr: String,
    /// Members of the room (client connections).
    #[arg(long, default_value_t = 5000)]
    users: usize,
    /// Members that send messages (closed loop, one in flight each).
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Messages in flight through the fan-out at most (sent but not yet delivered to every
    /// member).
    #[arg(long, default_value_t = 32)]
    window: u64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of sending before the measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Room name.
    #[arg(long, default_value = "bench")]
    room: String,
    /// Login route (payload `{"uid": ...}`).
    #[arg(long, default_value = "connector.entry.login")]
    login_route: String,
    /// Join route (payload `{"room": ...}`).
    #[arg(long, default_value = "room.room.join")]
    join_route: String,
    /// Send route (payload `{"room": ..., "text": ...}`).
    #[arg(long, default_value = "room.room.say")]
    say_route: String,
    /// Push route counted at the clients.
    #[arg(long, default_value = "onMessage")]
    push_route: String,
    /// Prefix of the user ids.
    #[arg(long, default_value = "fan-")]
    uid_prefix: String,
    /// New connections per second at most.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// Comma-separated local addresses to bind client sockets to, round robin.
    #[arg(long)]
    source_ips: Option<String>,
    /// Seconds allowed for each setup step (connect, handshake, login, join).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Runtime worker threads (default, or 0: one per available core).
    #[arg(long)]
    threads: Option<usize>,
}

fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    rookery::config::RuntimeConfig {
        workers: threads.unwrap_or(0),
        ..Default::default()
    }
    .build()
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => runtime(a.threads)?.block_on(serve(a)),
        Cmd::Run(a) => {
            let report = runtime(a.threads)?.block_on(run(a))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Cmd::Fanout(a) => {
            let report = runtime(a.threads)?.block_on(fanout(a))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server sides.

/// Module `bench` of the callee node: `bench.rpc.echo` answers its argument's bytes.
struct EchoModule;

impl Module for EchoModule {
    fn name(&self) -> &str {
        "bench"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.handler("rpc.echo", |_ctx: Context, Raw(b): Raw| async move {
            Ok(Raw(b))
        })
        .internal();
        Ok(())
    }
}

/// Configuration of a Rookery node in these benchmarks: static discovery (the callee is the one
/// known node), the chosen transport, no client acceptor.
fn node_config(mode: Mode, id: &str, node_type: &str, callee_addr: &str, nats: &str) -> Config {
    let transport = if mode == Mode::RpcNats { "nats" } else { "tcp" };
    let listen = if id == CALLEE_ID {
        callee_addr
    } else {
        "127.0.0.1:0"
    };
    let address = if mode == Mode::RpcNats {
        ""
    } else {
        callee_addr
    };
    let text = format!(
        r#"
[node]
id = "{id}"
type = "{node_type}"
drain_timeout = 1.0
[cluster]
discovery = "static"
transport = "{transport}"
rpc_timeout = 5.0
static_nodes = [{{ id = "{CALLEE_ID}", type = "{CALLEE_TYPE}", address = "{address}", modules = ["bench"] }}]
[cluster.tcp]
listen = "{listen}"
[cluster.nats]
url = "{nats}"
subject_prefix = "rpcbench"
"#
    );
    Config::from_toml_with_env(&text, std::iter::empty()).expect("valid rpcbench node config")
}

async fn start_callee(mode: Mode, addr: &str, nats: &str) -> Result<RunningServer, BoxError> {
    let cfg = node_config(mode, CALLEE_ID, CALLEE_TYPE, addr, nats);
    Ok(rookery::Server::builder(cfg)
        .module(EchoModule)
        .start()
        .await?)
}

async fn start_nats_responder(url: &str) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    rookery_bench::start_nats_echo(url, RAW_SUBJECT).await
}

/// The tonic echo service, written out by hand (what tonic-prost-build would generate) so that
/// the crate needs no build script.
mod grpc {
    use super::GRPC_PATH;
    use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};

    /// Request and response of `Echo`: one bytes field.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoMsg {
        /// The payload.
        #[prost(bytes = "bytes", tag = "1")]
        pub payload: bytes::Bytes,
    }

    #[derive(Clone, Copy)]
    struct EchoCall;

    impl tonic::server::UnaryService<EchoMsg> for EchoCall {
        type Response = EchoMsg;
        type Future = BoxFuture<tonic::Response<EchoMsg>, tonic::Status>;

        fn call(&mut self, request: tonic::Request<EchoMsg>) -> Self::Future {
            Box::pin(async move { Ok(tonic::Response::new(request.into_inner())) })
        }
    }

    /// The server side of `rookery.bench.Echo`.
    #[derive(Clone, Copy, Default)]
    pub struct EchoServer;

    impl tonic::server::NamedService for EchoServer {
        const NAME: &'static str = super::GRPC_SERVICE;
    }

    impl<B> Service<http::Request<B>> for EchoServer
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            if req.uri().path() == GRPC_PATH {
                Box::pin(async move {
                    let codec = tonic_prost::ProstCodec::<EchoMsg, EchoMsg>::default();
                    let mut grpc = tonic::server::Grpc::new(codec);
                    Ok(grpc.unary(EchoCall, req).await)
                })
            } else {
                Box::pin(
                    async move { Ok(tonic::Status::unimplemented("no such method").into_http()) },
                )
            }
        }
    }
}

async fn start_tonic(
    addr: SocketAddr,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, BoxError> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc::EchoServer)
            .serve_with_incoming(incoming),
    ))
}

async fn serve(a: ServeArgs) -> Result<(), BoxError> {
    match a.mode {
        Mode::RpcTcp | Mode::RpcNats => {
            let server = start_callee(a.mode, &a.addr, &a.nats).await?;
            println!("rpcbench: {} callee ready on {}", a.mode.name(), a.addr);
            server.run_until(rookery::shutdown_signal()).await;
        }
        Mode::NatsRaw => {
            let task = start_nats_responder(&a.nats).await?;
            println!("rpcbench: nats-raw responder ready on {}", a.nats);
            rookery::shutdown_signal().await;
            task.abort();
        }
        Mode::Tonic => {
            let task = start_tonic(a.addr.parse()?).await?;
            println!("rpcbench: tonic server ready on {}", a.addr);
            tokio::select! {
                r = task => r??,
                _ = rookery::shutdown_signal() => {}
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Load side of the RPC modes.

/// One caller's handle on the server side.
#[derive(Clone)]
enum Caller {
    Rookery(rookery::App),
    Nats(async_nats::Client),
    Tonic(tonic::client::Grpc<tonic::transport::Channel>),
}

impl Caller {
    async fn call(&mut self, payload: &Bytes) -> Result<usize, String> {
        match self {
            Caller::Rookery(app) => {
                let Raw(b) = app
                    .rpc()
                    .call::<_, Raw>(
                        Target::Type(CALLEE_TYPE.into()),
                        ECHO_ROUTE,
                        Raw(payload.clone()),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(b.len())
            }
            Caller::Nats(c) => {
                let m = c
                    .request(RAW_SUBJECT, payload.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(m.payload.len())
            }
            Caller::Tonic(g) => {
                g.ready().await.map_err(|e| e.to_string())?;
                let codec = tonic_prost::ProstCodec::<grpc::EchoMsg, grpc::EchoMsg>::default();
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(GRPC_PATH);
                let r = g
                    .unary(
                        tonic::Request::new(grpc::EchoMsg {
                            payload: payload.clone(),
                        }),
                        path,
                        codec,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(r.into_inner().payload.len())
            }
        }
    }
}

/// One JSON line of `run`.
#[derive(Debug, serde::Serialize)]
struct RunReport {
    mode: &'static str,
    concurrency: usize,
    payload_bytes: usize,
    duration_secs: f64,
    calls: u64,
    errors: u64,
    calls_per_sec: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    mean_us: f64,
    first_error: Option<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn secs(name: &str, v: f64) -> Result<Duration, BoxError> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{name} must be >= 0, got {v}").into())
}

async fn run(a: RunArgs) -> Result<RunReport, BoxError> {
    if a.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let duration = secs("duration", a.duration)?;
    let warmup = secs("warmup", a.warmup)?;
    let call_timeout = secs("timeout", a.timeout)?;
    let payload = Bytes::from(a.payload.clone().into_bytes());

    // Server side in this process when no address is given (NATS modes: when asked for by
    // `--addr local`, since the server is the nats-server either way).
    let local = a.addr.is_none();
    let server_addr = match &a.addr {
        Some(s) => s.clone(),
        None => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.to_string()
        }
    };
    let mut keep: Vec<RunningServer> = Vec::new();
    let mut tasks = Vec::new();
    let caller = match a.mode {
        Mode::RpcTcp | Mode::RpcNats => {
            if local {
                keep.push(start_callee(a.mode, &server_addr, &a.nats).await?);
            }
            let cfg = node_config(a.mode, "rpcbench-caller", "caller", &server_addr, &a.nats);
            let node = rookery::Server::builder(cfg).start().await?;
            let app = node.app().clone();
            keep.push(node);
            Caller::Rookery(app)
        }
        Mode::NatsRaw => {
            if local {
                let t = start_nats_responder(&a.nats).await?;
                tasks.push(tokio::spawn(async move {
                    let _ = t.await;
                }));
            }
            Caller::Nats(async_nats::connect(&a.nats).await?)
        }
        Mode::Tonic => {
            if local {
                let t = start_tonic(server_addr.parse()?).await?;
                tasks.push(tokio::spawn(async move {
                    let _ = t.await;
                }));
            }
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{server_addr}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5));
            // The server may still be binding: retry the first connection for a few seconds.
            let mut tries = 0;
            let channel = loop {
                match ch.connect().await {
                    Ok(c) => break c,
                    Err(e) if tries >= 50 => return Err(e.into()),
                    Err(_) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            Caller::Tonic(tonic::client::Grpc::new(channel))
        }
    };

    // One call first: the link is up and the server answers (retried briefly: the other
    // process may be starting).
    {
        let mut c = caller.clone();
        let mut tries = 0;
        loop {
            match timeout(call_timeout, c.call(&payload)).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if tries >= 50 => return Err(format!("first call failed: {e}").into()),
                Err(_) if tries >= 50 => return Err("first call timed out".into()),
                _ => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    let t0 = Instant::now();
    let start = t0 + warmup;
    let end = start + duration;
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut workers = Vec::with_capacity(a.concurrency);
    for _ in 0..a.concurrency {
        let mut c = caller.clone();
        let payload = payload.clone();
        let first_error = first_error.clone();
        workers.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut calls = 0u64;
            let mut errors = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let r = timeout(call_timeout, c.call(&payload)).await;
                let now = Instant::now();
                if t < start || now > end {
                    continue;
                }
                match r {
                    Ok(Ok(_)) => {
                        calls += 1;
                        h.saturating_record(now.duration_since(t).as_micros() as u64);
                    }
                    Ok(Err(e)) => {
                        errors += 1;
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    }
                    Err(_) => {
                        errors += 1;
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(|| "timeout".into());
                    }
                }
            }
            (h, calls, errors)
        }));
    }
    let mut total = histogram();
    let (mut calls, mut errors) = (0u64, 0u64);
    for w in workers {
        let (h, c, e) = w.await?;
        let _ = total.add(&h);
        calls += c;
        errors += e;
    }
    for t in tasks {
        t.abort();
    }
    for s in keep {
        let _ = timeout(Duration::from_secs(3), s.shutdown()).await;
    }
    let d = duration.as_secs_f64();
    let q = |q: f64| {
        if total.is_empty() {
            0
        } else {
            total.value_at_quantile(q)
        }
    };
    let first_error = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(RunReport {
        mode: a.mode.name(),
        concurrency: a.concurrency,
        payload_bytes: payload.len(),
        duration_secs: d,
        calls,
        errors,
        calls_per_sec: if d > 0.0 { calls as f64 / d } else { 0.0 },
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if total.is_empty() { 0 } else { total.max() },
        mean_us: if total.is_empty() { 0.0 } else { total.mean() },
        first_error,
    })
}

// ---------------------------------------------------------------------------------------------
// Broadcast driver.

/// One JSON line of `fanout`.
#[derive(Debug, serde::Serialize)]
struct FanoutReport {
    users: usize,
    connect_errors: usize,
    first_error: Option<String>,
    senders: usize,
    setup_secs: f64,
    duration_secs: f64,
    /// Messages sent (answered) in the window.
    messages: u64,
    /// Pushes counted at the clients in the window.
    deliveries: u64,
    deliveries_per_sec: f64,
    messages_per_sec: f64,
    /// Delivery latency from the sender's clock in the message, microseconds (sampled).
    push_p50_us: u64,
    push_p99_us: u64,
    /// Connections the server closed during the run.
    dropped: u64,
}

struct FanPlan {
    target: SocketAddr,
    source_ips: Vec<IpAddr>,
    users: usize,
    senders: usize,
    window: u64,
    room: String,
    login_route: String,
    join_route: String,
    say_route: String,
    push_route: String,
    uid_prefix: String,
    timeout: Duration,
}

/// Counters shared by every connection.
struct FanShared {
    /// Pushes on the counted route received so far.
    deliveries: AtomicU64,
    /// Messages sent so far.
    sent: AtomicU64,
    /// Messages answered so far.
    answered: AtomicU64,
    /// Members the room holds (connections that joined).
    members: AtomicUsize,
    /// Senders may send.
    sending: AtomicBool,
    dropped: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A parsed server packet, enough for this driver.
enum Event {
    Handshake(Bytes),
    Response { id: u64, error: bool, body: Bytes },
    Push { route: Route, body: Bytes },
    Kick,
    Other,
}

/// Takes one whole packet off the front of `buf`, if there is one.
fn next_event(buf: &mut BytesMut) -> Result<Option<Event>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[1], buf[2], buf[3]]) as usize;
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let kind = buf[0];
    buf.advance(4);
    let body = buf.split_to(len).freeze();
    Ok(Some(match kind {
        1 => Event::Handshake(body),
        4 => {
            let m = Message::decode(body).map_err(|e| e.to_string())?;
            match m.kind {
                rookery_protocol::MessageType::Response => Event::Response {
                    id: m.id,
                    error: m.error,
                    body: m.payload,
                },
                rookery_protocol::MessageType::Push => match m.route {
                    Some(route) => Event::Push {
                        route,
                        body: m.payload,
                    },
                    None => Event::Other,
                },
                _ => Event::Other,
            }
        }
        5 => Event::Kick,
        _ => Event::Other,
    }))
}

/// Setup state of one driver connection.
struct FanConn {
    stream: TcpStream,
    rbuf: BytesMut,
    dict: HashMap<String, u16>,
    heartbeat: Option<Duration>,
}

impl FanConn {
    async fn read_event(&mut self) -> Result<Event, String> {
        loop {
            if let Some(e) = next_event(&mut self.rbuf)? {
                return Ok(e);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(16 * 1024);
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
        }
    }

    fn route(&self, name: &str) -> Result<Route, String> {
        match self.dict.get(name) {
            Some(&c) => Ok(Route::Code(c)),
            None => RouteName::try_from(name)
                .map(Route::Name)
                .map_err(|e| e.to_string()),
        }
    }

    /// Sends a request and waits for its response, skipping pushes.
    async fn request(&mut self, id: u64, route: &str, body: String) -> Result<Bytes, String> {
        let pkt = Message::request(id, self.route(route)?, Bytes::from(body))
            .to_packet_bytes()
            .map_err(|e| e.to_string())?;
        self.stream
            .write_all(&pkt)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match self.read_event().await? {
                Event::Response {
                    id: rid,
                    error,
                    body,
                } if rid == id => {
                    return if error {
                        Err(format!("{route}: {}", String::from_utf8_lossy(&body)))
                    } else {
                        Ok(body)
                    };
                }
                Event::Kick => return Err(format!("kicked during {route}")),
                _ => {}
            }
        }
    }
}

async fn fan_setup(plan: &FanPlan, idx: usize) -> Result<FanConn, String> {
    let socket = if plan.target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if !plan.source_ips.is_empty() {
        let ip = plan.source_ips[idx % plan.source_ips.len()];
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = timeout(plan.timeout, socket.connect(plan.target))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut c = FanConn {
        stream,
        rbuf: BytesMut::with_capacity(16 * 1024),
        dict: HashMap::new(),
        heartbeat: None,
    };
    let hs = ClientHandshake::new(
        HandshakeSys {
            client_type: Some("rookery-bench".into()),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            ..HandshakeSys::default()
        },
        serde_json::Value::Null,
    );
    let steps = async {
        c.stream
            .write_all(&hs.request_packet())
            .await
            .map_err(|e| e.to_string())?;
        let resp = loop {
            let step = match c.read_event().await? {
                Event::Handshake(b) => hs.on_packet(PacketType::Handshake, &b),
                Event::Kick => hs.on_packet(PacketType::Kick, b""),
                _ => Ok(None),
            };
            if let Some(answer) = step.map_err(|e| e.to_string())? {
                break answer;
            }
        };
        let sys = resp.sys.unwrap_or_default();
        c.heartbeat = (sys.heartbeat > 0).then(|| Duration::from_secs(sys.heartbeat));
        c.dict = sys.dict;
        c.stream
            .write_all(&ClientHandshake::ack_packet())
            .await
            .map_err(|e| e.to_string())?;
        let uid = format!("{}{idx}", plan.uid_prefix);
        c.request(
            1,
            &plan.login_route.clone(),
            json!({ "uid": uid }).to_string(),
        )
        .await?;
        c.request(
            2,
            &plan.join_route.clone(),
            json!({ "room": plan.room }).to_string(),
        )
        .await?;
        Ok::<(), String>(())
    };
    timeout(plan.timeout, steps)
        .await
        .map_err(|_| "setup timed out".to_string())??;
    Ok(c)
}

/// Finds `"text":"t<digits>` in a push body: the sender's clock in microseconds.
fn sent_at(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"text\":\"t";
    let pos = body.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = &body[pos + KEY.len()..];
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The life of one member after setup: count pushes; a sender also sends messages.
async fn fan_member(
    idx: usize,
    plan: Arc<FanPlan>,
    shared: Arc<FanShared>,
    c: FanConn,
    mut stop: watch::Receiver<bool>,
) {
    let push_route = c.route(&plan.push_route).ok();
    let say_route = c.route(&plan.say_route).ok();
    let sender = idx < plan.senders;
    let sample = idx.is_multiple_of(16);
    let mut samples: Vec<u64> = Vec::new();
    let mut next_id = 3u64;
    let mut waiting: Option<u64> = None;
    let hb = c.heartbeat.unwrap_or(Duration::from_secs(3600));
    let mut next_hb = Instant::now() + hb;
    let tick = if sender {
        Duration::from_millis(1)
    } else {
        hb.min(Duration::from_secs(1))
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let FanConn {
        stream, mut rbuf, ..
    } = c;
    let (mut rd, mut wr) = stream.into_split();
    let mut wbuf = BytesMut::new();
    loop {
        tokio::select! {
            r = rd.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) | Err(_) => {
                        if !*stop.borrow() {
                            shared.dropped.fetch_add(1, Ordering::Relaxed);
                            shared.members.fetch_sub(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    Ok(_) => {}
                }
                let mut got = 0u64;
                loop {
                    match next_event(&mut rbuf) {
                        Ok(Some(Event::Push { route, body })) => {
                            if push_route.as_ref() == Some(&route) {
                                got += 1;
                                if sample {
                                    if let Some(t) = sent_at(&body) {
                                        samples.push(now_us().saturating_sub(t));
                                    }
                                }
                            }
                        }
                        Ok(Some(Event::Response { id, .. })) => {
                            if waiting == Some(id) {
                                waiting = None;
                                shared.answered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Some(Event::Kick)) | Err(_) => {
                            if !*stop.borrow() {
                                shared.dropped.fetch_add(1, Ordering::Relaxed);
                                shared.members.fetch_sub(1, Ordering::Relaxed);
                            }
                            return;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                    }
                }
                if got > 0 {
                    shared.deliveries.fetch_add(got, Ordering::Relaxed);
                }
                if rbuf.capacity() - rbuf.len() < 4096 {
                    rbuf.reserve(64 * 1024);
                }
                if samples.len() >= 256 {
                    let mut h = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
                    for &s in &samples {
                        h.saturating_record(s);
                    }
                    samples.clear();
                }
            }
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let now = Instant::now();
        if now >= next_hb {
            wbuf.put_slice(&[PacketType::Heartbeat as u8, 0, 0, 0]);
            next_hb = now + hb;
        }
        if sender && waiting.is_none() && shared.sending.load(Ordering::Relaxed) {
            // Flow control: messages not yet delivered to every member stay under the window.
            let members = shared.members.load(Ordering::Relaxed).max(1) as u64;
            let sent = shared.sent.load(Ordering::Relaxed);
            let delivered = shared.deliveries.load(Ordering::Relaxed);
            if sent.saturating_mul(members).saturating_sub(delivered) < plan.window * members {
                if let Some(route) = &say_route {
                    let id = next_id;
                    next_id += 1;
                    let body = format!(
                        r#"{{"room":{},"text":"t{}"}}"#,
                        serde_json::Value::from(plan.room.as_str()),
                        now_us()
                    );
                    if let Ok(pkt) =
                        Message::request(id, route.clone(), Bytes::from(body)).to_packet_bytes()
                    {
                        wbuf.put_slice(&pkt);
                        waiting = Some(id);
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if !wbuf.is_empty() {
            if wr.write_all(&wbuf).await.is_err() {
                break;
            }
            wbuf.clear();
        }
    }
    if !samples.is_empty() {
        let mut h = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
        for &s in &samples {
            h.saturating_record(s);
        }
    }
}

async fn fanout(a: FanoutArgs) -> Result<FanoutReport, BoxError> {
    if a.users == 0 || a.connect_rate.is_nan() || a.connect_rate <= 0.0 {
        return Err("--users and --connect-rate must be > 0".into());
    }
    let duration = secs("duration", a.duration)?;
    let warmup = secs("warmup", a.warmup)?;
    let setup_timeout = secs("timeout", a.timeout)?;
    let target = tokio::net::lookup_host(&a.addr)
        .await?
        .next()
        .ok_or("address resolves to nothing")?;
    let source_ips = match &a.source_ips {
        None => Vec::new(),
        Some(s) => s
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(|x| x.trim().parse::<IpAddr>())
            .collect::<Result<Vec<_>, _>>()?,
    };
    let plan = Arc::new(FanPlan {
        target,
        source_ips,
        users: a.users,
        senders: a.senders.min(a.users),
        window: a.window.max(1),
        room: a.room.clone(),
        login_route: a.login_route.clone(),
        join_route: a.join_route.clone(),
        say_route: a.say_route.clone(),
        push_route: a.push_route.clone(),
        uid_prefix: a.uid_prefix.clone(),
        timeout: setup_timeout,
    });
    let shared = Arc::new(FanShared {
        deliveries: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        members: AtomicUsize::new(0),
        sending: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
        latency: Mutex::new(histogram()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let t0 = Instant::now();
    let pace = Duration::from_secs_f64(1.0 / a.connect_rate);
    let mut handles = Vec::with_capacity(plan.users);
    // Senders connect last, so that every receiver is in the room when they start.
    for i in (0..plan.users).rev() {
        let at = t0 + pace * ((plan.users - 1 - i) as u32);
        tokio::time::sleep_until(at).await;
        let plan = plan.clone();
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let stop = stop_rx.clone();
        handles.push(tokio::spawn(async move {
            match fan_setup(&plan, i).await {
                Ok(c) => {
                    shared.members.fetch_add(1, Ordering::Relaxed);
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    fan_member(i, plan, shared, c, stop).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        }));
    }
    drop(ready_tx);
    let mut ok = 0usize;
    let mut failed = 0usize;
    let mut first_error = None;
    let deadline = Instant::now() + setup_timeout + Duration::from_secs(5);
    while ok + failed < plan.users {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(e))) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            _ => {
                failed = plan.users - ok;
                first_error.get_or_insert_with(|| "setup did not finish".into());
                break;
            }
        }
    }
    let setup_secs = t0.elapsed().as_secs_f64();
    // Let the join notifications drain before sending.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.sending.store(true, Ordering::Relaxed);
    tokio::time::sleep(warmup).await;
    let d0 = shared.deliveries.load(Ordering::Relaxed);
    let m0 = shared.answered.load(Ordering::Relaxed);
    shared
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .reset();
    let w0 = Instant::now();
    // Markers for the suite, which samples the server's CPU time over the window.
    eprintln!("rpcbench: window start");
    tokio::time::sleep(duration).await;
    let d1 = shared.deliveries.load(Ordering::Relaxed);
    let m1 = shared.answered.load(Ordering::Relaxed);
    let elapsed = w0.elapsed().as_secs_f64();
    eprintln!("rpcbench: window end");
    shared.sending.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for h in handles {
        // A straggler is left behind: the process ends right after.
        let _ = timeout(Duration::from_secs(3), h).await;
    }
    let lat = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
    let q = |q: f64| {
        if lat.is_empty() {
            0
        } else {
            lat.value_at_quantile(q)
        }
    };
    Ok(FanoutReport {
        users: ok,
        connect_errors: failed,
        first_error,
        senders: plan.senders,
        setup_secs,
        duration_secs: elapsed,
        messages: m1 - m0,
        deliveries: d1 - d0,
        deliveries_per_sec: (d1 - d0) as f64 / elapsed,
        messages_per_sec: (m1 - m0) as f64 / elapsed,
        push_p50_us: q(0.5),
        push_p99_us: q(0.99),
        dropped: shared.dropped.load(Ordering::Relaxed),
    })
}
