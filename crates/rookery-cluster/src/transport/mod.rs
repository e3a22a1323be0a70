//! Node-to-node transports: how frames travel between nodes.
//!
//! A transport moves opaque frames (encoded RPC envelopes). It offers request/reply with a
//! deadline and one-way sends; it delivers inbound frames to the node's [`FrameHandler`].

pub mod inproc;
#[cfg(feature = "nats")]
pub mod nats;
pub mod tcp;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::NodeInfo;

/// Why a frame could not be delivered or answered, or a transport could not start.
pub type TransportError = crate::LayerError<TransportErrorKind>;

/// What kind of transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// The deadline passed before the reply arrived.
    Timeout,
    /// The link to the node closed (node died, restarted, or was removed) with the call in
    /// flight; the message is the node id.
    Closed,
    /// The node could not be reached at all; the message is the node (or server) concerned.
    Unreachable,
    /// Too many frames are waiting for this node; the message is the node id.
    Overloaded,
    /// The peer refused our credentials.
    Unauthorized,
    /// A frame broke the transport's framing or limits.
    BadFrame,
    /// This node could not listen for other nodes; the message is its own address.
    Listen,
}

impl std::fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Timeout => "timed out",
            Self::Closed => "connection closed",
            Self::Unreachable => "unreachable",
            Self::Overloaded => "too many pending frames",
            Self::Unauthorized => "unauthorized",
            Self::BadFrame => "bad frame",
            Self::Listen => "cannot listen",
        })
    }
}

impl TransportError {
    /// The deadline passed.
    pub fn timeout() -> Self {
        Self::new(TransportErrorKind::Timeout, "")
    }

    /// The link to `node` closed with the call in flight.
    pub fn closed(node: impl Into<String>) -> Self {
        Self::new(TransportErrorKind::Closed, node)
    }

    /// `node` could not be reached, for `why`.
    pub fn unreachable(node: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(TransportErrorKind::Unreachable, node)
            .with_source(crate::error::Detail(why.into()))
    }

    /// Too many frames wait for `node`.
    pub fn overloaded(node: impl Into<String>) -> Self {
        Self::new(TransportErrorKind::Overloaded, node)
    }

    /// The peer refused our credentials.
    pub fn unauthorized(why: impl Into<String>) -> Self {
        Self::new(TransportErrorKind::Unauthorized, why)
    }

    /// A frame broke the framing or limits.
    pub fn bad_frame(why: impl Into<String>) -> Self {
        Self::new(TransportErrorKind::BadFrame, why)
    }

    /// This node could not listen on `addr`.
    pub fn listen(addr: impl Into<String>, source: std::io::Error) -> Self {
        Self::new(TransportErrorKind::Listen, addr).with_source(source)
    }
}

/// Receives inbound frames.
#[async_trait]
pub trait FrameHandler: Send + Sync + 'static {
    /// Handles a request frame and returns the reply frame.
    async fn request(&self, frame: Bytes) -> Bytes;
    /// Handles a one-way frame.
    async fn notify(&self, frame: Bytes);
}

/// A node-to-node transport.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Starts receiving frames for `node` until `shutdown`. Returns the address peers should dial
    /// (to put in [`NodeInfo::address`]); empty for transports that need none.
    async fn serve(
        &self,
        node: &NodeInfo,
        handler: Arc<dyn FrameHandler>,
        shutdown: CancellationToken,
    ) -> Result<String, TransportError>;

    /// Sends a request frame to `target` and waits for its reply until `deadline`.
    async fn request(
        &self,
        target: &NodeInfo,
        frame: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, TransportError>;

    /// Sends a one-way frame to `target`.
    async fn notify(&self, target: &NodeInfo, frame: Bytes) -> Result<(), TransportError>;

    /// Sends a one-way frame to every node of a type. `nodes` are the known nodes of that type;
    /// transports with native fan-out (NATS: a subject per type) may ignore them.
    async fn broadcast(
        &self,
        node_type: &str,
        nodes: &[NodeInfo],
        frame: Bytes,
    ) -> Result<(), TransportError> {
        let _ = node_type;
        for n in nodes {
            self.notify(n, frame.clone()).await?;
        }
        Ok(())
    }

    /// The node left the cluster: fail its in-flight requests at once and drop its link.
    fn node_lost(&self, node_id: &str);
}

/// A boxed inbound-frame future (a handler call and whatever follows it).
pub(crate) type BoxedCall<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Polls an inbound call once, right here, and returns its output if that poll finished it:
/// most handlers answer on their first poll, and then need no task of their own. `Err` holds a
/// panic's payload. `None`: the call waits for something; the caller spawns it, and the spawned
/// task's first poll registers its own waker (the one used here wakes nothing).
pub(crate) fn poll_inline<T>(
    call: &mut BoxedCall<T>,
) -> Option<Result<T, Box<dyn std::any::Any + Send>>> {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    match std::panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(v)) => Some(Ok(v)),
        Ok(Poll::Pending) => None,
        Err(panic) => Some(Err(panic)),
    }
}
