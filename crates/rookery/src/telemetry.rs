//! Metrics and trace ids.
//!
//! Metrics go through the `metrics` facade: they cost nothing until a recorder is installed
//! (the `rookery` binary installs a Prometheus one). Names follow Prometheus conventions; the
//! constants below are the public contract.
//!
//! A trace id is given to every client request at the gateway and travels with it: in the
//! envelope of every RPC it causes (and of pushes and kicks sent back to the gateway) and in a
//! task-local [`RequestScope`] while it is handled (with the handler's route and session inside a
//! handler), which the `logs` module writes on every log line as `request{route=.. trace_id=..
//! session=..}:`. Handlers also run in a `request` span (target [`REQUEST_SPAN_TARGET`]) at
//! `debug` level, for subscribers that export spans (OpenTelemetry): a span per request at `info`
//! would cost every request its creation and formatting whether or not anything is logged.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Histogram};

/// Connections accepted, by acceptor (`tcp`, `ws`).
pub const CONNECTIONS_TOTAL: &str = "rookery_connections_total";
/// Sessions open now, by acceptor.
pub const SESSIONS: &str = "rookery_sessions";
/// Handshakes that failed, by reason (`timeout`, `refused`, `protocol`).
pub const HANDSHAKES_FAILED_TOTAL: &str = "rookery_handshakes_failed_total";
/// Requests handled, by route and outcome (`ok` or the error code).
pub const REQUESTS_TOTAL: &str = "rookery_requests_total";
/// Handler latency, by route.
pub const HANDLER_DURATION_SECONDS: &str = "rookery_handler_duration_seconds";
/// Pushes queued to clients.
pub const PUSHES_SENT_TOTAL: &str = "rookery_pushes_sent_total";
/// Pushes that could not be queued (session closed or too slow).
pub const PUSHES_DROPPED_TOTAL: &str = "rookery_pushes_dropped_total";
/// Clients disconnected because their outbound queue overflowed.
pub const SLOW_CLIENT_DISCONNECTS_TOTAL: &str = "rookery_slow_client_disconnects_total";
/// Protocol violations that closed a connection.
pub const PROTOCOL_ERRORS_TOTAL: &str = "rookery_protocol_errors_total";
/// Connections the server closed on its own initiative, by reason (a [`DisconnectReason`]
/// label).
pub const DISCONNECTS_TOTAL: &str = "rookery_disconnects_total";
/// The `outcome` of [`REQUESTS_TOTAL`] for messages refused by the connection's rate limit
/// (never handled; `route` is the local route, or [`ROUTE_NOT_LOCAL`]).
pub const OUTCOME_RATE_LIMITED: &str = "rate_limited";
/// The `route` label of refused messages whose route is not one of this node's: the route a
/// client names is not a bounded label.
pub const ROUTE_NOT_LOCAL: &str = "*";
/// Target of the line logged for each connection the server closes, and of the summary of
/// the lines suppressed beyond `gateway.disconnect_log_per_second`.
pub const DISCONNECT_LOG_TARGET: &str = "rookery::disconnect";
/// RPC calls made, by target and outcome.
pub const RPC_CALLS_TOTAL: &str = "rookery_rpc_calls_total";
/// RPC latency, by target.
pub const RPC_DURATION_SECONDS: &str = "rookery_rpc_duration_seconds";
/// Discovery events, by kind (`found`, `updated`, `lost`).
pub const DISCOVERY_EVENTS_TOTAL: &str = "rookery_discovery_events_total";
/// Nodes known, by type.
pub const NODES: &str = "rookery_nodes";

/// Per-route figures: metric handles registered once, and counters the admin API reads.
pub struct RouteStats {
    ok: Counter,
    duration: Histogram,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Registered with the route, so that a refusal under a flood registers nothing. Last:
    /// the fields before it are the ones every request touches.
    rate_limited: Counter,
}

