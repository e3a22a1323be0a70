//! Async client for Rookery, or any server speaking the pomelo/pitaya client protocol, over TCP or
//! WebSocket.
//!
//! [`Client::connect`] opens the connection and completes the handshake; a background task then owns
//! the socket. The [`Client`] is a cheap, cloneable handle: requests and notifies are queued to the
//! task, responses are matched by message id, and pushes and kicks arrive as [`Event`]s. Dropping
//! the last handle closes the connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rookery_client::ClientError> {
//! use rookery_client::{Client, ClientOptions};
//! let client = Client::connect("127.0.0.1:3250", ClientOptions::default()).await?;
//! let reply = client.request_json("room.room.join", serde_json::json!({"name": "ann"})).await?;
//! println!("{reply}");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod conn;
pub mod tls;
mod transport;

pub use tls::TlsOptions;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rookery_protocol::{
    ClientHandshake, HandshakeFailure, HandshakeResponse, HandshakeSys, Message, PacketCodec,
    Route, RouteName,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

pub use rookery_protocol::Serializer;

use conn::{lock, Conn, Pending, PendingState};
use transport::Transport;

/// Capacity of the queue of outgoing packets (requests, notifies) to the socket task.
const COMMAND_QUEUE: usize = 256;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Default time a request waits for its response. Default 5 s.
    pub request_timeout: Duration,
    /// Time allowed for the TCP/WebSocket connect plus the handshake. Default 5 s.
    pub connect_timeout: Duration,
    /// Serializer asked for in the handshake (`sys.serializer`); the server's default when `None`.
    pub serializer: Option<Serializer>,
    /// Handshake `user` object (e.g. an auth token). Default `Null` (omitted).
    pub user: serde_json::Value,
    /// Largest accepted inbound packet body. Default [`rookery_protocol::DEFAULT_MAX_PACKET_SIZE`].
    pub max_packet_size: usize,
    /// Capacity of the push/event queue; when full, reading from the socket waits. Default 1024.
    pub event_buffer: usize,
    /// Send heartbeats at the interval the server announced. Default true.
    pub heartbeat: bool,
    /// How `tls://` and `wss://` servers are checked (the system's roots by default).
    pub tls: TlsOptions,
    /// Announce that this client reads compressed payloads (zlib, flag 0x10), so the server
    /// may compress large responses and pushes. Default true.
    pub compression: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            serializer: None,
            user: serde_json::Value::Null,
            max_packet_size: rookery_protocol::DEFAULT_MAX_PACKET_SIZE,
            event_buffer: 1024,
            heartbeat: true,
            tls: TlsOptions::default(),
            compression: true,
        }
    }
}

/// A message pushed by the server.
#[derive(Debug, Clone)]
pub struct Push {
    /// Route of the push (compressed routes are resolved through the handshake dictionary;
    /// unknown codes read `#<code>`).
    pub route: String,
    /// Serialized payload.
    pub payload: Bytes,
}

impl Push {
    /// Parses the payload as JSON (an empty payload reads as `null`).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        from_json(&self.payload)
    }
}

/// Something the server sent unasked.
#[derive(Debug, Clone)]
pub enum Event {
    /// A push message.
    Push(Push),
    /// The server kicked this client; the connection closes right after.
    Kick {
        /// Reason given by the server, if any.
        reason: Option<String>,
    },
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The server kicked us.
    pub kicked: bool,
    /// The kick reason, or the error that ended the connection; `None` for a clean close.
    pub reason: Option<String>,
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server broke the protocol (or a value could not be encoded).
    #[error("protocol error: {0}")]
    Protocol(#[from] rookery_protocol::ProtocolError),
    /// WebSocket-level error.
    #[error("websocket error: {0}")]
    WebSocket(String),
    /// TLS: a certificate that does not check out, a CA file that cannot be read.
    #[error("tls error: {0}")]
    Tls(String),
    /// The server refused the handshake.
    #[error("handshake refused with code {code}{}", msg.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Handshake {
        /// Handshake code (not 200).
        code: u16,
        /// Reason given by the server.
        msg: Option<String>,
    },
    /// The server answered a request with an error (flag 0x20).
    #[error("server error {code}: {msg}")]
    Server {
        /// Error code, e.g. `PIT-404`.
        code: String,
        /// Error message.
        msg: String,
        /// Extra data, if any.
        metadata: Option<serde_json::Value>,
    },
    /// JSON (de)serialization failed.
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The connection is closed.
    #[error("connection closed{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed {
        /// Kick reason or the error that closed the connection.
        reason: Option<String>,
    },
}

