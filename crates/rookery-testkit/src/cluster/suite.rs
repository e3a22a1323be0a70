//! The multi-node suite, shared by every transport: each function starts a [`Cluster`] whose
//! nodes get their transports from `transport` (one call per node) and checks one behaviour of
//! the cluster end to end. [`transport_suite!`](crate::transport_suite) makes one test of each;
//! a function added here is added to that macro's list too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rookery::cluster::Transport;
use rookery::telemetry::DisconnectReason;
use rookery::{CallOptions, Json, RpcError, Target};
use rookery_client::{Client, ClientError, ClientOptions};
use serde_json::{json, Value};

use super::{start, start_with, Cluster};
use crate::{eventually, WAIT};

async fn client(c: &Cluster) -> Client {
    Client::connect(
        &c.gate.tcp_addr().unwrap().to_string(),
        ClientOptions::default(),
    )
    .await
    .unwrap()
}

async fn client2(c: &Cluster) -> Client {
    Client::connect(
        &c.gate2.tcp_addr().unwrap().to_string(),
        ClientOptions::default(),
    )
    .await
    .unwrap()
}

async fn stop(c: Cluster) {
    c.gate.shutdown().await;
    c.gate2.shutdown().await;
    for b in c.backends {
        b.shutdown().await;
    }
}

/// Client requests for a module that runs elsewhere are forwarded, and answered with their id.
pub async fn forwarding(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    let cl = client(&c).await;
    let mut nodes = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let v = cl.request_json("game.info.node", json!({})).await.unwrap();
        nodes.insert(v["node"].as_str().unwrap().to_string());
    }
    assert!(nodes.iter().all(|n| n.starts_with("game-")), "{nodes:?}");
    // Local modules still answer locally; unknown modules are RK-404.
    assert_eq!(
        cl.request_json("front.ping.ping", json!({})).await.unwrap()["pong"],
        true
    );
    match cl.request_json("nomodule.a.b", json!({})).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "RK-404"),
        other => panic!("{other:?}"),
    }
    // Internal routes on backends are not reachable from clients either.
    match cl.request_json("game.rpc.echo", json!({})).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "RK-404"),
        other => panic!("{other:?}"),
    }
    stop(c).await;
}

/// A backend binds the uid, pushes, changes session data and kicks, all through the gateway.
pub async fn remote_sessions(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    let cl = client(&c).await;
    match cl.request_json("game.auth.whoami", json!({})).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "RK-401"),
        other => panic!("{other:?}"),
    }
    cl.request_json("game.auth.login", json!({"uid": "alice"}))
        .await
        .unwrap();
    assert!(
        c.gate.app().sessions().by_uid("alice").is_some(),
        "bound on the gateway"
    );
    assert_eq!(
        cl.request_json("game.auth.whoami", json!({}))
            .await
            .unwrap()["uid"],
        "alice"
    );
    cl.request_json("game.data.set", json!({"v": 42}))
        .await
        .unwrap();
    assert_eq!(
        c.gate.app().sessions().by_uid("alice").unwrap().get("k"),
        Some(json!(42)),
        "data synced back to the gateway"
    );
    assert_eq!(
        cl.request_json("game.data.get", json!({})).await.unwrap()["v"],
        42
    );
    cl.request_json("game.push.me", json!({"n": 50}))
        .await
        .unwrap();
    for i in 0..50 {
        let p = cl.next_push("onGame", WAIT).await.unwrap();
        assert_eq!(p.json::<Value>().unwrap()["i"], i, "pushes arrive in order");
    }
    // The kick travels to the gateway apart from the reply: the request may see either.
    let _ = cl.request_json("game.kick.me", json!({})).await;
    let closed = cl.closed().await;
    assert!(closed.kicked);
    assert_eq!(closed.reason.as_deref(), Some("kicked by backend"));
    stop(c).await;
}

