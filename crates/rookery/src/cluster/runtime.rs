//! The cluster state a running node owns: its published info, the registry fed by discovery,
//! the back ends, selectors, and the ordered links to gateways. It knows nothing of `App`: what
//! follows membership is the `membership` module, what sends on the links is `rpc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::selector::{self, Selector};
use super::{Discovery, NodeInfo, Registry, Transport};
use crate::config::{ClusterConfig, DiscoveryKind, TransportKind};
use crate::error::{StartError, StartErrorKind};
use crate::FastMap;

/// Cluster state owned by the node.
pub(crate) struct ClusterState {
    pub node: RwLock<NodeInfo>,
    pub registry: Registry,
    pub discovery: Arc<dyn Discovery>,
    pub transport: Arc<dyn Transport>,
    selectors: FastMap<String, Arc<dyn Selector>>,
    default_selector: Arc<dyn Selector>,
    links: Mutex<FastMap<String, Arc<dyn crate::session::GatewayLink>>>,
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
    /// Held while this node's info is changed and published, so that two changes are published
    /// in the order they were made.
    pub publishing: tokio::sync::Mutex<()>,
    /// Client routes other nodes run concurrently (from their `NodeInfo::concurrent_routes`):
    /// a gateway forwards them without waiting for the session's previous request. Only grows.
    concurrent_routes: RwLock<FastMap<String, ()>>,
    /// True once `concurrent_routes` holds any: until then a forward looks nothing up.
    any_concurrent: std::sync::atomic::AtomicBool,
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
            publishing: tokio::sync::Mutex::new(()),
            concurrent_routes: RwLock::default(),
            any_concurrent: Default::default(),
        })
    }

    /// The selector for a module or node type.
    pub(crate) fn selector(&self, name: &str) -> &dyn Selector {
        self.selectors
            .get(name)
            .map(|s| s.as_ref())
            .unwrap_or(self.default_selector.as_ref())
    }

    /// Notes the routes a node runs concurrently.
    pub(crate) fn learn_concurrent(&self, routes: &[String]) {
        if routes.is_empty() {
            return;
        }
        let mut set = self
            .concurrent_routes
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for r in routes {
            set.insert(r.clone(), ());
        }
        self.any_concurrent
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// True if the nodes running `route` run it concurrently.
    pub(crate) fn is_concurrent(&self, route: &str) -> bool {
        self.any_concurrent
            .load(std::sync::atomic::Ordering::Acquire)
            && self
                .concurrent_routes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(route)
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

    /// The live ordered link to a gateway, if there is one.
    pub(crate) fn link(&self, gateway: &str) -> Option<Arc<dyn crate::session::GatewayLink>> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(gateway).filter(|l| !l.is_closed()).cloned()
    }

    /// Keeps a new link to a gateway (replacing a closed one); returns the link to use (one made
    /// meanwhile by another caller wins).
    pub(crate) fn keep_link(
        &self,
        gateway: &str,
        link: Arc<dyn crate::session::GatewayLink>,
    ) -> (Arc<dyn crate::session::GatewayLink>, bool) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = links.get(gateway).filter(|l| !l.is_closed()) {
            return (existing.clone(), false);
        }
        links.insert(gateway.to_string(), link.clone());
        (link, true)
    }

    /// Forgets the link to a node that left.
    pub(crate) fn drop_link(&self, node: &str) {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }
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
