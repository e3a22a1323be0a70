//! The cluster layer against real sockets and real servers: one test binary, one module per
//! concern. The etcd and NATS back ends are tested when their features are on (they start real
//! `etcd` and `nats-server` processes through `rookery-testkit`).

#[cfg(feature = "etcd")]
mod discovery_etcd;
mod selector_props;
#[cfg(feature = "nats")]
mod transport_nats;
mod transport_tcp;
