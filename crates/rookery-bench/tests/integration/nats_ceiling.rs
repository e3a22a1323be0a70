//! The ceiling in its NATS form (P5's baseline) against a real nats-server: each request's
//! payload goes through raw request/reply to the echo responder and comes back as the response.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rookery_bench::{run, serve_ceiling_with, start_nats_echo, Answer, RAW_NATS_SUBJECT};
use rookery_protocol::packet::encode_parts;
use rookery_protocol::{Message, MessageType, PacketCodec, PacketType, Route, RouteName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::common::args;

/// Reads packets until one of `kind` arrives (bounded by a deadline).
async fn next_packet(sock: &mut TcpStream, buf: &mut BytesMut, kind: PacketType) -> Bytes {
    let codec = PacketCodec::default();
    timeout(Duration::from_secs(5), async {
        loop {
            while let Some(p) = codec.decode(buf).unwrap() {
                if p.kind == kind {
                    return p.body;
                }
            }
            assert_ne!(sock.read_buf(buf).await.unwrap(), 0, "server closed");
        }
    })
    .await
    .expect("packet within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_through_raw_nats_request_reply() {
    let nats = rookery_testkit::Nats::start().expect("nats-server");
    let _echo = start_nats_echo(&nats.url(), RAW_NATS_SUBJECT)
        .await
        .unwrap();
    let answer = Answer::Nats {
        client: async_nats::connect(nats.url()).await.unwrap(),
        subject: RAW_NATS_SUBJECT.into(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_ceiling_with(listener, answer));

    // One request by hand: the response carries the request's id and its payload, echoed.
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    let hello = encode_parts(PacketType::Handshake, br#"{"sys":{"type":"test"}}"#).unwrap();
    sock.write_all(&hello).await.unwrap();
    next_packet(&mut sock, &mut buf, PacketType::Handshake).await;
    sock.write_all(&[PacketType::HandshakeAck as u8, 0, 0, 0])
        .await
        .unwrap();
    let route = Route::Name(RouteName::try_from("room.room.echo").unwrap());
    let payload = Bytes::from_static(br#"{"data":"through nats"}"#);
    let request = Message::request(7, route, payload.clone());
    sock.write_all(&request.to_packet_bytes().unwrap())
        .await
        .unwrap();
    let body = next_packet(&mut sock, &mut buf, PacketType::Data).await;
    let response = Message::decode(body).unwrap();
    assert_eq!(response.kind, MessageType::Response);
    assert_eq!(response.id, 7);
    assert_eq!(response.payload, payload);

    // And under the load generator: every request answered.
    let r = run(args(
        addr,
        &["--connections", "8", "--inflight", "1", "--duration", "1"],
    ))
    .await
    .unwrap();
    assert!(r.requests > 0, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.timeouts, 0, "{r:?}");
}
