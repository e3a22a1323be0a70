//! The etcd discovery back end against a real etcd (started by `rookery-testkit`): registration,
//! updates, deregistration, lease expiry, etcd restarts and outages, lease loss and
//! re-registration, unreachable etcd, credentials, and foreign values under the prefix.
//!
//! Every test has its own etcd. Events are awaited with deadlines; the only plain sleeps are where
//! time itself is the subject (an outage that must outlast the lease TTL), and say so.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rookery_cluster::discovery::etcd::{EtcdConfig, EtcdDiscovery};
use rookery_cluster::{Discovery, DiscoveryErrorKind, DiscoveryEvent, NodeInfo};
use rookery_testkit::Etcd;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::task::AbortHandle;

const PREFIX: &str = "/test/nodes/";

fn config(endpoint: &str, ttl: u64) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        prefix: PREFIX.to_string(),
        ttl,
        connect_timeout: 3.0,
        ..EtcdConfig::default()
    }
}

async fn connect(endpoint: &str, ttl: u64) -> EtcdDiscovery {
    EtcdDiscovery::connect(config(endpoint, ttl))
        .await
        .expect("connects to etcd")
}

fn node(id: &str, weight: u32) -> NodeInfo {
    let mut n = NodeInfo::new(id, "room");
    n.address = format!("127.0.0.1:{}", 7000 + weight);
    n.weight = weight;
    n
}

fn start_etcd() -> Etcd {
    Etcd::start().expect("etcd starts (apt-get install etcd-server)")
}

/// The next event, within `within`.
async fn next(rx: &mut Receiver<DiscoveryEvent>, within: Duration) -> DiscoveryEvent {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("event channel closed"),
        Err(_) => panic!("no discovery event within {within:?}"),
    }
}

/// The next `n` events, sorted by node id (a snapshot's order is not part of the contract).
async fn next_n(
    rx: &mut Receiver<DiscoveryEvent>,
    n: usize,
    within: Duration,
) -> Vec<DiscoveryEvent> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(next(rx, within).await);
    }
    v.sort_by_key(|e| id_of(e).to_string());
    v
}

fn id_of(e: &DiscoveryEvent) -> &str {
    match e {
        DiscoveryEvent::Added(n) | DiscoveryEvent::Updated(n) => &n.id,
        DiscoveryEvent::Removed(id) => id,
    }
}

/// Applies events to a membership map; panics on an event inconsistent with it (a duplicate
/// `Added`, an `Updated`/`Removed` of an unknown node, an `Updated` that changes nothing).
fn apply(members: &mut BTreeMap<String, NodeInfo>, e: DiscoveryEvent) {
    match e {
        DiscoveryEvent::Added(n) => {
            let id = n.id.clone();
            assert!(
                members.insert(id.clone(), n).is_none(),
                "duplicate Added({id})"
            );
        }
        DiscoveryEvent::Updated(n) => {
            let id = n.id.clone();
            let old = members.insert(id.clone(), n.clone());
            assert!(old.is_some(), "Updated({id}) of an unknown node");
            assert_ne!(old.as_ref(), Some(&n), "Updated({id}) without a change");
        }
        DiscoveryEvent::Removed(id) => {
            assert!(
                members.remove(&id).is_some(),
                "Removed({id}) of an unknown node"
            );
        }
    }
}

/// Applies events until `done(members)` holds, within `within`; returns the membership.
async fn until(
    rx: &mut Receiver<DiscoveryEvent>,
    members: &mut BTreeMap<String, NodeInfo>,
    within: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<String, NodeInfo>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(members) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => apply(members, e),
            Ok(None) => panic!("event channel closed while waiting for {what}"),
            Err(_) => panic!("not {what} within {within:?}; members: {members:?}"),
        }
    }
}

async fn raw_client(etcd: &Etcd) -> rookery_etcd::Client {
    rookery_etcd::Client::connect(&[etcd.endpoint()], Default::default())
        .await
        .expect("raw etcd client")
}

