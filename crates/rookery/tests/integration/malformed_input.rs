//! Malformed input: every case gets a clear error or a close with a reason, never a panic, and
//! other sessions are unaffected.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use rookery::protocol::{MessageType, PacketType};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

async fn assert_bystander_ok(c: &rookery_client::Client) {
    assert_eq!(
        c.request_json("test.echo.json", json!({"alive": 1}))
            .await
            .unwrap(),
        json!({"alive": 1})
    );
}

#[tokio::test]
async fn protocol_violations_close_with_reason() {
    let mut cfg = config();
    cfg.gateway.max_packet_size = 1024;
    let (server, _) = start(cfg).await;
    let bystander = client(&server).await;

    // Bad packet type.
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.send_bytes(&[9, 0, 0, 0]).await;
    let reason = raw.expect_kick_and_close().await.unwrap();
    assert!(reason.contains("unknown packet type 9"), "{reason}");
    assert_bystander_ok(&bystander).await;

    // A length beyond the limit: refused from the header, before the body is sent.
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.send_bytes(&[4, 0xFF, 0xFF, 0xFF]).await;
    let reason = raw.expect_kick_and_close().await.unwrap();
    assert!(reason.contains("exceeds the limit of 1024"), "{reason}");
    assert_bystander_ok(&bystander).await;

    // Broken varint in a request id.
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.send(PacketType::Data, &[0x00, 0x80, 0x80, 0x80]).await;
    let reason = raw.expect_kick_and_close().await.unwrap();
    assert!(reason.contains("bad message"), "{reason}");
    assert_bystander_ok(&bystander).await;

    // A client may not send responses or pushes.
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.send(PacketType::Data, &[0x06, 0x01, b'a']).await;
    let reason = raw.expect_kick_and_close().await.unwrap();
    assert!(reason.contains("Push"), "{reason}");

    // Invalid UTF-8 route.
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.send(PacketType::Data, &[0x00, 0x01, 0x02, 0xFF, 0xFE])
        .await;
    assert!(raw.expect_kick_and_close().await.is_some());

    // A second handshake.
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.send(PacketType::Handshake, b"{}").await;
    assert!(raw.expect_kick_and_close().await.is_some());

    assert_bystander_ok(&bystander).await;
    eventually("violators removed", || server.app().sessions().len() == 1).await;
    server.shutdown().await;
}

#[tokio::test]
async fn bad_json_and_unknown_route_get_errors_and_keep_the_session() {
    let (server, _) = start(config()).await;
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.request(1, "test.echo.json", b"{oops").await;
    let m = raw.recv_message().await;
    assert_eq!((m.kind, m.id, m.error), (MessageType::Response, 1, true));
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["code"], "RK-400");
    raw.request(2, "no.such.route", b"{}").await;
    let m = raw.recv_message().await;
    assert_eq!((m.id, m.error), (2, true));
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v["code"], "RK-404");
    raw.request(3, "test.echo.json", br#"{"fine":true}"#).await;
    let m = raw.recv_message().await;
    assert_eq!((m.id, m.error), (3, false));
    assert_eq!(&m.payload[..], br#"{"fine":true}"#);
    server.shutdown().await;
}

#[tokio::test]
async fn truncated_packet_then_eof_is_a_clean_close() {
    let (server, probe) = start(config()).await;
    let mut raw = Raw2::connect(&server).await;
    raw.handshake().await;
    raw.send_bytes(&[4, 0, 0, 50, 0, 0]).await;
    drop(raw);
    eventually("session closed", || probe.closed.lock().unwrap().len() == 1).await;
    server.shutdown().await;
}

#[tokio::test]
async fn websocket_frame_violations() {
    let mut cfg = config();
    cfg.gateway.max_packet_size = 1024;
    let (server, _) = start(cfg).await;
    let bystander = client(&server).await;
    let url = ws_url(&server);
    let addr = server.ws_addr().unwrap();

    type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    async fn ws_connect(addr: std::net::SocketAddr, url: &str) -> Result<Ws, String> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(url, tcp)
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| e.to_string())
    }

    async fn ws_handshake(addr: std::net::SocketAddr, url: &str) -> Ws {
        let mut ws = ws_connect(addr, url).await.unwrap();
        ws.send(WsMessage::Binary(bytes::Bytes::from_static(
            b"\x01\x00\x00\x02{}",
        )))
        .await
        .unwrap();
        let hs = ws.next().await.unwrap().unwrap();
        assert_eq!(hs.into_data()[0], 1);
        ws.send(WsMessage::Binary(bytes::Bytes::from_static(
            b"\x02\x00\x00\x00",
        )))
        .await
        .unwrap();
        ws
    }

    async fn expect_close(ws: &mut Ws) -> bool {
        let mut kicked = false;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, ws.next()).await {
            if let WsMessage::Binary(b) = m {
                kicked |= b.first() == Some(&5);
            }
        }
        kicked
    }

    // Two packets in one frame.
    let mut ws = ws_handshake(addr, &url).await;
    ws.send(WsMessage::Binary(bytes::Bytes::from_static(
        b"\x03\x00\x00\x00\x03\x00\x00\x00",
    )))
    .await
    .unwrap();
    assert!(expect_close(&mut ws).await);

    // A text frame.
    let mut ws = ws_handshake(addr, &url).await;
    ws.send(WsMessage::Text("hello".into())).await.unwrap();
    assert!(expect_close(&mut ws).await);

    // A frame larger than the limit is refused by the WebSocket layer itself.
    let mut ws = ws_handshake(addr, &url).await;
    let big = vec![0u8; 64 * 1024];
    let _ = ws.send(WsMessage::Binary(big.into())).await;
    let _ = expect_close(&mut ws).await;

    // Wrong path.
    let bad = format!("ws://{}/elsewhere", server.ws_addr().unwrap());
    assert!(ws_connect(addr, &bad).await.is_err());

    assert_bystander_ok(&bystander).await;
    server.shutdown().await;
}
