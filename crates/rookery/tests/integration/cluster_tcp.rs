//! The multi-node suite over the direct TCP transport (each node its own listener).

use std::sync::Arc;

use rookery::cluster::transport::tcp::{TcpConfig, TcpTransport};
use rookery::cluster::Transport;
use rookery_testkit::cluster;

fn tcp() -> impl Fn() -> Arc<dyn Transport> {
    || Arc::new(TcpTransport::new(TcpConfig::default())) as Arc<dyn Transport>
}

rookery_testkit::transport_suite!(tcp());

/// Static discovery (a fixed node list, as from a zinx-style file) with TCP between nodes, set
/// up entirely from configuration.
#[tokio::test]
async fn static_discovery_from_config() {
    use rookery::cluster::NodeInfo;
    use rookery::config::{DiscoveryKind, TransportKind};
    use rookery::{Config, Server};
    use rookery_client::{Client, ClientOptions};
    use rookery_testkit::free_port;
    use serde_json::json;

    let gate_addr = format!("127.0.0.1:{}", free_port());
    let game_addr = format!("127.0.0.1:{}", free_port());
    let mut gate_node = NodeInfo::new("gate-1", "gate");
    gate_node.address = gate_addr.clone();
    gate_node.frontend = true;
    gate_node.modules = vec!["front".into()];
    let mut game_node = NodeInfo::new("game-1", "game");
    game_node.address = game_addr.clone();
    game_node.modules = vec!["game".into()];
    // The same list, as a file, for the game node.
    let file = std::env::temp_dir().join(format!("rookery-static-{}.json", std::process::id()));
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"nodes": [&gate_node, &game_node]})).unwrap(),
    )
    .unwrap();
    let config = |id: &str, ty: &str, listen: &str| {
        let mut c = Config::default();
        c.node.id = id.into();
        c.node.node_type = ty.into();
        c.cluster.discovery = DiscoveryKind::Static;
        c.cluster.transport = TransportKind::Tcp;
        c.cluster.tcp.insert("listen".into(), listen.into());
        c
    };
    let mut gate_cfg = config("gate-1", "gate", &gate_addr);
    gate_cfg.cluster.static_nodes = vec![gate_node.clone(), game_node.clone()];
    gate_cfg.gateway.tcp = Some("127.0.0.1:0".into());
    let mut game_cfg = config("game-1", "game", &game_addr);
    game_cfg.cluster.static_file = Some(file.display().to_string());
    let seen = std::sync::Arc::new(cluster::Seen::default());
    let game = Server::builder(game_cfg)
        .module(cluster::Game { seen })
        .start()
        .await
        .unwrap();
    let gate = Server::builder(gate_cfg)
        .module(cluster::Front::default())
        .start()
        .await
        .unwrap();
    let cl = Client::connect(
        &gate.tcp_addr().unwrap().to_string(),
        ClientOptions::default(),
    )
    .await
    .unwrap();
    let v = cl.request_json("game.info.node", json!({})).await.unwrap();
    assert_eq!(v["node"], "game-1");
    cl.request_json("game.auth.login", json!({"uid": "s"}))
        .await
        .unwrap();
    assert!(gate.app().sessions().by_uid("s").is_some());
    gate.shutdown().await;
    game.shutdown().await;
    let _ = std::fs::remove_file(file);
}

/// The whole suite again with mutual TLS between the nodes (one certificate of a cluster CA,
/// made at run time, for every node).
mod mutual_tls {
    use std::sync::{Arc, OnceLock};

    use rookery::cluster::transport::tcp::{TcpConfig, TcpTlsConfig, TcpTransport};
    use rookery::cluster::Transport;

    fn config() -> TcpConfig {
        static CONFIG: OnceLock<TcpConfig> = OnceLock::new();
        CONFIG
            .get_or_init(|| {
                let dir =
                    std::env::temp_dir().join(format!("rookery-suite-mtls-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let ca = rookery_testkit::certs::Ca::new(&dir, "ca");
                let (cert, key) = ca.issue(&dir, "node");
                let text = |p: &std::path::Path| p.to_string_lossy().into_owned();
                TcpConfig {
                    tls: Some(TcpTlsConfig {
                        cert: text(&cert),
                        key: text(&key),
                        ca: text(ca.pem()),
                    }),
                    ..TcpConfig::default()
                }
            })
            .clone()
    }

    fn tls() -> impl Fn() -> Arc<dyn Transport> {
        || Arc::new(TcpTransport::new(config())) as Arc<dyn Transport>
    }

    rookery_testkit::transport_suite!(tls());
}
