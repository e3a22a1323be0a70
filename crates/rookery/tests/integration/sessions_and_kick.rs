//! Sessions: binding, duplicate login, kick, data, ordering, dispatch modes, slow clients.

use std::sync::atomic::Ordering;

use crate::common::*;
use rookery::protocol::PacketType;
use rookery::{REASON_DUPLICATE_LOGIN, REASON_SLOW_CLIENT};
use rookery_client::Event;
use serde_json::json;

#[tokio::test]
async fn bind_and_duplicate_login_kicks_older() {
    let (server, probe) = start(config()).await;
    let first = client(&server).await;
    let second = client(&server).await;
    first
        .request_json("test.auth.login", json!({"uid": "alice"}))
        .await
        .unwrap();
    assert_eq!(
        first
            .request_json("test.auth.whoami", json!({}))
            .await
            .unwrap(),
        json!({"uid": "alice"})
    );
    second
        .request_json("test.auth.login", json!({"uid": "alice"}))
        .await
        .unwrap();
    match first.next_event().await {
        Some(Event::Kick { reason }) => assert_eq!(reason.as_deref(), Some(REASON_DUPLICATE_LOGIN)),
        other => panic!("expected a kick, got {other:?}"),
    }
    let closed = first.closed().await;
    assert!(closed.kicked);
    // The newer session keeps the uid; the older one's close did not unbind it.
    eventually("older session removed", || {
        server.app().sessions().len() == 1
    })
    .await;
    let s = server
        .app()
        .sessions()
        .by_uid("alice")
        .expect("alice bound");
    assert_eq!(
        second
            .request_json("test.auth.whoami", json!({}))
            .await
            .unwrap(),
        json!({"uid": "alice"})
    );
    assert!(!s.is_closed());
    let closed_hooks = probe.closed.lock().unwrap().clone();
    assert_eq!(closed_hooks.len(), 1);
    assert_eq!(closed_hooks[0].1.as_deref(), Some(REASON_DUPLICATE_LOGIN));
    server.shutdown().await;
}

