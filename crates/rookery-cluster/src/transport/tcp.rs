//! Direct TCP transport: nodes dial each other's [`NodeInfo::address`].
//!
//! # Wire format
//!
//! A connection carries length-prefixed frames:
//!
//! ```text
//! +----------------+--------+----------------+-----------------+
//! | length: u32 BE | kind u8| id: u64 BE     | payload         |
//! +----------------+--------+----------------+-----------------+
//!                  |<------------- length bytes -------------->|
//! ```
//!
//! `length` counts the kind byte, the id and the payload (so it is at least 9). A length above
//! [`TcpConfig::max_frame`] is refused before anything is allocated for it; that, a frame shorter
//! than 9 bytes, an unknown kind or a kind that makes no sense in that direction closes the
//! connection (logged with `tracing::warn`), and nothing else.
//!
//! | kind | name    | direction           | id                       | payload                  |
//! |------|---------|---------------------|--------------------------|--------------------------|
//! | 0    | Hello   | dialler → acceptor  | protocol version (1)     | cluster token (UTF-8)    |
//! | 0    | Hello   | acceptor → dialler  | protocol version (1)     | empty: accepted          |
//! | 1    | Request | dialler → acceptor  | request id               | request frame            |
//! | 2    | Reply   | acceptor → dialler  | id of the request        | reply frame              |
//! | 3    | Notify  | dialler → acceptor  | 0                        | one-way frame            |
//! | 4    | Refused | acceptor → dialler  | 1 token, 2 version, 3 no hello | reason (UTF-8)     |
//! | 5    | Fail    | acceptor → dialler  | id of the request        | reason: no reply possible (reply over `max_frame`, handler panicked) |
//!
//! # Connections
//!
//! Each transport keeps one outbound connection ("link") per target, keyed by node id and
//! address, dialled lazily on the first request or notify. The dialler always starts with a Hello
//! and waits for the acceptor's Hello before using the link, all within
//! [`TcpConfig::connect_timeout`]; an acceptor configured with a token refuses (Refused, then
//! close) a first frame that is not a Hello carrying the same token, which the dialler reports as
//! [`TransportErrorKind::Unauthorized`](crate::TransportErrorKind::Unauthorized). An acceptor without a token acknowledges any Hello and also
//! takes connections that start directly with requests.
//!
//! A link is owned by one task that reads replies and writes queued frames (batched: everything
//! queued is written, then flushed). Callers talk to it through a bounded queue; a request
//! registers a oneshot in the link's pending map under a fresh id, capped at
//! [`TcpConfig::max_pending`] ([`TransportErrorKind::Overloaded`](crate::TransportErrorKind::Overloaded) beyond), and removes it again
//! whatever happens to the call (deadline, cancellation). When the link breaks (EOF, reset,
//! protocol error, [`Transport::node_lost`], the transport dropped), every pending request on it
//! fails at once with [`TransportErrorKind::Closed`](crate::TransportErrorKind::Closed); the next call dials again. A failed dial fails
//! fast and is not retried before a backoff (100 ms doubling up to 5 s, reset by a successful
//! dial); calls within it get the same error at once.
//!
//! The acceptor side ([`Transport::serve`]) runs, per connection, a reader and a writer; requests
//! are handled concurrently (at most 1024 at a time per connection, the reader waits beyond that)
//! and their replies go back through the connection's bounded writer queue. A request whose
//! handler answers on its first poll is answered by the reader itself; only the others get a
//! task. Notifies are handled one after another, in arrival order, by the reader. Closing a
//! connection (peer gone, shutdown) cancels the handler calls still running for it.

mod tls;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{poll_inline, BoxedCall, FrameHandler, Transport, TransportError};
use crate::FastMap;
use crate::NodeInfo;

/// Bytes of kind + id in front of every payload.
const HEADER_LEN: usize = 9;
/// Protocol version carried in Hello frames.
const PROTOCOL_VERSION: u64 = 1;
/// Refused codes (the id field of a Refused frame).
const REFUSED_TOKEN: u64 = 1;
const REFUSED_VERSION: u64 = 2;
const REFUSED_NO_HELLO: u64 = 3;
/// Capacity of a link's or a served connection's outbound queue (frames).
const QUEUE: usize = 1024;
/// Request handlers waiting in tasks of their own at once per served connection (those that
/// answer on their first poll take none).
const MAX_CONCURRENT_PER_CONN: usize = 1024;
/// The writer gathers up to this many bytes before writing; bigger payloads are written as is.
const BATCH_BYTES: usize = 64 * 1024;
/// How long a served connection that is being stopped keeps writing the replies already queued.
const STOP_FLUSH: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Configuration of the TCP transport (the `[cluster.tcp]`-style table; every field optional).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// Address to listen on (`host:port`); port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen: String,
    /// Address to publish in [`NodeInfo::address`] when it differs from the bound one (NAT,
    /// `0.0.0.0` listeners, containers). Default: the bound address.
    pub advertise: Option<String>,
    /// Largest frame (kind + id + payload, in bytes) sent or accepted; longer ones are refused
    /// with [`TransportErrorKind::BadFrame`](crate::TransportErrorKind::BadFrame) when sending and close the connection when received.
    /// Default 16 MiB. Use the same value across the cluster.
    pub max_frame: usize,
    /// Most requests queued or in flight per link; more get [`TransportErrorKind::Overloaded`](crate::TransportErrorKind::Overloaded).
    /// Default 10 000.
    pub max_pending: usize,
    /// Seconds allowed for dialling plus the hello exchange (and for an acceptor with a token to
    /// receive the hello). Default 3.
    pub connect_timeout: f64,
    /// Shared cluster secret. Dialled connections always start with a Hello carrying it; when
    /// set, the acceptor refuses connections whose Hello carries another one (or none).
    pub token: Option<String>,
    /// Mutual TLS between nodes (`[cluster.tcp.tls]`): every connection is TLS 1.2+, and each
    /// side shows a certificate signed by the cluster's CA; a node without one cannot connect.
    pub tls: Option<TcpTlsConfig>,
}

