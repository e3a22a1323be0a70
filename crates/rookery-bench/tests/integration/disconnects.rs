//! Connections the server closes before the end of a run: counted with their reasons, errors
//! split by code, rates taken over the time connections were open, and the run failed unless
//! disconnects are allowed. Against a real Rookery node (port 0, a low rate limit) and a fake
//! server that closes without a kick.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rookery::{Context, Error, Json, Module, ModuleInit, RunningServer, Server};
use rookery_bench::{check, hint, run, table, Report, CLOSED, RATE_LIMIT_HINT};
use rookery_protocol::PacketCodec;
use rookery_protocol::{handshake::HandshakeResponse, packet::encode_parts, PacketType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::args;

/// Module `load`: `load.echo.json` answers its argument.
struct Load;

impl Module for Load {
    fn name(&self) -> &str {
        "load"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.handler(
            "echo.json",
            |_c: Context, Json(v): Json<serde_json::Value>| async move { Ok(Json(v)) },
        );
        Ok(())
    }
}

/// Per connection: a burst of 50 requests, then 50/s; the 6th refused request (RK-429)
/// disconnects.
const MAX_VIOLATIONS: u64 = 5;

async fn rate_limited_server() -> (RunningServer, SocketAddr) {
    let mut cfg = rookery_testkit::server::config();
    cfg.gateway.ws = None;
    cfg.gateway.rate_limit.per_second = 50;
    cfg.gateway.rate_limit.burst = 50;
    cfg.gateway.rate_limit.max_violations = MAX_VIOLATIONS as u32;
    let server = rookery_testkit::server::start(Server::builder(cfg).module(Load)).await;
    let addr = server.tcp_addr().unwrap();
    (server, addr)
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_connections_are_reported_and_fail_the_run() {
    let (server, addr) = rate_limited_server().await;
    let argv = [
        "--connections",
        "3",
        "--inflight",
        "1",
        "--route",
        "load.echo.json",
        "--duration",
        "5",
    ];
    let bench = args(addr, &argv);
    let t = Instant::now();
    let r: Report = run(bench.clone()).await.unwrap();
    let took = t.elapsed();

    assert_eq!(r.connections, 3, "{r:?}");
    assert_eq!(r.closed_by_server.total, 3, "{r:?}");
    assert_eq!(
        r.closed_by_server.reasons,
        counts(&[("rate limit exceeded", 3)]),
        "{r:?}"
    );
    // Each connection: MAX_VIOLATIONS refusals answered, then the request that broke the limit
    // once more was lost with the connection (one in flight).
    assert_eq!(
        r.errors_by_code,
        counts(&[("RK-429", 3 * MAX_VIOLATIONS), (CLOSED, 3)]),
        "{r:?}"
    );
    assert_eq!(r.errors, r.errors_by_code.values().sum::<u64>(), "{r:?}");
    assert_eq!(r.timeouts, 0, "{r:?}");
    // The burst was answered; the kicks came long before the window's end, and the run stopped
    // waiting once every connection had ended.
    assert!(r.requests >= 3 * 50, "{r:?}");
    assert_eq!(r.duration_secs, 5.0);
    assert!(
        r.measured_secs > 0.0 && r.measured_secs < 2.5,
        "open for {} s: {r:?}",
        r.measured_secs
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // The rate is over the time connections were open, not over the whole window.
    let over_open_time = r.requests as f64 / r.measured_secs;
    assert!(
        (r.requests_per_sec - over_open_time).abs() < 1e-6 * over_open_time,
        "{r:?}"
    );
    assert!(
        r.requests_per_sec > 2.0 * r.requests as f64 / r.duration_secs,
        "{r:?}"
    );

    // Said in the table, the JSON, the hint and the verdict.
    let text = table(&r);
    assert!(
        text.contains("closed by the server     3   (rate limit exceeded: 3)"),
        "{text}"
    );
    assert!(text.contains("RK-429: 15"), "{text}");
    assert!(text.contains("NOT a figure for 3 connections"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["closed_by_server"]["total"], 3);
    assert_eq!(
        json["closed_by_server"]["reasons"],
        serde_json::json!({"rate limit exceeded": 3})
    );
    assert_eq!(
        json["errors_by_code"],
        serde_json::json!({"RK-429": 15, "CLOSED": 3})
    );
    assert_eq!(hint(&r), Some(RATE_LIMIT_HINT));
    assert!(RATE_LIMIT_HINT.contains("gateway.rate_limit.per_second"));
    assert!(RATE_LIMIT_HINT.contains("ROOKERY_GATEWAY__RATE_LIMIT__PER_SECOND=0"));
    assert!(!RATE_LIMIT_HINT.contains('\n'));
    let verdict = check(&r, &bench).unwrap_err().to_string();
    assert!(verdict.contains("closed 3 of 3 connections"), "{verdict}");
    assert!(verdict.contains("--allow-disconnects"), "{verdict}");
    let mut allowed = argv.to_vec();
    allowed.push("--allow-disconnects");
    assert_eq!(check(&r, &args(addr, &allowed)), Ok(()));
    server.shutdown().await;
}

/// Under the limit, the same server closes nothing: full window, no errors, no hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_rate_limit_nothing_is_closed() {
    let (server, addr) = rate_limited_server().await;
    // 3 connections at 60 requests/s in all: 20/s each, below 50/s.
    let bench = args(
        addr,
        &[
            "--connections",
            "3",
            "--rate",
            "60",
            "--route",
            "load.echo.json",
            "--duration",
            "1",
        ],
    );
    let r = run(bench.clone()).await.unwrap();
    assert_eq!(r.connections, 3, "{r:?}");
    assert_eq!(r.closed_by_server.total, 0, "{r:?}");
    assert!(r.closed_by_server.reasons.is_empty(), "{r:?}");
    assert!(r.errors_by_code.is_empty(), "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
    assert!((45..=75).contains(&r.requests), "{r:?}");
    assert_eq!(r.measured_secs, r.duration_secs);
    assert_eq!(hint(&r), None);
    assert_eq!(check(&r, &bench), Ok(()));
    assert!(!table(&r).contains("closed by the server"));
    server.shutdown().await;
}

/// A server that closes every connection right after the handshake, without a kick.
async fn closing_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let codec = PacketCodec::default();
                let mut buf = BytesMut::with_capacity(4096);
                loop {
                    if sock.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    while let Ok(Some(p)) = codec.decode(&mut buf) {
                        match p.kind {
                            PacketType::Handshake => {
                                let body = HandshakeResponse {
                                    code: 200,
                                    sys: Some(Default::default()),
                                    msg: None,
                                }
                                .encode();
                                let pkt = encode_parts(PacketType::Handshake, &body).unwrap();
                                if sock.write_all(&pkt).await.is_err() {
                                    return;
                                }
                            }
                            // Handshake complete: hang up cleanly. A bare drop would reset
                            // the connection if the client's next packet (its login) had
                            // arrived unread, and the client would report a read error
                            // instead of a close: send FIN, then read until the client goes.
                            PacketType::HandshakeAck => {
                                let _ = sock.shutdown().await;
                                let mut rest = [0u8; 1024];
                                let wait = rookery_testkit::WAIT;
                                while let Ok(Ok(n)) =
                                    tokio::time::timeout(wait, sock.read(&mut rest)).await
                                {
                                    if n == 0 {
                                        break;
                                    }
                                }
                                return;
                            }
                            _ => {}
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Every connection closed during the warm-up: nothing was measured, and the report says so
/// instead of giving a rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_before_the_window_leave_no_figure() {
    let addr = closing_server().await;
    let bench = args(
        addr,
        &["--connections", "2", "--warmup", "2", "--duration", "5"],
    );
    let t = Instant::now();
    let r = run(bench.clone()).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(r.connections, 2, "{r:?}");
    assert_eq!(r.closed_by_server.total, 2, "{r:?}");
    assert_eq!(
        r.closed_by_server.reasons,
        counts(&[("closed without a kick", 2)]),
        "{r:?}"
    );
    assert_eq!(r.measured_secs, 0.0, "{r:?}");
    assert_eq!(r.requests, 0, "{r:?}");
    assert_eq!(r.requests_per_sec, 0.0, "{r:?}");
    let text = table(&r);
    assert!(text.contains("throughput    void"), "{text}");
    assert_eq!(hint(&r), None);
    assert!(check(&r, &bench).is_err());
}
