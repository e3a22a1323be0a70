//! rookery-ops' integration tests against real servers, as one test binary; a module per
//! concern. The metrics recorder is process-wide (`install_metrics` installs it once and hands
//! out its handle), so the metrics tests assert lower bounds and what only they do, never exact
//! totals another test could move.

mod common;

mod admin_api;
mod connection_limits;
mod dashboard;
mod http_gateway;
mod metrics;
