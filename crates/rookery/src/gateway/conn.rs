//! The connection driver: handshake, session, then the running phase ([`Running`]: a reader
//! that runs each request's handler in order, and a writer with batched writes); here also what
//! the reader does with a packet (rate limit, route resolution) and a request (`run_job`).
//!
//! Task tree for one connection, all owned by the connection task:
//! ```text
//! connection task ── reader, running ordered handlers inline
//!                 │  + writer (polled by the same task, after the reader)
//!                 └─ concurrent handler tasks (routes with Dispatch::Concurrent; bounded)
//! ```
//! Running ordered handlers inline, and the writer in the same task, keeps a request's whole
//! path in one task: no hop between read, handler and write. The next packet is read when the
//! handler is done, so the socket buffer is the inbound queue; the writer keeps writing while an
//! inline handler waits. The connection task returns only after its handler tasks and writer
//! have ended and the session has been removed from the pool and its groups.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rookery_protocol::handshake::{HandshakeResponseSys, CODE_BAD_REQUEST, CODE_OK};
use rookery_protocol::{
    HandshakeRequest, HandshakeResponse, HandshakeSys, Message, MessageType, Packet, PacketType,
    RouteDict, Serializer,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, Instant};

use super::running::Running;
use super::transport::{PacketReader, PacketWriter, Transport};
use crate::router::RouteEntry;
use crate::session::{Acceptor, NewSession};
use crate::telemetry::DisconnectReason;
use crate::{telemetry, App, Code, Error, Session};

/// How long the writer keeps trying to deliver what was queued before a close (e.g. a Kick).
pub(super) const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// Reason sent to sessions kicked by a graceful shutdown.
pub const REASON_SHUTDOWN: &str = "server shutting down";
/// Reason for closing a connection that sent nothing for two heartbeat intervals.
pub const REASON_IDLE: &str = "heartbeat timeout";
/// Reason sent to a client disconnected for exceeding its rate limit.
pub(super) const REASON_RATE_LIMIT: &str = "rate limit exceeded";
/// Reason sent to a client that did not finish its handshake in time.
const REASON_HANDSHAKE_TIMEOUT: &str = "handshake timeout";

/// Why the reader ended.
pub(super) enum End {
    /// The client closed the connection (or the socket failed).
    ClientGone,
    /// The client broke the protocol: kick with this reason.
    Violation(String),
    /// The client exceeded its rate limit more than `max_violations` times.
    RateLimited,
    /// The node is draining.
    Drain,
    /// The session was closed from elsewhere (kick, duplicate login, slow client).
    Closed,
}

/// Where a queued client message goes.
pub(super) enum Dest {
    /// A handler of this node.
    Local(Arc<RouteEntry>),
    /// A module on other nodes: forwarded with the session.
    Remote(rookery_protocol::RouteName),
}

/// One queued client message, resolved to its route.
pub(super) struct Job {
    pub(super) dest: Dest,
    kind: MessageType,
    id: u64,
    payload: Bytes,
    /// When its packet was read (the start of the request's measured duration).
    received: Instant,
}

