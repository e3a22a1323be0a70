//! `GET /metrics`: Prometheus text with the framework's metrics, moving under traffic.

use crate::common::{client, config, http, series, start};
use serde_json::json;

async fn scrape(node: &crate::common::Node) -> String {
    let r = http(node.admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    r.text()
}

#[tokio::test]
async fn metrics_are_present_and_move_under_traffic() {
    let node = start(config()).await;
    let c = client(&node, None).await;
    for i in 0..5 {
        c.request_json("ops.echo.json", json!({ "i": i }))
            .await
            .unwrap();
    }
    let _ = c.request_json("ops.fail.custom", json!({})).await;
    c.request_json("ops.push.me", json!({"x": 1}))
        .await
        .unwrap();

    let first = scrape(&node).await;
    let ok = r#"rookery_requests_total{route="ops.echo.json",outcome="ok"}"#;
    let before = series(&first, ok).unwrap_or_else(|| panic!("{ok} missing in:\n{first}"));
    assert!(before >= 5.0, "{before}");
    assert!(
        series(
            &first,
            r#"rookery_requests_total{route="ops.fail.custom",outcome="ROOM-FULL"}"#
        )
        .is_some(),
        "error outcome counted:\n{first}"
    );
    // Names and types follow Prometheus conventions; latency is a histogram with buckets.
    for needle in [
        "# TYPE rookery_requests_total counter",
        "# TYPE rookery_handler_duration_seconds histogram",
        r#"rookery_handler_duration_seconds_bucket{route="ops.echo.json",le="0.001"}"#,
        r#"rookery_handler_duration_seconds_count{route="ops.echo.json"}"#,
        r#"rookery_connections_total{acceptor="tcp"}"#,
        r#"rookery_sessions{acceptor="tcp"}"#,
        "rookery_pushes_sent_total",
        "# HELP rookery_requests_total",
    ] {
        assert!(first.contains(needle), "{needle} missing in:\n{first}");
    }
    assert!(series(&first, r#"rookery_sessions{acceptor="tcp"}"#).unwrap() >= 1.0);

    for i in 0..7 {
        c.request_json("ops.echo.json", json!({ "i": i }))
            .await
            .unwrap();
    }
    let second = scrape(&node).await;
    let after = series(&second, ok).unwrap();
    assert!(after >= before + 7.0, "counter moved: {before} -> {after}");
    let count = r#"rookery_handler_duration_seconds_count{route="ops.echo.json"}"#;
    assert!(series(&second, count).unwrap() > series(&first, count).unwrap());

    c.close().await;
    node.shutdown().await;
}

#[tokio::test]
async fn http_gateway_requests_are_counted() {
    let node = start(config()).await;
    let r = http(node.http, "POST", "/ops/echo/json", &[], b"{}").await;
    assert_eq!(r.status, 200);
    let r = http(node.http, "POST", "/nope", &[], b"{}").await;
    assert_eq!(r.status, 404);
    let text = scrape(&node).await;
    assert!(series(&text, r#"rookery_http_requests_total{status="200"}"#).unwrap() >= 1.0);
    assert!(series(&text, r#"rookery_http_requests_total{status="404"}"#).unwrap() >= 1.0);
    node.shutdown().await;
}

#[test]
fn install_metrics_twice_returns_a_working_handle() {
    let a = rookery_ops::install_metrics();
    let b = rookery_ops::install_metrics();
    metrics::counter!("rookery_ops_test_total").increment(3);
    assert!(a.render().contains("rookery_ops_test_total 3"));
    assert!(b.render().contains("rookery_ops_test_total 3"));
}