/// Pushing to a uid and kicking a uid from a node that does not hold the session.
pub async fn users_across_nodes(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    let a = client(&c).await;
    let b = client2(&c).await;
    a.request_json("game.auth.login", json!({"uid": "a"}))
        .await
        .unwrap();
    b.request_json("game.auth.login", json!({"uid": "b"}))
        .await
        .unwrap();
    let backend = c.backends[0].app();
    let local = backend
        .rpc()
        .push_to_uids(&["a", "b", "nobody"], "onNews", Json(json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(local, 0, "the backend holds no sessions");
    for cl in [&a, &b] {
        let p = cl.next_push("onNews", WAIT).await.unwrap();
        assert_eq!(p.json::<Value>().unwrap(), json!({"n": 1}));
    }
    backend.rpc().kick_uid("b", "banned").await;
    assert_eq!(b.closed().await.reason.as_deref(), Some("banned"));
    assert!(a.request_json("game.info.node", json!({})).await.is_ok());
    stop(c).await;
}

/// A group on a backend whose members sit on two gateways; members leave when their session
/// closes, and the backend's modules are told.
pub async fn cluster_groups(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    let a = client(&c).await;
    let b = client2(&c).await;
    // Pin both to one backend so that the group lives in one place.
    a.request_json("game.auth.login", json!({"uid": "a"}))
        .await
        .unwrap();
    b.request_json("game.auth.login", json!({"uid": "b"}))
        .await
        .unwrap();
    let backend = &c.backends[0];
    let rpc_session =
        |gate: &rookery::RunningServer, uid: &str| gate.app().sessions().by_uid(uid).unwrap();
    for (gate, uid) in [(&c.gate, "a"), (&c.gate2, "b")] {
        let s = rpc_session(gate, uid);
        let opts = CallOptions {
            session: Some(s),
            ..CallOptions::default()
        };
        gate.app()
            .rpc()
            .call_with::<_, Json<Value>>(Target::Node("game-1".into()), "game.group.join", (), opts)
            .await
            .unwrap();
    }
    assert_eq!(backend.app().groups().members("hall"), vec!["a", "b"]);
    let p = a.next_push("onHallJoin", WAIT).await.unwrap();
    assert_eq!(p.json::<Value>().unwrap()["uid"], "b");
    let n = backend
        .app()
        .groups()
        .broadcast("hall", "onHall", Json(json!({"text": "hello"})));
    assert_eq!(n, 2);
    for cl in [&a, &b] {
        assert_eq!(
            cl.next_push("onHall", WAIT)
                .await
                .unwrap()
                .json::<Value>()
                .unwrap()["text"],
            "hello"
        );
    }
    b.close().await;
    eventually("b left the group", || {
        backend.app().groups().members("hall") == vec!["a"]
    })
    .await;
    assert!(c
        .seen
        .closed
        .lock()
        .unwrap()
        .iter()
        .any(|(gw, uid, _)| gw == "gate-2" && uid == "b"));
    stop(c).await;
}

/// The same uid logging in on two gateways: the older session is kicked, cluster-wide, and
/// when both log in at once exactly one survives.
pub async fn duplicate_login_across_gateways(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    let first = client(&c).await;
    first
        .request_json("game.auth.login", json!({"uid": "dup"}))
        .await
        .unwrap();
    let second = client2(&c).await;
    second
        .request_json("game.auth.login", json!({"uid": "dup"}))
        .await
        .unwrap();
    let closed = first.closed().await;
    assert_eq!(closed.reason.as_deref(), Some("duplicate login"));
    // Counted by the gateway that held the older session, as a duplicate login (the kick
    // came from the other gateway), once.
    let counted = |reason| c.gate.app().disconnects().total(reason);
    eventually("the duplicate login counted", || {
        counted(DisconnectReason::DuplicateLogin) == 1
    })
    .await;
    assert_eq!(counted(DisconnectReason::Kick), 0);
    assert_eq!(
        c.gate2
            .app()
            .disconnects()
            .total(DisconnectReason::DuplicateLogin),
        0
    );
    assert!(second
        .request_json("game.auth.whoami", json!({}))
        .await
        .is_ok());
    second.close().await;
    for trial in 0..20 {
        let uid = format!("race-{trial}");
        let (x, y) = tokio::join!(client(&c), client2(&c));
        // The loser may be kicked before its own login answer reaches it.
        let (rx, ry) = tokio::join!(
            x.request_json("game.auth.login", json!({"uid": uid})),
            y.request_json("game.auth.login", json!({"uid": uid}))
        );
        assert!(rx.is_ok() || ry.is_ok(), "{rx:?} {ry:?}");
        // Exactly one stays bound: wait until the loser is gone, then check the winner.
        eventually("one session left", || {
            let on1 = c.gate.app().sessions().by_uid(&uid).is_some();
            let on2 = c.gate2.app().sessions().by_uid(&uid).is_some();
            on1 ^ on2
        })
        .await;
        let survivor = if c.gate.app().sessions().by_uid(&uid).is_some() {
            &x
        } else {
            &y
        };
        assert!(survivor
            .request_json("game.auth.whoami", json!({}))
            .await
            .is_ok());
        x.close().await;
        y.close().await;
    }
    stop(c).await;
}

/// One session's requests keep their order across the hop, whichever backend serves each.
pub async fn ordering_across_hop(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    let cl = client(&c).await;
    let calls: Vec<_> = (0..60u64)
        .map(|seq| cl.request_json("game.order.seq", json!({"seq": seq})))
        .collect();
    for (i, r) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap()["seq"], i as u64);
    }
    assert_eq!(*c.seen.seq.lock().unwrap(), (0..60).collect::<Vec<_>>());
    stop(c).await;
}