/// Serves one accepted connection until it ends.
/// `permit` (of the gateway's connection limit) is held until the connection ends.
pub(crate) async fn serve(
    app: App,
    transport: Transport,
    remote: SocketAddr,
    acceptor: Acceptor,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let Transport {
        mut reader,
        mut writer,
    } = transport;
    let cfg = &app.config().gateway;
    // The dictionary the client is given; the session keeps it to read the codes it sends.
    let dict = app.sessions().dict();
    let hs = tokio::select! {
        // Boxed so that the handshake's state is not kept for the connection's whole life.
        r = timeout(cfg.handshake_timeout(), Box::pin(handshake(&app, &dict, &mut reader, &mut writer))) => r,
        _ = app.inner().draining.cancelled() => Ok(Err(Refusal {
            why: Some(DisconnectReason::Shutdown),
            reason: REASON_SHUTDOWN.into(),
        })),
    };
    let (serializer, client) = match hs {
        Ok(Ok(v)) => v,
        Ok(Err(Refusal { why, reason })) => {
            tracing::debug!(%remote, %reason, "handshake failed");
            metrics::counter!(telemetry::HANDSHAKES_FAILED_TOTAL, "reason" => "refused")
                .increment(1);
            if let Some(why) = why {
                app.disconnects().record(why, None, remote, None, &reason);
            }
            kick_raw(&mut writer, &reason).await;
            return;
        }
        Err(_) => {
            metrics::counter!(telemetry::HANDSHAKES_FAILED_TOTAL, "reason" => "timeout")
                .increment(1);
            app.disconnects().record(
                DisconnectReason::HandshakeTimeout,
                None,
                remote,
                None,
                REASON_HANDSHAKE_TIMEOUT,
            );
            kick_raw(&mut writer, REASON_HANDSHAKE_TIMEOUT).await;
            return;
        }
    };

    let session = app.sessions().create(NewSession {
        remote,
        acceptor,
        serializer,
        client,
        outbound: cfg.outbound_queue,
        dict,
    });
    tracing::debug!(session = session.id(), %remote, ?acceptor, "session opened");
    let sessions_gauge =
        metrics::gauge!(telemetry::SESSIONS, "acceptor" => acceptor_label(acceptor));
    sessions_gauge.increment(1.0);
    for m in app.modules() {
        m.session_opened(&app, &session).await;
    }
    // Pomelo clients start their heartbeats when the server's first one arrives.
    let _ = session.send_packet(heartbeat_packet());
    // Reader and writer until both have ended. A session made by `create` always has its queue.
    match session.outbound() {
        Some(queue) => Running::new(&app, &session, queue, reader, writer).await,
        None => session.close_as(None, "no outbound queue"),
    }
    // Counted and logged here, where each connection ends once, rather than where it is
    // closed (anywhere, possibly more than once): one count and at most one line each.
    if let Some(why) = session.disconnect_reason() {
        app.disconnects().record(
            why,
            Some(session.id()),
            remote,
            session.uid().as_deref(),
            session.close_reason().unwrap_or_default(),
        );
    }

    for m in app.modules() {
        m.session_closed(&app, &session).await;
    }
    // Boxed: its state (~1 KiB) would otherwise be part of every idle connection's task.
    Box::pin(app.rpc().session_closed(&session)).await;
    app.groups().remove_session(&session);
    app.sessions().remove(&session);
    sessions_gauge.decrement(1.0);
    tracing::debug!(
        session = session.id(),
        reason = session.close_reason().unwrap_or(""),
        "session closed"
    );
}

/// Why a handshake did not succeed: the text the client is sent, and why the server refused
/// it (None when it is not a disconnect by the server: the client left, the socket failed, or
/// the answer could not be encoded, which is logged as an error).
struct Refusal {
    why: Option<DisconnectReason>,
    reason: String,
}

impl Refusal {
    fn client_gone(reason: impl Into<String>) -> Self {
        Self {
            why: None,
            reason: reason.into(),
        }
    }

    fn protocol(reason: impl Into<String>) -> Self {
        Self {
            why: Some(DisconnectReason::ProtocolError),
            reason: reason.into(),
        }
    }
}

async fn next_packet(reader: &mut PacketReader) -> Result<Packet, Refusal> {
    match reader.next().await {
        Some(Ok(p)) => Ok(p),
        Some(Err(e @ super::transport::ConnError::Io(_))) => {
            Err(Refusal::client_gone(e.to_string()))
        }
        Some(Err(e)) => Err(Refusal::protocol(e.to_string())),
        None => Err(Refusal::client_gone("connection closed during handshake")),
    }
}

