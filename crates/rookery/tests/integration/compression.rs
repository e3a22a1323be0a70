//! Compressed payloads (message flag 0x10, zlib): inflated from clients within the packet size
//! limit (a zip bomb is refused with RK-400), and large responses and pushes compressed for
//! clients that announce `sys.compression = "zlib"`.

use bytes::Bytes;
use rookery::protocol::compression::{deflate, inflate};
use rookery::protocol::{Message, MessageType, PacketType, Route, RouteName};
use rookery_client::{Client, ClientOptions};
use serde_json::{json, Value};

use crate::common::*;

fn big() -> Value {
    json!({ "text": "x".repeat(4000) })
}

/// The raw handshake, announcing compression or not.
async fn raw(server: &rookery::RunningServer, compression: bool) -> Raw2 {
    let mut r = Raw2::connect(server).await;
    let hs = if compression {
        br#"{"sys":{"type":"test","compression":"zlib"}}"#.to_vec()
    } else {
        br#"{"sys":{"type":"test"}}"#.to_vec()
    };
    r.send(PacketType::Handshake, &hs).await;
    let p = r.recv().await.expect("handshake answer");
    assert_eq!(p.kind, PacketType::Handshake);
    r.send(PacketType::HandshakeAck, b"").await;
    r
}

fn compressed_request(id: u64, route: &str, payload: &[u8]) -> Bytes {
    let mut m = Message::request(
        id,
        Route::Name(RouteName::try_from(route).unwrap()),
        deflate(payload),
    );
    m.compressed = true;
    m.to_packet_bytes().unwrap()
}

#[tokio::test]
async fn large_answers_are_compressed_for_clients_that_read_them() {
    let (server, _) = start(config()).await;
    let body = serde_json::to_vec(&big()).unwrap();

    let mut yes = raw(&server, true).await;
    yes.request(1, "test.echo.json", &body).await;
    let m = yes.recv_message().await;
    assert_eq!(m.kind, MessageType::Response);
    assert!(
        m.compressed,
        "a 4 KB answer to a client that reads zlib is compressed"
    );
    assert!(m.payload.len() < body.len() / 4);
    assert_eq!(&inflate(&m.payload, 1 << 20).unwrap()[..], &body[..]);
    // Small answers are not.
    yes.request(2, "test.echo.json", b"{\"a\":1}").await;
    assert!(!yes.recv_message().await.compressed);

    let mut no = raw(&server, false).await;
    no.request(1, "test.echo.json", &body).await;
    let m = no.recv_message().await;
    assert!(
        !m.compressed,
        "a client that did not announce zlib gets plain payloads"
    );
    assert_eq!(&m.payload[..], &body[..]);

    // A push to everyone: compressed for one, plain for the other, the same content.
    let sent = server.app().broadcast("onBig", rookery::Json(big())).await;
    assert_eq!(sent, 2);
    let (p_yes, p_no) = (yes.recv_message().await, no.recv_message().await);
    assert_eq!(
        (p_yes.kind, p_no.kind),
        (MessageType::Push, MessageType::Push)
    );
    assert!(p_yes.compressed && !p_no.compressed);
    assert_eq!(inflate(&p_yes.payload, 1 << 20).unwrap(), p_no.payload);

    // The Rust client announces it and inflates transparently, answers and pushes alike.
    let c = Client::connect(&tcp_addr(&server), ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(
        c.request_json("test.echo.json", big()).await.unwrap(),
        big()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn compressed_requests_are_inflated_and_bombs_refused() {
    let (server, _) = start(config()).await;
    let mut r = raw(&server, false).await;
    r.send_bytes(&compressed_request(
        1,
        "test.echo.json",
        b"{\"packed\":true}",
    ))
    .await;
    let m = r.recv_message().await;
    assert!(!m.error, "{m:?}");
    assert_eq!(&m.payload[..], b"{\"packed\":true}");

    // 16 MiB of zeros in about 16 KB: refused without inflating it, and the session goes on.
    let bomb = compressed_request(2, "test.echo.json", &vec![0u8; 16 << 20]);
    assert!(bomb.len() < 64 << 10);
    r.send_bytes(&bomb).await;
    let m = r.recv_message().await;
    assert!(m.error);
    assert_eq!(m.id, 2);
    let err: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(err["code"], "RK-400");
    let mut garbage = Message::request(
        3,
        Route::Name(RouteName::try_from("test.echo.json").unwrap()),
        Bytes::from_static(b"not zlib"),
    );
    garbage.compressed = true;
    r.send_bytes(&garbage.to_packet_bytes().unwrap()).await;
    let m = r.recv_message().await;
    assert!(m.error && m.id == 3);
    r.request(4, "test.echo.json", b"{\"still\":1}").await;
    let m = r.recv_message().await;
    assert_eq!((m.id, m.error), (4, false));
    server.shutdown().await;
}
