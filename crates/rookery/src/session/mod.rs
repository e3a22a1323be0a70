//! Sessions: the gateway's record of one client connection, and the pool that indexes them by
//! id and by bound user id. `codec` is the session's half of a client protocol (how what is
//! sent to a client is put on its wire); a child of this module, since its methods work on the
//! session.

pub(crate) mod codec;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use crate::outbound::PushError;
use bytes::Bytes;
use rookery_protocol::handshake::HandshakeSys;
use rookery_protocol::{RouteDict, Serializer};
use tokio_util::sync::CancellationToken;

use crate::telemetry::DisconnectReason;
use crate::{Code, Error, PushName, ToPayload};
use codec::{ClientCodec, Pomelo};

/// [`Inner::push_class`] of a session whose pushes are each its own.
const OWN_PUSHES: u8 = u8::MAX;

/// Session id, unique within a node for its lifetime.
pub type SessionId = u64;

/// A session's identity across the cluster: the gateway node holding it and its id there.
/// Local sessions have an empty node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// Gateway node id (empty for a session of this node).
    pub node: Arc<str>,
    /// Session id on that gateway.
    pub id: SessionId,
}

/// Which acceptor a session came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Acceptor {
    /// Plain TCP.
    Tcp,
    /// WebSocket.
    Ws,
    /// MQTT 3.1.1 over TCP.
    Mqtt,
    /// MQTT over WebSocket.
    MqttWs,
    /// zinx framing over TCP.
    Zinx,
    /// KCP over UDP.
    Kcp,
    /// A session held by another node's gateway, seen here while handling its request.
    Remote,
    /// No client connection (RPC or HTTP calls without a session).
    Internal,
}

/// A backend's way to act on a session that another node's gateway holds. The RPC layer
/// implements it (an ordered queue of operations to that gateway), so a session does not know
/// how nodes talk to each other.
pub(crate) trait GatewayLink: Send + Sync + 'static {
    /// The gateway's node id.
    fn gateway(&self) -> &str;
    /// Queues a push (the body in the session's serializer); fails at once if the queue is full.
    fn push(&self, sid: SessionId, route: &str, body: Bytes) -> Result<(), Error>;
    /// Queues one push for several sessions of that gateway.
    fn push_many(&self, sids: Vec<SessionId>, route: &str, body: Bytes) -> Result<(), Error>;
    /// Queues a kick.
    fn kick(&self, sid: SessionId, reason: &str) -> Result<(), Error>;
    /// Queues changes of the session's data made on this node.
    fn set_data(&self, sid: SessionId, changes: Vec<DataChange>) -> Result<(), Error>;
    /// True once the link's sender task has ended (a new link is made on the next use).
    fn is_closed(&self) -> bool;
}

/// A change of one session value made on a backend: the key, the new value (`None`: removed),
/// and its place in the changes that node made (a per-node increasing number).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DataChange {
    #[serde(rename = "k")]
    pub key: String,
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(rename = "s")]
    pub seq: u64,
}

/// The numbers of this process's data changes (increasing, so per node too).
static DATA_SEQ: AtomicU64 = AtomicU64::new(0);

/// A session's values and what orders changes of them.
#[derive(Default)]
struct SessionData {
    values: HashMap<String, serde_json::Value>,
    /// The gateway's copy: per key and writing node, the newest change applied.
    seen: HashMap<(String, Arc<str>), u64>,
    /// A backend's copy: changes made while its request runs (sent with the answer).
    pending: Vec<DataChange>,
    /// A backend's copy: the answer went, so changes go to the gateway at once.
    answered: bool,
}

/// Where a session's pushes and kicks go.
enum Link {
    /// A connection on this node: packets go to its writer queue.
    Local(crate::outbound::Outbound),
    /// A connection on another node's gateway: operations go there in order.
    Remote(Arc<dyn GatewayLink>),
    /// No connection at all.
    Detached,
}

/// A cheap handle on one client session. Clones refer to the same session.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

