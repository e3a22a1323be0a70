//! Load generator behind `rookery bench`, and the P1 "ceiling" server it is compared against.
//!
//! [`run`] opens `--connections` client connections (TCP or WebSocket) speaking the
//! pomelo/pitaya client protocol (handshake, heartbeats, Data packets), then drives requests
//! for `--duration` seconds, either closed loop (`--inflight` requests outstanding per
//! connection) or open loop (`--rate` requests/s in total, latency measured from the scheduled
//! send time so that a stalled server cannot hide its stalls; a dedicated pacer thread wakes
//! each connection when its next request is due, with sub-millisecond precision, see
//! `pacer.rs`). It returns a [`Report`] with throughput and latency percentiles;
//! [`print_table`] renders it for humans, and the caller prints it as JSON for `--json`.
//!
//! [`serve_ceiling`] is a minimal server speaking the same framing: the yardstick (target P1)
//! that Rookery's request path is measured against with the same load generator.
//!
//! Figures: `requests` counts responses (including error responses) received inside the
//! measurement window (`--warmup` seconds after the start, for `--duration` seconds); `errors`
//! counts error responses, timeouts and requests lost with a closed connection, and
//! `errors_by_code` splits them by code; latencies are in microseconds.
//!
//! A connection the server ends (a Kick, e.g. for breaking its rate limit, or a closed socket)
//! measures nothing from then on, so a rate over the whole window would be a figure nobody
//! measured: such connections are counted in `closed_by_server` with their reasons, the rates
//! are taken over `measured_secs` (the part of the window during which connections were open),
//! the run stops waiting once every connection has ended, and [`check`] fails the run unless
//! `--allow-disconnects` says disconnects are expected.

mod ceiling;
mod conn;
mod pacer;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rookery_protocol::{Message, Route, RouteName};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

pub use ceiling::{serve_ceiling, serve_ceiling_with, start_nats_echo, Answer, RAW_NATS_SUBJECT};
pub use conn::{CLOSED, TIMEOUT, UNKNOWN};

use conn::{Plan, Start, TaskStats};
use pacer::{Pacer, Schedule};

/// Command-line options of `rookery bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server address: host:port, tls://host:port (TCP over TLS), ws://host:port/path or
    /// wss://host:port/path (WebSocket, plain or over TLS).
    #[arg(long, default_value = "127.0.0.1:3250")]
    pub addr: String,
    /// Connect over WebSocket (ws://ADDR plus --ws-path) instead of raw TCP.
    #[arg(long)]
    pub ws: bool,
    /// Connect over KCP (UDP) instead of TCP: the same as a kcp:// address.
    #[arg(long)]
    pub kcp: bool,
    /// Trust the CA certificates in this PEM file for tls:// and wss:// (instead of the
    /// system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// Do not check the server's certificate (self-signed test setups only).
    #[arg(long)]
    pub insecure: bool,
    /// Path of the WebSocket endpoint.
    #[arg(long, default_value = "/")]
    pub ws_path: String,
    /// Number of client connections.
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Seconds of measurement (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Route of each request.
    #[arg(long, default_value = "room.room.list")]
    pub route: String,
    /// JSON body of each request.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Closed loop: requests kept in flight per connection (0: send none).
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    /// Open loop: total requests/s across all connections (--inflight is then ignored; 0: send
    /// none).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Before measuring, each connection sends `connector.entry.login {"uid":"bench-<n>"}`.
    #[arg(long)]
    pub login: bool,
    /// New connections per second, at most.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Count pushes on this route (fan-out tests); a numeric `ts_us` field in a push (sender's
    /// wall clock, microseconds since the UNIX epoch) gives its delivery latency.
    #[arg(long)]
    pub push_route: Option<String>,
    /// Print one JSON object at the end instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Do not show progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Per-request timeout in seconds (a timeout counts as an error); also bounds connect,
    /// handshake and login.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Comma-separated local addresses to bind client sockets to, round robin (e.g.
    /// 127.0.0.2,127.0.0.3), to go beyond one source address's port range.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Seconds after the start excluded from the figures.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Idle test: connect (and log in), report, then keep the connections open for --duration
    /// sending only heartbeats.
    #[arg(long)]
    pub hold: bool,
    /// Serve this generator's own connections in turn when its core is saturated, so that it
    /// adds no queueing tail of its own to the latencies (with tokio's default schedule, a
    /// saturated generator leaves some connections' responses unread for ~150 ms). Costs the
    /// generator throughput with thousands of connections; for latency comparisons.
    #[arg(long)]
    pub fair: bool,
    /// Succeed even when the server closed connections before the end of the run (by default
    /// that fails the run: those connections measured nothing after they closed).
    #[arg(long)]
    pub allow_disconnects: bool,
}

