//! One client connection: setup (connect, handshake, login), then the measurement loop.
//!
//! The protocol state of a connection ([`Conn`]) is kept apart from I/O: it consumes packets and
//! timer events and appends outgoing packets to a write buffer. Two drivers own the socket, one
//! for TCP (read and write halves in one `select!`, writes batched) and one for WebSocket (one
//! binary message per packet).
//!
//! In an open loop the connection's requests are due on a [`Schedule`] shared with the pacer
//! thread, which wakes the connection (through its [`Notify`]) when the next one is due; the
//! driver then sends everything due at that instant. tokio's 1 ms timer only serves
//! housekeeping (heartbeats, timeouts, phase changes), and pacing when there is no pacer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::SplitSink;
use futures_util::{FutureExt, SinkExt, StreamExt};
use indicatif::ProgressBar;
use rookery_protocol::{
    ClientHandshake, HandshakeSys, Message, MessageType, Packet, PacketCodec, PacketType, Route,
    RouteName, HEADER_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

use crate::pacer::Schedule;
use crate::{put_varint, varint_len, Shared};

/// What a run asks of every connection (validated and resolved once).
pub(crate) struct Plan {
    pub target: SocketAddr,
    /// TLS (under the packets or the WebSocket) and the name the certificate is checked for.
    pub tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    pub ws_url: Option<String>,
    /// KCP over UDP instead of TCP.
    pub kcp: bool,
    pub source_ips: Vec<IpAddr>,
    pub connections: usize,
    pub inflight: usize,
    pub rate: Option<f64>,
    pub hold: bool,
    pub route: String,
    pub payload: Bytes,
    pub login: bool,
    pub push_route: Option<String>,
    pub timeout: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub ws_read_buffer: usize,
}

impl Plan {
    /// True when connections send requests at all.
    pub(crate) fn sends(&self) -> bool {
        !self.hold
            && match self.rate {
                Some(r) => r > 0.0,
                None => self.inflight > 0,
            }
    }
}

/// The start signal: when the run started, how many connections are live, and whether the
/// pacer thread wakes the connections in an open loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Start {
    pub at: Instant,
    pub live: usize,
    pub paced: bool,
}

/// Counters of one connection, summed at the end.
#[derive(Debug, Default, Clone)]
pub(crate) struct TaskStats {
    pub requests: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub pushes: u64,
    /// `errors` by the code of the error response, or [`TIMEOUT`] / [`CLOSED`].
    pub errors_by_code: BTreeMap<String, u64>,
    /// The server ended this connection before the generator did: why, and when.
    pub closed: Option<(String, Instant)>,
}

impl TaskStats {
    pub(crate) fn add(&mut self, o: &TaskStats) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.timeouts += o.timeouts;
        self.pushes += o.pushes;
        for (code, n) in &o.errors_by_code {
            self.count_error(code, *n);
        }
    }

    /// Adds `n` errors of `code` to `errors_by_code` (not to `errors`), allocating the key only
    /// the first time a code is seen.
    pub(crate) fn count_error(&mut self, code: &str, n: u64) {
        if n == 0 {
            return;
        }
        match self.errors_by_code.get_mut(code) {
            Some(c) => *c += n,
            None => {
                self.errors_by_code.insert(code.to_string(), n);
            }
        }
    }
}

/// `errors_by_code` key of requests left unanswered after `--timeout` or the final drain.
pub const TIMEOUT: &str = "TIMEOUT";
/// `errors_by_code` key of requests lost because the server closed their connection.
pub const CLOSED: &str = "CLOSED";
/// `errors_by_code` key of error responses whose payload carries no readable code.
pub const UNKNOWN: &str = "UNKNOWN";

/// Why the server ended a connection: what a Kick packet says, or how the socket ended.
fn kick_reason(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Kick {
        reason: Option<String>,
    }
    match serde_json::from_slice::<Kick>(body) {
        Ok(Kick {
            reason: Some(reason),
        }) if !reason.is_empty() => reason,
        _ => "kicked without a reason".into(),
    }
}

/// The code of an error response (`{"code": "...", "msg": "..."}`).
fn error_code(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Err {
        code: String,
    }
    serde_json::from_slice::<Err>(payload).ok().map(|e| e.code)
}

/// Close reason of a socket the server closed without a Kick.
pub(crate) const CLOSED_WITHOUT_KICK: &str = "closed without a kick";

/// How long a connection waits for its outstanding requests after the window.
pub(crate) fn drain_time(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(2))
}

/// Initial TCP read buffer; doubled (up to [`MAX_READ`]) while reads fill it.
const INITIAL_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;
/// Samples buffered per connection before they are recorded into a shared histogram.
const FLUSH_SAMPLES: usize = 256;
/// Responses counted locally before the shared progress counter is updated.
const FLUSH_PROGRESS: u64 = 64;
/// Open loop: most requests queued at one wake-up when behind schedule.
const MAX_BURST: usize = 1024;
const HEARTBEAT: [u8; 4] = [PacketType::Heartbeat as u8, 0, 0, 0];
const LOGIN_ROUTE: &str = "connector.entry.login";

