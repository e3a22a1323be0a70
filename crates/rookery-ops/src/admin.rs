//! The admin server: `/metrics`, the JSON API under `/api`, and the dashboard at `/`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use rookery::telemetry as t;
use rookery::{App, CancellationToken};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::{http_error, json_bytes};
use crate::prom::{self, Buckets};
use crate::serve::Limits;

/// The dashboard page (plain HTML/CSS/JS, no build step).
const DASHBOARD: &str = include_str!("dashboard.html");
/// Largest request body of the admin API.
const MAX_BODY: usize = 64 * 1024;
/// Deadline of any admin request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Most sessions one `/api/sessions` page lists.
const MAX_PAGE: usize = 500;
/// p99 per route is computed over the handler latency recorded in this window.
const P99_WINDOW: Duration = Duration::from_secs(30);

/// Serves the admin API, `/metrics` and the dashboard on `listener` until `shutdown` is
/// cancelled (in-flight requests finish first; idle connections close at once).
///
/// Connections are held to the node's `[admin]` limits: a request's head within
/// `header_timeout`, its body within `body_timeout` (else 408), at most `idle_timeout` between
/// requests, and at most `max_connections` at once (further ones are answered 503 and closed).
///
/// Without `metrics`, `/metrics` answers 404 and `/api/stats` reports no latencies. POST
/// endpoints need `Authorization: Bearer <admin.token>` from the node's config; without a
/// configured token they answer 403 (the API is read-only).
pub async fn serve_admin(
    app: App,
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let cfg = &app.config().admin;
    let limits = Limits {
        header_timeout: cfg.header_timeout(),
        body_timeout: cfg.body_timeout(),
        idle_timeout: cfg.idle_timeout(),
        handler_timeout: TIMEOUT,
        max_connections: cfg.max_connections,
    };
    let state = Arc::new(AdminState {
        app,
        metrics,
        history: Mutex::new(VecDeque::new()),
    });
    let router = Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(render_metrics))
        .route("/api/node", get(node))
        .route("/api/nodes", get(nodes))
        .route("/api/sessions", get(sessions))
        .route("/api/routes", get(routes))
        .route("/api/groups", get(groups))
        .route("/api/stats", get(stats))
        .route("/api/kick", post(kick))
        .route("/api/broadcast", post(broadcast))
        .fallback(not_found)
        .layer(middleware::from_fn(with_timeout))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state);
    crate::serve::serve(listener, router, limits, shutdown).await
}

type St = State<Arc<AdminState>>;

struct AdminState {
    app: App,
    metrics: Option<PrometheusHandle>,
    /// Latency buckets per route at earlier `/api/stats` calls, oldest first, within
    /// [`P99_WINDOW`].
    history: Mutex<VecDeque<(Instant, HashMap<String, Buckets>)>>,
}

/// Ends any admin request that takes longer than [`TIMEOUT`] with 408.
async fn with_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => http_error(StatusCode::REQUEST_TIMEOUT, "admin request timed out"),
    }
}

async fn not_found(uri: Uri) -> Response {
    http_error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn dashboard() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(DASHBOARD)).into_response()
}

async fn render_metrics(State(s): St) -> Response {
    match &s.metrics {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        None => http_error(StatusCode::NOT_FOUND, "metrics are not installed"),
    }
}

async fn node(State(s): St) -> Response {
    Json(s.app.node()).into_response()
}

async fn nodes(State(s): St) -> Response {
    Json(s.app.cluster().all()).into_response()
}

#[derive(Deserialize)]
struct PageQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct SessionRow {
    id: u64,
    uid: Option<String>,
    gateway: String,
    age_secs: f64,
    address: String,
    acceptor: rookery::Acceptor,
}

async fn sessions(State(s): St, q: Result<Query<PageQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return http_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    let pool = s.app.sessions();
    let mut all = pool.all();
    all.sort_by_key(|s| s.id());
    let here = s.app.node_id().to_string();
    let page: Vec<SessionRow> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|x| SessionRow {
            id: x.id(),
            uid: x.uid().map(|u| u.to_string()),
            gateway: x.gateway().map_or_else(|| here.clone(), str::to_string),
            age_secs: (x.created().elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            address: x.remote_addr().to_string(),
            acceptor: x.acceptor(),
        })
        .collect();
    Json(json!({
        "count": all.len(),
        "bound": pool.bound_len(),
        "page": page,
        "offset": offset,
        "limit": limit,
    }))
    .into_response()
}

async fn routes(State(s): St) -> Response {
    let rows: Vec<_> = s
        .app
        .router()
        .routes()
        .iter()
        .map(|r| {
            json!({
                "route": &*r.route,
                "code": r.code,
                "internal": r.internal,
                "login_required": r.login_required,
                "requests": r.stats.requests(),
                "errors": r.stats.errors(),
            })
        })
        .collect();
    Json(rows).into_response()
}