/// Global-queue interval of the generator's runtime with `--fair` (see
/// `rookery::config::RuntimeConfig::global_queue_interval`).
pub const FAIR_GLOBAL_QUEUE_INTERVAL: u32 = 2;

impl BenchArgs {
    /// The runtime this run's generator should use: tokio's defaults, or with `--fair` a global
    /// queue looked at every [`FAIR_GLOBAL_QUEUE_INTERVAL`] polls.
    pub fn runtime_config(&self) -> rookery::config::RuntimeConfig {
        rookery::config::RuntimeConfig {
            global_queue_interval: if self.fair {
                FAIR_GLOBAL_QUEUE_INTERVAL
            } else {
                0
            },
            ..Default::default()
        }
    }
}

/// Connections the server closed before the end, in total and by reason: the Kick's reason (e.g.
/// `rate limit exceeded`), or how the socket ended (`closed without a kick`, `read error: ...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClosedByServer {
    /// How many.
    pub total: u64,
    /// How many of each reason.
    pub reasons: BTreeMap<String, u64>,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Connections established (handshake, and login if asked, completed).
    pub connections: usize,
    /// Connections that could not be established (connect, handshake or login failed).
    pub connect_errors: u64,
    /// Responses received in the measurement window, error responses included.
    pub requests: u64,
    /// Error responses (flag 0x20), timeouts, and requests lost with a closed connection.
    pub errors: u64,
    /// Requests unanswered after `--timeout`, or still unanswered when the drain after the
    /// window ended (also counted in `errors`).
    pub timeouts: u64,
    /// `errors` by cause: the code of each error response (e.g. `RK-429`), `TIMEOUT` for
    /// requests unanswered in time, `CLOSED` for requests lost when the server closed their
    /// connection, `UNKNOWN` for error responses without a readable code.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Established connections that the server closed before the generator was done with them
    /// (kicked, socket closed or broken), with their reasons.
    pub closed_by_server: ClosedByServer,
    /// Length of the measurement window, seconds (0 when no connection was established).
    pub duration_secs: f64,
    /// The part of the window during which connections were open, seconds: `duration_secs`
    /// unless the server closed every connection before the window's end (then up to the last
    /// close; 0 if they were all closed before the window began).
    pub measured_secs: f64,
    /// `requests / measured_secs` (0 when `measured_secs` is 0).
    pub requests_per_sec: f64,
    /// Median request latency, microseconds.
    pub p50_us: u64,
    /// 90th percentile request latency, microseconds.
    pub p90_us: u64,
    /// 99th percentile request latency, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile request latency, microseconds.
    pub p999_us: u64,
    /// Largest request latency, microseconds.
    pub max_us: u64,
    /// Mean request latency, microseconds.
    pub mean_us: f64,
    /// Pushes received on `--push-route` in the window (from the handshake on when there is no
    /// warm-up).
    pub pushes: u64,
    /// `pushes / measured_secs`.
    pub pushes_per_sec: f64,
    /// Median push latency (from the push's `ts_us`), microseconds.
    pub push_p50_us: u64,
    /// 99th percentile push latency, microseconds.
    pub push_p99_us: u64,
}

