//! The multi-node suite over the in-process transport.

mod cluster;
mod common;

use cluster::suite as cluster_suite;

use std::sync::Arc;

use rookery::cluster::{InProcTransport, Transport};

fn hub() -> impl Fn() -> Arc<dyn Transport> {
    let hub = InProcTransport::new();
    move || Arc::new(hub.clone()) as Arc<dyn Transport>
}

#[tokio::test]
async fn forwarding() {
    cluster_suite::forwarding(hub()).await;
}

#[tokio::test]
async fn remote_sessions() {
    cluster_suite::remote_sessions(hub()).await;
}

#[tokio::test]
async fn users_across_nodes() {
    cluster_suite::users_across_nodes(hub()).await;
}

#[tokio::test]
async fn ordering_across_hop() {
    cluster_suite::ordering_across_hop(hub()).await;
}

#[tokio::test]
async fn module_rpc() {
    cluster_suite::module_rpc(hub()).await;
}

#[tokio::test]
async fn graceful_backend_leave() {
    cluster_suite::graceful_backend_leave(hub()).await;
}

#[tokio::test]
async fn cluster_groups() {
    cluster_suite::cluster_groups(hub()).await;
}

#[tokio::test]
async fn duplicate_login_across_gateways() {
    cluster_suite::duplicate_login_across_gateways(hub()).await;
}

#[tokio::test]
async fn graceful_drain_in_flight() {
    cluster_suite::graceful_drain_in_flight(hub()).await;
}
