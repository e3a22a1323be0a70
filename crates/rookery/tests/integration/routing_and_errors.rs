//! Routing by name and by code, notifies, and every error code.

use crate::common::*;
use bytes::Bytes;
use rookery::protocol::{Message, MessageType, Route};
use rookery_client::ClientError;
use serde_json::{json, Value};

fn server_error(r: Result<Value, ClientError>) -> (String, String) {
    match r {
        Err(ClientError::Server { code, msg, .. }) => (code, msg),
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[tokio::test]
async fn request_response_json_and_raw() {
    let (server, _) = start(config()).await;
    let c = client(&server).await;
    let v = c
        .request_json("test.echo.json", json!({"hello": "world", "n": [1, 2]}))
        .await
        .unwrap();
    assert_eq!(v, json!({"hello": "world", "n": [1, 2]}));
    let raw = c
        .request_raw("test.echo.raw", Bytes::from_static(b"\x00\x01binary"))
        .await
        .unwrap();
    assert_eq!(&raw[..], b"\x00\x01binary");
    server.shutdown().await;
}

#[tokio::test]
async fn compressed_route_code_reaches_handler() {
    let (server, _) = start(config()).await;
    let mut raw = Raw2::connect(&server).await;
    let hs = raw.handshake().await;
    let code = hs["sys"]["dict"]["test.echo.json"].as_u64().unwrap() as u16;
    let m = Message::request(9, Route::Code(code), Bytes::from_static(br#"{"x":1}"#));
    raw.send_bytes(&m.to_packet_bytes().unwrap()).await;
    let resp = raw.recv_message().await;
    assert_eq!(resp.kind, MessageType::Response);
    assert_eq!(resp.id, 9);
    assert!(!resp.error);
    assert_eq!(&resp.payload[..], br#"{"x":1}"#);
    // Unknown code: RK-404 with the same id.
    let m = Message::request(10, Route::Code(60000), Bytes::new());
    raw.send_bytes(&m.to_packet_bytes().unwrap()).await;
    let resp = raw.recv_message().await;
    assert!(resp.error);
    assert_eq!(resp.id, 10);
    let v: Value = serde_json::from_slice(&resp.payload).unwrap();
    assert_eq!(v["code"], "RK-404");
    server.shutdown().await;
}

#[tokio::test]
async fn notify_gets_no_response_but_runs() {
    let (server, probe) = start(config()).await;
    let c = client(&server).await;
    c.notify("test.order.record", &json!({"seq": 41}))
        .await
        .unwrap();
    // Requests from a session are handled in order, so once this answers the notify has run.
    c.request_json("test.order.record", json!({"seq": 42}))
        .await
        .unwrap();
    assert_eq!(*probe.order.lock().unwrap(), vec![41, 42]);
    server.shutdown().await;
}

#[tokio::test]
async fn error_codes() {
    let mut cfg = config();
    cfg.gateway.request_timeout = 0.2;
    let (server, _) = start(cfg).await;
    let c = client(&server).await;

    let (code, msg) = server_error(c.request_json("test.nope.nope", json!({})).await);
    assert_eq!(code, "RK-404");
    assert!(msg.contains("test.nope.nope"));

    let (code, _) = server_error(c.request_json("test.sys.secret", json!({})).await);
    assert_eq!(
        code, "RK-404",
        "internal routes are not callable by clients"
    );

    let (code, _) = server_error(
        c.request_raw("test.echo.json", Bytes::from_static(b"{bad json"))
            .await
            .map(|_| Value::Null),
    );
    assert_eq!(code, "RK-400");

    let (code, _) = server_error(c.request_json("test.auth.whoami", json!({})).await);
    assert_eq!(code, "RK-401");

    let (code, _) = server_error(c.request_json("test.slow.sleep", json!({"ms": 2000})).await);
    assert_eq!(code, "RK-408");

    let (code, msg) = server_error(c.request_json("test.err.internal", json!({})).await);
    assert_eq!(code, "RK-500");
    assert!(!msg.contains("hunter2"), "no internals leaked: {msg}");

    let (code, msg) = server_error(c.request_json("test.err.panic", json!({})).await);
    assert_eq!(code, "RK-500");
    assert!(!msg.contains("secret"), "no internals leaked: {msg}");

    match c.request_json("test.err.custom", json!({})).await {
        Err(ClientError::Server { code, metadata, .. }) => {
            assert_eq!(code, "GAME-42");
            assert_eq!(metadata.unwrap()["need"], "5");
        }
        other => panic!("expected custom error, got {other:?}"),
    }

    // After all that the session still works.
    let v = c
        .request_json("test.echo.json", json!({"ok": true}))
        .await
        .unwrap();
    assert_eq!(v["ok"], true);
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limit_refuses_excess_then_disconnects() {
    let mut cfg = config();
    cfg.gateway.rate_limit.per_second = 1;
    cfg.gateway.rate_limit.burst = 5;
    cfg.gateway.rate_limit.max_violations = 3;
    let (server, _) = start(cfg).await;
    let c = client(&server).await;
    let other = client(&server).await;
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..12 {
        match c.request_json("test.echo.json", json!({})).await {
            Ok(_) => ok += 1,
            Err(ClientError::Server { code, .. }) if code == "RK-429" => limited += 1,
            Err(_) => break,
        }
    }
    assert!((5..=6).contains(&ok), "burst allowed ({ok})");
    assert_eq!(limited, 3, "refused up to max_violations");
    let closed = c.closed().await;
    assert!(closed.kicked);
    assert_eq!(closed.reason.as_deref(), Some("rate limit exceeded"));
    // Another client is unaffected.
    assert!(other
        .request_json("test.echo.json", json!({}))
        .await
        .is_ok());
    server.shutdown().await;
}
