//! NATS transport: nodes exchange frames through a NATS server instead of dialing each other.
//!
//! Subjects (node ids and types are sanitised, see [`subject_token`]):
//! - `{prefix}.node.{node_id}`: requests and one-way frames for one node;
//! - `{prefix}.type.{node_type}`: broadcasts to every node of a type (a plain subscription, not a
//!   queue group, so every node of the type receives each frame).
//!
//! Requests use NATS request/reply with the transport's own reply subscription: every request
//! names `{inbox}.{n}` as its reply subject, one wildcard subscription `{inbox}.*` takes the
//! replies, and a map keyed by `n` hands each to its caller (async-nats' `request` formats a
//! fresh inbox subject and keys its own map by `String` for every call). When nobody subscribes
//! to a node's subject the server answers "no responders" at once, which becomes
//! [`TransportErrorKind::Unreachable`](crate::TransportErrorKind) without waiting for the deadline. The client reconnects by itself after the server goes away and re-subscribes, so a
//! transport keeps working across NATS restarts; calls made while the connection is down fail
//! immediately with [`TransportErrorKind::Unreachable`](crate::TransportErrorKind) (or at their deadline if the loss is not yet
//! noticed).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{ConnectErrorKind, StatusCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{poll_inline, BoxedCall, FrameHandler, Transport, TransportError};
use crate::FastMap;
use crate::NodeInfo;

/// Inbound calls of one [`NatsTransport::serve`] call that wait in tasks of their own at once
/// (calls answered on their first poll take none).
const MAX_CONCURRENT_INBOUND: usize = 1024;

/// Longest pause between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Settings of the NATS transport (the `[cluster.nats]` section of the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// First token(s) of every subject the transport uses, so several clusters can share a server.
    pub subject_prefix: String,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// Authentication token.
    pub token: Option<String>,
    /// Seconds to wait for the connection to the server to be established.
    pub connect_timeout: f64,
    /// Requests that may wait for replies from one target node at once; more fail with
    /// [`TransportErrorKind::Overloaded`](crate::TransportErrorKind::Overloaded).
    pub max_pending: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "rookery".into(),
            user: None,
            password: None,
            token: None,
            connect_timeout: 5.0,
            max_pending: 10_000,
        }
    }
}