/// A connected client. Cheap to clone; all clones share one connection, which closes when the last
/// clone is dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    handshake: HandshakeResponse,
    serializer: Serializer,
    request_timeout: Duration,
    next_id: AtomicU64,
    pending: Pending,
    commands: mpsc::Sender<Bytes>,
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    closed: watch::Receiver<Option<Closed>>,
    cancel: CancellationToken,
    /// Cancels the socket task when the last handle goes.
    _guard: DropGuard,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("serializer", &self.inner.serializer)
            .field("closed", &*self.inner.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and completes the handshake.
    ///
    /// `addr`: `"host:port"` => TCP; `"tls://host:port"` => TCP over TLS;
    /// `"ws://host:port/path"` / `"wss://.."` => WebSocket, plain or over TLS (one packet per
    /// binary frame). [`ClientOptions::connect_timeout`] covers the connect, TLS and the
    /// handshake.
    pub async fn connect(addr: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        let codec = PacketCodec::new(opts.max_packet_size);
        let (transport, handshake) = tokio::time::timeout(opts.connect_timeout, async {
            let mut transport = Transport::connect(addr, opts.max_packet_size, &opts.tls).await?;
            let handshake = handshake(&mut transport, &codec, &opts).await?;
            Ok::<_, ClientError>((transport, handshake))
        })
        .await
        .map_err(|_| ClientError::Timeout)??;

        let sys = handshake.sys.clone().unwrap_or_default();
        let heartbeat =
            (opts.heartbeat && sys.heartbeat > 0).then(|| Duration::from_secs(sys.heartbeat));
        let routes = sys.dict.iter().map(|(k, v)| (*v, k.clone())).collect();
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (event_tx, event_rx) = mpsc::channel(opts.event_buffer.max(1));
        let (closed_tx, closed_rx) = watch::channel(None);
        let pending: Pending = Arc::new(Mutex::new(PendingState::default()));
        let cancel = CancellationToken::new();
        let conn = Conn {
            transport,
            codec,
            commands: cmd_rx,
            events: event_tx,
            pending: pending.clone(),
            closed: closed_tx,
            cancel: cancel.clone(),
            heartbeat,
            routes,
            serializer: sys.serializer,
        };
        tokio::spawn(conn.run());
        Ok(Client {
            inner: Arc::new(Inner {
                serializer: sys.serializer,
                handshake,
                request_timeout: opts.request_timeout,
                next_id: AtomicU64::new(1),
                pending,
                commands: cmd_tx,
                events: tokio::sync::Mutex::new(event_rx),
                closed: closed_rx,
                _guard: cancel.clone().drop_guard(),
                cancel,
            }),
        })
    }

    /// The server's handshake answer (heartbeat, route dictionary, serializer).
    pub fn handshake(&self) -> &HandshakeResponse {
        &self.inner.handshake
    }

    /// The serializer the server chose for this connection.
    pub fn serializer(&self) -> Serializer {
        self.inner.serializer
    }

    /// Sends a request with a raw payload and waits for the response payload, up to
    /// [`ClientOptions::request_timeout`].
    pub async fn request_raw(&self, route: &str, payload: Bytes) -> Result<Bytes, ClientError> {
        self.request_raw_timeout(route, payload, self.inner.request_timeout)
            .await
    }

    /// Sends a request with a raw payload and waits up to `timeout` for the response payload.
    /// On timeout the request is forgotten (a late response is dropped).
    pub async fn request_raw_timeout(
        &self,
        route: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let route = Route::Name(RouteName::try_from(route)?);
        self.request_route(route, payload, timeout).await
    }

    /// Sends a request by route code (a compressed route, as pomelo clients send the routes of
    /// the handshake dictionary) and waits for the response payload.
    pub async fn request_code(&self, code: u16, payload: Bytes) -> Result<Bytes, ClientError> {
        self.request_route(Route::Code(code), payload, self.inner.request_timeout)
            .await
    }

    async fn request_route(
        &self,
        route: Route,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let packet = Message::request(id, route, payload).to_packet_bytes()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut state = lock(&self.inner.pending);
            if let Some(reason) = &state.closed {
                return Err(ClientError::Closed {
                    reason: reason.clone(),
                });
            }
            state.map.insert(id, tx);
        }
        // Removes the entry however this future ends (answer, timeout, error, or being dropped).
        let _entry = PendingEntry {
            pending: &self.inner.pending,
            id,
        };
        tokio::time::timeout(timeout, async {
            self.inner
                .commands
                .send(packet)
                .await
                .map_err(|_| self.closed_error())?;
            rx.await.unwrap_or_else(|_| Err(self.closed_error()))
        })
        .await
        .map_err(|_| ClientError::Timeout)?
    }

    /// Sends a JSON request and parses the JSON response (an empty response reads as `null`).
    pub async fn request<T: Serialize, R: DeserializeOwned>(
        &self,
        route: &str,
        body: &T,
    ) -> Result<R, ClientError> {
        let payload = Bytes::from(serde_json::to_vec(body)?);
        from_json(&self.request_raw(route, payload).await?)
    }

    /// Sends a JSON request and returns the JSON response (an empty response reads as `null`).
    pub async fn request_json(
        &self,
        route: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.request(route, &body).await
    }

    /// Sends a notify (no response) with a raw payload. Returns once it is queued for writing.
    pub async fn notify_raw(&self, route: &str, payload: Bytes) -> Result<(), ClientError> {
        let packet =
            Message::notify(Route::Name(RouteName::try_from(route)?), payload).to_packet_bytes()?;
        if let Some(reason) = lock(&self.inner.pending).closed.clone() {
            return Err(ClientError::Closed { reason });
        }
        tokio::time::timeout(self.inner.request_timeout, self.inner.commands.send(packet))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_| self.closed_error())
    }

    /// Sends a JSON notify.
    pub async fn notify<T: Serialize>(&self, route: &str, body: &T) -> Result<(), ClientError> {
        self.notify_raw(route, Bytes::from(serde_json::to_vec(body)?))
            .await
    }

    /// The next push or kick; `None` once the connection is closed and every event was taken.
    pub async fn next_event(&self) -> Option<Event> {
        self.inner.events.lock().await.recv().await
    }

    /// Waits up to `timeout` for the next push on `route`, discarding pushes on other routes.
    /// A kick or the end of the connection gives [`ClientError::Closed`].
    pub async fn next_push(&self, route: &str, timeout: Duration) -> Result<Push, ClientError> {
        tokio::time::timeout(timeout, async {
            let mut events = self.inner.events.lock().await;
            loop {
                match events.recv().await {
                    Some(Event::Push(p)) if p.route == route => return Ok(p),
                    Some(Event::Push(_)) => continue,
                    Some(Event::Kick { reason }) => return Err(ClientError::Closed { reason }),
                    None => return Err(self.closed_error()),
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout)?
    }

    /// Waits until the connection ends; tells whether (and why) the server kicked us.
    pub async fn closed(&self) -> Closed {
        let mut rx = self.inner.closed.clone();
        let closed = match rx.wait_for(Option::is_some).await {
            Ok(state) => state.clone(),
            Err(_) => None,
        };
        closed.unwrap_or(Closed {
            kicked: false,
            reason: None,
        })
    }

    /// Closes the connection and waits for the socket task to finish; pending requests fail with
    /// [`ClientError::Closed`].
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        self.closed().await;
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed {
            reason: lock(&self.inner.pending).closed.clone().flatten(),
        }
    }
}

/// Removes a pending request's entry when dropped.
struct PendingEntry<'a> {
    pending: &'a Mutex<PendingState>,
    id: u64,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        lock(self.pending).map.remove(&self.id);
    }
}

