//! The cluster: node identity, discovery, node-to-node transports.

pub mod discovery;
mod node;
pub mod selector;
pub mod transport;

pub use discovery::{Discovery, DiscoveryError, DiscoveryEvent};
pub use node::{BadLogicalAddr, LogicalAddr, NodeInfo, NodeState};
pub use transport::{FrameHandler, Transport, TransportError};
