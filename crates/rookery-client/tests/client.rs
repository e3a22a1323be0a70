//! Client tests against small fake servers built from the protocol codecs.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rookery_client::{Client, ClientError, ClientOptions, Closed, Event, Serializer};
use rookery_protocol::handshake::HandshakeResponseSys;
use rookery_protocol::packet::encode_parts;
use rookery_protocol::{
    HandshakeRequest, HandshakeResponse, Message, MessageType, Packet, PacketCodec, PacketType,
    Route, RouteName,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Generous bound so a broken test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(5);

/// Server side of one TCP connection.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    codec: PacketCodec,
}

impl Peer {
    /// Next packet, or None at end of stream.
    async fn read(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(p);
            }
            let n = tokio::time::timeout(LIMIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("server read timed out")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Next Data message, skipping heartbeats.
    async fn read_msg(&mut self) -> Message {
        loop {
            let p = self.read().await.expect("client closed");
            match p.kind {
                PacketType::Heartbeat => continue,
                PacketType::Data => return Message::decode(p.body).unwrap(),
                other => panic!("unexpected packet {other:?}"),
            }
        }
    }

    async fn write(&mut self, kind: PacketType, body: &[u8]) {
        self.stream
            .write_all(&encode_parts(kind, body).unwrap())
            .await
            .unwrap();
    }

    async fn send(&mut self, msg: Message) {
        self.stream
            .write_all(&msg.to_packet_bytes().unwrap())
            .await
            .unwrap();
    }

    /// Waits until the client closes its side.
    async fn expect_eof(&mut self) {
        while let Some(p) = self.read().await {
            assert_eq!(p.kind, PacketType::Heartbeat, "unexpected packet");
        }
    }
}

fn ok_answer(heartbeat: u64, dict: &[(&str, u16)]) -> HandshakeResponse {
    HandshakeResponse {
        code: 200,
        sys: Some(HandshakeResponseSys {
            heartbeat,
            dict: dict
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<HashMap<_, _>>(),
            serializer: Serializer::Json,
        }),
        msg: None,
    }
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// Accepts one connection, reads the client's handshake, answers it, and (on 200) reads the ack.
async fn accept(listener: &TcpListener, answer: HandshakeResponse) -> (Peer, HandshakeRequest) {
    let (stream, _) = listener.accept().await.unwrap();
    let mut peer = Peer {
        stream,
        buf: BytesMut::new(),
        codec: PacketCodec::default(),
    };
    let hs = peer.read().await.expect("no handshake");
    assert_eq!(hs.kind, PacketType::Handshake);
    let request = HandshakeRequest::decode(&hs.body).unwrap();
    let ok = answer.code == 200;
    peer.write(PacketType::Handshake, &answer.encode()).await;
    if ok {
        let ack = peer.read().await.expect("no ack");
        assert_eq!(ack.kind, PacketType::HandshakeAck);
    }
    (peer, request)
}

fn route(name: &str) -> Route {
    Route::Name(RouteName::try_from(name).unwrap())
}

fn route_of(msg: &Message) -> &str {
    match &msg.route {
        Some(Route::Name(n)) => n.as_str(),
        other => panic!("expected a named route, got {other:?}"),
    }
}

#[tokio::test]
async fn handshake_ok() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, req) = accept(&listener, ok_answer(0, &[("room.join", 3)])).await;
        peer.expect_eof().await;
        req
    });
    let opts = ClientOptions {
        serializer: Some(Serializer::Json),
        user: json!({"token": "secret"}),
        ..Default::default()
    };
    let client = Client::connect(&addr, opts).await.unwrap();
    assert_eq!(client.handshake().code, 200);
    assert_eq!(
        client.handshake().sys.as_ref().unwrap().dict["room.join"],
        3
    );
    assert_eq!(client.serializer(), Serializer::Json);
    client.close().await;
    assert_eq!(
        client.closed().await,
        Closed {
            kicked: false,
            reason: None
        }
    );
    let req = server.await.unwrap();
    assert_eq!(req.sys.client_type.as_deref(), Some("rust"));
    assert_eq!(req.sys.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(req.sys.serializer, Some(Serializer::Json));
    assert_eq!(req.user, json!({"token": "secret"}));
}