/// Mutual TLS between nodes: this node's certificate and key, and the cluster's CA (PEM files).
/// A node's certificate names the address other nodes dial it at (an IP address or DNS name in
/// its subject alternative names); it serves as both the server's and the client's certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpTlsConfig {
    /// This node's certificate chain (leaf first).
    pub cert: String,
    /// Its private key.
    pub key: String,
    /// The cluster CA's certificate(s): peers must present a certificate it signed.
    pub ca: String,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".to_string(),
            advertise: None,
            max_frame: 16 * 1024 * 1024,
            max_pending: 10_000,
            connect_timeout: 3.0,
            token: None,
            tls: None,
        }
    }
}

impl fmt::Debug for TcpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConfig")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("max_frame", &self.max_frame)
            .field("max_pending", &self.max_pending)
            .field("connect_timeout", &self.connect_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// [`TcpConfig`] with its values checked and converted.
#[derive(Clone)]
struct Settings {
    listen: String,
    advertise: Option<String>,
    max_frame: usize,
    max_pending: usize,
    connect_timeout: Duration,
    token: Option<Bytes>,
    /// Mutual TLS, when configured: its connector and acceptor, or why they could not be made
    /// (then the transport neither serves nor dials, and says why).
    tls: Option<Result<Arc<tls::NodeTls>, TransportError>>,
}

impl Settings {
    fn new(c: TcpConfig) -> Self {
        let connect_timeout = Duration::try_from_secs_f64(c.connect_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(3));
        Self {
            listen: c.listen,
            advertise: c.advertise,
            // The length prefix is a u32; a frame holds at least its header.
            max_frame: c.max_frame.clamp(HEADER_LEN, u32::MAX as usize),
            max_pending: c.max_pending.max(1),
            connect_timeout,
            token: c.token.map(Bytes::from),
            tls: c.tls.map(|t| tls::NodeTls::load(&t).map(Arc::new)),
        }
    }

    /// The TLS to use, if any; an error if it was configured but could not be loaded.
    fn tls(&self) -> Result<Option<&Arc<tls::NodeTls>>, TransportError> {
        match &self.tls {
            None => Ok(None),
            Some(Ok(t)) => Ok(Some(t)),
            Some(Err(e)) => Err(e.clone()),
        }
    }
}

/// The direct TCP transport. Cheap to clone (shared state behind an [`Arc`]); dropping the last
/// clone closes its outbound links (servers started with [`Transport::serve`] stop on their own
/// shutdown token).
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Settings,
    /// Outbound links by node id (each entry for the address it was made for).
    links: Mutex<FastMap<String, Arc<Entry>>>,
    /// Parent of every link's token; cancelled when the transport is dropped.
    root: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("listen", &self.inner.cfg.listen)
            .field("links", &lock(&self.inner.links).len())
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// A transport with this configuration. Nothing is bound or dialled until
    /// [`Transport::serve`] or the first call to a node. Out-of-range values are corrected:
    /// `max_frame` at least 9, `max_pending` at least 1, a non-positive or invalid
    /// `connect_timeout` becomes 3 s.
    pub fn new(config: TcpConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg: Settings::new(config),
                links: Mutex::new(FastMap::default()),
                root: CancellationToken::new(),
            }),
        }
    }

    fn check_size(&self, frame: &Bytes) -> Result<(), TransportError> {
        if frame.len() > self.inner.cfg.max_frame - HEADER_LEN {
            return Err(TransportError::bad_frame(format!(
                "frame of {} bytes exceeds max_frame ({} including the {HEADER_LEN}-byte header)",
                frame.len(),
                self.inner.cfg.max_frame
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn serve(
        &self,
        node: &NodeInfo,
        handler: Arc<dyn FrameHandler>,
        shutdown: CancellationToken,
    ) -> Result<String, TransportError> {
        let cfg = &self.inner.cfg;
        // TLS that is configured but does not load: serve nothing rather than serve in clear.
        cfg.tls()?;
        let listen_error = |e: std::io::Error| TransportError::listen(cfg.listen.clone(), e);
        let listener = TcpListener::bind(&cfg.listen).await.map_err(listen_error)?;
        let bound = listener.local_addr().map_err(listen_error)?;
        let address = cfg.advertise.clone().unwrap_or_else(|| bound.to_string());
        debug!(node = %node.id, %bound, %address, "tcp transport listening");
        tokio::spawn(accept_loop(
            listener,
            Arc::new(cfg.clone()),
            handler,
            shutdown,
            Arc::from(node.id.as_str()),
        ));
        Ok(address)
    }

    async fn request(
        &self,
        target: &NodeInfo,
        frame: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, TransportError> {
        self.check_size(&frame)?;
        if Instant::now() >= deadline {
            return Err(TransportError::timeout());
        }
        let link = self.inner.link(target, deadline).await?;
        let (id, reply, _pending) = link.shared.register(self.inner.cfg.max_pending)?;
        let out = OutFrame {
            kind: Kind::Request,
            id,
            payload: frame,
        };
        // Queued at once while the link keeps up (no timer); waits within the deadline when full.
        match link.tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(link.shared.closed_error()),
            Err(mpsc::error::TrySendError::Full(out)) => {
                match timeout_at(deadline, link.tx.send(out)).await {
                    Err(_) => return Err(TransportError::timeout()),
                    Ok(Err(_)) => return Err(link.shared.closed_error()),
                    Ok(Ok(())) => {}
                }
            }
        }
        match timeout_at(deadline, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(link.shared.closed_error()),
            Err(_) => Err(TransportError::timeout()),
        }
        // `_pending` drops here and removes the entry if no reply took it.
    }

    async fn notify(&self, target: &NodeInfo, frame: Bytes) -> Result<(), TransportError> {
        self.check_size(&frame)?;
        let wait = self.inner.cfg.connect_timeout;
        let link = self.inner.link(target, Instant::now() + wait).await?;
        let out = OutFrame {
            kind: Kind::Notify,
            id: 0,
            payload: frame,
        };
        match timeout(wait, link.tx.send(out)).await {
            Err(_) => Err(TransportError::overloaded(target.id.clone())),
            Ok(Err(_)) => Err(link.shared.closed_error()),
            Ok(Ok(())) => Ok(()),
        }
    }

    fn node_lost(&self, node_id: &str) {
        let lost = lock(&self.inner.links).remove(node_id);
        if let Some(entry) = lost {
            entry.retire(node_id, "node lost");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Hello = 0,
    Request = 1,
    Reply = 2,
    Notify = 3,
    Refused = 4,
    Fail = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Hello,
            1 => Self::Request,
            2 => Self::Reply,
            3 => Self::Notify,
            4 => Self::Refused,
            5 => Self::Fail,
            _ => return None,
        })
    }
}

/// A frame waiting in a writer queue.
struct OutFrame {
    kind: Kind,
    id: u64,
    payload: Bytes,
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

fn put_header(buf: &mut BytesMut, kind: Kind, id: u64, payload_len: usize) {
    let len = HEADER_LEN + payload_len;
    debug_assert!(
        len <= u32::MAX as usize,
        "frame sizes are checked against max_frame"
    );
    buf.put_u32(len as u32);
    buf.put_u8(kind as u8);
    buf.put_u64(id);
}

fn encode(kind: Kind, id: u64, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(4 + HEADER_LEN + payload.len());
    put_header(&mut buf, kind, id, payload.len());
    buf.put_slice(payload);
    buf
}

fn parse(mut raw: BytesMut) -> Result<(Kind, u64, Bytes), TransportError> {
    if raw.len() < HEADER_LEN {
        return Err(TransportError::bad_frame(format!(
            "frame of {} bytes is shorter than the {HEADER_LEN}-byte header",
            raw.len()
        )));
    }
    let k = raw.get_u8();
    let kind = Kind::from_u8(k)
        .ok_or_else(|| TransportError::bad_frame(format!("unknown frame kind {k}")))?;
    let id = raw.get_u64();
    Ok((kind, id, raw.freeze()))
}

type Frames = FramedRead<tls::Rd, LengthDelimitedCodec>;

/// Reads and parses the next frame; `Ok(None)` on a clean EOF.
async fn next_frame(frames: &mut Frames) -> Result<Option<(Kind, u64, Bytes)>, TransportError> {
    match frames.next().await {
        None => Ok(None),
        Some(Err(e)) => Err(TransportError::bad_frame(e.to_string())),
        Some(Ok(raw)) => parse(raw).map(Some),
    }
}

/// Writes everything queued, then flushes, until every sender is gone or a write fails. (Any
/// writer, not only a socket's, so that tests can read back exactly what it writes.)
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<OutFrame>,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(BATCH_BYTES);
    while let Some(mut frame) = rx.recv().await {
        // Let the tasks that are about to queue frames (replies being computed, other calls)
        // run first, so that one write carries many frames instead of one syscall per frame.
        if rx.is_empty() {
            tokio::task::yield_now().await;
        }
        loop {
            put_header(&mut buf, frame.kind, frame.id, frame.payload.len());
            if frame.payload.len() > BATCH_BYTES / 2 {
                wr.write_all(&buf).await?;
                buf.clear();
                wr.write_all(&frame.payload).await?;
            } else {
                buf.extend_from_slice(&frame.payload);
            }
            if buf.len() >= BATCH_BYTES {
                break;
            }
            match rx.try_recv() {
                Ok(next) => frame = next,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            wr.write_all(&buf).await?;
            buf.clear();
        }
        wr.flush().await?;
    }
    let _ = wr.shutdown().await;
    Ok(())
}

/// Constant-time comparison of the cluster secret.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Outbound links

/// Link state for one node at one address, kept between dials.
struct Entry {
    /// The address this entry dials.
    addr: String,
    state: Mutex<EntryState>,
    /// Held while dialling so concurrent first calls share one dial.
    dial: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct EntryState {
    link: Option<Link>,
    /// Removed by `node_lost`: a dial finishing now must not install its link.
    removed: bool,
    failures: u32,
    /// No dial before this instant after a failure; calls get `last_error` until then.
    retry_at: Option<Instant>,
    last_error: Option<TransportError>,
}

impl Entry {
    fn new(addr: String) -> Self {
        Self {
            addr,
            state: Mutex::default(),
            dial: tokio::sync::Mutex::default(),
        }
    }

    /// Takes the entry out of service: a dial finishing later does not install its link, and
    /// the current link (if any) closes, failing its pending requests.
    fn retire(&self, node_id: &str, why: &str) {
        let link = {
            let mut st = lock(&self.state);
            st.removed = true;
            st.link.take()
        };
        if let Some(link) = link {
            debug!(node = node_id, addr = %link.shared.addr, why, "closing link");
            link.shared.close();
        }
    }

    fn live_link(&self) -> Option<Link> {
        lock(&self.state)
            .link
            .as_ref()
            .filter(|l| l.shared.is_open())
            .cloned()
    }
}

#[derive(Clone)]
struct Link {
    tx: mpsc::Sender<OutFrame>,
    shared: Arc<LinkShared>,
}

type ReplySender = oneshot::Sender<Result<Bytes, TransportError>>;
type ReplyReceiver = oneshot::Receiver<Result<Bytes, TransportError>>;

struct LinkShared {
    node_id: String,
    addr: String,
    next_id: AtomicU64,
    pending: Mutex<Pending>,
    /// Cancelled when the link closes (or the transport is dropped: child of the root token).
    cancel: CancellationToken,
}

#[derive(Default)]
struct Pending {
    map: FastMap<u64, ReplySender>,
    closed: bool,
}

/// Removes a request's pending entry when the call ends, however it ends.
struct PendingGuard {
    shared: Arc<LinkShared>,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).map.remove(&self.id);
    }
}

impl LinkShared {
    fn is_open(&self) -> bool {
        !self.cancel.is_cancelled()
    }

    fn closed_error(&self) -> TransportError {
        TransportError::closed(self.node_id.clone())
    }

    /// Adds a pending request (unless closed or full): its id, where its reply arrives, and
    /// the guard removing it again.
    fn register(
        self: &Arc<Self>,
        max_pending: usize,
    ) -> Result<(u64, ReplyReceiver, PendingGuard), TransportError> {
        let mut p = lock(&self.pending);
        if p.closed {
            return Err(self.closed_error());
        }
        if p.map.len() >= max_pending {
            return Err(TransportError::overloaded(self.node_id.clone()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        p.map.insert(id, tx);
        drop(p);
        let guard = PendingGuard {
            shared: self.clone(),
            id,
        };
        Ok((id, rx, guard))
    }

    fn complete(&self, id: u64, result: Result<Bytes, TransportError>) {
        let waiter = lock(&self.pending).map.remove(&id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => {
                debug!(node = %self.node_id, id, "reply for no pending request (late or cancelled)")
            }
        }
    }

    /// Closes the link: later registrations fail, every pending request fails now with Closed,
    /// and the link task stops.
    fn close(&self) {
        let drained = {
            let mut p = lock(&self.pending);
            p.closed = true;
            std::mem::take(&mut p.map)
        };
        self.cancel.cancel();
        for (_, tx) in drained {
            let _ = tx.send(Err(self.closed_error()));
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (BACKOFF_MIN * 2u32.pow(exp)).min(BACKOFF_MAX)
}

impl Inner {
    /// The live link to `target`, dialling it if needed (one dial at a time per target).
    async fn link(&self, target: &NodeInfo, deadline: Instant) -> Result<Link, TransportError> {
        if target.address.is_empty() {
            return Err(TransportError::unreachable(
                target.id.clone(),
                "node has no address".to_string(),
            ));
        }
        let entry = {
            let mut links = lock(&self.links);
            match links.get(target.id.as_str()) {
                Some(e) if e.addr == target.address => e.clone(),
                _ => {
                    // First call, or the node now has another address: the old link (if any)
                    // leads to where the node no longer is.
                    let e = Arc::new(Entry::new(target.address.clone()));
                    if let Some(old) = links.insert(target.id.clone(), e.clone()) {
                        old.retire(&target.id, "node moved");
                    }
                    e
                }
            }
        };
        if let Some(link) = entry.live_link() {
            return Ok(link);
        }
        let _dialling = timeout_at(deadline, entry.dial.lock())
            .await
            .map_err(|_| TransportError::timeout())?;
        {
            let st = lock(&entry.state);
            if st.removed {
                return Err(TransportError::closed(target.id.clone()));
            }
            if let Some(link) = st.link.as_ref().filter(|l| l.shared.is_open()) {
                return Ok(link.clone());
            }
            if let (Some(at), Some(err)) = (st.retry_at, &st.last_error) {
                if Instant::now() < at {
                    return Err(err.clone());
                }
            }
        }
        let dialled = timeout_at(
            deadline,
            dial(&self.cfg, &target.id, &target.address, &self.root),
        )
        .await
        .map_err(|_| TransportError::timeout())?;
        let mut st = lock(&entry.state);
        match dialled {
            Ok(link) => {
                if st.removed {
                    drop(st);
                    link.shared.close();
                    return Err(TransportError::closed(target.id.clone()));
                }
                st.failures = 0;
                st.retry_at = None;
                st.last_error = None;
                st.link = Some(link.clone());
                Ok(link)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let wait = backoff(st.failures);
                debug!(node = %target.id, addr = %target.address, error = %e, ?wait, "dial failed");
                st.retry_at = Some(Instant::now() + wait);
                st.last_error = Some(e.clone());
                st.link = None;
                Err(e)
            }
        }
    }
}

/// Connects, exchanges hellos (all within `connect_timeout`) and starts the link task.
async fn dial(
    cfg: &Settings,
    node_id: &str,
    addr: &str,
    root: &CancellationToken,
) -> Result<Link, TransportError> {
    let unreachable = |why: String| TransportError::unreachable(node_id.to_string(), why);
    let handshake = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(format!("connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = match cfg.tls()? {
            None => tls::plain(stream),
            Some(t) => t.connect(stream, node_id, addr).await?,
        };
        let mut frames = FramedRead::new(rd, codec(cfg.max_frame));
        let token = cfg.token.clone().unwrap_or_default();
        wr.write_all(&encode(Kind::Hello, PROTOCOL_VERSION, &token))
            .await
            .map_err(|e| unreachable(format!("hello to {addr}: {e}")))?;
        match next_frame(&mut frames).await {
            Ok(Some((Kind::Hello, _, _))) => Ok((frames, wr)),
            Ok(Some((Kind::Refused, code, reason))) => {
                let reason = String::from_utf8_lossy(&reason).into_owned();
                if code == REFUSED_TOKEN || code == REFUSED_NO_HELLO {
                    Err(TransportError::unauthorized(format!(
                        "{node_id} at {addr}: {reason}"
                    )))
                } else {
                    Err(unreachable(format!(
                        "{addr} refused the connection: {reason}"
                    )))
                }
            }
            Ok(Some((kind, _, _))) => Err(unreachable(format!(
                "{addr} answered the hello with a {kind:?} frame"
            ))),
            Ok(None) => Err(unreachable(format!(
                "{addr} closed the connection during the hello"
            ))),
            Err(e) => Err(unreachable(format!("hello from {addr}: {e}"))),
        }
    };
    let (frames, wr) = timeout(cfg.connect_timeout, handshake)
        .await
        .map_err(|_| unreachable(format!("connecting to {addr} timed out")))??;
    let (tx, rx) = mpsc::channel(QUEUE);
    let shared = Arc::new(LinkShared {
        node_id: node_id.to_string(),
        addr: addr.to_string(),
        next_id: AtomicU64::new(1),
        pending: Mutex::new(Pending::default()),
        cancel: root.child_token(),
    });
    debug!(node = node_id, addr, "link up");
    tokio::spawn(run_link(frames, wr, rx, shared.clone()));
    Ok(Link { tx, shared })
}

/// The task owning a link's socket: reads replies, writes queued frames, and fails everything
/// pending when it stops.
async fn run_link(
    mut frames: Frames,
    wr: tls::Wr,
    rx: mpsc::Receiver<OutFrame>,
    shared: Arc<LinkShared>,
) {
    let read = async {
        loop {
            match next_frame(&mut frames).await {
                Ok(None) => return "closed by peer".to_string(),
                Err(e) => {
                    warn!(node = %shared.node_id, addr = %shared.addr, error = %e, "bad frame or read error: closing link");
                    return e.to_string();
                }
                Ok(Some((Kind::Reply, id, payload))) => shared.complete(id, Ok(payload)),
                Ok(Some((Kind::Fail, id, reason))) => shared.complete(
                    id,
                    Err(TransportError::bad_frame(
                        String::from_utf8_lossy(&reason).into_owned(),
                    )),
                ),
                Ok(Some((Kind::Hello, _, _))) => {}
                Ok(Some((kind, _, _))) => {
                    warn!(node = %shared.node_id, addr = %shared.addr, ?kind, "unexpected frame on link: closing it");
                    return format!("unexpected {kind:?} frame");
                }
            }
        }
    };
    let why = tokio::select! {
        why = read => why,
        r = write_loop(wr, rx) => match r {
            Ok(()) => "no more users".to_string(),
            Err(e) => format!("write error: {e}"),
        },
        _ = shared.cancel.cancelled() => "closed locally".to_string(),
    };
    debug!(node = %shared.node_id, addr = %shared.addr, why, "link down");
    shared.close();
}

// ---------------------------------------------------------------------------------------------
// Serving

async fn accept_loop(
    listener: TcpListener,
    cfg: Arc<Settings>,
    handler: Arc<dyn FrameHandler>,
    shutdown: CancellationToken,
    node_id: Arc<str>,
) {
    let conns = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                conns.spawn(serve_conn(
                    stream,
                    peer,
                    cfg.clone(),
                    handler.clone(),
                    shutdown.child_token(),
                    node_id.clone(),
                ));
            }
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                warn!(node = %node_id, error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    drop(listener);
    conns.close();
    conns.wait().await;
    debug!(node = %node_id, "tcp transport stopped serving");
}

/// Serves one inbound connection until the peer leaves, a bad frame arrives or `token` fires.
async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<Settings>,
    handler: Arc<dyn FrameHandler>,
    token: CancellationToken,
    node_id: Arc<str>,
) {
    // Whatever ends this task also stops its handler tasks.
    let _stop = token.clone().drop_guard();
    let (rd, mut wr) = match cfg.tls() {
        Ok(None) => tls::plain(stream),
        Ok(Some(t)) => match timeout(cfg.connect_timeout, t.accept(stream)).await {
            Ok(Ok(halves)) => halves,
            Ok(Err(e)) => {
                warn!(node = %node_id, %peer, error = %e, "TLS refused: closing connection");
                return;
            }
            Err(_) => {
                debug!(node = %node_id, %peer, "TLS handshake timed out");
                return;
            }
        },
        Err(_) => return,
    };
    let mut frames = FramedRead::new(rd, codec(cfg.max_frame));

    // Phase 1: the first frame (a Hello is answered directly, before anything else is written).
    let first = tokio::select! {
        _ = token.cancelled() => return,
        r = async {
            if cfg.token.is_some() {
                timeout(cfg.connect_timeout, next_frame(&mut frames))
                    .await
                    .unwrap_or_else(|_| Err(TransportError::timeout()))
            } else {
                next_frame(&mut frames).await
            }
        } => r,
    };
    let first = match first {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => {
            warn!(node = %node_id, %peer, error = %e, "bad first frame: closing connection");
            return;
        }
    };
    let refusal = match &first {
        (Kind::Hello, version, _) if *version != PROTOCOL_VERSION => Some((
            REFUSED_VERSION,
            format!("unsupported protocol version {version}, expected {PROTOCOL_VERSION}"),
        )),
        (Kind::Hello, _, presented) => match &cfg.token {
            Some(t) if !same_secret(t, presented) => {
                Some((REFUSED_TOKEN, "wrong cluster token".to_string()))
            }
            _ => None,
        },
        _ if cfg.token.is_some() => Some((
            REFUSED_NO_HELLO,
            "a hello with the cluster token must come first".to_string(),
        )),
        _ => None,
    };
    let carried = (first.0 != Kind::Hello).then_some(first);
    let answer = match &refusal {
        Some((code, reason)) => {
            warn!(node = %node_id, %peer, reason, "refusing connection");
            encode(Kind::Refused, *code, reason.as_bytes())
        }
        None if carried.is_none() => encode(Kind::Hello, PROTOCOL_VERSION, &[]),
        None => BytesMut::new(),
    };
    if !answer.is_empty() {
        let sent = tokio::select! {
            _ = token.cancelled() => return,
            r = timeout(cfg.connect_timeout, async {
                wr.write_all(&answer).await?;
                if refusal.is_some() {
                    wr.shutdown().await?;
                }
                io::Result::Ok(())
            }) => r,
        };
        if refusal.is_some() || !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }

    // Phase 2: requests and notifies.
    let (tx, rx) = mpsc::channel(QUEUE);
    let tasks = TaskTracker::new();
    let conn = Conn {
        handler,
        tx,
        tasks: tasks.clone(),
        permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PER_CONN)),
        token: token.clone(),
        max_frame: cfg.max_frame,
    };
    // Why reading stopped: `None` when the peer closed the connection.
    let read = async {
        if let Some(frame) = carried {
            if let Err(e) = conn.dispatch(frame).await {
                return Some(e);
            }
        }
        loop {
            let frame = match next_frame(&mut frames).await {
                Ok(Some(f)) => f,
                Ok(None) => return None,
                Err(e) => return Some(e),
            };
            if let Err(e) = conn.dispatch(frame).await {
                return Some(e);
            }
        }
    };
    let mut write = std::pin::pin!(write_loop(wr, rx));
    let stopped = tokio::select! {
        why = read => {
            if let Some(why) = why {
                warn!(node = %node_id, %peer, error = %why, "bad frame: closing connection");
            }
            false
        }
        r = &mut write => {
            if let Err(e) = r {
                debug!(node = %node_id, %peer, error = %e, "write failed: closing connection");
            }
            false
        }
        _ = token.cancelled() => true,
    };
    token.cancel();
    tasks.close();
    // The last sender goes with the handler tasks (cancelled above, they end at once).
    drop(conn);
    if stopped {
        // A stopping node has let the calls it accepted finish: their replies are queued here
        // and are written before the connection closes (then the peer reads end of stream).
        let flushed = timeout(STOP_FLUSH, async {
            tasks.wait().await;
            (&mut write).await
        })
        .await;
        if !matches!(flushed, Ok(Ok(()))) {
            debug!(node = %node_id, %peer, "replies not all written before the stop");
        }
    }
    tasks.wait().await;
}

/// What the reader of a served connection needs to dispatch frames.
struct Conn {
    handler: Arc<dyn FrameHandler>,
    tx: mpsc::Sender<OutFrame>,
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
    token: CancellationToken,
    max_frame: usize,
}

impl Conn {
    async fn dispatch(
        &self,
        (kind, id, payload): (Kind, u64, Bytes),
    ) -> Result<(), TransportError> {
        match kind {
            Kind::Request => {
                let handler = self.handler.clone();
                let mut call: BoxedCall<Bytes> =
                    Box::pin(async move { handler.request(payload).await });
                let max_payload = self.max_frame - HEADER_LEN;
                // A handler that answers on its first poll needs no task (the usual case), nor
                // a permit: the permits bound the calls waiting in tasks.
                if let Some(answered) = poll_inline(&mut call) {
                    return self
                        .tx
                        .send(reply_frame(id, answered, max_payload))
                        .await
                        .map_err(|_| TransportError::closed("the connection's reply queue"));
                }
                let permit = self
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| TransportError::closed("the connection's reply queue"))?;
                let tx = self.tx.clone();
                let token = self.token.clone();
                self.tasks.spawn(async move {
                    let _permit = permit;
                    let answered = tokio::select! {
                        _ = token.cancelled() => return,
                        r = AssertUnwindSafe(call).catch_unwind() => r,
                    };
                    // Biased: a reply that has room in the queue is queued even when the
                    // connection is being stopped (it is then flushed before the close).
                    tokio::select! {
                        biased;
                        _ = tx.send(reply_frame(id, answered, max_payload)) => {}
                        _ = token.cancelled() => {}
                    }
                });
                Ok(())
            }
            Kind::Notify => {
                if AssertUnwindSafe(self.handler.notify(payload))
                    .catch_unwind()
                    .await
                    .is_err()
                {
                    warn!("notify handler panicked");
                }
                Ok(())
            }
            Kind::Hello => Ok(()),
            other => Err(TransportError::bad_frame(format!(
                "unexpected {other:?} frame from a dialler"
            ))),
        }
    }
}

/// The frame answering request `id`: its reply, or a Fail when the reply is too large or the
/// handler panicked.
fn reply_frame(
    id: u64,
    answered: Result<Bytes, Box<dyn std::any::Any + Send>>,
    max_payload: usize,
) -> OutFrame {
    match answered {
        Ok(reply) if reply.len() <= max_payload => OutFrame {
            kind: Kind::Reply,
            id,
            payload: reply,
        },
        Ok(reply) => {
            warn!(
                id,
                len = reply.len(),
                "reply exceeds max_frame: sending a failure"
            );
            OutFrame {
                kind: Kind::Fail,
                id,
                payload: Bytes::from(format!("reply of {} bytes exceeds max_frame", reply.len())),
            }
        }
        Err(_) => {
            warn!(id, "request handler panicked");
            OutFrame {
                kind: Kind::Fail,
                id,
                payload: Bytes::from_static(b"request handler panicked"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = encode(Kind::Request, 42, b"abc");
        assert_eq!(&buf[..4], &12u32.to_be_bytes());
        let body = buf.split_off(4);
        let (kind, id, payload) = parse(body).unwrap();
        assert_eq!((kind, id, &payload[..]), (Kind::Request, 42, &b"abc"[..]));
        assert!(parse(BytesMut::from(&[1u8, 2, 3][..])).is_err());
        let mut unknown = encode(Kind::Reply, 1, b"");
        unknown[4] = 99;
        assert!(parse(unknown.split_off(4)).is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(7), Duration::from_secs(5));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn config_defaults_and_redaction() {
        let c: TcpConfig = toml::from_str("token = \"s3cret\"").unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.max_frame, 16 * 1024 * 1024);
        assert_eq!(c.max_pending, 10_000);
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(toml::from_str::<TcpConfig>("nope = 1").is_err());
        let s = Settings::new(TcpConfig {
            max_frame: 0,
            max_pending: 0,
            connect_timeout: -1.0,
            ..TcpConfig::default()
        });
        assert_eq!(
            (s.max_frame, s.max_pending, s.connect_timeout),
            (HEADER_LEN, 1, Duration::from_secs(3))
        );
    }

    mod props {
        use proptest::prelude::*;
        use proptest::sample::Index;
        use tokio_util::codec::Decoder;

        use super::*;

        /// A parsed frame: its kind, id and payload.
        type Frame = (Kind, u64, Bytes);

        /// What a connection's reader does with what it receives, without the socket:
        /// `FramedRead` appends each read to its buffer and decodes frames until it needs more
        /// bytes, decodes what is left at EOF (a partial frame then is an error), and
        /// `next_frame` parses each frame. Returns the frames and the error that would close the
        /// connection. Checks on the way that the buffer never grows beyond what the bytes
        /// received and `max_frame` account for, whatever length a header declares.
        fn read_chunks(
            max_frame: usize,
            chunks: &[&[u8]],
        ) -> Result<(Vec<Frame>, Option<String>), TestCaseError> {
            let received: usize = chunks.iter().map(|c| c.len()).sum();
            // Growth doubles at most; a length taken from a header before the check against
            // max_frame (up to 4 GiB) would be far beyond this.
            let capacity_bound = 4 * (received + 4 + max_frame) + 64;
            let mut codec = codec(max_frame);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            let mut eof = false;
            let mut chunks = chunks.iter();
            loop {
                let decoded = if eof {
                    codec.decode_eof(&mut buf)
                } else {
                    codec.decode(&mut buf)
                };
                prop_assert!(
                    buf.capacity() <= capacity_bound,
                    "buffer of {} bytes after {received} bytes received (max_frame {max_frame})",
                    buf.capacity()
                );
                match decoded {
                    Ok(Some(raw)) => {
                        prop_assert!(raw.len() <= max_frame);
                        match parse(raw) {
                            Ok(frame) => frames.push(frame),
                            Err(e) => return Ok((frames, Some(e.to_string()))),
                        }
                    }
                    Ok(None) if eof => return Ok((frames, None)),
                    Ok(None) => match chunks.next() {
                        Some(chunk) => buf.extend_from_slice(chunk),
                        None => eof = true,
                    },
                    Err(e) => return Ok((frames, Some(e.to_string()))),
                }
            }
        }

        /// `bytes` cut at arbitrary places (possibly into empty pieces).
        fn split<'b>(bytes: &'b [u8], cuts: &[Index]) -> Vec<&'b [u8]> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut pieces = Vec::with_capacity(at.len() + 1);
            let mut from = 0;
            for to in at {
                pieces.push(&bytes[from..to]);
                from = to;
            }
            pieces.push(&bytes[from..]);
            pieces
        }

        fn kind() -> impl Strategy<Value = Kind> {
            (0u8..6).prop_map(|k| Kind::from_u8(k).unwrap())
        }

        fn payload() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                8 => proptest::collection::vec(any::<u8>(), 0..100),
                // Over half a batch: written on its own, after the header (see `write_loop`).
                1 => (any::<u8>(), BATCH_BYTES / 2 + 1..BATCH_BYTES + 100)
                    .prop_map(|(b, n)| vec![b; n]),
            ]
        }

        /// Streams that look like frames often enough to reach every branch: whole frames,
        /// headers declaring any length (most beyond `max_frame`) with some bytes after them,
        /// and noise.
        fn stream() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                (
                    kind(),
                    any::<u64>(),
                    proptest::collection::vec(any::<u8>(), 0..40)
                )
                    .prop_map(|(k, id, p)| encode(k, id, &p).to_vec()),
                (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
                    |(len, rest)| {
                        let mut v = len.to_be_bytes().to_vec();
                        v.extend(rest);
                        v
                    }
                ),
                proptest::collection::vec(any::<u8>(), 0..40),
            ];
            proptest::collection::vec(piece, 0..8).prop_map(|p| p.concat())
        }

        proptest! {
            /// Any bytes, cut anywhere, end in frames and at most one error: no panic, no frame
            /// over `max_frame`, no buffer sized by an unchecked header; and the cutting does not
            /// change what is read.
            #[test]
            fn any_stream_is_read_or_refused(
                bytes in prop_oneof![stream(), proptest::collection::vec(any::<u8>(), 0..300)],
                cuts in proptest::collection::vec(any::<Index>(), 0..12),
                max_frame in HEADER_LEN..200usize,
            ) {
                let cut = read_chunks(max_frame, &split(&bytes, &cuts))?;
                let whole = read_chunks(max_frame, &[&bytes])?;
                prop_assert_eq!(cut, whole);
            }

            /// A header declaring more than `max_frame` is refused as soon as its four bytes are
            /// in, before any of the body it announces has arrived, after the frames before it.
            #[test]
            fn an_oversized_header_is_refused_before_its_body(
                before in proptest::collection::vec((kind(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..4),
                excess in prop_oneof![1..1_000u64, 1..=u32::MAX as u64],
                cuts in proptest::collection::vec(any::<Index>(), 0..8),
            ) {
                let max_frame = 64;
                let declared = (max_frame as u64 + excess).min(u32::MAX as u64) as u32;
                let mut bytes = Vec::new();
                for (k, id, p) in &before {
                    bytes.extend_from_slice(&encode(*k, *id, p));
                }
                bytes.extend_from_slice(&declared.to_be_bytes());
                let (frames, error) = read_chunks(max_frame, &split(&bytes, &cuts))?;
                prop_assert_eq!(frames.len(), before.len());
                prop_assert_eq!(error.as_deref(), Some("frame size too big"));
            }

            /// What the writer puts on the wire, read back in any chunks, is the frames it was
            /// given, in order.
            #[test]
            fn written_frames_read_back_equal(
                frames in proptest::collection::vec((kind(), any::<u64>(), payload()), 0..12),
                cuts in proptest::collection::vec(any::<Index>(), 0..16),
            ) {
                let (tx, rx) = mpsc::channel(frames.len().max(1));
                for (kind, id, payload) in &frames {
                    tx.try_send(OutFrame { kind: *kind, id: *id, payload: Bytes::from(payload.clone()) })
                        .map_err(|_| TestCaseError::fail("queue full"))?;
                }
                drop(tx);
                let mut wire = Vec::new();
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(write_loop(&mut wire, rx))
                    .unwrap();
                let max_frame = HEADER_LEN + BATCH_BYTES + 100;
                let (read, error) = read_chunks(max_frame, &split(&wire, &cuts))?;
                prop_assert_eq!(error, None);
                let expected: Vec<Frame> = frames
                    .into_iter()
                    .map(|(k, id, p)| (k, id, Bytes::from(p)))
                    .collect();
                prop_assert_eq!(read, expected);
            }
        }
    }
}
