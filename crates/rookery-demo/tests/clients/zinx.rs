//! zinx: a Python client written from zinx's documented data pack drives the demo; the data
//! pack's limits; zinx-cluster's route.json and dinx.json at start.

use super::{config, run, start, text};

/// Runs the Python zinx client against `server` (over TLS with `ca`) and checks every step.
async fn python_flow(server: &rookery::RunningServer, ca: Option<&str>) {
    let port = server.zinx_addr().unwrap().port().to_string();
    let mut args = vec!["zinx_client.py", "127.0.0.1", port.as_str()];
    args.extend(ca);
    let out = run("python3", &args, "apt-get install python3").await;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for step in [
        "ok login",
        "ok join",
        "ok say",
        "ok heartbeat",
        "ok unknown msgID",
        "done",
    ] {
        assert!(said.contains(step), "no {step:?} in\n{said}");
    }
}

#[tokio::test]
async fn a_python_zinx_client_drives_the_chat_flow_by_msgid() {
    let server = start(config()).await;
    python_flow(&server, None).await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_same_over_tls() {
    let (cfg, dir, ca) = super::tls_config("zinx-tls");
    let server = start(cfg).await;
    python_flow(&server, Some(&ca)).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_oversized_zinx_message_closes_only_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config();
    cfg.gateway.max_packet_size = 1024;
    let server = start(cfg).await;
    let addr = server.zinx_addr().unwrap();
    let mut calm = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
    // msgID 1, 1 GiB announced: refused from the header alone.
    bad.write_all(&[0, 0, 0, 1, 0x40, 0, 0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(rookery_testkit::WAIT, bad.read_to_end(&mut rest))
        .await
        .expect("closed within WAIT")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing sent back, the connection closed");
    // The other client is unaffected.
    let body = br#"{"uid":"calm"}"#;
    let mut m = vec![0, 0, 0, 1, 0, 0, 0, body.len() as u8];
    m.extend_from_slice(body);
    calm.write_all(&m).await.unwrap();
    let mut head = [0; 8];
    calm.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[..4], &[0, 0, 0, 1], "answered with msgID 1");
    let mut answer = vec![0; u32::from_be_bytes(head[4..].try_into().unwrap()) as usize];
    calm.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, body);
    server.shutdown().await;
}

#[tokio::test]
async fn zinx_cluster_files_are_read_and_their_msgids_must_have_routes() {
    let dir = std::env::temp_dir().join(format!("rookery-zinx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // zinx-cluster's own shapes: group -> [{MsgID, Name}] and group -> [{ID, Name, Type, IP, Port}].
    let routes = dir.join("route.json");
    let nodes = dir.join("dinx.json");
    std::fs::write(
        &routes,
        r#"{"gate":[{"MsgID":1,"Name":"登录"}],"room":[{"MsgID":2,"Name":"加入"},{"MsgID":3,"Name":"说"}]}"#,
    )
    .unwrap();
    std::fs::write(
        &nodes,
        r#"{"gate":[{"ID":1,"Name":"gate-1","Type":1,"IP":"0.0.0.0","Port":10000}],
            "room":[{"ID":2,"Name":"room-1","Type":2,"IP":"0.0.0.0","Port":20000,"IsPass":1}]}"#,
    )
    .unwrap();
    let mut cfg = config();
    cfg.zinx.route_file = Some(routes.display().to_string());
    cfg.zinx.node_file = Some(nodes.display().to_string());
    let server = start(cfg.clone()).await;
    server.shutdown().await;

    // A msgID the tables do not name: the node refuses to start, naming it.
    std::fs::write(&routes, r#"{"room":[{"MsgID":40,"Name":"离开"}]}"#).unwrap();
    let err = rookery_demo::modules(rookery::Server::builder(cfg.clone()))
        .start()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("msgID 40"), "{err}");
    // A group the node file does not have.
    std::fs::write(&routes, r#"{"chat":[{"MsgID":1,"Name":"x"}]}"#).unwrap();
    let err = rookery_demo::modules(rookery::Server::builder(cfg))
        .start()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("\"chat\""), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
