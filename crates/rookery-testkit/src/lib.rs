//! What Rookery's tests share, so that each crate's tests do not carry their own copy.
//!
//! - Real `etcd` and `nats-server` processes (from the system's packages) on free loopback ports
//!   in temporary directories ([`Etcd`], [`Nats`]). Each server is stopped when its guard is
//!   dropped. A missing binary is an error that names the package to install.
//! - [`WAIT`] and [`eventually`]: one deadline for everything a test waits on.
//! - With the feature `server`: [`server`] (a node whose acceptors listen on port 0, and where
//!   they ended up) and [`cluster`] (the multi-node fixture and the conformance suite every
//!   node-to-node `Transport` runs, through [`transport_suite!`]).

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod certs;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod server;

/// Generous deadline for anything a test waits on: long enough for a loaded two-core machine,
/// short enough that a hang fails the test instead of the whole run.
pub const WAIT: Duration = Duration::from_secs(10);

/// Waits until `cond` holds, checking it every few milliseconds; panics naming `what` after
/// [`WAIT`].
///
/// For state that changes without an event a test could await (counters, registries, a node's
/// view of the cluster); where there is an event, await it instead.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long a server may take to accept connections after being started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a server could not be started.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn find_binary(name: &str, package: &str) -> Result<PathBuf, HarnessError> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    for dir in candidates {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(HarnessError(format!(
        "`{name}` not found: install it with `apt-get install {package}` (the tests start a real {name})"
    )))
}

