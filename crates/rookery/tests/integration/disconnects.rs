//! Connections the server closes on its own initiative: each is counted in
//! `rookery_disconnects_total{reason}` and logged once (session, address, uid, reason), with the
//! lines capped per second and the rest summarised; messages refused by the rate limit are
//! counted in `rookery_requests_total{outcome="rate_limited"}`. Connections the client ends are
//! neither.
//!
//! Each test records metrics and logs for its own thread only (a local recorder and a default
//! subscriber): `#[tokio::test]` runs the node's tasks on the test's thread, so every figure and
//! line a test reads is its own node's.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::common::*;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use rookery::protocol::PacketType;
use rookery::telemetry::{DisconnectReason, DISCONNECTS_TOTAL};
use rookery::{Server, REASON_DUPLICATE_LOGIN, REASON_IDLE, REASON_SHUTDOWN, REASON_SLOW_CLIENT};
use rookery_client::{Client, ClientOptions};
use serde_json::json;

/// The log message of a disconnect's line.
const LINE: &str = "disconnected by the server";
/// The start of a summary line's message.
const SUMMARY: &str = "disconnect lines suppressed";

/// Log lines written on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// The disconnect lines.
    fn lines(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(LINE))
            .map(str::to_string)
            .collect()
    }

    /// The disconnect lines of the connection from `addr`.
    fn lines_of(&self, addr: SocketAddr) -> Vec<String> {
        let field = format!("addr={addr} ");
        self.lines()
            .into_iter()
            .filter(|l| l.contains(&field))
            .collect()
    }

    fn summaries(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(SUMMARY))
            .map(str::to_string)
            .collect()
    }
}

/// A metrics recorder and a log subscriber for this thread.
struct Capture {
    recorder: PrometheusRecorder,
    logs: Logs,
}

impl Capture {
    fn new() -> Self {
        Self {
            recorder: PrometheusBuilder::new().build_recorder(),
            logs: Logs::default(),
        }
    }

    /// Installs both on this thread until the guards drop.
    fn install(
        &self,
    ) -> (
        metrics::LocalRecorderGuard<'_>,
        tracing::dispatcher::DefaultGuard,
    ) {
        use tracing_subscriber::layer::SubscriberExt;
        let writer = self.logs.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(
                rookery::logs::layer()
                    .with_writer(move || writer.clone())
                    .with_ansi(false),
            );
        (
            metrics::set_default_local_recorder(&self.recorder),
            tracing::subscriber::set_default(subscriber),
        )
    }

    /// The value of one series (`name{labels}`), if it was registered.
    fn series(&self, series: &str) -> Option<f64> {
        let text = self.recorder.handle().render();
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse().unwrap())
        })
    }

    fn disconnects(&self, reason: DisconnectReason) -> f64 {
        self.series(&format!(
            r#"{DISCONNECTS_TOTAL}{{reason="{}"}}"#,
            reason.label()
        ))
        .unwrap_or(0.0)
    }

    /// Only `reason` has been counted, `n` times.
    fn assert_only(&self, reason: DisconnectReason, n: u64) {
        for r in DisconnectReason::ALL {
            let want = if r == reason { n as f64 } else { 0.0 };
            assert_eq!(self.disconnects(r), want, "disconnects of {r}");
        }
    }
}

/// The one line a connection's disconnect wrote: it names the session (`-` without one), the
/// address, the uid (`-` without one) and the reason, at `level`.
fn assert_line(
    logs: &Logs,
    addr: SocketAddr,
    session: Option<u64>,
    uid: Option<&str>,
    reason: DisconnectReason,
    level: &str,
) -> String {
    let lines = logs.lines_of(addr);
    assert_eq!(lines.len(), 1, "one line for {addr}:\n{}", logs.text());
    let line = lines.into_iter().next().unwrap();
    let session = session.map_or("-".to_string(), |s| s.to_string());
    for field in [
        format!(" {level} rookery::disconnect: "),
        format!("session={session} "),
        format!("uid={} ", uid.unwrap_or("-")),
        format!("reason={} ", reason.label()),
    ] {
        assert!(line.contains(&field), "{field:?} missing in {line}");
    }
    line
}

