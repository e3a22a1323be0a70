//! The cluster: node identity, discovery, node-to-node transports.
//!
//! Everything but the node's cluster state (`runtime`) lives in the `rookery-cluster` crate
//! and is re-exported here unchanged, so `rookery::cluster::...` paths are the public ones.

pub use rookery_cluster::*;
pub use rookery_cluster::{discovery, registry, selector, transport};

pub(crate) mod runtime;