/// A TCP connection, plain or over TLS (under a WebSocket).
type Io = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// An open connection during setup.
enum Link {
    Tcp(TcpStream, BytesMut),
    Tls(Box<TlsStream<TcpStream>>, BytesMut),
    Ws(Box<WebSocketStream<Io>>),
    Kcp(Box<tokio_kcp::KcpStream>, BytesMut),
}

/// Why a generator connection could not be set up (connect, upgrade, handshake, login).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    /// The server broke the protocol.
    #[error("{0}")]
    Protocol(#[from] rookery_protocol::ProtocolError),
    /// The handshake was refused or interrupted.
    #[error("{0}")]
    Handshake(#[from] rookery_protocol::HandshakeFailure),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
    /// The server kicked the connection before its login was answered.
    #[error("kicked during login")]
    KickedAtLogin,
    /// The login route answered an error.
    #[error("login refused: {0}")]
    LoginRefused(String),
    /// A stage did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// Connecting to the target failed.
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
}

/// The server ended a connection (a kick's reason, or how the socket ended).
pub(crate) struct ServerEnded(pub(crate) String);

/// What the handshake told us.
struct Session {
    heartbeat: Option<Duration>,
    dict: HashMap<String, u16>,
    next_id: u64,
}

impl Link {
    async fn send(&mut self, pkt: Bytes) -> Result<(), SetupError> {
        match self {
            Link::Tcp(s, _) => Ok(s.write_all(&pkt).await?),
            Link::Tls(s, _) => {
                s.write_all(&pkt).await?;
                Ok(s.flush().await?)
            }
            Link::Ws(ws) => Ok(ws.send(WsMessage::Binary(pkt)).await?),
            Link::Kcp(s, _) => {
                s.write_all(&pkt).await?;
                Ok(s.flush().await?)
            }
        }
    }

    async fn recv(&mut self, codec: &PacketCodec) -> Result<Packet, SetupError> {
        match self {
            Link::Tcp(s, buf) => read_packet(s, buf, codec).await,
            Link::Tls(s, buf) => read_packet(s, buf, codec).await,
            Link::Kcp(s, buf) => read_packet(&mut **s, buf, codec).await,
            Link::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Binary(b))) => return Ok(codec.decode_frame(b)?),
                    Some(Ok(WsMessage::Close(_))) | None => return Err(SetupError::Closed),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                }
            },
        }
    }
}

/// Reads until `buf` holds a whole packet.
async fn read_packet(
    s: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    codec: &PacketCodec,
) -> Result<Packet, SetupError> {
    loop {
        if let Some(p) = codec.decode(buf)? {
            return Ok(p);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(INITIAL_READ);
        }
        if s.read_buf(buf).await? == 0 {
            return Err(SetupError::Closed);
        }
    }
}

fn codec() -> PacketCodec {
    // Accept anything the wire allows: the bench reads what servers send, it is not a server.
    PacketCodec::new(usize::MAX)
}

fn route_for(
    dict: &HashMap<String, u16>,
    name: &str,
) -> Result<Route, rookery_protocol::ProtocolError> {
    match dict.get(name) {
        Some(&code) => Ok(Route::Code(code)),
        None => RouteName::try_from(name).map(Route::Name),
    }
}

