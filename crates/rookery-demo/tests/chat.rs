//! The demo chat game end to end: login, rooms, pushes, leave on close and kick, over TCP and
//! WebSocket.

use rookery::{RunningServer, Server};
use rookery_client::{Client, ClientError, ClientOptions};
use rookery_testkit::server::{config, tcp_addr, ws_url};
use rookery_testkit::WAIT;
use serde_json::{json, Value};

async fn start() -> RunningServer {
    rookery_testkit::server::start(rookery_demo::modules(Server::builder(config()))).await
}

async fn login(server: &RunningServer, uid: &str, ws: bool) -> Client {
    let addr = if ws { ws_url(server) } else { tcp_addr(server) };
    let c = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    let v = c
        .request_json("connector.entry.login", json!({"uid": uid}))
        .await
        .unwrap();
    assert_eq!(v, json!({"uid": uid}));
    c
}

async fn push(c: &Client, route: &str) -> Value {
    c.next_push(route, WAIT).await.unwrap().json().unwrap()
}

fn code(r: Result<Value, ClientError>) -> String {
    match r {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[tokio::test]
async fn join_say_leave_with_pushes() {
    let server = start().await;
    let alice = login(&server, "alice", false).await;
    let bob = login(&server, "bob", true).await;

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

    let v = bob
        .request_json("room.room.say", json!({"room": "lobby", "text": "hi"}))
        .await
        .unwrap();
    assert_eq!(v, json!({}));
    let expected = json!({"room": "lobby", "from": "bob", "text": "hi"});
    assert_eq!(push(&alice, "onMessage").await, expected);
    assert_eq!(
        push(&bob, "onMessage").await,
        expected,
        "sender gets it too"
    );

    // `say` as a notify.
    alice
        .notify("room.room.say", &json!({"room": "lobby", "text": "yo"}))
        .await
        .unwrap();
    let expected = json!({"room": "lobby", "from": "alice", "text": "yo"});
    assert_eq!(push(&bob, "onMessage").await, expected);
    assert_eq!(push(&alice, "onMessage").await, expected);

    let v = alice
        .request_json("room.room.list", json!({}))
        .await
        .unwrap();
    assert_eq!(v, json!({"rooms": [{"room": "lobby", "members": 2}]}));

    let v = bob
        .request_json("room.room.leave", json!({"room": "lobby"}))
        .await
        .unwrap();
    assert_eq!(v, json!({}));
    assert_eq!(
        push(&alice, "onLeave").await,
        json!({"room": "lobby", "uid": "bob"})
    );
    let v = alice
        .request_json("room.room.list", json!({}))
        .await
        .unwrap();
    assert_eq!(v, json!({"rooms": [{"room": "lobby", "members": 1}]}));
    server.shutdown().await;
}

#[tokio::test]
async fn errors_for_login_and_bad_bodies() {
    let server = start().await;
    let anon = Client::connect(&tcp_addr(&server), ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(
        code(
            anon.request_json("room.room.join", json!({"room": "x"}))
                .await
        ),
        "RK-401"
    );
    assert_eq!(
        code(
            anon.request_json("room.room.say", json!({"room": "x", "text": "t"}))
                .await
        ),
        "RK-401"
    );
    // list needs no login.
    assert_eq!(
        anon.request_json("room.room.list", json!({}))
            .await
            .unwrap(),
        json!({"rooms": []})
    );
    let c = login(&server, "carol", false).await;
    assert_eq!(
        code(c.request_json("room.room.join", json!({})).await),
        "RK-400"
    );
    assert_eq!(
        code(c.request_json("room.room.join", json!({"room": 5})).await),
        "RK-400"
    );
    assert_eq!(
        code(
            c.request_json("room.room.leave", json!({"room": "nowhere"}))
                .await
        ),
        "RK-400"
    );
    assert_eq!(
        code(c.request_json("room.room.nope", json!({})).await),
        "RK-404"
    );
    assert_eq!(
        code(
            c.request_json("connector.entry.login", json!({"uid": ""}))
                .await
        ),
        "RK-400"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn members_leave_when_their_session_closes_or_is_kicked() {
    let server = start().await;
    let alice = login(&server, "alice", false).await;
    let bob = login(&server, "bob", false).await;
    let carol = login(&server, "carol", true).await;
    for c in [&alice, &bob, &carol] {
        c.request_json("room.room.join", json!({"room": "r1"}))
            .await
            .unwrap();
    }
    // Bob disconnects: the others get onLeave.
    bob.close().await;
    assert_eq!(
        push(&alice, "onLeave").await,
        json!({"room": "r1", "uid": "bob"})
    );
    assert_eq!(
        push(&carol, "onLeave").await,
        json!({"room": "r1", "uid": "bob"})
    );

    // Carol logs in again elsewhere: the older session is kicked and leaves the room.
    let carol2 = login(&server, "carol", false).await;
    let closed = carol.closed().await;
    assert!(closed.kicked);
    assert_eq!(closed.reason.as_deref(), Some("duplicate login"));
    assert_eq!(
        push(&alice, "onLeave").await,
        json!({"room": "r1", "uid": "carol"})
    );
    let v = carol2
        .request_json("room.room.join", json!({"room": "r1"}))
        .await
        .unwrap();
    assert_eq!(v, json!({"room": "r1", "members": ["alice", "carol"]}));
    assert_eq!(
        push(&alice, "onJoin").await,
        json!({"room": "r1", "uid": "carol"})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rooms_are_separate() {
    let server = start().await;
    let a = login(&server, "a", false).await;
    let b = login(&server, "b", false).await;
    a.request_json("room.room.join", json!({"room": "red"}))
        .await
        .unwrap();
    b.request_json("room.room.join", json!({"room": "blue"}))
        .await
        .unwrap();
    a.request_json("room.room.say", json!({"room": "red", "text": "only red"}))
        .await
        .unwrap();
    b.request_json(
        "room.room.say",
        json!({"room": "blue", "text": "only blue"}),
    )
    .await
    .unwrap();
    assert_eq!(push(&a, "onMessage").await["text"], "only red");
    assert_eq!(push(&b, "onMessage").await["text"], "only blue");
    assert_eq!(
        code(
            a.request_json("room.room.say", json!({"room": "blue", "text": "x"}))
                .await
        ),
        "RK-400"
    );
    let v = a.request_json("room.room.list", json!({})).await.unwrap();
    assert_eq!(
        v,
        json!({"rooms": [{"room": "blue", "members": 1}, {"room": "red", "members": 1}]})
    );
    server.shutdown().await;
}