/// Latency histograms, sharded so that thousands of connections do not each hold one (a
/// histogram covering 1 µs..60 s at 3 significant figures is ~100 KiB). Each connection buffers
/// samples and records them under its shard's lock in batches.
pub(crate) struct Shared {
    latency: Vec<Mutex<Histogram<u64>>>,
    push_latency: Vec<Mutex<Histogram<u64>>>,
    /// Responses received so far (progress display), flushed in batches.
    pub(crate) completed: AtomicU64,
    /// Pushes counted so far (progress display), flushed in batches.
    pub(crate) pushes: AtomicU64,
    /// Open loop: the largest delay (microseconds) between a request's scheduled time and its
    /// sending since the pacer last took it (the pacer adapts its cadence to it).
    pub(crate) send_lag_us: Arc<AtomicU64>,
    /// Connections set up and not yet ended.
    pub(crate) running: AtomicUsize,
    /// Raised when `running` drops to 0.
    pub(crate) all_ended: Notify,
}

/// Highest latency a histogram records (larger values are clamped): 60 s in microseconds.
const HIST_MAX_US: u64 = 60_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

impl Shared {
    fn new(shards: usize, pushes: bool) -> Self {
        let shards = shards.max(1);
        Self {
            latency: (0..shards).map(|_| Mutex::new(new_histogram())).collect(),
            push_latency: if pushes {
                (0..shards).map(|_| Mutex::new(new_histogram())).collect()
            } else {
                Vec::new()
            },
            completed: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            send_lag_us: Arc::new(AtomicU64::new(0)),
            running: AtomicUsize::new(0),
            all_ended: Notify::new(),
        }
    }

    /// Records and clears a batch of samples into shard `shard`.
    pub(crate) fn record(&self, shard: usize, samples: &mut Vec<u64>, push: bool) {
        if samples.is_empty() {
            return;
        }
        let set = if push {
            &self.push_latency
        } else {
            &self.latency
        };
        if let Some(m) = set.get(shard % set.len().max(1)) {
            let mut h = m.lock().unwrap_or_else(|e| e.into_inner());
            for &v in samples.iter() {
                h.saturating_record(v);
            }
        }
        samples.clear();
    }

    fn merged(&self, push: bool) -> Histogram<u64> {
        let mut total = new_histogram();
        let set = if push {
            &self.push_latency
        } else {
            &self.latency
        };
        for m in set {
            let h = m.lock().unwrap_or_else(|e| e.into_inner());
            let _ = total.add(&*h);
        }
        total
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Extra time, after each connection's own deadlines, before the coordinator aborts stragglers.
const STRAGGLER_GRACE: Duration = Duration::from_secs(3);

fn secs(name: &str, v: f64) -> Result<Duration, BoxError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| format!("--{name} must be a finite number >= 0, got {v}").into())
}