/// Module-to-module RPC: by type, by `type@id`, by logical address, broadcast, errors.
pub async fn module_rpc(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    let rpc_app = c.gate.app();
    let rpc = rpc_app.rpc();
    let v: Json<Value> = rpc
        .call("game", "game.rpc.echo", Json(json!({"x": 1})))
        .await
        .unwrap();
    assert_eq!(v.0["echo"], json!({"x": 1}));
    let v: Json<Value> = rpc
        .call("game@game-2", "game.rpc.echo", Json(json!({})))
        .await
        .unwrap();
    assert_eq!(v.0["node"], "game-2");
    let v: Json<Value> = rpc
        .call("1.2.1", "game.rpc.echo", Json(json!({})))
        .await
        .unwrap();
    assert_eq!(v.0["node"], "game-1");
    let all = rpc
        .call_all::<_, Json<Value>>("game", "game.rpc.echo", Json(json!({})))
        .await;
    let mut nodes: Vec<String> = all
        .into_iter()
        .map(|(id, r)| {
            assert_eq!(r.unwrap().0["node"], id);
            id
        })
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec!["game-1", "game-2"]);
    assert_eq!(
        rpc.notify_nodes("game", "game.rpc.echo", Json(json!({})))
            .await
            .unwrap(),
        2
    );
    // Errors keep their kind.
    let e = rpc
        .call::<_, Json<Value>>("game", "game.rpc.fail", ())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RpcError::Remote(err) if err.code() == "GAME-7"),
        "{e:?}"
    );
    let e = rpc
        .call::<_, Json<Value>>("nosuchtype", "x.y.z", ())
        .await
        .unwrap_err();
    assert!(matches!(e, RpcError::NoNode(_)), "{e:?}");
    let started = Instant::now();
    let e = rpc
        .call_with::<_, Json<Value>>(
            Target::Node("game-1".into()),
            "game.slow.sleep",
            Json(json!({"ms": 3000})),
            CallOptions {
                timeout: Some(Duration::from_millis(300)),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, RpcError::Timeout | RpcError::Remote(_)),
        "{e:?}"
    );
    if let RpcError::Remote(err) = &e {
        assert_eq!(err.code(), "RK-408");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    stop(c).await;
}

/// A backend that leaves gracefully stops being chosen; the survivor serves everything.
pub async fn graceful_backend_leave(transport: impl Fn() -> Arc<dyn Transport>) {
    let mut c = start(transport).await;
    let cl = client(&c).await;
    let leaving = c.backends.remove(0);
    let leaving_id = leaving.app().node_id().to_string();
    let report = leaving.shutdown().await;
    assert!(report.drained);
    eventually("gateway forgets the node", || {
        c.gate.app().cluster().running("game").len() == 1
    })
    .await;
    for _ in 0..10 {
        let v = cl.request_json("game.info.node", json!({})).await.unwrap();
        assert_ne!(v["node"], leaving_id.as_str());
    }
    // Modules were told: found at start, draining, then lost.
    let events = c.gate_events.lock().unwrap().clone();
    assert!(
        events.contains(&format!("found {leaving_id}")),
        "{events:?}"
    );
    assert!(
        events.contains(&format!("updated {leaving_id} Draining")),
        "{events:?}"
    );
    assert_eq!(
        events.last().unwrap(),
        &format!("lost {leaving_id}"),
        "{events:?}"
    );
    stop(c).await;
}

