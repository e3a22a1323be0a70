//! The HTTP gateway: `POST /{module}/{handler}/{method}` with a JSON body runs the route
//! `module.handler.method` without a client session (mqant's http gateway).

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use rookery::config::HttpConfig;
use rookery::{App, CancellationToken, Error, Serializer};
use tokio::net::TcpListener;

use crate::error::{error_response, http_error, json_bytes};
use crate::serve::Limits;

/// HTTP gateway requests, by status (`200`, `404`, ...).
pub const HTTP_REQUESTS_TOTAL: &str = "rookery_http_requests_total";

/// Serves the HTTP gateway on `listener` until `shutdown` is cancelled.
///
/// `POST /{module}/{handler}/{method}` with a JSON body calls the route `module.handler.method`
/// through [`App::request`] (a local handler or, via RPC, a node running the module) and answers
/// 200 with the handler's JSON result, or the error object `{"code","msg"}` with the status of
/// [`crate::status_for`]. Routes that need a logged-in session answer 401; internal and unknown
/// routes 404. Limits come from the node's `[http]` config: a body larger than `max_body` is
/// answered 413 before it is buffered in full, a body not received within `body_timeout` and a
/// handler not done within `timeout` 408; a connection is closed when a request's head takes
/// longer than `header_timeout` or it waits longer than `idle_timeout` for its next request, and
/// beyond `max_connections` new ones are answered 503 and closed. On shutdown, connections
/// without a request in flight close at once; requests in flight finish first.
/// An empty body is passed on as is (handlers read it as `{}`); a body that is not JSON is
/// `RK-400`. Other paths answer 404, other methods 405, both with a JSON error.
pub async fn serve_http_gateway(
    app: App,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let cfg = app.config().http.clone();
    let limits = Limits {
        header_timeout: cfg.header_timeout(),
        body_timeout: cfg.body_timeout(),
        idle_timeout: cfg.idle_timeout(),
        handler_timeout: cfg.timeout(),
        max_connections: cfg.max_connections,
    };
    let state = Arc::new(GatewayState { app, cfg });
    let limit = state.cfg.max_body;
    let router = Router::new()
        .route("/{module}/{handler}/{method}", any(call))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state);
    crate::serve::serve(listener, router, limits, shutdown).await
}

struct GatewayState {
    app: App,
    cfg: HttpConfig,
}

async fn not_found(uri: Uri) -> Response {
    count(StatusCode::NOT_FOUND);
    http_error(
        StatusCode::NOT_FOUND,
        format!(
            "no such path {}: use POST /{{module}}/{{handler}}/{{method}}",
            uri.path()
        ),
    )
}

fn count(status: StatusCode) {
    metrics::counter!(HTTP_REQUESTS_TOTAL, "status" => status.as_str().to_string()).increment(1);
}

async fn call(
    State(s): State<Arc<GatewayState>>,
    method: Method,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let resp = handle(&s, method, path, body).await;
    count(resp.status());
    resp
}

async fn handle(
    s: &GatewayState,
    method: Method,
    path: Result<Path<(String, String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if method != Method::POST {
        let mut r = http_error(StatusCode::METHOD_NOT_ALLOWED, "use POST with a JSON body");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return r;
    }
    let Ok(Path((module, handler, meth))) = path else {
        return error_response(&Error::bad_request("malformed path"));
    };
    let route = format!("{module}.{handler}.{meth}");
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return http_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {} bytes", s.cfg.max_body),
            );
        }
        Err(e) => return error_response(&Error::bad_request(e.body_text())),
    };
    if !body.is_empty() {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return error_response(&Error::bad_request(format!("body is not JSON: {e}")));
        }
    }
    let run = s.app.request(&route, body, Serializer::Json);
    match tokio::time::timeout(s.cfg.timeout(), run).await {
        Ok(Ok(result)) => json_bytes(StatusCode::OK, result),
        Ok(Err(e)) => {
            tracing::debug!(%route, code = e.code(), "http gateway request failed");
            error_response(&e)
        }
        Err(_) => error_response(&Error::new(
            rookery::Code::Timeout,
            format!("{route} did not answer within {}s", s.cfg.timeout),
        )),
    }
}
