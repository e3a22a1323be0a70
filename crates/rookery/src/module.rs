//! Modules: units of game logic with a lifecycle and a set of handlers.

use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::router::{Dispatch, Handler, RouteEntry};
use crate::{App, Error, Session};

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
}

impl<'a> ModuleInit<'a> {
    /// Registers a handler under `handler.method`; its route is `module.handler.method`.
    pub fn handler<A, H: Handler<A>>(&mut self, name: &str, handler: H) -> RouteBuilder<'_> {
        let lock = (self.dispatch == Dispatch::Serial).then(|| self.module_lock.clone());
        let route = format!("{}.{}", self.module, name);
        self.routes.push(RouteEntry {
            stats: crate::telemetry::RouteStats::new(&route),
            route: Arc::from(route),
            code: 0,
            module: self.index,
            dispatch: self.dispatch,
            login_required: false,
            internal: false,
            handler: handler.into_boxed(),
            module_lock: lock,
        });
        let entry = self.routes.last_mut().expect("just pushed");
        RouteBuilder {
            entry,
            lock: self.module_lock.clone(),
        }
    }

    /// Declares a push route so that it gets a dictionary code (pushes are then sent compressed).
    pub fn push_route(&mut self, route: &str) {
        self.push_routes.push(route.to_string());
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

    /// Overrides the module's scheduling for this route.
    pub fn dispatch(self, dispatch: Dispatch) -> Self {
        self.entry.dispatch = dispatch;
        self.entry.module_lock = (dispatch == Dispatch::Serial).then(|| self.lock.clone());
        self
    }
}
