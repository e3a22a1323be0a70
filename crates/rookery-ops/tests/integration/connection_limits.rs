//! The deadlines and the connection cap of the HTTP gateway and the admin server, over raw
//! sockets: a client that sends nothing, trickles its head, stops short of its body or idles
//! after a request is closed within its deadline, while normal requests go on; connections
//! beyond the cap are answered 503; shutdown does not wait for idle connections.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{client, config, http, parse, start, Node, Resp, SLOW_STARTED, WAIT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

/// How much later than its deadline a connection may be seen closed (a loaded machine).
const SLACK: Duration = Duration::from_secs(2);

fn limits(header: f64, body: f64, idle: f64, max_connections: usize) -> rookery::Config {
    let mut c = config();
    c.http.header_timeout = header;
    c.http.body_timeout = body;
    c.http.idle_timeout = idle;
    c.http.max_connections = max_connections;
    c.admin.header_timeout = header;
    c.admin.body_timeout = body;
    c.admin.idle_timeout = idle;
    c.admin.max_connections = max_connections;
    c
}

/// One of the two servers under test, with a request it answers 200.
#[derive(Clone, Copy)]
struct Target {
    name: &'static str,
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
}

fn targets(node: &Node) -> [Target; 2] {
    [
        Target {
            name: "http gateway",
            addr: node.http,
            method: "POST",
            path: "/ops/echo/json",
        },
        Target {
            name: "admin",
            addr: node.admin,
            method: "GET",
            path: "/api/node",
        },
    ]
}

impl Target {
    /// A complete keep-alive request.
    fn request(&self) -> String {
        let body = if self.method == "POST" { "{}" } else { "" };
        format!(
            "{} {} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
            self.method,
            self.path,
            body.len()
        )
    }

    /// A normal request on a fresh connection is answered 200.
    async fn works(&self) {
        let body: &[u8] = if self.method == "POST" { b"{}" } else { b"" };
        let r = http(self.addr, self.method, self.path, &[], body).await;
        assert_eq!(r.status, 200, "{}: {}", self.name, r.text());
    }
}

