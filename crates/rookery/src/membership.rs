//! Following the cluster's membership: each discovery event updates the registry, the node
//! metrics and the route dictionary, fails calls to a node that died, lets go of the sessions of
//! a gateway that left, and is told to the modules.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{DiscoveryEvent, NodeEvent, NodeInfo, NodeState};
use crate::App;

/// Keeps the registry in step with discovery until the node stops, telling the transport and
/// the modules what changed.
pub(crate) async fn watch_discovery(
    app: App,
    mut events: mpsc::Receiver<DiscoveryEvent>,
    stop: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => return },
            _ = stop.cancelled() => return,
        };
        let c = &app.inner().cluster;
        // Its routes get codes before it joins the registry: once a node can be picked, the
        // dictionary new clients get holds its routes.
        if let DiscoveryEvent::Added(n) | DiscoveryEvent::Updated(n) = &ev {
            app.sessions()
                .learn_routes(n.routes.iter().map(String::as_str));
            c.learn_concurrent(&n.concurrent_routes);
        }
        let Some(change) = c.registry.apply(ev) else {
            continue;
        };
        let kind = match &change {
            NodeEvent::Found(_) => "found",
            NodeEvent::Updated(_) => "updated",
            NodeEvent::Lost(_) => "lost",
        };
        metrics::counter!(crate::telemetry::DISCOVERY_EVENTS_TOTAL, "kind" => kind).increment(1);
        let mut by_type: HashMap<String, f64> = HashMap::new();
        for n in c.registry.all() {
            *by_type.entry(n.node_type).or_default() += 1.0;
        }
        if let NodeEvent::Lost(n) = &change {
            by_type.entry(n.node_type.clone()).or_default();
        }
        for (t, count) in by_type {
            metrics::gauge!(crate::telemetry::NODES, "type" => t).set(count);
        }
        match &change {
            NodeEvent::Lost(n) => {
                tracing::info!(node = %n.id, node_type = %n.node_type, "node lost");
                // A node that left while draining is still finishing the calls it accepted:
                // let them complete (its link closes when it is done). Any other loss means
                // the node died: fail its calls in flight at once.
                if n.state != NodeState::Draining {
                    c.transport.node_lost(&n.id);
                }
                c.drop_link(&n.id);
                if n.frontend {
                    let_go_of_gateway(&app, n);
                }
            }
            NodeEvent::Found(n) => {
                tracing::info!(node = %n.id, node_type = %n.node_type, "node found");
                // A gateway that joins learns the binding clock, so its first bindings are
                // ordered after the ones made before it joined.
                if n.frontend && n.id != app.node_id() && c.me().frontend {
                    app.rpc().announce_bind_to(&n.id, None).await;
                }
            }
            NodeEvent::Updated(n) => tracing::debug!(node = %n.id, "node updated"),
        }
        for m in app.modules() {
            m.node_event(&app, &change).await;
        }
    }
}

/// Lets go of the sessions a gateway that left had brought here. A gateway that died goes at
/// once; one that left while draining is still closing its sessions (each close reaches this
/// node and is handled then), so its leftovers go after a grace of this node's drain timeout,
/// and only if it has not come back meanwhile.
fn let_go_of_gateway(app: &App, node: &NodeInfo) {
    let c = &app.inner().cluster;
    let grace = if node.state == NodeState::Draining {
        std::time::Duration::try_from_secs_f64(app.config().node.drain_timeout).unwrap_or_default()
            + std::time::Duration::from_secs(2)
    } else {
        std::time::Duration::ZERO
    };
    let app = app.clone();
    let gateway = node.id.clone();
    let stop = c.stop.clone();
    c.tasks.spawn(async move {
        if !grace.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = stop.cancelled() => return,
            }
            if app.inner().cluster.registry.get(&gateway).is_some() {
                return;
            }
        }
        app.gateway_gone(&gateway).await;
    });
}
