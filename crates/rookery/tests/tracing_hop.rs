//! Tracing across hops: a test binary of its own (not a module of `integration`), because it
//! installs the process-wide log subscriber, which no other test may change meanwhile.

use rookery::cluster::{InProcTransport, Transport};
use rookery_testkit::cluster;

/// A client request's trace id reaches the backend through the RPC it causes, and appears in the
/// backend handler's log lines.
#[tokio::test]
async fn trace_id_crosses_the_hop_and_reaches_the_logs() {
    use rookery_client::{Client, ClientOptions};
    use serde_json::json;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(
            rookery::logs::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false),
        );
    // The only test in this process: the subscriber can be global (no other test changes it).
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let hub = InProcTransport::new();
    let c = cluster::start(move || Arc::new(hub.clone()) as Arc<dyn Transport>).await;
    let cl = Client::connect(
        &c.gate.tcp_addr().unwrap().to_string(),
        ClientOptions::default(),
    )
    .await
    .unwrap();
    let v = cl
        .request_json("front.trace.chain", json!({}))
        .await
        .unwrap();
    let gateway = v["gateway"].as_str().expect("gateway trace id").to_string();
    assert_eq!(v["backend"], gateway.as_str(), "{v}");
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("backend handler ran"))
        .expect("the backend logged");
    assert!(line.contains(&format!("trace_id={gateway}")), "{line}");
    assert!(line.contains("request{route=game.trace.id "), "{line}");
}
