//! Modules: units of game logic with a lifecycle and a set of handlers.

use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::middleware::Middleware;
use crate::router::{Dispatch, Handler, RouteEntry};
use crate::typed::RouteName;
use crate::{App, Context, Error, FromPayload, Session, ToPayload};

/// A unit of game logic.
///
/// Lifecycle: [`Module::init`] registers handlers and reads settings (before any client is
/// accepted); [`Module::run`] runs until the shutdown token fires; [`Module::destroy`] runs after
/// all sessions are closed. Modules are called for every session that opens or closes.
#[async_trait]
pub trait Module: Send + Sync + 'static {
    /// Module name: the first part of its routes (`name.handler.method`).
    fn name(&self) -> &str;

    /// Module version.
    fn version(&self) -> &str {
        "0.1.0"
    }

    /// Default scheduling of this module's handlers.
    fn dispatch(&self) -> Dispatch {
        Dispatch::Ordered
    }

    /// Registers handlers and reads settings.
    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error>;

    /// Runs until `shutdown` is cancelled (timers, ticks, background work).
    async fn run(self: Arc<Self>, app: App, shutdown: CancellationToken) {
        let _ = app;
        shutdown.cancelled().await
    }

    /// Called once after the node has stopped serving.
    async fn destroy(&self, app: &App) {
        let _ = app;
    }

    /// A client completed its handshake.
    async fn session_opened(&self, app: &App, session: &Session) {
        let _ = (app, session);
    }

    /// A node of the cluster was found, updated or lost.
    async fn node_event(&self, app: &App, event: &crate::cluster::NodeEvent) {
        let _ = (app, event);
    }

    /// A session ended (client left, kicked, timed out, or node shutting down). Runs before the
    /// session is removed from its groups.
    async fn session_closed(&self, app: &App, session: &Session) {
        let _ = (app, session);
    }
}

/// What a module sees during [`Module::init`].
pub struct ModuleInit<'a> {
    pub(crate) module: &'a str,
    pub(crate) index: usize,
    pub(crate) dispatch: Dispatch,
    pub(crate) settings: Option<&'a toml::Value>,
    pub(crate) routes: &'a mut Vec<RouteEntry>,
    pub(crate) push_routes: &'a mut Vec<String>,
    pub(crate) module_lock: Arc<tokio::sync::Mutex<()>>,
    /// Middleware around every handler of the module, outermost first.
    pub(crate) layers: &'a mut Vec<Arc<dyn Middleware>>,
    /// The node's configuration (for `[settings]`).
    pub(crate) config: &'a crate::Config,
}

impl<'a> ModuleInit<'a> {
    /// Registers a handler for a typed [`crate::Route`] (its full name must be in this module,
    /// and the compiler checks the handler's argument and result against it), or under a
    /// string `handler.method` whose route is then `module.handler.method`.
    pub fn handler<A, R, H: Handler<A, R>>(
        &mut self,
        route: impl RouteName<A, R>,
        handler: H,
    ) -> RouteBuilder<'_> {
        let lock = (self.dispatch == Dispatch::Serial).then(|| self.module_lock.clone());
        let route = if route.is_full() {
            route.route_name().to_string()
        } else {
            format!("{}.{}", self.module, route.route_name())
        };
        self.routes.push(RouteEntry {
            stats: crate::telemetry::RouteStats::new(&route),
            route: Arc::from(route),
            code: 0,
            module: self.index,
            dispatch: self.dispatch,
            login_required: false,
            internal: false,
            handler: handler.into_boxed(),
            layers: Box::default(),
            module_lock: lock,
        });
        let entry = self.routes.last_mut().expect("just pushed");
        RouteBuilder {
            entry,
            lock: self.module_lock.clone(),
        }
    }

    /// Registers a method of the module's state as a handler: `f` is called with a clone of
    /// `state` (typically the module itself), the context and the argument, so handlers are
    /// `async fn join(self: Arc<Self>, ctx: Context, Json(req): Json<JoinReq>) -> Result<..>`
    /// registered as `init.method(&self, JOIN, Self::join)`.
    pub fn method<S, A, R, F, Fut>(
        &mut self,
        state: &Arc<S>,
        route: impl RouteName<A, R>,
        f: F,
    ) -> RouteBuilder<'_>
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Context, A) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, Error>> + Send + 'static,
        A: FromPayload,
        R: ToPayload + 'static,
    {
        let state = state.clone();
        self.handler(route, move |ctx: Context, arg: A| {
            f(state.clone(), ctx, arg)
        })
    }

    /// Adds a layer around every handler of this module (after the node's layers, before the
    /// route's), whenever the handler is registered.
    pub fn middleware(&mut self, layer: impl Middleware) -> &mut Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Declares a push route (a string or a typed [`crate::Push`]) so that it gets a
    /// dictionary code (pushes are then sent compressed).
    pub fn push_route(&mut self, route: impl AsRef<str>) {
        self.push_routes.push(route.as_ref().to_string());
    }

    /// The module's settings (`[modules.NAME]`), or `T::default()` when there are none.
    pub fn settings<T: DeserializeOwned + Default>(&self) -> Result<T, Error> {
        match self.settings {
            None => Ok(T::default()),
            Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
                Error::bad_request(format!("settings of module {}: {e}", self.module))
            }),
        }
    }

    /// The application's settings (`[settings]`), the same for every module of every process.
    pub fn app_settings<T: DeserializeOwned>(&self) -> Result<T, Error> {
        self.config
            .app_settings()
            .map_err(|e| Error::bad_request(e.to_string()))
    }

    /// The module name.
    pub fn module_name(&self) -> &str {
        self.module
    }
}

/// Options of one registered route.
pub struct RouteBuilder<'a> {
    entry: &'a mut RouteEntry,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl RouteBuilder<'_> {
    /// Only sessions with a bound uid may call this route (`RK-401` otherwise).
    pub fn login_required(self) -> Self {
        self.entry.login_required = true;
        self
    }

    /// Clients cannot call this route (`RK-404`); it is for RPC and system use.
    pub fn internal(self) -> Self {
        self.entry.internal = true;
        self
    }

    /// Adds a layer around this route's handler (inside the node's and the module's layers).
    pub fn middleware(self, layer: impl Middleware) -> Self {
        let mut layers = std::mem::take(&mut self.entry.layers).into_vec();
        layers.push(Arc::new(layer));
        self.entry.layers = layers.into_boxed_slice();
        self
    }

    /// Overrides the module's scheduling for this route.
    pub fn dispatch(self, dispatch: Dispatch) -> Self {
        self.entry.dispatch = dispatch;
        self.entry.module_lock = (dispatch == Dispatch::Serial).then(|| self.lock.clone());
        self
    }
}
