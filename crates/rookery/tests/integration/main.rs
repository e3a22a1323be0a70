//! Rookery's integration tests over real sockets, as one test binary (one link instead of one per
//! file); a module per concern.
//!
//! `tracing_hop.rs` stays a binary of its own: it installs the process-wide log subscriber.

mod common;

mod cluster_inproc;
#[cfg(feature = "nats")]
mod cluster_nats;
mod cluster_tcp;
mod compression;
mod disconnects;
mod groups_and_push;
mod handshake;
mod heartbeat_timeout;
mod malformed_input;
mod middleware_and_typed;
mod module_lifecycle;
mod routing_and_errors;
mod sessions_and_kick;
mod shutdown;
mod tls;