async fn open_socket(plan: &Plan, idx: usize) -> std::io::Result<TcpStream> {
    let socket = if plan.target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if !plan.source_ips.is_empty() {
        let ip = plan.source_ips[idx % plan.source_ips.len()];
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(plan.target).await
}

async fn handshake(link: &mut Link, codec: &PacketCodec) -> Result<Session, SetupError> {
    let hs = ClientHandshake::new(
        HandshakeSys {
            client_type: Some("rookery-bench".into()),
            ..HandshakeSys::default()
        },
        serde_json::Value::Null,
    );
    link.send(hs.request_packet()).await?;
    let resp = loop {
        let p = link.recv(codec).await?;
        if let Some(answer) = hs.on_packet(p.kind, &p.body)? {
            break answer;
        }
    };
    let sys = resp.sys.unwrap_or_default();
    link.send(ClientHandshake::ack_packet()).await?;
    Ok(Session {
        heartbeat: (sys.heartbeat > 0).then(|| Duration::from_secs(sys.heartbeat)),
        dict: sys.dict,
        next_id: 1,
    })
}

async fn login(
    link: &mut Link,
    codec: &PacketCodec,
    session: &mut Session,
    idx: usize,
) -> Result<(), SetupError> {
    let id = session.next_id;
    session.next_id += 1;
    let route = route_for(&session.dict, LOGIN_ROUTE)?;
    let body = Bytes::from(format!(r#"{{"uid":"bench-{idx}"}}"#));
    let pkt = Message::request(id, route, body).to_packet_bytes()?;
    link.send(pkt).await?;
    loop {
        let p = link.recv(codec).await?;
        match p.kind {
            PacketType::Data => {
                let m = Message::decode(p.body)?;
                if m.kind == MessageType::Response && m.id == id {
                    return if m.error {
                        Err(SetupError::LoginRefused(
                            String::from_utf8_lossy(&m.payload).into_owned(),
                        ))
                    } else {
                        Ok(())
                    };
                }
            }
            PacketType::Kick => return Err(SetupError::KickedAtLogin),
            _ => {}
        }
    }
}

/// Connect, upgrade (WebSocket), handshake and log in, each stage within the timeout.
async fn setup(
    plan: &Plan,
    idx: usize,
    codec: &PacketCodec,
) -> Result<(Link, Session), SetupError> {
    if plan.kcp {
        let config = tokio_kcp::KcpConfig {
            nodelay: tokio_kcp::KcpNoDelayConfig::fastest(),
            flush_write: true,
            flush_acks_input: true,
            ..Default::default()
        };
        let stream = timeout(
            plan.timeout,
            tokio_kcp::KcpStream::connect(&config, plan.target),
        )
        .await
        .map_err(|_| SetupError::Timeout("connect"))?
        .map_err(|e| SetupError::Connect(plan.target, std::io::Error::other(e)))?;
        let link = Link::Kcp(Box::new(stream), BytesMut::with_capacity(INITIAL_READ));
        return greet(plan, idx, codec, link).await;
    }
    let stream = timeout(plan.timeout, open_socket(plan, idx))
        .await
        .map_err(|_| SetupError::Timeout("connect"))?
        .map_err(|e| SetupError::Connect(plan.target, e))?;
    let _ = stream.set_nodelay(true);
    let stream = match &plan.tls {
        None => Either::Left(stream),
        Some((connector, name)) => Either::Right(Box::new(
            timeout(plan.timeout, connector.connect(name.clone(), stream))
                .await
                .map_err(|_| SetupError::Timeout("TLS handshake"))??,
        )),
    };
    let link = match (&plan.ws_url, stream) {
        (None, Either::Left(s)) => Link::Tcp(s, BytesMut::with_capacity(INITIAL_READ)),
        (None, Either::Right(s)) => Link::Tls(s, BytesMut::with_capacity(INITIAL_READ)),
        (Some(url), stream) => {
            let config = WebSocketConfig::default()
                .read_buffer_size(plan.ws_read_buffer)
                .write_buffer_size(64 * 1024);
            let (ws, _) = timeout(
                plan.timeout,
                tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)),
            )
            .await
            .map_err(|_| SetupError::Timeout("websocket upgrade"))??;
            Link::Ws(Box::new(ws))
        }
    };
    greet(plan, idx, codec, link).await
}

/// The handshake and the login, each within the timeout.
async fn greet(
    plan: &Plan,
    idx: usize,
    codec: &PacketCodec,
    mut link: Link,
) -> Result<(Link, Session), SetupError> {
    let mut session = timeout(plan.timeout, handshake(&mut link, codec))
        .await
        .map_err(|_| SetupError::Timeout("handshake"))??;
    if plan.login {
        timeout(plan.timeout, login(&mut link, codec, &mut session, idx))
            .await
            .map_err(|_| SetupError::Timeout("login"))??;
    }
    Ok((link, session))
}

/// The task of one connection. Reports the setup outcome on `ready`, waits for the start
/// signal, runs until the end of the window plus the drain, and returns its counters (`None`
/// when the setup failed). In an open loop, `wake` is raised by the pacer when a request is
/// due.
pub(crate) async fn connection(
    idx: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    wake: Option<Arc<Notify>>,
    ready: mpsc::UnboundedSender<Result<(), SetupError>>,
    start: watch::Receiver<Option<Start>>,
    pb: ProgressBar,
) -> Option<TaskStats> {
    let codec = codec();
    let res = setup(&plan, idx, &codec).await;
    pb.inc(1);
    let (link, session) = match res {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    shared.running.fetch_add(1, Ordering::AcqRel);
    let _ = ready.send(Ok(()));
    drop(ready);
    let conn = Conn::new(idx, plan, shared.clone(), session);
    // Without a pacer the signal is never raised (and its branch stays disabled).
    let wake = wake.unwrap_or_default();
    let stats = match link {
        Link::Tcp(stream, rbuf) => drive_tcp(conn, stream, rbuf, start, &wake, codec).await,
        Link::Tls(stream, rbuf) => drive_tls(conn, *stream, rbuf, start, &wake, codec).await,
        Link::Ws(ws) => drive_ws(conn, *ws, start, &wake, codec).await,
        Link::Kcp(stream, rbuf) => {
            let (rd, wr) = tokio::io::split(*stream);
            drive_stream(conn, rd, wr, rbuf, start, &wake, codec).await
        }
    };
    if shared.running.fetch_sub(1, Ordering::AcqRel) == 1 {
        // The last connection ended (before the window's end when the server closed them all):
        // the coordinator stops waiting for the window.
        shared.all_ended.notify_one();
    }
    Some(stats)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connected, waiting for the start signal.
    Waiting,
    /// Sending (or holding) until the end of the window.
    Running,
    /// Window over: waiting for outstanding responses until the drain deadline.
    Draining,
    /// Finished.
    Done,
}

/// One outstanding request. `live` is false once answered or timed out (entries leave the queue
/// from the front, so that it stays sorted by id and by send time).
struct Pending {
    id: u64,
    at: Instant,
    live: bool,
}

/// Open-loop progress of one connection: its `k`-th request is due at `next`.
struct OpenLoop {
    schedule: Schedule,
    k: u64,
    next: Instant,
    /// The last wake-up hit [`MAX_BURST`] with requests still due: the connection wakes itself
    /// again at once rather than waiting for the pacer's next signal.
    behind: bool,
}

/// Protocol state of one connection during measurement.
struct Conn {
    idx: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    /// Flag byte of a request, and everything after its id (route, payload): pre-encoded.
    req_flag: u8,
    req_suffix: Bytes,
    push_code: Option<u16>,
    next_id: u64,
    pending: VecDeque<Pending>,
    live: usize,
    closed_loop: bool,
    open: Option<OpenLoop>,
    /// The pacer thread wakes this connection when a request is due (open loop).
    paced: bool,
    heartbeat: Option<Duration>,
    next_heartbeat: Instant,
    tick: Duration,
    next_tick: Instant,
    state: State,
    measure_start: Instant,
    measure_end: Instant,
    drain_end: Instant,
    stats: TaskStats,
    samples: Vec<u64>,
    push_samples: Vec<u64>,
    unreported: u64,
    unreported_pushes: u64,
}

impl Conn {
    fn new(idx: usize, plan: Arc<Plan>, shared: Arc<Shared>, session: Session) -> Self {
        // Pre-encode the request once: flag, id 0 (one byte), route, payload; keep what follows
        // the id. Routes the server put in its dictionary are sent compressed, as clients do.
        let route = route_for(&session.dict, &plan.route).unwrap_or_else(|_| Route::Code(0)); // validated in plan(); unreachable
        let mut tmpl = BytesMut::new();
        let _ = Message::request(0, route, plan.payload.clone()).encode_into(&mut tmpl);
        let req_flag = tmpl[0];
        let req_suffix = tmpl.split_off(2).freeze();
        let push_code = plan
            .push_route
            .as_ref()
            .and_then(|r| session.dict.get(r).copied());
        let now = Instant::now();
        let far = now + Duration::from_secs(10 * 365 * 24 * 3600);
        let sends = plan.sends();
        let mut tick = if sends {
            (plan.timeout / 4).min(Duration::from_secs(1))
        } else {
            Duration::from_secs(60)
        };
        if let Some(h) = session.heartbeat {
            tick = tick.min(h / 4);
        }
        let tick = tick.max(Duration::from_millis(5));
        Self {
            idx,
            plan,
            shared,
            req_flag,
            req_suffix,
            push_code,
            next_id: session.next_id,
            pending: VecDeque::new(),
            live: 0,
            closed_loop: false,
            open: None,
            paced: false,
            heartbeat: session.heartbeat,
            next_heartbeat: now + session.heartbeat.unwrap_or_default(),
            tick,
            next_tick: now + tick,
            state: State::Waiting,
            measure_start: far,
            measure_end: far,
            drain_end: far,
            stats: TaskStats::default(),
            samples: Vec::new(),
            push_samples: Vec::new(),
            unreported: 0,
            unreported_pushes: 0,
        }
    }

    fn waiting(&self) -> bool {
        self.state == State::Waiting
    }

    fn done(&self) -> bool {
        self.state == State::Done
    }

    /// True while the pacer's signal is what wakes this connection for its next request.
    fn paced(&self) -> bool {
        self.paced && self.state == State::Running && self.open.is_some()
    }

    /// The next instant at which [`Conn::poll_timers`] has something to do.
    fn next_wake(&self) -> Instant {
        let mut t = self.next_tick;
        match self.state {
            State::Running => {
                t = t.min(self.measure_end);
                if let Some(o) = &self.open {
                    if !self.paced || o.behind {
                        t = t.min(o.next);
                    }
                }
            }
            State::Draining => t = t.min(self.drain_end),
            State::Waiting | State::Done => {}
        }
        t
    }

    fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.measure_end
    }

    /// The start signal arrived.
    fn begin(&mut self, start: Start, now: Instant, wbuf: &mut BytesMut) {
        self.measure_start = start.at + self.plan.warmup;
        self.measure_end = self.measure_start + self.plan.duration;
        self.state = State::Running;
        if !self.plan.sends() {
            return;
        }
        match self.plan.rate {
            Some(rate) => {
                // The connections' schedules are staggered evenly over one interval.
                let schedule = Schedule::new(start.at, rate, start.live, self.plan.connections);
                if let Some(schedule) = schedule {
                    if let Some(next) = schedule.at(self.idx, 0) {
                        self.open = Some(OpenLoop {
                            schedule,
                            k: 0,
                            next,
                            behind: false,
                        });
                        self.paced = start.paced;
                    }
                }
            }
            None => {
                self.closed_loop = true;
                if now < self.measure_end {
                    for _ in 0..self.plan.inflight {
                        self.send_request(now, wbuf);
                    }
                }
            }
        }
    }

    /// Appends one request to `wbuf`; its latency is measured from `at`.
    fn send_request(&mut self, at: Instant, wbuf: &mut BytesMut) {
        let id = self.next_id;
        self.next_id += 1;
        let body_len = 1 + varint_len(id) + self.req_suffix.len();
        wbuf.reserve(HEADER_LEN + body_len);
        wbuf.put_u8(PacketType::Data as u8);
        wbuf.put_slice(&(body_len as u32).to_be_bytes()[1..]);
        wbuf.put_u8(self.req_flag);
        put_varint(wbuf, id);
        wbuf.put_slice(&self.req_suffix);
        self.pending.push_back(Pending { id, at, live: true });
        self.live += 1;
    }

    /// Handles one inbound packet; `Err` (why) means the connection must end.
    fn on_packet(
        &mut self,
        p: Packet,
        now: Instant,
        wbuf: &mut BytesMut,
    ) -> Result<(), ServerEnded> {
        match p.kind {
            PacketType::Data => {
                let m = Message::decode(p.body).map_err(|e| {
                    ServerEnded(format!("undecodable message from the server: {e}"))
                })?;
                match m.kind {
                    MessageType::Response => {
                        let error = m.error.then_some(&m.payload[..]);
                        self.on_response(m.id, error, now, wbuf)
                    }
                    MessageType::Push => self.on_push(&m, now),
                    MessageType::Request | MessageType::Notify => {}
                }
                Ok(())
            }
            PacketType::Kick => Err(ServerEnded(kick_reason(&p.body))),
            PacketType::Handshake | PacketType::HandshakeAck | PacketType::Heartbeat => Ok(()),
        }
    }

    /// A response arrived; `error` holds the payload of an error response.
    fn on_response(&mut self, id: u64, error: Option<&[u8]>, now: Instant, wbuf: &mut BytesMut) {
        // Ids are sent in increasing order and leave from the front: the queue is sorted.
        let Ok(i) = self.pending.binary_search_by_key(&id, |p| p.id) else {
            return; // timed out already, or not ours
        };
        let p = &mut self.pending[i];
        if !p.live {
            return;
        }
        p.live = false;
        let at = p.at;
        self.live -= 1;
        while self.pending.front().is_some_and(|p| !p.live) {
            self.pending.pop_front();
        }
        self.unreported += 1;
        if self.in_window(now) {
            self.stats.requests += 1;
            if let Some(payload) = error {
                self.stats.errors += 1;
                match error_code(payload) {
                    Some(code) => self.stats.count_error(&code, 1),
                    None => self.stats.count_error(UNKNOWN, 1),
                }
            }
            self.samples
                .push(now.saturating_duration_since(at).as_micros() as u64);
            if self.samples.len() >= FLUSH_SAMPLES {
                self.shared.record(self.idx, &mut self.samples, false);
            }
        }
        if self.closed_loop && self.state == State::Running && now < self.measure_end {
            self.send_request(now, wbuf);
        } else if self.state == State::Draining && self.live == 0 {
            self.state = State::Done;
        }
    }

    fn push_window(&self, now: Instant) -> bool {
        match self.state {
            State::Waiting => self.plan.warmup.is_zero(),
            _ => {
                now < self.measure_end && (self.plan.warmup.is_zero() || now >= self.measure_start)
            }
        }
    }

    fn on_push(&mut self, m: &Message, now: Instant) {
        let Some(want) = &self.plan.push_route else {
            return;
        };
        let matches = match &m.route {
            Some(Route::Name(n)) => n.as_bytes() == want.as_bytes(),
            Some(Route::Code(c)) => Some(*c) == self.push_code,
            None => false,
        };
        if !matches || !self.push_window(now) {
            return;
        }
        self.stats.pushes += 1;
        self.unreported_pushes += 1;
        if let Some(ts) = find_ts_us(&m.payload) {
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            self.push_samples.push(now_us.saturating_sub(ts));
            if self.push_samples.len() >= FLUSH_SAMPLES {
                self.shared.record(self.idx, &mut self.push_samples, true);
            }
        }
    }

    /// After a batch of packets: publish progress now and then.
    fn after_batch(&mut self) {
        if self.unreported >= FLUSH_PROGRESS || self.unreported_pushes >= FLUSH_PROGRESS {
            self.report_progress();
        }
    }

    fn report_progress(&mut self) {
        if self.unreported > 0 {
            self.shared
                .completed
                .fetch_add(self.unreported, Ordering::Relaxed);
            self.unreported = 0;
        }
        if self.unreported_pushes > 0 {
            self.shared
                .pushes
                .fetch_add(self.unreported_pushes, Ordering::Relaxed);
            self.unreported_pushes = 0;
        }
    }

    /// Heartbeats, timeouts, progress.
    fn housekeeping(&mut self, now: Instant, wbuf: &mut BytesMut) {
        if let Some(h) = self.heartbeat {
            if now >= self.next_heartbeat {
                wbuf.put_slice(&HEARTBEAT);
                self.next_heartbeat = now + h;
            }
        }
        let timeout = self.plan.timeout;
        while let Some(front) = self.pending.front() {
            if front.live && now.saturating_duration_since(front.at) < timeout {
                break; // the oldest live request has not expired: none has
            }
            let (live, at) = (front.live, front.at);
            self.pending.pop_front();
            if !live {
                continue;
            }
            self.live -= 1;
            if self.in_window(at) {
                self.stats.timeouts += 1;
                self.stats.errors += 1;
                self.stats.count_error(TIMEOUT, 1);
            }
            if self.closed_loop && self.state == State::Running && now < self.measure_end {
                self.send_request(now, wbuf);
            }
        }
        if self.state == State::Draining && self.live == 0 {
            self.state = State::Done;
        }
        self.report_progress();
        self.next_tick = now + self.tick;
    }

    /// Runs whatever is due at `now`: housekeeping, open-loop sends, phase changes.
    fn poll_timers(&mut self, now: Instant, wbuf: &mut BytesMut) {
        if now >= self.next_tick {
            self.housekeeping(now, wbuf);
        }
        match self.state {
            State::Running => {
                if let Some(mut o) = self.open.take() {
                    if self.paced && o.next <= now {
                        // How late the oldest request due leaves: the pacer's cue.
                        let lag = now.saturating_duration_since(o.next).as_micros() as u64;
                        self.shared.send_lag_us.fetch_max(lag, Ordering::Relaxed);
                    }
                    let mut n = 0;
                    let mut next = Some(o.next);
                    while let Some(at) = next.filter(|&at| at <= now && at < self.measure_end) {
                        if n == MAX_BURST {
                            break;
                        }
                        // Latency counts from the scheduled time, not from now.
                        self.send_request(at, wbuf);
                        o.k += 1;
                        next = o.schedule.at(self.idx, o.k);
                        n += 1;
                    }
                    if let Some(at) = next.filter(|&at| at < self.measure_end) {
                        o.next = at;
                        o.behind = at <= now;
                        self.open = Some(o);
                    }
                }
                if now >= self.measure_end {
                    self.open = None;
                    self.state = State::Draining;
                    self.drain_end = self.measure_end + drain_time(self.plan.timeout);
                    if self.live == 0 {
                        self.state = State::Done;
                    }
                }
            }
            State::Draining if now >= self.drain_end => {
                // Still unanswered: counted as timeouts when sent inside the window.
                let lost = self
                    .pending
                    .iter()
                    .filter(|p| p.live && self.in_window(p.at))
                    .count() as u64;
                self.stats.timeouts += lost;
                self.stats.errors += lost;
                self.stats.count_error(TIMEOUT, lost);
                self.pending.clear();
                self.live = 0;
                self.state = State::Done;
            }
            _ => {}
        }
    }

    /// The server ended the connection (`reason`) before this side was done with it.
    fn closed_by_server(&mut self, reason: String, now: Instant) {
        if self.state != State::Done && self.stats.closed.is_none() {
            self.stats.closed = Some((reason, now));
        }
    }

    /// The connection ended before this side was done with it (closed by the server, or the run
    /// was abandoned): requests sent in the window and unanswered are errors.
    fn lost(&mut self) {
        if self.state != State::Done {
            let lost = self
                .pending
                .iter()
                .filter(|p| p.live && self.in_window(p.at))
                .count() as u64;
            self.stats.errors += lost;
            self.stats.count_error(CLOSED, lost);
            self.pending.clear();
            self.live = 0;
            self.state = State::Done;
        }
    }

    fn finish(mut self) -> TaskStats {
        self.shared.record(self.idx, &mut self.samples, false);
        self.shared.record(self.idx, &mut self.push_samples, true);
        self.report_progress();
        self.stats
    }
}

/// Finds a numeric `"ts_us"` field in a JSON payload without parsing the whole document.
pub(crate) fn find_ts_us(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"ts_us\"";
    let pos = payload.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = &payload[pos + KEY.len()..];
    let rest = rest
        .trim_ascii_start()
        .strip_prefix(b":")?
        .trim_ascii_start();
    let end = rest
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
        .unwrap_or(rest.len());
    let num = std::str::from_utf8(&rest[..end]).ok()?;
    num.parse::<u64>().ok().or_else(|| {
        let f = num.parse::<f64>().ok()?;
        (f.is_finite() && f >= 0.0).then_some(f as u64)
    })
}

/// A write half that can also write without waiting (a plain TCP socket's can; others say
/// "would block" and leave it to the awaited write).
trait TryWrite: AsyncWrite + Unpin {
    fn try_write_now(&mut self, buf: &[u8]) -> std::io::Result<usize>;
}

impl TryWrite for tokio::net::tcp::WriteHalf<'_> {
    fn try_write_now(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.try_write(buf)
    }
}

