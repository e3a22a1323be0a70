//! Groups and pushes through the framework API: group broadcast, push to uid, broadcast to all,
//! membership cleanup on close, and fan-out to sessions with different serializers.

use crate::common::*;
use rookery::{Json, Msg, Serializer};
use rookery_client::{Client, ClientOptions};
use serde_json::{json, Value};

async fn logged_in(server: &rookery::RunningServer, uid: &str, ser: Serializer) -> Client {
    let c = Client::connect(
        &tcp_addr(server),
        ClientOptions {
            serializer: Some(ser),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    // Login through a raw handler so that protobuf sessions can log in too.
    c.request_raw("test.echo.raw", bytes::Bytes::new())
        .await
        .unwrap();
    let s = server
        .app()
        .sessions()
        .all()
        .into_iter()
        .find(|s| s.uid().is_none() && s.serializer() == ser)
        .expect("the new session");
    server.app().sessions().bind(&s, uid).unwrap();
    c
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
struct Note {
    #[prost(string, tag = "1")]
    text: String,
}

#[tokio::test]
async fn group_broadcast_reaches_members_in_their_serializer() {
    let (server, _) = start(config()).await;
    let app = server.app().clone();
    let a = logged_in(&server, "a", Serializer::Json).await;
    let b = logged_in(&server, "b", Serializer::Protobuf).await;
    let outsider = logged_in(&server, "c", Serializer::Json).await;
    let groups = app.groups();
    for uid in ["a", "b"] {
        let s = app.sessions().by_uid(uid).unwrap();
        assert!(groups.add("guild", &s).unwrap());
    }
    assert!(!groups
        .add("guild", &app.sessions().by_uid("a").unwrap())
        .unwrap());
    assert_eq!(groups.members("guild"), vec!["a", "b"]);

    let sent = groups.broadcast("guild", "onNote", Msg(Note { text: "hi".into() }));
    assert_eq!(sent, 2);
    let pa = a.next_push("onNote", WAIT).await.unwrap();
    assert_eq!(pa.json::<Value>().unwrap(), json!({"text": "hi"}));
    let pb = b.next_push("onNote", WAIT).await.unwrap();
    let note: Note = prost::Message::decode(pb.payload).unwrap();
    assert_eq!(note.text, "hi");

    // The outsider got nothing from the group: the next thing it sees is a direct push.
    app.push_to_uid("c", "onDirect", Json(json!({"n": 1})))
        .await
        .unwrap();
    let first = outsider.next_event().await.unwrap();
    match first {
        rookery_client::Event::Push(p) => assert_eq!(p.route, "onDirect"),
        other => panic!("unexpected {other:?}"),
    }

    // Everyone.
    assert_eq!(app.broadcast("onAll", Json(json!({}))).await, 3);
    for c in [&a, &outsider] {
        c.next_push("onAll", WAIT).await.unwrap();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn members_leave_groups_when_sessions_close() {
    let (server, probe) = start(config()).await;
    let app = server.app().clone();
    let a = logged_in(&server, "a", Serializer::Json).await;
    let _b = logged_in(&server, "b", Serializer::Json).await;
    assert!(app.groups().create("lobby"));
    for uid in ["a", "b"] {
        app.groups()
            .add("lobby", &app.sessions().by_uid(uid).unwrap())
            .unwrap();
        app.groups()
            .add(&format!("solo-{uid}"), &app.sessions().by_uid(uid).unwrap())
            .unwrap();
    }
    a.close().await;
    eventually("a's session closed", || {
        probe.closed.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(app.groups().members("lobby"), vec!["b"]);
    // Implicit groups vanish with their last member; created ones stay.
    assert!(!app.groups().exists("solo-a"));
    assert!(app.groups().exists("solo-b"));
    assert!(app.groups().remove("lobby", "b"));
    assert!(app.groups().exists("lobby"));
    assert!(app.groups().delete("lobby"));
    assert_eq!(
        app.groups().groups_of(&app.sessions().by_uid("b").unwrap()),
        vec!["solo-b"]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn adding_an_anonymous_session_is_rk401() {
    let (server, _) = start(config()).await;
    let c = client(&server).await;
    // The session exists once the server has answered a request.
    c.request_raw("test.echo.raw", bytes::Bytes::new())
        .await
        .unwrap();
    let s = server.app().sessions().all().pop().unwrap();
    let err = server.app().groups().add("g", &s).unwrap_err();
    assert_eq!(err.code(), "RK-401");
    server.shutdown().await;
}
