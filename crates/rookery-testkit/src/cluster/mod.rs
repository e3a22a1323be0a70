//! The multi-node fixture: two gateway nodes and two backend nodes in one test process, sharing
//! embedded discovery, over a transport chosen by the test (in-process, TCP, NATS, or any other
//! `Transport`), and [`suite`], the conformance suite every transport runs.
//!
//! A transport back end runs the whole suite with [`transport_suite!`](crate::transport_suite).

pub mod suite;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rookery::cluster::{EmbeddedDiscovery, Transport};
use rookery::{
    App, Config, Context, Dispatch, Error, Json, Module, ModuleInit, RunningServer, Server, Session,
};
use serde_json::{json, Value};

use crate::eventually;

/// What backend modules observed.
#[derive(Default)]
pub struct Seen {
    /// Order in which `order.seq` requests ran.
    pub seq: Mutex<Vec<u64>>,
    /// Sessions whose close the backends were told of: (gateway, uid, reason).
    pub closed: Mutex<Vec<(String, String, String)>>,
    /// The same closes by backend: (backend node id, uid).
    pub closed_on: Mutex<Vec<(String, String)>>,
    /// `mode.*` requests running right now (all backends), and the most seen at once since
    /// [`Seen::take_most`].
    pub running: tokio::sync::watch::Sender<(usize, usize)>,
    /// The session copy a `data.keep` request left behind on its backend.
    pub kept: Mutex<Option<Session>>,
    /// Set to release the `mode.hold` requests.
    pub release: tokio::sync::watch::Sender<bool>,
}

impl Seen {
    /// A `mode.*` request starts: counted, and the most at once noted.
    fn enter(&self) {
        self.running.send_modify(|(now, most)| {
            *now += 1;
            *most = (*most).max(*now);
        });
    }

    fn leave(&self) {
        self.running.send_modify(|(now, _)| *now -= 1);
    }

    /// The most `mode.*` requests seen running at once since the last call; starts counting
    /// again.
    pub fn take_most(&self) -> usize {
        let mut most = 0;
        self.running.send_modify(|(now, m)| {
            most = *m;
            *m = *now;
        });
        most
    }
}

/// Module `game`, run by backend nodes.
pub struct Game {
    /// Where it records what it observed (shared by both backends of a [`Cluster`]).
    pub seen: Arc<Seen>,
}

