//! RPC between modules, across nodes or within one: typed calls with deadlines, notifies,
//! broadcasts; gateway forwarding of client requests; backends acting on remote sessions.
//!
//! Addressing ([`Target`]): a node type (a selector picks one node), a node id (`type@id`), a
//! logical address, or the nodes running a module. A call whose chosen node is this node runs
//! the handler directly, with no envelope and no transport.
//!
//! Delivery: calls are at-most-once; a call either gets the handler's reply, the handler's
//! error, or an [`RpcError`] (timeout, no node, link closed) by its deadline; it never hangs.
//!
//! Layout: `client` (calls and the choice of a node), `forward` (client requests for modules
//! that run elsewhere, and running a route here), `gateways` (user operations that reach every
//! gateway, bindings), `remote_session` (a backend's ordered link to a gateway), `server`
//! (inbound frames), `system` (the `sys.*` operations between nodes, one file each), `envelope`
//! (the frame between nodes), `error`, `target`.

mod client;
pub(crate) mod envelope;
mod error;
mod forward;
mod gateways;
mod remote_session;
mod server;
mod system;
mod target;

use bytes::Bytes;

pub use client::{CallOptions, NodeChoice};
pub use error::RpcError;
pub(crate) use remote_session::RemoteSession;
pub(crate) use server::RpcServer;
pub use target::Target;

use crate::App;

/// RPC on behalf of a node: `app.rpc()`.
#[derive(Clone, Copy)]
pub struct Rpc<'a> {
    app: &'a App,
}

impl App {
    /// RPC from this node.
    pub fn rpc(&self) -> Rpc<'_> {
        Rpc { app: self }
    }
}

/// The module of a client route `module.handler.method`; None unless it has exactly three parts.
/// (A byte scan: `split('.')` sets up a general pattern searcher per call.)
pub(crate) fn route_module(route: &str) -> Option<&str> {
    let mut dots = route
        .bytes()
        .enumerate()
        .filter_map(|(i, b)| (b == b'.').then_some(i));
    let first = dots.next()?;
    (dots.next().is_some() && dots.next().is_none()).then(|| &route[..first])
}

/// The current trace id in envelope form (empty when there is none).
fn current_trace() -> Bytes {
    crate::telemetry::current_trace_id()
        .map(|id| Bytes::copy_from_slice(&crate::telemetry::trace_id_hex(id)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::route_module;

    #[test]
    fn route_module_needs_exactly_three_parts() {
        assert_eq!(route_module("room.room.say"), Some("room"));
        assert_eq!(route_module("a..b"), Some("a"));
        assert_eq!(route_module("room.room"), None);
        assert_eq!(route_module("room.room.say.more"), None);
        assert_eq!(route_module("room"), None);
        assert_eq!(route_module(""), None);
        assert_eq!(route_module("é.x.y"), Some("é"));
    }
}
