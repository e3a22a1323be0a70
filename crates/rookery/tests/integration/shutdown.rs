//! Graceful shutdown: stop accepting, finish in-flight requests, kick with a reason, destroy.

use std::sync::atomic::Ordering;

use crate::common::*;
use rookery::REASON_SHUTDOWN;
use serde_json::json;

#[tokio::test]
async fn drains_in_flight_requests_then_kicks() {
    let (server, probe) = start(config()).await;
    let addr = tcp_addr(&server);
    let c = client(&server).await;
    let idle = client(&server).await;
    // Start a slow request, and make sure the node has it before shutting down.
    let slow = tokio::spawn({
        let c2 = c;
        async move {
            let r = c2.request_json("test.slow.sleep", json!({"ms": 300})).await;
            (r, c2)
        }
    });
    probe.slow_started.notified().await;
    let report = server.shutdown().await;
    assert!(report.drained);
    assert_eq!(report.sessions, 2);
    let (r, c) = slow.await.unwrap();
    assert_eq!(r.unwrap(), json!({"ms": 300}), "in-flight request finished");
    let closed = c.closed().await;
    assert!(closed.kicked);
    assert_eq!(closed.reason.as_deref(), Some(REASON_SHUTDOWN));
    assert_eq!(idle.closed().await.reason.as_deref(), Some(REASON_SHUTDOWN));
    assert_eq!(probe.destroyed.load(Ordering::SeqCst), 1);
    assert_eq!(probe.closed.lock().unwrap().len(), 2);
    // No longer accepting.
    assert!(rookery_client::Client::connect(&addr, Default::default())
        .await
        .is_err());
}
