//! Middleware: ordered layers around handlers ([`Middleware`]) and around outgoing RPC calls
//! ([`CallMiddleware`]).
//!
//! A handler's layers run in this order: the node's ([`crate::ServerBuilder::middleware`]),
//! then its module's ([`crate::ModuleInit::middleware`]), then its route's
//! ([`crate::RouteBuilder::middleware`]), then the handler. They run wherever the handler runs,
//! for every way a request reaches it: a client's request on the gateway, a request forwarded
//! from another gateway, an RPC call. A layer can read and change the session, reject with an
//! error code, time or log the call, or answer without calling the rest.
//!
//! A route without layers pays nothing for the mechanism (its handler is called directly); each
//! layer costs one boxed future per request.
//!
//! ```
//! use rookery::middleware::{Middleware, Next};
//! use rookery::{async_trait, Context, Error};
//! use bytes::Bytes;
//!
//! /// Logs slow requests.
//! struct Slow(std::time::Duration);
//!
//! #[async_trait]
//! impl Middleware for Slow {
//!     async fn handle(&self, ctx: Context, payload: Bytes, next: Next<'_>) -> Result<Bytes, Error> {
//!         let route = ctx.route().to_string();
//!         let started = std::time::Instant::now();
//!         let result = next.run(ctx, payload).await;
//!         if started.elapsed() > self.0 {
//!             tracing::warn!(%route, "slow request");
//!         }
//!         result
//!     }
//! }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::router::BoxHandler;
use crate::{CallOptions, Context, Error, Rpc, RpcError, Target};

/// A layer around handlers.
#[async_trait]
pub trait Middleware: Send + Sync + 'static {
    /// Handles a request: `next.run(ctx, payload)` runs the layers after this one and the
    /// handler; returning without it answers the request here.
    async fn handle(&self, ctx: Context, payload: Bytes, next: Next<'_>) -> Result<Bytes, Error>;
}

/// The rest of a handler's chain: the layers after the current one, then the handler.
pub struct Next<'a> {
    layers: &'a [Arc<dyn Middleware>],
    handler: &'a BoxHandler,
}

impl<'a> Next<'a> {
    pub(crate) fn new(layers: &'a [Arc<dyn Middleware>], handler: &'a BoxHandler) -> Self {
        Self { layers, handler }
    }

    /// Runs the rest of the chain.
    pub async fn run(self, ctx: Context, payload: Bytes) -> Result<Bytes, Error> {
        match self.layers.split_first() {
            Some((layer, rest)) => {
                layer
                    .handle(ctx, payload, Next::new(rest, self.handler))
                    .await
            }
            None => (self.handler)(ctx, payload).await,
        }
    }
}

/// Refuses sessions without a bound uid (`RK-401`): the check `login_required()` makes on one
/// route, as a layer for a whole module or node. (`login_required()` itself is a flag read
/// before the chain, which costs nothing on routes that do not set it.)
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginRequired;

#[async_trait]
impl Middleware for LoginRequired {
    async fn handle(&self, ctx: Context, payload: Bytes, next: Next<'_>) -> Result<Bytes, Error> {
        if ctx.uid().is_none() {
            return Err(Error::not_logged_in());
        }
        next.run(ctx, payload).await
    }
}

/// A deadline of its own for a route or module (`RK-408` after it), inside the node's request
/// deadline (`gateway.request_timeout`, which the framework applies without a layer).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub std::time::Duration);

#[async_trait]
impl Middleware for Deadline {
    async fn handle(&self, ctx: Context, payload: Bytes, next: Next<'_>) -> Result<Bytes, Error> {
        let route = ctx.route().to_string();
        match tokio::time::timeout(self.0, next.run(ctx, payload)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                crate::Code::Timeout,
                format!("{route} did not answer within {:?}", self.0),
            )),
        }
    }
}

/// One outgoing call, as caller-side layers see it: they may change any part of it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Where it goes.
    pub target: Target,
    /// The route called.
    pub route: String,
    /// The encoded argument.
    pub payload: Bytes,
    /// Deadline, hash key, serializer, session.
    pub options: CallOptions,
}

/// A layer around outgoing RPC calls ([`crate::ServerBuilder::call_middleware`]).
#[async_trait]
pub trait CallMiddleware: Send + Sync + 'static {
    /// Makes a call: `next.run(call)` sends it (through the layers after this one); returning
    /// without it answers the call here.
    async fn call(&self, call: Call, next: NextCall<'_>) -> Result<Bytes, RpcError>;
}

/// The rest of a call's chain: the layers after the current one, then the call itself.
pub struct NextCall<'a> {
    layers: &'a [Arc<dyn CallMiddleware>],
    rpc: &'a Rpc<'a>,
}

impl<'a> NextCall<'a> {
    pub(crate) fn new(layers: &'a [Arc<dyn CallMiddleware>], rpc: &'a Rpc<'a>) -> Self {
        Self { layers, rpc }
    }

    /// Runs the rest of the chain.
    pub async fn run(self, call: Call) -> Result<Bytes, RpcError> {
        match self.layers.split_first() {
            Some((layer, rest)) => layer.call(call, NextCall::new(rest, self.rpc)).await,
            None => {
                self.rpc
                    .call_unlayered(&call.target, &call.route, call.payload, &call.options)
                    .await
            }
        }
    }
}