/// Reads until the server closes the connection (failing after [`WAIT`]); returns what it
/// sent.
async fn until_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let deadline = Instant::now() + WAIT;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: connection still open after {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return raw,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response on a kept-alive connection (its body by `Content-Length`).
async fn read_response(s: &mut TcpStream, what: &str) -> Resp {
    let deadline = Instant::now() + WAIT;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse(&raw[..end + 4]);
            let len: usize = head
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what}: no content-length in {head:?}"));
            if raw.len() >= end + 4 + len {
                return parse(&raw[..end + 4 + len]);
            }
        }
        match timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: no response within {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => panic!("{what}: closed before a whole response"),
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

/// Asserts that `elapsed` is the deadline at work: not before it, and not long after.
fn assert_closed_at(what: &str, elapsed: Duration, deadline: Duration) {
    assert!(
        elapsed >= deadline && elapsed < deadline + SLACK,
        "{what}: closed after {elapsed:?}, deadline {deadline:?}"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_header_deadline() {
    let header = Duration::from_millis(500);
    let node = start(limits(header.as_secs_f64(), 30.0, 30.0, 100)).await;
    for t in targets(&node) {
        let t0 = Instant::now();
        let mut silent = TcpStream::connect(t.addr).await.unwrap();
        t.works().await;
        let sent = until_closed(&mut silent, t.name).await;
        assert_closed_at(t.name, t0.elapsed(), header);
        assert!(
            sent.is_empty(),
            "{}: {:?}",
            t.name,
            String::from_utf8_lossy(&sent)
        );
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_partial_head_is_closed_at_the_header_deadline() {
    let header = Duration::from_millis(500);
    let node = start(limits(header.as_secs_f64(), 30.0, 30.0, 100)).await;
    for t in targets(&node) {
        let request = t.request();
        let line_end = request.find("\r\n").unwrap();
        let header_end = request.find("\r\n\r\n").unwrap();
        // Half a request line; a whole request line and half the headers.
        let partials = [&request[..line_end / 2], &request[..header_end + 2]];
        let t0 = Instant::now();
        let mut conns = Vec::new();
        for p in partials {
            let mut s = TcpStream::connect(t.addr).await.unwrap();
            s.write_all(p.as_bytes()).await.unwrap();
            conns.push(s);
        }
        // A head trickled a byte at a time, each well within the deadline: the deadline is the
        // whole head's, so the trickle does not keep the connection open.
        let trickle = TcpStream::connect(t.addr).await.unwrap();
        let (mut rd, mut wr) = trickle.into_split();
        let writer = tokio::spawn(async move {
            for b in b"GET /api/node HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        t.works().await;
        for (i, s) in conns.iter_mut().enumerate() {
            until_closed(s, &format!("{} partial {i}", t.name)).await;
            assert_closed_at(t.name, t0.elapsed(), header);
        }
        let mut buf = [0u8; 64];
        let read = timeout(WAIT, rd.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{}: trickled head not closed: {read:?}",
            t.name
        );
        assert_closed_at(&format!("{} trickle", t.name), t0.elapsed(), header);
        timeout(WAIT, writer).await.unwrap().unwrap();
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_short_body_is_answered_408_at_the_body_deadline() {
    let body = Duration::from_millis(500);
    let node = start(limits(30.0, body.as_secs_f64(), 30.0, 100)).await;
    let cases = [
        ("http gateway", node.http, "/ops/echo/json"),
        ("admin", node.admin, "/api/kick"),
    ];
    for (name, addr, path) in cases {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        let head = format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(br#"{"uid":"#).await.unwrap();
        for t in targets(&node) {
            t.works().await;
        }
        let raw = until_closed(&mut s, name).await;
        assert_closed_at(name, t0.elapsed(), body);
        let r = parse(&raw);
        assert_eq!(r.status, 408, "{name}: {}", r.text());
        assert_eq!(r.json()["code"], "RK-408", "{name}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_the_idle_deadline() {
    let idle = Duration::from_millis(500);
    let node = start(limits(30.0, 30.0, idle.as_secs_f64(), 100)).await;
    for t in targets(&node) {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        for i in 0..2 {
            let t0 = Instant::now();
            s.write_all(t.request().as_bytes()).await.unwrap();
            let r = read_response(&mut s, t.name).await;
            assert_eq!(r.status, 200, "{} request {i}: {}", t.name, r.text());
            if i == 1 {
                until_closed(&mut s, t.name).await;
                assert_closed_at(t.name, t0.elapsed(), idle);
            }
        }
    }
    node.shutdown().await;
}

#[tokio::test]
async fn idle_and_header_deadlines_are_separate() {
    // A kept-alive connection waits for its next request the idle deadline, not the (shorter)
    // header deadline.
    let header = Duration::from_millis(300);
    let node = start(limits(header.as_secs_f64(), 30.0, 30.0, 100)).await;
    for t in targets(&node) {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        s.write_all(t.request().as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s, t.name).await.status, 200);
        let mut buf = [0u8; 16];
        let idle = timeout(header * 4, s.read(&mut buf)).await;
        assert!(idle.is_err(), "{}: idle connection ended: {idle:?}", t.name);
        s.write_all(t.request().as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s, t.name).await.status, 200);
        // Its next head is under the header deadline again.
        let t0 = Instant::now();
        s.write_all(b"GET /api").await.unwrap();
        until_closed(&mut s, t.name).await;
        assert_closed_at(t.name, t0.elapsed(), header);
    }
    node.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_answered_503() {
    let max = 3;
    let node = start(limits(30.0, 30.0, 30.0, max)).await;
    for t in targets(&node) {
        let mut held = Vec::new();
        for _ in 0..max {
            held.push(TcpStream::connect(t.addr).await.unwrap());
        }
        // Accepted in order: these three hold every slot, the next is over the cap.
        let mut over = TcpStream::connect(t.addr).await.unwrap();
        let r = parse(&until_closed(&mut over, t.name).await);
        assert_eq!(r.status, 503, "{}: {}", t.name, r.text());
        assert_eq!(r.json()["code"], "RK-503");
        // The connections within the cap are served.
        held[0].write_all(t.request().as_bytes()).await.unwrap();
        let r = read_response(&mut held[0], t.name).await;
        assert_eq!(r.status, 200, "{}: {}", t.name, r.text());
        // The game gateway's connections are not counted against the cap.
        let game = client(&node, None).await;
        game.request_json("ops.echo.json", json!({"game": true}))
            .await
            .expect("a game client is served while the HTTP cap is reached");
        // A closed connection frees its slot for the next one.
        held.clear();
        let deadline = Instant::now() + WAIT;
        loop {
            let body: &[u8] = if t.method == "POST" { b"{}" } else { b"" };
            let r = http(t.addr, t.method, t.path, &[], body).await;
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503, "{}: {}", t.name, r.text());
            assert!(Instant::now() < deadline, "{}: slots never freed", t.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    node.shutdown().await;
}

/// Opens, on `t`, a silent connection, one with half a head and one idle after a request.
async fn idle_connections(t: Target) -> Vec<TcpStream> {
    let silent = TcpStream::connect(t.addr).await.unwrap();
    let mut partial = TcpStream::connect(t.addr).await.unwrap();
    partial.write_all(b"GET /api/no").await.unwrap();
    let mut kept = TcpStream::connect(t.addr).await.unwrap();
    kept.write_all(t.request().as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut kept, t.name).await.status, 200);
    vec![silent, partial, kept]
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_connections() {
    let mut node = start(limits(30.0, 30.0, 30.0, 100)).await;
    let mut conns = Vec::new();
    for t in targets(&node) {
        conns.extend(idle_connections(t).await);
    }
    let t0 = Instant::now();
    node.stop_ops().await;
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(500), "shutdown took {took:?}");
    for (i, s) in conns.iter_mut().enumerate() {
        until_closed(s, &format!("connection {i}")).await;
    }
    assert!(
        TcpStream::connect(node.http).await.is_err(),
        "still listening"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let mut node = start(limits(30.0, 30.0, 30.0, 100)).await;
    let t = targets(&node)[0];
    let mut idle = idle_connections(t).await;
    let mut busy = TcpStream::connect(node.http).await.unwrap();
    let body = r#"{"ms":400}"#;
    let req = format!(
        "POST /ops/slow/started HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    busy.write_all(req.as_bytes()).await.unwrap();
    timeout(WAIT, SLOW_STARTED.notified())
        .await
        .expect("the slow handler started");
    let t0 = Instant::now();
    let stop = async {
        node.stop_ops().await;
        t0.elapsed()
    };
    let idle_closed = async {
        for (i, s) in idle.iter_mut().enumerate() {
            until_closed(s, &format!("idle connection {i}")).await;
        }
        t0.elapsed()
    };
    let answered = async {
        let raw = until_closed(&mut busy, "request in flight").await;
        (parse(&raw), t0.elapsed())
    };
    let (stopped, idle_closed, (resp, answered)) = tokio::join!(stop, idle_closed, answered);
    assert!(
        idle_closed < Duration::from_millis(300),
        "idle connections closed after {idle_closed:?}"
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), json!({"slept_ms": 400}));
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        stopped >= answered.saturating_sub(Duration::from_millis(50)) && stopped < SLACK,
        "stopped after {stopped:?}, the request answered after {answered:?}"
    );
    node.shutdown().await;
}
