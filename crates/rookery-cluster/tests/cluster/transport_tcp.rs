//! The direct TCP transport between real sockets on 127.0.0.1: round trips, notifies, deadlines,
//! peers dying, node loss, reconnects, bad frames, tokens and the pending-request cap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rookery_cluster::transport::tcp::{TcpConfig, TcpTlsConfig, TcpTransport};
use rookery_cluster::{FrameHandler, NodeInfo, Transport, TransportError, TransportErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Generous bound for "promptly" (far below the deadlines used where it matters).
const PROMPT: Duration = Duration::from_secs(2);

/// Echoes requests; requests starting with `slow` wait for `gate` first (reporting on `entered`
/// when they start and on `cancelled` if dropped before the gate opens); `big` answers with
/// 4 KiB; notifies go to `notes`.
struct TestHandler {
    gate: Arc<Notify>,
    entered: mpsc::UnboundedSender<Bytes>,
    cancelled: mpsc::UnboundedSender<Bytes>,
    notes: mpsc::UnboundedSender<Bytes>,
}

/// Reports on drop unless disarmed.
struct DropSignal(Option<(mpsc::UnboundedSender<Bytes>, Bytes)>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some((tx, frame)) = self.0.take() {
            let _ = tx.send(frame);
        }
    }
}

#[async_trait]
impl FrameHandler for TestHandler {
    async fn request(&self, frame: Bytes) -> Bytes {
        if frame.starts_with(b"slow") {
            let released = self.gate.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let mut signal = DropSignal(Some((self.cancelled.clone(), frame.clone())));
            let _ = self.entered.send(frame.clone());
            released.await;
            signal.0 = None;
        }
        if frame.starts_with(b"big") {
            return Bytes::from(vec![7u8; 4096]);
        }
        frame
    }

    async fn notify(&self, frame: Bytes) {
        let _ = self.notes.send(frame);
    }
}

/// A serving node and the test's ends of its handler.
struct Node {
    /// The node's own transport (it can call other nodes too).
    transport: TcpTransport,
    info: NodeInfo,
    shutdown: CancellationToken,
    gate: Arc<Notify>,
    entered: mpsc::UnboundedReceiver<Bytes>,
    cancelled: mpsc::UnboundedReceiver<Bytes>,
    notes: mpsc::UnboundedReceiver<Bytes>,
}

impl Node {
    /// Waits until `n` slow requests are inside the handler.
    async fn wait_entered(&mut self, n: usize) {
        for _ in 0..n {
            timeout(PROMPT, self.entered.recv())
                .await
                .expect("slow request reached the handler")
                .unwrap();
        }
    }
}

async fn try_start(id: &str, config: TcpConfig) -> Result<Node, TransportError> {
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let (cancelled_tx, cancelled) = mpsc::unbounded_channel();
    let (notes_tx, notes) = mpsc::unbounded_channel();
    let gate = Arc::new(Notify::new());
    let handler = Arc::new(TestHandler {
        gate: gate.clone(),
        entered: entered_tx,
        cancelled: cancelled_tx,
        notes: notes_tx,
    });
    let transport = TcpTransport::new(config);
    let shutdown = CancellationToken::new();
    let mut info = NodeInfo::new(id, "room");
    info.address = transport.serve(&info, handler, shutdown.clone()).await?;
    Ok(Node {
        transport,
        info,
        shutdown,
        gate,
        entered,
        cancelled,
        notes,
    })
}

async fn start(id: &str, config: TcpConfig) -> Node {
    try_start(id, config).await.expect("serve")
}

fn client() -> TcpTransport {
    TcpTransport::new(TcpConfig::default())
}

