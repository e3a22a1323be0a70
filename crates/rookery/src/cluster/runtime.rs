//! The cluster side of a running node: its published info, the registry fed by discovery, the
//! transport, selectors, and the ordered links to gateways.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::selector::{self, Selector};
use super::{Discovery, NodeEvent, NodeInfo, Registry, Transport};
use crate::config::{ClusterConfig, DiscoveryKind, TransportKind};
use crate::server::{StartError, StartErrorKind};
use crate::{App, FastMap};

/// Queue of operations towards one gateway.
const GATEWAY_LINK_QUEUE: usize = 4096;

/// Cluster state owned by the node.
pub(crate) struct ClusterState {
    pub node: RwLock<NodeInfo>,
    pub registry: Registry,
    pub discovery: Arc<dyn Discovery>,
    pub transport: Arc<dyn Transport>,
    selectors: FastMap<String, Arc<dyn Selector>>,
    default_selector: Arc<dyn Selector>,
    links: Mutex<FastMap<String, Arc<crate::rpc::RemoteSession>>>,
    /// Stops the transport's serving, the discovery watch and the gateway links.
    pub stop: CancellationToken,
    /// Background tasks (watch, links).
    pub tasks: TaskTracker,
    /// Inbound calls being handled (waited for at shutdown).
    pub inbound: TaskTracker,
    /// RPC metric handles.
    pub rpc_metrics: crate::telemetry::RpcMetrics,
    /// This node's id as the envelopes' `source` field (shared, not copied per call).
    pub source: Bytes,
}

impl ClusterState {
    pub(crate) fn new(
        node: NodeInfo,
        config: &ClusterConfig,
        discovery: Arc<dyn Discovery>,
        transport: Arc<dyn Transport>,
        custom: HashMap<String, Arc<dyn Selector>>,
    ) -> Result<Self, StartError> {
        let source = Bytes::copy_from_slice(node.id.as_bytes());
        let mut selectors: FastMap<String, Arc<dyn Selector>> = FastMap::default();
        for (name, r) in &config.routing {
            let mut sel: Box<dyn Selector> = match &r.selector {
                Some(n) => selector::by_name(n).ok_or_else(|| {
                    StartError::new(
                        StartErrorKind::Config,
                        format!("unknown selector {n:?} for {name}"),
                    )
                })?,
                None => Box::new(selector::Random),
            };
            if r.sticky {
                sel = Box::new(selector::Sticky::new(sel));
            }
            if let Some(v) = &r.version {
                sel = Box::new(selector::Filter::version(sel, v.clone()));
            }
            for (k, v) in &r.tags {
                sel = Box::new(selector::Filter::tag(sel, k.clone(), v.clone()));
            }
            selectors.insert(name.clone(), Arc::from(sel));
        }
        selectors.extend(custom);
        Ok(Self {
            node: RwLock::new(node),
            registry: Registry::default(),
            discovery,
            transport,
            selectors,
            default_selector: Arc::new(selector::Random),
            links: Mutex::new(FastMap::default()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            inbound: TaskTracker::new(),
            rpc_metrics: Default::default(),
            source,
        })
    }

    /// The selector for a module or node type.
    pub(crate) fn selector(&self, name: &str) -> &dyn Selector {
        self.selectors
            .get(name)
            .map(|s| s.as_ref())
            .unwrap_or(self.default_selector.as_ref())
    }

    /// This node's published info.
    pub(crate) fn me(&self) -> NodeInfo {
        self.node.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_me(&self, f: impl FnOnce(&mut NodeInfo)) -> NodeInfo {
        let mut n = self.node.write().unwrap_or_else(|e| e.into_inner());
        f(&mut n);
        n.clone()
    }

    /// The ordered operation queue to a gateway, created (with its sender task) on first use.
    pub(crate) fn gateway_link(&self, gateway: &str, app: &App) -> Arc<crate::rpc::RemoteSession> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.get(gateway).filter(|l| !l.is_closed()) {
            return link.clone();
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(GATEWAY_LINK_QUEUE);
        let link = Arc::new(crate::rpc::RemoteSession::new(
            gateway,
            self.source.clone(),
            tx,
        ));
        links.insert(gateway.to_string(), link.clone());
        let app = app.clone();
        let gateway = gateway.to_string();
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            loop {
                let frame = tokio::select! {
                    f = rx.recv() => match f { Some(f) => f, None => return },
                    _ = stop.cancelled() => return,
                };
                let c = &app.inner().cluster;
                let Some(node) = c.registry.get(&gateway) else {
                    tracing::debug!(%gateway, "dropping operation for an unknown gateway");
                    continue;
                };
                if let Err(e) = c.transport.notify(&node, frame).await {
                    tracing::debug!(%gateway, error = %e, "gateway operation failed");
                }
            }
        });
        link
    }