/// The lease a key is attached to.
async fn lease_of(etcd: &Etcd, key: &str) -> i64 {
    raw_client(etcd).await.get(key).await.unwrap().kvs[0].lease
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_update_deregister_and_expiry() {
    let etcd = start_etcd();
    let ttl = 2;
    let a = connect(&etcd.endpoint(), ttl).await;
    let b = connect(&etcd.endpoint(), ttl).await;
    let w = connect(&etcd.endpoint(), ttl).await;
    a.register(&node("a", 10)).await.unwrap();
    b.register(&node("b", 20)).await.unwrap();

    // Snapshot: both nodes, to each of two independent watchers.
    let mut rx = w.watch().await.unwrap();
    let mut rx2 = w.watch().await.unwrap();
    let snapshot = vec![
        DiscoveryEvent::Added(node("a", 10)),
        DiscoveryEvent::Added(node("b", 20)),
    ];
    assert_eq!(next_n(&mut rx, 2, Duration::from_secs(5)).await, snapshot);
    assert_eq!(next_n(&mut rx2, 2, Duration::from_secs(5)).await, snapshot);
    drop(rx2);

    // Update: a weight change is reported; republishing identical info is not (the next event
    // on the channel is the one after it).
    a.update(&node("a", 7)).await.unwrap();
    let e = next(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(e, DiscoveryEvent::Updated(node("a", 7)));
    a.update(&node("a", 7)).await.unwrap();
    // register() again with the same id is an update.
    a.register(&node("a", 8)).await.unwrap();
    let e = next(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(e, DiscoveryEvent::Updated(node("a", 8)));
    // Another id while registered is refused.
    assert!(matches!(
        a.update(&node("other", 1)).await,
        Err(e) if e.kind() == DiscoveryErrorKind::Config
    ));

    // Deregister revokes the lease: the node goes at once, well before the TTL.
    let t = Instant::now();
    a.deregister().await.unwrap();
    let e = next(&mut rx, Duration::from_secs(ttl)).await;
    assert_eq!(e, DiscoveryEvent::Removed("a".into()));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "prompt removal, took {:?}",
        t.elapsed()
    );
    a.deregister().await.expect("deregister is idempotent");

    // A node whose keepalive stops without a revoke (killed process) expires after the TTL.
    let t = Instant::now();
    b.close();
    let e = next(&mut rx, Duration::from_secs(ttl + 3)).await;
    assert_eq!(e, DiscoveryEvent::Removed("b".into()));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "removed by expiry, not revoke: {took:?}"
    );
    assert!(
        took <= Duration::from_secs(ttl + 2),
        "expiry within TTL + slack: {took:?}"
    );
    assert!(
        b.register(&node("b", 20)).await.is_err(),
        "closed back end refuses"
    );

    // Closing the watcher's back end closes its channel.
    w.close();
    let end = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert_eq!(end.expect("channel closes promptly"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_resync_after_etcd_restart() {
    let mut etcd = start_etcd();
    let ttl = 3;
    let a = connect(&etcd.endpoint(), ttl).await;
    let w = connect(&etcd.endpoint(), ttl).await;
    a.register(&node("a", 1)).await.unwrap();
    let mut rx = w.watch().await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        DiscoveryEvent::Added(node("a", 1))
    );

    etcd.stop();
    etcd.restart().expect("etcd restarts");

    // A node registered after the restart is seen; `a` is not reported again (the resync diff is
    // empty for it). The update after it is a marker: every resync event precedes it.
    let b = connect(&etcd.endpoint(), ttl).await;
    b.register(&node("b", 2)).await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(10)).await,
        DiscoveryEvent::Added(node("b", 2))
    );
    b.update(&node("b", 3)).await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        DiscoveryEvent::Updated(node("b", 3))
    );

    // Both are present in a fresh snapshot.
    let mut fresh = w.watch().await.unwrap();
    assert_eq!(
        next_n(&mut fresh, 2, Duration::from_secs(5)).await,
        vec![
            DiscoveryEvent::Added(node("a", 1)),
            DiscoveryEvent::Added(node("b", 3)),
        ]
    );

    // Dropping the back end closes the watchers.
    drop(w);
    let end = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert_eq!(end.expect("channel closes promptly"), None);
}