/// Waits until the node counted `n` disconnects for `reason` (a connection is counted when its
/// task ends, after the client may already have seen the close).
async fn counted(app: &rookery::App, reason: DisconnectReason, n: u64) {
    eventually(&format!("{n} {reason} disconnects"), || {
        app.disconnects().total(reason) >= n
    })
    .await;
    assert_eq!(app.disconnects().total(reason), n);
}

/// The id of the session the test module saw close with this reason.
fn closed_session(probe: &Probe, reason: &str) -> u64 {
    let closed = probe.closed.lock().unwrap();
    let ids: Vec<u64> = closed
        .iter()
        .filter(|(_, r)| r.as_deref() == Some(reason))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(ids.len(), 1, "{closed:?}");
    ids[0]
}

async fn login(server: &rookery::RunningServer, uid: &str, opts: ClientOptions) -> Client {
    let c = Client::connect(&tcp_addr(server), opts).await.unwrap();
    c.request_json("test.auth.login", json!({ "uid": uid }))
        .await
        .unwrap();
    c
}

#[tokio::test]
async fn rate_limit_counts_refused_messages_and_the_disconnect() {
    let cap = Capture::new();
    let _guards = cap.install();
    let mut cfg = config();
    cfg.gateway.rate_limit.per_second = 1;
    cfg.gateway.rate_limit.burst = 1;
    cfg.gateway.rate_limit.max_violations = 2;
    let (server, probe) = start(cfg).await;
    let app = server.app().clone();
    let mut raw = Raw2::connect(&server).await;
    let addr = raw.stream.local_addr().unwrap();
    raw.handshake().await;
    // The first message is within the burst; the next three are refused, the third of them
    // beyond `max_violations`, which disconnects. The one after is never read.
    raw.request(1, "test.echo.json", b"{}").await;
    raw.request(2, "no.such.route", b"{}").await;
    raw.request(3, "test.echo.json", b"{}").await;
    raw.request(4, "test.echo.json", b"{}").await;
    raw.request(5, "test.echo.json", b"{}").await;
    assert_eq!(
        raw.expect_kick_and_close().await.as_deref(),
        Some("rate limit exceeded"),
        "the kick's text is unchanged"
    );
    counted(&app, DisconnectReason::RateLimit, 1).await;
    cap.assert_only(DisconnectReason::RateLimit, 1);
    let refused = |route: &str| {
        cap.series(&format!(
            r#"rookery_requests_total{{route="{route}",outcome="rate_limited"}}"#
        ))
    };
    assert_eq!(refused("test.echo.json"), Some(2.0));
    // A route that is not this node's is not a label of its own.
    assert_eq!(refused("*"), Some(1.0));
    assert_eq!(
        cap.series(r#"rookery_requests_total{route="test.echo.json",outcome="ok"}"#),
        Some(1.0)
    );
    let session = closed_session(&probe, "rate limit exceeded");
    let line = assert_line(
        &cap.logs,
        addr,
        Some(session),
        None,
        DisconnectReason::RateLimit,
        "WARN",
    );
    assert!(line.contains(r#"detail="rate limit exceeded""#), "{line}");
    server.shutdown().await;
    // Nothing else was open at shutdown.
    cap.assert_only(DisconnectReason::RateLimit, 1);
    assert_eq!(cap.logs.lines().len(), 1, "{}", cap.logs.text());
}

#[tokio::test]
async fn protocol_errors_before_and_after_the_handshake() {
    let cap = Capture::new();
    let _guards = cap.install();
    let (server, probe) = start(config()).await;
    let app = server.app().clone();

    let mut raw = Raw2::connect(&server).await;
    let after = raw.stream.local_addr().unwrap();
    raw.handshake().await;
    raw.send_bytes(&[9, 0, 0, 0]).await;
    let reason = raw.expect_kick_and_close().await.unwrap();
    assert!(reason.contains("unknown packet type 9"), "{reason}");
    counted(&app, DisconnectReason::ProtocolError, 1).await;
    let session = closed_session(&probe, &reason);
    let line = assert_line(
        &cap.logs,
        after,
        Some(session),
        None,
        DisconnectReason::ProtocolError,
        "WARN",
    );
    assert!(line.contains("unknown packet type 9"), "{line}");

    // Before the handshake there is no session yet.
    let mut raw = Raw2::connect(&server).await;
    let before = raw.stream.local_addr().unwrap();
    raw.send(PacketType::Data, b"\x00\x01x").await;
    assert_eq!(
        raw.expect_kick_and_close().await.as_deref(),
        Some("data before handshake")
    );
    counted(&app, DisconnectReason::ProtocolError, 2).await;
    assert_line(
        &cap.logs,
        before,
        None,
        None,
        DisconnectReason::ProtocolError,
        "WARN",
    );
    cap.assert_only(DisconnectReason::ProtocolError, 2);
    server.shutdown().await;
}

#[tokio::test]
async fn handshake_timeout_and_refusal() {
    let cap = Capture::new();
    let _guards = cap.install();
    let mut cfg = config();
    cfg.gateway.handshake_timeout = 0.2;
    let probe = Arc::new(Probe::default());
    let server = Server::builder(cfg)
        .module(TestModule { probe })
        .handshake_validator(|req| match req.user.get("token") {
            Some(t) if t == "ok" => Ok(()),
            _ => Err(rookery::Error::bad_request("bad token")),
        })
        .start()
        .await
        .unwrap();
    let app = server.app().clone();

    // Connects and says nothing.
    let mut silent = Raw2::connect(&server).await;
    let silent_addr = silent.stream.local_addr().unwrap();
    assert_eq!(
        silent.expect_kick_and_close().await.as_deref(),
        Some("handshake timeout")
    );
    counted(&app, DisconnectReason::HandshakeTimeout, 1).await;
    assert_line(
        &cap.logs,
        silent_addr,
        None,
        None,
        DisconnectReason::HandshakeTimeout,
        "INFO",
    );

    // Refused by the validator.
    let mut refused = Raw2::connect(&server).await;
    let refused_addr = refused.stream.local_addr().unwrap();
    refused
        .send(
            PacketType::Handshake,
            br#"{"sys":{},"user":{"token":"no"}}"#,
        )
        .await;
    let answer = refused.recv().await.unwrap();
    assert_eq!(answer.kind, PacketType::Handshake);
    assert_eq!(
        refused.expect_kick_and_close().await.as_deref(),
        Some("bad token")
    );
    counted(&app, DisconnectReason::HandshakeRefused, 1).await;
    let line = assert_line(
        &cap.logs,
        refused_addr,
        None,
        None,
        DisconnectReason::HandshakeRefused,
        "INFO",
    );
    assert!(line.contains(r#"detail="bad token""#), "{line}");
    assert_eq!(cap.disconnects(DisconnectReason::HandshakeTimeout), 1.0);
    assert_eq!(cap.disconnects(DisconnectReason::HandshakeRefused), 1.0);

    // Accepted, then the client leaves: not a disconnect by the server.
    let ok = Client::connect(
        &tcp_addr(&server),
        ClientOptions {
            user: json!({"token": "ok"}),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    ok.close().await;
    eventually("the client's session ends", || app.sessions().is_empty()).await;
    server.shutdown().await;
    assert_eq!(cap.logs.lines().len(), 2, "{}", cap.logs.text());
    assert_eq!(
        app.disconnects()
            .totals()
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>(),
        2
    );
}

#[tokio::test]
async fn heartbeat_timeout_names_the_user() {
    let cap = Capture::new();
    let _guards = cap.install();
    let mut cfg = config();
    cfg.gateway.heartbeat = 1;
    let (server, probe) = start(cfg).await;
    let app = server.app().clone();
    let silent = login(
        &server,
        "quiet-user",
        ClientOptions {
            heartbeat: false,
            ..ClientOptions::default()
        },
    )
    .await;
    let closed = tokio::time::timeout(WAIT, silent.closed())
        .await
        .expect("a silent session is closed");
    assert_eq!(closed.reason.as_deref(), Some(REASON_IDLE));
    counted(&app, DisconnectReason::HeartbeatTimeout, 1).await;
    let session = closed_session(&probe, REASON_IDLE);
    let lines = cap.logs.lines();
    assert_eq!(lines.len(), 1, "{}", cap.logs.text());
    assert!(
        lines[0].contains(&format!("session={session} ")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(" INFO "), "{}", lines[0]);
    assert!(lines[0].contains("uid=quiet-user "), "{}", lines[0]);
    assert!(
        lines[0].contains("reason=heartbeat_timeout "),
        "{}",
        lines[0]
    );
    cap.assert_only(DisconnectReason::HeartbeatTimeout, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn kick_and_duplicate_login() {
    let cap = Capture::new();
    let _guards = cap.install();
    let (server, probe) = start(config()).await;
    let app = server.app().clone();

    let kicked = login(&server, "kicked-user", ClientOptions::default()).await;
    app.kick_uid("kicked-user", "see you").await;
    let closed = kicked.closed().await;
    assert!(closed.kicked);
    assert_eq!(
        closed.reason.as_deref(),
        Some("see you"),
        "the text is unchanged"
    );
    counted(&app, DisconnectReason::Kick, 1).await;
    let session = closed_session(&probe, "see you");
    let lines = cap.logs.lines();
    assert_eq!(lines.len(), 1, "{}", cap.logs.text());
    for field in [
        format!("session={session} "),
        " INFO ".into(),
        "uid=kicked-user ".into(),
        "reason=kick ".into(),
        r#"detail="see you""#.into(),
    ] {
        assert!(lines[0].contains(&field), "{field} missing in {}", lines[0]);
    }

    let older = login(&server, "twice", ClientOptions::default()).await;
    let newer = login(&server, "twice", ClientOptions::default()).await;
    let closed = older.closed().await;
    assert_eq!(closed.reason.as_deref(), Some(REASON_DUPLICATE_LOGIN));
    counted(&app, DisconnectReason::DuplicateLogin, 1).await;
    let session = closed_session(&probe, REASON_DUPLICATE_LOGIN);
    let lines = cap.logs.lines();
    assert_eq!(lines.len(), 2, "{}", cap.logs.text());
    for field in [
        format!("session={session} "),
        " INFO ".into(),
        "uid=twice ".into(),
        "reason=duplicate_login ".into(),
    ] {
        assert!(lines[1].contains(&field), "{field} missing in {}", lines[1]);
    }
    assert_eq!(cap.disconnects(DisconnectReason::Kick), 1.0);
    assert_eq!(cap.disconnects(DisconnectReason::DuplicateLogin), 1.0);

    // The newer session's client leaves on its own: not counted.
    newer.close().await;
    eventually("the newer session ends", || app.sessions().is_empty()).await;
    server.shutdown().await;
    assert_eq!(cap.logs.lines().len(), 2, "{}", cap.logs.text());
    assert_eq!(cap.disconnects(DisconnectReason::Shutdown), 0.0);
}

#[tokio::test]
async fn shutdown_counts_each_open_session() {
    let cap = Capture::new();
    let _guards = cap.install();
    let (server, _) = start(config()).await;
    let app = server.app().clone();
    let a = login(&server, "stay-a", ClientOptions::default()).await;
    let b = client(&server).await;
    server.shutdown().await;
    assert_eq!(a.closed().await.reason.as_deref(), Some(REASON_SHUTDOWN));
    assert_eq!(b.closed().await.reason.as_deref(), Some(REASON_SHUTDOWN));
    // Shutdown waits for every connection task: the counts are complete when it returns.
    assert_eq!(app.disconnects().total(DisconnectReason::Shutdown), 2);
    cap.assert_only(DisconnectReason::Shutdown, 2);
    let lines = cap.logs.lines();
    assert_eq!(lines.len(), 2, "{}", cap.logs.text());
    assert!(lines
        .iter()
        .all(|l| l.contains(" INFO ") && l.contains("reason=shutdown ")));
    assert!(
        lines.iter().any(|l| l.contains("uid=stay-a "))
            && lines.iter().any(|l| l.contains("uid=- ")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn slow_client_is_counted_once() {
    let cap = Capture::new();
    let _guards = cap.install();
    let mut cfg = config();
    cfg.gateway.outbound_queue = 8;
    let (server, probe) = start(cfg).await;
    let app = server.app().clone();
    // Asks for 64 MiB of pushes and never reads.
    let mut raw = Raw2::connect(&server).await;
    let addr = raw.stream.local_addr().unwrap();
    raw.handshake().await;
    raw.request(1, "test.push.blob", br#"{"n": 2048}"#).await;
    counted(&app, DisconnectReason::SlowClient, 1).await;
    let session = closed_session(&probe, REASON_SLOW_CLIENT);
    assert_line(
        &cap.logs,
        addr,
        Some(session),
        None,
        DisconnectReason::SlowClient,
        "WARN",
    );
    cap.assert_only(DisconnectReason::SlowClient, 1);
    assert_eq!(
        cap.series("rookery_slow_client_disconnects_total"),
        Some(1.0)
    );
    drop(raw);
    server.shutdown().await;
}

/// Beyond `disconnect_log_per_second`, lines are left out and a summary per second counts them
/// by reason: every disconnect is in a line or a summary, and none in both.
#[tokio::test]
async fn lines_beyond_the_cap_are_summarised() {
    const N: usize = 6;
    let cap = Capture::new();
    let _guards = cap.install();
    let mut cfg = config();
    cfg.gateway.disconnect_log_per_second = 1;
    let (server, _) = start(cfg).await;
    let app = server.app().clone();
    let mut raws = Vec::new();
    for _ in 0..N {
        let mut raw = Raw2::connect(&server).await;
        raw.handshake().await;
        raws.push(raw);
    }
    for raw in &mut raws {
        raw.send_bytes(&[9, 0, 0, 0]).await;
    }
    for raw in &mut raws {
        assert!(raw.expect_kick_and_close().await.is_some());
    }
    counted(&app, DisconnectReason::ProtocolError, N as u64).await;
    assert_eq!(cap.disconnects(DisconnectReason::ProtocolError), N as f64);
    // The summaries come once each second is over.
    let suppressed = || -> usize {
        cap.logs
            .summaries()
            .iter()
            .map(|l| {
                let n = l.split("suppressed=").nth(1).expect("a count");
                n.split(' ').next().unwrap().parse::<usize>().unwrap()
            })
            .sum()
    };
    eventually("every disconnect in a line or a summary", || {
        cap.logs.lines().len() + suppressed() >= N
    })
    .await;
    let lines = cap.logs.lines().len();
    assert_eq!(lines + suppressed(), N, "{}", cap.logs.text());
    // One line a second: the burst spans a window or two, not six.
    assert!(
        (1..N).contains(&lines),
        "{lines} lines:\n{}",
        cap.logs.text()
    );
    let summaries = cap.logs.summaries();
    assert!(!summaries.is_empty());
    for s in &summaries {
        assert!(s.contains(" WARN rookery::disconnect: "), "{s}");
        assert!(s.contains("by_reason=protocol_error:"), "{s}");
    }
    server.shutdown().await;
    // Nothing left to summarise at shutdown.
    assert_eq!(cap.logs.summaries(), summaries);
}

/// `disconnect_log_per_second = 0`: no lines, only the summary, written at shutdown if the
/// second is not over yet.
#[tokio::test]
async fn zero_logs_only_summaries() {
    let cap = Capture::new();
    let _guards = cap.install();
    let mut cfg = config();
    cfg.gateway.disconnect_log_per_second = 0;
    let (server, _) = start(cfg).await;
    let app = server.app().clone();
    let c = login(&server, "gone", ClientOptions::default()).await;
    app.kick_uid("gone", "bye").await;
    c.closed().await;
    counted(&app, DisconnectReason::Kick, 1).await;
    server.shutdown().await;
    assert!(cap.logs.lines().is_empty(), "{}", cap.logs.text());
    let summaries = cap.logs.summaries();
    assert_eq!(summaries.len(), 1, "{}", cap.logs.text());
    assert!(summaries[0].contains("suppressed=1 "), "{}", summaries[0]);
    assert!(
        summaries[0].contains("by_reason=kick:1"),
        "{}",
        summaries[0]
    );
    assert!(summaries[0].contains(" INFO "), "{}", summaries[0]);
}