/// `repr(C)`, hot fields first: a connection's every request reads the closed flag and the
/// serializer, marks the session as seen and goes through the outbound queue; kept together at
/// the start of the allocation, beside the `Arc`'s counts, they fit in two cache lines (at a
/// thousand connections these lines are cold when a connection's turn comes again; the budget
/// is checked in `budgets.rs`).
#[repr(C)]
struct Inner {
    /// Set once the session closes; read lock-free on every send and connection wake-up.
    closed: AtomicBool,
    serializer: Serializer,
    acceptor: Acceptor,
    /// The codec's [`ClientCodec::shared_class`] ([`OWN_PUSHES`] for none), kept here in the
    /// hot fields' padding so that a fan-out over many sessions does not read each one's codec.
    push_class: AtomicU8,
    /// Payloads larger than this are sent compressed (0: never; in the padding before
    /// `last_seen`, so it costs the session no space).
    compress_above: u32,
    /// When the client last sent anything: milliseconds since [`EPOCH`].
    last_seen: AtomicU64,
    link: Link,
    /// How this client's protocol puts responses, pushes and kicks on its wire.
    codec: Box<dyn ClientCodec>,
    // Cold: rarely read on the request path.
    id: SessionId,
    remote: SocketAddr,
    /// `remote` as text, made once (every forwarded request carries it).
    remote_text: OnceLock<Bytes>,
    client: HandshakeSys,
    created: Instant,
    uid: RwLock<Option<Arc<str>>>,
    data: Mutex<SessionData>,
    /// Nodes this session's requests were forwarded to (told when it closes).
    touched: Mutex<Vec<Arc<str>>>,
    /// This session's idle timeout in milliseconds, if its protocol set one (MQTT's
    /// keep-alive); 0: the gateway's.
    idle_ms: AtomicU64,
    /// When the uid was bound (unix nanoseconds): the newer binding wins across gateways.
    bound_at: AtomicU64,
    /// Cancelled once the session closes, for [`Session::closed`] waiters.
    closing: CancellationToken,
    /// The first reason given to close the session: the text (sent in a Kick, if one was) and
    /// why the server closed it (None when the client's side ended it).
    close_reason: OnceLock<(Option<DisconnectReason>, String)>,
    dict: Arc<RouteDict>,
}

/// The origin of [`Inner::last_seen`].
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// Milliseconds from [`EPOCH`] to `t` (0 for earlier instants).
fn millis_since_epoch(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(*EPOCH).as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("uid", &self.uid())
            .field("remote", &self.inner.remote)
            .finish()
    }
}

/// Reason given to sessions closed because their outbound queue overflowed.
pub const REASON_SLOW_CLIENT: &str = "slow client: outbound queue full";
/// Reason given to the older session on duplicate login.
pub const REASON_DUPLICATE_LOGIN: &str = "duplicate login";

impl Session {
    /// Session id.
    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    /// Identity across the cluster (gateway node + id).
    pub fn key(&self) -> SessionKey {
        SessionKey {
            node: match &self.inner.link {
                Link::Remote(r) => Arc::from(r.gateway()),
                _ => Arc::from(""),
            },
            id: self.inner.id,
        }
    }

    /// Remembers that a request of this session went to `node`.
    pub(crate) fn touch(&self, node: &str) {
        let mut t = self.inner.touched.lock().unwrap_or_else(|e| e.into_inner());
        if !t.iter().any(|n| &**n == node) {
            t.push(Arc::from(node));
        }
    }

    /// Nodes this session's requests went to.
    pub(crate) fn touched(&self) -> Vec<Arc<str>> {
        self.inner
            .touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The binding's stamp on the gateways' logical clock (0 if never bound).
    pub(crate) fn bound_at(&self) -> u64 {
        self.inner.bound_at.load(Ordering::Acquire)
    }

    /// The client's address, on every node: a backend's copy of a session carries the address
    /// its gateway sees.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.remote
    }

    /// [`Session::remote_addr`] as text (made once per session).
    pub(crate) fn remote_text(&self) -> Bytes {
        self.inner
            .remote_text
            .get_or_init(|| Bytes::from(self.inner.remote.to_string()))
            .clone()
    }

    /// The acceptor the client connected through.
    pub fn acceptor(&self) -> Acceptor {
        self.inner.acceptor
    }

    /// Serializer chosen in the handshake.
    pub fn serializer(&self) -> Serializer {
        self.inner.serializer
    }

    /// What the client said about itself in the handshake.
    pub fn client_info(&self) -> &HandshakeSys {
        &self.inner.client
    }

    /// When the session was established.
    pub fn created(&self) -> Instant {
        self.inner.created
    }

    /// The bound user id, if logged in.
    pub fn uid(&self) -> Option<Arc<str>> {
        self.inner
            .uid
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads a session value.
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.lock_data().values.get(key).cloned()
    }

    /// Sets a session value. Wherever it is set, the change reaches the session's gateway:
    /// made in a request forwarded from the gateway, with the answer; made at any other time,
    /// at once, through the node's ordered link to the gateway. The gateway keeps, per key, the
    /// last change it receives, and never one older than a change it has from the same node.
    pub fn set(&self, key: impl Into<String>, value: serde_json::Value) {
        self.change(key.into(), Some(value));
    }

    /// Removes a session value (reaches the gateway as [`Session::set`] does).
    pub fn remove(&self, key: &str) -> Option<serde_json::Value> {
        self.change(key.to_string(), None)
    }

