//! Building, starting and stopping a node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rookery_protocol::HandshakeRequest;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppInner, HandshakeValidator};
use crate::cluster::runtime::{self, ClusterState};
use crate::cluster::selector::Selector;
use crate::cluster::{Discovery, DiscoveryEvent, NodeInfo, NodeState, Transport};
use crate::config::secs;
use crate::error::{StartError, StartErrorKind};
use crate::gateway::{accept_loop, close_idle, summarise_disconnects, Listeners, REASON_SHUTDOWN};
use crate::middleware::{CallMiddleware, Middleware};
use crate::module::ModuleInit;
use crate::router::Router;
use crate::rpc::RpcServer;
use crate::telemetry::DisconnectReason;
use crate::{App, Config, Groups, Module, SessionPool};

/// Entry point: `Server::builder(config).module(m).start().await`.
pub struct Server;

impl Server {
    /// A builder for a node with this configuration.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            modules: Vec::new(),
            validator: None,
            discovery: None,
            transport: None,
            selectors: Default::default(),
            layers: Vec::new(),
            call_layers: Vec::new(),
        }
    }
}

/// Collects modules and hooks, then starts the node.
pub struct ServerBuilder {
    config: Config,
    modules: Vec<Arc<dyn Module>>,
    validator: Option<HandshakeValidator>,
    discovery: Option<Arc<dyn Discovery>>,
    transport: Option<Arc<dyn Transport>>,
    selectors: std::collections::HashMap<String, Arc<dyn Selector>>,
    layers: Vec<Arc<dyn Middleware>>,
    call_layers: Vec<Arc<dyn CallMiddleware>>,
}

impl ServerBuilder {
    /// Adds a module.
    pub fn module(mut self, module: impl Module) -> Self {
        self.modules.push(Arc::new(module));
        self
    }

    /// Adds a shared module.
    pub fn module_arc(mut self, module: Arc<dyn Module>) -> Self {
        self.modules.push(module);
        self
    }