/// Validates the arguments and resolves the target.
async fn plan(args: &BenchArgs) -> Result<Plan, BoxError> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if args.connect_rate.is_nan() || args.connect_rate <= 0.0 {
        return Err("--connect-rate must be > 0".into());
    }
    if let Some(r) = args.rate {
        if !(r >= 0.0 && r.is_finite()) {
            return Err(format!("--rate must be a finite number >= 0, got {r}").into());
        }
    }
    let timeout = secs("timeout", args.timeout)?;
    if timeout.is_zero() {
        return Err("--timeout must be > 0".into());
    }
    let duration = secs("duration", args.duration)?;
    let warmup = secs("warmup", args.warmup)?;
    // Validate route and payload once: they are pre-encoded per connection.
    let route = RouteName::try_from(args.route.as_str())
        .map_err(|e| format!("bad --route {:?}: {e}", args.route))?;
    let payload = Bytes::from(args.payload.clone().into_bytes());
    Message::request(u64::MAX, Route::Name(route), payload.clone())
        .to_packet_bytes()
        .map_err(|e| format!("request does not fit in a packet: {e}"))?;
    let source_ips = match &args.source_ips {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|e| format!("bad --source-ips entry {s:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    // A scheme in the address: TLS and WebSocket (whose path it then gives).
    let (tls, ws, rest) = match args.addr.split_once("://") {
        None => (false, args.ws, args.addr.as_str()),
        Some(("tls", r)) => (true, args.ws, r),
        Some(("ws", r)) => (false, true, r),
        Some(("wss", r)) => (true, true, r),
        Some(("kcp", r)) => (false, false, r),
        Some((other, _)) => return Err(format!("unknown scheme {other}:// in --addr").into()),
    };
    let kcp = args.kcp || args.addr.starts_with("kcp://");
    if kcp && (tls || ws) {
        return Err("KCP carries the packets itself: not with TLS or WebSocket".into());
    }
    let (host_port, url_path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let tls = if tls {
        let opts = rookery_client::TlsOptions {
            ca: args.ca.clone(),
            insecure: args.insecure,
        };
        let host = match host_port.rfind(':') {
            Some(i) if !host_port[i..].contains(']') => &host_port[..i],
            _ => host_port,
        };
        let config = rookery_client::tls::config(&opts)?;
        Some((
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            rookery_client::tls::server_name(host)?,
        ))
    } else {
        None
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .map_err(|e| format!("cannot resolve {host_port:?}: {e}"))?
        .collect();
    // Prefer an address of the same family as the source addresses.
    let target = match source_ips.first() {
        Some(ip) => addrs.iter().find(|a| a.is_ipv4() == ip.is_ipv4()).copied(),
        None => None,
    }
    .or_else(|| addrs.first().copied())
    .ok_or_else(|| format!("{:?} resolves to no address", args.addr))?;
    let ws_url = ws.then(|| {
        let path = match url_path {
            Some(p) => p.to_string(),
            None if args.ws_path.starts_with('/') => args.ws_path.clone(),
            None => format!("/{}", args.ws_path),
        };
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{host_port}{path}")
    });
    Ok(Plan {
        target,
        tls,
        ws_url,
        kcp,
        source_ips,
        connections: args.connections,
        inflight: args.inflight,
        rate: args.rate,
        hold: args.hold,
        route: args.route.clone(),
        payload,
        login: args.login,
        push_route: args.push_route.clone(),
        timeout,
        warmup,
        duration,
        ws_read_buffer: if args.connections > 1000 || args.hold {
            4 * 1024
        } else {
            32 * 1024
        },
    })
}

/// Runs one benchmark: connect, measure, drain, report. Never hangs: connect, handshake, login
/// and the final drain all have deadlines, and the coordinator aborts any connection task still
/// running shortly after them. Progress goes to stderr (unless `--no-progress` or `--json`);
/// nothing is printed on stdout.
pub async fn run(args: BenchArgs) -> Result<Report, Box<dyn std::error::Error + Send + Sync>> {
    let plan = Arc::new(plan(&args).await?);
    let n = plan.connections;
    let shared = Arc::new(Shared::new(n.min(16), plan.push_route.is_some()));
    let quiet = args.json || args.no_progress;
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(n as u64);
        if let Ok(style) =
            ProgressStyle::with_template("connecting [{bar:40}] {pos}/{len} ({per_sec}) {elapsed}")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    };

    // Open loop: one wake-up signal per connection, raised by the pacer thread when the
    // connection's next request is due.
    let paced = plan.sends() && plan.rate.is_some();
    let wakers: Vec<Option<Arc<Notify>>> = (0..n)
        .map(|_| paced.then(|| Arc::new(Notify::new())))
        .collect();

    // Connect phase: spawn the connection tasks at most `connect_rate` per second.
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), conn::SetupError>>();
    let (start_tx, start_rx) = watch::channel::<Option<Start>>(None);
    let mut handles = Vec::with_capacity(n);
    let pace = Duration::try_from_secs_f64(1.0 / args.connect_rate).unwrap_or(Duration::ZERO);
    let t0 = Instant::now();
    for (i, wake) in wakers.iter().enumerate() {
        if let Some(at) = pace.checked_mul(i as u32).and_then(|d| t0.checked_add(d)) {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
        }
        handles.push(tokio::spawn(conn::connection(
            i,
            plan.clone(),
            shared.clone(),
            wake.clone(),
            ready_tx.clone(),
            start_rx.clone(),
            pb.clone(),
        )));
    }
    drop(ready_tx);
    drop(start_rx);
    // Every task reports once, within its own setup deadlines (3 x timeout); bound it anyway.
    let setup_deadline = Instant::now() + plan.timeout * 3 + STRAGGLER_GRACE;
    let mut live = 0usize;
    let mut connect_errors = 0u64;
    let mut first_error = None;
    while live + (connect_errors as usize) < n {
        match tokio::time::timeout_at(setup_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => live += 1,
            Ok(Some(Err(e))) => {
                connect_errors += 1;
                first_error.get_or_insert(e.to_string());
            }
            // All senders gone (tasks ended or panicked) or deadline: the rest failed.
            Ok(None) | Err(_) => {
                connect_errors = (n - live) as u64;
                first_error.get_or_insert_with(|| "connection setup did not finish".to_string());
                break;
            }
        }
    }
    pb.finish_and_clear();
    if let (Some(e), false) = (&first_error, args.no_progress) {
        eprintln!("rookery-bench: {connect_errors} of {n} connections failed; first error: {e}");
    }

    if live == 0 {
        for h in &handles {
            h.abort();
        }
        return Ok(report(
            &plan,
            &shared,
            0,
            connect_errors,
            TaskStats::default(),
            Window::default(),
        ));
    }

    // Measurement phase.
    let start = Instant::now();
    let measure_end = start + plan.warmup + plan.duration;
    // The pacer wakes the connections on the shared schedule until the end of the window (the
    // slots of connections that failed stay empty: their signals have no listener); it is
    // stopped and joined when dropped (at the end of this function, or on cancellation).
    // Should the thread not start, connections pace themselves on tokio's timers.
    let pacer = match plan
        .rate
        .and_then(|rate| Schedule::new(start, rate, live, n))
    {
        Some(schedule) if paced => {
            let wakers = wakers.into_iter().flatten().collect();
            match Pacer::spawn(schedule, measure_end, wakers, shared.send_lag_us.clone()) {
                Ok(p) => Some(p),
                Err(e) => {
                    if !args.no_progress {
                        eprintln!("rookery-bench: no pacer thread ({e}); pacing on tokio timers");
                    }
                    None
                }
            }
        }
        _ => None,
    };
    let _ = start_tx.send(Some(Start {
        at: start,
        live,
        paced: pacer.is_some(),
    }));
    if plan.hold && !args.no_progress {
        eprintln!(
            "rookery-bench: holding {live} connections ({connect_errors} failed) for {:.1} s",
            plan.duration.as_secs_f64()
        );
    }
    let total = (plan.warmup + plan.duration).as_secs_f64().ceil() as u64;
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(total.max(1));
        if let Ok(style) = ProgressStyle::with_template("measuring [{bar:40}] {pos}/{len} s {msg}")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    };
    let mut last = (0u64, 0u64);
    let mut next_tick = start + Duration::from_secs(1);
    let mut second = 0u64;
    let mut all_ended = false;
    while next_tick < measure_end + Duration::from_millis(1) {
        tokio::select! {
            _ = tokio::time::sleep_until(next_tick.min(measure_end)) => {}
            // Every connection ended (the server closed them): nothing is left to measure.
            _ = shared.all_ended.notified() => {
                if shared.running.load(Ordering::Acquire) == 0 {
                    all_ended = true;
                    break;
                }
                continue;
            }
        }
        second += 1;
        let done = shared.completed.load(Ordering::Relaxed);
        let pushes = shared.pushes.load(Ordering::Relaxed);
        let mut msg = if plan.hold {
            format!("holding {live} connections")
        } else {
            format!("{} req/s", done - last.0)
        };
        if plan.push_route.is_some() {
            msg.push_str(&format!(", {} push/s", pushes - last.1));
        }
        pb.set_message(msg);
        pb.set_position(second.min(total));
        last = (done, pushes);
        if next_tick >= measure_end {
            break;
        }
        next_tick += Duration::from_secs(1);
    }
    if !all_ended && measure_end > Instant::now() {
        tokio::select! {
            _ = tokio::time::sleep_until(measure_end) => {}
            _ = shared.all_ended.notified() => {}
        }
    }
    pb.finish_and_clear();

    // Collect: every task ends by itself within the drain; abort any straggler after a grace.
    let deadline = measure_end + conn::drain_time(plan.timeout) + STRAGGLER_GRACE;
    let mut totals = TaskStats::default();
    let mut closed = BTreeMap::<String, u64>::new();
    // The end of the part of the window during which connections were open: the window's end
    // while any connection stayed (or is not accounted for), else the last close.
    let mut last_open = None::<Instant>;
    let mut accounted = 0usize;
    for mut h in handles {
        match tokio::time::timeout_at(deadline, &mut h).await {
            Ok(Ok(Some(stats))) => {
                totals.add(&stats);
                accounted += 1;
                let end = match &stats.closed {
                    Some((reason, at)) => {
                        *closed.entry(reason.clone()).or_default() += 1;
                        *at
                    }
                    None => measure_end,
                };
                last_open = Some(last_open.map_or(end, |l| l.max(end)));
            }
            Ok(_) => {}
            Err(_) => h.abort(),
        }
    }
    drop(start_tx);
    drop(pacer);
    let window_start = start + plan.warmup;
    let open_until = match last_open {
        Some(t) if accounted == live => t.clamp(window_start, measure_end),
        _ => measure_end,
    };
    let window = Window {
        duration_secs: plan.duration.as_secs_f64(),
        measured_secs: open_until.duration_since(window_start).as_secs_f64(),
        closed,
    };
    Ok(report(&plan, &shared, live, connect_errors, totals, window))
}