#[tokio::test]
async fn handshake_refused() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, HandshakeResponse::refuse(400, "bad token")).await;
        peer.expect_eof().await;
    });
    let err = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap_err();
    match err {
        ClientError::Handshake { code, msg } => {
            assert_eq!(code, 400);
            assert_eq!(msg.as_deref(), Some("bad token"));
        }
        other => panic!("unexpected {other:?}"),
    }
    server.await.unwrap();
}

#[tokio::test]
async fn requests_matched_by_id() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        let a = peer.read_msg().await;
        let b = peer.read_msg().await;
        assert_eq!(a.kind, MessageType::Request);
        assert_eq!(b.kind, MessageType::Request);
        let mut ids = [a.id, b.id];
        ids.sort();
        assert_eq!(ids, [1, 2], "ids start at 1 and increase");
        // Answer in reverse order, echoing the route and body.
        for m in [b, a] {
            let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let answer = json!({"route": route_of(&m), "n": body["n"]});
            peer.send(Message::response(
                m.id,
                serde_json::to_vec(&answer).unwrap(),
            ))
            .await;
        }
        let third = peer.read_msg().await;
        assert_eq!(third.id, 3);
        peer.send(Message::response(third.id, &b"{\"ok\":true}"[..]))
            .await;
        peer.expect_eof().await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    let (x, y) = tokio::join!(
        client.request_json("a.b.x", json!({"n": 1})),
        client.request_json("a.b.y", json!({"n": 2})),
    );
    assert_eq!(x.unwrap(), json!({"route": "a.b.x", "n": 1}));
    assert_eq!(y.unwrap(), json!({"route": "a.b.y", "n": 2}));

    #[derive(serde::Deserialize)]
    struct Ok {
        ok: bool,
    }
    let typed: Ok = client.request("a.b.z", &json!({})).await.unwrap();
    assert!(typed.ok);
    drop(client);
    server.await.unwrap();
}

#[tokio::test]
async fn error_response() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        let m = peer.read_msg().await;
        let err =
            json!({"code": "PIT-404", "msg": "route not found", "metadata": {"route": "x.y.z"}});
        peer.send(Message::error_response(
            m.id,
            serde_json::to_vec(&err).unwrap(),
        ))
        .await;
        peer.expect_eof().await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    match client.request_json("x.y.z", json!({})).await {
        Err(ClientError::Server {
            code,
            msg,
            metadata,
        }) => {
            assert_eq!(code, "PIT-404");
            assert_eq!(msg, "route not found");
            assert_eq!(metadata, Some(json!({"route": "x.y.z"})));
        }
        other => panic!("unexpected {other:?}"),
    }
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn notify_is_sent() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        let m = peer.read_msg().await;
        assert_eq!(m.kind, MessageType::Notify);
        assert_eq!(route_of(&m), "chat.room.say");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap(),
            json!({"text": "hi"})
        );
        peer.expect_eof().await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    client
        .notify("chat.room.say", &json!({"text": "hi"}))
        .await
        .unwrap();
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn push_with_compressed_route() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[("room.onChat", 7)])).await;
        peer.send(Message::push(Route::Code(7), &b"{\"text\":\"a\"}"[..]))
            .await;
        peer.send(Message::push(Route::Code(99), &b"{}"[..])).await;
        peer.send(Message::push(
            route("room.onLeave"),
            &b"{\"who\":\"b\"}"[..],
        ))
        .await;
        peer.send(Message::push(Route::Code(7), &b"{\"text\":\"c\"}"[..]))
            .await;
        peer.expect_eof().await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    let first = client.next_push("room.onChat", LIMIT).await.unwrap();
    assert_eq!(
        first.json::<serde_json::Value>().unwrap(),
        json!({"text": "a"})
    );
    match client.next_event().await {
        Some(Event::Push(p)) => assert_eq!(p.route, "#99"),
        other => panic!("unexpected {other:?}"),
    }
    // next_push skips the push on another route.
    let third = client.next_push("room.onChat", LIMIT).await.unwrap();
    assert_eq!(
        third.json::<serde_json::Value>().unwrap(),
        json!({"text": "c"})
    );
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn small_event_buffer_loses_nothing() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        for i in 0..50u32 {
            peer.send(Message::push(route("n.n.n"), i.to_string().into_bytes()))
                .await;
        }
        peer.expect_eof().await;
    });
    let opts = ClientOptions {
        event_buffer: 1,
        ..Default::default()
    };
    let client = Client::connect(&addr, opts).await.unwrap();
    for i in 0..50u32 {
        let p = client.next_push("n.n.n", LIMIT).await.unwrap();
        assert_eq!(p.json::<u32>().unwrap(), i);
    }
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn kick_with_reason() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        // A request is in flight when the kick arrives.
        let _ = peer.read_msg().await;
        peer.write(PacketType::Kick, br#"{"reason":"duplicate login"}"#)
            .await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    let pending = {
        let c = client.clone();
        tokio::spawn(async move { c.request_json("a.b.c", json!({})).await })
    };
    match client.next_event().await {
        Some(Event::Kick { reason }) => assert_eq!(reason.as_deref(), Some("duplicate login")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        client.closed().await,
        Closed {
            kicked: true,
            reason: Some("duplicate login".into())
        }
    );
    assert!(client.next_event().await.is_none());
    match pending.await.unwrap() {
        Err(ClientError::Closed { reason }) => {
            assert_eq!(reason.as_deref(), Some("duplicate login"))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        client.request_json("a.b.c", json!({})).await,
        Err(ClientError::Closed { .. })
    ));
    server.await.unwrap();
}

#[tokio::test]
async fn kick_with_empty_body() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        peer.write(PacketType::Kick, b"").await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        client.next_event().await,
        Some(Event::Kick { reason: None })
    ));
    assert_eq!(
        client.closed().await,
        Closed {
            kicked: true,
            reason: None
        }
    );
    server.await.unwrap();
}

