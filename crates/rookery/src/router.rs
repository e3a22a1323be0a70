//! Handlers and the route table.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use rookery_protocol::{Route, RouteDict};

use crate::error::{StartError, StartErrorKind};
use crate::{Context, Error, FromPayload, ToPayload};

/// A boxed future, as handlers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A type-erased handler: context and raw payload in, raw payload (or error) out.
pub type BoxHandler = Arc<dyn Fn(Context, Bytes) -> BoxFuture<Result<Bytes, Error>> + Send + Sync>;

/// Anything that can handle a route: an async function `(Context, A) -> Result<R, Error>` where
/// `A` decodes from the payload and `R` encodes into the response.
pub trait Handler<A, R>: Send + Sync + 'static {
    /// Erases the argument and result types.
    fn into_boxed(self) -> BoxHandler;
}

impl<F, Fut, A, R> Handler<A, R> for F
where
    F: Fn(Context, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Error>> + Send + 'static,
    A: FromPayload,
    R: ToPayload + 'static,
{
    fn into_boxed(self) -> BoxHandler {
        Arc::new(
            move |ctx: Context, payload: Bytes| -> BoxFuture<Result<Bytes, Error>> {
                let ser = ctx.serializer();
                match A::from_payload(ser, payload) {
                    Ok(arg) => {
                        let fut = (self)(ctx, arg);
                        Box::pin(async move { fut.await?.to_payload(ser) })
                    }
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                }
            },
        )
    }
}

/// How a module's requests are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dispatch {
    /// Requests of one session run one after another, in arrival order (the default).
    #[default]
    Ordered,
    /// Requests run concurrently, even from the same session (mqant `RegisterGO`).
    Concurrent,
    /// One request at a time for the whole module, across all sessions (mqant `Register`);
    /// per-session order is kept.
    Serial,
}

/// One registered route.
pub struct RouteEntry {
    /// Full route, `module.handler.method`.
    pub route: Arc<str>,
    /// Code in the route dictionary (0 for internal routes, which have none).
    pub code: u16,
    /// Index of the owning module.
    pub module: usize,
    /// Scheduling.
    pub dispatch: Dispatch,
    /// The session must have a bound uid.
    pub login_required: bool,
    /// Not callable by clients (RPC/system only).
    pub internal: bool,
    pub(crate) handler: BoxHandler,
    /// The route's middleware, outermost first: the node's, the module's, the route's own
    /// (until the node starts, only the route's own).
    pub(crate) layers: Box<[Arc<dyn crate::middleware::Middleware>]>,
    pub(crate) module_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Counters and metric handles of this route.
    pub stats: crate::telemetry::RouteStats,
}

/// Route lookups happen on every request. The table is filled once at start, so keys a client
/// chooses can only be looked up, never inserted: a fast (seeded) hash is enough. Names are
/// keyed by their bytes: a route read off the wire is looked up without validating it as UTF-8
/// again.
type RouteMap<K> = HashMap<K, Arc<RouteEntry>, foldhash::fast::RandomState>;

/// The route table of a node.
#[derive(Default)]
pub struct Router {
    by_name: RouteMap<Box<[u8]>>,
    by_code: RouteMap<u16>,
    dict: Arc<RouteDict>,
    pushes: Vec<String>,
}

impl Router {
    /// Builds the table and the route dictionary: every client-callable route, every declared
    /// push route and every route pinned in `[routes]` gets a code (see [`RouteDict::stable`]).
    pub(crate) fn new(
        entries: Vec<RouteEntry>,
        push_routes: &[String],
        config: &crate::Config,
    ) -> Result<Self, StartError> {
        let mut by_name = HashMap::new();
        for e in &entries {
            if by_name.insert(e.route.clone(), ()).is_some() {
                return Err(StartError::new(
                    StartErrorKind::Routes,
                    format!("route {} registered twice", e.route),
                ));
            }
        }
        let names = entries
            .iter()
            .filter(|e| !e.internal)
            .map(|e| &*e.route)
            .chain(push_routes.iter().map(String::as_str));
        let dict = config
            .route_dict(names)
            .map_err(|e| StartError::new(StartErrorKind::Routes, "[routes]").with_source(e))?;
        let mut router = Router {
            dict: Arc::new(dict),
            pushes: push_routes.to_vec(),
            ..Router::default()
        };
        for mut e in entries {
            e.code = if e.internal {
                0
            } else {
                router.dict.code(&e.route).unwrap_or(0)
            };
            let e = Arc::new(e);
            if e.code != 0 {
                router.by_code.insert(e.code, e.clone());
            }
            router.by_name.insert(e.route.as_bytes().into(), e);
        }
        Ok(router)
    }

    /// Looks up a route by name (internal routes included).
    pub fn get(&self, route: &str) -> Option<&Arc<RouteEntry>> {
        self.by_name.get(route.as_bytes())
    }

    /// Resolves a route as a client sent it; internal routes are not visible.
    pub(crate) fn resolve_client(&self, route: &Route) -> Option<&Arc<RouteEntry>> {
        let e = match route {
            Route::Name(n) => self.by_name.get(n.as_bytes()),
            Route::Code(c) => self.by_code.get(c),
        }?;
        (!e.internal).then_some(e)
    }

    /// The dictionary of this node's own routes (and the pinned ones). Gateways hand out the
    /// cluster's ([`crate::SessionPool::dict`]), which extends it and never changes its codes.
    pub fn dict(&self) -> &Arc<RouteDict> {
        &self.dict
    }

    /// The routes this node serves to clients and the push routes its modules declared: what it
    /// publishes so that every gateway's dictionary holds them.
    pub fn client_routes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_name
            .values()
            .filter(|e| !e.internal)
            .map(|e| e.route.to_string())
            .chain(self.pushes.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// All routes, sorted by name.
    pub fn routes(&self) -> Vec<Arc<RouteEntry>> {
        let mut v: Vec<_> = self.by_name.values().cloned().collect();
        v.sort_by(|a, b| a.route.cmp(&b.route));
        v
    }
}