    /// Sets the handshake validator (e.g. token check); a refusal closes the connection with
    /// handshake code 400 and the error's message as the reason.
    pub fn handshake_validator(
        mut self,
        f: impl Fn(&HandshakeRequest) -> Result<(), crate::Error> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(f));
        self
    }

    /// Uses this discovery back end instead of the one the configuration names (e.g. one
    /// [`crate::cluster::EmbeddedDiscovery`] shared by several nodes of one process).
    pub fn discovery(mut self, d: Arc<dyn Discovery>) -> Self {
        self.discovery = Some(d);
        self
    }

    /// Uses this transport instead of the one the configuration names.
    pub fn transport(mut self, t: Arc<dyn Transport>) -> Self {
        self.transport = Some(t);
        self
    }

    /// Uses a selector of your own (any [`Selector`], e.g. [`crate::cluster::selector::Custom`]
    /// over a closure) for calls to a module or node type, in place of the configured one.
    pub fn selector(mut self, name: impl Into<String>, selector: impl Selector) -> Self {
        self.selectors.insert(name.into(), Arc::new(selector));
        self
    }

    /// Adds a layer around every handler of the node (outside the modules' and routes' layers;
    /// layers added first are outermost). See [`crate::middleware`].
    pub fn middleware(mut self, layer: impl Middleware) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Adds a layer around every RPC call this node makes (layers added first are outermost).
    pub fn call_middleware(mut self, layer: impl CallMiddleware) -> Self {
        self.call_layers.push(Arc::new(layer));
        self
    }

    /// Initialises modules, joins the cluster, binds the acceptors and starts serving.
    pub async fn start(mut self) -> Result<RunningServer, StartError> {
        self.config
            .validate()
            .map_err(|e| StartError::new(StartErrorKind::Config, "").with_source(e))?;
        if let Some(wanted) = &self.config.node.modules {
            if let Some(missing) = wanted
                .iter()
                .find(|w| !self.modules.iter().any(|m| m.name() == *w))
            {
                return Err(StartError::new(
                    StartErrorKind::Config,
                    format!("module {missing} is not available"),
                ));
            }
            self.modules
                .retain(|m| wanted.iter().any(|w| w == m.name()));
        }
        let mut routes = Vec::new();
        let mut push_routes = Vec::new();
        let mut module_layers = Vec::new();
        for (index, m) in self.modules.iter().enumerate() {
            let name = m.name().to_string();
            if self.modules[..index].iter().any(|o| o.name() == name) {
                return Err(StartError::new(
                    StartErrorKind::Config,
                    format!("module {name} added twice"),
                ));
            }
            let mut layers = Vec::new();
            let mut init = ModuleInit {
                module: &name,
                index,
                dispatch: m.dispatch(),
                settings: self.config.module_settings(&name),
                routes: &mut routes,
                push_routes: &mut push_routes,
                module_lock: Arc::new(tokio::sync::Mutex::new(())),
                layers: &mut layers,
                config: &self.config,
            };
            m.clone().init(&mut init).map_err(|error| {
                StartError::new(StartErrorKind::Module, name.clone()).with_source(error)
            })?;
            module_layers.push(layers);
        }
        for entry in &mut routes {
            let module = self.modules[entry.module].name();
            if entry
                .route
                .strip_prefix(module)
                .and_then(|r| r.strip_prefix('.'))
                .is_none()
            {
                return Err(StartError::new(
                    StartErrorKind::Routes,
                    format!("route {} registered by module {module}", entry.route),
                ));
            }
            // The node's layers, the module's, the route's own: outermost first.
            let own = std::mem::take(&mut entry.layers);
            entry.layers = self
                .layers
                .iter()
                .chain(&module_layers[entry.module])
                .chain(own.iter())
                .cloned()
                .collect();
        }
        let router = Router::new(routes, &push_routes, &self.config)?;
        let sessions = SessionPool::new(router.dict().clone());

        let gw = &self.config.gateway;
        let listeners = Listeners {
            tcp: bind(gw.tcp.as_deref()).await?,
            ws: bind(gw.ws.as_deref()).await?,
            mqtt: bind(gw.mqtt.as_deref()).await?,
            mqtt_ws: bind(gw.mqtt_ws.as_deref()).await?,
            zinx: bind(gw.zinx.as_deref()).await?,
        };
        let kcp =
            match gw.kcp.as_deref() {
                Some(a) => Some(crate::gateway::kcp::bind(&self.config, a).await.map_err(
                    |source| StartError::new(StartErrorKind::Bind, a).with_source(source),
                )?),
                None => None,
            };
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let addrs = Addrs {
            tcp: addr(&listeners.tcp),
            ws: addr(&listeners.ws),
            mqtt: addr(&listeners.mqtt),
            mqtt_ws: addr(&listeners.mqtt_ws),
            zinx: addr(&listeners.zinx),
            kcp: kcp.as_ref().and_then(|l| l.local_addr().ok()),
        };
        let limit = Arc::new(Semaphore::new(gw.max_connections));
        let wires = crate::gateway::Wires::new(&self.config)
            .map_err(|e| StartError::new(StartErrorKind::Config, e))?;
        let mqtt_on = gw.mqtt.is_some() || gw.mqtt_ws.is_some();
        if mqtt_on
            && self.config.mqtt.login != crate::config::MqttLogin::None
            && self.validator.is_none()
        {
            tracing::warn!(
                login = ?self.config.mqtt.login,
                "MQTT clients log in by CONNECT without a handshake validator: any client may \
                 claim any user (set ServerBuilder::handshake_validator to check credentials)"
            );
        }

        let mut node = node_info(
            &self.config,
            &self.modules,
            listeners.any() || kcp.is_some(),
        )?;
        node.routes = router.client_routes();
        node.concurrent_routes = router
            .routes()
            .iter()
            .filter(|e| !e.internal && e.dispatch == crate::Dispatch::Concurrent)
            .map(|e| e.route.to_string())
            .collect();
        let tls = match &self.config.gateway.tls {
            Some(files) => Some(Arc::new(crate::gateway::tls::Tls::load(files).map_err(
                |e| StartError::new(StartErrorKind::Config, "gateway.tls").with_source(e),
            )?)),
            None => None,
        };
        let module_inbound = (0..self.modules.len())
            .map(|_| Arc::new(Semaphore::new(self.config.cluster.inbound_per_module)))
            .collect();
        let (discovery, transport) = match (self.discovery, self.transport) {
            (Some(d), Some(t)) => (d, t),
            (d, t) => {
                let (dd, tt) = runtime::backends(&self.config.cluster).await?;
                (d.unwrap_or(dd), t.unwrap_or(tt))
            }
        };
        let cluster = ClusterState::new(
            node,
            &self.config.cluster,
            discovery,
            transport,
            self.selectors,
        )?;

        let disconnect_log = self.config.gateway.disconnect_log_per_second;
        let app = App::new(AppInner {
            config: self.config,
            router,
            sessions,
            groups: Groups::default(),
            modules: self.modules,
            draining: CancellationToken::new(),
            drain_started: Default::default(),
            tasks: TaskTracker::new(),
            validator: self.validator,
            cluster,
            errors: Default::default(),
            disconnects: crate::telemetry::Disconnects::new(disconnect_log),
            rate_limited_elsewhere: metrics::counter!(
                crate::telemetry::REQUESTS_TOTAL,
                "route" => crate::telemetry::ROUTE_NOT_LOCAL,
                "outcome" => crate::telemetry::OUTCOME_RATE_LIMITED
            ),
            remote_sessions: Default::default(),
            call_layers: self.call_layers.into(),
            module_inbound,
            wires,
            tls,
        });
        join_cluster(&app).await?;

        let stop_accept = CancellationToken::new();
        let mut acceptors = JoinSet::new();
        let gateway = listeners.any() || kcp.is_some();
        if let Some(kcp) = kcp {
            acceptors.spawn(crate::gateway::kcp::accept_loop(
                app.clone(),
                kcp,
                limit.clone(),
                stop_accept.clone(),
            ));
        }
        if listeners.any() {
            acceptors.spawn(accept_loop(
                app.clone(),
                listeners,
                limit,
                stop_accept.clone(),
            ));
        }
        if gateway {
            acceptors.spawn(close_idle(app.clone(), stop_accept.clone()));
        }
        let stop_modules = CancellationToken::new();
        // Until the modules stop: the drain's disconnects are summarised too.
        let disconnect_summary =
            gateway.then(|| tokio::spawn(summarise_disconnects(app.clone(), stop_modules.clone())));
        let mut module_tasks = JoinSet::new();
        for m in app.modules() {
            module_tasks.spawn(m.clone().run(app.clone(), stop_modules.clone()));
        }
        tracing::info!(
            node = app.node_id(),
            tcp = ?addrs.tcp,
            ws = ?addrs.ws,
            mqtt = ?addrs.mqtt,
            mqtt_ws = ?addrs.mqtt_ws,
            zinx = ?addrs.zinx,
            kcp = ?addrs.kcp,
            routes = app.router().routes().len(),
            "node started"
        );
        Ok(RunningServer {
            app,
            addrs,
            stop_accept,
            stop_modules,
            acceptors,
            module_tasks,
            disconnect_summary,
        })
    }
}

