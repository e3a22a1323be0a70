//! The multi-node suite over NATS, against a real nats-server started by the test harness.
#![cfg(feature = "nats")]

mod cluster;
mod common;

use std::sync::{Arc, Mutex};

use cluster::suite as cluster_suite;
use rookery::cluster::transport::nats::{NatsConfig, NatsTransport};
use rookery::cluster::Transport;
use rookery_testkit::Nats;

/// Connects one transport per node (two gateways, two backends) to a fresh nats-server.
async fn nats() -> (Nats, impl Fn() -> Arc<dyn Transport>) {
    let server = Nats::start().expect("nats-server (apt-get install nats-server)");
    let mut transports = Vec::new();
    for _ in 0..4 {
        let cfg = NatsConfig {
            url: server.url(),
            ..NatsConfig::default()
        };
        transports.push(Arc::new(NatsTransport::connect(cfg).await.unwrap()) as Arc<dyn Transport>);
    }
    let pool = Mutex::new(transports);
    (server, move || {
        pool.lock().unwrap().pop().expect("one transport per node")
    })
}

#[tokio::test]
async fn forwarding() {
    let (_server, t) = nats().await;
    cluster_suite::forwarding(t).await;
}

#[tokio::test]
async fn remote_sessions() {
    let (_server, t) = nats().await;
    cluster_suite::remote_sessions(t).await;
}

#[tokio::test]
async fn users_across_nodes() {
    let (_server, t) = nats().await;
    cluster_suite::users_across_nodes(t).await;
}

#[tokio::test]
async fn cluster_groups() {
    let (_server, t) = nats().await;
    cluster_suite::cluster_groups(t).await;
}

#[tokio::test]
async fn duplicate_login_across_gateways() {
    let (_server, t) = nats().await;
    cluster_suite::duplicate_login_across_gateways(t).await;
}

#[tokio::test]
async fn ordering_across_hop() {
    let (_server, t) = nats().await;
    cluster_suite::ordering_across_hop(t).await;
}

#[tokio::test]
async fn module_rpc() {
    let (_server, t) = nats().await;
    cluster_suite::module_rpc(t).await;
}

#[tokio::test]
async fn graceful_backend_leave() {
    let (_server, t) = nats().await;
    cluster_suite::graceful_backend_leave(t).await;
}

#[tokio::test]
async fn graceful_drain_in_flight() {
    let (_server, t) = nats().await;
    cluster_suite::graceful_drain_in_flight(t).await;
}

#[tokio::test]
async fn route_dictionary() {
    let (_server, t) = nats().await;
    cluster_suite::route_dictionary(t).await;
}

#[tokio::test]
async fn gateway_loss_closes_its_sessions() {
    let (_server, t) = nats().await;
    cluster_suite::gateway_loss_closes_its_sessions(t).await;
}
