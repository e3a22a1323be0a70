//! The multi-node suite over the direct TCP transport (each node its own listener).

mod cluster;
mod common;

use std::sync::Arc;

use cluster::suite as cluster_suite;
use rookery::cluster::transport::tcp::{TcpConfig, TcpTransport};
use rookery::cluster::Transport;

fn tcp() -> impl Fn() -> Arc<dyn Transport> {
    || Arc::new(TcpTransport::new(TcpConfig::default())) as Arc<dyn Transport>
}

#[tokio::test]
async fn forwarding() {
    cluster_suite::forwarding(tcp()).await;
}

#[tokio::test]
async fn remote_sessions() {
    cluster_suite::remote_sessions(tcp()).await;
}

#[tokio::test]
async fn users_across_nodes() {
    cluster_suite::users_across_nodes(tcp()).await;
}

#[tokio::test]
async fn cluster_groups() {
    cluster_suite::cluster_groups(tcp()).await;
}

#[tokio::test]
async fn duplicate_login_across_gateways() {
    cluster_suite::duplicate_login_across_gateways(tcp()).await;
}

#[tokio::test]
async fn ordering_across_hop() {
    cluster_suite::ordering_across_hop(tcp()).await;
}

#[tokio::test]
async fn module_rpc() {
    cluster_suite::module_rpc(tcp()).await;
}

#[tokio::test]
async fn graceful_backend_leave() {
    cluster_suite::graceful_backend_leave(tcp()).await;
}

#[tokio::test]
async fn graceful_drain_in_flight() {
    cluster_suite::graceful_drain_in_flight(tcp()).await;
}
