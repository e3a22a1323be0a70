//! The `rookery` binary end to end: `serve` with flags, `client` from a pipe, SIGTERM shutdown.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rookery");

/// Addresses a `rookery serve` printed.
struct Served {
    child: Child,
    tcp: String,
    ws: String,
    admin: String,
    http: String,
}

/// Starts `rookery serve` with every listener on a port the OS picks, and reads the addresses
/// it prints.
fn serve() -> Served {
    serve_with_env(&[])
}

/// [`serve`] with extra environment variables (configuration overrides).
fn serve_with_env(env: &[(&str, &str)]) -> Served {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--tcp",
            "127.0.0.1:0",
            "--ws",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--heartbeat",
            "5",
        ])
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rookery serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut tcp, mut ws, mut admin, mut http) = Default::default();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("rookery: TCP on ") {
            tcp = a.to_string();
        } else if let Some(a) = line.strip_prefix("rookery: WebSocket on ") {
            ws = a.to_string();
        } else if let Some(a) = line.strip_prefix("rookery: admin on http://") {
            admin = a.trim_end_matches('/').to_string();
        } else if let Some(a) = line.strip_prefix("rookery: HTTP gateway on http://") {
            http = a.trim_end_matches('/').to_string();
        } else if line.starts_with("rookery: node ") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Served {
        child,
        tcp,
        ws,
        admin,
        http,
    }
}

/// One HTTP/1.1 request over a plain socket; returns the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn client(addr: &str, script: &str) -> (String, bool) {
    let mut child = Command::new(BIN)
        .args(["client", addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.success(),
    )
}

/// Waits for the child to exit, up to a deadline.
fn wait_exit(mut child: Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(deadline) {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            None
        }
    }
}

#[test]
fn serve_client_pipe_and_sigterm() {
    let Served {
        child: server,
        tcp,
        ws,
        admin,
        http: gateway,
    } = serve();
    let (out, ok) = client(
        &tcp,
        "request connector.entry.login {\"uid\":\"alice\"}\n\
         request room.room.join {\"room\":\"lobby\"}\n\
         request room.room.say {\"room\":\"lobby\",\"text\":\"hello\"}\n\
         request room.room.nope {}\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("heartbeat 5s"), "{out}");
    assert!(
        out.contains(r#"< connector.entry.login {"uid":"alice"}"#),
        "{out}"
    );
    assert!(
        out.contains(r#"< room.room.join {"members":["alice"],"room":"lobby"}"#),
        "{out}"
    );
    assert!(
        out.contains(r#"push onMessage {"from":"alice","room":"lobby","text":"hello"}"#),
        "{out}"
    );
    assert!(out.contains("! room.room.nope RK-404"), "{out}");

    let (out, ok) = client(&ws, "request room.room.list {}\n");
    assert!(ok, "{out}");
    assert!(out.contains(r#"< room.room.list {"rooms":[]}"#), "{out}");

    // The HTTP gateway and the admin address of the same process.
    let (status, body) = http(&gateway, "POST", "/room/room/list", "{}");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""rooms""#), "{body}");
    let (status, body) = http(&gateway, "POST", "/room/room/join", r#"{"room":"x"}"#);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(&admin, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(body.contains("rookery_requests_total"), "{body}");
    let (status, body) = http(&admin, "GET", "/api/node", "");
    assert_eq!(status, 200);
    assert!(body.contains(r#""frontend":true"#), "{body}");

    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = wait_exit(server, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(exit.success());
}

/// `[runtime] workers` decides how many scheduler threads `rookery serve` runs (tokio names them
/// `tokio-rt-worker`).
#[test]
#[cfg(target_os = "linux")]
fn serve_runs_the_configured_number_of_workers() {
    // Two values: whatever this machine's default is, it cannot equal both.
    for want in [1, 3] {
        let served = serve_with_env(&[("ROOKERY_RUNTIME__WORKERS", &want.to_string())]);
        let pid = served.child.id();
        let count = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "tokio-rt-worker")
                .count()
        };
        // A worker thread takes its name when it first runs: wait (bounded) until all have.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut workers = count();
        while workers < want && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            workers = count();
        }
        let mut child = served.child;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(workers, want);
    }
}

#[test]
fn client_reports_connection_failure() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_, ok) = client(&format!("127.0.0.1:{port}"), "");
    assert!(!ok);
}

#[test]
fn serve_rejects_bad_config() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--heartbeat",
            "0",
            "--tcp",
            "127.0.0.1:0",
            "--ws",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeat"));
}

/// `rookery bench` against a server whose rate limit it breaks: the JSON reports the
/// connections the server closed and the errors by code, a hint names the setting, and the
/// run fails unless `--allow-disconnects` is given.
#[test]
fn bench_fails_when_the_server_closes_connections() {
    let Served {
        child: mut server,
        tcp,
        ..
    } = serve_with_env(&[
        ("ROOKERY_GATEWAY__RATE_LIMIT__PER_SECOND", "50"),
        ("ROOKERY_GATEWAY__RATE_LIMIT__BURST", "50"),
        ("ROOKERY_GATEWAY__RATE_LIMIT__MAX_VIOLATIONS", "5"),
    ]);
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--json",
            "--addr",
            &tcp,
            "--connections",
            "2",
            "--route",
            "room.room.echo",
            "--duration",
            "5",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(BIN).args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
        (out.status.success(), report, stderr)
    };
    for allow in [false, true] {
        let (ok, r, stderr) = bench(if allow { &["--allow-disconnects"] } else { &[] });
        assert_eq!(ok, allow, "{r} {stderr}");
        assert_eq!(r["closed_by_server"], 2, "{r}");
        assert_eq!(
            r["closed_by_server_reasons"],
            serde_json::json!({"rate limit exceeded": 2}),
            "{r}"
        );
        assert_eq!(
            r["errors_by_code"],
            serde_json::json!({"RK-429": 10, "CLOSED": 2}),
            "{r}"
        );
        let hints: Vec<&str> = stderr.lines().filter(|l| l.starts_with("hint: ")).collect();
        assert_eq!(hints.len(), 1, "{stderr}");
        assert!(
            hints[0].contains("gateway.rate_limit.per_second")
                && hints[0].contains("ROOKERY_GATEWAY__RATE_LIMIT__PER_SECOND=0"),
            "{stderr}"
        );
        assert_eq!(stderr.contains("--allow-disconnects"), !allow, "{stderr}");
    }
    let _ = server.kill();
    let _ = server.wait();
}
