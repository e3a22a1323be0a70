//! Handshake: dictionary, heartbeat, serializer, validation, timeout, ordering rules.

use crate::common::*;
use rookery::protocol::PacketType;
use rookery::{Serializer, Server};
use rookery_client::{Client, ClientError, ClientOptions};
use serde_json::json;

#[tokio::test]
async fn answers_heartbeat_dictionary_and_serializer() {
    let mut cfg = config();
    cfg.gateway.heartbeat = 7;
    let (server, _) = start(cfg).await;
    let mut raw = Raw2::connect(&server).await;
    let hs = raw.handshake().await;
    assert_eq!(hs["code"], 200);
    assert_eq!(hs["sys"]["heartbeat"], 7);
    assert_eq!(hs["sys"]["serializer"], "json");
    let dict = hs["sys"]["dict"].as_object().unwrap();
    // Every client-callable route and declared push route has a code; internal routes do not.
    assert!(dict.contains_key("test.echo.json"));
    assert!(dict.contains_key("test.auth.login"));
    assert!(dict.contains_key("onTest"));
    assert!(!dict.contains_key("test.sys.secret"));
    let mut codes: Vec<u64> = dict.values().map(|v| v.as_u64().unwrap()).collect();
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), dict.len(), "codes are unique");
    server.shutdown().await;
}

#[tokio::test]
async fn client_may_choose_protobuf() {
    let (server, _) = start(config()).await;
    let c = Client::connect(
        &tcp_addr(&server),
        ClientOptions {
            serializer: Some(Serializer::Protobuf),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c.serializer(), Serializer::Protobuf);
    // A JSON-typed handler refuses a protobuf session with RK-400 (as a protobuf error).
    match c.request_raw("test.echo.json", bytes::Bytes::new()).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "RK-400"),
        other => panic!("expected RK-400, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn validator_refuses_with_code_400() {
    let server = Server::builder(config())
        .handshake_validator(|h| {
            if h.user["token"] == "sesame" {
                Ok(())
            } else {
                Err(rookery::Error::bad_request("bad token"))
            }
        })
        .start()
        .await
        .unwrap();
    let refused = Client::connect(&tcp_addr(&server), ClientOptions::default()).await;
    match refused {
        Err(ClientError::Handshake { code, msg }) => {
            assert_eq!(code, 400);
            assert_eq!(msg.as_deref(), Some("bad token"));
        }
        Err(other) => panic!("expected handshake refusal, got {other:?}"),
        Ok(_) => panic!("expected handshake refusal, got a connection"),
    }
    let ok = Client::connect(
        &tcp_addr(&server),
        ClientOptions {
            user: json!({"token": "sesame"}),
            ..ClientOptions::default()
        },
    )
    .await;
    assert!(ok.is_ok());
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_handshake_json_is_refused() {
    let (server, _) = start(config()).await;
    let mut raw = Raw2::connect(&server).await;
    raw.send(PacketType::Handshake, b"{not json").await;
    let p = raw.recv().await.unwrap();
    assert_eq!(p.kind, PacketType::Handshake);
    let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(v["code"], 400);
    raw.expect_kick_and_close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn silent_connection_closed_at_handshake_timeout() {
    let mut cfg = config();
    cfg.gateway.handshake_timeout = 0.3;
    let (server, _) = start(cfg).await;
    let mut raw = Raw2::connect(&server).await;
    let reason = raw.expect_kick_and_close().await;
    assert_eq!(reason.as_deref(), Some("handshake timeout"));
    // A handshake without its ack also times out.
    let mut raw = Raw2::connect(&server).await;
    raw.send(PacketType::Handshake, b"{}").await;
    assert_eq!(raw.recv().await.unwrap().kind, PacketType::Handshake);
    assert_eq!(
        raw.expect_kick_and_close().await.as_deref(),
        Some("handshake timeout")
    );
    assert_eq!(server.app().sessions().len(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn data_before_handshake_or_ack_is_refused() {
    let (server, probe) = start(config()).await;
    let mut raw = Raw2::connect(&server).await;
    raw.request(1, "test.echo.json", b"{}").await;
    assert_eq!(
        raw.expect_kick_and_close().await.as_deref(),
        Some("data before handshake")
    );
    let mut raw = Raw2::connect(&server).await;
    raw.send(PacketType::Handshake, b"{}").await;
    assert_eq!(raw.recv().await.unwrap().kind, PacketType::Handshake);
    raw.request(1, "test.echo.json", b"{}").await;
    assert_eq!(
        raw.expect_kick_and_close().await.as_deref(),
        Some("data before handshake ack")
    );
    assert_eq!(probe.opened.load(std::sync::atomic::Ordering::SeqCst), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn websocket_handshake_and_request() {
    let (server, _) = start(config()).await;
    let c = Client::connect(&ws_url(&server), ClientOptions::default())
        .await
        .unwrap();
    assert!(c
        .handshake()
        .sys
        .as_ref()
        .unwrap()
        .dict
        .contains_key("test.echo.json"));
    let v = c
        .request_json("test.echo.json", json!({"a": 1}))
        .await
        .unwrap();
    assert_eq!(v, json!({"a": 1}));
    server.shutdown().await;
}

/// `gateway.max_connections`: a connection beyond the limit waits, unserved, until another ends.
#[tokio::test]
async fn a_connection_beyond_the_limit_is_served_once_another_ends() {
    let mut cfg = config();
    cfg.gateway.max_connections = 1;
    let (server, _) = start(cfg).await;
    let first = client(&server).await;
    let mut second = Raw2::connect(&server).await;
    second
        .send(
            PacketType::Handshake,
            br#"{"sys":{"type":"test","version":"1"}}"#,
        )
        .await;
    // Not answered while the first connection holds the only slot.
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), second.recv()).await;
    assert!(early.is_err(), "served beyond the limit: {early:?}");
    first.close().await;
    let p = second
        .recv()
        .await
        .expect("handshake answer once a slot is free");
    assert_eq!(p.kind, PacketType::Handshake);
    server.shutdown().await;
}
