//! The multi-node suite over the in-process transport, and selectors chosen by configuration
//! and by code.

use std::sync::Arc;

use rookery::cluster::{InProcTransport, Transport};
use rookery_testkit::cluster;

fn hub() -> impl Fn() -> Arc<dyn Transport> {
    let hub = InProcTransport::new();
    move || Arc::new(hub.clone()) as Arc<dyn Transport>
}

rookery_testkit::transport_suite!(hub());

/// Selectors from configuration (round robin, tag filter) and from code (a custom closure).
#[tokio::test]
async fn configured_and_custom_selectors() {
    use rookery::cluster::selector::Custom;
    use rookery::config::RoutingConfig;
    use rookery_client::{Client, ClientOptions};
    use serde_json::json;

    async fn nodes_seen(c: &cluster::Cluster, n: usize) -> Vec<String> {
        let cl = Client::connect(
            &c.gate.tcp_addr().unwrap().to_string(),
            ClientOptions::default(),
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        for _ in 0..n {
            let v = cl.request_json("game.info.node", json!({})).await.unwrap();
            seen.push(v["node"].as_str().unwrap().to_string());
        }
        seen
    }

    let rr = cluster::start_with(
        hub(),
        |c| {
            c.cluster.routing.insert(
                "game".into(),
                RoutingConfig {
                    selector: Some("round-robin".into()),
                    ..RoutingConfig::default()
                },
            );
        },
        |b| b,
    )
    .await;
    let seen = nodes_seen(&rr, 4).await;
    assert_ne!(seen[0], seen[1], "{seen:?}");
    assert_eq!(seen[0], seen[2], "{seen:?}");
    assert_eq!(seen[1], seen[3], "{seen:?}");

    let tagged = cluster::start_with(
        hub(),
        |c| {
            let mut r = RoutingConfig::default();
            r.tags.insert("zone".into(), "eu".into());
            c.cluster.routing.insert("game".into(), r);
        },
        |b| b,
    )
    .await;
    assert!(nodes_seen(&tagged, 6).await.iter().all(|n| n == "game-2"));

    let custom = cluster::start_with(
        hub(),
        |_| {},
        |b| {
            b.selector(
                "game",
                Custom(
                    |nodes: &[rookery::cluster::NodeInfo],
                     _: &rookery::cluster::selector::SelectContext<'_>| {
                        nodes.iter().position(|n| n.id == "game-1")
                    },
                ),
            )
        },
    )
    .await;
    assert!(nodes_seen(&custom, 6).await.iter().all(|n| n == "game-1"));
}