/// A name no other server started by this or another test process has.
fn unique_name(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "rookery-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `probe` confirms that the server listening on the port is the `child` just started.
///
/// A bare "something accepts connections" is not enough: a port picked as free can be bound by a
/// concurrently running test in the meantime, and then our server exits while the other one answers.
/// The probe asks the server for the unique name it was started with. On failure the child is
/// killed.
fn wait_until_ready(
    child: &mut Child,
    what: &str,
    addr: SocketAddr,
    probe: impl Fn() -> bool,
) -> Result<(), HarnessError> {
    let start = Instant::now();
    let result = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(HarnessError(format!("{what} exited early: {status}")));
        }
        if probe() {
            break Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            break Err(HarnessError(format!(
                "{what} did not answer on {addr} in time"
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// Connects with short deadlines for a readiness probe.
fn probe_connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    Some(s)
}

/// Whether the etcd on `addr` is up, serving, and named `name` (its JSON gateway's member list).
fn etcd_is(addr: SocketAddr, name: &str) -> bool {
    let Some(mut s) = probe_connect(addr) else {
        return false;
    };
    let request = format!(
        "POST /v3/cluster/member/list HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut body = Vec::new();
    let _ = s.take(64 * 1024).read_to_end(&mut body);
    String::from_utf8_lossy(&body).contains(&format!("\"name\":\"{name}\""))
}

/// Whether the nats-server on `addr` is up and named `name` (the INFO line it greets with).
fn nats_is(addr: SocketAddr, name: &str) -> bool {
    let Some(s) = probe_connect(addr) else {
        return false;
    };
    let mut info = String::new();
    let _ = BufReader::new(s.take(64 * 1024)).read_line(&mut info);
    info.starts_with("INFO ") && info.contains(&format!("\"server_name\":\"{name}\""))
}

/// A running server process; killed on drop.
struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real etcd server on loopback.
pub struct Etcd {
    proc: Proc,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    bin: PathBuf,
    name: String,
}

impl Etcd {
    /// Starts etcd on free ports in a temporary data directory and waits until it listens.
    pub fn start() -> Result<Self, HarnessError> {
        let bin = find_binary("etcd", "etcd-server")?;
        let dir = tempfile::tempdir().map_err(|e| HarnessError(e.to_string()))?;
        let mut etcd = Self {
            proc: Proc { child: None },
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            bin,
            name: unique_name("etcd"),
        };
        // A port picked as free may be taken by someone else before etcd binds it: try others.
        let mut attempt = 0;
        loop {
            match etcd.spawn() {
                Ok(()) => return Ok(etcd),
                Err(e) if attempt >= 3 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    etcd.client_port = free_port();
                    etcd.peer_port = free_port();
                }
            }
        }
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.dir.path().join("data");
        let mut child = Command::new(&self.bin)
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}={peer}", self.name))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| HarnessError(format!("cannot start etcd: {e}")))?;
        let addr: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        wait_until_ready(&mut child, "etcd", addr, || etcd_is(addr, &self.name))?;
        self.proc.child = Some(child);
        Ok(())
    }

    /// The client endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills the server (its data stays, so a restart keeps the same state).
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Starts it again on the same ports and data directory.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.spawn()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A real nats-server on loopback.
pub struct Nats {
    proc: Proc,
    port: u16,
    bin: PathBuf,
    extra: Vec<String>,
    name: String,
}

impl Nats {
    /// Starts nats-server on a free port and waits until it listens.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with_args(&[])
    }

    /// Starts nats-server with extra command-line arguments (e.g. `--user`, `--pass`).
    pub fn start_with_args(extra: &[&str]) -> Result<Self, HarnessError> {
        let bin = find_binary("nats-server", "nats-server")?;
        let mut nats = Self {
            proc: Proc { child: None },
            port: free_port(),
            bin,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            name: unique_name("nats"),
        };
        let mut attempt = 0;
        loop {
            match nats.spawn() {
                Ok(()) => return Ok(nats),
                Err(e) if attempt >= 3 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    nats.port = free_port();
                }
            }
        }
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let mut child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--name", &self.name])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| HarnessError(format!("cannot start nats-server: {e}")))?;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        wait_until_ready(&mut child, "nats-server", addr, || {
            nats_is(addr, &self.name)
        })?;
        self.proc.child = Some(child);
        Ok(())
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.spawn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_starts_stops_and_restarts() {
        let mut etcd = Etcd::start().expect("etcd starts");
        let addr: SocketAddr = ([127, 0, 0, 1], etcd.client_port).into();
        assert!(TcpStream::connect(addr).is_ok());
        etcd.stop();
        assert!(TcpStream::connect(addr).is_err());
        etcd.restart().unwrap();
        assert!(TcpStream::connect(addr).is_ok());
    }

    #[test]
    fn nats_starts_stops_and_restarts() {
        let mut nats = Nats::start().expect("nats-server starts");
        let addr: SocketAddr = ([127, 0, 0, 1], nats.port).into();
        assert!(TcpStream::connect(addr).is_ok());
        nats.stop();
        assert!(TcpStream::connect(addr).is_err());
        nats.restart().unwrap();
        assert!(TcpStream::connect(addr).is_ok());
    }

    #[test]
    fn probes_tell_our_server_from_another_on_the_port() {
        let etcd = Etcd::start().expect("etcd starts");
        let addr: SocketAddr = ([127, 0, 0, 1], etcd.client_port).into();
        assert!(etcd_is(addr, &etcd.name));
        assert!(!etcd_is(addr, "someone-else"));
        let nats = Nats::start().expect("nats-server starts");
        let addr: SocketAddr = ([127, 0, 0, 1], nats.port).into();
        assert!(nats_is(addr, &nats.name));
        assert!(!nats_is(addr, "someone-else"));
        // A server of the other kind on the port is not taken for ours either.
        assert!(!etcd_is(addr, &nats.name));
    }

    #[test]
    fn a_server_that_cannot_bind_its_port_is_not_ready() {
        // Someone else holds the port: nats-server exits, and the probe does not mistake the
        // other listener for it.
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let mut nats = Nats {
            proc: Proc { child: None },
            port,
            bin: find_binary("nats-server", "nats-server").unwrap(),
            extra: Vec::new(),
            name: unique_name("nats"),
        };
        let e = nats.spawn().unwrap_err();
        assert!(e.0.contains("nats-server"), "{e}");
        assert!(nats.proc.child.is_none());
    }

    #[test]
    fn missing_binary_names_the_package() {
        let e = find_binary("definitely-not-installed-xyz", "some-package").unwrap_err();
        assert!(e.0.contains("apt-get install some-package"));
    }
}
