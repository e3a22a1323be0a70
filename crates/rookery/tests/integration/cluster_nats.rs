//! The multi-node suite over NATS, against a real nats-server started by the test harness.
use std::sync::{Arc, Mutex};

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

rookery_testkit::transport_suite!(async nats());