/// R4: etcd down for longer than twice the TTL. The node must end up registered again without
/// any help, whether its old lease survived (etcd renews leases when it elects itself leader) or
/// expired (then it grants a new one and puts itself again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_is_registered_again_after_long_etcd_outage() {
    let mut etcd = start_etcd();
    let ttl = 2;
    let a = connect(&etcd.endpoint(), ttl).await;
    let w = connect(&etcd.endpoint(), ttl).await;
    a.register(&node("a", 1)).await.unwrap();
    let mut rx = w.watch().await.unwrap();
    let mut members = BTreeMap::new();
    until(
        &mut rx,
        &mut members,
        Duration::from_secs(5),
        "a listed",
        |m| m.contains_key("a"),
    )
    .await;

    etcd.stop();
    // Time is the subject here: the outage must outlast 2 x TTL.
    tokio::time::sleep(Duration::from_secs(2 * ttl + 1)).await;
    etcd.restart().expect("etcd restarts");

    // Wait past one more TTL after the restart: had the node not resumed keepalives (or not
    // re-registered), its key would be gone by then. Events are applied as they come; any
    // Removed/Added pair must be consistent.
    let settle = Duration::from_secs(ttl + 2);
    let _ = tokio::time::timeout(settle, async {
        while let Some(e) = rx.recv().await {
            apply(&mut members, e);
        }
    })
    .await;
    until(
        &mut rx,
        &mut members,
        Duration::from_secs(5),
        "a listed again",
        |m| m.get("a") == Some(&node("a", 1)),
    )
    .await;
    let mut fresh = w.watch().await.unwrap();
    assert_eq!(
        next(&mut fresh, Duration::from_secs(5)).await,
        DiscoveryEvent::Added(node("a", 1))
    );
    // The key is attached to a live lease.
    let raw = raw_client(&etcd).await;
    let lease = lease_of(&etcd, &format!("{PREFIX}a")).await;
    let ttl_left = raw.lease_time_to_live(lease).await.unwrap();
    assert!(ttl_left > 0, "lease {lease} alive, ttl {ttl_left}");
}

/// A TCP proxy in front of etcd that can cut the node off (drop its connections, refuse new
/// ones) while etcd itself stays up, so the lease really expires.
struct Proxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let blocked = blocked.clone();
            let conns = conns.clone();
            async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    if blocked.load(Ordering::SeqCst) {
                        drop(down);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut up) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            }
        })
        .abort_handle();
        Self {
            addr,
            blocked,
            conns,
            accept,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn block(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn unblock(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.block();
    }
}

fn socket_addr(endpoint: &str) -> SocketAddr {
    endpoint.trim_start_matches("http://").parse().unwrap()
}

/// R4, the hard way: the node cannot reach etcd for longer than 2 x TTL while etcd stays up, so
/// its lease expires and everyone sees it leave. When it can reach etcd again it grants a new
/// lease and puts itself again, with the info of its latest update (made during the outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_during_partition_is_replaced_with_latest_info() {
    let etcd = start_etcd();
    let ttl = 2;
    let proxy = Proxy::start(socket_addr(&etcd.endpoint())).await;
    let a = Arc::new(connect(&proxy.endpoint(), ttl).await);
    let w = connect(&etcd.endpoint(), ttl).await;
    a.register(&node("a", 1)).await.unwrap();
    let lease_before = lease_of(&etcd, &format!("{PREFIX}a")).await;
    let mut rx = w.watch().await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        DiscoveryEvent::Added(node("a", 1))
    );

    let cut = Instant::now();
    proxy.block();
    // The update cannot reach etcd now; it is kept and published once etcd is reachable.
    let updater = tokio::spawn({
        let a = a.clone();
        async move { a.update(&node("a", 9)).await }
    });
    // The lease expires: the node leaves (TTL plus etcd's expiry check interval and slack).
    assert_eq!(
        next(&mut rx, Duration::from_secs(ttl + 3)).await,
        DiscoveryEvent::Removed("a".into())
    );
    // Time is the subject: keep the node cut off for more than 2 x TTL in all.
    let outage = Duration::from_secs(2 * ttl + 1);
    tokio::time::sleep(outage.saturating_sub(cut.elapsed())).await;
    proxy.unblock();

    // Back within the backoff cap (2 s + jitter) plus a keepalive/put round.
    assert_eq!(
        next(&mut rx, Duration::from_secs(6)).await,
        DiscoveryEvent::Added(node("a", 9))
    );
    // The update either saw etcd again in time or timed out; either way its info is what got
    // published (checked above).
    let _ = updater.await.unwrap();
    let lease_after = lease_of(&etcd, &format!("{PREFIX}a")).await;
    assert_ne!(lease_before, lease_after, "a new lease was granted");

    // And it is kept alive: time is the subject again; nothing happens to it for longer than
    // a TTL (with a dead keepalive the key would expire within that window).
    let quiet = tokio::time::timeout(Duration::from_secs(ttl + 1), rx.recv()).await;
    assert!(
        quiet.is_err(),
        "no event while the node keeps its new lease: {quiet:?}"
    );
    let mut fresh = w.watch().await.unwrap();
    assert_eq!(
        next(&mut fresh, Duration::from_secs(5)).await,
        DiscoveryEvent::Added(node("a", 9))
    );
    a.deregister().await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(2)).await,
        DiscoveryEvent::Removed("a".into())
    );
}