/// How much of the measurement window was measured, and which connections the server closed.
#[derive(Default)]
struct Window {
    duration_secs: f64,
    measured_secs: f64,
    closed: BTreeMap<String, u64>,
}

fn report(
    plan: &Plan,
    shared: &Shared,
    live: usize,
    connect_errors: u64,
    t: TaskStats,
    window: Window,
) -> Report {
    let Window {
        duration_secs,
        measured_secs,
        closed,
    } = window;
    let lat = shared.merged(false);
    let push = if plan.push_route.is_some() {
        shared.merged(true)
    } else {
        new_histogram()
    };
    let per_sec = |n: u64| {
        if measured_secs > 0.0 {
            n as f64 / measured_secs
        } else {
            0.0
        }
    };
    let q = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    Report {
        connections: live,
        connect_errors,
        requests: t.requests,
        errors: t.errors,
        timeouts: t.timeouts,
        errors_by_code: t.errors_by_code,
        closed_by_server: ClosedByServer {
            total: closed.values().sum(),
            reasons: closed,
        },
        duration_secs,
        measured_secs,
        requests_per_sec: per_sec(t.requests),
        p50_us: q(&lat, 0.5),
        p90_us: q(&lat, 0.9),
        p99_us: q(&lat, 0.99),
        p999_us: q(&lat, 0.999),
        max_us: if lat.is_empty() { 0 } else { lat.max() },
        mean_us: if lat.is_empty() { 0.0 } else { lat.mean() },
        pushes: t.pushes,
        pushes_per_sec: per_sec(t.pushes),
        push_p50_us: q(&push, 0.5),
        push_p99_us: q(&push, 0.99),
    }
}

