//! The dashboard in a real browser: headless Chromium (Debian `chromium`) driven by
//! `tests/dashboard/check.mjs` with `playwright-core`, against a node under live traffic.
//!
//! Needs `apt-get install -y chromium nodejs npm` and
//! `npm ci --prefix crates/rookery-ops/tests/dashboard`; a missing piece fails the test with
//! that hint. The screenshot goes to `target/dashboard.png`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{client, config, start, WAIT};
use rookery::telemetry::DisconnectReason;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SCRIPT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard");

fn chromium() -> PathBuf {
    let p = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        p.exists(),
        "{} not found: install it with `apt-get install -y chromium` (or set CHROMIUM)",
        p.display()
    );
    p
}

fn check_node_setup() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "`node` not found: install it with `apt-get install -y nodejs npm`"
    );
    let pw = Path::new(SCRIPT_DIR).join("node_modules/playwright-core/package.json");
    assert!(
        pw.exists(),
        "playwright-core is not installed: run `npm ci --prefix crates/rookery-ops/tests/dashboard`"
    );
}

/// `target/` of this build: the test binary lives in `target/<profile>/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .expect("test binary under target/<profile>/deps")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_node_and_live_numbers() {
    let browser = chromium();
    check_node_setup();

    let node = start(config()).await;
    let node_id = node.server.app().node_id().to_string();

    // Two disconnects by the server for the disconnects table: a kick, and a client that sends
    // data before its handshake (a protocol error).
    let app = node.server.app().clone();
    let kicked = client(&node, Some("kicked")).await;
    app.kick_uid("kicked", "bye").await;
    kicked.closed().await;
    let mut rude = tokio::net::TcpStream::connect(&node.tcp).await.unwrap();
    rude.write_all(&[4, 0, 0, 3, 0, 1, b'x']).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, rude.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let counts = || {
        (
            app.disconnects().total(DisconnectReason::Kick),
            app.disconnects().total(DisconnectReason::ProtocolError),
        )
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while counts() != (1, 1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "disconnects (kick, protocol error) counted: {:?}, sessions open: {}",
            counts(),
            app.sessions().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Traffic with a varying rate, some pushes and some errors, until the check is done
    // (bounded: at most 90 s).
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = Vec::new();
    for k in 0..3u64 {
        let c = client(&node, Some(&format!("user-{k}"))).await;
        let stop = stop.clone();
        traffic.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(90) {
                i += 1;
                let route = match i % 10 {
                    0 => "ops.push.me",
                    7 if k == 0 => "ops.fail.custom",
                    _ => "ops.echo.json",
                };
                let _ = c.request_json(route, json!({ "i": i })).await;
                // 2..=12 ms between requests, drifting over time so the rate keeps changing.
                let ms = 2 + (i / 50 + k) % 11;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            c.close().await;
        }));
    }

    let shot = target_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let mut cmd = Command::new("node");
    cmd.arg("check.mjs")
        .current_dir(SCRIPT_DIR)
        .env("DASHBOARD_URL", format!("http://{}/", node.admin))
        .env("NODE_ID", &node_id)
        .env("DISCONNECTS", "kick=1,protocol_error=1")
        .env("SCREENSHOT", &shot)
        .env("CHROMIUM", &browser)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("node starts");
    let pid = child.id();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let out = match out {
        Ok(r) => r.unwrap().expect("node ran"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("check.mjs did not finish in 120 s");
        }
    };
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await.unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "dashboard check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(shot.exists(), "screenshot {} saved", shot.display());
    println!("screenshot saved to {}", shot.display());
    node.shutdown().await;
}