    fn change(&self, key: String, value: Option<serde_json::Value>) -> Option<serde_json::Value> {
        let mut d = self.lock_data();
        let old = match &value {
            Some(v) => d.values.insert(key.clone(), v.clone()),
            None => d.values.remove(&key),
        };
        let Link::Remote(link) = &self.inner.link else {
            // The gateway's own copy (or a detached session): the value is simply set; a change
            // from another node that arrives later wins over it.
            return old;
        };
        let change = DataChange {
            key,
            value,
            seq: DATA_SEQ.fetch_add(1, Ordering::Relaxed) + 1,
        };
        if d.answered {
            drop(d);
            if let Err(e) = link.set_data(self.id(), vec![change]) {
                tracing::warn!(session = self.id(), error = %e, "session data change not sent");
            }
        } else {
            d.pending.push(change);
        }
        old
    }

    /// The changes made to a backend's copy while its request ran, for the answer; later
    /// changes go to the gateway at once.
    pub(crate) fn end_request(&self) -> Vec<DataChange> {
        let mut d = self.lock_data();
        d.answered = true;
        std::mem::take(&mut d.pending)
    }

    /// Sends changes to the gateway through the ordered link (changes [`Session::end_request`]
    /// returned that no answer carries).
    pub(crate) fn send_data_changes(&self, changes: Vec<DataChange>) {
        if changes.is_empty() {
            return;
        }
        if let Link::Remote(link) = &self.inner.link {
            if let Err(e) = link.set_data(self.id(), changes) {
                tracing::warn!(session = self.id(), error = %e, "session data changes not sent");
            }
        }
    }

    /// Applies changes a node made (the gateway's side): per key, a change older than one
    /// already applied from the same node is ignored; otherwise the last one to arrive wins.
    pub(crate) fn merge_data(&self, node: &str, changes: Vec<DataChange>) {
        let mut d = self.lock_data();
        for c in changes {
            let seen = d.seen.entry((c.key.clone(), Arc::from(node))).or_insert(0);
            if c.seq <= *seen {
                continue;
            }
            *seen = c.seq;
            match c.value {
                Some(v) => d.values.insert(c.key, v),
                None => d.values.remove(&c.key),
            };
        }
    }

    /// The gateway node holding this session, when it is a remote one.
    pub fn gateway(&self) -> Option<&str> {
        match &self.inner.link {
            Link::Remote(r) => Some(r.gateway()),
            _ => None,
        }
    }

    pub(crate) fn remote_link(&self) -> Option<&dyn GatewayLink> {
        match &self.inner.link {
            Link::Remote(r) => Some(r.as_ref()),
            _ => None,
        }
    }

    /// A copy of all session values.
    pub fn data(&self) -> HashMap<String, serde_json::Value> {
        self.lock_data().values.clone()
    }

    /// The values as a JSON object; empty bytes when there are none (the common case).
    pub(crate) fn data_json(&self) -> Bytes {
        let data = self.lock_data();
        if data.values.is_empty() {
            return Bytes::new();
        }
        Bytes::from(serde_json::to_vec(&data.values).unwrap_or_default())
    }

    fn lock_data(&self) -> std::sync::MutexGuard<'_, SessionData> {
        self.inner.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The route dictionary this client was given (a code it sends means what this says).
    pub(crate) fn dict(&self) -> &Arc<RouteDict> {
        &self.inner.dict
    }

    /// Pushes a message to this client. The route is compressed when the dictionary has it.
    /// Fails if the session is closed, or if its outbound queue is full (the client is then
    /// disconnected as too slow).
    pub fn push<P: ToPayload>(&self, route: impl PushName<P>, payload: P) -> Result<(), Error> {
        let route = route.push_name();
        let body = payload.to_payload(self.serializer())?;
        let r = match &self.inner.link {
            Link::Local(_) => self.inner.codec.push(self, route, body),
            Link::Remote(r) => r.push(self.id(), route, body),
            Link::Detached => Err(Error::new(Code::Unavailable, "no client session")),
        };
        count_pushes(if r.is_ok() { 1 } else { 0 }, if r.is_ok() { 0 } else { 1 });
        r
    }

    /// Sends a push already in this session's serializer (through its protocol's codec).
    pub(crate) fn push_encoded(&self, route: &str, body: Bytes) -> Result<(), Error> {
        self.inner.codec.push(self, route, body)
    }

    /// The answer to a request of this client, encoded for its protocol.
    pub(crate) fn encode_response(
        &self,
        id: u64,
        reply_to: Option<&str>,
        result: Result<Bytes, Error>,
    ) -> Result<Bytes, Error> {
        self.inner.codec.response(self, id, reply_to, result)
    }