/// Prints a report as a small human-readable table on stdout.
pub fn print_table(r: &Report) {
    print!("{}", table(r));
}

/// The human-readable table of a report. When the server closed connections it says so, and
/// what the throughput is over (or that there is none to give).
pub fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let list = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        t,
        "connections   {:>12}   ({} failed)",
        r.connections, r.connect_errors
    );
    if r.closed_by_server.total > 0 {
        let _ = writeln!(
            t,
            "closed by the server {:>5}   ({})",
            r.closed_by_server.total,
            list(&r.closed_by_server.reasons)
        );
    }
    if r.measured_secs < r.duration_secs {
        let _ = writeln!(
            t,
            "duration      {:>12.2} s   (connections open for {:.3} s of it)",
            r.duration_secs, r.measured_secs
        );
    } else {
        let _ = writeln!(t, "duration      {:>12.2} s", r.duration_secs);
    }
    let _ = writeln!(
        t,
        "requests      {:>12}   ({} errors, {} timeouts)",
        r.requests, r.errors, r.timeouts
    );
    if !r.errors_by_code.is_empty() {
        let _ = writeln!(t, "errors by code  {}", list(&r.errors_by_code));
    }
    if r.closed_by_server.total > 0 && r.measured_secs <= 0.0 {
        let _ = writeln!(
            t,
            "throughput    void: the server closed every connection before the window began"
        );
    } else if r.closed_by_server.total > 0 {
        let _ = writeln!(
            t,
            "throughput    {:>12.0} req/s   over the {:.3} s connections were open; NOT a figure \
             for {} connections: the server closed {} of them before the end",
            r.requests_per_sec, r.measured_secs, r.connections, r.closed_by_server.total
        );
    } else {
        let _ = writeln!(t, "throughput    {:>12.0} req/s", r.requests_per_sec);
    }
    let _ = writeln!(
        t,
        "latency (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.1}",
        r.p50_us, r.p90_us, r.p99_us, r.p999_us, r.max_us, r.mean_us
    );
    if r.pushes > 0 {
        let _ = writeln!(
            t,
            "pushes        {:>12}   ({:.0}/s; latency p50 {} us, p99 {} us)",
            r.pushes, r.pushes_per_sec, r.push_p50_us, r.push_p99_us
        );
    }
    t
}

