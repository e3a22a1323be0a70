//! Shared fixtures: a node with a test module plus the admin server and HTTP gateway on port 0,
//! and a tiny raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rookery::{
    CancellationToken, Code, Config, Context, Error, Json, Module, ModuleInit, RunningServer,
    Server,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub use rookery_testkit::{eventually, WAIT};

/// The secret a failing handler hides; must never reach a client.
pub const SECRET: &str = "db password hunter2";

/// Notified when `ops.slow.started` begins (its permit is kept until someone waits).
pub static SLOW_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A config with a TCP acceptor on port 0 (and no WebSocket acceptor).
pub fn config() -> Config {
    let mut c = rookery_testkit::server::config();
    c.gateway.ws = None;
    c.node.id = "ops-test-1".into();
    c.node.node_type = "game".into();
    c
}

/// Module `ops`: one handler per behaviour under test.
pub struct OpsModule;

#[derive(serde::Deserialize)]
struct Sleep {
    ms: u64,
}

impl Module for OpsModule {
    fn name(&self) -> &str {
        "ops"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        init.handler(
            "echo.json",
            |_c: Context, Json(v): Json<Value>| async move { Ok(Json(v)) },
        );
        init.handler(
            "auth.login",
            |c: Context, Json(v): Json<Value>| async move {
                let uid = v["uid"].as_str().unwrap_or_default().to_string();
                c.bind(&uid).await?;
                Ok(Json(json!({ "uid": uid })))
            },
        );
        init.handler("auth.whoami", |c: Context, _: ()| async move {
            Ok(Json(json!({ "uid": c.require_uid()?.to_string() })))
        })
        .login_required();
        init.handler(
            "group.join",
            |c: Context, Json(v): Json<Value>| async move {
                let name = v["group"].as_str().unwrap_or("lobby").to_string();
                c.app().groups().add(&name, c.session())?;
                Ok(Json(json!({ "group": name })))
            },
        )
        .login_required();
        init.handler("push.me", |c: Context, Json(v): Json<Value>| async move {
            c.push("onPing", Json(&v))?;
            Ok(Json(json!({})))
        });
        init.handler("internal.only", |_c: Context, _: ()| async move {
            Ok(Json(json!({ "secret": true })))
        })
        .internal();
        init.handler(
            "slow.sleep",
            |_c: Context, Json(s): Json<Sleep>| async move {
                tokio::time::sleep(Duration::from_millis(s.ms)).await;
                Ok(Json(json!({ "slept_ms": s.ms })))
            },
        );
        init.handler(
            "slow.started",
            |_c: Context, Json(s): Json<Sleep>| async move {
                SLOW_STARTED.notify_one();
                tokio::time::sleep(Duration::from_millis(s.ms)).await;
                Ok(Json(json!({ "slept_ms": s.ms })))
            },
        );
        init.handler("fail.rate", |_c: Context, _: ()| async move {
            Err::<(), _>(Error::new(Code::RateLimited, "slow down"))
        });
        init.handler("fail.unavailable", |_c: Context, _: ()| async move {
            Err::<(), _>(Error::new(Code::Unavailable, "no node"))
        });
        init.handler("fail.internal", |_c: Context, _: ()| async move {
            Err::<(), _>(Error::internal(SECRET))
        });
        init.handler("fail.panic", |_c: Context, _: ()| async move {
            if SECRET.is_empty() {
                return Ok(());
            }
            panic!("{}", SECRET)
        });
        init.handler("fail.custom", |_c: Context, _: ()| async move {
            Err::<(), _>(Error::custom("ROOM-FULL", "the room is full"))
        });
        Ok(())
    }
}

/// A running node with its admin server and HTTP gateway.
pub struct Node {
    pub server: RunningServer,
    pub admin: SocketAddr,
    pub http: SocketAddr,
    pub tcp: String,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

/// Installs metrics, starts a node with [`OpsModule`], the admin server and the HTTP gateway.
pub async fn start(config: Config) -> Node {
    let _ = rookery_ops::install_metrics();
    let server = Server::builder(config)
        .module(OpsModule)
        .start()
        .await
        .expect("server starts");
    serve_ops(server, true).await
}

impl Node {
    /// Stops the admin and HTTP servers (they must end promptly) and the node.
    pub async fn shutdown(mut self) {
        self.stop_ops().await;
        self.server.shutdown().await;
    }