/// Sends our handshake, reads the server's answer and acknowledges it.
async fn handshake(
    transport: &mut Transport,
    codec: &PacketCodec,
    opts: &ClientOptions,
) -> Result<HandshakeResponse, ClientError> {
    let hs = ClientHandshake::new(
        HandshakeSys {
            client_type: Some("rust".into()),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            platform: Some(std::env::consts::OS.into()),
            serializer: opts.serializer,
            compression: opts.compression.then(|| "zlib".to_string()),
        },
        opts.user.clone(),
    );
    transport.send(hs.request_packet()).await?;
    let answer = loop {
        let Some(packet) = transport.recv(codec).await? else {
            return Err(ClientError::Closed {
                reason: Some("connection closed during the handshake".into()),
            });
        };
        match hs.on_packet(packet.kind, &packet.body) {
            Ok(Some(answer)) => break answer,
            Ok(None) => continue,
            Err(HandshakeFailure::Refused { code, msg }) => {
                return Err(ClientError::Handshake { code, msg })
            }
            Err(HandshakeFailure::Kicked(reason)) => return Err(ClientError::Closed { reason }),
            Err(HandshakeFailure::Protocol(e)) => return Err(e.into()),
        }
    };
    transport.send(ClientHandshake::ack_packet()).await?;
    Ok(answer)
}