#[rookery::async_trait]
impl Module for Game {
    fn name(&self) -> &str {
        "game"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.handler("info.node", |c: Context, _: ()| async move {
            Ok(Json(json!({ "node": c.app().node_id() })))
        });
        init.handler(
            "auth.login",
            |c: Context, Json(v): Json<Value>| async move {
                let uid = v["uid"].as_str().unwrap_or_default().to_string();
                c.bind(&uid).await?;
                Ok(Json(json!({ "uid": uid, "node": c.app().node_id() })))
            },
        );
        init.handler("auth.whoami", |c: Context, _: ()| async move {
            Ok(Json(json!({ "uid": c.require_uid()?.to_string() })))
        })
        .login_required();
        init.handler("data.set", |c: Context, Json(v): Json<Value>| async move {
            c.session().set("k", v["v"].clone());
            Ok(())
        });
        init.handler("data.get", |c: Context, _: ()| async move {
            Ok(Json(
                json!({ "v": c.session().get("k"), "all": c.session().data() }),
            ))
        });
        // Sets `a` in the request and keeps the session copy, to change it afterwards.
        let seen = self.seen.clone();
        init.handler("data.keep", move |c: Context, _: ()| {
            let seen = seen.clone();
            async move {
                c.session().set("a", json!(1));
                *seen.kept.lock().unwrap() = Some(c.session().clone());
                Ok(())
            }
        });
        init.handler("auth.logout", |c: Context, _: ()| async move {
            let had = c.unbind().await?;
            Ok(Json(json!({ "was": had.map(|u| u.to_string()) })))
        });
        init.handler("auth.addr", |c: Context, _: ()| async move {
            Ok(Json(
                json!({ "addr": c.session().remote_addr().to_string() }),
            ))
        });
        init.handler("push.me", |c: Context, Json(v): Json<Value>| async move {
            for i in 0..v["n"].as_u64().unwrap_or(1) {
                c.push("onGame", Json(json!({ "i": i })))?;
            }
            Ok(())
        });
        init.handler("kick.me", |c: Context, _: ()| async move {
            c.session().kick("kicked by backend");
            Ok(())
        });
        // The dispatch modes on a backend. `mode.concurrent` waits (up to 2 s) until another
        // `mode.*` request runs beside it: with concurrent dispatch the wait ends at once.
        let seen = self.seen.clone();
        init.handler("mode.concurrent", move |_c: Context, _: ()| {
            let seen = seen.clone();
            async move {
                seen.enter();
                let mut rx = seen.running.subscribe();
                // The most at once, not the number now: the other may have ended already.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    rx.wait_for(|(_, most)| *most >= 2),
                )
                .await;
                seen.leave();
                Ok(())
            }
        })
        .dispatch(Dispatch::Concurrent);
        // `mode.serial` gives others every chance to overlap it (a few yields and a timer).
        let seen = self.seen.clone();
        init.handler("mode.serial", move |_c: Context, _: ()| {
            let seen = seen.clone();
            async move {
                seen.enter();
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                seen.leave();
                Ok(())
            }
        })
        .dispatch(Dispatch::Serial);
        // `mode.hold` (serial) runs until released, or 10 s.
        let seen = self.seen.clone();
        init.handler("mode.hold", move |_c: Context, _: ()| {
            let seen = seen.clone();
            async move {
                let mut rx = seen.release.subscribe();
                let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|r| *r)).await;
                Ok(())
            }
        })
        .dispatch(Dispatch::Serial);
        let seen = self.seen.clone();
        init.handler("order.seq", move |_c: Context, Json(v): Json<Value>| {
            let seen = seen.clone();
            async move {
                let seq = v["seq"].as_u64().unwrap_or_default();
                if seq % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen.seq.lock().unwrap().push(seq);
                Ok(Json(json!({ "seq": seq })))
            }
        });
        init.handler(
            "slow.sleep",
            |_c: Context, Json(v): Json<Value>| async move {
                tokio::time::sleep(Duration::from_millis(v["ms"].as_u64().unwrap_or(0))).await;
                Ok(Json(v))
            },
        );
        init.handler("rpc.echo", |c: Context, Json(v): Json<Value>| async move {
            Ok(Json(json!({ "echo": v, "node": c.app().node_id() })))
        })
        .internal();
        init.handler("trace.id", |_c: Context, _: ()| async move {
            let id =
                rookery::telemetry::current_trace_id().map(rookery::telemetry::format_trace_id);
            tracing::info!("backend handler ran");
            Ok(Json(json!({ "trace": id })))
        })
        .internal();
        init.handler("rpc.fail", |_c: Context, _: ()| async move {
            Err::<(), _>(Error::custom("GAME-7", "refused"))
        })
        .internal();
        // A group whose members sit on different gateways.
        init.handler("group.join", |c: Context, _: ()| async move {
            let uid = c.require_uid()?;
            c.app().groups().add("hall", c.session())?;
            c.app().groups().broadcast_except(
                "hall",
                "onHallJoin",
                Json(json!({ "uid": &*uid })),
                Some(&uid),
            );
            Ok(Json(json!({ "members": c.app().groups().members("hall") })))
        })
        .login_required();
        init.handler("group.say", |c: Context, Json(v): Json<Value>| async move {
            let uid = c.require_uid()?;
            let n = c.app().groups().broadcast(
                "hall",
                "onHall",
                Json(json!({ "from": &*uid, "text": v["text"] })),
            );
            Ok(Json(json!({ "delivered": n })))
        })
        .login_required();
        Ok(())
    }

    async fn session_closed(&self, app: &App, session: &Session) {
        self.seen.closed_on.lock().unwrap().push((
            app.node_id().to_string(),
            session.uid().map(|u| u.to_string()).unwrap_or_default(),
        ));
        self.seen.closed.lock().unwrap().push((
            session.gateway().unwrap_or_default().to_string(),
            session.uid().map(|u| u.to_string()).unwrap_or_default(),
            session.close_reason().unwrap_or_default().to_string(),
        ));
    }
}