fn in_secs(s: u64) -> Instant {
    Instant::now() + Duration::from_secs(s)
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// True once the peer has closed `stream` (EOF or reset), reading and discarding anything sent.
async fn disconnected(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    timeout(PROMPT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_and_1000_concurrent_requests() {
    let node = start("b", TcpConfig::default()).await;
    assert!(node.info.address.starts_with("127.0.0.1:"));
    assert!(!node.info.address.ends_with(":0"), "real port returned");
    let a = client();
    let reply = a.request(&node.info, b("hello"), in_secs(5)).await;
    assert_eq!(reply.unwrap(), b("hello"));

    let mut calls = JoinSet::new();
    for i in 0..1000 {
        let (a, target) = (a.clone(), node.info.clone());
        calls.spawn(async move {
            let frame = Bytes::from(format!("req-{i}"));
            let reply = a.request(&target, frame.clone(), in_secs(10)).await;
            (frame, reply)
        });
    }
    let mut answered = 0;
    while let Some(joined) = calls.join_next().await {
        let (frame, reply) = joined.unwrap();
        assert_eq!(reply.unwrap(), frame, "reply matched to its request");
        answered += 1;
    }
    assert_eq!(answered, 1000);

    // A reply too large for the server's max_frame comes back as BadFrame, not a hang.
    let small = start(
        "small",
        TcpConfig {
            max_frame: 1024,
            ..TcpConfig::default()
        },
    )
    .await;
    let r = a.request(&small.info, b("big"), in_secs(5)).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::BadFrame),
        "{r:?}"
    );
    assert_eq!(
        a.request(&small.info, b("ok"), in_secs(5)).await.unwrap(),
        b("ok")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_and_broadcast() {
    let mut b1 = start("b1", TcpConfig::default()).await;
    let mut b2 = start("b2", TcpConfig::default()).await;
    let a = client();
    a.notify(&b1.info, b("one")).await.unwrap();
    assert_eq!(
        timeout(PROMPT, b1.notes.recv()).await.unwrap().unwrap(),
        b("one")
    );

    let nodes = [b1.info.clone(), b2.info.clone()];
    a.broadcast("room", &nodes, b("all")).await.unwrap();
    assert_eq!(
        timeout(PROMPT, b1.notes.recv()).await.unwrap().unwrap(),
        b("all")
    );
    assert_eq!(
        timeout(PROMPT, b2.notes.recv()).await.unwrap().unwrap(),
        b("all")
    );

    // Serving nodes call each other with their own transports.
    b1.transport.notify(&b2.info, b("peer")).await.unwrap();
    assert_eq!(
        timeout(PROMPT, b2.notes.recv()).await.unwrap().unwrap(),
        b("peer")
    );
    let r = b2.transport.request(&b1.info, b("ping"), in_secs(5)).await;
    assert_eq!(r.unwrap(), b("ping"));

    // Notifies on one link arrive in order.
    for i in 0..100 {
        a.notify(&b2.info, Bytes::from(format!("n{i}")))
            .await
            .unwrap();
    }
    for i in 0..100 {
        let got = timeout(PROMPT, b2.notes.recv()).await.unwrap().unwrap();
        assert_eq!(got, Bytes::from(format!("n{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_times_out_and_late_reply_is_ignored() {
    let mut node = start("b", TcpConfig::default()).await;
    // max_pending 1: if the timed-out request leaked its pending entry, the next call would be
    // refused as Overloaded.
    let a = TcpTransport::new(TcpConfig {
        max_pending: 1,
        ..TcpConfig::default()
    });
    a.request(&node.info, b("warm"), in_secs(5)).await.unwrap();

    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let r = a.request(&node.info, b("slow-1"), started + wait).await;
    let elapsed = started.elapsed();
    assert_eq!(r, Err(TransportError::timeout()));
    assert!(elapsed >= wait, "{elapsed:?}");
    assert!(elapsed < wait + Duration::from_millis(500), "{elapsed:?}");

    // Let the slow handler answer now: the late reply finds nobody and is dropped.
    node.wait_entered(1).await;
    node.gate.notify_waiters();
    let r = a.request(&node.info, b("after"), in_secs(5)).await;
    assert_eq!(r.unwrap(), b("after"), "next request gets its own reply");
    // A deadline already past fails at once.
    let r = a.request(&node.info, b("x"), Instant::now()).await;
    assert_eq!(r, Err(TransportError::timeout()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_shutdown_fails_every_pending_request_at_once() {
    let mut node = start("b", TcpConfig::default()).await;
    let a = client();
    let mut calls = JoinSet::new();
    for i in 0..20 {
        let (a, target) = (a.clone(), node.info.clone());
        calls.spawn(async move {
            a.request(&target, Bytes::from(format!("slow-{i}")), in_secs(30))
                .await
        });
    }
    node.wait_entered(20).await;
    let killed = Instant::now();
    node.shutdown.cancel();
    let mut failed = 0;
    while let Some(r) = timeout(PROMPT, calls.join_next())
        .await
        .expect("no request hangs")
    {
        assert_eq!(r.unwrap(), Err(TransportError::closed("b")));
        failed += 1;
    }
    assert_eq!(failed, 20);
    assert!(
        killed.elapsed() < PROMPT,
        "failed long before the 30 s deadline"
    );
    // The server's handler calls were cancelled with its connections.
    for _ in 0..20 {
        timeout(PROMPT, node.cancelled.recv())
            .await
            .unwrap()
            .unwrap();
    }
    // Nobody listens any more.
    let r = a.request(&node.info, b("x"), in_secs(5)).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::Unreachable),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lost_fails_in_flight_requests_at_once() {
    let mut node = start("b", TcpConfig::default()).await;
    let a = client();
    let mut calls = JoinSet::new();
    for i in 0..5 {
        let (a, target) = (a.clone(), node.info.clone());
        calls.spawn(async move {
            a.request(&target, Bytes::from(format!("slow-{i}")), in_secs(30))
                .await
        });
    }
    node.wait_entered(5).await;
    let lost = Instant::now();
    a.node_lost("b");
    while let Some(r) = timeout(PROMPT, calls.join_next()).await.unwrap() {
        assert_eq!(r.unwrap(), Err(TransportError::closed("b")));
    }
    assert!(lost.elapsed() < PROMPT);
    // The link was closed: the server side sees its handler calls cancelled.
    for _ in 0..5 {
        timeout(PROMPT, node.cancelled.recv())
            .await
            .unwrap()
            .unwrap();
    }
    // The node is reachable again through a fresh link.
    assert_eq!(
        a.request(&node.info, b("again"), in_secs(5)).await.unwrap(),
        b("again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_peer_restarts_on_same_address() {
    let node = start("b", TcpConfig::default()).await;
    let a = client();
    assert_eq!(
        a.request(&node.info, b("1"), in_secs(5)).await.unwrap(),
        b("1")
    );
    let address = node.info.address.clone();
    node.shutdown.cancel();

    // Restart on the same port (the old listener goes away asynchronously).
    let give_up = Instant::now() + Duration::from_secs(5);
    let restarted = loop {
        let config = TcpConfig {
            listen: address.clone(),
            ..TcpConfig::default()
        };
        match try_start("b", config).await {
            Ok(n) => break n,
            Err(e) if Instant::now() < give_up => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("could not restart on {address}: {e}"),
        }
    };
    assert_eq!(restarted.info.address, address);

    let give_up = Instant::now() + Duration::from_secs(5);
    loop {
        match a.request(&restarted.info, b("2"), in_secs(2)).await {
            Ok(reply) => {
                assert_eq!(reply, b("2"));
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    TransportErrorKind::Closed | TransportErrorKind::Unreachable
                ) && Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no reconnect: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_fails_fast_and_backs_off() {
    // A port nobody listens on.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let mut target = NodeInfo::new("gone", "room");
    target.address = addr;
    let a = client();
    let started = Instant::now();
    let r = a.request(&target, b("x"), in_secs(10)).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::Unreachable && e.message() == "gone"),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let r = a.notify(&target, b("x")).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::Unreachable),
        "{r:?}"
    );

    // No address at all.
    let r = a
        .request(&NodeInfo::new("none", "room"), b("x"), in_secs(1))
        .await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::Unreachable),
        "{r:?}"
    );

    // A listener that accepts and hangs up: a burst of calls dials it once (backoff), every call
    // failing fast with the dial's error.
    let hangup = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut target = NodeInfo::new("rude", "room");
    target.address = hangup.local_addr().unwrap().to_string();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((s, _)) = hangup.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    let burst = Instant::now();
    for _ in 0..20 {
        let r = a.request(&target, b("x"), in_secs(5)).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == TransportErrorKind::Unreachable),
            "{r:?}"
        );
    }
    if burst.elapsed() < Duration::from_millis(100) {
        assert_eq!(
            accepts.load(Ordering::SeqCst),
            1,
            "one dial per backoff window"
        );
    }
    acceptor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_malformed_frames_close_only_that_connection() {
    let node = start(
        "b",
        TcpConfig {
            max_frame: 1024,
            ..TcpConfig::default()
        },
    )
    .await;
    let a = client();
    assert_eq!(
        a.request(&node.info, b("before"), in_secs(5))
            .await
            .unwrap(),
        b("before")
    );

    // A length prefix above max_frame (nothing that large is ever sent).
    let mut raw = TcpStream::connect(&node.info.address).await.unwrap();
    raw.write_all(&4096u32.to_be_bytes()).await.unwrap();
    raw.write_all(&[1u8; 64]).await.unwrap();
    assert!(
        disconnected(&mut raw).await,
        "oversized frame closes the connection"
    );

    // A huge prefix.
    let mut raw = TcpStream::connect(&node.info.address).await.unwrap();
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert!(disconnected(&mut raw).await);

    // Shorter than the header; then an unknown kind after a valid hello.
    let mut raw = TcpStream::connect(&node.info.address).await.unwrap();
    raw.write_all(&[0, 0, 0, 3, 1, 2, 3]).await.unwrap();
    assert!(disconnected(&mut raw).await);
    let mut raw = TcpStream::connect(&node.info.address).await.unwrap();
    let mut hello = vec![0, 0, 0, 9, 0];
    hello.extend_from_slice(&1u64.to_be_bytes());
    raw.write_all(&hello).await.unwrap();
    let mut ack = [0u8; 13];
    raw.read_exact(&mut ack).await.unwrap();
    assert_eq!(&ack[..], &hello[..], "hello acknowledged");
    let mut bad = vec![0, 0, 0, 9, 77];
    bad.extend_from_slice(&1u64.to_be_bytes());
    raw.write_all(&bad).await.unwrap();
    assert!(disconnected(&mut raw).await);

    // The existing link and the server are unaffected.
    assert_eq!(
        a.request(&node.info, b("after"), in_secs(5)).await.unwrap(),
        b("after")
    );

    // A request over the server's limit (but within ours) closes our link only: Closed, then the
    // next call redials.
    let r = a
        .request(&node.info, Bytes::from(vec![0u8; 2000]), in_secs(5))
        .await;
    assert_eq!(r, Err(TransportError::closed("b")));
    assert_eq!(
        a.request(&node.info, b("again"), in_secs(5)).await.unwrap(),
        b("again")
    );

    // Over our own limit: refused before sending.
    let small = TcpTransport::new(TcpConfig {
        max_frame: 100,
        ..TcpConfig::default()
    });
    let r = small
        .request(&node.info, Bytes::from(vec![0u8; 100]), in_secs(5))
        .await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::BadFrame),
        "{r:?}"
    );
    let r = small.notify(&node.info, Bytes::from(vec![0u8; 100])).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::BadFrame),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_must_match() {
    let secret = |t: &str| TcpConfig {
        token: Some(t.to_string()),
        ..TcpConfig::default()
    };
    let mut node = start("b", secret("s3cret")).await;

    let good = TcpTransport::new(secret("s3cret"));
    assert_eq!(
        good.request(&node.info, b("hi"), in_secs(5)).await.unwrap(),
        b("hi")
    );
    good.notify(&node.info, b("note")).await.unwrap();
    assert_eq!(
        timeout(PROMPT, node.notes.recv()).await.unwrap().unwrap(),
        b("note")
    );

    let wrong = TcpTransport::new(secret("wrong"));
    let r = wrong.request(&node.info, b("hi"), in_secs(5)).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::Unauthorized),
        "{r:?}"
    );
    let r = wrong.notify(&node.info, b("note")).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::Unauthorized),
        "{r:?}"
    );

    let none = client();
    let r = none.request(&node.info, b("hi"), in_secs(5)).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::Unauthorized),
        "{r:?}"
    );

    // A raw connection that skips the hello is cut off.
    let mut raw = TcpStream::connect(&node.info.address).await.unwrap();
    let mut req = vec![0, 0, 0, 11, 1];
    req.extend_from_slice(&5u64.to_be_bytes());
    req.extend_from_slice(b"hi");
    raw.write_all(&req).await.unwrap();
    assert!(disconnected(&mut raw).await);

    // A node without a token takes connections from nodes that send one.
    let open = start("c", TcpConfig::default()).await;
    assert_eq!(
        good.request(&open.info, b("yo"), in_secs(5)).await.unwrap(),
        b("yo")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_overloads() {
    let mut node = start("b", TcpConfig::default()).await;
    let a = TcpTransport::new(TcpConfig {
        max_pending: 2,
        ..TcpConfig::default()
    });
    let mut calls = JoinSet::new();
    for i in 0..2 {
        let (a, target) = (a.clone(), node.info.clone());
        calls.spawn(async move {
            let frame = Bytes::from(format!("slow-{i}"));
            (frame.clone(), a.request(&target, frame, in_secs(10)).await)
        });
    }
    node.wait_entered(2).await;
    let r = a.request(&node.info, b("third"), in_secs(5)).await;
    assert_eq!(r, Err(TransportError::overloaded("b")));
    node.gate.notify_waiters();
    while let Some(joined) = calls.join_next().await {
        let (frame, reply) = joined.unwrap();
        assert_eq!(reply.unwrap(), frame);
    }
    assert_eq!(
        a.request(&node.info, b("fourth"), in_secs(5))
            .await
            .unwrap(),
        b("fourth")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_transport_closes_its_links() {
    let mut node = start("b", TcpConfig::default()).await;
    let a = client();
    let call = tokio::spawn({
        let (a, target) = (a.clone(), node.info.clone());
        async move { a.request(&target, b("slow"), in_secs(30)).await }
    });
    node.wait_entered(1).await;
    call.abort();
    let _ = call.await;
    drop(a);
    // The connection closed, so the server cancelled the handler call.
    let cancelled = timeout(PROMPT, node.cancelled.recv()).await.unwrap();
    assert_eq!(cancelled.unwrap(), b("slow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_a_new_address_gets_a_fresh_link_and_the_old_one_closes() {
    let mut old = start("b", TcpConfig::default()).await;
    let a = client();
    let mut calls = JoinSet::new();
    for i in 0..3 {
        let (a, target) = (a.clone(), old.info.clone());
        calls.spawn(async move {
            a.request(&target, Bytes::from(format!("slow-{i}")), in_secs(30))
                .await
        });
    }
    old.wait_entered(3).await;

    // The same node id now at another address (a restart elsewhere, as discovery reports it).
    let moved = start("b", TcpConfig::default()).await;
    assert_ne!(moved.info.address, old.info.address);
    assert_eq!(
        a.request(&moved.info, b("here"), in_secs(5)).await.unwrap(),
        b("here")
    );
    // The link to the old address closed: its calls failed, and its server saw them cancelled.
    while let Some(r) = timeout(PROMPT, calls.join_next()).await.unwrap() {
        assert_eq!(r.unwrap(), Err(TransportError::closed("b")));
    }
    for _ in 0..3 {
        timeout(PROMPT, old.cancelled.recv())
            .await
            .unwrap()
            .unwrap();
    }
}

/// A node that cannot listen (its address is taken) says so about its own address, not as a
/// peer being unreachable.
#[tokio::test]
async fn a_taken_listen_address_is_a_listen_error() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let t = TcpTransport::new(TcpConfig {
        listen: addr.clone(),
        ..TcpConfig::default()
    });
    let (entered, _) = mpsc::unbounded_channel();
    let (cancelled, _) = mpsc::unbounded_channel();
    let (notes, _) = mpsc::unbounded_channel();
    let handler = Arc::new(TestHandler {
        gate: Arc::new(Notify::new()),
        entered,
        cancelled,
        notes,
    });
    let r = t
        .serve(
            &NodeInfo::new("a", "room"),
            handler,
            CancellationToken::new(),
        )
        .await;
    match r {
        Err(e) if e.kind() == TransportErrorKind::Listen => assert_eq!(e.message(), addr),
        other => panic!("expected a listen error, got {other:?}"),
    }
}

/// Certificates for mutual TLS, made at run time: a cluster CA, nodes it signs (for 127.0.0.1),
/// and a node of another CA.
struct Pki {
    dir: std::path::PathBuf,
    cas: std::collections::HashMap<&'static str, rookery_testkit::certs::Ca>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rookery-mtls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cas = ["ca", "other-ca"]
            .into_iter()
            .map(|ca| (ca, rookery_testkit::certs::Ca::new(&dir, ca)))
            .collect();
        Self { dir, cas }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// A node certificate signed by the CA `ca`, and the transport config that uses it (and
    /// trusts that CA).
    fn node(&self, name: &str, ca: &str) -> TcpConfig {
        let ca = &self.cas[ca];
        let (cert, key) = ca.issue(&self.dir, name);
        let text = |p: &std::path::Path| p.to_string_lossy().into_owned();
        TcpConfig {
            tls: Some(TcpTlsConfig {
                cert: text(&cert),
                key: text(&key),
                ca: text(ca.pem()),
            }),
            ..TcpConfig::default()
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// With `tls`, only nodes showing a certificate of the cluster's CA get through: a node of
/// the cluster calls and notifies; a node without TLS, or with another CA's certificate, is
/// refused; a transport whose files do not load serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_only_the_clusters_nodes_in() {
    let pki = Pki::new("only");
    let mut node = start("b", pki.node("b", "ca")).await;

    let member = TcpTransport::new(pki.node("a", "ca"));
    assert_eq!(
        member
            .request(&node.info, b("hi"), in_secs(5))
            .await
            .unwrap(),
        b("hi")
    );
    member.notify(&node.info, b("note")).await.unwrap();
    assert_eq!(
        timeout(PROMPT, node.notes.recv()).await.unwrap().unwrap(),
        b("note")
    );

    let plain = client();
    assert!(plain
        .request(&node.info, b("hi"), in_secs(5))
        .await
        .is_err());

    let stranger = TcpTransport::new(pki.node("x", "other-ca"));
    let r = stranger.request(&node.info, b("hi"), in_secs(5)).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == TransportErrorKind::Unauthorized),
        "{r:?}"
    );

    let broken = TcpConfig {
        tls: Some(TcpTlsConfig {
            cert: pki.path("missing.pem"),
            key: pki.path("missing.key"),
            ca: pki.path("ca.pem"),
        }),
        ..TcpConfig::default()
    };
    let e = try_start("c", broken).await.err().expect("refused");
    assert!(e.to_string().contains("missing.pem"), "{e}");
}
