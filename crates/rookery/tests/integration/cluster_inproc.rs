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

/// A node changes its state, tags and versions at runtime and its peers follow at once; a call
/// chooses its node by tags, by a selector of its own, or the newest version.
#[tokio::test]
async fn nodes_change_at_runtime_and_calls_choose_their_node() {
    use rookery::cluster::selector::{Filter, NewestVersion, Random};
    use rookery::cluster::NodeState;
    use rookery::{CallOptions, Json, RpcError, Target};
    use rookery_testkit::eventually;
    use serde_json::Value;

    let c = cluster::start(hub()).await;
    let node_of = |opts: CallOptions| {
        let rpc = c.gate.app().rpc();
        async move {
            rpc.call_with::<_, Json<Value>>(
                Target::Module("game".into()),
                "game.info.node",
                (),
                opts,
            )
            .await
            .map(|Json(v)| v["node"].as_str().unwrap().to_string())
        }
    };
    let ids = |n: usize, opts: CallOptions| {
        let node_of = &node_of;
        async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..n {
                seen.insert(node_of(opts.clone()).await.unwrap());
            }
            seen.into_iter().collect::<Vec<_>>()
        }
    };

    // Per call: tags (game-2 is tagged zone=eu), a selector, nothing matching.
    assert_eq!(
        ids(8, CallOptions::default().with_tag("zone", "eu")).await,
        ["game-2"]
    );
    let only_1 = Filter::new(Random, |n, _| n.id == "game-1");
    assert_eq!(
        ids(8, CallOptions::default().with_selector(only_1)).await,
        ["game-1"]
    );
    let none = node_of(CallOptions::default().with_tag("zone", "mars")).await;
    assert!(matches!(none, Err(RpcError::NoNode(_))), "{none:?}");

    // game-2 goes into maintenance: the gateway sees it and stops choosing it.
    let game2 = c.backends[1].app();
    game2.set_node_state(NodeState::Unavailable).await.unwrap();
    eventually("the gateway sees game-2 unavailable", || {
        c.gate_events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e == "updated game-2 Unavailable")
    })
    .await;
    assert_eq!(ids(8, CallOptions::default()).await, ["game-1"]);
    // Tags follow too: game-1 now carries zone=eu.
    let game1 = c.backends[0].app();
    game1
        .set_node_tags([("zone".to_string(), "eu".to_string())].into())
        .await
        .unwrap();
    eventually("the gateway sees game-1's tag", || {
        c.gate
            .app()
            .cluster()
            .get("game-1")
            .is_some_and(|n| n.tags.get("zone").is_some_and(|z| z == "eu"))
    })
    .await;
    assert_eq!(
        ids(4, CallOptions::default().with_tag("zone", "eu")).await,
        ["game-1"]
    );
    // Back in service.
    game2.set_node_state(NodeState::Available).await.unwrap();
    eventually("the gateway sees game-2 available", || {
        c.gate
            .app()
            .cluster()
            .get("game-2")
            .is_some_and(|n| n.is_available())
    })
    .await;
    assert_eq!(ids(16, CallOptions::default()).await, ["game-1", "game-2"]);

    // Module versions are published; the newest-version selector follows them.
    assert_eq!(
        c.gate
            .app()
            .cluster()
            .get("game-1")
            .unwrap()
            .version_of("game"),
        "0.1.0"
    );
    game2
        .update_node(|n| {
            n.module_versions.insert("game".into(), "0.2.0".into());
            // The node's identity is not the caller's to change.
            n.id = "someone-else".into();
        })
        .await
        .unwrap();
    eventually("the gateway sees game-2's module version", || {
        c.gate
            .app()
            .cluster()
            .get("game-2")
            .is_some_and(|n| n.version_of("game") == "0.2.0")
    })
    .await;
    let opts = CallOptions::default().with_selector(NewestVersion::new(Random));
    assert_eq!(ids(8, opts).await, ["game-2"]);
}
