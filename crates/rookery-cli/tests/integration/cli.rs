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

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let (stdout, _, ok) = client_with(&[addr], script);
    (stdout, ok)
}

/// `rookery client ARGS` reading `script` from a pipe: stdout, stderr, success.
fn client_with(args: &[&str], script: &str) -> (String, String, bool) {
    let mut child = Command::new(BIN)
        .arg("client")
        .args(args)
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
        String::from_utf8_lossy(&out.stderr).into_owned(),
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

/// `[log]`: JSON lines in a file (here through environment overrides), written through to the
/// end by the time the process exits after SIGTERM.
#[test]
fn serve_writes_json_logs_to_its_log_file() {
    let dir = std::env::temp_dir().join(format!("rookery-cli-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("logs").join("rookery.log");
    let served = serve_with_env(&[
        ("RUST_LOG", ""),
        ("ROOKERY_LOG__LEVEL", "info"),
        ("ROOKERY_LOG__FORMAT", "json"),
        ("ROOKERY_LOG__FILE__PATH", path.to_str().unwrap()),
        ("ROOKERY_LOG__FILE__ROTATION", "size"),
    ]);
    let (out, ok) = client(
        &served.tcp,
        "request connector.entry.login {\"uid\":\"bob\"}\n",
    );
    assert!(ok, "{out}");
    Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap();
    let exit = wait_exit(served.child, Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(exit.success());
    let text = std::fs::read_to_string(&path).expect("the log file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "node started")
        .unwrap_or_else(|| panic!("no start line in {text}"));
    assert_eq!(started["level"], "INFO");
    assert!(started["timestamp"].is_string());
    // The shutdown's last lines are in it too: the file was flushed before the exit.
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains("stopped"))),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `gateway.tls` (here through environment overrides): `rookery client` reaches the server with
/// `--ca` (and `--insecure`), and after the certificate files are replaced and SIGHUP is sent,
/// new connections need the new certificate.
#[test]
fn serve_over_tls_reloads_its_certificate_on_sighup() {
    let dir = std::env::temp_dir().join(format!("rookery-cli-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let make_cert = |copy_to: &str| {
        rookery_testkit::certs::write_server_cert(&dir);
        let to = dir.join(copy_to);
        std::fs::copy(&cert, &to).unwrap();
        to.to_string_lossy().into_owned()
    };
    let old_ca = make_cert("old.pem");
    let served = serve_with_env(&[
        ("ROOKERY_GATEWAY__TLS__CERT", cert.to_str().unwrap()),
        ("ROOKERY_GATEWAY__TLS__KEY", key.to_str().unwrap()),
    ]);
    // Stopped however the test ends (a failed assertion would leave it running otherwise).
    let Served { child, tcp, ws, .. } = served;
    let server = KillOnDrop(child);
    assert!(tcp.starts_with("tls://"), "{}", tcp);
    assert!(ws.starts_with("wss://"), "{}", ws);
    let script = "request connector.entry.login {\"uid\":\"tls-user\"}\n";
    for addr in [&tcp, &ws] {
        let (out, err, ok) = client_with(&[addr, "--ca", &old_ca], script);
        assert!(ok, "{out}{err}");
        assert!(
            out.contains(r#"< connector.entry.login {"uid":"tls-user"}"#),
            "{out}"
        );
    }
    let (out, err, ok) = client_with(&[&tcp, "--insecure"], script);
    assert!(ok, "{out}{err}");
    // Without the CA: refused, with the reason.
    let (_, err, ok) = client_with(&[&tcp], script);
    assert!(!ok && err.contains("certificate"), "{err}");

    let new_ca = make_cert("new.pem");
    let pid = server.0.id().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    // The reload happens when the signal is handled: wait (bounded) for new connections to
    // need the new certificate.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, ok) = client_with(&[&tcp, "--ca", &new_ca], script);
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, _, ok) = client_with(&[&tcp, "--ca", &old_ca], script);
    assert!(!ok, "the old certificate is gone");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
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

/// The binary builds on a machine with nothing but the Rust toolchain: no crate it depends on
/// (as a normal or build dependency) compiles protobuf files at build time, which would need
/// `protoc`; the etcd back end (with its pre-generated gRPC code) is in it all the same.
/// (`scripts/test` also builds everything with `PROTOC` pointing nowhere.)
#[test]
fn building_the_binary_needs_no_protoc() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for features in [&[][..], &["--all-features"][..]] {
        let out = Command::new(env!("CARGO"))
            .args([
                "tree",
                "--locked",
                "-p",
                "rookery-cli",
                "-e",
                "normal,build",
            ])
            .args(["--prefix", "none", "--format", "{p}"])
            .args(features)
            .current_dir(root)
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8(out.stdout).unwrap();
        let crates: Vec<&str> = tree
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(crates.contains(&"rookery-etcd"), "etcd back end built in");
        for needs_protoc in [
            "prost-build",
            "tonic-build",
            "tonic-prost-build",
            "protobuf-src",
            "etcd-client",
        ] {
            assert!(
                !crates.contains(&needs_protoc),
                "{needs_protoc} is built with the binary ({features:?}): it needs protoc"
            );
        }
    }
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
        assert_eq!(r["closed_by_server"]["total"], 2, "{r}");
        assert_eq!(
            r["closed_by_server"]["reasons"],
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

/// A script may start disconnected, `connect` and `disconnect` (TCP, then WebSocket); commands
/// that need a connection fail without one, and a `connect` that fails ends the script with an
/// error.
#[test]
fn client_pipe_connects_and_disconnects() {
    let Served {
        child: mut server,
        tcp,
        ws,
        ..
    } = serve();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let script = format!(
        "routes\n\
         connect {tcp}\n\
         request connector.entry.login {{\"uid\":\"carol\"}}\n\
         disconnect\n\
         request room.room.list {{}}\n\
         connect {ws}\n\
         request connector.entry.login {{\"uid\":\"dave\"}}\n\
         connect {tcp}\n\
         request room.room.list {{}}\n\
         disconnect\n\
         disconnect\n\
         connect {dead}\n\
         request room.room.list {{}}\n"
    );
    let (out, err, ok) = client_with(&[], &script);
    let _ = server.kill();
    let _ = server.wait();
    assert!(!ok, "a failed connect fails the script: {out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    let want = [
        format!("connected to {tcp} (serializer json, heartbeat 5s, "),
        r#"< connector.entry.login {"uid":"carol"}"#.to_string(),
        format!("disconnected from {tcp}"),
        format!("connected to {ws} (serializer json, heartbeat 5s, "),
        r#"< connector.entry.login {"uid":"dave"}"#.to_string(),
        format!("disconnected from {ws}"),
        format!("connected to {tcp} (serializer json, heartbeat 5s, "),
        r#"< room.room.list {"rooms":[]}"#.to_string(),
        format!("disconnected from {tcp}"),
    ];
    assert_eq!(lines.len(), want.len(), "{out}");
    for (line, want) in lines.iter().zip(&want) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} is not {want:?}:\n{out}"
        );
    }
    let errors: Vec<&str> = err.lines().collect();
    assert_eq!(
        errors[..3],
        [
            "error: not connected (connect ADDR)",
            "error: not connected (connect ADDR)",
            "error: not connected",
        ],
        "{err}"
    );
    assert!(
        errors[3].starts_with(&format!("error: cannot connect to {dead}")),
        "{err}"
    );
    assert_eq!(errors.len(), 4, "{err}");
}

/// The interactive client on a pseudo-terminal: prompt, Tab completion of commands and routes,
/// a push printed while a line is being typed (the line is drawn again after it), history kept
/// in `~/.rookery_history` across runs.
#[cfg(unix)]
mod tty {
    use super::*;
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Instant;

    /// Everything the client wrote to the terminal, and a signal for each new chunk.
    type Screen = Arc<(Mutex<Vec<u8>>, Condvar)>;

    struct Terminal {
        /// `None` once it has exited.
        child: Option<Child>,
        input: std::fs::File,
        screen: Screen,
    }

    /// A test that fails leaves no client behind.
    impl Drop for Terminal {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// A test that fails leaves no server behind.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Terminal {
        fn start(addr: &str, home: &std::path::Path) -> Terminal {
            let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
            let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
            let child = Command::new(BIN)
                .args(["client", addr])
                .env("HOME", home)
                .env("TERM", "xterm")
                .stdin(io(&pty.slave))
                .stdout(io(&pty.slave))
                .stderr(io(&pty.slave))
                .spawn()
                .unwrap();
            drop(pty.slave);
            let input = std::fs::File::from(pty.master.try_clone().unwrap());
            let mut output = std::fs::File::from(pty.master);
            let screen: Screen = Default::default();
            let sink = screen.clone();
            // Ends when the client has exited (the terminal's other side is then closed).
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = output.read(&mut buf) {
                    sink.0.lock().unwrap().extend_from_slice(&buf[..n]);
                    sink.1.notify_all();
                }
            });
            Terminal {
                child: Some(child),
                input,
                screen,
            }
        }

        fn type_keys(&mut self, keys: &str) {
            self.input.write_all(keys.as_bytes()).unwrap();
        }

        /// Waits until `text` shows up after byte `from` of the output; returns where it ends.
        fn wait_for(&self, text: &str, from: usize) -> usize {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut screen = self.screen.0.lock().unwrap();
            loop {
                if let Some(i) = screen[from.min(screen.len())..]
                    .windows(text.len())
                    .position(|w| w == text.as_bytes())
                {
                    return from + i + text.len();
                }
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(
                    !left.is_zero(),
                    "{text:?} not shown; the terminal shows:\n{}",
                    String::from_utf8_lossy(&screen[from.min(screen.len())..])
                );
                screen = self.screen.1.wait_timeout(screen, left).unwrap().0;
            }
        }

        fn quit(mut self, at: usize) {
            // Ctrl-U clears whatever is typed.
            self.type_keys("\x15quit\r");
            self.wait_for("quit", at);
            let child = self.child.take().unwrap();
            let status = wait_exit(child, Duration::from_secs(10)).expect("exits on quit");
            assert!(status.success());
        }
    }

    #[test]
    fn interactive_client_on_a_terminal() {
        let Served { child, tcp, .. } = serve();
        let _server = Server(child);
        let home = std::env::temp_dir().join(format!(
            "rookery-tty-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&home).unwrap();
        let prompt = format!("{tcp}> ");

        let mut t = Terminal::start(&tcp, &home);
        let at = t.wait_for(&prompt, 0);
        // Commands, then routes from the handshake dictionary.
        t.type_keys("req\t");
        let at = t.wait_for(&format!("{prompt}request "), at);
        t.type_keys("connector.entry.l\t");
        let at = t.wait_for(&format!("{prompt}request connector.entry.login "), at);
        t.type_keys("{\"uid\":\"tty\"}\r");
        let at = t.wait_for(r#"< connector.entry.login {"uid":"tty"}"#, at);
        t.type_keys("request room.room.join {\"room\":\"tty\"}\r");
        let at = t.wait_for(r#"< room.room.join {"members":["tty"],"room":"tty"}"#, at);
        let at = t.wait_for(&prompt, at);
        // A push while a line is being typed: printed, then the line drawn again.
        t.type_keys("request room.ro");
        let at = t.wait_for("request room.ro", at);
        let (out, ok) = client(
            &tcp,
            "request connector.entry.login {\"uid\":\"other\"}\n\
             request room.room.join {\"room\":\"tty\"}\n\
             request room.room.say {\"room\":\"tty\",\"text\":\"hello\"}\n",
        );
        assert!(ok, "{out}");
        let at = t.wait_for(
            r#"push onMessage {"from":"other","room":"tty","text":"hello"}"#,
            at,
        );
        let at = t.wait_for(&format!("{prompt}request room.ro"), at);
        // The other client has left (a push too); the line goes on where it was.
        let at = t.wait_for(r#"push onLeave {"room":"tty","uid":"other"}"#, at);
        let at = t.wait_for(&format!("{prompt}request room.ro"), at);
        t.type_keys("om.list\r");
        let at = t.wait_for(
            r#"< room.room.list {"rooms":[{"members":1,"room":"tty"}]}"#,
            at,
        );
        t.quit(at);

        let history = std::fs::read_to_string(home.join(".rookery_history")).unwrap();
        assert!(
            history.contains(r#"request connector.entry.login {"uid":"tty"}"#),
            "{history}"
        );
        assert!(history.contains("request room.room.list"), "{history}");

        // A second run finds the first one's lines (arrow up: the latest first).
        let mut t = Terminal::start(&tcp, &home);
        let at = t.wait_for(&prompt, 0);
        t.type_keys("\x1b[A\x1b[A");
        let at = t.wait_for(&format!("{prompt}request room.room.list"), at);
        t.quit(at);
        let _ = std::fs::remove_dir_all(&home);
    }
}