impl RouteStats {
    pub(crate) fn new(route: &str) -> Self {
        let route = route.to_string();
        Self {
            ok: metrics::counter!(REQUESTS_TOTAL, "route" => route.clone(), "outcome" => "ok"),
            rate_limited: metrics::counter!(
                REQUESTS_TOTAL,
                "route" => route.clone(),
                "outcome" => OUTCOME_RATE_LIMITED
            ),
            duration: metrics::histogram!(HANDLER_DURATION_SECONDS, "route" => route),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Records one handled request.
    pub(crate) fn record(&self, route: &str, secs: f64, error: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.duration.record(secs);
        match error {
            None => self.ok.increment(1),
            Some(code) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(REQUESTS_TOTAL, "route" => route.to_string(), "outcome" => code.to_string())
                    .increment(1);
            }
        }
    }

    /// Records one message refused by the rate limit (not handled, so not in
    /// [`requests`](Self::requests)).
    pub(crate) fn record_rate_limited(&self) {
        self.rate_limited.increment(1);
    }

    /// Requests handled so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests that ended in an error.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// One request that ended in an error, as the dashboard lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecentError {
    /// Unix time, milliseconds.
    pub at_ms: u64,
    /// Route.
    pub route: String,
    /// Error code.
    pub code: String,
    /// Error message.
    pub msg: String,
    /// Trace id of the request.
    pub trace_id: String,
}

/// A bounded ring of the latest errors.
#[derive(Default)]
pub struct RecentErrors {
    ring: std::sync::Mutex<std::collections::VecDeque<RecentError>>,
}

impl RecentErrors {
    /// How many errors are kept.
    pub const CAPACITY: usize = 50;

    pub(crate) fn record(&self, route: &str, e: &crate::Error, trace: u64) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == Self::CAPACITY {
            ring.pop_front();
        }
        ring.push_back(RecentError {
            at_ms,
            route: route.to_string(),
            code: e.code().to_string(),
            msg: e.msg().to_string(),
            trace_id: format_trace_id(trace),
        });
    }

    /// The kept errors, oldest first.
    pub fn snapshot(&self) -> Vec<RecentError> {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Why the server closed a connection on its own initiative: the `reason` label of
/// [`DISCONNECTS_TOTAL`]. A fixed set, so that the label stays bounded: the text sent to the
/// client in its Kick packet (which may come from the application, or describe what a client
/// sent) is logged as the line's `detail`, never used as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client kept sending beyond `gateway.rate_limit` after `max_violations` refusals.
    RateLimit,
    /// The client did not read what it was sent: its outbound queue overflowed.
    SlowClient,
    /// The client broke the protocol: a malformed packet or message, or one out of place.
    ProtocolError,
    /// The client sent nothing for two heartbeat intervals.
    HeartbeatTimeout,
    /// The client did not finish the handshake (or the WebSocket upgrade) in
    /// `gateway.handshake_timeout`.
    HandshakeTimeout,
    /// The handshake validator refused the client.
    HandshakeRefused,
    /// The application or an operator kicked or closed the session (`Session::kick`,
    /// `Session::close`, `kick_uid`, the admin API).
    Kick,
    /// The user logged in again (on this gateway or another one); the older session goes.
    DuplicateLogin,
    /// The node shut down.
    Shutdown,
}

/// Number of [`DisconnectReason`]s.
const REASONS: usize = DisconnectReason::ALL.len();

impl DisconnectReason {
    /// Every reason, in the order the admin API lists them.
    pub const ALL: [DisconnectReason; 9] = [
        Self::RateLimit,
        Self::SlowClient,
        Self::ProtocolError,
        Self::HeartbeatTimeout,
        Self::HandshakeTimeout,
        Self::HandshakeRefused,
        Self::Kick,
        Self::DuplicateLogin,
        Self::Shutdown,
    ];

    /// The metric label (and the log line's `reason`).
    pub const fn label(self) -> &'static str {
        match self {
            Self::RateLimit => "rate_limit",
            Self::SlowClient => "slow_client",
            Self::ProtocolError => "protocol_error",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HandshakeRefused => "handshake_refused",
            Self::Kick => "kick",
            Self::DuplicateLogin => "duplicate_login",
            Self::Shutdown => "shutdown",
        }
    }