/// The one-line hint printed when the server rate-limited the generator.
pub const RATE_LIMIT_HINT: &str = "hint: the server rate-limited these connections (RK-429): \
     raise gateway.rate_limit.per_second in its configuration, or start it with \
     ROOKERY_GATEWAY__RATE_LIMIT__PER_SECOND=0 to switch the limit off";

/// A hint for the user when the figures show the server's rate limit at work: error responses
/// `RK-429`, or connections kicked for exceeding the limit.
pub fn hint(r: &Report) -> Option<&'static str> {
    let refused = r.errors_by_code.contains_key("RK-429");
    let kicked = r
        .closed_by_server
        .reasons
        .keys()
        .any(|reason| reason.contains("rate limit"));
    (refused || kicked).then_some(RATE_LIMIT_HINT)
}

/// Whether the run counts as a success: it does not when the server closed connections before
/// the end, unless `--allow-disconnects` was given (their figures stop where they closed).
pub fn check(r: &Report, args: &BenchArgs) -> Result<(), ClosedByServerError> {
    if r.closed_by_server.total == 0 || args.allow_disconnects {
        return Ok(());
    }
    let reasons = r
        .closed_by_server
        .reasons
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(ClosedByServerError(format!(
        "the server closed {} of {} connections before the end ({reasons}); \
         pass --allow-disconnects if that is expected",
        r.closed_by_server.total, r.connections
    )))
}

/// A run the server cut short: [`check`]'s refusal, with what to do about it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClosedByServerError(String);

/// Appends a base-128 varint (low 7 bits first), as in the message layer.
pub(crate) fn put_varint(out: &mut bytes::BytesMut, mut v: u64) {
    use bytes::BufMut;
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Encoded length of a varint.
pub(crate) fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rookery bench` as its binary parses it.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn fair_asks_for_a_fair_generator_runtime() {
        use clap::Parser;
        let plain = Cli::try_parse_from(["bench"]).unwrap().bench;
        assert!(!plain.fair);
        assert_eq!(plain.runtime_config().global_queue_interval, 0);
        let fair = Cli::try_parse_from(["bench", "--fair"]).unwrap().bench;
        assert!(fair.fair);
        let cfg = fair.runtime_config();
        assert_eq!(cfg.global_queue_interval, FAIR_GLOBAL_QUEUE_INTERVAL);
        let rt = cfg.build().unwrap();
        assert_eq!(
            rt.block_on(async { tokio::spawn(async { 6 * 7 }).await.unwrap() }),
            42
        );
    }

    #[test]
    fn varint_matches_protocol_decoder() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut b = bytes::BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            assert_eq!(
                rookery_protocol::message::decode_varint(&b).unwrap(),
                (v, b.len())
            );
        }
    }
}