/// Runs the handshake; returns the chosen serializer and the client's self-description.
async fn handshake(
    app: &App,
    dict: &RouteDict,
    reader: &mut PacketReader,
    writer: &mut PacketWriter,
) -> Result<(Serializer, HandshakeSys), Refusal> {
    let request = loop {
        let p = next_packet(reader).await?;
        match p.kind {
            PacketType::Handshake => break p,
            PacketType::Heartbeat => continue,
            PacketType::Data => return Err(Refusal::protocol("data before handshake")),
            other => {
                return Err(Refusal::protocol(format!(
                    "unexpected {other:?} before handshake"
                )))
            }
        }
    };
    let req = match HandshakeRequest::decode(&request.body) {
        Ok(r) => r,
        Err(e) => {
            let reason = e.to_string();
            refuse(writer, CODE_BAD_REQUEST, &reason).await;
            return Err(Refusal::protocol(reason));
        }
    };
    if let Some(validate) = &app.inner().validator {
        if let Err(e) = validate(&req) {
            let reason = e.msg().to_string();
            refuse(writer, CODE_BAD_REQUEST, &reason).await;
            return Err(Refusal {
                why: Some(DisconnectReason::HandshakeRefused),
                reason,
            });
        }
    }
    let cfg = &app.config().gateway;
    let serializer = req.sys.serializer.unwrap_or(cfg.serializer);
    let answer = HandshakeResponse {
        code: CODE_OK,
        sys: Some(HandshakeResponseSys {
            heartbeat: cfg.heartbeat,
            dict: dict.iter().map(|(k, v)| (k.to_string(), v)).collect(),
            serializer,
        }),
        msg: None,
    };
    let bytes = Packet::new(PacketType::Handshake, answer.encode())
        .to_bytes()
        .map_err(|e| {
            // The route dictionary is larger than a packet may be: the node's fault.
            tracing::error!(error = %e, "handshake answer cannot be encoded");
            Refusal::client_gone(e.to_string())
        })?;
    writer
        .write(&[bytes])
        .await
        .map_err(|e| Refusal::client_gone(e.to_string()))?;
    loop {
        let p = next_packet(reader).await?;
        match p.kind {
            PacketType::HandshakeAck => return Ok((serializer, req.sys)),
            PacketType::Heartbeat => continue,
            PacketType::Data => return Err(Refusal::protocol("data before handshake ack")),
            other => {
                return Err(Refusal::protocol(format!(
                    "unexpected {other:?} before handshake ack"
                )))
            }
        }
    }
}

/// Answers a handshake with a refusal; the caller then closes the connection.
async fn refuse(writer: &mut PacketWriter, code: u16, msg: &str) {
    let body = HandshakeResponse::refuse(code, msg.to_string()).encode();
    if let Ok(b) = Packet::new(PacketType::Handshake, body).to_bytes() {
        let _ = timeout(FLUSH_DEADLINE, writer.write(&[b])).await;
    }
}

/// Best-effort Kick with a reason on a connection that has no session (yet), then close.
async fn kick_raw(writer: &mut PacketWriter, reason: &str) {
    let body = serde_json::to_vec(&serde_json::json!({ "reason": reason })).unwrap_or_default();
    if let Ok(b) = Packet::new(PacketType::Kick, body).to_bytes() {
        let _ = timeout(FLUSH_DEADLINE, writer.write(&[b])).await;
    }
    let _ = timeout(FLUSH_DEADLINE, writer.shutdown()).await;
}

fn acceptor_label(a: Acceptor) -> &'static str {
    match a {
        Acceptor::Tcp => "tcp",
        Acceptor::Ws => "ws",
        Acceptor::Remote => "remote",
        Acceptor::Internal => "internal",
    }
}

pub(super) fn heartbeat_packet() -> Bytes {
    Bytes::from_static(&[PacketType::Heartbeat as u8, 0, 0, 0])
}

/// A connection's rate limit and how often the client broke it.
pub(super) struct RateCheck {
    limiter: DefaultDirectRateLimiter,
    violations: u32,
    max_violations: u32,
}

impl RateCheck {
    /// The gateway's configured limit (`gateway.rate_limit`), boxed (a connection without one,
    /// `per_second = 0`, keeps 8 bytes for it); `None` without one.
    pub(super) fn new(app: &App) -> Option<Box<Self>> {
        let rl = &app.config().gateway.rate_limit;
        let per_second = NonZeroU32::new(rl.per_second)?;
        let burst = NonZeroU32::new(rl.burst.max(rl.per_second)).unwrap_or(per_second);
        Some(Box::new(Self {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            violations: 0,
            max_violations: rl.max_violations,
        }))
    }
}