    /// Logged at `warn`: a client misbehaving towards the server (flooding it, not reading,
    /// sending garbage), which may be an attack. The others are logged at `info`.
    pub const fn is_warning(self) -> bool {
        matches!(
            self,
            Self::RateLimit | Self::SlowClient | Self::ProtocolError
        )
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The connections a node closed on its own initiative: totals by reason (for the admin API),
/// [`DISCONNECTS_TOTAL`], and one log line per connection (target [`DISCONNECT_LOG_TARGET`]).
///
/// Lines are capped at `gateway.disconnect_log_per_second` in each second; beyond it they are
/// only counted by reason, and the counts are written as one summary line when the second is
/// over ([`Disconnects::summarise`], called every second). A flood of disconnects (an attack,
/// many clients dropped at once) then costs a counter each rather than a line each, and the log
/// still says how many there were.
///
/// Only touched when a connection ends, never per request.
pub struct Disconnects {
    totals: [AtomicU64; REASONS],
    per_second: u32,
    started: std::time::Instant,
    window: std::sync::Mutex<LogWindow>,
}

/// The lines of one second: how many were written, how many suppressed by reason.
#[derive(Debug, Default)]
struct LogWindow {
    /// Whole seconds since [`Disconnects::started`].
    second: u64,
    logged: u32,
    suppressed: [u64; REASONS],
}

impl LogWindow {
    /// Moves the window on to `second` if that is later; returns what the closed window
    /// suppressed, if anything.
    fn roll(&mut self, second: u64) -> Option<[u64; REASONS]> {
        if second <= self.second {
            return None;
        }
        self.second = second;
        self.logged = 0;
        let suppressed = std::mem::take(&mut self.suppressed);
        suppressed.iter().any(|&n| n > 0).then_some(suppressed)
    }

    /// Whether a line for `reason` may be written in `second` (otherwise it is counted as
    /// suppressed), and what the window it closed suppressed.
    fn admit(
        &mut self,
        reason: DisconnectReason,
        second: u64,
        per_second: u32,
    ) -> (bool, Option<[u64; REASONS]>) {
        let closed = self.roll(second);
        if self.logged < per_second {
            self.logged += 1;
            (true, closed)
        } else {
            self.suppressed[reason.index()] += 1;
            (false, closed)
        }
    }
}

impl Disconnects {
    /// Logs at most `per_second` lines a second (0: only the summaries).
    pub(crate) fn new(per_second: u32) -> Self {
        Self {
            totals: Default::default(),
            per_second,
            started: std::time::Instant::now(),
            window: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogWindow> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one connection closed by the server and logs it (or counts its line as
    /// suppressed). `session` and `uid` are absent for a connection closed during its
    /// handshake; `detail` is the text the client was sent.
    pub(crate) fn record(
        &self,
        reason: DisconnectReason,
        session: Option<u64>,
        addr: std::net::SocketAddr,
        uid: Option<&str>,
        detail: &str,
    ) {
        self.totals[reason.index()].fetch_add(1, Ordering::Relaxed);
        metrics::counter!(DISCONNECTS_TOTAL, "reason" => reason.label()).increment(1);
        let (log, closed) = {
            let mut w = self.lock();
            // Read under the lock, so that the windows only move forward.
            let second = self.started.elapsed().as_secs();
            w.admit(reason, second, self.per_second)
        };
        if let Some(suppressed) = closed {
            log_suppressed(&suppressed);
        }
        if !log {
            return;
        }
        let (session, uid) = (OrDash(session), OrDash(uid));
        if reason.is_warning() {
            tracing::warn!(
                target: DISCONNECT_LOG_TARGET,
                %session, %addr, %uid, %reason, detail, "disconnected by the server"
            );
        } else {
            tracing::info!(
                target: DISCONNECT_LOG_TARGET,
                %session, %addr, %uid, %reason, detail, "disconnected by the server"
            );
        }
    }

    /// Writes the summary of the previous second's suppressed lines, if there were any and no
    /// disconnect has written it yet. Called once a second.
    pub(crate) fn summarise(&self) {
        let closed = {
            let mut w = self.lock();
            let second = self.started.elapsed().as_secs();
            w.roll(second)
        };
        if let Some(suppressed) = closed {
            log_suppressed(&suppressed);
        }
    }

    /// Writes what the current second suppressed so far (at shutdown, after the last
    /// connection ended).
    pub(crate) fn flush(&self) {
        let suppressed = std::mem::take(&mut self.lock().suppressed);
        if suppressed.iter().any(|&n| n > 0) {
            log_suppressed(&suppressed);
        }
    }

    /// Connections closed by the server since the node started, by reason (every reason,
    /// in the order of [`DisconnectReason::ALL`]).
    pub fn totals(&self) -> [(DisconnectReason, u64); REASONS] {
        DisconnectReason::ALL.map(|r| (r, self.totals[r.index()].load(Ordering::Relaxed)))
    }

    /// Connections closed by the server for `reason` since the node started.
    pub fn total(&self, reason: DisconnectReason) -> u64 {
        self.totals[reason.index()].load(Ordering::Relaxed)
    }
}

/// The summary line: at `warn` if a warning reason is among the suppressed.
fn log_suppressed(suppressed: &[u64; REASONS]) {
    let total: u64 = suppressed.iter().sum();
    let by_reason = ByReason(suppressed);
    let warn = DisconnectReason::ALL
        .iter()
        .any(|r| r.is_warning() && suppressed[r.index()] > 0);
    if warn {
        tracing::warn!(
            target: DISCONNECT_LOG_TARGET,
            suppressed = total, %by_reason,
            "disconnect lines suppressed in the last second (gateway.disconnect_log_per_second)"
        );
    } else {
        tracing::info!(
            target: DISCONNECT_LOG_TARGET,
            suppressed = total, %by_reason,
            "disconnect lines suppressed in the last second (gateway.disconnect_log_per_second)"
        );
    }
}

/// Suppressed counts as `reason:count` pairs joined by commas (the non-zero ones), written
/// where the line is formatted.
struct ByReason<'a>(&'a [u64; REASONS]);

impl std::fmt::Display for ByReason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for r in DisconnectReason::ALL {
            let n = self.0[r.index()];
            if n > 0 {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                write!(f, "{}:{n}", r.label())?;
            }
        }
        Ok(())
    }
}

/// A value, or `-` when there is none (a connection closed before it had a session or a uid).
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// RPC metric handles by target, registered on first use (the hot path then does no registry
/// lookup for successful calls).
#[derive(Default)]
pub(crate) struct RpcMetrics {
    by_target: std::sync::RwLock<crate::FastMap<String, (Counter, Histogram)>>,
}

impl RpcMetrics {
    /// Records one call to `label` (the target's metric label: a node type, module or node).
    pub(crate) fn record(&self, label: &str, error: Option<String>, secs: f64) {
        {
            // Recorded through the cached handles under the read lock, without cloning them
            // (their reference counts would be one more line shared by every worker thread).
            let map = self.by_target.read().unwrap_or_else(|e| e.into_inner());
            if let Some((ok, duration)) = map.get(label) {
                duration.record(secs);
                Self::count(ok, label, error);
                return;
            }
        }
        let (ok, duration) = (
            metrics::counter!(RPC_CALLS_TOTAL, "target" => label.to_string(), "outcome" => "ok"),
            metrics::histogram!(RPC_DURATION_SECONDS, "target" => label.to_string()),
        );
        duration.record(secs);
        Self::count(&ok, label, error);
        let mut map = self.by_target.write().unwrap_or_else(|e| e.into_inner());
        // Targets are node types, modules or node ids: bounded by the cluster's size.
        if map.len() < 10_000 {
            map.insert(label.to_string(), (ok, duration));
        }
    }

    fn count(ok: &Counter, label: &str, error: Option<String>) {
        match error {
            None => ok.increment(1),
            Some(outcome) => metrics::counter!(
                RPC_CALLS_TOTAL,
                "target" => label.to_string(),
                "outcome" => outcome
            )
            .increment(1),
        }
    }
}

/// Target of the `request` span that wraps every handler (level `debug`).
pub const REQUEST_SPAN_TARGET: &str = "rookery::request";

/// What the current task is handling: a request's trace id and, inside a handler, its route and
/// session. Set by the framework; [`with_scope`] carries it into a task a handler spawns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestScope {
    /// The request's trace id.
    pub trace_id: u64,
    /// The route of the handler running (None outside handlers, e.g. while a gateway forwards).
    pub route: Option<std::sync::Arc<str>>,
    /// The id of the session the handler runs for (with `route`).
    pub session: Option<u64>,
}

tokio::task_local! {
    static SCOPE: RequestScope;
}

/// A fresh trace id.
pub fn new_trace_id() -> u64 {
    fastrand::u64(1..)
}

/// The trace id of the request being handled by this task, if any.
pub fn current_trace_id() -> Option<u64> {
    SCOPE.try_with(|s| s.trace_id).ok()
}

/// The scope of the request being handled by this task, if any.
pub fn current_scope() -> Option<RequestScope> {
    SCOPE.try_with(RequestScope::clone).ok()
}

/// Calls `f` with the scope of the request being handled by this task (None outside requests),
/// without copying it.
pub fn inspect_scope<R>(f: impl FnOnce(Option<&RequestScope>) -> R) -> R {
    let mut f = Some(f);
    match SCOPE.try_with(|s| (f.take().expect("called once"))(Some(s))) {
        Ok(r) => r,
        Err(_) => (f.take().expect("not called"))(None),
    }
}

/// Runs `fut` in `scope`: its log lines and the RPCs it makes carry the scope's trace id. E.g.
/// `tokio::spawn(with_scope(current_scope().unwrap(), work))` from a handler. (A plain function,
/// not an `async fn`: that would store `fut` twice in its state.)
pub fn with_scope<F: std::future::Future>(
    scope: RequestScope,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    SCOPE.scope(scope, fut)
}

/// Runs `fut` with `id` as its trace id (no handler yet).
pub(crate) fn with_trace_id<F: std::future::Future>(
    id: u64,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    with_scope(
        RequestScope {
            trace_id: id,
            route: None,
            session: None,
        },
        fut,
    )
}

/// Formats a trace id as 16 hex digits (the form in logs and envelopes).
pub fn format_trace_id(id: u64) -> String {
    TraceId(id).to_string()
}

/// A trace id's 16 hex digits, without a `String`.
pub(crate) fn trace_id_hex(id: u64) -> [u8; 16] {
    // By hand rather than `{:016x}`: formatted for every request's span at `info` and every
    // call's envelope, and the padding machinery of `fmt` costs several times the conversion.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[(id >> (60 - 4 * i)) as usize & 0xF];
    }
    out
}