impl<S: AsyncWrite> TryWrite for tokio::io::WriteHalf<S> {
    fn try_write_now(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

async fn drive_tcp(
    conn: Conn,
    mut stream: TcpStream,
    rbuf: BytesMut,
    start: watch::Receiver<Option<Start>>,
    signal: &Notify,
    codec: PacketCodec,
) -> TaskStats {
    let (rd, wr) = stream.split();
    drive_stream(conn, rd, wr, rbuf, start, signal, codec).await
}

async fn drive_tls(
    conn: Conn,
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    start: watch::Receiver<Option<Start>>,
    signal: &Notify,
    codec: PacketCodec,
) -> TaskStats {
    let (rd, wr) = tokio::io::split(stream);
    drive_stream(conn, rd, wr, rbuf, start, signal, codec).await
}

async fn drive_stream(
    mut conn: Conn,
    mut rd: impl AsyncRead + Unpin,
    mut wr: impl TryWrite,
    mut rbuf: BytesMut,
    mut start: watch::Receiver<Option<Start>>,
    signal: &Notify,
    codec: PacketCodec,
) -> TaskStats {
    let mut wbuf = BytesMut::new();
    let mut read_chunk = INITIAL_READ;
    let mut armed = conn.next_wake();
    let sleep = tokio::time::sleep_until(armed);
    tokio::pin!(sleep);
    let woken = signal.notified();
    tokio::pin!(woken);
    let mut ok = true;
    loop {
        if rbuf.capacity() - rbuf.len() < read_chunk / 2 {
            rbuf.reserve(read_chunk);
        }
        let spare = rbuf.capacity() - rbuf.len();
        let wake = conn.next_wake();
        if wake != armed {
            sleep.as_mut().reset(wake);
            armed = wake;
        }
        let mut read_at = None;
        tokio::select! {
            res = rd.read_buf(&mut rbuf) => match res {
                Ok(0) => {
                    conn.closed_by_server(CLOSED_WITHOUT_KICK.into(), Instant::now());
                    ok = false;
                }
                Err(e) => {
                    conn.closed_by_server(format!("read error: {e}"), Instant::now());
                    ok = false;
                }
                Ok(n) => {
                    if n >= spare && read_chunk < MAX_READ {
                        read_chunk *= 2;
                    }
                    let now = Instant::now();
                    loop {
                        match codec.decode(&mut rbuf) {
                            Ok(Some(p)) => {
                                if let Err(ServerEnded(reason)) = conn.on_packet(p, now, &mut wbuf) {
                                    conn.closed_by_server(reason, now);
                                    ok = false;
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                let reason = format!("undecodable packet from the server: {e}");
                                conn.closed_by_server(reason, now);
                                ok = false;
                                break;
                            }
                        }
                    }
                    conn.after_batch();
                    read_at = Some(now);
                }
            },
            res = wr.write(&wbuf), if !wbuf.is_empty() => match res {
                Ok(n) => wbuf.advance(n),
                Err(e) => {
                    conn.closed_by_server(format!("write error: {e}"), Instant::now());
                    ok = false;
                }
            },
            _ = &mut sleep => {}
            // A request is due: poll_timers below sends it.
            _ = &mut woken, if conn.paced() => woken.set(signal.notified()),
            res = start.changed(), if conn.waiting() => match res {
                Ok(()) => {
                    let s = *start.borrow_and_update();
                    if let Some(s) = s {
                        conn.begin(s, Instant::now(), &mut wbuf);
                    }
                }
                // The coordinator is gone.
                Err(_) => ok = false,
            },
        }
        if !ok {
            break;
        }
        conn.poll_timers(read_at.unwrap_or_else(Instant::now), &mut wbuf);
        if conn.done() {
            break;
        }
        if !wbuf.is_empty() {
            match wr.try_write_now(&wbuf) {
                Ok(n) => wbuf.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    conn.closed_by_server(format!("write error: {e}"), Instant::now());
                    break;
                }
            }
        }
    }
    conn.lost();
    let _ = timeout(Duration::from_millis(500), wr.shutdown()).await;
    conn.finish()
}

type WsSink = SplitSink<WebSocketStream<Io>, WsMessage>;

/// Sends the packets in `wbuf` as one binary message each, then flushes.
async fn ws_flush(tx: &mut WsSink, wbuf: &mut BytesMut) -> Result<(), tungstenite::Error> {
    while wbuf.len() >= HEADER_LEN {
        let len = HEADER_LEN + u32::from_be_bytes([0, wbuf[1], wbuf[2], wbuf[3]]) as usize;
        let pkt = wbuf.split_to(len.min(wbuf.len())).freeze();
        tx.feed(WsMessage::Binary(pkt)).await?;
    }
    tx.flush().await
}

/// Handles one WebSocket read result; false when the connection must end (the server ended
/// it, recorded with its reason).
fn on_ws(
    conn: &mut Conn,
    m: Option<Result<WsMessage, tungstenite::Error>>,
    now: Instant,
    wbuf: &mut BytesMut,
    codec: &PacketCodec,
) -> bool {
    let end = match m {
        Some(Ok(WsMessage::Binary(b))) => match codec.decode_frame(b) {
            Ok(p) => match conn.on_packet(p, now, wbuf) {
                Ok(()) => return true,
                Err(ServerEnded(reason)) => reason,
            },
            Err(e) => format!("undecodable packet from the server: {e}"),
        },
        Some(Ok(WsMessage::Close(_))) | None => CLOSED_WITHOUT_KICK.into(),
        Some(Err(e)) => format!("read error: {e}"),
        Some(Ok(_)) => return true,
    };
    conn.closed_by_server(end, now);
    false
}

async fn drive_ws(
    mut conn: Conn,
    ws: WebSocketStream<Io>,
    mut start: watch::Receiver<Option<Start>>,
    signal: &Notify,
    codec: PacketCodec,
) -> TaskStats {
    let (mut tx, mut rx) = ws.split();
    let mut wbuf = BytesMut::new();
    let mut armed = conn.next_wake();
    let sleep = tokio::time::sleep_until(armed);
    tokio::pin!(sleep);
    let woken = signal.notified();
    tokio::pin!(woken);
    let mut ok = true;
    loop {
        let wake = conn.next_wake();
        if wake != armed {
            sleep.as_mut().reset(wake);
            armed = wake;
        }
        let mut read_at = None;
        tokio::select! {
            m = rx.next() => {
                let now = Instant::now();
                ok = on_ws(&mut conn, m, now, &mut wbuf, &codec);
                // Take every message already buffered before writing.
                while ok {
                    match rx.next().now_or_never() {
                        Some(m) => ok = on_ws(&mut conn, m, now, &mut wbuf, &codec),
                        None => break,
                    }
                }
                conn.after_batch();
                read_at = Some(now);
            }
            _ = &mut sleep => {}
            // A request is due: poll_timers below sends it.
            _ = &mut woken, if conn.paced() => woken.set(signal.notified()),
            res = start.changed(), if conn.waiting() => match res {
                Ok(()) => {
                    let s = *start.borrow_and_update();
                    if let Some(s) = s {
                        conn.begin(s, Instant::now(), &mut wbuf);
                    }
                }
                Err(_) => ok = false,
            },
        }
        if !ok {
            break;
        }
        conn.poll_timers(read_at.unwrap_or_else(Instant::now), &mut wbuf);
        if conn.done() {
            break;
        }
        if !wbuf.is_empty() {
            let end = match timeout(conn.plan.timeout, ws_flush(&mut tx, &mut wbuf)).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("write error: {e}")),
                Err(_) => Some("the server stopped reading (write timed out)".to_string()),
            };
            if let Some(reason) = end {
                conn.closed_by_server(reason, Instant::now());
                break;
            }
        }
    }
    conn.lost();
    let _ = timeout(Duration::from_millis(500), tx.close()).await;
    conn.finish()
}

#[cfg(test)]
mod tests {
    use super::find_ts_us;

    #[test]
    fn finds_ts_us() {
        assert_eq!(find_ts_us(br#"{"ts_us":123}"#), Some(123));
        assert_eq!(
            find_ts_us(br#"{"a":1, "ts_us" : 1700000000000000, "b":2}"#),
            Some(1_700_000_000_000_000)
        );
        assert_eq!(find_ts_us(br#"{"ts_us":1.5e3}"#), Some(1500));
        assert_eq!(find_ts_us(br#"{"ts_us":"x"}"#), None);
        assert_eq!(find_ts_us(br#"{"ts":1}"#), None);
        assert_eq!(find_ts_us(b""), None);
    }
}
