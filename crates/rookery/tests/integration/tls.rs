//! TLS on the gateway: `tls://` and `wss://` reach the same handlers, certificates are read
//! again on reload without dropping connections, and a client nobody here wrote (OpenSSL's
//! `s_client`) speaks the protocol over it. Certificates are made at run time (rcgen).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rookery::config::TlsFiles;
use rookery_client::{Client, ClientError, ClientOptions, TlsOptions};
use serde_json::json;

use crate::common::*;

/// A directory of its own for a test's certificate files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rookery-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh server certificate in `dir` (`cert.pem`, `key.pem`).
fn write_cert(dir: &Path) {
    rookery_testkit::certs::write_server_cert(dir);
}

/// A copy of the current certificate, to trust it after the files change.
fn keep_ca(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(dir.join("cert.pem"), &to).unwrap();
    to
}

fn tls_config(dir: &Path) -> rookery::Config {
    let mut cfg = config();
    cfg.gateway.tls = Some(TlsFiles {
        cert: dir.join("cert.pem").to_string_lossy().into_owned(),
        key: dir.join("key.pem").to_string_lossy().into_owned(),
    });
    cfg
}

fn trusting(ca: &Path) -> ClientOptions {
    ClientOptions {
        tls: TlsOptions {
            ca: Some(ca.to_path_buf()),
            insecure: false,
        },
        ..ClientOptions::default()
    }
}

fn tls_addr(server: &rookery::RunningServer) -> String {
    format!("tls://{}", server.tcp_addr().unwrap())
}

fn wss_url(server: &rookery::RunningServer) -> String {
    format!("wss://{}/", server.ws_addr().unwrap())
}

#[tokio::test]
async fn tls_and_wss_reach_the_same_handlers() {
    let d = dir("both");
    write_cert(&d);
    let (server, _) = start(tls_config(&d)).await;
    let ca = d.join("cert.pem");
    for addr in [tls_addr(&server), wss_url(&server)] {
        let c = Client::connect(&addr, trusting(&ca)).await.unwrap();
        let v = c
            .request_json("test.echo.json", json!({"over": addr}))
            .await
            .unwrap();
        assert_eq!(v, json!({"over": addr}));
    }
    // Without the CA the certificate does not check out; with --insecure it is not checked.
    match Client::connect(&tls_addr(&server), ClientOptions::default()).await {
        Err(ClientError::Io(e)) => assert!(e.to_string().contains("certificate"), "{e}"),
        Err(other) => panic!("expected a certificate error, got {other:?}"),
        Ok(_) => panic!("an unknown certificate was accepted"),
    }
    let insecure = ClientOptions {
        tls: TlsOptions {
            ca: None,
            insecure: true,
        },
        ..ClientOptions::default()
    };
    let c = Client::connect(&tls_addr(&server), insecure).await.unwrap();
    c.request_json("test.echo.json", json!({})).await.unwrap();
    // A plain client on the TLS port gets no session.
    assert!(Client::connect(
        &server.tcp_addr().unwrap().to_string(),
        ClientOptions::default()
    )
    .await
    .is_err());
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_and_keeps_open_ones() {
    let d = dir("reload");
    write_cert(&d);
    let old_ca = keep_ca(&d, "old-ca.pem");
    let (server, _) = start(tls_config(&d)).await;
    let open = Client::connect(&tls_addr(&server), trusting(&old_ca))
        .await
        .unwrap();

    write_cert(&d);
    let new_ca = keep_ca(&d, "new-ca.pem");
    server.app().reload_tls().unwrap();
    open.request_json("test.echo.json", json!({"still": "here"}))
        .await
        .expect("an open connection keeps working");
    assert!(Client::connect(&tls_addr(&server), trusting(&old_ca))
        .await
        .is_err());
    Client::connect(&tls_addr(&server), trusting(&new_ca))
        .await
        .expect("new connections get the new certificate");

    // A broken key: refused, and the current certificate stays.
    std::fs::write(d.join("key.pem"), "not a key").unwrap();
    let e = server.app().reload_tls().unwrap_err();
    let why = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(why.contains("gateway.tls.key"), "{e}: {why}");
    Client::connect(&tls_addr(&server), trusting(&new_ca))
        .await
        .expect("still the certificate loaded last");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&d);
}