    /// This client's protocol's codec.
    pub(crate) fn codec(&self) -> &dyn ClientCodec {
        &*self.inner.codec
    }

    /// The class of sessions one encoded push fits (see [`ClientCodec::shared_class`]).
    pub(crate) fn push_class(&self) -> Option<u8> {
        match self.inner.push_class.load(Ordering::Relaxed) {
            OWN_PUSHES => None,
            class => Some(class),
        }
    }

    /// Reads the codec's push class again, after something changed it (MQTT subscriptions).
    pub(crate) fn refresh_push_class(&self) {
        let class = self.inner.codec.shared_class().unwrap_or(OWN_PUSHES);
        self.inner.push_class.store(class, Ordering::Relaxed);
    }

    /// True if a payload of `len` bytes is sent compressed to this client.
    pub(crate) fn compresses(&self, len: usize) -> bool {
        let above = self.inner.compress_above;
        above != 0 && len > above as usize
    }

    /// The payload as this client is sent it: compressed (and `true`) when it is large enough
    /// and the client reads compressed payloads.
    pub(crate) fn maybe_compress(&self, body: Bytes) -> (Bytes, bool) {
        if self.compresses(body.len()) {
            (rookery_protocol::compression::deflate(&body), true)
        } else {
            (body, false)
        }
    }

    /// Queues an encoded packet. Never blocks: a full queue closes the session.
    pub(crate) fn send_packet(&self, packet: Bytes) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::new(Code::Unavailable, "session closed"));
        }
        let Link::Local(out) = &self.inner.link else {
            return Err(Error::new(Code::Unavailable, "not a local session"));
        };
        match out.push(packet) {
            Ok(()) => Ok(()),
            Err(PushError::Full) => {
                // The connection's end logs it (one line per connection, rate-capped).
                tracing::debug!(session = self.id(), "outbound queue full; disconnecting");
                metrics::counter!(crate::telemetry::SLOW_CLIENT_DISCONNECTS_TOTAL).increment(1);
                self.close_as(Some(DisconnectReason::SlowClient), REASON_SLOW_CLIENT);
                Err(Error::new(Code::Unavailable, REASON_SLOW_CLIENT))
            }
            Err(PushError::Closed) => Err(Error::new(Code::Unavailable, "session closed")),
        }
    }

    /// Sends the client a Kick packet with a reason, then closes the session. Counted (and
    /// logged) as a disconnect with reason [`DisconnectReason::Kick`].
    pub fn kick(&self, reason: &str) {
        self.kick_as(DisconnectReason::Kick, reason);
    }

    /// [`Session::kick`] for a reason of the framework's own (duplicate login, heartbeat
    /// timeout, a protocol error, shutdown), which `why` names for the disconnect metric.
    pub(crate) fn kick_as(&self, why: DisconnectReason, reason: &str) {
        if !self.is_closed() {
            // The reason first: once the Kick is queued, the client may read it and hang up
            // before this thread closes the session, and the hang-up's reason (none) would be
            // the one kept.
            let _ = self.inner.close_reason.set((Some(why), reason.to_string()));
            match &self.inner.link {
                Link::Local(out) => {
                    if let Some(p) = self.inner.codec.kick(reason) {
                        let _ = out.push(p);
                    }
                }
                Link::Remote(r) => {
                    let _ = r.kick(self.id(), reason);
                }
                Link::Detached => {}
            }
        }
        self.close_as(Some(why), reason);
    }

    /// Closes the session without a Kick packet. The first reason given is kept. Counted as a
    /// disconnect with reason [`DisconnectReason::Kick`] (the application closed it).
    pub fn close(&self, reason: &str) {
        self.close_as(Some(DisconnectReason::Kick), reason);
    }

    /// Closes the session; `why` is None when the client's side ended it (it left, or writing
    /// to it failed), which is not a disconnect by the server. The first reason given is kept.
    pub(crate) fn close_as(&self, why: Option<DisconnectReason>, reason: &str) {
        if self.inner.close_reason.get().is_none() {
            let _ = self.inner.close_reason.set((why, reason.to_string()));
        }
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            self.inner.closing.cancel();
            // The connection task does not wait on the token: it is woken through its queue.
            self.wake_connection();
        }
    }

    /// True once the session is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Ready once the session is closing. For the connection task of a local session, which
    /// is woken through its outbound queue ([`Session::close`] and [`Session::wake_connection`]
    /// wake it); other sessions are never woken by this.
    pub(crate) fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if let Link::Local(out) = &self.inner.link {
            out.register(cx.waker());
        }
        if self.is_closed() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Wakes the task serving a local session's connection, so that it looks at the session's
    /// and the node's state (closing, draining).
    pub(crate) fn wake_connection(&self) {
        if let Link::Local(out) = &self.inner.link {
            out.wake();
        }
    }

    /// Records that the client sent something at `at` (any packet, heartbeats included).
    pub(crate) fn mark_seen(&self, at: Instant) {
        self.inner
            .last_seen
            .store(millis_since_epoch(at), Ordering::Relaxed);
    }

    /// True if the client sent nothing for `idle` or longer before `now`.
    /// (`idle` is the gateway's timeout; a session whose protocol set its own uses that.)
    pub(crate) fn idle_at(&self, now: Instant, idle: std::time::Duration) -> bool {
        let seen = self.inner.last_seen.load(Ordering::Relaxed);
        let idle = match self.inner.idle_ms.load(Ordering::Relaxed) {
            0 => u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
            own => own,
        };
        millis_since_epoch(now).saturating_sub(seen) >= idle
    }

    /// Sets this session's own idle timeout (a protocol's keep-alive), instead of the
    /// gateway's.
    pub(crate) fn set_idle_timeout(&self, idle: std::time::Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        self.inner.idle_ms.store(ms, Ordering::Relaxed);
    }

    /// Why the session was closed, once it is.
    pub fn close_reason(&self) -> Option<&str> {
        self.inner.close_reason.get().map(|(_, text)| text.as_str())
    }

    /// Why the server closed the session, once it is closed; None while it is open and when
    /// the client's side ended it.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.inner.close_reason.get().and_then(|(why, _)| *why)
    }

    /// Resolves when the session starts closing.
    pub async fn closed(&self) {
        self.inner.closing.cancelled().await
    }

    /// The outbound queue of a local session (its writer drains it).
    pub(crate) fn outbound(&self) -> Option<&crate::outbound::Outbound> {
        match &self.inner.link {
            Link::Local(q) => Some(q),
            _ => None,
        }
    }

    /// True if both sessions are bound to the same uid (or neither is).
    pub(crate) fn same_uid(&self, other: &Session) -> bool {
        let mine = self.inner.uid.read().unwrap_or_else(|e| e.into_inner());
        let theirs = other.inner.uid.read().unwrap_or_else(|e| e.into_inner());
        mine.as_deref() == theirs.as_deref()
    }

    pub(crate) fn set_uid(&self, uid: Option<Arc<str>>) {
        *self.inner.uid.write().unwrap_or_else(|e| e.into_inner()) = uid;
    }
}