/// A front module on the gateway (so that it runs some module of its own); records the node
/// events it is told of.
#[derive(Default)]
pub struct Front {
    /// The node events, as lines: `found ID`, `updated ID STATE`, `lost ID`.
    pub events: Arc<Mutex<Vec<String>>>,
}

#[rookery::async_trait]
impl Module for Front {
    fn name(&self) -> &str {
        "front"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.handler("ping.ping", |_c: Context, _: ()| async move {
            Ok(Json(json!({"pong": true})))
        });
        // Returns its own trace id and the one the backend saw for the RPC it makes.
        init.handler("trace.chain", |c: Context, _: ()| async move {
            let mine =
                rookery::telemetry::current_trace_id().map(rookery::telemetry::format_trace_id);
            let Json(theirs): Json<Value> = c.app().rpc().call("game", "game.trace.id", ()).await?;
            Ok(Json(json!({ "gateway": mine, "backend": theirs["trace"] })))
        });
        Ok(())
    }

    async fn node_event(&self, _app: &App, event: &rookery::cluster::NodeEvent) {
        use rookery::cluster::NodeEvent;
        let line = match event {
            NodeEvent::Found(n) => format!("found {}", n.id),
            NodeEvent::Updated(n) => format!("updated {} {:?}", n.id, n.state),
            NodeEvent::Lost(n) => format!("lost {}", n.id),
        };
        self.events.lock().unwrap().push(line);
    }
}

/// A running cluster of four nodes, from [`start`] or [`start_with`].
pub struct Cluster {
    /// `gate-1` (type `gate`, logical `1.1.1`): a frontend with a TCP acceptor on port 0 and
    /// module `front`.
    pub gate: RunningServer,
    /// `gate-2` (type `gate`, logical `1.1.2`), like `gate-1`.
    pub gate2: RunningServer,
    /// Node events gate-1's module saw.
    pub gate_events: Arc<Mutex<Vec<String>>>,
    /// `game-1` and `game-2` (type `game`, logical `1.2.1`, `1.2.2`; `game-2` tagged
    /// `zone=eu`), running module `game`.
    pub backends: Vec<RunningServer>,
    /// What the backends' `game` modules observed.
    pub seen: Arc<Seen>,
    /// The discovery every node shares (a handle of it registers another node).
    pub discovery: EmbeddedDiscovery,
    /// gate-1's own discovery handle: deregistering through it makes gate-1 leave the cluster
    /// as a node whose lease expired would (it keeps running).
    pub gate_discovery: EmbeddedDiscovery,
}

fn node_config(id: &str, node_type: &str, logical: &str, acceptor: bool) -> Config {
    let mut c = Config::default();
    c.node.id = id.into();
    c.node.node_type = node_type.into();
    c.node.logical = Some(logical.into());
    c.node.drain_timeout = 5.0;
    c.gateway.request_timeout = 2.0;
    c.cluster.rpc_timeout = 2.0;
    if acceptor {
        c.gateway.tcp = Some("127.0.0.1:0".into());
    }
    c
}

/// Starts `gate-1`, `gate-2` (type gate, frontends) and `game-1`, `game-2` (type game), each
/// with a transport from `transport()`, and waits until every node knows the others.
pub async fn start(transport: impl Fn() -> Arc<dyn Transport>) -> Cluster {
    start_with(transport, |_| {}, |b| b).await
}

