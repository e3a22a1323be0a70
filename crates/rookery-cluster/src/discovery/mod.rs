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
pub type DiscoveryError = crate::LayerError<DiscoveryErrorKind>;

/// What kind of discovery failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryErrorKind {
    /// The back end could not be reached or answered with an error.
    Unavailable,
    /// The back end refused our credentials.
    Unauthorized,
    /// The configuration is wrong.
    Config,
    /// Another live node is registered under this node's id (the message); nothing was
    /// overwritten. The source says who holds it and what to do.
    DuplicateId,
}

impl std::fmt::Display for DiscoveryErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "discovery back end unavailable",
            Self::Unauthorized => "discovery refused our credentials",
            Self::Config => "invalid discovery configuration",
            Self::DuplicateId => "node id already registered by a live node",
        })
    }
}

impl DiscoveryError {
    /// The back end could not be reached or failed.
    pub fn unavailable(why: impl Into<String>) -> Self {
        Self::new(DiscoveryErrorKind::Unavailable, why)
    }

    /// The back end refused our credentials.
    pub fn unauthorized(why: impl Into<String>) -> Self {
        Self::new(DiscoveryErrorKind::Unauthorized, why)
    }

    /// The configuration is wrong.
    pub fn config(why: impl Into<String>) -> Self {
        Self::new(DiscoveryErrorKind::Config, why)
    }

    /// `id` is held by a live node; `detail` says who and what to do.
    pub fn duplicate_id(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(DiscoveryErrorKind::DuplicateId, id)
            .with_source(crate::error::Detail(detail.into()))
    }
}

/// Capacity of event channels handed out by [`Discovery::watch`].
pub const EVENT_QUEUE: usize = 1024;

/// A discovery back end.
#[async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// Registers this node and keeps it registered (lease keepalive, re-register after loss)
    /// until [`Discovery::deregister`]. Fails with [`DiscoveryErrorKind::DuplicateId`] when another
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
