//! The admin API: JSON shapes, and the token that guards the POST endpoints.

use std::time::Duration;

use crate::common::{client, config, get_json, http, start, start_pair, WAIT};
use serde_json::json;

const TOKEN: &str = "ops-s3cret";

fn with_token() -> rookery::Config {
    let mut c = config();
    c.admin.token = Some(TOKEN.into());
    c
}

#[tokio::test]
async fn read_endpoints_have_their_shapes() {
    let node = start(with_token()).await;
    let alice = client(&node, Some("alice")).await;
    let anon = client(&node, None).await;
    alice
        .request_json("ops.group.join", json!({"group": "lobby"}))
        .await
        .unwrap();
    for i in 0..3 {
        anon.request_json("ops.echo.json", json!({ "i": i }))
            .await
            .unwrap();
    }
    let _ = anon.request_json("ops.fail.custom", json!({})).await;

    let me = get_json(node.admin, "/api/node").await;
    assert_eq!(me["id"], "ops-test-1");
    assert_eq!(me["type"], "game");
    assert_eq!(me["state"], "available");
    assert!(me["modules"].as_array().unwrap().contains(&json!("ops")));

    let nodes = get_json(node.admin, "/api/nodes").await;
    let nodes = nodes.as_array().unwrap();
    assert!(nodes.iter().any(|n| n["id"] == "ops-test-1"), "{nodes:?}");

    let s = get_json(node.admin, "/api/sessions").await;
    assert_eq!(s["count"], 2);
    assert_eq!(s["bound"], 1);
    assert_eq!(
        (s["offset"].as_u64(), s["limit"].as_u64()),
        (Some(0), Some(100))
    );
    let page = s["page"].as_array().unwrap();
    assert_eq!(page.len(), 2);
    let a = page
        .iter()
        .find(|p| p["uid"] == "alice")
        .expect("alice listed");
    assert_eq!(a["gateway"], "ops-test-1");
    assert_eq!(a["acceptor"], "tcp");
    assert!(a["id"].is_u64());
    assert!(a["age_secs"].as_f64().unwrap() >= 0.0);
    assert!(a["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(page.iter().any(|p| p["uid"].is_null()));
    // Paging, and the cap on the page size.
    let p = get_json(node.admin, "/api/sessions?offset=1&limit=1").await;
    assert_eq!(p["page"].as_array().unwrap().len(), 1);
    assert_eq!(p["page"][0]["id"], page[1]["id"]);
    let p = get_json(node.admin, "/api/sessions?limit=100000").await;
    assert_eq!(p["limit"], 500);
    let bad = http(node.admin, "GET", "/api/sessions?limit=lots", &[], b"").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["code"], "RK-400");

    let routes = get_json(node.admin, "/api/routes").await;
    let routes = routes.as_array().unwrap();
    let find = |r: &str| routes.iter().find(|x| x["route"] == r).unwrap().clone();
    let echo = find("ops.echo.json");
    assert!(echo["code"].as_u64().unwrap() > 0);
    assert_eq!(echo["internal"], false);
    assert_eq!(echo["login_required"], false);
    assert_eq!(echo["requests"], 3);
    assert_eq!(echo["errors"], 0);
    assert_eq!(find("ops.fail.custom")["errors"], 1);
    assert_eq!(find("ops.auth.whoami")["login_required"], true);
    let hidden = find("ops.internal.only");
    assert_eq!(
        (hidden["internal"].as_bool(), hidden["code"].as_u64()),
        (Some(true), Some(0))
    );

    let groups = get_json(node.admin, "/api/groups").await;
    assert_eq!(groups, json!([{"name": "lobby", "members": 1}]));

    let stats = get_json(node.admin, "/api/stats").await;
    assert_eq!(stats["sessions"], 2);
    assert!(stats["requests_total"].as_u64().unwrap() >= 6, "{stats}");
    assert!(stats["pushes_sent_total"].is_u64());
    let echo = stats["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "ops.echo.json")
        .unwrap();
    assert_eq!(echo["requests"], 3);
    assert!(echo["p99_ms"].as_f64().unwrap() > 0.0, "{echo}");
    let errors = stats["errors"].as_array().unwrap();
    let e = errors.last().expect("the failed request is listed");
    assert_eq!(
        (e["route"].as_str(), e["code"].as_str()),
        (Some("ops.fail.custom"), Some("ROOM-FULL"))
    );
    assert_eq!(e["trace_id"].as_str().unwrap().len(), 16);
    // Every reason, in a fixed order, none yet.
    let reasons: Vec<_> = stats["disconnects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["total"], 0, "{d}");
            d["reason"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "rate_limit",
            "slow_client",
            "protocol_error",
            "heartbeat_timeout",
            "handshake_timeout",
            "handshake_refused",
            "kick",
            "duplicate_login",
            "shutdown"
        ]
    );

    // The dashboard and unknown endpoints.
    let page = http(node.admin, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains(r#"id="node-id""#));
    let nope = http(node.admin, "GET", "/api/nope", &[], b"").await;
    assert_eq!(
        (nope.status, nope.json()["code"].as_str()),
        (404, Some("RK-404"))
    );

    alice.close().await;
    anon.close().await;
    node.shutdown().await;
}

#[tokio::test]
async fn kick_with_the_token_kicks_the_client() {
    let node = start(with_token()).await;
    let bob = client(&node, Some("bob")).await;
    let auth = format!("Bearer {TOKEN}");
    let body = br#"{"uid":"bob","reason":"maintenance"}"#;

    // No header, a wrong token, a wrong scheme: 401, and bob stays.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer nope")],
        vec![("Authorization", "Bearer ops-s3creT")],
        vec![("Authorization", TOKEN)],
    ] {
        let r = http(node.admin, "POST", "/api/kick", &headers, body).await;
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert_eq!(r.json()["code"], "RK-401");
    }
    assert!(node.server.app().sessions().by_uid("bob").is_some());

    // A bad body with the right token: 400.
    let r = http(
        node.admin,
        "POST",
        "/api/kick",
        &[("Authorization", &auth)],
        b"{",
    )
    .await;
    assert_eq!((r.status, r.json()["code"].as_str()), (400, Some("RK-400")));

    let r = http(
        node.admin,
        "POST",
        "/api/kick",
        &[("Authorization", &auth)],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["ok"], true);
    let closed = tokio::time::timeout(WAIT, bob.closed())
        .await
        .expect("bob closed");
    assert!(closed.kicked, "{closed:?}");
    assert_eq!(closed.reason.as_deref(), Some("maintenance"));
    // The kick is a disconnect by the server: in the stats (once bob's connection has ended)
    // and in the metric.
    let app = node.server.app().clone();
    let kick = rookery::telemetry::DisconnectReason::Kick;
    crate::common::eventually("the kick counted", || app.disconnects().total(kick) == 1).await;
    let stats = get_json(node.admin, "/api/stats").await;
    let total = |reason: &str| {
        stats["disconnects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["reason"] == reason)
            .unwrap_or_else(|| panic!("{reason} missing: {stats}"))["total"]
            .as_u64()
    };
    assert_eq!(total("kick"), Some(1), "{stats}");
    assert_eq!(total("duplicate_login"), Some(0), "{stats}");
    let metrics = http(node.admin, "GET", "/metrics", &[], b"").await.text();
    assert!(
        crate::common::series(&metrics, r#"rookery_disconnects_total{reason="kick"}"#)
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn broadcast_with_the_token_reaches_every_session() {
    let node = start(with_token()).await;
    let a = client(&node, Some("a")).await;
    let b = client(&node, None).await;
    let auth = format!("Bearer {TOKEN}");
    let r = http(
        node.admin,
        "POST",
        "/api/broadcast",
        &[("Authorization", &auth)],
        br#"{"route":"onSystem","message":{"text":"restart in 5 min"}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["delivered_here"], 2);
    for c in [&a, &b] {
        let p = c.next_push("onSystem", WAIT).await.expect("push arrives");
        assert_eq!(
            p.json::<serde_json::Value>().unwrap(),
            json!({"text": "restart in 5 min"})
        );
    }
    let r = http(
        node.admin,
        "POST",
        "/api/broadcast",
        &[("Authorization", &auth)],
        br#"{"route":"","message":1}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    node.shutdown().await;
}

#[tokio::test]
async fn without_a_configured_token_the_api_is_read_only() {
    let node = start(config()).await;
    let carol = client(&node, Some("carol")).await;
    for (path, body) in [
        ("/api/kick", &br#"{"uid":"carol"}"#[..]),
        (
            "/api/broadcast",
            &br#"{"route":"onSystem","message":{}}"#[..],
        ),
    ] {
        for headers in [vec![], vec![("Authorization", "Bearer anything")]] {
            let r = http(node.admin, "POST", path, &headers, body).await;
            assert_eq!(r.status, 403, "{path}");
            assert_eq!(r.json()["msg"], "read-only: set admin.token");
        }
    }
    // Reads still work, and carol was not kicked.
    get_json(node.admin, "/api/sessions").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(node.server.app().sessions().by_uid("carol").is_some());
    carol.close().await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_gateway_sees_the_cluster() {
    let (gate, back) = start_pair().await;
    let nodes = get_json(gate.admin, "/api/nodes").await;
    let ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["back-1", "gate-1"]);
    let text = http(gate.admin, "GET", "/metrics", &[], b"").await.text();
    assert!(text.contains(r#"rookery_nodes{type="backend"}"#), "{text}");
    assert!(
        text.contains(r#"rookery_discovery_events_total{kind="found"}"#),
        "{text}"
    );
    gate.shutdown().await;
    back.shutdown().await;
}