#[tokio::test]
async fn request_timeout_then_late_answer_is_ignored() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        let slow = peer.read_msg().await;
        // The client gives up on `slow` before sending the next request.
        let next = peer.read_msg().await;
        peer.send(Message::response(slow.id, &b"\"late\""[..]))
            .await;
        peer.send(Message::response(next.id, &b"\"fresh\""[..]))
            .await;
        peer.expect_eof().await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    let r = client
        .request_raw_timeout(
            "a.b.slow",
            Bytes::from_static(b"{}"),
            Duration::from_millis(100),
        )
        .await;
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    let fresh = client.request_json("a.b.next", json!({})).await.unwrap();
    assert_eq!(fresh, json!("fresh"));
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn pending_request_fails_when_server_drops() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        let _ = peer.read_msg().await;
        drop(peer);
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    let r = client.request_json("a.b.c", json!({})).await;
    assert!(matches!(r, Err(ClientError::Closed { .. })), "{r:?}");
    let closed = client.closed().await;
    assert!(!closed.kicked);
    assert!(client.next_event().await.is_none());
    server.await.unwrap();
}

#[tokio::test]
async fn close_fails_pending_requests() {
    let (listener, addr) = listen().await;
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        let _ = peer.read_msg().await;
        got_tx.send(()).unwrap();
        peer.expect_eof().await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    let pending = {
        let c = client.clone();
        tokio::spawn(async move { c.request_json("a.b.c", json!({})).await })
    };
    got_rx.await.unwrap();
    client.close().await;
    let r = pending.await.unwrap();
    assert!(
        matches!(r, Err(ClientError::Closed { reason: None })),
        "{r:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn dropping_last_handle_closes_connection() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(0, &[])).await;
        assert_eq!(peer.read_msg().await.kind, MessageType::Notify);
        peer.expect_eof().await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    let clone = client.clone();
    drop(client);
    clone.notify("a.b.c", &json!({})).await.unwrap();
    drop(clone);
    // The server sees the notify, then end of stream.
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn sends_heartbeats() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (mut peer, _) = accept(&listener, ok_answer(1, &[])).await;
        // The request may arrive before or after the first heartbeat; answer it only once a
        // heartbeat was seen.
        let mut request = None;
        loop {
            let p = peer.read().await.expect("closed before a heartbeat");
            match p.kind {
                PacketType::Heartbeat => {
                    assert!(p.body.is_empty());
                    break;
                }
                PacketType::Data => request = Some(Message::decode(p.body).unwrap()),
                other => panic!("unexpected {other:?}"),
            }
        }
        // Inbound heartbeats are ignored by the client.
        peer.write(PacketType::Heartbeat, b"").await;
        let m = match request {
            Some(m) => m,
            None => peer.read_msg().await,
        };
        peer.send(Message::response(m.id, &b"1"[..])).await;
        peer.expect_eof().await;
    });
    let client = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    // The server answers only after it received a heartbeat (announced interval: 1 s).
    let r: u32 = client.request("a.b.c", &json!({})).await.unwrap();
    assert_eq!(r, 1);
    client.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn connect_refused_is_io_error() {
    let (listener, addr) = listen().await;
    drop(listener);
    let r = Client::connect(&addr, ClientOptions::default()).await;
    assert!(matches!(r, Err(ClientError::Io(_))), "{r:?}");
}