/// A backend shut down gracefully while calls to it are in flight: it leaves discovery first,
/// finishes those calls (no errors), and new calls go to the other backend.
pub async fn graceful_drain_in_flight(transport: impl Fn() -> Arc<dyn Transport>) {
    let mut c = start(transport).await;
    let leaving = c.backends.remove(0);
    let gate = c.gate.app().clone();
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.rpc()
                    .call::<_, Json<Value>>(
                        Target::Node("game-1".into()),
                        "game.slow.sleep",
                        Json(json!({"ms": 300, "i": i})),
                    )
                    .await
            })
        })
        .collect();
    // Shut down once game-1 is handling all of them.
    eventually("calls in flight on game-1", || {
        leaving.app().inbound_calls() == 10
    })
    .await;
    let report = tokio::spawn(leaving.shutdown());
    for (i, call) in calls.into_iter().enumerate() {
        let Json(v) = call
            .await
            .unwrap()
            .expect("in-flight call finished during drain");
        assert_eq!(v["i"], i);
    }
    assert!(report.await.unwrap().drained);
    eventually("game-1 gone", || {
        c.gate.app().cluster().get("game-1").is_none()
    })
    .await;
    let Json(v) = gate
        .rpc()
        .call::<_, Json<Value>>("game", "game.rpc.echo", Json(json!({})))
        .await
        .unwrap();
    assert_eq!(v["node"], "game-2");
    stop(c).await;
}

/// Both gateways hand out the cluster's whole dictionary (their own routes, the backends'
/// client routes and declared pushes), the same on each; a client calls every client route of
/// the remote module by its code; internal routes have none; an unknown code is `RK-404`.
pub async fn route_dictionary(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    let (cl, cl2) = (client(&c).await, client2(&c).await);
    let dict = |cl: &Client| {
        cl.handshake()
            .sys
            .as_ref()
            .unwrap()
            .dict
            .iter()
            .map(|(r, code)| (r.clone(), *code))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (d1, d2) = (dict(&cl), dict(&cl2));
    assert_eq!(d1, d2, "both gateways hand out the same dictionary");
    let remote = c.backends[0].app().router().client_routes();
    assert!(remote.iter().any(|r| r == "game.info.node"), "{remote:?}");
    for route in &remote {
        assert!(
            d1.contains_key(route),
            "{route} has no code on the gateways: {d1:?}"
        );
    }
    assert!(d1.contains_key("front.ping.ping"));
    for internal in ["game.rpc.echo", "game.trace.id", "game.rpc.fail"] {
        assert!(!d1.contains_key(internal), "{internal} is internal");
    }
    let mut codes: Vec<u16> = d1.values().copied().collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), d1.len(), "codes are unique");

    // By code, through either gateway, to a backend.
    let v: Value = serde_json::from_slice(
        &cl.request_code(d1["game.info.node"], "{}".into())
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(v["node"].as_str().unwrap().starts_with("game-"), "{v}");
    for route in remote
        .iter()
        .filter(|r| r.starts_with("game.") && *r != "game.kick.me")
    {
        match cl2.request_code(d1[route], "{}".into()).await {
            Ok(_) => {}
            Err(ClientError::Server { code, .. }) => {
                assert_ne!(code, "RK-404", "{route} by code {}", d1[route])
            }
            Err(other) => panic!("{route}: {other:?}"),
        }
    }
    let unused = (1..=u16::MAX).find(|c| !codes.contains(c)).unwrap();
    match cl.request_code(unused, "{}".into()).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "RK-404"),
        other => panic!("unknown code {unused}: {other:?}"),
    }
    stop(c).await;
}

