//! Rookery: a game-server framework.
//!
//! Clients connect to the gateway (TCP or WebSocket) and speak the pomelo/pitaya protocol
//! ([`rookery_protocol`]). Their requests are routed by `module.handler.method` to handlers that
//! [`Module`]s register; handlers get a [`Context`] (the node and the calling [`Session`]) and a
//! typed argument ([`Json`], [`Proto`], [`Msg`], [`Raw`]) and answer with a typed result or an
//! [`Error`] with a code. Sessions bind user ids, carry key-value data and receive pushes;
//! [`Groups`] broadcast to sets of users.
//!
//! ```no_run
//! use std::sync::Arc;
//! use rookery::{Config, Context, Error, Json, Module, ModuleInit, Server};
//!
//! struct Echo;
//! impl Module for Echo {
//!     fn name(&self) -> &str { "echo" }
//!     fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
//!         init.handler("echo.say", |_ctx: Context, Json(v): Json<serde_json::Value>| async move {
//!             Ok(Json(v))
//!         });
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = Config::default();
//! config.gateway.tcp = Some("127.0.0.1:3250".into());
//! let server = Server::builder(config).module(Echo).start().await?;
//! server.run_until(rookery::shutdown_signal()).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod app;
#[cfg(test)]
mod budgets;
pub mod cluster;
pub mod config;
mod error;
mod gateway;
mod group;
pub mod logs;
mod membership;
pub mod middleware;
mod module;
mod outbound;
mod payload;
mod remote_sessions;
mod router;
mod rpc;
mod server;
mod session;
pub mod telemetry;
mod typed;

/// The cluster layer's hash map, shared so both crates hash their per-call maps the same way.
pub(crate) use rookery_cluster::FastMap;

pub use app::{App, Context, HandshakeValidator};
pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use config::Config;
pub use error::{Code, Error, Source, StartError, StartErrorKind};
pub use gateway::{REASON_IDLE, REASON_SHUTDOWN};
pub use group::{GroupInfo, Groups};
pub use module::{Module, ModuleInit, RouteBuilder};
pub use payload::{FromPayload, Json, Msg, Proto, Raw, ToPayload};
pub use rookery_cluster::LayerError;
pub use rookery_protocol as protocol;
pub use rookery_protocol::Serializer;
pub use router::{BoxFuture, BoxHandler, Dispatch, Handler, RouteEntry, Router};
pub use rpc::{CallOptions, NodeChoice, Rpc, RpcError, Target};
pub use server::{shutdown_signal, RunningServer, Server, ServerBuilder, ShutdownReport};
pub use session::{
    Acceptor, Session, SessionId, SessionPool, REASON_DUPLICATE_LOGIN, REASON_SLOW_CLIENT,
};
pub use tokio_util::sync::CancellationToken;
pub use typed::{Push, PushName, Route, RouteName};
