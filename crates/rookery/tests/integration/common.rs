//! This crate's own fixtures: a node running the `test` module on port 0 (through
//! `rookery_testkit::server`), and a raw protocol connection for sending exactly the bytes a test
//! wants (only these tests need one).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rookery::protocol::{Message, Packet, PacketCodec, PacketType, Route, RouteName};
use rookery::{
    async_trait, App, Config, Context, Dispatch, Error, Json, Module, ModuleInit, Raw,
    RunningServer, Server, Session,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub use rookery_testkit::server::{client, config, tcp_addr, ws_url};
pub use rookery_testkit::{eventually, WAIT};

/// Observations the test module records.
#[derive(Default)]
pub struct Probe {
    pub order: Mutex<Vec<u64>>,
    pub opened: AtomicUsize,
    pub closed: Mutex<Vec<(u64, Option<String>)>>,
    pub destroyed: AtomicUsize,
    pub gate: Notify,
    /// Signalled each time `slow.sleep` starts.
    pub slow_started: Notify,
    pub in_serial: AtomicUsize,
    pub serial_overlap: AtomicUsize,
}

/// Module `test` with one handler per behaviour under test.
pub struct TestModule {
    pub probe: Arc<Probe>,
}

#[derive(serde::Deserialize)]
struct Seq {
    seq: u64,
    #[serde(default)]
    delay_ms: u64,
}

#[async_trait]
impl Module for TestModule {
    fn name(&self) -> &str {
        "test"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.handler(
            "echo.json",
            |_c: Context, Json(v): Json<Value>| async move { Ok(Json(v)) },
        );
        init.handler(
            "echo.raw",
            |_c: Context, Raw(b): Raw| async move { Ok(Raw(b)) },
        );
        init.handler(
            "auth.login",
            |c: Context, Json(v): Json<Value>| async move {
                let uid = v["uid"].as_str().unwrap_or_default().to_string();
                c.bind(&uid).await?;
                Ok(Json(json!({ "uid": uid })))
            },
        );
        init.handler("auth.whoami", |c: Context, _: ()| async move {
            Ok(Json(json!({ "uid": c.require_uid()?.to_string() })))
        })
        .login_required();
        init.handler("err.custom", |_c: Context, _: ()| async move {
            Err::<(), _>(Error::custom("GAME-42", "no gold").with_metadata("need", "5"))
        });
        init.handler("err.internal", |_c: Context, _: ()| async move {
            Err::<(), _>(Error::internal("database password is hunter2"))
        });
        init.handler("err.panic", |_c: Context, _: ()| async move {
            if true {
                panic!("secret panic detail");
            }
            Ok(())
        });
        let p = self.probe.clone();
        init.handler("slow.sleep", move |_c: Context, Json(v): Json<Value>| {
            let p = p.clone();
            async move {
                p.slow_started.notify_one();
                let ms = v["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Json(v))
            }
        });
        init.handler("sys.secret", |_c: Context, _: ()| async move { Ok(()) })
            .internal();
        let p = self.probe.clone();
        init.handler("order.record", move |_c: Context, Json(s): Json<Seq>| {
            let p = p.clone();
            async move {
                if s.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(s.delay_ms)).await;
                }
                p.order.lock().unwrap().push(s.seq);
                Ok(Json(json!({ "seq": s.seq })))
            }
        });
        // Concurrent: `wait` blocks until `release` runs; ordered dispatch would deadlock.
        let p = self.probe.clone();
        init.handler("conc.wait", move |_c: Context, _: ()| {
            let p = p.clone();
            async move {
                p.gate.notified().await;
                Ok(Json(json!({ "released": true })))
            }
        })
        .dispatch(Dispatch::Concurrent);
        let p = self.probe.clone();
        init.handler("conc.release", move |_c: Context, _: ()| {
            let p = p.clone();
            async move {
                p.gate.notify_one();
                Ok(())
            }
        })
        .dispatch(Dispatch::Concurrent);
        let p = self.probe.clone();
        init.handler("serial.work", move |_c: Context, _: ()| {
            let p = p.clone();
            async move {
                if p.in_serial.fetch_add(1, Ordering::SeqCst) > 0 {
                    p.serial_overlap.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                p.in_serial.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .dispatch(Dispatch::Serial);
        init.handler("push.me", |c: Context, Json(v): Json<Value>| async move {
            let n = v["n"].as_u64().unwrap_or(1);
            for i in 0..n {
                c.push("onTest", Json(json!({ "i": i })))?;
            }
            Ok(())
        });
        init.handler("push.blob", |c: Context, Json(v): Json<Value>| async move {
            let n = v["n"].as_u64().unwrap_or(1);
            let blob = Raw(Bytes::from(vec![b'x'; 32 * 1024]));
            for _ in 0..n {
                if c.push("onBlob", &blob).is_err() {
                    break;
                }
            }
            Ok(())
        });
        init.handler("data.set", |c: Context, Json(v): Json<Value>| async move {
            c.session().set("k", v["v"].clone());
            Ok(())
        });
        init.handler("data.get", |c: Context, _: ()| async move {
            Ok(Json(json!({ "v": c.session().get("k") })))
        });
        init.push_route("onTest");
        Ok(())
    }

    async fn session_opened(&self, _app: &App, _session: &Session) {
        self.probe.opened.fetch_add(1, Ordering::SeqCst);
    }

    async fn session_closed(&self, _app: &App, session: &Session) {
        self.probe
            .closed
            .lock()
            .unwrap()
            .push((session.id(), session.close_reason().map(str::to_string)));
    }

    async fn destroy(&self, _app: &App) {
        self.probe.destroyed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Starts a node with the test module.
pub async fn start(cfg: Config) -> (RunningServer, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let server = rookery_testkit::server::start(Server::builder(cfg).module(TestModule {
        probe: probe.clone(),
    }))
    .await;
    (server, probe)
}

/// A raw protocol connection for sending exactly the bytes a test wants.
pub struct Raw2 {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: PacketCodec,
}

impl Raw2 {
    pub async fn connect(s: &RunningServer) -> Self {
        Self {
            stream: TcpStream::connect(s.tcp_addr().unwrap()).await.unwrap(),
            buf: BytesMut::new(),
            codec: PacketCodec::new(16 * 1024 * 1024 - 1),
        }
    }

    /// A connection whose receive buffer is `bytes` small: the server's writes to it fill its
    /// socket buffer and are cut short, unless it reads.
    pub async fn connect_small_window(s: &RunningServer, bytes: u32) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        Self {
            stream: socket.connect(s.tcp_addr().unwrap()).await.unwrap(),
            buf: BytesMut::new(),
            codec: PacketCodec::new(16 * 1024 * 1024 - 1),
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub async fn send(&mut self, kind: PacketType, body: &[u8]) {
        let b = Packet::new(kind, Bytes::copy_from_slice(body))
            .to_bytes()
            .unwrap();
        self.send_bytes(&b).await;
    }

    /// Next packet, or None on EOF/reset. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("packet or close within deadline")
    }

    /// Next packet that is not a heartbeat.
    pub async fn recv_non_heartbeat(&mut self) -> Option<Packet> {
        loop {
            match self.recv().await {
                Some(p) if p.kind == PacketType::Heartbeat => continue,
                other => return other,
            }
        }
    }

    /// Handshake + ack; returns the server's handshake JSON.
    pub async fn handshake(&mut self) -> Value {
        self.send(
            PacketType::Handshake,
            br#"{"sys":{"type":"test","version":"1"}}"#,
        )
        .await;
        let p = self.recv().await.expect("handshake answer");
        assert_eq!(p.kind, PacketType::Handshake);
        self.send(PacketType::HandshakeAck, b"").await;
        serde_json::from_slice(&p.body).unwrap()
    }

    pub async fn request(&mut self, id: u64, route: &str, body: &[u8]) {
        let m = Message::request(
            id,
            Route::Name(RouteName::try_from(route).unwrap()),
            Bytes::copy_from_slice(body),
        );
        let b = m.to_packet_bytes().unwrap();
        self.send_bytes(&b).await;
    }

    /// Reads until a Kick arrives and the connection closes; returns the kick reason.
    pub async fn expect_kick_and_close(&mut self) -> Option<String> {
        let mut reason = None;
        while let Some(p) = self.recv().await {
            if p.kind == PacketType::Kick {
                let v: Value = serde_json::from_slice(&p.body).unwrap_or(Value::Null);
                reason = v["reason"].as_str().map(str::to_string);
            }
        }
        reason
    }

    /// Next Data packet decoded as a message.
    pub async fn recv_message(&mut self) -> Message {
        let p = self.recv_non_heartbeat().await.expect("a message");
        assert_eq!(p.kind, PacketType::Data, "expected data, got {p:?}");
        Message::decode(p.body).unwrap()
    }
}