#[tokio::test]
async fn kick_from_app_and_push_to_uid() {
    let (server, _) = start(config()).await;
    let c = client(&server).await;
    c.request_json("test.auth.login", json!({"uid": "bob"}))
        .await
        .unwrap();
    let here = server
        .app()
        .push_to_uid("bob", "onNews", rookery::Json(json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(here, 1, "delivered to this node's session");
    let p = c.next_push("onNews", WAIT).await.unwrap();
    assert_eq!(p.json::<serde_json::Value>().unwrap(), json!({"n": 1}));
    let nobody = server
        .app()
        .push_to_uid("nobody", "onNews", rookery::Json(json!({})))
        .await
        .unwrap();
    assert_eq!(nobody, 0, "no session of this node got it");
    server.app().kick_uid("bob", "banned").await;
    let closed = c.closed().await;
    assert!(closed.kicked);
    assert_eq!(closed.reason.as_deref(), Some("banned"));
    assert!(server.app().sessions().by_uid("bob").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn session_data_round_trip() {
    let (server, _) = start(config()).await;
    let c = client(&server).await;
    c.request_json("test.data.set", json!({"v": {"level": 3}}))
        .await
        .unwrap();
    assert_eq!(
        c.request_json("test.data.get", json!({})).await.unwrap(),
        json!({"v": {"level": 3}})
    );
    let other = client(&server).await;
    assert_eq!(
        other
            .request_json("test.data.get", json!({}))
            .await
            .unwrap(),
        json!({"v": null})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn requests_of_one_session_run_in_arrival_order() {
    let (server, probe) = start(config()).await;
    let c = client(&server).await;
    // Pipeline requests with decreasing delays: concurrent handling would finish them reversed.
    let mut pending = Vec::new();
    for seq in 0..50u64 {
        let delay = (50 - seq) % 7;
        pending.push(c.request_json("test.order.record", json!({"seq": seq, "delay_ms": delay})));
    }
    // All requests are in flight before any answers.
    let results = futures_util::future::join_all(pending).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap()["seq"], i as u64);
    }
    assert_eq!(*probe.order.lock().unwrap(), (0..50).collect::<Vec<_>>());
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_dispatch_overlaps_and_serial_does_not() {
    let (server, probe) = start(config()).await;
    let c = client(&server).await;
    // `wait` blocks until `release` runs on the same session: only concurrent dispatch finishes.
    let (w, r) = tokio::join!(
        c.request_json("test.conc.wait", json!({})),
        c.request_json("test.conc.release", json!({}))
    );
    assert_eq!(w.unwrap()["released"], true);
    r.unwrap();

    // Serial: one at a time across sessions.
    let clients = futures_util::future::join_all((0..4).map(|_| client(&server))).await;
    let calls = clients
        .iter()
        .flat_map(|c| (0..5).map(move |_| c.request_json("test.serial.work", json!({}))));
    for r in futures_util::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(probe.serial_overlap.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn pushes_arrive_in_send_order() {
    let (server, _) = start(config()).await;
    let c = client(&server).await;
    c.request_json("test.push.me", json!({"n": 200}))
        .await
        .unwrap();
    for i in 0..200 {
        let p = c.next_push("onTest", WAIT).await.unwrap();
        assert_eq!(p.json::<serde_json::Value>().unwrap()["i"], i);
    }
    server.shutdown().await;
}

/// Pushes that fill a socket: a client behind a 4 KiB receive window asks for `BLOBS` 32 KiB
/// pushes (answered with request id 7 after them), with room for all of them in the queue.
const BLOBS: usize = 256;

async fn blobs_behind_a_small_window() -> (rookery::RunningServer, Raw2) {
    let mut cfg = config();
    cfg.gateway.outbound_queue = 2 * BLOBS;
    let (server, _) = start(cfg).await;
    let mut raw = Raw2::connect_small_window(&server, 4096).await;
    raw.handshake().await;
    raw.request(
        7,
        "test.push.blob",
        format!(r#"{{"n": {BLOBS}}}"#).as_bytes(),
    )
    .await;
    (server, raw)
}

/// Writes the socket cannot take at once (8 MiB of pushes through a 4 KiB receive window) are
/// finished later, from where they stopped: every packet arrives whole, none twice, in order.
#[tokio::test]
async fn writes_cut_short_by_a_full_socket_resume_where_they_stopped() {
    let (server, mut raw) = blobs_behind_a_small_window().await;
    let mut blobs = 0;
    loop {
        let p = raw
            .recv_non_heartbeat()
            .await
            .expect("connection stays open");
        assert_eq!(p.kind, PacketType::Data);
        let m = rookery::protocol::Message::decode(p.body).unwrap();
        if m.kind == rookery::protocol::MessageType::Response {
            assert_eq!(m.id, 7);
            break;
        }
        assert_eq!(m.payload.len(), 32 * 1024);
        assert!(m.payload.iter().all(|&b| b == b'x'), "blob {blobs} damaged");
        blobs += 1;
    }
    assert_eq!(blobs, BLOBS, "every push before the response");
    server.shutdown().await;
}

#[tokio::test]
async fn slow_client_is_disconnected_and_others_unaffected() {
    let mut cfg = config();
    cfg.gateway.outbound_queue = 8;
    let (server, probe) = start(cfg).await;
    let healthy = client(&server).await;
    // A raw client that asks for 64 MiB of pushes and never reads.
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.request(1, "test.push.blob", br#"{"n": 2048}"#).await;
    eventually("slow client closed", || {
        probe
            .closed
            .lock()
            .unwrap()
            .iter()
            .any(|(_, r)| r.as_deref() == Some(REASON_SLOW_CLIENT))
    })
    .await;
    assert_eq!(
        healthy
            .request_json("test.echo.json", json!({"still": "fine"}))
            .await
            .unwrap(),
        json!({"still": "fine"})
    );
    // The slow connection is closed: draining it ends in EOF (after whatever was buffered).
    while let Some(p) = raw.recv().await {
        assert!(matches!(
            p.kind,
            PacketType::Data | PacketType::Kick | PacketType::Heartbeat
        ));
    }
    server.shutdown().await;
}

/// A session closed while its writer waits on a full socket (8 MiB of pushes queued, a client
/// that stopped reading behind a 4 KiB window) ends within the flush deadline: the close does
/// not wait for a reader that never comes, and the session leaves the pool.
#[tokio::test]
async fn a_close_while_a_write_is_blocked_ends_within_the_flush_deadline() {
    let (server, mut raw) = blobs_behind_a_small_window().await;
    // The writer is at work: the first blob arrives; the rest cannot fit the window.
    let first = raw.recv_non_heartbeat().await.expect("a first push");
    assert_eq!(first.kind, PacketType::Data);
    let app = server.app().clone();
    let sessions = app.sessions().all();
    assert_eq!(sessions.len(), 1);
    let closed_at = std::time::Instant::now();
    sessions[0].kick("bye");
    eventually("the session left the pool", || app.sessions().is_empty()).await;
    let took = closed_at.elapsed();
    // FLUSH_DEADLINE is 2 s; the margin covers a loaded machine.
    assert!(
        took < std::time::Duration::from_millis(3500),
        "closing a session with a blocked write took {took:?}"
    );
    server.shutdown().await;
}