/// OpenSSL's client, given the handshake packet on its input, gets the server's answer; it can
/// negotiate TLS 1.2 but not 1.1.
#[tokio::test]
async fn openssl_s_client_handshakes_over_tls_1_2_and_not_1_1() {
    let d = dir("openssl");
    write_cert(&d);
    let (server, _) = start(tls_config(&d)).await;
    let addr = server.tcp_addr().unwrap().to_string();
    let ca = d.join("cert.pem").to_string_lossy().into_owned();
    let hs = rookery::protocol::ClientHandshake::new(Default::default(), serde_json::Value::Null);
    let request = hs.request_packet().to_vec();
    let (a, c) = (addr.clone(), ca.clone());
    let answer = tokio::task::spawn_blocking(move || s_client(&a, &c, "-tls1_2", &request))
        .await
        .unwrap();
    assert!(answer.len() > 4, "no answer: {answer:?}");
    assert_eq!(answer[0], 1, "a Handshake packet");
    let body = String::from_utf8_lossy(&answer[4..]);
    assert!(body.contains("\"code\":200"), "{body}");
    let refused = tokio::task::spawn_blocking(move || s_client(&addr, &ca, "-tls1_1", &[]))
        .await
        .unwrap();
    assert!(refused.is_empty(), "TLS 1.1 must not be negotiated");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs `openssl s_client` against `addr`, writes `input`, and returns the bytes it received
/// (until the first packet is whole, the connection ends, or 10 s pass).
fn s_client(addr: &str, ca: &str, version: &str, input: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut child = Command::new("openssl")
        .args([
            "s_client", "-connect", addr, "-CAfile", ca, version, "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl (Debian package `openssl`) runs");
    child.stdin.as_mut().unwrap().write_all(input).unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let whole = got.len() >= 4
                && got.len()
                    >= 4 + ((got[1] as usize) << 16 | (got[2] as usize) << 8 | got[3] as usize);
            if whole {
                break;
            }
        }
        let _ = tx.send(got);
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    got
}

/// A pomelo exchange from Node's `tls` module, framed by hand (as a pinus client frames it):
/// handshake, ack, then a request whose answer is printed.
const NODE_CLIENT: &str = r#"
const tls = require('tls'), fs = require('fs');
const [port, ca] = process.argv.slice(2);
const packet = (type, body) => {
  const head = Buffer.from([type, (body.length >> 16) & 255, (body.length >> 8) & 255, body.length & 255]);
  return Buffer.concat([head, body]);
};
const route = Buffer.from('test.echo.json');
const request = Buffer.concat([
  Buffer.from([0x00, 0x01, route.length]), route, Buffer.from('{"from":"node"}'),
]);
const sock = tls.connect({ host: '127.0.0.1', port: +port, ca: fs.readFileSync(ca) }, () => {
  sock.write(packet(1, Buffer.from('{"sys":{"type":"node-tls"}}')));
});
let buf = Buffer.alloc(0);
sock.on('data', (d) => {
  buf = Buffer.concat([buf, d]);
  while (buf.length >= 4) {
    const len = (buf[1] << 16) | (buf[2] << 8) | buf[3];
    if (buf.length < 4 + len) return;
    const [type, body] = [buf[0], buf.subarray(4, 4 + len)];
    buf = buf.subarray(4 + len);
    if (type === 1) { sock.write(packet(2, Buffer.alloc(0))); sock.write(packet(4, request)); }
    if (type === 4) {
      // Response: flag (type 2 << 1), varint id 1, then the payload.
      console.log(body.subarray(2).toString());
      sock.end();
      process.exit(0);
    }
  }
});
sock.on('error', (e) => { console.error(e.message); process.exit(1); });
setTimeout(() => { console.error('timed out'); process.exit(1); }, 10000);
"#;

#[tokio::test]
async fn nodes_tls_module_speaks_the_protocol() {
    let d = dir("node");
    write_cert(&d);
    std::fs::write(d.join("client.js"), NODE_CLIENT).unwrap();
    let (server, _) = start(tls_config(&d)).await;
    let port = server.tcp_addr().unwrap().port().to_string();
    let (script, ca) = (d.join("client.js"), d.join("cert.pem"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(port)
            .arg(ca)
            .output()
            .expect("node (Debian package `nodejs`) runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), r#"{"from":"node"}"#);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&d);
}