/// [`start`], with a change to every node's config and to the gateways' builders.
pub async fn start_with(
    transport: impl Fn() -> Arc<dyn Transport>,
    tweak: impl Fn(&mut Config),
    gate_builder: impl Fn(rookery::ServerBuilder) -> rookery::ServerBuilder,
) -> Cluster {
    let discovery = EmbeddedDiscovery::new();
    let seen = Arc::new(Seen::default());
    let mut backends = Vec::new();
    for i in 1..=2 {
        let mut cfg = node_config(&format!("game-{i}"), "game", &format!("1.2.{i}"), false);
        if i == 2 {
            cfg.node.tags.insert("zone".into(), "eu".into());
        }
        tweak(&mut cfg);
        backends.push(
            Server::builder(cfg)
                .module(Game { seen: seen.clone() })
                .discovery(Arc::new(discovery.handle()))
                .transport(transport())
                .start()
                .await
                .expect("backend starts"),
        );
    }
    let mut gates = Vec::new();
    let gate_events = Arc::new(Mutex::new(Vec::new()));
    let gate_discovery = discovery.handle();
    for i in 1..=2 {
        let front = Front {
            events: if i == 1 {
                gate_events.clone()
            } else {
                Default::default()
            },
        };
        let mut cfg = node_config(&format!("gate-{i}"), "gate", &format!("1.1.{i}"), true);
        tweak(&mut cfg);
        let handle = if i == 1 {
            gate_discovery.clone()
        } else {
            discovery.handle()
        };
        gates.push(
            gate_builder(Server::builder(cfg))
                .module(front)
                .discovery(Arc::new(handle))
                .transport(transport())
                .start()
                .await
                .expect("gate starts"),
        );
    }
    for g in &gates {
        eventually("gateway sees both backends and the other gateway", || {
            g.app().cluster().running("game").len() == 2 && g.app().cluster().frontends().len() == 2
        })
        .await;
    }
    for b in &backends {
        eventually("backend sees the gateways", || {
            b.app().cluster().frontends().len() == 2
        })
        .await;
    }
    let gate2 = gates.pop().unwrap();
    let gate = gates.pop().unwrap();
    Cluster {
        gate,
        gate2,
        gate_events,
        backends,
        seen,
        discovery,
        gate_discovery,
    }
}

/// Runs the whole transport conformance suite ([`suite`]) on a transport back end: one
/// `#[tokio::test]` per suite function, named after it, so a new `Transport` is checked with one
/// line (the calling crate depends on `tokio` with its `macros` feature).
///
/// - `transport_suite!(factory)`: `factory` is an expression of type
///   `impl Fn() -> Arc<dyn Transport>`, evaluated afresh in each test; each call of it makes one
///   node's transport.
/// - `transport_suite!(async setup)`: `setup` is a future, awaited in each test, whose output is
///   `(guard, factory)`; the guard (a server the transport connects to, say) lives until the test
///   ends.
///
/// ```text
/// rookery_testkit::transport_suite!(|| Arc::new(TcpTransport::new(TcpConfig::default())) as Arc<dyn Transport>);
/// ```
#[macro_export]
macro_rules! transport_suite {
    (@each $setup:expr; $($name:ident)*) => {
        $(
            #[::tokio::test]
            async fn $name() {
                let (_guard, factory) = $setup.await;
                $crate::cluster::suite::$name(factory).await;
            }
        )*
    };
    (async $setup:expr) => {
        $crate::transport_suite!(@each $setup;
            forwarding
            remote_sessions
            users_across_nodes
            cluster_groups
            duplicate_login_across_gateways
            ordering_across_hop
            module_rpc
            graceful_backend_leave
            graceful_drain_in_flight
            route_dictionary
            gateway_loss_closes_its_sessions
            dispatch_modes_on_a_backend
            inbound_calls_are_bounded_per_module
            complete_sessions_on_backends
        );
    };
    ($factory:expr) => {
        $crate::transport_suite!(async async { ((), $factory) });
    };
}