/// This node's published info from its configuration.
fn node_info(
    config: &Config,
    modules: &[Arc<dyn Module>],
    frontend: bool,
) -> Result<NodeInfo, StartError> {
    let n = &config.node;
    let mut info = NodeInfo::new(n.id.clone(), n.node_type.clone());
    info.version = n.version.clone();
    info.weight = n.weight;
    info.tags = n.tags.clone();
    info.frontend = frontend;
    info.modules = modules.iter().map(|m| m.name().to_string()).collect();
    info.module_versions = modules
        .iter()
        .map(|m| (m.name().to_string(), m.version().to_string()))
        .collect();
    if let Some(l) = &n.logical {
        info.logical = l.parse().map_err(|e: crate::cluster::BadLogicalAddr| {
            StartError::new(StartErrorKind::Config, "node.logical").with_source(e)
        })?;
    }
    Ok(info)
}

/// Starts receiving node-to-node frames, registers with discovery and follows membership.
async fn join_cluster(app: &App) -> Result<(), StartError> {
    let c = &app.inner().cluster;
    let handler = Arc::new(RpcServer {
        app: app.downgrade(),
    });
    let me = c.me();
    let address = c
        .transport
        .serve(&me, handler, c.stop.clone())
        .await
        .map_err(|e| StartError::new(StartErrorKind::Transport, "").with_source(e))?;
    let me = c.set_me(|n| n.address = address);
    c.registry.apply(DiscoveryEvent::Added(me.clone()));
    // A lone node knows itself before any discovery event arrives.
    metrics::gauge!(crate::telemetry::NODES, "type" => me.node_type.clone()).set(1.0);
    c.discovery
        .register(&me)
        .await
        .map_err(|e| StartError::new(StartErrorKind::Discovery, "").with_source(e))?;
    let events = c
        .discovery
        .watch()
        .await
        .map_err(|e| StartError::new(StartErrorKind::Discovery, "").with_source(e))?;
    c.tasks.spawn(crate::membership::watch_discovery(
        app.clone(),
        events,
        c.stop.clone(),
    ));
    Ok(())
}