    /// Stops the admin and HTTP servers and waits until both have returned (failing after
    /// [`WAIT`]); the node keeps running.
    pub async fn stop_ops(&mut self) {
        self.stop.cancel();
        for t in std::mem::take(&mut self.tasks) {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("ops servers stop on cancel")
                .expect("task did not panic")
                .expect("server ended cleanly");
        }
    }
}

/// A client connected and, if `uid` is given, logged in.
pub async fn client(node: &Node, uid: Option<&str>) -> rookery_client::Client {
    let c = rookery_client::Client::connect(&node.tcp, rookery_client::ClientOptions::default())
        .await
        .expect("client connects");
    if let Some(uid) = uid {
        c.request_json("ops.auth.login", json!({ "uid": uid }))
            .await
            .expect("login");
    }
    c
}

/// An HTTP response as the tests read it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), read to the end.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    tokio::time::timeout(WAIT, http_inner(addr, method, path, headers, body))
        .await
        .expect("HTTP request finished in time")
}

async fn http_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write head");
    // The server may answer (e.g. 413) and close before reading a large body: ignore errors.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if !raw.is_empty() => {
                eprintln!("read ended with {e} after {} bytes", raw.len());
                break;
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
    parse(&raw)
}

/// Parses a whole response (head and body) as read from the socket.
pub fn parse(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_line = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        rest = &rest[eol + 2..];
        if size == 0 || rest.len() < size {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[(size + 2).min(rest.len())..];
    }
}

/// GET returning JSON, asserting 200.
pub async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = http(addr, "GET", path, &[], b"").await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// The value of a Prometheus series (exact name and labels as rendered), if present.
pub fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name_and_labels)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Two nodes in one process sharing embedded discovery and the in-process transport: a gateway
/// `gate-1` without modules (with the admin server and HTTP gateway) and a backend `back-1`
/// running [`OpsModule`]. Returns the gateway's [`Node`] and the backend.
pub async fn start_pair() -> (Node, RunningServer) {
    use rookery::cluster::{EmbeddedDiscovery, InProcTransport};
    let _ = rookery_ops::install_metrics();
    let discovery = EmbeddedDiscovery::new();
    let transport = InProcTransport::new();
    let mut bcfg = Config::default();
    bcfg.node.id = "back-1".into();
    bcfg.node.node_type = "backend".into();
    let back = Server::builder(bcfg)
        .module(OpsModule)
        .discovery(Arc::new(discovery.handle()))
        .transport(Arc::new(transport.clone()))
        .start()
        .await
        .expect("backend starts");
    let mut gcfg = config();
    gcfg.node.id = "gate-1".into();
    gcfg.node.node_type = "gate".into();
    let server = Server::builder(gcfg)
        .discovery(Arc::new(discovery.handle()))
        .transport(Arc::new(transport))
        .start()
        .await
        .expect("gateway starts");
    eventually("the gateway sees the backend", || {
        server.app().cluster().running("ops").len() == 1
    })
    .await;
    (serve_ops(server, true).await, back)
}

/// Starts the admin server (with metrics when `metrics`) and HTTP gateway for a started server.
pub async fn serve_ops(server: RunningServer, metrics: bool) -> Node {
    let metrics = metrics.then(rookery_ops::install_metrics);
    let stop = CancellationToken::new();
    let admin_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_l.local_addr().unwrap();
    let http = http_l.local_addr().unwrap();
    let app = server.app().clone();
    let tasks = vec![
        tokio::spawn(rookery_ops::serve_admin(
            app.clone(),
            admin_l,
            metrics,
            stop.clone(),
        )),
        tokio::spawn(rookery_ops::serve_http_gateway(app, http_l, stop.clone())),
    ];
    let tcp = server.tcp_addr().map(|a| a.to_string()).unwrap_or_default();
    Node {
        server,
        admin,
        http,
        tcp,
        stop,
        tasks,
    }
}