async fn groups(State(s): St) -> Response {
    Json(s.app.groups().list()).into_response()
}

/// Live figures for the dashboard. Counters are totals since start (the dashboard turns
/// successive polls into rates). `p99_ms` per route is computed from the Prometheus histogram
/// `rookery_handler_duration_seconds`: its bucket lines are read from the rendered text, the
/// counts of the oldest snapshot kept from earlier calls within the last 30 s are subtracted
/// (on the first call, nothing: the figure covers everything since start), and the 0.99 rank is
/// interpolated linearly inside its bucket, as Prometheus' `histogram_quantile` does. `null`
/// when the route handled nothing in the window or metrics are not installed. `disconnects`
/// lists every reason the server closes connections for, with its total (from the node's own
/// counters, so present without metrics too).
async fn stats(State(s): St) -> Response {
    let text = s.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    let now = prom::parse_buckets(&text, t::HANDLER_DURATION_SECONDS, "route");
    let base = {
        let mut h = s.history.lock().unwrap_or_else(|p| p.into_inner());
        let at = Instant::now();
        while h
            .front()
            .is_some_and(|(t0, _)| at.duration_since(*t0) > P99_WINDOW)
        {
            h.pop_front();
        }
        let base = h.front().map(|(_, b)| b.clone());
        let due = match h.back() {
            Some((t0, _)) => at.duration_since(*t0) >= Duration::from_secs(1),
            None => true,
        };
        if due {
            h.push_back((at, now.clone()));
        }
        base
    };
    let mut requests_total = 0u64;
    let routes: Vec<_> = s
        .app
        .router()
        .routes()
        .iter()
        .map(|r| {
            requests_total += r.stats.requests();
            let p99 = now.get(&*r.route).and_then(|b| {
                let window = match &base {
                    Some(base) => prom::delta(b, base.get(&*r.route)),
                    None => b.clone(),
                };
                prom::quantile(0.99, &window)
            });
            json!({
                "route": &*r.route,
                "internal": r.internal,
                "requests": r.stats.requests(),
                "errors": r.stats.errors(),
                "p99_ms": p99.map(|v| (v * 1e6).round() / 1e3),
            })
        })
        .collect();
    Json(json!({
        "sessions": s.app.sessions().len(),
        "requests_total": requests_total,
        "pushes_sent_total": prom::sum_series(&text, t::PUSHES_SENT_TOTAL) as u64,
        "routes": routes,
        "disconnects": s
            .app
            .disconnects()
            .totals()
            .iter()
            .map(|(reason, total)| json!({ "reason": reason, "total": total }))
            .collect::<Vec<_>>(),
        "errors": s.app.recent_errors(),
    }))
    .into_response()
}

/// Why a POST was refused: a status and a message, sent as `{"code":"RK-<status>","msg"}`.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        http_error(self.0, self.1)
    }
}

/// Checks `Authorization: Bearer <admin.token>`: 403 when no token is configured, 401 when the
/// header is missing or wrong.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), Refused> {
    let Some(token) = app
        .config()
        .admin
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        return Err(Refused(
            StatusCode::FORBIDDEN,
            "read-only: set admin.token".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(Refused(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token".into(),
        ))
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Authorizes, then parses the JSON body.
fn authorized_body<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Refused> {
    authorize(app, headers)?;
    let body = body.map_err(|e| Refused(e.status(), e.body_text()))?;
    serde_json::from_slice(&body)
        .map_err(|e| Refused(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

#[derive(Deserialize)]
struct KickReq {
    uid: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn kick(State(s): St, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let req: KickReq = match authorized_body(&s.app, &headers, body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    let reason = req.reason.unwrap_or_else(|| "kicked by admin".into());
    let here = s.app.sessions().by_uid(&req.uid).is_some();
    s.app.rpc().kick_uid(&req.uid, &reason).await;
    tracing::info!(uid = %req.uid, %reason, "admin kick");
    json_bytes(
        StatusCode::OK,
        json!({"ok": true, "uid": req.uid, "reason": reason, "was_here": here}).to_string(),
    )
}

#[derive(Deserialize)]
struct BroadcastReq {
    route: String,
    message: serde_json::Value,
}

async fn broadcast(
    State(s): St,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let req: BroadcastReq = match authorized_body(&s.app, &headers, body) {
        Ok(r) => r,
        Err(refused) => return refused.into_response(),
    };
    if req.route.trim().is_empty() {
        return crate::error::error_response(&rookery::Error::bad_request("route is empty"));
    }
    let delivered = s
        .app
        .rpc()
        .broadcast_all(&req.route, rookery::Json(&req.message))
        .await;
    tracing::info!(route = %req.route, delivered, "admin broadcast");
    json_bytes(
        StatusCode::OK,
        json!({"ok": true, "route": req.route, "delivered_here": delivered}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
