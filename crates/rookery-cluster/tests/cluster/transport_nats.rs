//! The NATS transport against a real `nats-server`: request/reply, notify, broadcast, deadlines,
//! no responders, lost nodes, back-pressure, shutdown, server restarts and authentication.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rookery_cluster::transport::nats::{NatsConfig, NatsTransport};
use rookery_cluster::{FrameHandler, NodeInfo, Transport, TransportError, TransportErrorKind};
use rookery_testkit::Nats;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Echoes requests as `{tag}:{frame}` and forwards notifies into a channel. Requests whose frame
/// starts with `slow` first report that they started, then wait for `gate` (or for their task to
/// be dropped, which they report too).
struct TestHandler {
    tag: &'static str,
    notes: mpsc::UnboundedSender<Bytes>,
    started: mpsc::UnboundedSender<()>,
    dropped: mpsc::UnboundedSender<()>,
    gate: Arc<Notify>,
}

/// The receiving ends of a [`TestHandler`].
struct Probe {
    notes: mpsc::UnboundedReceiver<Bytes>,
    started: mpsc::UnboundedReceiver<()>,
    dropped: mpsc::UnboundedReceiver<()>,
    gate: Arc<Notify>,
}

fn handler(tag: &'static str) -> (Arc<TestHandler>, Probe) {
    let (notes_tx, notes) = mpsc::unbounded_channel();
    let (started_tx, started) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let gate = Arc::new(Notify::new());
    let h = TestHandler {
        tag,
        notes: notes_tx,
        started: started_tx,
        dropped: dropped_tx,
        gate: gate.clone(),
    };
    (
        Arc::new(h),
        Probe {
            notes,
            started,
            dropped,
            gate,
        },
    )
}

/// Sends `()` on a channel when dropped.
struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[async_trait::async_trait]
impl FrameHandler for TestHandler {
    async fn request(&self, frame: Bytes) -> Bytes {
        if frame.starts_with(b"slow") {
            let _signal = DropSignal(self.dropped.clone());
            // Registered before `started` is reported: a `notify_waiters` the test sends as soon
            // as it hears of the start must not be missed.
            let released = self.gate.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let _ = self.started.send(());
            released.await;
        }
        let mut out = format!("{}:", self.tag).into_bytes();
        out.extend_from_slice(&frame);
        Bytes::from(out)
    }

    async fn notify(&self, frame: Bytes) {
        let _ = self.notes.send(frame);
    }
}

const WAIT: Duration = Duration::from_secs(5);

fn config(url: String) -> NatsConfig {
    NatsConfig {
        url,
        ..NatsConfig::default()
    }
}

async fn connect(url: String) -> Arc<NatsTransport> {
    Arc::new(NatsTransport::connect(config(url)).await.expect("connect"))
}

/// Starts serving `node` on `t`; returns the probe and the shutdown token.
async fn serve(
    t: &NatsTransport,
    node: &NodeInfo,
    tag: &'static str,
) -> (Probe, CancellationToken) {
    let (h, probe) = handler(tag);
    let shutdown = CancellationToken::new();
    let addr = t.serve(node, h, shutdown.clone()).await.expect("serve");
    assert_eq!(addr, "");
    (probe, shutdown)
}