/// Turns a `Data` packet's body into a job: `Ok(None)` if it was refused with an error
/// response (rate limit, compressed payload, unknown route), `Err` if the connection must end.
pub(super) fn resolve(
    app: &App,
    session: &Session,
    body: Bytes,
    received: Instant,
    rate: Option<&mut RateCheck>,
) -> Result<Option<Job>, End> {
    let msg = match Message::decode(body) {
        Ok(m) => m,
        Err(e) => return Err(End::Violation(format!("bad message: {e}"))),
    };
    if !matches!(msg.kind, MessageType::Request | MessageType::Notify) {
        return Err(End::Violation(format!(
            "clients may not send {:?}",
            msg.kind
        )));
    }
    if let Some(rate) = rate {
        if rate.limiter.check().is_err() {
            count_rate_limited(app, &msg);
            rate.violations += 1;
            if rate.violations > rate.max_violations {
                return Err(End::RateLimited);
            }
            let err = Error::new(Code::RateLimited, REASON_RATE_LIMIT);
            reply_error(session, &msg, err);
            return Ok(None);
        }
    }
    if msg.compressed {
        let err = Error::bad_request("compressed payloads are not supported");
        reply_error(session, &msg, err);
        return Ok(None);
    }
    let route = msg
        .route
        .as_ref()
        .expect("requests and notifies carry a route");
    let dest = match app.router().resolve_client(route) {
        Some(entry) => Dest::Local(entry.clone()),
        None => match remote_route(app, session, route) {
            Some(name) => Dest::Remote(name),
            None => {
                let name = match route {
                    rookery_protocol::Route::Name(n) => n.to_string(),
                    rookery_protocol::Route::Code(c) => format!("#{c}"),
                };
                reply_error(session, &msg, Error::not_found(&name));
                return Ok(None);
            }
        },
    };
    Ok(Some(Job {
        dest,
        kind: msg.kind,
        id: msg.id,
        payload: msg.payload,
        received,
    }))
}

/// Counts a message refused by the rate limit in `rookery_requests_total{outcome="rate_limited"}`
/// under its route if it is one of this node's, else under `*`: a route a client names is not
/// a bounded label. Through handles registered at start, so a flood registers nothing.
fn count_rate_limited(app: &App, msg: &Message) {
    match msg
        .route
        .as_ref()
        .and_then(|r| app.router().resolve_client(r))
    {
        Some(entry) => entry.stats.record_rate_limited(),
        None => app.inner().rate_limited_elsewhere.increment(1),
    }
}

/// A client route served by another node: its module is not local, some node runs it, and it
/// is not a system route.
/// A code is read in the dictionary the client was given (which holds the cluster's routes).
fn remote_route(
    app: &App,
    session: &Session,
    route: &rookery_protocol::Route,
) -> Option<rookery_protocol::RouteName> {
    let name = match route {
        rookery_protocol::Route::Name(name) => name.clone(),
        rookery_protocol::Route::Code(code) => {
            rookery_protocol::RouteName::try_from(session.dict().name(*code)?).ok()?
        }
    };
    let module = crate::rpc::route_module(name.as_str())?;
    if module == "sys" || app.modules().iter().any(|m| m.name() == module) {
        return None;
    }
    (!app.cluster().running(module).is_empty()).then_some(name)
}

fn reply_error(session: &Session, msg: &Message, err: Error) {
    if msg.kind == MessageType::Request {
        let m = Message::error_response(msg.id, err.encode(session.serializer()));
        if let Ok(b) = m.to_packet_bytes() {
            let _ = session.send_packet(b);
        }
    } else {
        tracing::debug!(session = session.id(), error = %err, "notify refused");
    }
}

pub(super) async fn run_job(app: &App, session: &Session, job: Job, timeout: Duration) {
    // Every client request starts a trace here.
    let trace = telemetry::new_trace_id();
    let (route, result): (&str, _) = match &job.dest {
        Dest::Local(entry) => (
            &entry.route,
            app.invoke(
                entry,
                session.clone(),
                job.payload,
                timeout,
                trace,
                Some(job.received.into_std()),
            )
            .await,
        ),
        // Boxed: a forward's state (~600 bytes) would otherwise be part of every local
        // request's box. The route is validated as UTF-8 once here, not for each use.
        Dest::Remote(route) => {
            let name = route.as_str();
            (
                name,
                Box::pin(telemetry::with_trace_id(
                    trace,
                    app.rpc()
                        .forward(name, route.bytes().clone(), job.payload, session),
                ))
                .await,
            )
        }
    };
    match job.kind {
        MessageType::Request => {
            let msg = match result {
                Ok(body) => Message::response(job.id, body),
                Err(e) => Message::error_response(job.id, e.encode(session.serializer())),
            };
            match msg.to_packet_bytes() {
                Ok(b) => {
                    let _ = session.send_packet(b);
                }
                Err(e) => tracing::error!(%route, error = %e, "response too large"),
            }
        }
        _ => {
            if let Err(e) = result {
                tracing::debug!(%route, error = %e, "notify handler failed");
            }
        }
    }
}