/// Parses JSON, reading an empty payload as `null`.
fn from_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ClientError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        Ok(serde_json::from_value(serde_json::Value::Null)?)
    } else {
        Ok(serde_json::from_slice(payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_protocol::packet::encode_parts;
    use rookery_protocol::PacketType;

    #[test]
    fn defaults() {
        let o = ClientOptions::default();
        assert_eq!(o.request_timeout, Duration::from_secs(5));
        assert_eq!(o.connect_timeout, Duration::from_secs(5));
        assert_eq!(o.max_packet_size, rookery_protocol::DEFAULT_MAX_PACKET_SIZE);
        assert_eq!(o.event_buffer, 1024);
        assert!(o.heartbeat && o.serializer.is_none() && o.user.is_null());
    }

    #[test]
    fn empty_payload_is_null() {
        let v: serde_json::Value = from_json(b"").unwrap();
        assert!(v.is_null());
        let o: Option<u32> = from_json(b"").unwrap();
        assert_eq!(o, None);
        let n: u32 = from_json(b"7").unwrap();
        assert_eq!(n, 7);
    }

    /// A timed-out request leaves no entry behind.
    #[tokio::test]
    async fn timeout_removes_pending_entry() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4];
            s.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
            s.read_exact(&mut vec![0; len]).await.unwrap();
            let answer = HandshakeResponse {
                code: 200,
                ..Default::default()
            };
            s.write_all(&encode_parts(PacketType::Handshake, &answer.encode()).unwrap())
                .await
                .unwrap();
            // Keep reading (ack, request) without answering until the client goes.
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
        let client = Client::connect(&addr, ClientOptions::default())
            .await
            .unwrap();
        let r = client
            .request_raw_timeout("a.b.c", Bytes::new(), Duration::from_millis(50))
            .await;
        assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
        assert!(lock(&client.inner.pending).map.is_empty());
        drop(client);
        server.await.unwrap();
    }
}