#[tokio::test]
async fn websocket_roundtrip() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let codec = PacketCodec::default();
        let hs = read_ws(&mut ws, &codec).await.unwrap();
        assert_eq!(hs.kind, PacketType::Handshake);
        let answer = ok_answer(0, &[("room.onChat", 2)]).encode();
        ws.send(WsMessage::Binary(
            encode_parts(PacketType::Handshake, &answer).unwrap(),
        ))
        .await
        .unwrap();
        let ack = read_ws(&mut ws, &codec).await.unwrap();
        assert_eq!(ack.kind, PacketType::HandshakeAck);
        let req = Message::decode(read_ws(&mut ws, &codec).await.unwrap().body).unwrap();
        assert_eq!(req.kind, MessageType::Request);
        assert_eq!(route_of(&req), "room.room.join");
        for m in [
            Message::push(Route::Code(2), &b"{\"text\":\"hello\"}"[..]),
            Message::response(req.id, &b"{\"joined\":true}"[..]),
        ] {
            ws.send(WsMessage::Binary(m.to_packet_bytes().unwrap()))
                .await
                .unwrap();
        }
        // The client closes: we see a close frame (or the end of the stream).
        assert!(read_ws(&mut ws, &codec).await.is_none());
    });
    let client = Client::connect(&format!("ws://{addr}/ws"), ClientOptions::default())
        .await
        .unwrap();
    let joined = client
        .request_json("room.room.join", json!({}))
        .await
        .unwrap();
    assert_eq!(joined, json!({"joined": true}));
    let push = client.next_push("room.onChat", LIMIT).await.unwrap();
    assert_eq!(
        push.json::<serde_json::Value>().unwrap(),
        json!({"text": "hello"})
    );
    client.close().await;
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
}

/// Next non-heartbeat packet from a WebSocket peer; None once it closes.
async fn read_ws(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    codec: &PacketCodec,
) -> Option<Packet> {
    loop {
        match tokio::time::timeout(LIMIT, ws.next()).await.unwrap() {
            Some(Ok(WsMessage::Binary(b))) => {
                let p = codec.decode_frame(b).unwrap();
                if p.kind != PacketType::Heartbeat {
                    return Some(p);
                }
            }
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn websocket_refuses_oversized_frame() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let codec = PacketCodec::default();
        read_ws(&mut ws, &codec).await.unwrap();
        let answer = ok_answer(0, &[]).encode();
        ws.send(WsMessage::Binary(
            encode_parts(PacketType::Handshake, &answer).unwrap(),
        ))
        .await
        .unwrap();
        read_ws(&mut ws, &codec).await.unwrap();
        // 2 KiB push to a client that accepts 1 KiB packets.
        let big = Message::push(route("big.big.big"), vec![b'x'; 2048]);
        let _ = ws
            .send(WsMessage::Binary(big.to_packet_bytes().unwrap()))
            .await;
        let _ = tokio::time::timeout(LIMIT, ws.next()).await;
    });
    let opts = ClientOptions {
        max_packet_size: 1024,
        ..Default::default()
    };
    let client = Client::connect(&format!("ws://{addr}"), opts)
        .await
        .unwrap();
    let closed = tokio::time::timeout(LIMIT, client.closed()).await.unwrap();
    assert!(!closed.kicked);
    assert!(closed.reason.is_some(), "{closed:?}");
    assert!(client.next_event().await.is_none());
    server.await.unwrap();
}