/// Everything needed to create a session after a successful handshake.
pub(crate) struct NewSession {
    pub remote: SocketAddr,
    pub acceptor: Acceptor,
    pub serializer: Serializer,
    pub client: HandshakeSys,
    /// Capacity of the outbound queue.
    pub outbound: usize,
    /// The route dictionary the client was given in the handshake.
    pub dict: Arc<RouteDict>,
    /// `gateway.compress_above` (applied if the client reads compressed payloads).
    pub compress_above: usize,
    /// The client's protocol's codec.
    pub codec: Box<dyn ClientCodec>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    fn build(
        id: SessionId,
        remote: SocketAddr,
        acceptor: Acceptor,
        serializer: Serializer,
        client: HandshakeSys,
        link: Link,
        dict: Arc<RouteDict>,
        compress_above: u32,
        codec: Box<dyn ClientCodec>,
    ) -> Self {
        let created = Instant::now();
        let push_class = AtomicU8::new(codec.shared_class().unwrap_or(OWN_PUSHES));
        Session {
            inner: Arc::new(Inner {
                id,
                remote,
                remote_text: OnceLock::new(),
                acceptor,
                compress_above,
                serializer,
                client,
                created,
                last_seen: AtomicU64::new(millis_since_epoch(created)),
                uid: RwLock::new(None),
                data: Mutex::new(SessionData::default()),
                link,
                push_class,
                codec,
                touched: Mutex::new(Vec::new()),
                bound_at: AtomicU64::new(0),
                idle_ms: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                closing: CancellationToken::new(),
                close_reason: OnceLock::new(),
                dict,
            }),
        }
    }

    /// A session with no client behind it (RPC or HTTP calls): pushes fail, uid is unset.
    pub fn detached(serializer: Serializer) -> Self {
        Self::build(
            0,
            SocketAddr::from(([0, 0, 0, 0], 0)),
            Acceptor::Internal,
            serializer,
            HandshakeSys::default(),
            Link::Detached,
            Arc::default(),
            0,
            Pomelo::boxed(),
        )
    }

