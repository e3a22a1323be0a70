//! Starts real `etcd` and `nats-server` processes (from the system's packages) on free loopback
//! ports in temporary directories, for tests. Each server is stopped when its guard is dropped.
//! A missing binary is an error that names the package to install.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn wait_until_listening(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
) -> Result<(), HarnessError> {
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(HarnessError(format!("{what} exited early: {status}")));
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(HarnessError(format!(
                "{what} did not listen on {addr} in time"
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
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
            .arg("--name=test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| HarnessError(format!("cannot start etcd: {e}")))?;
        let addr: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        wait_until_listening(addr, &mut child, "etcd")?;
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
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| HarnessError(format!("cannot start nats-server: {e}")))?;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        wait_until_listening(addr, &mut child, "nats-server")?;
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
    fn missing_binary_names_the_package() {
        let e = find_binary("definitely-not-installed-xyz", "some-package").unwrap_err();
        assert!(e.0.contains("apt-get install some-package"));
    }
}