/// A gateway that leaves the cluster without closing its sessions (its lease expired, it died):
/// the backends let go of every session it brought them, once each (module hooks, groups), and
/// a close the gateway reports later is not handled a second time.
pub async fn gateway_loss_closes_its_sessions(transport: impl Fn() -> Arc<dyn Transport>) {
    use rookery::cluster::Discovery;
    let c = start(transport).await;
    let (a, b) = (client(&c).await, client2(&c).await);
    for (cl, uid) in [(&a, "lost-a"), (&b, "kept-b")] {
        cl.request_json("game.auth.login", json!({ "uid": uid }))
            .await
            .unwrap();
        cl.request_json("game.group.join", json!({})).await.unwrap();
    }
    let closed_for = |uid: &str| {
        c.seen
            .closed
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, u, _)| u == uid)
            .cloned()
            .collect::<Vec<_>>()
    };
    c.gate_discovery.deregister().await.unwrap();
    eventually("the backends let go of gate-1's session", || {
        !closed_for("lost-a").is_empty()
    })
    .await;
    // Once on each backend that served it.
    let once_per_backend = || {
        let on: Vec<String> = c
            .seen
            .closed_on
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, u)| u == "lost-a")
            .map(|(node, _)| node.clone())
            .collect();
        let mut distinct = on.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            on.len(),
            "hooks ran twice on a node: {on:?}"
        );
        on.len()
    };
    let handled = once_per_backend();
    assert!((1..=2).contains(&handled));
    for (gateway, _, reason) in closed_for("lost-a") {
        assert_eq!(
            (gateway.as_str(), reason.as_str()),
            ("gate-1", "gateway lost")
        );
    }
    assert!(closed_for("kept-b").is_empty(), "gate-2's sessions stay");
    for backend in &c.backends {
        eventually("the hall lost its member", || {
            !backend
                .app()
                .groups()
                .members("hall")
                .contains(&"lost-a".to_string())
        })
        .await;
    }
    // gate-1 is still up here: its client closing now reports a close the backends already
    // handled; the hooks do not run again. The same report for gate-2's client does run them.
    a.close().await;
    b.close().await;
    eventually("gate-2's close handled", || {
        !closed_for("kept-b").is_empty()
    })
    .await;
    // gate-1 sent its report before it let go of the session; a request through gate-1 to
    // each backend afterwards travels behind it on the same link.
    eventually("gate-1 closed its session", || {
        c.gate.app().sessions().by_uid("lost-a").is_none()
    })
    .await;
    let probe = client(&c).await;
    let mut nodes = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let v = probe
            .request_json("game.info.node", json!({}))
            .await
            .unwrap();
        nodes.insert(v["node"].as_str().unwrap().to_string());
        if nodes.len() == 2 {
            break;
        }
    }
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert_eq!(once_per_backend(), handled);
    stop(c).await;
}

/// Takes `game-2` out of selection, so that every call to `game` runs on `game-1`.
async fn one_backend(c: &Cluster) {
    c.backends[1]
        .app()
        .set_node_state(rookery::cluster::NodeState::Unavailable)
        .await
        .unwrap();
    eventually("every node sees game-2 out of service", || {
        [&c.gate, &c.gate2, &c.backends[0]].iter().all(|n| {
            n.app()
                .cluster()
                .get("game-2")
                .is_some_and(|g| !g.is_available())
        })
    })
    .await;
}

/// `Concurrent` and `Serial` mean on a backend what they mean on a gateway, for forwarded
/// requests and RPC alike: concurrent requests of one session overlap, serial ones never do,
/// whoever sends them. (`Ordered`: `ordering_across_hop`.)
pub async fn dispatch_modes_on_a_backend(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    one_backend(&c).await;
    let (a, b) = (client(&c).await, client2(&c).await);
    let rpc_app = c.gate.app().clone();
    let call = |route: &'static str| {
        let app = rpc_app.clone();
        async move {
            app.rpc()
                .call::<_, ()>(Target::Module("game".into()), route, ())
                .await
        }
    };

    // One session's two requests to a concurrent route run at once on the backend.
    let (r1, r2) = tokio::join!(
        a.request_json("game.mode.concurrent", json!({})),
        a.request_json("game.mode.concurrent", json!({}))
    );
    r1.unwrap();
    r2.unwrap();
    assert_eq!(c.seen.take_most(), 2, "forwarded requests overlap");
    // Two RPC calls too.
    let (r1, r2) = tokio::join!(call("game.mode.concurrent"), call("game.mode.concurrent"));
    r1.unwrap();
    r2.unwrap();
    assert_eq!(c.seen.take_most(), 2, "RPC calls overlap");

    // A serial route: requests of two sessions on two gateways and RPC calls, all at once,
    // run one at a time.
    let mut all = Vec::new();
    for i in 0..8 {
        let client = if i % 2 == 0 { &a } else { &b };
        all.push(futures_util::future::Either::Left(async move {
            client
                .request_json("game.mode.serial", json!({}))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }));
        all.push(futures_util::future::Either::Right(async {
            call("game.mode.serial").await.map_err(|e| e.to_string())
        }));
    }
    for r in futures_util::future::join_all(all).await {
        r.unwrap();
    }
    assert_eq!(c.seen.take_most(), 1, "serial requests never overlap");
    stop(c).await;
}

