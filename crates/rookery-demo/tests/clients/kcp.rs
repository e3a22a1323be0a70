//! KCP: the pomelo protocol over UDP, from the Rust client, from Python's `kcp` package (the
//! reference ikcp.c), and through a lossy link.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rookery_client::{Client, ClientOptions};
use rookery_testkit::WAIT;
use serde_json::json;
use tokio::net::UdpSocket;

use super::{config, here, run, start, text};

#[tokio::test]
async fn the_rust_client_plays_over_kcp() {
    let server = start(config()).await;
    let addr = format!("kcp://{}", server.kcp_addr().unwrap());
    let alice = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    let bob = Client::connect(&addr, ClientOptions::default())
        .await
        .unwrap();
    for (c, uid) in [(&alice, "alice"), (&bob, "bob")] {
        let v = c
            .request_json("connector.entry.login", json!({"uid": uid}))
            .await
            .unwrap();
        assert_eq!(v, json!({"uid": uid}));
        c.request_json("room.room.join", json!({"room": "k"}))
            .await
            .unwrap();
    }
    bob.request_json("room.room.say", json!({"room": "k", "text": "over udp"}))
        .await
        .unwrap();
    let heard = alice.next_push("onMessage", WAIT).await.unwrap();
    assert_eq!(
        heard.json::<serde_json::Value>().unwrap(),
        json!({"room": "k", "from": "bob", "text": "over udp"})
    );
    let kcp = server
        .app()
        .sessions()
        .all()
        .iter()
        .filter(|s| s.acceptor() == rookery::Acceptor::Kcp)
        .count();
    assert_eq!(kcp, 2, "both sessions came through the KCP acceptor");
    server.shutdown().await;
}

#[tokio::test]
async fn python_kcp_handshakes_and_requests_also_over_a_lossy_link() {
    let venv = here().join("../../../../target/pykcp/bin/python");
    let python = venv.to_str().unwrap().to_string();
    let server = start(config()).await;
    // Straight to the server, then through a relay that loses every third datagram each way
    // (the exchange is a handful of datagrams).
    let (relay, dropped) = lossy_relay(server.kcp_addr().unwrap(), 3).await;
    for addr in [server.kcp_addr().unwrap(), relay] {
        let port = addr.port().to_string();
        let out = run(
            &python,
            &["kcp_client.py", "127.0.0.1", &port],
            "python3 -m venv target/pykcp && target/pykcp/bin/pip install kcp==0.1.6 (./scripts/test does it)",
        )
        .await;
        let said = text(&out);
        assert!(out.status.success(), "{addr}: {said}");
        for step in ["ok handshake", "ok requests", "done"] {
            assert!(said.contains(step), "{addr}: no {step:?} in\n{said}");
        }
    }
    assert!(
        dropped.load(Ordering::Relaxed) > 0,
        "the relay lost datagrams"
    );
    server.shutdown().await;
}

/// A UDP relay between one client and the server that drops every `nth` datagram each way.
async fn lossy_relay(server: SocketAddr, nth: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let dropped = Arc::new(AtomicU64::new(0));
    let counted = dropped.clone();
    tokio::spawn(async move {
        let mut client = None;
        let (mut up, mut down) = (0u64, 0u64);
        let (mut a, mut b) = (vec![0; 65536], vec![0; 65536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { return };
                    client = Some(from);
                    up += 1;
                    if up % nth == 0 { counted.fetch_add(1, Ordering::Relaxed); continue; }
                    let _ = back.send(&a[..n]).await;
                }
                r = back.recv(&mut b) => {
                    let Ok(n) = r else { return };
                    down += 1;
                    if down % nth == 0 { counted.fetch_add(1, Ordering::Relaxed); continue; }
                    if let Some(c) = client { let _ = front.send_to(&b[..n], c).await; }
                }
            }
        }
    });
    (addr, dropped)
}

#[tokio::test]
async fn requests_complete_over_a_link_that_loses_every_fifth_datagram() {
    let server = start(config()).await;
    let (relay, dropped) = lossy_relay(server.kcp_addr().unwrap(), 5).await;
    let c = Client::connect(&format!("kcp://{relay}"), ClientOptions::default())
        .await
        .unwrap();
    let v = c
        .request_json("connector.entry.login", json!({"uid": "lossy"}))
        .await
        .unwrap();
    assert_eq!(v, json!({"uid": "lossy"}));
    for i in 0..50 {
        let room = format!("r{i}");
        let v = c
            .request_json("room.room.join", json!({"room": room}))
            .await
            .unwrap();
        assert_eq!(v["room"], json!(room), "request {i}");
    }
    assert!(
        dropped.load(Ordering::Relaxed) >= 20,
        "the relay dropped datagrams: {}",
        dropped.load(Ordering::Relaxed)
    );
    server.shutdown().await;
}
