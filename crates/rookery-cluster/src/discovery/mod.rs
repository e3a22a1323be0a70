//! Discovery: how nodes learn of each other.
//!
//! A back end registers this node and reports every node of the cluster (this one included) as a
//! stream of [`DiscoveryEvent`]s: first an `Added` for each node already known, then changes. After
//! a reconnect or resync a back end reports the difference with what it reported before, so the
//! receiver never needs to reconcile by itself.

pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod static_file;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::NodeInfo;

/// A change in the set of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A node appeared.
    Added(NodeInfo),
    /// A known node's info changed (metadata, state, address).
    Updated(NodeInfo),
    /// A node left (deregistered, or its lease/TTL expired). Carries its id.
    Removed(String),
}

/// Why a discovery operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The back end could not be reached or answered with an error.
    #[error("discovery back end unavailable: {0}")]
    Unavailable(String),
    /// The back end refused our credentials.
    #[error("discovery refused our credentials: {0}")]
    Unauthorized(String),
    /// Static configuration is wrong.
    #[error("invalid discovery configuration: {0}")]
    Config(String),
    /// Another live node is registered under this node's id; nothing was overwritten.
    #[error("node id {id:?} is already registered by a live node ({detail})")]
    DuplicateId {
        /// The id asked for.
        id: String,
        /// Who holds it, and what to do.
        detail: String,
    },
}

/// Capacity of event channels handed out by [`Discovery::watch`].
pub const EVENT_QUEUE: usize = 1024;

/// A discovery back end.
#[async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// Registers this node and keeps it registered (lease keepalive, re-register after loss)
    /// until [`Discovery::deregister`]. Fails with [`DiscoveryError::DuplicateId`] when another
    /// live node holds the id (registering again under the same handle is an update).
    async fn register(&self, node: &NodeInfo) -> Result<(), DiscoveryError>;

    /// Publishes a change of this node's info.
    async fn update(&self, node: &NodeInfo) -> Result<(), DiscoveryError>;

    /// Removes this node (revokes its lease) and stops keeping it registered.
    async fn deregister(&self) -> Result<(), DiscoveryError>;

    /// Subscribes to cluster membership: `Added` for every node known now, then changes. The
    /// channel is bounded ([`EVENT_QUEUE`]); the back end waits for the receiver when it is full.
    /// It closes when the back end shuts down.
    async fn watch(&self) -> Result<mpsc::Receiver<DiscoveryEvent>, DiscoveryError>;
}
