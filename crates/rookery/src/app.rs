//! The running node's shared state ([`App`]) and the per-request [`Context`].

use std::sync::Arc;

use rookery_protocol::{HandshakeRequest, Serializer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::router::Router;
use crate::{Config, Error, Groups, Module, PushName, Session, SessionPool, ToPayload};

/// Decides whether a client's handshake is accepted (e.g. checks an auth token in `user`).
/// A refusal's text is sent to the client with handshake code 400.
pub type HandshakeValidator =
    Arc<dyn Fn(&HandshakeRequest) -> Result<(), Error> + Send + Sync + 'static>;

/// A cheap handle on the node: configuration, routes, sessions, groups.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

pub(crate) struct AppInner {
    pub config: Config,
    pub router: Router,
    pub sessions: SessionPool,
    pub groups: Groups,
    pub modules: Vec<Arc<dyn Module>>,
    /// Cancelled when the node starts draining (graceful shutdown).
    pub draining: CancellationToken,
    /// Set (before `draining` is cancelled) when the node starts draining; read lock-free by
    /// connections on every wake-up.
    pub drain_started: std::sync::atomic::AtomicBool,
    /// Owns every connection task.
    pub tasks: TaskTracker,
    pub validator: Option<HandshakeValidator>,
    pub cluster: crate::cluster::runtime::ClusterState,
    pub errors: crate::telemetry::RecentErrors,
    /// Connections the gateway closed on its own initiative: counts and their log lines.
    pub disconnects: crate::telemetry::Disconnects,
    /// `rookery_requests_total{route="*",outcome="rate_limited"}`: messages refused by the rate
    /// limit whose route is not local (registered at start, like the routes' handles).
    pub rate_limited_elsewhere: metrics::Counter,
    /// Sessions of other gateways this node served (let go of when their gateway leaves).
    pub remote_sessions: crate::remote_sessions::RemoteSessions,
    /// Layers around this node's outgoing calls, outermost first.
    pub call_layers: Box<[Arc<dyn crate::middleware::CallMiddleware>]>,
    /// The client protocols other than pomelo, with their settings.
    pub wires: crate::gateway::Wires,
    /// The gateway's TLS, when `gateway.tls` is set.
    pub tls: Option<Arc<crate::gateway::tls::Tls>>,
    /// Per module (by index): the calls from other nodes it runs or waits to run.
    pub module_inbound: Vec<Arc<tokio::sync::Semaphore>>,
}

impl App {
    pub(crate) fn new(inner: AppInner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn inner(&self) -> &AppInner {
        &self.inner
    }

    pub(crate) fn from_inner(inner: Arc<AppInner>) -> Self {
        Self { inner }
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<AppInner> {
        Arc::downgrade(&self.inner)
    }

    /// This node as published to the cluster.
    pub fn node(&self) -> crate::cluster::NodeInfo {
        self.inner.cluster.me()
    }

    /// Changes this node's published info and publishes it at once: peers see
    /// `DiscoveryEvent::Updated` and their selectors follow. Its identity (id, type, address,
    /// logical address, modules, routes, whether it is a gateway) is kept whatever `change`
    /// does; a draining node cannot be changed (`RK-503`).
    pub async fn update_node(
        &self,
        change: impl FnOnce(&mut crate::cluster::NodeInfo),
    ) -> Result<crate::cluster::NodeInfo, Error> {
        let c = &self.inner.cluster;
        let _order = c.publishing.lock().await;
        if self.is_draining() || c.me().state == crate::cluster::NodeState::Draining {
            return Err(Error::new(crate::Code::Unavailable, "the node is draining"));
        }
        let me = c.set_me(|n| {
            let mut changed = n.clone();
            change(&mut changed);
            n.version = changed.version;
            n.module_versions = changed.module_versions;
            n.weight = changed.weight;
            n.state = changed.state;
            n.tags = changed.tags;
        });
        c.discovery.update(&me).await.map_err(|e| {
            Error::new(
                crate::Code::Unavailable,
                "the node's info was not published",
            )
            .with_source(e)
        })?;
        Ok(me)
    }

    /// Sets this node's state: `Unavailable` takes it out of every selection (maintenance, a
    /// gray release), `Available` brings it back. Published at once ([`App::update_node`]).
    pub async fn set_node_state(&self, state: crate::cluster::NodeState) -> Result<(), Error> {
        self.update_node(|n| n.state = state).await.map(drop)
    }

    /// Sets this node's selection weight (the weighted selector's). Published at once.
    pub async fn set_node_weight(&self, weight: u32) -> Result<(), Error> {
        self.update_node(|n| n.weight = weight).await.map(drop)
    }

    /// Replaces this node's tags (what calls with `CallOptions::with_tag` select on). Published
    /// at once.
    pub async fn set_node_tags(
        &self,
        tags: std::collections::BTreeMap<String, String>,
    ) -> Result<(), Error> {
        self.update_node(|n| n.tags = tags).await.map(drop)
    }

    /// Reads the gateway's TLS certificate and key again (what the `rookery` binary does on
    /// SIGHUP): connections accepted from now on get the new certificate, open ones keep
    /// theirs. On an error (or without `gateway.tls`) the current certificate stays.
    pub fn reload_tls(&self) -> Result<(), Error> {
        let tls = self
            .inner
            .tls
            .as_ref()
            .ok_or_else(|| Error::bad_request("no TLS to reload: gateway.tls is not set"))?;
        tls.reload()
            .map_err(|e| Error::bad_request("TLS not reloaded").with_source(e))
    }

    /// The application's settings (`[settings]`) as `T`: the same on every node.
    pub fn settings<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        self.config()
            .app_settings()
            .map_err(|e| Error::bad_request(e.to_string()))
    }

    /// Calls from other nodes being handled here right now.
    pub fn inbound_calls(&self) -> usize {
        self.inner.cluster.inbound.len()
    }

    /// The cluster as this node sees it.
    pub fn cluster(&self) -> &crate::cluster::Registry {
        &self.inner.cluster.registry
    }

    /// Runs a route's handler for a session: login check, panic capture, deadline.
    /// Records the request in the route's figures (its duration counted from `arrived`, or from
    /// now) and runs it in its [`RequestScope`](crate::telemetry::RequestScope) (so the
    /// handler's logs carry the route, trace id and session), inside a `request` span when
    /// `debug` is on for its target (span exporters).
    pub(crate) async fn invoke(
        &self,
        entry: &crate::RouteEntry,
        session: Session,
        payload: bytes::Bytes,
        timeout: std::time::Duration,
        trace: u64,
        arrived: Option<std::time::Instant>,
    ) -> Result<bytes::Bytes, Error> {
        let started = arrived.unwrap_or_else(std::time::Instant::now);
        use futures_util::FutureExt;
        use tracing::Instrument;
        let result = if entry.login_required && session.uid().is_none() {
            Err(Error::not_logged_in())
        } else {
            let span = tracing::debug_span!(
                target: crate::telemetry::REQUEST_SPAN_TARGET,
                "request",
                route = %entry.route,
                trace_id = %crate::telemetry::TraceId(trace),
                session = session.id(),
            );
            let scope = crate::telemetry::RequestScope {
                trace_id: trace,
                route: Some(entry.route.clone()),
                session: Some(session.id()),
            };
            let ctx = Context::new(self.clone(), session, entry.route.clone());
            // Without layers (the common case) the handler's own future, with no box of its own.
            let handler: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>> =
                if entry.layers.is_empty() {
                    (entry.handler)(ctx, payload)
                } else {
                    Box::pin(
                        crate::middleware::Next::new(&entry.layers, &entry.handler)
                            .run(ctx, payload),
                    )
                };
            let fut = std::panic::AssertUnwindSafe(handler).catch_unwind();
            let run = crate::telemetry::with_scope(scope, first_poll_then_deadline(timeout, fut));
            let outcome = if span.is_disabled() {
                run.await
            } else {
                run.instrument(span).await
            };
            match outcome {
                Ok(Ok(r)) => r,
                Ok(Err(_panic)) => {
                    Err(Error::internal(format!("handler {} panicked", entry.route)))
                }
                Err(_) => Err(Error::new(
                    crate::Code::Timeout,
                    format!("{} did not answer in time", entry.route),
                )),
            }
        };
        entry.stats.record(
            &entry.route,
            started.elapsed().as_secs_f64(),
            result.as_ref().err().map(|e| e.code()),
        );
        if let Err(e) = &result {
            // Logged here, once: the client only gets the code and message.
            if e.is(crate::Code::Internal) {
                tracing::error!(
                    route = %entry.route,
                    error = %e,
                    cause = std::error::Error::source(e).map(tracing::field::display),
                    "handler failure"
                );
            }
            self.inner.errors.record(&entry.route, e, trace);
        }
        result
    }

    /// Runs a call that reached a module from elsewhere (another node's forward or RPC, or an
    /// RPC this node made to itself) under the module's dispatch rule, as the gateway runs a
    /// client's request: `Serial` routes one at a time per module (the lock the gateway's own
    /// requests take), `Concurrent` and `Ordered` ones as they come (a gateway forwards one
    /// session's ordered requests one after another). The module's inbound bound is taken first:
    /// beyond it the call is refused at once.
    pub(crate) async fn invoke_inbound(
        &self,
        entry: &crate::RouteEntry,
        session: Session,
        payload: bytes::Bytes,
        timeout: std::time::Duration,
        trace: u64,
    ) -> Result<bytes::Bytes, Error> {
        let _permit = self
            .inner
            .module_inbound
            .get(entry.module)
            .and_then(|s| s.clone().try_acquire_owned().ok())
            .ok_or_else(|| {
                let module = self.modules().get(entry.module).map_or("?", |m| m.name());
                Error::new(
                    crate::Code::Unavailable,
                    format!(
                        "module {module} is busy: {} calls from other nodes at once",
                        self.config().cluster.inbound_per_module
                    ),
                )
            })?;
        let _serial = match &entry.module_lock {
            Some(lock) if entry.dispatch == crate::Dispatch::Serial => Some(lock.lock().await),
            _ => None,
        };
        self.invoke(entry, session, payload, timeout, trace, None)
            .await
    }

    /// The most recent request errors on this node, newest last.
    pub fn recent_errors(&self) -> Vec<crate::telemetry::RecentError> {
        self.inner.errors.snapshot()
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node.id
    }

    /// The route table.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The sessions of this node.
    pub fn sessions(&self) -> &SessionPool {
        &self.inner.sessions
    }

    /// The groups of this node.
    pub fn groups(&self) -> &Groups {
        &self.inner.groups
    }

    /// The modules of this node, in registration order.
    pub fn modules(&self) -> &[Arc<dyn Module>] {
        &self.inner.modules
    }

    /// Connections this node's gateway closed on its own initiative, by reason.
    pub fn disconnects(&self) -> &crate::telemetry::Disconnects {
        &self.inner.disconnects
    }

    /// True once graceful shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner
            .drain_started
            .load(std::sync::atomic::Ordering::Acquire)
    }

    // The user operations: the same on every node, wherever the users are connected. (This
    // node's own sessions: `sessions()`; a group's members: `groups()`; nodes: `rpc()`.)

    /// Pushes to users wherever they are connected: this gateway's sessions directly, the
    /// others through their gateways. Returns how many sessions of this node got it.
    pub async fn push_to_uids<P: ToPayload>(
        &self,
        uids: &[&str],
        route: impl PushName<P>,
        payload: P,
    ) -> Result<usize, Error> {
        Ok(self.rpc().push_to_uids(uids, route, payload).await?)
    }

    /// Pushes to one user wherever it is connected ([`App::push_to_uids`]).
    pub async fn push_to_uid<P: ToPayload>(
        &self,
        uid: &str,
        route: impl PushName<P>,
        payload: P,
    ) -> Result<usize, Error> {
        self.push_to_uids(&[uid], route, payload).await
    }

    /// Kicks a user wherever it is connected.
    pub async fn kick_uid(&self, uid: &str, reason: &str) {
        self.rpc().kick_uid(uid, reason).await
    }

    /// Pushes to every user connected anywhere in the cluster; returns how many sessions of
    /// this node got it.
    pub async fn broadcast<P: ToPayload>(&self, route: impl PushName<P>, payload: P) -> usize {
        self.rpc().broadcast_all(route, payload).await
    }
}

/// Runs `fut` with a deadline, arming the timer only if the first poll does not finish it: most
/// handlers answer at once, and a timer per request costs more than the handler. A small
/// hand-written future: the request's whole state is moved into a box per request, so its size
/// counts.
fn first_poll_then_deadline<F: std::future::Future + Unpin>(
    timeout: std::time::Duration,
    fut: F,
) -> FirstPollThenDeadline<F> {
    FirstPollThenDeadline {
        fut,
        timeout,
        deadline: None,
    }
}

struct FirstPollThenDeadline<F> {
    fut: F,
    timeout: std::time::Duration,
    /// Armed after the first poll left `fut` pending.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<F: std::future::Future + Unpin> std::future::Future for FirstPollThenDeadline<F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        if let Poll::Ready(out) = std::pin::Pin::new(&mut self.fut).poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A handler did not answer within its deadline.
struct TimedOut;

/// What a handler gets besides its argument: the node and the calling session.
#[derive(Clone)]
pub struct Context {
    app: App,
    session: Session,
    route: Arc<str>,
}

impl Context {
    pub(crate) fn new(app: App, session: Session, route: Arc<str>) -> Self {
        Self {
            app,
            session,
            route,
        }
    }

    /// The node.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The calling session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The route being handled.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The session's serializer.
    pub fn serializer(&self) -> Serializer {
        self.session.serializer()
    }

    /// The session's bound uid.
    pub fn uid(&self) -> Option<Arc<str>> {
        self.session.uid()
    }

    /// The bound uid, or `RK-401`.
    pub fn require_uid(&self) -> Result<Arc<str>, Error> {
        self.session.uid().ok_or_else(Error::not_logged_in)
    }

    /// Binds a uid to the calling session (an older session of the same uid is kicked). On a
    /// backend this goes to the gateway holding the connection.
    pub async fn bind(&self, uid: &str) -> Result<(), Error> {
        self.app.bind_session(&self.session, uid).await
    }

    /// Unbinds the calling session's uid (logout): the connection stays, without a user. On a
    /// backend this goes to the gateway holding the connection. Returns the uid it had.
    pub async fn unbind(&self) -> Result<Option<Arc<str>>, Error> {
        self.app.unbind_session(&self.session).await
    }

    /// Pushes to the calling session.
    pub fn push<P: ToPayload>(&self, route: impl PushName<P>, payload: P) -> Result<(), Error> {
        self.session.push(route, payload)
    }
}