/// A watcher cut off from etcd while the membership changes and the history it missed is
/// compacted: when it gets through again it reports exactly the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_watcher_resyncs_the_difference() {
    let etcd = start_etcd();
    let ttl = 3;
    let proxy = Proxy::start(socket_addr(&etcd.endpoint())).await;
    let w = connect(&proxy.endpoint(), ttl).await;
    let a = connect(&etcd.endpoint(), ttl).await;
    let b = connect(&etcd.endpoint(), ttl).await;
    let c = connect(&etcd.endpoint(), ttl).await;
    let d = connect(&etcd.endpoint(), ttl).await;
    a.register(&node("a", 1)).await.unwrap();
    b.register(&node("b", 2)).await.unwrap();
    c.register(&node("c", 3)).await.unwrap();
    let mut rx = w.watch().await.unwrap();
    let mut members = BTreeMap::new();
    for e in next_n(&mut rx, 3, Duration::from_secs(5)).await {
        apply(&mut members, e);
    }

    proxy.block();
    a.update(&node("a", 10)).await.unwrap();
    b.deregister().await.unwrap();
    d.register(&node("d", 4)).await.unwrap();
    let raw = raw_client(&etcd).await;
    let revision = raw.get("x").await.unwrap().header.unwrap().revision;
    raw.kv_client()
        .compact(rookery_etcd::pb::etcdserverpb::CompactionRequest {
            revision,
            physical: false,
        })
        .await
        .unwrap();
    proxy.unblock();

    // The three differences, in any order, then the marker (a change made afterwards).
    let mut diff = next_n(&mut rx, 3, Duration::from_secs(6)).await;
    diff.sort_by_key(|e| format!("{e:?}"));
    let mut want = vec![
        DiscoveryEvent::Updated(node("a", 10)),
        DiscoveryEvent::Removed("b".into()),
        DiscoveryEvent::Added(node("d", 4)),
    ];
    want.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(diff, want);
    for e in diff {
        apply(&mut members, e);
    }
    c.update(&node("c", 30)).await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        DiscoveryEvent::Updated(node("c", 30))
    );
    assert_eq!(
        members.keys().collect::<Vec<_>>(),
        ["a", "c", "d"],
        "membership after the resync"
    );
}

/// A lease revoked behind the node's back (an operator, or etcd losing it) is replaced at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_lease_is_replaced() {
    let etcd = start_etcd();
    let ttl = 3;
    let a = connect(&etcd.endpoint(), ttl).await;
    let w = connect(&etcd.endpoint(), ttl).await;
    a.register(&node("a", 1)).await.unwrap();
    let mut rx = w.watch().await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        DiscoveryEvent::Added(node("a", 1))
    );
    let lease = lease_of(&etcd, &format!("{PREFIX}a")).await;
    raw_client(&etcd).await.lease_revoke(lease).await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(2)).await,
        DiscoveryEvent::Removed("a".into())
    );
    // Noticed at the next keepalive (TTL/3), then a new lease and put.
    assert_eq!(
        next(&mut rx, Duration::from_secs(ttl + 2)).await,
        DiscoveryEvent::Added(node("a", 1))
    );
}

