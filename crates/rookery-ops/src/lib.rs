//! Operations for Rookery nodes: Prometheus metrics, a JSON admin API with a live web
//! dashboard, and an HTTP gateway that turns `POST /{module}/{handler}/{method}` into a handler
//! call.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rookery::{CancellationToken, Config, Server};
//!
//! // Install the recorder first, so the routes' metric handles bind to it.
//! let metrics = rookery_ops::install_metrics();
//! let server = Server::builder(Config::default()).start().await?;
//! let stop = CancellationToken::new();
//! let admin = tokio::net::TcpListener::bind("127.0.0.1:3252").await?;
//! tokio::spawn(rookery_ops::serve_admin(
//!     server.app().clone(),
//!     admin,
//!     Some(metrics),
//!     stop.clone(),
//! ));
//! let http = tokio::net::TcpListener::bind("127.0.0.1:3253").await?;
//! tokio::spawn(rookery_ops::serve_http_gateway(server.app().clone(), http, stop.clone()));
//! server.run_until(rookery::shutdown_signal()).await;
//! stop.cancel();
//! # Ok(()) }
//! ```
//!
//! The admin address serves `GET /metrics` (Prometheus text), `GET /api/node`, `/api/nodes`,
//! `/api/sessions`, `/api/routes`, `/api/groups`, `/api/stats`, `POST /api/kick` and
//! `/api/broadcast` (with `Authorization: Bearer <admin.token>`), and the dashboard at `/`.

#![forbid(unsafe_code)]

mod admin;
mod error;
mod http;
mod prom;
mod serve;

pub use admin::serve_admin;
pub use error::status_for;
pub use http::{serve_http_gateway, HTTP_REQUESTS_TOTAL};
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use prom::{install_metrics, LATENCY_BUCKETS};