fn in_secs(s: f64) -> Instant {
    Instant::now() + Duration::from_secs_f64(s)
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("event in time")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_and_notify() {
    let nats = Nats::start().expect("nats-server");
    let a = connect(nats.url()).await;
    let b = connect(nats.url()).await;
    // Subject-unsafe characters in the id are sanitised.
    let node_a = NodeInfo::new("gate.1 *>", "gate");
    let (mut probe, _shutdown) = serve(&a, &node_a, "A").await;

    let reply = b
        .request(&node_a, Bytes::from_static(b"hello"), in_secs(2.0))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"A:hello");

    // Several requests in flight at once are answered independently.
    let calls = (0..20).map(|i| {
        let (b, node_a) = (b.clone(), node_a.clone());
        async move {
            let r = b
                .request(&node_a, Bytes::from(format!("m{i}")), in_secs(2.0))
                .await
                .unwrap();
            assert_eq!(r, Bytes::from(format!("A:m{i}")));
        }
    });
    futures_util::future::join_all(calls).await;

    b.notify(&node_a, Bytes::from_static(b"one-way"))
        .await
        .unwrap();
    assert_eq!(&recv(&mut probe.notes).await[..], b"one-way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_node_of_the_type_only() {
    let nats = Nats::start().expect("nats-server");
    let (r1, r2, c1, sender) = (
        connect(nats.url()).await,
        connect(nats.url()).await,
        connect(nats.url()).await,
        connect(nats.url()).await,
    );
    let room1 = NodeInfo::new("room-1", "room");
    let room2 = NodeInfo::new("room-2", "room");
    let chat1 = NodeInfo::new("chat-1", "chat");
    let (mut p1, _s1) = serve(&r1, &room1, "r1").await;
    let (mut p2, _s2) = serve(&r2, &room2, "r2").await;
    let (mut p3, _s3) = serve(&c1, &chat1, "c1").await;

    sender
        .broadcast(
            "room",
            &[room1.clone(), room2.clone()],
            Bytes::from_static(b"to rooms"),
        )
        .await
        .unwrap();
    // Published after the first one on the same connection, so the chat node sees it first
    // only if the room broadcast did not reach it.
    sender
        .broadcast(
            "chat",
            std::slice::from_ref(&chat1),
            Bytes::from_static(b"to chats"),
        )
        .await
        .unwrap();

    assert_eq!(&recv(&mut p1.notes).await[..], b"to rooms");
    assert_eq!(&recv(&mut p2.notes).await[..], b"to rooms");
    assert_eq!(&recv(&mut p3.notes).await[..], b"to chats");
    // Each room node got exactly one frame: a notify sent now is the next thing they see.
    sender
        .notify(&room1, Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(&recv(&mut p1.notes).await[..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_times_out_at_the_deadline() {
    let nats = Nats::start().expect("nats-server");
    let a = connect(nats.url()).await;
    let b = connect(nats.url()).await;
    let node = NodeInfo::new("slow-1", "room");
    let (probe, _shutdown) = serve(&a, &node, "A").await;

    let deadline = Duration::from_millis(500);
    let start = Instant::now();
    let r = b
        .request(&node, Bytes::from_static(b"slow"), start + deadline)
        .await;
    let elapsed = start.elapsed();
    assert_eq!(r, Err(TransportError::timeout()));
    assert!(
        elapsed >= deadline - Duration::from_millis(20),
        "{elapsed:?}"
    );
    assert!(elapsed < deadline + Duration::from_secs(1), "{elapsed:?}");

    // A deadline already passed fails without sending anything.
    let r = b
        .request(&node, Bytes::from_static(b"x"), Instant::now())
        .await;
    assert_eq!(r, Err(TransportError::timeout()));
    probe.gate.notify_waiters();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_responders_is_unreachable_at_once() {
    let nats = Nats::start().expect("nats-server");
    let b = connect(nats.url()).await;
    let nobody = NodeInfo::new("ghost-1", "room");
    let start = Instant::now();
    let r = b
        .request(&nobody, Bytes::from_static(b"hi"), in_secs(5.0))
        .await;
    let elapsed = start.elapsed();
    match r {
        Err(e) if e.kind() == TransportErrorKind::Unreachable => assert_eq!(e.message(), "ghost-1"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lost_fails_in_flight_requests_at_once() {
    let nats = Nats::start().expect("nats-server");
    let a = connect(nats.url()).await;
    let b = connect(nats.url()).await;
    let node = NodeInfo::new("room-7", "room");
    let (mut probe, _shutdown) = serve(&a, &node, "A").await;

    let call = {
        let (b, node) = (b.clone(), node.clone());
        tokio::spawn(async move {
            b.request(&node, Bytes::from_static(b"slow"), in_secs(10.0))
                .await
        })
    };
    recv(&mut probe.started).await;
    let lost_at = Instant::now();
    b.node_lost("room-7");
    let r = tokio::time::timeout(WAIT, call)
        .await
        .expect("request ends")
        .unwrap();
    assert_eq!(r, Err(TransportError::closed("room-7")));
    assert!(lost_at.elapsed() < Duration::from_millis(500));

    // The node may come back: later requests use a fresh token.
    let r = b
        .request(&node, Bytes::from_static(b"again"), in_secs(2.0))
        .await
        .unwrap();
    assert_eq!(&r[..], b"A:again");
    probe.gate.notify_waiters();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_per_node_gives_overloaded() {
    let nats = Nats::start().expect("nats-server");
    let a = connect(nats.url()).await;
    let b = Arc::new(
        NatsTransport::connect(NatsConfig {
            max_pending: 2,
            ..config(nats.url())
        })
        .await
        .unwrap(),
    );
    let busy = NodeInfo::new("busy-1", "room");
    let other = NodeInfo::new("other-1", "room");
    let (mut probe, _s1) = serve(&a, &busy, "A").await;
    let (_probe_other, _s2) = serve(&a, &other, "O").await;

    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (b, busy) = (b.clone(), busy.clone());
            tokio::spawn(async move {
                b.request(&busy, Bytes::from_static(b"slow"), in_secs(10.0))
                    .await
            })
        })
        .collect();
    recv(&mut probe.started).await;
    recv(&mut probe.started).await;

    let r = b
        .request(&busy, Bytes::from_static(b"x"), in_secs(2.0))
        .await;
    assert_eq!(r, Err(TransportError::overloaded("busy-1")));
    // The limit is per target node.
    let r = b
        .request(&other, Bytes::from_static(b"x"), in_secs(2.0))
        .await
        .unwrap();
    assert_eq!(&r[..], b"O:x");

    probe.gate.notify_waiters();
    for c in calls {
        assert_eq!(&c.await.unwrap().unwrap()[..], b"A:slow");
    }
    let r = b
        .request(&busy, Bytes::from_static(b"y"), in_secs(2.0))
        .await
        .unwrap();
    assert_eq!(&r[..], b"A:y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_handler_tasks_and_unsubscribes() {
    let nats = Nats::start().expect("nats-server");
    let a = connect(nats.url()).await;
    let b = connect(nats.url()).await;
    let node = NodeInfo::new("room-9", "room");
    let (mut probe, shutdown) = serve(&a, &node, "A").await;

    let call = {
        let (b, node) = (b.clone(), node.clone());
        tokio::spawn(async move {
            b.request(&node, Bytes::from_static(b"slow"), in_secs(1.0))
                .await
        })
    };
    recv(&mut probe.started).await;
    shutdown.cancel();
    // The handler task in flight is dropped with the shutdown.
    recv(&mut probe.dropped).await;
    assert_eq!(call.await.unwrap(), Err(TransportError::timeout()));

    // Once the unsubscription reaches the server, nobody answers for the node any more.
    let give_up = Instant::now() + WAIT;
    loop {
        match b
            .request(&node, Bytes::from_static(b"x"), in_secs(1.0))
            .await
        {
            Err(e) if e.kind() == TransportErrorKind::Unreachable => break,
            other => assert!(Instant::now() < give_up, "still served: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_again_after_nats_server_restart() {
    let mut nats = Nats::start().expect("nats-server");
    let a = connect(nats.url()).await;
    let b = connect(nats.url()).await;
    let node = NodeInfo::new("room-1", "room");
    let (mut probe, _shutdown) = serve(&a, &node, "A").await;
    let r = b
        .request(&node, Bytes::from_static(b"before"), in_secs(2.0))
        .await
        .unwrap();
    assert_eq!(&r[..], b"A:before");

    nats.stop();
    let deadline = Duration::from_secs(1);
    let start = Instant::now();
    let r = b
        .request(&node, Bytes::from_static(b"down"), start + deadline)
        .await;
    assert!(r.is_err(), "{r:?}");
    assert!(start.elapsed() < deadline + Duration::from_millis(500));

    nats.restart().expect("nats-server restarts");
    // Await the reconnection (both clients, and A's re-subscription) by retrying.
    let give_up = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        match b
            .request(&node, Bytes::from_static(b"after"), in_secs(1.0))
            .await
        {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < give_up, "not back in time: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(&reply[..], b"A:after");
    assert!(a.is_connected() && b.is_connected());

    // One-way frames and broadcasts flow again too.
    b.notify(&node, Bytes::from_static(b"note")).await.unwrap();
    assert_eq!(&recv(&mut probe.notes).await[..], b"note");
    b.broadcast("room", &[], Bytes::from_static(b"all"))
        .await
        .unwrap();
    assert_eq!(&recv(&mut probe.notes).await[..], b"all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_auth() {
    let nats = Nats::start_with_args(&["--user", "u", "--pass", "p"]).expect("nats-server");
    let with = |user: Option<&str>, password: Option<&str>| NatsConfig {
        user: user.map(str::to_string),
        password: password.map(str::to_string),
        ..config(nats.url())
    };

    let a = NatsTransport::connect(with(Some("u"), Some("p")))
        .await
        .expect("right credentials");
    let b = NatsTransport::connect(with(Some("u"), Some("p")))
        .await
        .expect("right credentials");
    let node = NodeInfo::new("auth-1", "room");
    let (_probe, _shutdown) = serve(&a, &node, "A").await;
    let r = b
        .request(&node, Bytes::from_static(b"hi"), in_secs(2.0))
        .await
        .unwrap();
    assert_eq!(&r[..], b"A:hi");

    let start = Instant::now();
    match NatsTransport::connect(with(Some("u"), Some("wrong"))).await {
        Err(e) if e.kind() == TransportErrorKind::Unauthorized => {
            assert!(!e.message().contains("wrong"), "{e}")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    match NatsTransport::connect(with(None, None)).await {
        Err(e) if e.kind() == TransportErrorKind::Unauthorized => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}