    /// A copy of a session held by another node's gateway.
    pub(crate) fn remote(
        id: SessionId,
        uid: Option<&str>,
        remote: SocketAddr,
        serializer: Serializer,
        data: HashMap<String, serde_json::Value>,
        link: Arc<dyn GatewayLink>,
        dict: Arc<RouteDict>,
    ) -> Self {
        let s = Self::build(
            id,
            remote,
            Acceptor::Remote,
            serializer,
            HandshakeSys::default(),
            Link::Remote(link),
            dict,
            0,
            Pomelo::boxed(),
        );
        if let Some(uid) = uid.filter(|u| !u.is_empty()) {
            s.set_uid(Some(Arc::from(uid)));
        }
        s.lock_data().values = data;
        s
    }
}

/// All sessions of this node, by id and by bound user id.
#[derive(Clone, Default)]
pub struct SessionPool {
    inner: Arc<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    next_id: AtomicU64,
    maps: RwLock<Maps>,
    /// This node's own dictionary: every session's dictionary extends it with the same codes,
    /// so a payload encoded once with it is valid for all (fan-out).
    dict: OnceLock<Arc<RouteDict>>,
    /// The cluster's dictionary: this node's, plus the routes learned from other nodes. New
    /// sessions are handed it; entries are added, never changed.
    cluster_dict: RwLock<Arc<RouteDict>>,
    /// The uid-binding clock (a Lamport clock): a binding's stamp is above every stamp this
    /// gateway has bound or heard of, so a login made after the gateway heard of another binding
    /// of the same uid is ordered after it whatever the machines' clocks say.
    clock: AtomicU64,
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<SessionId, Session>,
    by_uid: HashMap<Arc<str>, Session>,
}

impl SessionPool {
    pub(crate) fn new(dict: Arc<RouteDict>) -> Self {
        let pool = Self::default();
        *pool
            .inner
            .cluster_dict
            .write()
            .unwrap_or_else(|e| e.into_inner()) = dict.clone();
        let _ = pool.inner.dict.set(dict);
        pool
    }

