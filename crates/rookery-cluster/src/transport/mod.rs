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

/// Why a frame could not be delivered or answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The deadline passed before the reply arrived.
    #[error("timed out")]
    Timeout,
    /// The link to the node closed (node died, restarted, or was removed) with the call in flight.
    #[error("connection to {0} closed")]
    Closed(String),
    /// The node could not be reached at all.
    #[error("node {0} unreachable: {1}")]
    Unreachable(String, String),
    /// Too many frames are waiting for this node.
    #[error("too many pending frames for {0}")]
    Overloaded(String),
    /// The peer refused our credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A frame broke the transport's framing or limits.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// This node could not listen for other nodes (its own address, not a peer's).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why.
        reason: String,
    },
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
