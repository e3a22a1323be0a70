//! The cluster: node identity, discovery, node-to-node transports.

pub mod discovery;
mod node;
pub mod registry;
pub(crate) mod runtime;
pub mod selector;
pub mod transport;

pub use discovery::embedded::EmbeddedDiscovery;
pub use discovery::static_file::StaticDiscovery;
pub use discovery::{Discovery, DiscoveryError, DiscoveryEvent};
pub use node::{BadLogicalAddr, LogicalAddr, NodeInfo, NodeState};
pub use registry::{NodeEvent, Registry};
pub use transport::inproc::InProcTransport;
pub use transport::{FrameHandler, Transport, TransportError};
