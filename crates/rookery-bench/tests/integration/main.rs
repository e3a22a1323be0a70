//! rookery-bench's integration tests, as one test binary; a module per concern.
//!
//! `pacer.rs` stays a binary of its own: it counts the process's pacer threads, which the other
//! tests' runs would add to.

mod common;

mod bench;
mod disconnects;
mod nats_ceiling;
mod tls;