/// Replaces the characters NATS gives a meaning in subjects (`.`, `*`, `>`) and whitespace with
/// `_`, so a node id or type is always exactly one subject token. An empty string becomes `_`.
pub fn subject_token(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    s.chars()
        .map(|c| {
            if matches!(c, '.' | '*' | '>') || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// True when `prefix` is one or more non-empty subject tokens without wildcards or whitespace.
fn valid_prefix(prefix: &str) -> bool {
    prefix
        .split('.')
        .all(|t| !t.is_empty() && subject_token(t) == t)
}

/// Per target node: a token cancelled when the node is lost, the requests in flight to it, and
/// its subject (built once).
struct NodeSlot {
    lost: CancellationToken,
    pending: Arc<AtomicUsize>,
    subject: async_nats::Subject,
}

/// Gives back a pending-request slot when the request ends.
struct PendingGuard(Arc<AtomicUsize>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The callers waiting for replies, by the number at the end of their reply subject.
struct Replies {
    /// `{inbox}.`: a reply subject is this and a number.
    prefix: String,
    next: AtomicU64,
    waiting: Mutex<FastMap<u64, oneshot::Sender<async_nats::Message>>>,
}

impl Replies {
    /// Registers a caller; its reply subject and the receiver of its reply. The returned guard
    /// forgets the caller when the call ends (answered, timed out or abandoned).
    fn wait(&self) -> (Waiting<'_>, String, oneshot::Receiver<async_nats::Message>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, tx);
        let mut subject = String::with_capacity(self.prefix.len() + 20);
        subject.push_str(&self.prefix);
        subject.push_str(itoa::Buffer::new().format(n));
        (Waiting(self, n), subject, rx)
    }

    /// Hands a reply to its caller; replies nobody waits for (late ones) are dropped.
    fn deliver(&self, msg: async_nats::Message) {
        let Some(n) = msg
            .subject
            .as_str()
            .strip_prefix(self.prefix.as_str())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return;
        };
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
        if let Some(tx) = waiter {
            let _ = tx.send(msg);
        }
    }
}

/// Forgets a waiting caller when its call ends.
struct Waiting<'a>(&'a Replies, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// Node-to-node transport over NATS. One connection per transport; cheap to share behind an `Arc`.
pub struct NatsTransport {
    client: async_nats::Client,
    prefix: String,
    max_pending: usize,
    connect_timeout: Duration,
    nodes: Mutex<FastMap<String, NodeSlot>>,
    replies: Arc<Replies>,
    /// Stops the task taking replies off the reply subscription (on drop).
    stop: CancellationToken,
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("prefix", &self.prefix)
            .field("max_pending", &self.max_pending)
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

/// The URL without credentials, for error messages.
fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| {
            let u = u.trim();
            let (scheme, rest) = match u.split_once("://") {
                Some((s, r)) => (Some(s), r),
                None => (None, u),
            };
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            match scheme {
                Some(s) => format!("{s}://{host}"),
                None => host.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Exponential back-off between reconnection attempts: at once, then 50 ms doubling up to
/// [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(50u64.saturating_mul(1u64 << exp)).min(MAX_RECONNECT_DELAY)
}

impl NatsTransport {
    /// Connects to the NATS server. A refused login gives [`TransportErrorKind::Unauthorized`](crate::TransportErrorKind::Unauthorized); a server
    /// that cannot be reached within `connect_timeout` gives [`TransportErrorKind::Unreachable`](crate::TransportErrorKind).
    pub async fn connect(config: NatsConfig) -> Result<Self, TransportError> {
        let url = redact_url(&config.url);
        let connect_timeout = Duration::try_from_secs_f64(config.connect_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                TransportError::unreachable(
                    url.clone(),
                    format!(
                        "invalid connect_timeout {}: expected positive seconds",
                        config.connect_timeout
                    ),
                )
            })?;
        // Subjects are built here from sanitised tokens and this prefix, so the client's check
        // of every published subject (a few hundred instructions per message) is skipped.
        if !valid_prefix(&config.subject_prefix) {
            return Err(TransportError::unreachable(
                url,
                format!(
                    "invalid subject_prefix {:?}: expected dot-separated tokens without \
                     spaces, '*' or '>'",
                    config.subject_prefix
                ),
            ));
        }
        let mut options = async_nats::ConnectOptions::new()
            .name("rookery")
            .skip_subject_validation(true)
            .connection_timeout(connect_timeout)
            .reconnect_delay_callback(reconnect_delay)
            // Never give up: the transport must survive NATS outages of any length.
            .max_reconnects(None::<usize>);
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        } else if config.user.is_some() || config.password.is_some() {
            return Err(TransportError::unauthorized(
                "NATS user and password must be set together",
            ));
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        let connecting = options.connect(config.url.as_str());
        // The client applies connect_timeout per attempt (TCP + handshake); bound the whole call
        // too, with a little slack.
        let client = match tokio::time::timeout(connect_timeout * 2, connecting).await {
            Err(_) => {
                return Err(TransportError::unreachable(
                    url,
                    "timed out connecting to NATS",
                ))
            }
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                        TransportError::unauthorized(format!("NATS at {url}: {e}"))
                    }
                    _ => TransportError::unreachable(url, e.to_string()),
                })
            }
            Ok(Ok(client)) => client,
        };
        tracing::debug!(%url, "connected to NATS");
        let inbox = client.new_inbox();
        let mut reply_sub = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| TransportError::unreachable(url.clone(), e.to_string()))?;
        let replies = Arc::new(Replies {
            prefix: format!("{inbox}."),
            next: AtomicU64::new(1),
            waiting: Mutex::new(FastMap::default()),
        });
        let stop = CancellationToken::new();
        // Owned by the transport: it ends when the transport is dropped (or the subscription
        // ends), and then unsubscribes. The client re-subscribes after a reconnection by itself.
        tokio::spawn({
            let replies = replies.clone();
            let stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        m = reply_sub.next() => match m {
                            Some(m) => replies.deliver(m),
                            None => break,
                        },
                    }
                }
                let _ = reply_sub.unsubscribe().await;
            }
        });
        Ok(Self {
            client,
            prefix: config.subject_prefix,
            max_pending: config.max_pending,
            connect_timeout,
            nodes: Mutex::new(FastMap::default()),
            replies,
            stop,
        })
    }

    /// The subject carrying requests and one-way frames for a node.
    pub fn node_subject(&self, node_id: &str) -> String {
        format!("{}.node.{}", self.prefix, subject_token(node_id))
    }

    /// The subject carrying broadcasts to a node type.
    pub fn type_subject(&self, node_type: &str) -> String {
        format!("{}.type.{}", self.prefix, subject_token(node_type))
    }

    /// True while the connection to the NATS server is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Reserves a pending-request slot for `node_id`; returns the node's lost-token and subject
    /// with it.
    fn acquire(
        &self,
        node_id: &str,
    ) -> Result<(CancellationToken, PendingGuard, async_nats::Subject), TransportError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if !nodes.contains_key(node_id) {
            let slot = NodeSlot {
                lost: CancellationToken::new(),
                pending: Arc::new(AtomicUsize::new(0)),
                subject: self.node_subject(node_id).into(),
            };
            nodes.insert(node_id.to_string(), slot);
        }
        let slot = &nodes[node_id];
        let before = slot.pending.fetch_add(1, Ordering::AcqRel);
        let guard = PendingGuard(slot.pending.clone());
        if before >= self.max_pending {
            return Err(TransportError::overloaded(node_id.to_string()));
        }
        Ok((slot.lost.clone(), guard, slot.subject.clone()))
    }

    /// Fails fast when the connection is known to be down.
    fn ensure_connected(&self, node_id: &str) -> Result<(), TransportError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(TransportError::unreachable(
                node_id.to_string(),
                format!("NATS connection {state}"),
            )),
        }
    }

    /// Publishes a one-way frame, bounded in time so a full outbound queue cannot hang the caller.
    async fn publish(
        &self,
        who: &str,
        subject: String,
        frame: Bytes,
    ) -> Result<(), TransportError> {
        self.ensure_connected(who)?;
        match tokio::time::timeout(self.connect_timeout, self.client.publish(subject, frame)).await
        {
            Ok(r) => r.map_err(|e| publish_error(who, e)),
            Err(_) => Err(TransportError::unreachable(
                who.to_string(),
                "NATS outbound queue full",
            )),
        }
    }
}