    /// Forgets the link to a node that left.
    fn drop_link(&self, node: &str) {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }
}

/// Keeps the registry in step with discovery until the node stops, telling the transport and
/// the modules what changed.
pub(crate) async fn watch_discovery(
    app: App,
    mut events: mpsc::Receiver<super::DiscoveryEvent>,
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
        if let super::DiscoveryEvent::Added(n) | super::DiscoveryEvent::Updated(n) = &ev {
            app.sessions()
                .learn_routes(n.routes.iter().map(String::as_str));
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
                if n.state != super::NodeState::Draining {
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
    let grace = if node.state == super::NodeState::Draining {
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

/// Builds the discovery back end and transport a configuration names.
pub(crate) async fn backends(
    config: &ClusterConfig,
) -> Result<(Arc<dyn Discovery>, Arc<dyn Transport>), StartError> {
    fn parse<T: serde::de::DeserializeOwned>(t: &toml::Table, what: &str) -> Result<T, StartError> {
        toml::Value::Table(t.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                StartError::new(StartErrorKind::Config, format!("[cluster.{what}]")).with_source(e)
            })
    }
    let discovery_error = |e| StartError::new(StartErrorKind::Discovery, "").with_source(e);
    let discovery: Arc<dyn Discovery> = match config.discovery {
        DiscoveryKind::Embedded => Arc::new(super::EmbeddedDiscovery::new()),
        DiscoveryKind::Static => {
            let mut nodes = config.static_nodes.clone();
            if let Some(f) = &config.static_file {
                let file = super::StaticDiscovery::from_file(std::path::Path::new(f))
                    .map_err(discovery_error)?;
                nodes.extend(file.nodes().iter().cloned());
            }
            Arc::new(super::StaticDiscovery::new(nodes))
        }
        #[cfg(feature = "etcd")]
        DiscoveryKind::Etcd => {
            let cfg: super::discovery::etcd::EtcdConfig = parse(&config.etcd, "etcd")?;
            Arc::new(
                super::discovery::etcd::EtcdDiscovery::connect(cfg)
                    .await
                    .map_err(discovery_error)?,
            )
        }
        #[cfg(not(feature = "etcd"))]
        DiscoveryKind::Etcd => {
            return Err(StartError::new(
                StartErrorKind::Config,
                "etcd discovery needs the `etcd` cargo feature",
            ))
        }
    };
    let transport: Arc<dyn Transport> = match config.transport {
        TransportKind::Inproc => Arc::new(super::InProcTransport::new()),
        TransportKind::Tcp => {
            let cfg: super::transport::tcp::TcpConfig = parse(&config.tcp, "tcp")?;
            Arc::new(super::transport::tcp::TcpTransport::new(cfg))
        }
        #[cfg(feature = "nats")]
        TransportKind::Nats => {
            let cfg: super::transport::nats::NatsConfig = parse(&config.nats, "nats")?;
            Arc::new(
                super::transport::nats::NatsTransport::connect(cfg)
                    .await
                    .map_err(|e| StartError::new(StartErrorKind::Transport, "").with_source(e))?,
            )
        }
        #[cfg(not(feature = "nats"))]
        TransportKind::Nats => {
            return Err(StartError::new(
                StartErrorKind::Config,
                "the NATS transport needs the `nats` cargo feature",
            ))
        }
    };
    let _ = parse::<toml::Table>;
    Ok((discovery, transport))
}