/// A module takes at most `cluster.inbound_per_module` calls from other nodes at once; the next
/// is refused at once with `RK-503`, and the ones accepted complete.
pub async fn inbound_calls_are_bounded_per_module(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start_with(transport, |cfg| cfg.cluster.inbound_per_module = 2, |b| b).await;
    one_backend(&c).await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let app = c.gate.app().clone();
            tokio::spawn(async move {
                app.rpc()
                    .call::<_, ()>(Target::Module("game".into()), "game.mode.hold", ())
                    .await
            })
        })
        .collect();
    let game1 = c.backends[0].app().clone();
    eventually("two calls held on game-1", || game1.inbound_calls() == 2).await;
    let refused = c
        .gate
        .app()
        .rpc()
        .call::<_, ()>(Target::Module("game".into()), "game.mode.hold", ())
        .await;
    match refused {
        Err(RpcError::Remote(e)) => {
            assert_eq!(e.code(), "RK-503");
            assert!(e.to_string().contains("module game is busy"), "{e}");
        }
        other => panic!("expected RK-503, got {other:?}"),
    }
    c.seen.release.send_replace(true);
    for h in held {
        h.await.unwrap().unwrap();
    }
    stop(c).await;
}

/// A backend's copy of a session is complete: it has the client's address, it can unbind the
/// uid, and its data changes reach the gateway wherever and whenever they are made, merged per
/// key in each node's order, so that the next request, on any backend, reads them.
pub async fn complete_sessions_on_backends(transport: impl Fn() -> Arc<dyn Transport>) {
    let c = start(transport).await;
    let cl = client(&c).await;
    // The address the gateway sees, on the backend.
    let addr = cl.request_json("game.auth.addr", json!({})).await.unwrap();
    let gate_addr = c.gate.app().sessions().all()[0].remote_addr().to_string();
    assert_eq!(addr["addr"], gate_addr);
    assert!(gate_addr.starts_with("127.0.0.1:"), "{gate_addr}");

    // Unbind on a backend: the gateway forgets the uid, the user can log in again.
    cl.request_json("game.auth.login", json!({"uid": "bob"}))
        .await
        .unwrap();
    let was = cl
        .request_json("game.auth.logout", json!({}))
        .await
        .unwrap();
    assert_eq!(was["was"], "bob");
    assert!(c.gate.app().sessions().by_uid("bob").is_none());
    match cl.request_json("game.auth.whoami", json!({})).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "RK-401"),
        other => panic!("{other:?}"),
    }
    let other = client2(&c).await;
    other
        .request_json("game.auth.login", json!({"uid": "bob"}))
        .await
        .unwrap();
    // An unbound session is not kicked by the uid's new login: it still answers.
    cl.request_json("game.info.node", json!({})).await.unwrap();

    // A change made in the request comes back with the answer; the kept copy's later changes
    // (outside any request) reach the gateway on their own, in order.
    cl.request_json("game.data.keep", json!({})).await.unwrap();
    let sid = c
        .gate
        .app()
        .sessions()
        .all()
        .iter()
        .find(|s| s.uid().is_none())
        .unwrap()
        .id();
    let gate_session = c.gate.app().sessions().get(sid).unwrap();
    assert_eq!(gate_session.get("a"), Some(json!(1)));
    let kept = c.seen.kept.lock().unwrap().take().expect("the kept copy");
    for i in 0..20 {
        kept.set("b", json!(i));
    }
    // Meanwhile a request on a backend changes another key: both stay.
    cl.request_json("game.data.set", json!({"v": "x"}))
        .await
        .unwrap();
    eventually("the kept copy's last change at the gateway", || {
        gate_session.get("b") == Some(json!(19))
    })
    .await;
    assert_eq!(gate_session.get("k"), Some(json!("x")));
    assert_eq!(gate_session.get("a"), Some(json!(1)));
    kept.remove("a");
    eventually("the removal at the gateway", || {
        gate_session.get("a").is_none()
    })
    .await;
    // The next request, on whichever backend, reads the gateway's data.
    let all = cl.request_json("game.data.get", json!({})).await.unwrap();
    assert_eq!(all["all"], json!({"b": 19, "k": "x"}));
    stop(c).await;
}