/// A trace id that formats as 16 hex digits where it is written (log fields), without a
/// `String` of its own.
pub(crate) struct TraceId(pub u64);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let out = trace_id_hex(self.0);
        f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}

/// Parses a trace id from an envelope; None for empty or malformed ones.
pub fn parse_trace_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok().filter(|v| *v != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_format_roundtrip() {
        let id = new_trace_id();
        assert_eq!(parse_trace_id(&format_trace_id(id)), Some(id));
        for id in [1, 0xab, 0x0123_4567_89ab_cdef, u64::MAX, id] {
            assert_eq!(format_trace_id(id), format!("{id:016x}"));
        }
        assert_eq!(parse_trace_id(""), None);
        assert_eq!(parse_trace_id("zz"), None);
    }

    #[test]
    fn rpc_metrics_count_calls_by_target_and_outcome() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let m = RpcMetrics::default();
        metrics::with_local_recorder(&recorder, || {
            m.record("room", None, 0.001); // registers the target's handles
            m.record("room", None, 0.002); // through the cached ones
            m.record("room", Some("timeout".into()), 0.5);
            m.record("chat", Some("no_node".into()), 0.0);
        });
        let text = handle.render();
        for line in [
            r#"rookery_rpc_calls_total{target="room",outcome="ok"} 2"#,
            r#"rookery_rpc_calls_total{target="room",outcome="timeout"} 1"#,
            r#"rookery_rpc_duration_seconds_count{target="room"} 3"#,
            r#"rookery_rpc_calls_total{target="chat",outcome="no_node"} 1"#,
            r#"rookery_rpc_duration_seconds_count{target="chat"} 1"#,
            // A target's "ok" counter is registered with its first call, failed or not.
            r#"rookery_rpc_calls_total{target="chat",outcome="ok"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line} in:\n{text}"
            );
        }
    }

    #[test]
    fn disconnect_lines_are_capped_per_second_and_summarised() {
        use DisconnectReason::*;
        let mut w = LogWindow::default();
        assert_eq!(w.admit(RateLimit, 0, 2), (true, None));
        assert_eq!(w.admit(Kick, 0, 2), (true, None));
        // Beyond two lines in second 0: counted by reason, not written.
        assert_eq!(w.admit(RateLimit, 0, 2), (false, None));
        assert_eq!(w.admit(RateLimit, 0, 2), (false, None));
        assert_eq!(w.admit(SlowClient, 0, 2), (false, None));
        // The next second writes lines again and hands over second 0's counts once.
        let (log, closed) = w.admit(Kick, 1, 2);
        assert!(log);
        let closed = closed.expect("second 0 suppressed lines");
        assert_eq!(ByReason(&closed).to_string(), "rate_limit:2,slow_client:1");
        assert_eq!(closed.iter().sum::<u64>(), 3);
        // A second with nothing suppressed has no summary; an earlier second (read by a thread
        // that was late to the lock) does not move the window back.
        assert_eq!(w.roll(2), None);
        assert_eq!(w.roll(1), None);
        assert_eq!(w.second, 2);
        // 0: every line suppressed.
        let mut w = LogWindow::default();
        assert_eq!(w.admit(Shutdown, 0, 0), (false, None));
        assert_eq!(w.admit(Shutdown, 0, 0), (false, None));
        let closed = w.roll(5).unwrap();
        assert_eq!(ByReason(&closed).to_string(), "shutdown:2");
    }

    #[test]
    fn disconnect_reasons_are_a_fixed_set_of_labels() {
        let labels: Vec<_> = DisconnectReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            [
                "rate_limit",
                "slow_client",
                "protocol_error",
                "heartbeat_timeout",
                "handshake_timeout",
                "handshake_refused",
                "kick",
                "duplicate_login",
                "shutdown"
            ]
        );
        for (i, r) in DisconnectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::from(r.label())
            );
        }
        let warned: Vec<_> = DisconnectReason::ALL
            .iter()
            .filter(|r| r.is_warning())
            .map(|r| r.label())
            .collect();
        assert_eq!(warned, ["rate_limit", "slow_client", "protocol_error"]);
    }

    #[test]
    fn disconnects_count_by_reason() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let d = Disconnects::new(100);
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], 9).into();
        metrics::with_local_recorder(&recorder, || {
            d.record(DisconnectReason::Kick, Some(1), addr, Some("u"), "bye");
            d.record(DisconnectReason::Kick, Some(2), addr, None, "bye");
            d.record(DisconnectReason::HandshakeTimeout, None, addr, None, "late");
        });
        assert_eq!(d.total(DisconnectReason::Kick), 2);
        assert_eq!(d.total(DisconnectReason::Shutdown), 0);
        let totals = d.totals();
        assert_eq!(totals.len(), DisconnectReason::ALL.len());
        assert_eq!(totals[6], (DisconnectReason::Kick, 2));
        assert_eq!(totals[4], (DisconnectReason::HandshakeTimeout, 1));
        let text = handle.render();
        for line in [
            r#"rookery_disconnects_total{reason="kick"} 2"#,
            r#"rookery_disconnects_total{reason="handshake_timeout"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line} in:\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn trace_id_is_task_local() {
        assert_eq!(current_trace_id(), None);
        let seen = with_trace_id(42, async { current_trace_id() }).await;
        assert_eq!(seen, Some(42));
        let scope = RequestScope {
            trace_id: 7,
            route: Some("a.b.c".into()),
            session: Some(3),
        };
        let (seen, route) = with_scope(scope.clone(), async {
            // An inner scope (a handler inside a forwarded request) wins while it runs.
            let inner = with_trace_id(8, async { current_trace_id() }).await;
            assert_eq!(inner, Some(8));
            let route = inspect_scope(|s| s.and_then(|s| s.route.clone()));
            (current_scope(), route)
        })
        .await;
        assert_eq!(seen, Some(scope));
        assert_eq!(route.as_deref(), Some("a.b.c"));
        assert!(inspect_scope(|s| s.is_none()));
    }
}