    /// The route dictionary a new client gets: the routes of every node of the cluster known so
    /// far, with codes that never change while this node runs.
    pub fn dict(&self) -> Arc<RouteDict> {
        self.inner
            .cluster_dict
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds routes another node serves (or pushes) to the cluster dictionary; returns how many
    /// were new. Sessions already open keep the dictionary they were given.
    pub(crate) fn learn_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) -> usize {
        let mut current = self
            .inner
            .cluster_dict
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut routes = routes
            .into_iter()
            .filter(|r| current.code(r).is_none())
            .peekable();
        if routes.peek().is_none() {
            return 0;
        }
        let mut next = RouteDict::clone(&current);
        let added = next.extend_stable(routes);
        for (route, code) in &added {
            tracing::debug!(%route, code, "route learned from the cluster");
        }
        *current = Arc::new(next);
        added.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        self.inner.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.inner.maps.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn create(&self, new: NewSession) -> Session {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let compress_above = match new.client.compression.as_deref() {
            Some("zlib") if new.compress_above > 0 => {
                u32::try_from(new.compress_above).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        let session = Session::build(
            id,
            new.remote,
            new.acceptor,
            new.serializer,
            new.client,
            Link::Local(crate::outbound::Outbound::new(new.outbound)),
            new.dict,
            compress_above,
            new.codec,
        );
        self.write().by_id.insert(id, session.clone());
        session
    }

    /// Takes a binding stamp heard from another gateway into the clock; returns the clock.
    pub(crate) fn observe_binding(&self, stamp: u64) -> u64 {
        self.inner
            .clock
            .fetch_max(stamp, Ordering::AcqRel)
            .max(stamp)
    }

    /// The binding clock now (sent to gateways that join).
    pub(crate) fn binding_clock(&self) -> u64 {
        self.inner.clock.load(Ordering::Acquire)
    }

    /// Binds a user id to a session. If another session holds the uid, that older session is
    /// kicked with reason `duplicate login`. Binding the same uid again is a no-op; binding a
    /// different uid to an already bound session is refused.
    pub fn bind(&self, session: &Session, uid: &str) -> Result<(), Error> {
        if uid.is_empty() {
            return Err(Error::bad_request("uid must not be empty"));
        }
        let older = {
            let mut maps = self.write();
            if session.is_closed() || !maps.by_id.contains_key(&session.id()) {
                return Err(Error::new(Code::Unavailable, "session closed"));
            }
            match session.uid() {
                Some(cur) if &*cur == uid => return Ok(()),
                Some(cur) => {
                    return Err(Error::bad_request(format!(
                        "session already bound to user {cur:?}"
                    )))
                }
                None => {}
            }
            let uid: Arc<str> = Arc::from(uid);
            session.set_uid(Some(uid.clone()));
            let stamp = self.inner.clock.fetch_add(1, Ordering::AcqRel) + 1;
            session.inner.bound_at.store(stamp, Ordering::Release);
            maps.by_uid
                .insert(uid, session.clone())
                .filter(|old| old.id() != session.id())
        };
        if let Some(old) = older {
            // The older connection's end logs it, with the uid and the reason.
            tracing::debug!(uid, old = old.id(), new = session.id(), "duplicate login");
            old.kick_as(DisconnectReason::DuplicateLogin, REASON_DUPLICATE_LOGIN);
        }
        Ok(())
    }

    /// Unbinds a session's uid (logout): the session stays, without a user; the uid can be
    /// bound again, here or on another gateway. Returns the uid it had.
    pub fn unbind(&self, session: &Session) -> Option<Arc<str>> {
        let mut maps = self.write();
        let uid = session.uid()?;
        if maps.by_uid.get(&uid).map(Session::id) == Some(session.id()) {
            maps.by_uid.remove(&uid);
        }
        session.set_uid(None);
        session.inner.bound_at.store(0, Ordering::Release);
        Some(uid)
    }

    /// Removes a session (on close). Its uid binding is removed only if it still points at it.
    pub(crate) fn remove(&self, session: &Session) {
        let mut maps = self.write();
        maps.by_id.remove(&session.id());
        if let Some(uid) = session.uid() {
            if maps.by_uid.get(&uid).map(Session::id) == Some(session.id()) {
                maps.by_uid.remove(&uid);
            }
        }
    }

    /// Sessions that sent nothing for `idle` or longer before `now` (and are not closing).
    pub(crate) fn idle(&self, now: Instant, idle: std::time::Duration) -> Vec<Session> {
        self.read()
            .by_id
            .values()
            .filter(|s| !s.is_closed() && s.idle_at(now, idle))
            .cloned()
            .collect()
    }

    /// The open sessions whose pushes are each their own (protocols with delivery state).
    pub(crate) fn own_pushes(&self) -> Vec<Session> {
        self.read()
            .by_id
            .values()
            .filter(|s| !s.is_closed() && s.push_class().is_none())
            .cloned()
            .collect()
    }

    /// The session with this id.
    pub fn get(&self, id: SessionId) -> Option<Session> {
        self.read().by_id.get(&id).cloned()
    }

    /// The session bound to this user id.
    pub fn by_uid(&self, uid: &str) -> Option<Session> {
        self.read().by_uid.get(uid).cloned()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of sessions with a bound user.
    pub fn bound_len(&self) -> usize {
        self.read().by_uid.len()
    }

    /// A snapshot of all sessions.
    pub fn all(&self) -> Vec<Session> {
        self.read().by_id.values().cloned().collect()
    }

    /// Kicks a user's session of this node; returns whether it had one. (The user operation is
    /// [`crate::App::kick_uid`], wherever the user is connected.)
    pub(crate) fn kick_uid(&self, uid: &str, reason: &str) -> bool {
        match self.by_uid(uid) {
            Some(s) => {
                s.kick(reason);
                true
            }
            None => false,
        }
    }
}

/// Pushes one payload to many sessions, encoding it once per serializer. Sessions of other
/// gateways get one message per gateway and serializer, naming all their session ids.
pub(crate) fn fan_out<P: ToPayload + ?Sized>(
    sessions: &[Session],
    route: &str,
    payload: &P,
) -> usize {
    let mut encoded = crate::payload::EncodedOnce::new(payload);
    // Per codec class, serializer, plain and compressed: a few kinds at most, searched in a
    // small array (no allocation per fan-out); beyond it, a packet is encoded per session.
    type Kind = (u8, usize, bool);
    // `None` for a kind whose encoding failed (logged once, not retried for each session).
    let mut packets: [Option<(Kind, Option<Bytes>)>; 4] = Default::default();
    // Per gateway and serializer: the link and the sessions to push to through it.
    type ByGateway = HashMap<(Arc<str>, usize), (Arc<dyn GatewayLink>, Vec<SessionId>)>;
    let mut remote: ByGateway = HashMap::new();
    let mut delivered = 0;
    for s in sessions {
        let ser = s.serializer();
        if let Link::Remote(r) = &s.inner.link {
            remote
                .entry((Arc::from(r.gateway()), ser as usize))
                .or_insert_with(|| (r.clone(), Vec::new()))
                .1
                .push(s.id());
            continue;
        }
        let body = match encoded.get(ser) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(route, error = %e, "broadcast encoding failed");
                continue;
            }
        };
        let Some(class) = s.push_class() else {
            // A push of this session's own (e.g. one with delivery state).
            if s.codec().push(s, route, body).is_ok() {
                delivered += 1;
            }
            continue;
        };
        let key = (class, ser as usize, s.compresses(body.len()));
        let known = packets.iter().flatten().find(|(k, _)| *k == key);
        let packet = match known {
            Some((_, Some(p))) => p.clone(),
            Some((_, None)) => continue,
            None => {
                let encoded = s.codec().encode_push(s, route, body);
                if let Err(e) = &encoded {
                    tracing::warn!(route, error = %e, "broadcast encoding failed");
                }
                let encoded = encoded.ok();
                if let Some(free) = packets.iter_mut().find(|slot| slot.is_none()) {
                    *free = Some((key, encoded.clone()));
                }
                match encoded {
                    Some(p) => p,
                    None => continue,
                }
            }
        };
        if s.send_packet(packet).is_ok() {
            delivered += 1;
        }
    }
    for ((_, ser), (link, sids)) in remote {
        let ser = if ser == 0 {
            Serializer::Json
        } else {
            Serializer::Protobuf
        };
        let Ok(body) = encoded.get(ser) else { continue };
        let n = sids.len();
        if link.push_many(sids, route, body).is_ok() {
            delivered += n;
        }
    }
    count_pushes(delivered as u64, (sessions.len() - delivered) as u64);
    delivered
}

fn count_pushes(sent: u64, dropped: u64) {
    if sent > 0 {
        metrics::counter!(crate::telemetry::PUSHES_SENT_TOTAL).increment(sent);
    }
    if dropped > 0 {
        metrics::counter!(crate::telemetry::PUSHES_DROPPED_TOTAL).increment(dropped);
    }
}

/// Where the fields every request touches end in a session's allocation (after the `Arc`'s two
/// counts): the layout budget in `budgets.rs`.
#[cfg(test)]
pub(crate) fn hot_fields_end() -> usize {
    2 * std::mem::size_of::<usize>()
        + std::mem::offset_of!(Inner, link)
        + std::mem::size_of::<Link>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The gateway's rule for other nodes' changes: per key, the last to arrive wins, but never
    /// one older than a change already applied from the same node.
    #[test]
    fn data_changes_merge_per_key_in_each_nodes_order() {
        let s = Session::detached(Serializer::Json);
        let change = |key: &str, v: Option<i64>, seq| DataChange {
            key: key.into(),
            value: v.map(serde_json::Value::from),
            seq,
        };
        s.merge_data("a", vec![change("k", Some(1), 5), change("x", Some(1), 6)]);
        s.merge_data("b", vec![change("k", Some(2), 1)]);
        assert_eq!(s.get("k"), Some(2.into()), "b's change arrived last");
        s.merge_data("a", vec![change("k", Some(3), 3)]);
        assert_eq!(
            s.get("k"),
            Some(2.into()),
            "older than a change already applied from a"
        );
        s.merge_data("a", vec![change("k", Some(4), 7)]);
        assert_eq!(s.get("k"), Some(4.into()));
        // A value set on the gateway itself stays until a newer change arrives.
        s.set("k", 9.into());
        s.merge_data("a", vec![change("k", Some(5), 7)]);
        assert_eq!(s.get("k"), Some(9.into()), "a repeated change is not newer");
        s.merge_data("a", vec![change("x", None, 8)]);
        assert_eq!(s.get("x"), None, "removals apply like values");
        assert_eq!(s.get("k"), Some(9.into()), "other keys are left alone");
    }

    fn local(pool: &SessionPool) -> Session {
        pool.create(NewSession {
            remote: SocketAddr::from(([127, 0, 0, 1], 1)),
            acceptor: Acceptor::Tcp,
            serializer: Serializer::Json,
            client: HandshakeSys::default(),
            outbound: 4,
            dict: Arc::default(),
            compress_above: 0,
            codec: Pomelo::boxed(),
        })
    }

    #[test]
    fn idle_lists_the_silent_open_sessions_only() {
        let pool = SessionPool::new(Arc::default());
        let (silent, talking, closed) = (local(&pool), local(&pool), local(&pool));
        let start = Instant::now();
        for s in [&silent, &talking, &closed] {
            s.mark_seen(start);
        }
        let idle = Duration::from_secs(2);
        talking.mark_seen(start + Duration::from_millis(1500));
        closed.close("gone");
        // Just short of the timeout nobody is idle.
        assert!(pool
            .idle(start + Duration::from_millis(1999), idle)
            .is_empty());
        let found = pool.idle(start + idle, idle);
        assert_eq!(
            found.iter().map(Session::id).collect::<Vec<_>>(),
            [silent.id()]
        );
        // A packet makes it fresh again.
        silent.mark_seen(start + idle);
        assert!(pool.idle(start + idle, idle).is_empty());
        let later = pool.idle(start + Duration::from_millis(3500), idle);
        assert_eq!(
            later.iter().map(Session::id).collect::<Vec<_>>(),
            [talking.id()]
        );
    }
}
