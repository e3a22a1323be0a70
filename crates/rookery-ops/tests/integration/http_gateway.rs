//! The HTTP gateway: `POST /{module}/{handler}/{method}` → handler → JSON, with every error
//! mapped to its HTTP status.

use crate::common::{config, http, start, start_pair, SECRET};
use serde_json::{json, Value};

/// POSTs a JSON body; returns status and parsed JSON body.
async fn post(node: &crate::common::Node, path: &str, body: &[u8]) -> (u16, Value) {
    let r = http(node.http, "POST", path, &[], body).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{path}: {r:?}"
    );
    (r.status, r.json())
}

fn short_limits() -> rookery::Config {
    let mut c = config();
    c.http.timeout = 0.3;
    c.http.max_body = 1024;
    c
}

#[tokio::test]
async fn success_returns_the_handler_result() {
    let node = start(short_limits()).await;
    let (status, body) = post(&node, "/ops/echo/json", br#"{"a":[1,2,{"b":"c"}]}"#).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"a":[1,2,{"b":"c"}]}));
    // An empty body reads as {} (curl -X POST without -d).
    let (status, body) = post(&node, "/ops/echo/json", b"").await;
    assert_eq!((status, body), (200, json!({})));
    // A handler that sleeps less than the timeout answers normally.
    let (status, body) = post(&node, "/ops/slow/sleep", br#"{"ms":10}"#).await;
    assert_eq!((status, body), (200, json!({"slept_ms": 10})));
    node.shutdown().await;
}

#[tokio::test]
async fn error_mapping() {
    let node = start(short_limits()).await;
    let cases: [(&str, &[u8], u16, &str); 10] = [
        ("/ops/echo/json", b"{not json", 400, "RK-400"),
        ("/ops/slow/sleep", br#"{"ms":"soon"}"#, 400, "RK-400"),
        ("/ops/auth/whoami", b"{}", 401, "RK-401"),
        ("/ops/nope/nope", b"{}", 404, "RK-404"),
        ("/nomodule/x/y", b"{}", 404, "RK-404"),
        ("/ops/internal/only", b"{}", 404, "RK-404"),
        ("/ops/slow/sleep", br#"{"ms":3000}"#, 408, "RK-408"),
        ("/ops/fail/rate", b"{}", 429, "RK-429"),
        ("/ops/fail/unavailable", b"{}", 503, "RK-503"),
        ("/ops/fail/custom", b"{}", 400, "ROOM-FULL"),
    ];
    for (path, body, status, code) in cases {
        let (got, err) = post(&node, path, body).await;
        assert_eq!(got, status, "{path}: {err}");
        assert_eq!(err["code"], code, "{path}: {err}");
        assert!(err["msg"].is_string(), "{path}: {err}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn failing_handlers_answer_500_without_internals() {
    let node = start(short_limits()).await;
    for path in ["/ops/fail/internal", "/ops/fail/panic"] {
        let r = http(node.http, "POST", path, &[], b"{}").await;
        assert_eq!(r.status, 500, "{path}");
        let text = r.text();
        assert!(!text.contains(SECRET), "{path} leaked: {text}");
        assert!(!text.contains("panic"), "{path} leaked: {text}");
        assert_eq!(r.json(), json!({"code": "RK-500", "msg": "internal error"}));
    }
    node.shutdown().await;
}

#[tokio::test]
async fn body_too_large_is_413_and_odd_requests_are_json_errors() {
    let node = start(short_limits()).await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4096));
    let (status, err) = post(&node, "/ops/echo/json", big.as_bytes()).await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["code"], "RK-413");
    // Just under the limit passes.
    let ok = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000));
    let (status, _) = post(&node, "/ops/echo/json", ok.as_bytes()).await;
    assert_eq!(status, 200);
    // Other paths: 404 JSON.
    for path in ["/", "/ops", "/ops/echo", "/ops/echo/json/extra"] {
        let (status, err) = post(&node, path, b"{}").await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(err["code"], "RK-404", "{path}");
    }
    // Other methods: 405 JSON.
    let r = http(node.http, "GET", "/ops/echo/json", &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.json()["code"], "RK-405");
    node.shutdown().await;
}

#[tokio::test]
async fn handler_deadline_is_408_too() {
    // The framework's own request timeout (shorter than the HTTP one) also maps to 408.
    let mut c = config();
    c.gateway.request_timeout = 0.2;
    c.http.timeout = 5.0;
    let node = start(c).await;
    let started = std::time::Instant::now();
    let (status, err) = post(&node, "/ops/slow/sleep", br#"{"ms":3000}"#).await;
    assert_eq!((status, err["code"].as_str()), (408, Some("RK-408")));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    node.shutdown().await;
}

#[tokio::test]
async fn routes_of_another_node_are_called_over_rpc() {
    let (gate, back) = start_pair().await;
    assert!(gate.server.app().router().get("ops.echo.json").is_none());
    let (status, body) = post(&gate, "/ops/echo/json", br#"{"via":"rpc"}"#).await;
    assert_eq!((status, body), (200, json!({"via": "rpc"})));
    let (status, err) = post(&gate, "/ops/auth/whoami", b"{}").await;
    assert_eq!((status, err["code"].as_str()), (401, Some("RK-401")));
    let (status, err) = post(&gate, "/ops/internal/only", b"{}").await;
    assert_eq!((status, err["code"].as_str()), (404, Some("RK-404")));
    let (status, err) = post(&gate, "/ops/fail/rate", b"{}").await;
    assert_eq!((status, err["code"].as_str()), (429, Some("RK-429")));
    gate.shutdown().await;
    back.shutdown().await;
}
