//! The demo game through its other client protocols (MQTT, zinx, KCP), each driven by a client
//! nobody here wrote where one exists (MQTT.js, mosquitto's tools, a Python zinx client from
//! zinx's documented pack, Python's `kcp` package), plus raw-packet tests of what a broken or
//! hostile client may send.

mod kcp;
mod mqtt;
mod zinx;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use rookery::config::MqttLogin;
use rookery::{Config, RunningServer, Server};

/// The demo with every acceptor on `127.0.0.1:0`: MQTT clients log in with their username,
/// mqant's `Login` and `Room` module types are the demo's modules, and zinx msgIDs 1 to 3 are
/// login, join and say (join answered as 102; pushes `onJoin` 201, `onMessage` 202).
pub fn config() -> Config {
    let mut c = rookery_testkit::server::config();
    for a in [
        &mut c.gateway.mqtt,
        &mut c.gateway.mqtt_ws,
        &mut c.gateway.zinx,
        &mut c.gateway.kcp,
    ] {
        *a = Some("127.0.0.1:0".into());
    }
    c.mqtt.login = MqttLogin::Username;
    c.mqtt
        .mqant
        .modules
        .insert("Login".into(), "connector.entry".into());
    c.mqtt
        .mqant
        .routes
        .insert("Room/HD_Say".into(), "room.room.say".into());
    for (id, route) in [
        (1, "connector.entry.login"),
        (2, "room.room.join"),
        (3, "room.room.say"),
    ] {
        c.zinx.routes.insert(id.to_string(), route.into());
    }
    c.zinx.replies.insert("room.room.join".into(), 102);
    c.zinx.pushes.insert("onJoin".into(), 201);
    c.zinx.pushes.insert("onMessage".into(), 202);
    c
}

/// The demo over TLS: `config()` with a self-signed certificate made in a fresh directory
/// named after `name`. Returns the config, the directory (for the test to remove) and the
/// certificate's path (the clients' CA).
pub fn tls_config(name: &str) -> (Config, PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("rookery-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (cert, key) = rookery_testkit::certs::write_server_cert(&dir);
    let mut cfg = config();
    cfg.gateway.tls = Some(rookery::config::TlsFiles {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
    });
    (cfg, dir, cert.display().to_string())
}

/// Starts the demo with `config`.
pub async fn start(config: Config) -> RunningServer {
    rookery_testkit::server::start(rookery_demo::modules(Server::builder(config))).await
}

/// This directory (the scripts, and MQTT.js under `node_modules`).
pub fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs a client program to its end (at most a minute), failing the test clearly if it is not
/// installed.
pub async fn run(program: &str, args: &[&str], install: &str) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(here())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{program} does not run ({e}): {install}"),
        Err(_) => panic!("{program} {args:?} did not finish within a minute"),
    }
}

/// A program's output, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
