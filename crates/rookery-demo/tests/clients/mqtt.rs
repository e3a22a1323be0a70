//! MQTT 3.1.1: MQTT.js and mosquitto's tools through the demo, and raw packets (rumqttc's
//! codec) for the delivery window and for what a broken or hostile client sends.

use bytes::BytesMut;
use rookery_testkit::{eventually, WAIT};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode,
};
use rumqttc::mqttbytes::QoS;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{config, here, run, start, text};

/// A hand-driven MQTT connection.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(addr: std::net::SocketAddr) -> Self {
        Self {
            s: TcpStream::connect(addr).await.expect("connect"),
            buf: BytesMut::new(),
        }
    }

    /// Connects and logs in as `user` (the test config binds the username).
    async fn login(addr: std::net::SocketAddr, user: &str, keep_alive: u16) -> Self {
        let mut r = Self::open(addr).await;
        let mut c = Connect::new(user);
        c.keep_alive = keep_alive;
        c.set_login(user, "secret");
        r.send(Packet::Connect(c)).await;
        assert_eq!(
            r.next().await,
            Some(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                false
            )))
        );
        r
    }

    async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).expect("encodes");
        self.raw(&b).await;
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// The next packet; `None` once the server has closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                match Packet::read(&mut self.buf, 1 << 20) {
                    Ok(p) => return Some(p),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("the server sent a malformed packet: {e}"),
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a packet or the end within WAIT")
    }

    /// The next PUBLISH, skipping nothing else.
    async fn publish(&mut self) -> Publish {
        match self.next().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }

    /// The server closes the connection (after what it still had to say, returned).
    async fn closed(&mut self) -> Vec<Packet> {
        let mut said = Vec::new();
        while let Some(p) = self.next().await {
            said.push(p);
        }
        said
    }
}

fn mqtt_js(install: &str) {
    assert!(
        here().join("node_modules/mqtt").is_dir(),
        "MQTT.js is not installed: {install}"
    );
}

