//! Middleware around handlers (node, module and route layers, in that order) and around calls,
//! and typed routes and pushes.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rookery::middleware::{
    Call, CallMiddleware, Deadline, LoginRequired, Middleware, Next, NextCall,
};
use rookery::{
    async_trait, Context, Error, Json, Module, ModuleInit, Push, Route, RpcError, Server,
    StartErrorKind, Target, ToPayload,
};
use rookery_client::ClientError;
use serde_json::{json, Value};

use crate::common::*;

const ECHO: Route<Json<Value>, Json<Value>> = Route::new("mw.h.echo");
const ORDER: Route<(), Json<Vec<String>>> = Route::new("mw.h.order");
const ON_NOTE: Push<Json<Value>> = Push::new("onNote");

type Log = Arc<Mutex<Vec<String>>>;

/// Records its name before and after the rest of the chain.
struct Tag(&'static str, Log);

#[async_trait]
impl Middleware for Tag {
    async fn handle(&self, ctx: Context, payload: Bytes, next: Next<'_>) -> Result<Bytes, Error> {
        self.1.lock().unwrap().push(self.0.to_string());
        let r = next.run(ctx, payload).await;
        self.1.lock().unwrap().push(format!("after {}", self.0));
        r
    }
}

/// Refuses with an application code.
struct Deny;

#[async_trait]
impl Middleware for Deny {
    async fn handle(&self, _: Context, _: Bytes, _: Next<'_>) -> Result<Bytes, Error> {
        Err(Error::custom("MW-DENIED", "refused by a layer"))
    }
}

/// Answers without the handler.
struct Cached;

#[async_trait]
impl Middleware for Cached {
    async fn handle(&self, ctx: Context, _: Bytes, _: Next<'_>) -> Result<Bytes, Error> {
        Json(json!({"cached": true})).to_payload(ctx.serializer())
    }
}

/// Marks the session before the handler runs.
struct Mark;

#[async_trait]
impl Middleware for Mark {
    async fn handle(&self, ctx: Context, payload: Bytes, next: Next<'_>) -> Result<Bytes, Error> {
        ctx.session().set("marked", json!(ctx.route()));
        next.run(ctx, payload).await
    }
}

struct Mw {
    log: Log,
}

#[async_trait]
impl Module for Mw {
    fn name(&self) -> &str {
        "mw"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.middleware(Tag("module", self.log.clone()));
        init.handler(ECHO, |_c: Context, v: Json<Value>| async move { Ok(v) });
        init.method(
            &self,
            ORDER,
            |me: Arc<Self>, _c: Context, (): ()| async move {
                me.log.lock().unwrap().push("handler".into());
                Ok(Json(me.log.lock().unwrap().clone()))
            },
        )
        .middleware(Tag("route", self.log.clone()));
        init.handler("h.denied", |_c: Context, (): ()| async move {
            Ok(Json(json!("the handler ran")))
        })
        .middleware(Deny);
        init.handler("h.cached", |_c: Context, (): ()| async move {
            Ok(Json(json!("the handler ran")))
        })
        .middleware(Cached);
        init.handler("h.marked", |c: Context, (): ()| async move {
            Ok(Json(c.session().get("marked").unwrap_or(Value::Null)))
        })
        .middleware(Mark);
        init.handler(
            "h.login",
            |c: Context, Json(uid): Json<String>| async move {
                c.bind(&uid).await?;
                c.push(ON_NOTE, Json(json!({"hello": uid})))?;
                Ok(())
            },
        );
        // Never answers: its own deadline (far inside the node's) ends it.
        init.handler("h.stuck", |_c: Context, (): ()| async move {
            std::future::pending::<()>().await;
            Ok(())
        })
        .middleware(Deadline(std::time::Duration::from_millis(50)));
        init.push_route(ON_NOTE);
        Ok(())
    }
}

/// Only logged-in sessions get through (a module-wide layer).
struct Locked;

#[async_trait]
impl Module for Locked {
    fn name(&self) -> &str {
        "locked"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.middleware(LoginRequired);
        init.handler("h.hello", |c: Context, (): ()| async move {
            Ok(Json(json!(c.uid().map(|u| u.to_string()))))
        });
        Ok(())
    }
}

async fn start_mw() -> (rookery::RunningServer, Log) {
    let log = Log::default();
    let server = Server::builder(config())
        .middleware(Tag("node", log.clone()))
        .module(Mw { log: log.clone() })
        .module(Locked)
        .start()
        .await
        .expect("starts");
    (server, log)
}

fn code_of(r: Result<Value, ClientError>) -> String {
    match r {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[tokio::test]
async fn layers_run_node_then_module_then_route_for_clients_and_calls() {
    let (server, log) = start_mw().await;
    let c = client(&server).await;
    let order = c.request_json(ORDER.name(), json!({})).await.unwrap();
    assert_eq!(
        order,
        json!(["node", "module", "route", "handler"]),
        "layers outermost first"
    );
    assert_eq!(
        log.lock().unwrap().split_off(4),
        ["after route", "after module", "after node"],
        "and back out in reverse"
    );
    log.lock().unwrap().clear();

    // An RPC call reaches the same handler through the same layers.
    let Json(order) = server
        .app()
        .rpc()
        .call(Target::Module("mw".into()), ORDER, ())
        .await
        .unwrap();
    assert_eq!(order, ["node", "module", "route", "handler"]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_layer_rejects_answers_or_changes_the_session() {
    let (server, _log) = start_mw().await;
    let c = client(&server).await;
    assert_eq!(
        code_of(c.request_json("mw.h.denied", json!({})).await),
        "MW-DENIED"
    );
    // The route's own deadline (its message), not the node's request timeout.
    match c.request_json("mw.h.stuck", json!({})).await {
        Err(ClientError::Server { code, msg, .. }) => {
            assert_eq!(code, "RK-408");
            assert!(msg.contains("did not answer within 50ms"), "{msg}");
        }
        other => panic!("expected RK-408, got {other:?}"),
    }
    assert_eq!(
        c.request_json("mw.h.cached", json!({})).await.unwrap(),
        json!({"cached": true})
    );
    assert_eq!(
        c.request_json("mw.h.marked", json!({})).await.unwrap(),
        json!("mw.h.marked"),
        "the handler sees what the layer wrote in the session"
    );
    // A module-wide login check.
    assert_eq!(
        code_of(c.request_json("locked.h.hello", json!({})).await),
        "RK-401"
    );
    c.request_json("mw.h.login", json!("ann")).await.unwrap();
    let note = c
        .next_push(ON_NOTE.name(), WAIT)
        .await
        .expect("the typed push");
    assert_eq!(note.json::<Value>().unwrap(), json!({"hello": "ann"}));
    assert_eq!(
        c.request_json("locked.h.hello", json!({})).await.unwrap(),
        json!("ann")
    );
    server.shutdown().await;
}

/// Rewrites calls to `mw.h.alias` into `mw.h.echo`, answers `mw.h.local` itself, and counts.
struct Redirect(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl CallMiddleware for Redirect {
    async fn call(&self, mut call: Call, next: NextCall<'_>) -> Result<Bytes, RpcError> {
        self.0.lock().unwrap().push(call.route.clone());
        match call.route.as_str() {
            "mw.h.local" => Ok(Bytes::from_static(b"\"from the layer\"")),
            "mw.h.alias" => {
                call.route = ECHO.name().into();
                next.run(call).await
            }
            _ => next.run(call).await,
        }
    }
}

#[tokio::test]
async fn call_layers_see_change_and_answer_outgoing_calls() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = Server::builder(config())
        .call_middleware(Redirect(seen.clone()))
        .module(Mw {
            log: Log::default(),
        })
        .start()
        .await
        .unwrap();
    let rpc = server.app().rpc();
    let target = || Target::Module("mw".into());
    let Json(v): Json<Value> = rpc
        .call(target(), "mw.h.alias", Json(json!(7)))
        .await
        .unwrap();
    assert_eq!(v, json!(7));
    let Json(v): Json<Value> = rpc.call(target(), "mw.h.local", ()).await.unwrap();
    assert_eq!(v, json!("from the layer"));
    // Typed: the compiler knows the result is `Json<Value>`.
    let Json(v) = rpc
        .call(target(), ECHO, Json(json!({"a": 1})))
        .await
        .unwrap();
    assert_eq!(v, json!({"a": 1}));
    assert_eq!(
        *seen.lock().unwrap(),
        ["mw.h.alias", "mw.h.local", "mw.h.echo"]
    );
    server.shutdown().await;
}

/// A typed route names its module: registering it from another module is a start error.
#[tokio::test]
async fn a_typed_route_of_another_module_is_refused_at_start() {
    struct Wrong;
    #[async_trait]
    impl Module for Wrong {
        fn name(&self) -> &str {
            "wrong"
        }
        fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
            init.handler(ECHO, |_c: Context, v: Json<Value>| async move { Ok(v) });
            Ok(())
        }
    }
    let err = Server::builder(config())
        .module(Wrong)
        .start()
        .await
        .err()
        .expect("refused");
    assert_eq!(err.kind(), StartErrorKind::Routes);
    assert!(err.to_string().contains("mw.h.echo"), "{err}");
}
