//! The cluster layer of Rookery: node identity and logical addresses, the registry of known
//! nodes, selectors, and the [`Discovery`] and [`Transport`] traits with their back ends.
//!
//! It moves opaque frames between nodes and keeps track of who is in the cluster; it knows
//! nothing of sessions, gateways, modules or what the frames mean (the `rookery` crate builds
//! RPC on top of it and re-exports it as `rookery::cluster`).
//!
//! Back ends behind cargo features (off by default, so that a build without them carries neither
//! client): `etcd` (`discovery::etcd`) and `nats` (`transport::nats`).

#![forbid(unsafe_code)]

pub mod discovery;
mod error;
mod node;
pub mod registry;
pub mod selector;
pub mod transport;

pub use discovery::embedded::EmbeddedDiscovery;
pub use discovery::static_file::StaticDiscovery;
pub use discovery::{Discovery, DiscoveryError, DiscoveryErrorKind, DiscoveryEvent};
pub use error::LayerError;
pub use node::{BadLogicalAddr, LogicalAddr, NodeInfo, NodeState};
pub use registry::{NodeEvent, Registry};
pub use transport::inproc::InProcTransport;
pub use transport::{FrameHandler, Transport, TransportError, TransportErrorKind};

/// A hash map with a fast, seeded hasher (foldhash) for the maps looked up on every call: here
/// the registry's indexes, transport links and pending replies; in `rookery` selectors, gateway
/// links, remote sessions by gateway and RPC metrics by target. Their keys are node ids, module
/// names and routes, which come from configuration and discovery, not from clients, so a hasher
/// built to resist chosen keys would cost time for nothing.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