async fn bind(addr: Option<&str>) -> Result<Option<TcpListener>, StartError> {
    let Some(addr) = addr else { return Ok(None) };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| StartError::new(StartErrorKind::Bind, addr).with_source(source))
}

/// A started node. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    app: App,
    addrs: Addrs,
    stop_accept: CancellationToken,
    stop_modules: CancellationToken,
    acceptors: JoinSet<()>,
    module_tasks: JoinSet<()>,
    /// Writes the summary of suppressed disconnect lines once a second (with a gateway).
    disconnect_summary: Option<tokio::task::JoinHandle<()>>,
}

/// The gateway's bound addresses.
#[derive(Debug, Clone, Copy, Default)]
struct Addrs {
    tcp: Option<SocketAddr>,
    ws: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
    mqtt_ws: Option<SocketAddr>,
    zinx: Option<SocketAddr>,
    kcp: Option<SocketAddr>,
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Sessions open when draining began.
    pub sessions: usize,
    /// True if every connection finished within the drain timeout.
    pub drained: bool,
}

impl RunningServer {
    /// The node.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.addrs.tcp
    }

    /// Bound WebSocket address.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.addrs.ws
    }

    /// Bound MQTT (TCP) address.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.addrs.mqtt
    }

    /// Bound MQTT-over-WebSocket address.
    pub fn mqtt_ws_addr(&self) -> Option<SocketAddr> {
        self.addrs.mqtt_ws
    }

    /// Bound zinx address.
    pub fn zinx_addr(&self) -> Option<SocketAddr> {
        self.addrs.zinx
    }

    /// Bound KCP (UDP) address.
    pub fn kcp_addr(&self) -> Option<SocketAddr> {
        self.addrs.kcp
    }

    /// Graceful shutdown: stop accepting; let every session finish the requests it already sent,
    /// then kick it with reason `server shutting down`; wait up to the drain timeout; stop modules
    /// and run their destroy hooks.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let sessions = self.app.sessions().len();
        tracing::info!(sessions, "draining");
        // Leave the cluster first so that no new work is routed here.
        let c = &self.app.inner().cluster;
        {
            // In order with `App::update_node`: nothing is published after this.
            let _order = c.publishing.lock().await;
            let me = c.set_me(|n| n.state = NodeState::Draining);
            let _ = c.discovery.update(&me).await;
        }
        if let Err(e) = c.discovery.deregister().await {
            tracing::warn!(error = %e, "deregistration failed");
        }
        self.stop_accept.cancel();
        while self.acceptors.join_next().await.is_some() {}
        let inner = self.app.inner();
        inner
            .drain_started
            .store(true, std::sync::atomic::Ordering::Release);
        inner.draining.cancel();
        // Connections look at the flag when woken; a session created after this snapshot sees
        // the flag on its first look.
        for s in self.app.sessions().all() {
            s.wake_connection();
        }
        inner.tasks.close();
        let drain = secs(self.app.config().node.drain_timeout);
        let drained = tokio::time::timeout(drain, inner.tasks.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!("drain timeout; closing remaining sessions");
            for s in self.app.sessions().all() {
                s.close_as(Some(DisconnectReason::Shutdown), REASON_SHUTDOWN);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), inner.tasks.wait()).await;
        }
        // Calls from other nodes already accepted finish; then stop node-to-node traffic.
        let c = &self.app.inner().cluster;
        c.inbound.close();
        let _ = tokio::time::timeout(drain, c.inbound.wait()).await;
        c.stop.cancel();
        c.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.tasks.wait()).await;
        self.stop_modules.cancel();
        while self.module_tasks.join_next().await.is_some() {}
        if let Some(summary) = self.disconnect_summary.take() {
            let _ = summary.await;
        }
        // What the last second suppressed, which no later second will summarise.
        self.app.disconnects().flush();
        for m in self.app.modules().iter().rev() {
            m.destroy(&self.app).await;
        }
        tracing::info!("stopped");
        ShutdownReport { sessions, drained }
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> ShutdownReport {
        signal.await;
        self.shutdown().await
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
