//! The load generator over TLS (`tls://` and `wss://` addresses against a Rookery node whose
//! acceptors speak TLS, a certificate made at run time) and over KCP.

use std::sync::Arc;

use rookery::config::TlsFiles;
use rookery::{Context, Error, Json, Module, ModuleInit, Server};
use rookery_bench::run;
use serde_json::Value;

use crate::common::argv;

struct Echo;

impl Module for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.handler("e.x", |_c: Context, Json(v): Json<Value>| async move {
            Ok(Json(v))
        });
        Ok(())
    }
}

/// A short run of 4 connections against the echo route, with the target's flags.
fn echo_run(target: &[&str]) -> rookery_bench::BenchArgs {
    let mut all = target.to_vec();
    all.extend_from_slice(&[
        "--connections",
        "4",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--route",
        "echo.e.x",
        "--payload",
        "{\"n\":1}",
    ]);
    argv(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_over_tls_and_wss() {
    let dir = std::env::temp_dir().join(format!("rookery-bench-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = rookery_testkit::certs::write_server_cert(&dir);
    let mut cfg = rookery_testkit::server::config();
    cfg.gateway.rate_limit.per_second = 0;
    cfg.gateway.tls = Some(TlsFiles {
        cert: cert.to_string_lossy().into_owned(),
        key: key.to_string_lossy().into_owned(),
    });
    let server = Server::builder(cfg).module(Echo).start().await.unwrap();
    let ca = cert.to_string_lossy().into_owned();
    let tls = format!("tls://{}", server.tcp_addr().unwrap());
    let wss = format!("wss://{}/", server.ws_addr().unwrap());
    for addr in [&tls, &wss] {
        let r = run(echo_run(&["--addr", addr, "--ca", &ca]))
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        assert!(r.requests > 0, "{addr}: {r:?}");
        assert_eq!(r.errors, 0, "{addr}: {r:?}");
    }
    // Without the CA, no connection is set up: the run reports them as failed.
    let r = run(argv(&[
        "--addr",
        &tls,
        "--connections",
        "2",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--route",
        "echo.e.x",
    ]))
    .await
    .unwrap();
    assert_eq!((r.connections, r.connect_errors), (0, 2), "{r:?}");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The load generator over KCP (`--kcp`, or a `kcp://` address) against a node's KCP acceptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_over_kcp() {
    let mut cfg = rookery_testkit::server::config();
    cfg.gateway.rate_limit.per_second = 0;
    cfg.gateway.kcp = Some("127.0.0.1:0".into());
    let server = Server::builder(cfg).module(Echo).start().await.unwrap();
    let addr = server.kcp_addr().unwrap().to_string();
    let url = format!("kcp://{addr}");
    for flags in [
        &["--addr", url.as_str()][..],
        &["--addr", addr.as_str(), "--kcp"][..],
    ] {
        let r = run(echo_run(flags))
            .await
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        assert!(r.requests > 0, "{flags:?}: {r:?}");
        assert_eq!((r.errors, r.connect_errors), (0, 0), "{flags:?}: {r:?}");
    }
    // Both runs' connections came through the KCP acceptor (KCP has no close: they stay until
    // the idle timeout).
    let kcp = server
        .app()
        .sessions()
        .all()
        .iter()
        .filter(|s| s.acceptor() == rookery::Acceptor::Kcp)
        .count();
    assert_eq!(kcp, 8);
    server.shutdown().await;
}