#[tokio::test]
async fn unreachable_etcd_fails_within_the_timeout() {
    // A port bound but not listening: connections to it are refused, and no other test can
    // take it meanwhile (a port merely picked as free could be bound by a concurrent test).
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = held.local_addr().unwrap().port();
    let cfg = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        connect_timeout: 1.0,
        ..EtcdConfig::default()
    };
    let t = Instant::now();
    let r = EtcdDiscovery::connect(cfg).await;
    let took = t.elapsed();
    assert!(
        matches!(&r, Err(e) if e.kind() == DiscoveryErrorKind::Unavailable),
        "{r:?}"
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");

    // Something listens but never answers: the deadline applies.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = EtcdConfig {
        endpoints: vec![format!("http://{}", mute.local_addr().unwrap())],
        connect_timeout: 1.0,
        ..EtcdConfig::default()
    };
    let t = Instant::now();
    let r = EtcdDiscovery::connect(cfg).await;
    let took = t.elapsed();
    assert!(
        matches!(&r, Err(e) if e.kind() == DiscoveryErrorKind::Unavailable),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "took {took:?}"
    );

    let r = EtcdDiscovery::connect(EtcdConfig {
        ttl: 1,
        ..EtcdConfig::default()
    })
    .await;
    assert!(
        matches!(&r, Err(e) if e.kind() == DiscoveryErrorKind::Config),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_are_not_nodes_are_skipped() {
    let etcd = start_etcd();
    let raw = raw_client(&etcd).await;
    raw.put(format!("{PREFIX}junk"), "not json", 0)
        .await
        .unwrap();
    raw.put(
        format!("{PREFIX}liar"),
        r#"{"id":"someone-else","type":"room"}"#,
        0,
    )
    .await
    .unwrap();
    let a = connect(&etcd.endpoint(), 3).await;
    a.register(&node("a", 1)).await.unwrap();
    let w = connect(&etcd.endpoint(), 3).await;
    let mut rx = w.watch().await.unwrap();
    // Only the real node in the snapshot.
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        DiscoveryEvent::Added(node("a", 1))
    );
    // Garbage put while watching is skipped, and the watcher keeps working.
    raw.put(format!("{PREFIX}junk2"), "{", 0).await.unwrap();
    raw.put(format!("{PREFIX}junk"), vec![0xff, 0xfe], 0)
        .await
        .unwrap();
    let b = connect(&etcd.endpoint(), 3).await;
    b.register(&node("b", 2)).await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        DiscoveryEvent::Added(node("b", 2))
    );
    // Deleting garbage is no event either.
    raw.delete(format!("{PREFIX}junk")).await.unwrap();
    b.deregister().await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        DiscoveryEvent::Removed("b".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked() {
    let etcd = start_etcd();
    use rookery_etcd::pb::etcdserverpb as pb;
    let mut auth = raw_client(&etcd).await.auth_client();
    auth.user_add(pb::AuthUserAddRequest {
        name: "root".into(),
        password: "rootpw".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    auth.user_grant_role(pb::AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();

    let with = |user: Option<&str>, password: Option<&str>| EtcdConfig {
        user: user.map(str::to_string),
        password: password.map(str::to_string),
        ..config(&etcd.endpoint(), 3)
    };
    let r = EtcdDiscovery::connect(with(Some("root"), Some("wrong"))).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == DiscoveryErrorKind::Unauthorized),
        "{r:?}"
    );
    let r = EtcdDiscovery::connect(with(None, None)).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == DiscoveryErrorKind::Unauthorized),
        "{r:?}"
    );

    let d = EtcdDiscovery::connect(with(Some("root"), Some("rootpw")))
        .await
        .expect("right credentials");
    d.register(&node("a", 1)).await.unwrap();
    let mut rx = d.watch().await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        DiscoveryEvent::Added(node("a", 1))
    );
    d.deregister().await.unwrap();
    assert_eq!(
        next(&mut rx, Duration::from_secs(2)).await,
        DiscoveryEvent::Removed("a".into())
    );
}

/// A node id that a live node holds is refused, naming the id, and the holder's entry is left as
/// it was; once the holder leaves, the id is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_held_by_a_live_node_is_refused() {
    let etcd = start_etcd();
    let a = connect(&etcd.endpoint(), 3).await;
    let b = connect(&etcd.endpoint(), 3).await;
    a.register(&node("a", 1)).await.unwrap();
    let lease = lease_of(&etcd, &format!("{PREFIX}a")).await;

    let r = b.register(&node("a", 2)).await;
    match &r {
        Err(e) if e.kind() == DiscoveryErrorKind::DuplicateId => {
            assert_eq!(e.message(), "a");
            assert!(e.to_string().contains(": a: "), "{e}");
        }
        other => panic!("expected DuplicateId, got {other:?}"),
    }
    let raw = raw_client(&etcd).await;
    let kv = raw.get(format!("{PREFIX}a")).await.unwrap().kvs.remove(0);
    assert_eq!(kv.lease, lease, "the holder's lease is untouched");
    let held: NodeInfo = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(held, node("a", 1), "the holder's info is untouched");
    // Registering again through the holder's own handle is an update, not a conflict.
    a.register(&node("a", 3)).await.unwrap();

    a.deregister().await.unwrap();
    b.register(&node("a", 2))
        .await
        .expect("free once the holder left");
    let kv = raw.get(format!("{PREFIX}a")).await.unwrap().kvs.remove(0);
    assert_eq!(
        serde_json::from_slice::<NodeInfo>(&kv.value).unwrap(),
        node("a", 2)
    );
}