/// A failed publish: the frame's fault (too big, bad subject) or the connection's.
fn publish_error(who: &str, e: async_nats::PublishError) -> TransportError {
    match e.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded
        | async_nats::client::PublishErrorKind::InvalidSubject => {
            TransportError::bad_frame(e.to_string())
        }
        _ => TransportError::unreachable(who.to_string(), e.to_string()),
    }
}

/// Runs one inbound message through the handler; replies when the sender waits for a reply.
async fn handle_message(
    client: Arc<async_nats::Client>,
    handler: Arc<dyn FrameHandler>,
    msg: async_nats::Message,
) {
    match msg.reply {
        Some(reply) => {
            let answer = handler.request(msg.payload).await;
            if let Err(e) = client.publish(reply, answer).await {
                tracing::debug!(error = %e, "cannot publish NATS reply");
            }
        }
        None => handler.notify(msg.payload).await,
    }
}

#[async_trait]
impl Transport for NatsTransport {
    async fn serve(
        &self,
        node: &NodeInfo,
        handler: Arc<dyn FrameHandler>,
        shutdown: CancellationToken,
    ) -> Result<String, TransportError> {
        let subscribe_error = |e: async_nats::SubscribeError| {
            TransportError::unreachable(node.id.clone(), e.to_string())
        };
        let mut node_sub = self
            .client
            .subscribe(self.node_subject(&node.id))
            .await
            .map_err(subscribe_error)?;
        let mut type_sub = self
            .client
            .subscribe(self.type_subject(&node.node_type))
            .await
            .map_err(subscribe_error)?;

        // The server handles a connection's operations in order: once a message published after
        // our subscriptions comes back, they are registered and peers can reach this node.
        let probe = self.client.new_inbox();
        match self.client.subscribe(probe.clone()).await {
            Ok(mut probe_sub) => {
                let echoed = async {
                    self.client.publish(probe, Bytes::new()).await.ok()?;
                    probe_sub.next().await
                };
                if tokio::time::timeout(self.connect_timeout, echoed)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    tracing::warn!(node = %node.id, "NATS subscriptions not confirmed in time");
                }
                let _ = probe_sub.unsubscribe().await;
            }
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "cannot confirm NATS subscriptions")
            }
        }

        // Shared by every inbound call (cloning the client itself takes several reference
        // counts).
        let client = Arc::new(self.client.clone());
        let node_id = node.id.clone();
        tokio::spawn(async move {
            let tracker = TaskTracker::new();
            let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_INBOUND));
            // Takes from both subscriptions in turn, so neither starves the other.
            let mut inbound = futures_util::stream::select(&mut node_sub, &mut type_sub);
            // One wait for the shutdown for the whole loop (not a fresh one per message).
            let mut stopping = std::pin::pin!(shutdown.cancelled());
            loop {
                let msg = tokio::select! {
                    biased;
                    _ = &mut stopping => break,
                    m = inbound.next() => m,
                };
                let Some(msg) = msg else {
                    tracing::debug!(node = %node_id, "NATS subscription ended");
                    break;
                };
                let mut call: BoxedCall<()> =
                    Box::pin(handle_message(client.clone(), handler.clone(), msg));
                // A handler that answers on its first poll needs no task (the usual case).
                match poll_inline(&mut call) {
                    Some(Ok(())) => continue,
                    Some(Err(_)) => {
                        tracing::warn!(node = %node_id, "inbound handler panicked");
                        continue;
                    }
                    None => {}
                }
                // The calls still waiting are bounded: at most MAX_CONCURRENT_INBOUND tasks;
                // beyond that the loop stops taking messages until one ends.
                let permit = tokio::select! {
                    biased;
                    _ = &mut stopping => break,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    let _permit = permit;
                    // Biased: a call that can finish (its handler done, its reply being
                    // published) finishes even when the node is stopping.
                    tokio::select! {
                        biased;
                        _ = call => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
            drop(inbound);
            let _ = node_sub.unsubscribe().await;
            let _ = type_sub.unsubscribe().await;
            tracker.close();
            tracker.wait().await;
            tracing::debug!(node = %node_id, "NATS transport stopped serving");
        });
        Ok(String::new())
    }

    async fn request(
        &self,
        target: &NodeInfo,
        frame: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, TransportError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(TransportError::timeout());
        }
        let (lost, _pending, subject) = self.acquire(&target.id)?;
        self.ensure_connected(&target.id)?;
        let (_waiting, reply, answer) = self.replies.wait();
        let call = async {
            self.client
                .publish_with_reply(subject, reply, frame)
                .await
                .map_err(|e| publish_error(&target.id, e))?;
            answer.await.map_err(|_| {
                TransportError::unreachable(target.id.clone(), "NATS reply channel closed")
            })
        };
        // One timer for the whole call: queueing the request and waiting for the reply.
        let msg = tokio::select! {
            biased;
            _ = lost.cancelled() => return Err(TransportError::closed(target.id.clone())),
            r = tokio::time::timeout_at(deadline, call) => match r {
                Ok(r) => r?,
                Err(_) => return Err(TransportError::timeout()),
            },
        };
        if msg.status == Some(StatusCode::NO_RESPONDERS) {
            return Err(TransportError::unreachable(
                target.id.clone(),
                "no responders",
            ));
        }
        Ok(msg.payload)
    }

    async fn notify(&self, target: &NodeInfo, frame: Bytes) -> Result<(), TransportError> {
        self.publish(&target.id, self.node_subject(&target.id), frame)
            .await
    }

    async fn broadcast(
        &self,
        node_type: &str,
        _nodes: &[NodeInfo],
        frame: Bytes,
    ) -> Result<(), TransportError> {
        self.publish(node_type, self.type_subject(node_type), frame)
            .await
    }

    fn node_lost(&self, node_id: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = nodes.get_mut(node_id) {
            // Fail the requests in flight; later requests (the node may come back) get a fresh
            // token. The pending counter carries on: the failed requests release it as they end.
            slot.lost.cancel();
            slot.lost = CancellationToken::new();
            if slot.pending.load(Ordering::Acquire) == 0 {
                nodes.remove(node_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_sanitised() {
        assert_eq!(subject_token("room-1"), "room-1");
        assert_eq!(subject_token("a.b*c>d e\tf"), "a_b_c_d_e_f");
        assert_eq!(subject_token(""), "_");
    }

    #[test]
    fn replies_reach_their_caller_and_ended_calls_are_forgotten() {
        let replies = Replies {
            prefix: "_INBOX.x.".into(),
            next: AtomicU64::new(1),
            waiting: Mutex::new(FastMap::default()),
        };
        let msg = |subject: &str, payload: &'static [u8]| async_nats::Message {
            subject: subject.to_string().into(),
            reply: None,
            payload: Bytes::from_static(payload),
            headers: None,
            status: None,
            description: None,
            length: 0,
        };
        let waiting = |r: &Replies| r.waiting.lock().unwrap().len();

        let (a_guard, a_subject, mut a) = replies.wait();
        let (b_guard, b_subject, mut b) = replies.wait();
        assert_eq!(a_subject, "_INBOX.x.1");
        assert_eq!(b_subject, "_INBOX.x.2");
        assert_eq!(waiting(&replies), 2);
        // Foreign and malformed subjects are ignored.
        replies.deliver(msg("_INBOX.y.1", b"no"));
        replies.deliver(msg("_INBOX.x.one", b"no"));
        replies.deliver(msg("_INBOX.x.9", b"no"));
        assert!(a.try_recv().is_err() && b.try_recv().is_err());
        replies.deliver(msg(&b_subject, b"to b"));
        assert_eq!(b.try_recv().unwrap().payload, &b"to b"[..]);
        assert_eq!(waiting(&replies), 1);
        drop(b_guard);
        // A call that ends unanswered (timed out, node lost) is forgotten; a late reply is dropped.
        drop(a_guard);
        assert_eq!(waiting(&replies), 0);
        replies.deliver(msg(&a_subject, b"late"));
        assert!(a.try_recv().is_err());
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(valid_prefix("rookery"));
        assert!(valid_prefix("game-1.rookery"));
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a\tb"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: NatsConfig = toml::from_str("").unwrap();
        assert_eq!(c, NatsConfig::default());
        assert_eq!(c.url, "nats://127.0.0.1:4222");
        assert_eq!(c.max_pending, 10_000);
        assert!(toml::from_str::<NatsConfig>("bogus = 1").is_err());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("nats://u:p@h:1, nats://h2:2"),
            "nats://h:1,nats://h2:2"
        );
        assert_eq!(redact_url("tok@h:1"), "h:1");
    }

    #[test]
    fn reconnect_backoff_is_capped() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(50));
        assert_eq!(reconnect_delay(3), Duration::from_millis(100));
        assert_eq!(reconnect_delay(100), MAX_RECONNECT_DELAY);
    }
}
