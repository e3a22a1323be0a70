//! The demo as a real cluster: four `rookery serve` processes (two gateways, two room nodes) from
//! the configs in `examples/cluster/`, with a real etcd and (for one config) a real nats-server.
//! Clients see exactly the single-process demo; a room node killed with `kill -9` leaves routing
//! within the lease TTL and its rooms move to the survivor as users rejoin.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rookery_client::{Client, ClientError, ClientOptions};
use rookery_testkit::{free_port, Etcd, Nats, WAIT};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_rookery");
/// Lease TTL used by the test (the examples use 5 s).
const TTL: u64 = 2;
/// Members a room holds in these tests (`ROOM-FULL` beyond).
const MAX_MEMBERS: usize = 3;

/// Child processes, killed on drop.
struct Procs(Vec<(String, Child)>);

impl Procs {
    fn kill9(&mut self, name: &str) {
        let (_, child) = self.0.iter_mut().find(|(n, _)| n == name).unwrap();
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The example config with the harness's addresses and free gateway ports.
fn config(example: &str, etcd: &Etcd, nats: Option<&Nats>, dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster");
    let mut text = std::fs::read_to_string(root.join(example)).unwrap();
    text = text.replace("http://127.0.0.1:2379", &etcd.endpoint());
    text = text.replace("ttl = 5", &format!("ttl = {TTL}"));
    if let Some(n) = nats {
        text = text.replace("nats://127.0.0.1:4222", &n.url());
    }
    // Gateways listen on ports the OS picks; they print them.
    for fixed in [
        "127.0.0.1:3250",
        "127.0.0.1:3260",
        "127.0.0.1:3251",
        "127.0.0.1:3261",
    ] {
        text = text.replace(fixed, "127.0.0.1:0");
    }
    let path = dir.join(example);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts one process and waits for its "node ... running" line; returns it and the TCP address
/// it printed, if it has an acceptor.
fn spawn(config: &Path, process: &str) -> (Child, Option<String>) {
    spawn_with(Command::new(BIN), config, process)
}

/// [`spawn`] with `command` (the binary, with whatever environment the caller set).
fn spawn_with(mut command: Command, config: &Path, process: &str) -> (Child, Option<String>) {
    let mut child = command
        .args(["serve", "--config"])
        .env(
            "ROOKERY_MODULES__ROOM__MAX_MEMBERS",
            MAX_MEMBERS.to_string(),
        )
        .arg(config)
        .args(["--process", process])
        .env(
            "RUST_LOG",
            std::env::var("CHILD_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::piped())
        // Set CHILD_LOG (e.g. CHILD_LOG=info) to see the processes' logs.
        .stderr(if std::env::var_os("CHILD_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut tcp = None;
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{process} exited before starting"))
            .unwrap();
        if let Some(a) = line.strip_prefix("rookery: TCP on ") {
            tcp = Some(a.to_string());
        }
        if line.starts_with("rookery: node ") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, tcp)
}

/// A client that waits longer than the servers' 5 s request deadline, so that every request
/// ends with the server's own answer (a result or an error response), never a client timeout.
async fn connect(addr: &str) -> Client {
    Client::connect(
        addr,
        ClientOptions {
            request_timeout: Duration::from_secs(8),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap()
}

async fn login(addr: &str, uid: &str) -> Client {
    let c = connect(addr).await;
    c.request_json("connector.entry.login", json!({"uid": uid}))
        .await
        .unwrap();
    c
}

/// Retries a request until it succeeds (the cluster forming, or routing recovering), up to
/// `within`; every attempt must end, with an answer or an error, inside the request deadline.
async fn until_ok(c: &Client, route: &str, body: Value, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let r = c.request_json(route, body.clone()).await;
        assert!(
            t.elapsed() < Duration::from_secs(7),
            "a request hung for {:?}",
            t.elapsed()
        );
        match r {
            Ok(v) => return v,
            Err(ClientError::Server { code, .. })
                if ["RK-503", "RK-408", "RK-404"].contains(&code.as_str()) =>
            {
                assert!(
                    start.elapsed() < within,
                    "{route} still failing with {code} after {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{route}: {e:?}"),
        }
    }
}

/// Waits until `n` nodes are registered in etcd (read with a fresh watcher's snapshot).
async fn registered(etcd: &Etcd, n: usize) {
    use rookery::cluster::discovery::etcd::{EtcdConfig, EtcdDiscovery};
    use rookery::cluster::{Discovery, DiscoveryEvent};
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(TTL * 3 + 10),
            "nodes did not re-register"
        );
        let cfg = EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            ..EtcdConfig::default()
        };
        if let Ok(d) = EtcdDiscovery::connect(cfg).await {
            if let Ok(mut events) = d.watch().await {
                let mut ids = std::collections::BTreeSet::new();
                while let Ok(Some(DiscoveryEvent::Added(node))) =
                    tokio::time::timeout(Duration::from_millis(300), events.recv()).await
                {
                    ids.insert(node.id);
                }
                d.close();
                if ids.len() == n {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn push(c: &Client, route: &str) -> Value {
    c.next_push(route, WAIT).await.unwrap().json().unwrap()
}

async fn demo_over(example: &str, with_nats: bool) {
    let mut etcd = Etcd::start().expect("etcd (apt-get install etcd-server)");
    let mut nats =
        with_nats.then(|| Nats::start().expect("nats-server (apt-get install nats-server)"));
    let dir = tempfile_dir();
    let cfg = config(example, &etcd, nats.as_ref(), dir.path());
    let mut gates = Vec::new();
    let mut procs = Procs(Vec::new());
    for p in ["room-1", "room-2", "gate-1", "gate-2"] {
        let (child, tcp) = spawn(&cfg, p);
        procs.0.push((p.to_string(), child));
        gates.extend(tcp);
    }

    let alice = login(&gates[0], "alice").await;
    let bob = login(&gates[1], "bob").await;
    // Wait until each gateway routes to room nodes.
    until_ok(&alice, "room.room.list", json!({}), WAIT).await;
    until_ok(&bob, "room.room.list", json!({}), WAIT).await;

    // Both gateways hand out the same dictionary, the room nodes' routes included, and a room
    // route works by code through either.
    let (fresh1, fresh2) = (connect(&gates[0]).await, connect(&gates[1]).await);
    let dict = |c: &Client| c.handshake().sys.as_ref().unwrap().dict.clone();
    assert_eq!(dict(&fresh1), dict(&fresh2));
    for route in [
        "connector.entry.login",
        "room.room.join",
        "room.room.say",
        "room.room.list",
    ] {
        assert!(
            dict(&fresh1).contains_key(route),
            "{route}: {:?}",
            dict(&fresh1)
        );
    }
    let code = dict(&fresh2)["room.room.list"];
    let list: Value =
        serde_json::from_slice(&fresh2.request_code(code, "{}".into()).await.unwrap()).unwrap();
    assert!(list["rooms"].is_array(), "{list}");

    let v = alice
        .request_json("room.room.join", json!({"room": "lobby"}))
        .await
        .unwrap();
    assert_eq!(v, json!({"room": "lobby", "members": ["alice"]}));
    let v = bob
        .request_json("room.room.join", json!({"room": "lobby"}))
        .await
        .unwrap();
    assert_eq!(v, json!({"room": "lobby", "members": ["alice", "bob"]}));
    assert_eq!(
        push(&alice, "onJoin").await,
        json!({"room": "lobby", "uid": "bob"})
    );
    bob.request_json("room.room.say", json!({"room": "lobby", "text": "hi"}))
        .await
        .unwrap();
    let said = json!({"room": "lobby", "from": "bob", "text": "hi"});
    assert_eq!(push(&alice, "onMessage").await, said);
    assert_eq!(push(&bob, "onMessage").await, said);

    // Rooms spread over both room nodes; the list gathers them all.
    for i in 0..8 {
        alice
            .request_json("room.room.join", json!({"room": format!("r{i}")}))
            .await
            .unwrap();
    }
    let list = alice
        .request_json("room.room.list", json!({}))
        .await
        .unwrap();
    assert_eq!(list["rooms"].as_array().unwrap().len(), 9, "{list}");
    assert_eq!(list["rooms"][0], json!({"room": "lobby", "members": 2}));

    // Bob disconnects: alice sees him leave.
    bob.close().await;
    assert_eq!(
        push(&alice, "onLeave").await,
        json!({"room": "lobby", "uid": "bob"})
    );

    // Duplicate login across gateways kicks the older session.
    let alice2 = login(&gates[1], "alice").await;
    assert_eq!(
        alice.closed().await.reason.as_deref(),
        Some("duplicate login")
    );

    // The kicked session left all its rooms, which vanished with their last member. The room
    // nodes learn of the close through a message of their own: wait for it to be applied.
    let start = Instant::now();
    loop {
        let v = alice2
            .request_json("room.room.list", json!({}))
            .await
            .unwrap();
        if v == json!({"rooms": []}) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "rooms of the kicked session remain: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice2
        .request_json("room.room.join", json!({"room": "lobby"}))
        .await
        .unwrap();
    let one_room = json!({"rooms": [{"room": "lobby", "members": 1}]});

    // etcd down for twice the lease TTL: nodes keep serving existing sessions; when it is back
    // every node registers again (with a new lease: the old ones expired meanwhile).
    etcd.stop();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(TTL * 2 + 1) {
        // Time itself is the subject here: keep using the cluster while etcd is away.
        let v = alice2
            .request_json("room.room.list", json!({}))
            .await
            .unwrap();
        assert_eq!(v, one_room);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    etcd.restart().unwrap();
    registered(&etcd, 4).await;
    let v = alice2
        .request_json("room.room.list", json!({}))
        .await
        .unwrap();
    assert_eq!(v, one_room);

    // nats-server restarted: node-to-node calls recover without restarting any node.
    if let Some(n) = nats.as_mut() {
        n.restart().unwrap();
        assert_eq!(
            until_ok(&alice2, "room.room.list", json!({}), WAIT).await,
            one_room
        );
    }

    // A room node dies: requests never hang, and within the TTL the lobby works again on the
    // survivor (as a fresh room: its state died with the node, or it was on the survivor).
    // Keep requests in flight to both room nodes (room.list asks each) while one is killed:
    // every one of them must end, with an answer or an error, within the request deadline.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..4 {
        let c = login(&gates[i % 2], &format!("load-{i}")).await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                match c.request_json("room.room.list", json!({})).await {
                    Ok(_) => ok += 1,
                    Err(ClientError::Server { .. }) => failed += 1,
                    Err(e) => panic!("load request: {e:?}"),
                }
                assert!(
                    t.elapsed() < Duration::from_millis(6500),
                    "a request hung {:?}",
                    t.elapsed()
                );
                // Paced well under the per-connection rate limit (errors come back at once).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    procs.kill9("room-1");
    tokio::time::sleep(Duration::from_millis(TTL * 1000 + 1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        let (ok, _failed) = l.await.unwrap();
        assert!(ok > 0);
    }
    let v = until_ok(
        &alice2,
        "room.room.join",
        json!({"room": "lobby"}),
        Duration::from_secs(TTL * 3 + 5),
    )
    .await;
    assert!(v["members"].as_array().unwrap().contains(&json!("alice")));
    let start = Instant::now();
    for i in 0..8 {
        until_ok(
            &alice2,
            "room.room.join",
            json!({"room": format!("r{i}")}),
            WAIT,
        )
        .await;
    }
    assert!(start.elapsed() < WAIT);
    let list = until_ok(&alice2, "room.room.list", json!({}), WAIT).await;
    assert_eq!(list["rooms"].as_array().unwrap().len(), 9, "{list}");

    // A gateway dies (kill -9) with users in a shared room: within the lease TTL plus a margin
    // the room nodes let go of its sessions: the other members get `onLeave` for each of them,
    // and their seats (rooms hold MAX_MEMBERS) go to new users.
    let g1a = login(&gates[0], "g1a").await;
    let g1b = login(&gates[0], "g1b").await;
    let g2a = login(&gates[1], "g2a").await;
    for c in [&g1a, &g1b, &g2a] {
        until_ok(c, "room.room.join", json!({"room": "seats"}), WAIT).await;
    }
    let late = login(&gates[1], "late").await;
    match late
        .request_json("room.room.join", json!({"room": "seats"}))
        .await
    {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "ROOM-FULL"),
        other => panic!("a full room let a fourth member in: {other:?}"),
    }
    let killed = Instant::now();
    procs.kill9("gate-1");
    let mut left = std::collections::BTreeSet::new();
    while left.len() < 2 {
        let v: Value = g2a
            .next_push("onLeave", Duration::from_secs(TTL * 3 + 5))
            .await
            .expect("onLeave for the dead gateway's users")
            .json()
            .unwrap();
        assert_eq!(v["room"], "seats", "{v}");
        left.insert(v["uid"].as_str().unwrap().to_string());
    }
    assert_eq!(left, ["g1a".to_string(), "g1b".to_string()].into());
    let took = killed.elapsed();
    // Within a few TTLs: the lease's expiry is etcd's, and on a loaded two-core machine it runs
    // late (8.7 s was seen for a 2 s TTL while the whole test suite ran). A gateway that left
    // while draining would be let go only after its drain grace, which this bound excludes.
    assert!(
        took < Duration::from_secs(TTL * 3 + 4),
        "ghosts stayed {took:?} (TTL {TTL} s)"
    );
    let v = until_ok(&late, "room.room.join", json!({"room": "seats"}), WAIT).await;
    assert_eq!(v["members"], json!(["g2a", "late"]), "{v}");
}

fn tempfile_dir() -> TempDir {
    let p = std::env::temp_dir().join(format!(
        "rookery-cluster-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_cluster_over_etcd_and_nats() {
    demo_over("etcd-nats.toml", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_cluster_over_etcd_and_tcp() {
    demo_over("etcd-tcp.toml", false).await;
}

/// Which of two logins of one uid survives never depends on the gateways' wall clocks: with
/// gate-2 running 1.5 s behind gate-1 (under libfaketime), a login on gate-1 followed at once by
/// one on gate-2, and two logins at once, leave exactly one session each, in 1,000 trials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_logins_with_a_skewed_gateway_clock() {
    // libfaketime preloaded into the gateway itself (the `faketime` wrapper would fork, and
    // killing the wrapper would leave the gateway running).
    let libfaketime = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|d| std::path::Path::new(d).join("faketime/libfaketime.so.1"))
    .find(|p| p.is_file())
    .expect("libfaketime not found (apt-get install faketime)");
    let etcd = Etcd::start().expect("etcd (apt-get install etcd-server)");
    let dir = tempfile_dir();
    let cfg = config("etcd-tcp.toml", &etcd, None, dir.path());
    let mut procs = Procs(Vec::new());
    let (child, gate1) = spawn(&cfg, "gate-1");
    procs.0.push(("gate-1".into(), child));
    let mut skewed = Command::new(BIN);
    // Wall clock only: timers (the monotonic clock) run true.
    skewed
        .env("LD_PRELOAD", &libfaketime)
        .env("FAKETIME", "-1.5s")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let (child, gate2) = spawn_with(skewed, &cfg, "gate-2");
    procs.0.push(("gate-2".into(), child));
    let (gate1, gate2) = (gate1.unwrap(), gate2.unwrap());

    // The gateways know each other once a duplicate login across them kicks one session (the
    // later login on the gateway whose clock is ahead: that one any ordering gets right).
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < WAIT, "the gateways never saw each other");
        let y = login(&gate2, "warm-up").await;
        let x = login(&gate1, "warm-up").await;
        let kicked = tokio::select! {
            _ = x.closed() => true,
            _ = y.closed() => true,
            _ = tokio::time::sleep(Duration::from_millis(500)) => false,
        };
        if kicked {
            break;
        }
    }

    let mut survivors = Vec::new();
    let mut newer_won = 0;
    for trial in 0..1000 {
        let uid = format!("u{trial}");
        let sequential = trial % 2 == 0;
        let (x, y) = if sequential {
            let x = login(&gate1, &uid).await;
            (x, login(&gate2, &uid).await)
        } else {
            let (x, y) = tokio::join!(connect(&gate1), connect(&gate2));
            let body = json!({ "uid": uid });
            // The loser may be kicked before its own login is answered.
            let _ = tokio::join!(
                x.request_json("connector.entry.login", body.clone()),
                y.request_json("connector.entry.login", body)
            );
            (x, y)
        };
        let (loser, survivor, second_won) = tokio::select! {
            c = x.closed() => (c, y, true),
            c = y.closed() => (c, x, false),
            _ = tokio::time::sleep(WAIT) => panic!("trial {trial} ({}): both sessions of {uid} stayed logged in", if sequential { "sequential" } else { "simultaneous" }),
        };
        assert_eq!(
            loser.reason.as_deref(),
            Some("duplicate login"),
            "trial {trial}"
        );
        if sequential && second_won {
            newer_won += 1;
        }
        survivors.push(survivor);
    }
    // No survivor was kicked afterwards: each still answers.
    for (i, s) in survivors.iter().enumerate() {
        s.request_json("connector.entry.login", json!({ "uid": format!("u{i}") }))
            .await
            .unwrap_or_else(|e| panic!("survivor of trial {i}: {e}"));
    }
    eprintln!("sequential trials won by the later login: {newer_won} of 500");
}