#[tokio::test]
async fn mqtt_js_drives_the_chat_flow_over_tcp_and_websocket() {
    let install = "npm ci --prefix crates/rookery-demo/tests/clients (./scripts/test does it)";
    mqtt_js(install);
    let server = start(config()).await;
    let tcp = format!("mqtt://{}", server.mqtt_addr().unwrap());
    let ws = format!("ws://{}/mqtt", server.mqtt_ws_addr().unwrap());
    for url in [tcp, ws] {
        let out = run("node", &["mqtt_chat.mjs", &url], install).await;
        let said = text(&out);
        assert!(out.status.success(), "{url}: {said}");
        for step in [
            "ok login",
            "ok join",
            "ok say",
            "ok unknown route",
            "ok mqant",
            "ok duplicate login",
            "done",
        ] {
            assert!(said.contains(step), "{url}: no {step:?} in\n{said}");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn mosquitto_tools_log_in_receive_pushes_and_hear_a_duplicate_login_kick() {
    let install = "apt-get install mosquitto-clients";
    let server = start(config()).await;
    let port = server.mqtt_addr().unwrap().port().to_string();
    let app = server.app().clone();
    // mosquitto_sub logs in as alice (its username) and prints two messages, then exits.
    let sub = {
        let port = port.clone();
        tokio::spawn(async move {
            let args = [
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-i",
                "alice-sub",
                "-u",
                "alice",
                "-P",
                "pw",
                "-t",
                "#",
                "-q",
                "1",
                "-v",
                "-C",
                "2",
            ];
            run("mosquitto_sub", &args, install).await
        })
    };
    eventually("alice's mosquitto_sub session", || {
        app.sessions().by_uid("alice").is_some()
    })
    .await;
    // A push to alice, at QoS 1 (her subscription's).
    let n = app
        .push_to_uid(
            "alice",
            "onMessage",
            rookery::Json(json!({"text": "hello"})),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // mosquitto_pub logs in as alice through the login route: duplicate login.
    let args = [
        "-d",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        "alice-pub",
        "-q",
        "1",
        "-t",
        "connector/entry/login/1",
        "-m",
        r#"{"uid":"alice"}"#,
    ];
    let publ = run("mosquitto_pub", &args, install).await;
    assert!(publ.status.success(), "{}", text(&publ));
    assert!(
        String::from_utf8_lossy(&publ.stderr).contains("received PUBACK")
            || String::from_utf8_lossy(&publ.stdout).contains("received PUBACK"),
        "QoS 1 publish acknowledged: {}",
        text(&publ)
    );
    let out = sub.await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(
        lines,
        [
            r#"onMessage {"text":"hello"}"#,
            r#"sys/kick {"reason":"duplicate login"}"#
        ],
        "{}",
        text(&out)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_connects_get_connack_codes_or_a_close() {
    let server = start(config()).await;
    let addr = server.mqtt_addr().unwrap();

    // MQTT 3.1 ("MQIsdp", level 3): unacceptable protocol version.
    let mut r = Raw::open(addr).await;
    let mut v31 = vec![0x10, 0];
    v31.extend_from_slice(&[
        0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 10, 0, 1, b'x',
    ]);
    v31[1] = (v31.len() - 2) as u8;
    r.raw(&v31).await;
    let said = r.closed().await;
    assert_eq!(
        said,
        [Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::RefusedProtocolVersion,
            false
        ))]
    );

    // MQTT 5 (level 5): the same.
    let mut r = Raw::open(addr).await;
    let mut c = Connect::new("five");
    c.protocol = rumqttc::mqttbytes::Protocol::V5;
    r.send(Packet::Connect(c)).await;
    assert_eq!(
        r.closed().await,
        [Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::RefusedProtocolVersion,
            false
        ))]
    );

    // An empty client id needs a clean session.
    let mut r = Raw::open(addr).await;
    let mut c = Connect::new("");
    c.clean_session = false;
    r.send(Packet::Connect(c)).await;
    assert_eq!(
        r.closed().await,
        [Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::BadClientId,
            false
        ))]
    );

    // Anything but CONNECT first: closed without a word.
    let mut r = Raw::open(addr).await;
    r.send(Packet::PingReq).await;
    assert_eq!(r.closed().await, []);
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_and_forbidden_packets_close_only_their_own_connection() {
    let mut cfg = config();
    cfg.gateway.max_packet_size = 4096;
    let server = start(cfg).await;
    let addr = server.mqtt_addr().unwrap();
    let mut calm = Raw::login(addr, "calm", 30).await;

    // A remaining length over the packet-size limit (closed before anything is read for it),
    // and one of five bytes (four at most): the client hears why, then is closed.
    for (user, bytes, why) in [
        ("big", &[0x30, 0xff, 0xff, 0xff, 0x7f][..], "limit exceeded"),
        (
            "bad",
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..],
            "emaining length",
        ),
    ] {
        let mut r = Raw::login(addr, user, 30).await;
        r.raw(bytes).await;
        assert_kicked(&r.closed().await, why);
    }
    // A second CONNECT, and a QoS 2 PUBLISH: the client hears why, then is closed.
    for (user, packet, why) in [
        (
            "twice",
            Packet::Connect(Connect::new("twice")),
            "a second CONNECT",
        ),
        (
            "qos2",
            Packet::Publish({
                let mut p = Publish::new("room/room/list/1", QoS::ExactlyOnce, "{}");
                p.pkid = 1;
                p
            }),
            "QoS 2 is not supported",
        ),
    ] {
        let mut r = Raw::login(addr, user, 30).await;
        r.send(packet).await;
        assert_kicked(&r.closed().await, why);
    }
    // A QoS 2 subscription is refused (0x80); QoS 0 and 1 are granted; the connection stays.
    let mut s = Subscribe::new("onMessage", QoS::ExactlyOnce);
    s.add("onJoin".into(), QoS::AtLeastOnce);
    s.pkid = 5;
    calm.send(Packet::Subscribe(s)).await;
    match calm.next().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.pkid, 5);
            assert_eq!(
                ack.return_codes,
                [
                    SubscribeReasonCode::Failure,
                    SubscribeReasonCode::Success(QoS::AtLeastOnce)
                ]
            );
        }
        other => panic!("expected a SUBACK, got {other:?}"),
    }
    // Filters beyond the 128 a client may hold are refused, not kept.
    let mut many = Subscribe::new("t/0", QoS::AtMostOnce);
    for i in 1..200 {
        many.add(format!("t/{i}"), QoS::AtMostOnce);
    }
    many.pkid = 6;
    calm.send(Packet::Subscribe(many)).await;
    match calm.next().await {
        Some(Packet::SubAck(ack)) => {
            let granted = ack
                .return_codes
                .iter()
                .filter(|c| matches!(c, SubscribeReasonCode::Success(_)))
                .count();
            assert_eq!(
                (granted, ack.return_codes.len()),
                (127, 200),
                "onJoin holds one"
            );
        }
        other => panic!("expected a SUBACK, got {other:?}"),
    }
    // A topic too long to be a route is answered with RK-400 on that topic; the client stays.
    let long = format!("{}/h/m/3", "x".repeat(300));
    calm.send(Packet::Publish(Publish::new(
        long.as_str(),
        QoS::AtMostOnce,
        "{}",
    )))
    .await;
    let answer = calm.publish().await;
    assert_eq!(answer.topic, long);
    let err: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(err["code"], "RK-400", "{err}");
    // The calm client was never disturbed: it still gets answers.
    calm.send(Packet::PingReq).await;
    assert_eq!(calm.next().await, Some(Packet::PingResp));
    calm.send(Packet::Publish(Publish::new(
        "room/room/list/9",
        QoS::AtMostOnce,
        "",
    )))
    .await;
    let answer = calm.publish().await;
    assert_eq!(answer.topic, "room/room/list/9");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&answer.payload).unwrap(),
        json!({"rooms": []})
    );
    server.shutdown().await;
}

