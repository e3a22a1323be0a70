//! Heartbeats: a silent connection is closed after two intervals; a heartbeating one lives.

use crate::common::*;
use rookery::protocol::PacketType;
use rookery::REASON_IDLE;
use rookery_client::{Client, ClientOptions};
use serde_json::json;

#[tokio::test]
async fn silent_session_is_closed_heartbeating_one_stays() {
    let mut cfg = config();
    cfg.gateway.heartbeat = 1;
    let (server, _) = start(cfg).await;
    let alive = client(&server).await;
    assert_eq!(alive.handshake().sys.as_ref().unwrap().heartbeat, 1);
    let silent = Client::connect(
        &tcp_addr(&server),
        ClientOptions {
            heartbeat: false,
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), silent.closed())
        .await
        .expect("a silent session is closed within 10 s");
    assert!(closed.kicked);
    assert_eq!(closed.reason.as_deref(), Some(REASON_IDLE));
    // After two intervals of silence, not after one.
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
    // The heartbeating client, connected before the silent one, outlived it.
    assert_eq!(
        alive
            .request_json("test.echo.json", json!({"x": 1}))
            .await
            .unwrap(),
        json!({"x": 1})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn server_answers_heartbeats() {
    let (server, _) = start(config()).await;
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.send(PacketType::Heartbeat, b"").await;
    assert_eq!(raw.recv().await.unwrap().kind, PacketType::Heartbeat);
    server.shutdown().await;
}