/// What a closed connection was told last: a kick whose reason says `why`.
fn assert_kicked(said: &[Packet], why: &str) {
    let [Packet::Publish(kick)] = said else {
        panic!("expected the kick's reason, got {said:?}");
    };
    assert_eq!(kick.topic, "sys/kick");
    let reason: serde_json::Value = serde_json::from_slice(&kick.payload).unwrap();
    let text = reason["reason"].as_str().unwrap();
    assert!(text.contains(why), "{why:?} not in {text:?}");
}

#[tokio::test]
async fn qos1_pushes_wait_for_the_window_and_are_sent_again_until_acknowledged() {
    let mut cfg = config();
    cfg.mqtt.inflight = 2;
    cfg.mqtt.redeliver = 0.2;
    let server = start(cfg).await;
    let app = server.app().clone();
    let mut r = Raw::login(server.mqtt_addr().unwrap(), "dave", 30).await;
    let mut s = Subscribe::new("onMessage", QoS::AtLeastOnce);
    s.pkid = 1;
    r.send(Packet::Subscribe(s)).await;
    assert!(matches!(r.next().await, Some(Packet::SubAck(_))));
    for n in 1..=3 {
        let sent = app
            .push_to_uid("dave", "onMessage", rookery::Json(json!(n)))
            .await
            .unwrap();
        assert_eq!(sent, 1);
    }
    let first = r.publish().await;
    let second = r.publish().await;
    assert_eq!((first.pkid, &first.payload[..]), (1, &b"1"[..]));
    assert_eq!((second.pkid, &second.payload[..]), (2, &b"2"[..]));
    assert!(!first.dup && first.qos == QoS::AtLeastOnce);
    // The window is full: what comes next is the first one again, marked DUP, not the third.
    let again = r.publish().await;
    assert!(again.dup, "redelivered with DUP: {again:?}");
    assert_eq!((again.pkid, &again.payload[..]), (1, &b"1"[..]));
    r.send(Packet::PubAck(PubAck::new(1))).await;
    // The window moves: the third push goes out (after any DUP of the second).
    let third = loop {
        let p = r.publish().await;
        if p.payload[..] == b"3"[..] {
            break p;
        }
        assert!(
            p.dup && p.pkid == 2,
            "only DUPs of the second before it: {p:?}"
        );
    };
    assert!(!third.dup);
    assert_ne!(third.pkid, 2, "a packet id still in flight is not reused");
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_after_one_and_a_half_keep_alives() {
    // The deadline is never shorter than a request may run plus a second: 1.5 s here.
    let mut cfg = config();
    cfg.gateway.request_timeout = 0.5;
    let server = start(cfg).await;
    let app = server.app().clone();
    let started = std::time::Instant::now();
    let mut r = Raw::login(server.mqtt_addr().unwrap(), "quiet", 1).await;
    // Nothing more is sent: the server closes the connection.
    let said = r.closed().await;
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(1500),
        "not before one and a half keep-alives: {waited:?}"
    );
    // An idle close is a kick with its reason.
    assert!(
        matches!(said.as_slice(), [Packet::Publish(p)] if p.topic == "sys/kick"),
        "{said:?}"
    );
    eventually("the session is gone", || {
        app.sessions().by_uid("quiet").is_none()
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn mosquitto_pub_speaks_mqtt_over_tls() {
    let (cfg, dir, ca) = super::tls_config("mqtts");
    let server = start(cfg).await;
    let port = server.mqtt_addr().unwrap().port().to_string();
    let args = [
        "-d",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "--cafile",
        &ca,
        "-q",
        "1",
        "-t",
        "connector/entry/login/1",
        "-m",
        r#"{"uid":"tls"}"#,
    ];
    let out = run("mosquitto_pub", &args, "apt-get install mosquitto-clients").await;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("received CONNACK (0)"), "{said}");
    assert!(said.contains("received PUBACK"), "{said}");
    // Without the CA the handshake fails: the client does not trust the certificate.
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "--capath",
        "/nonexistent",
        "-t",
        "a/b/c",
        "-m",
        "x",
    ];
    let out = run("mosquitto_pub", &args, "apt-get install mosquitto-clients").await;
    assert!(!out.status.success(), "{}", text(&out));
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn connect_fields_reach_the_handshake_validator_and_a_refusal_is_connack_5() {
    use rumqttc::mqttbytes::v4::LastWill;
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let server = rookery_testkit::server::start(
        rookery_demo::modules(rookery::Server::builder(config())).handshake_validator(move |req| {
            kept.lock()
                .unwrap()
                .push((req.sys.client_type.clone(), req.user.clone()));
            match req.user["password"].as_str() {
                Some("open sesame") => Ok(()),
                _ => Err(rookery::Error::bad_request("wrong password")),
            }
        }),
    )
    .await;
    let addr = server.mqtt_addr().unwrap();
    for (password, code) in [
        ("wrong", ConnectReturnCode::NotAuthorized),
        ("open sesame", ConnectReturnCode::Success),
    ] {
        let mut r = Raw::open(addr).await;
        let mut c = Connect::new("cid-1");
        c.keep_alive = 42;
        c.set_login("vera", password);
        c.last_will = Some(LastWill::new("bye/vera", "gone", QoS::AtLeastOnce, false));
        r.send(Packet::Connect(c)).await;
        assert_eq!(
            r.next().await,
            Some(Packet::ConnAck(ConnAck::new(code, false)))
        );
        if code == ConnectReturnCode::Success {
            // Accepted: logged in as the username, and DISCONNECT ends the session.
            eventually("vera's session", || {
                server.app().sessions().by_uid("vera").is_some()
            })
            .await;
            r.send(Packet::Disconnect).await;
            assert!(r.closed().await.is_empty());
            eventually("vera's session closed", || {
                server.app().sessions().by_uid("vera").is_none()
            })
            .await;
        } else {
            assert_eq!(r.closed().await, []);
        }
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let (kind, user) = &seen[1];
    assert_eq!(kind.as_deref(), Some("mqtt"));
    assert_eq!(
        user,
        &json!({
            "client_id": "cid-1", "username": "vera", "password": "open sesame",
            "keep_alive": 42, "clean_session": true,
            "will": {"topic": "bye/vera", "message": "gone", "qos": 1, "retain": false},
        })
    );
    server.shutdown().await;
}
