//! The connection driver: handshake, then a reader loop (heartbeats, rate limit, route
//! resolution) that runs each request's handler in order, and a writer (batched writes).
//!
//! Task tree for one connection, all owned by the connection task:
//! ```text
//! connection task ── reader loop, running ordered handlers inline
//!                 │  + writer (a future polled by the same task, after the reader)
//!                 └─ concurrent handler tasks (routes with Dispatch::Concurrent; bounded)
//! ```
//! Running ordered handlers inline, and the writer in the same task, keeps a request's whole
//! path in one task: no hop between read, handler and write. The next packet is read when the
//! handler is done, so the socket buffer is the inbound queue; the writer keeps writing while an
//! inline handler waits. The connection task returns only after its handler tasks and writer
//! have ended and the session has been removed from the pool and its groups.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rookery_protocol::handshake::{HandshakeResponseSys, CODE_BAD_REQUEST, CODE_OK};
use rookery_protocol::{
    HandshakeRequest, HandshakeResponse, HandshakeSys, Message, MessageType, Packet, PacketType,
    Serializer,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, Instant};
use tokio_util::task::TaskTracker;

use super::transport::{ConnError, PacketReader, PacketWriter, Transport};
use crate::router::{Dispatch, RouteEntry};
use crate::session::{Acceptor, NewSession};
use crate::{telemetry, App, Code, Error, Session};

/// How long the writer keeps trying to deliver what was queued before a close (e.g. a Kick).
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);
/// Packets written per batch at most.
const WRITE_BATCH: usize = 128;

/// Reason sent to sessions kicked by a graceful shutdown.
pub const REASON_SHUTDOWN: &str = "server shutting down";
/// Reason for closing a connection that sent nothing for two heartbeat intervals.
pub const REASON_IDLE: &str = "heartbeat timeout";

/// Why the reader loop ended.
enum End {
    /// The client closed the connection (or the socket failed).
    ClientGone,
    /// The client broke the protocol: kick with this reason.
    Violation(String),
    /// The node is draining.
    Drain,
    /// The session was closed from elsewhere (kick, duplicate login, slow client).
    Closed,
}

/// Where a queued client message goes.
enum Dest {
    /// A handler of this node.
    Local(Arc<RouteEntry>),
    /// A module on other nodes: forwarded with the session.
    Remote(rookery_protocol::RouteName),
}

/// One queued client message, resolved to its route.
struct Job {
    dest: Dest,
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
    let hs = tokio::select! {
        // Boxed so that the handshake's state is not kept for the connection's whole life.
        r = timeout(cfg.handshake_timeout(), Box::pin(handshake(&app, &mut reader, &mut writer))) => r,
        _ = app.inner().draining.cancelled() => Ok(Err("server shutting down".into())),
    };
    let (serializer, client) = match hs {
        Ok(Ok(v)) => v,
        Ok(Err(reason)) => {
            tracing::debug!(%remote, %reason, "handshake failed");
            metrics::counter!(telemetry::HANDSHAKES_FAILED_TOTAL, "reason" => "refused")
                .increment(1);
            kick_raw(&mut writer, &reason).await;
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "handshake timeout");
            metrics::counter!(telemetry::HANDSHAKES_FAILED_TOTAL, "reason" => "timeout")
                .increment(1);
            kick_raw(&mut writer, "handshake timeout").await;
            return;
        }
    };

    let session = app.sessions().create(NewSession {
        remote,
        acceptor,
        serializer,
        client,
        outbound: cfg.outbound_queue,
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
    // The writer runs in this task beside the reader, polled right after it: a response that an
    // inline handler queued is written in the same poll, without a hop to another task. It ends
    // once the session closes and what was queued is flushed (within FLUSH_DEADLINE).
    ConnPoll {
        both: futures_util::future::join(
            read_side(&app, &session, &mut reader),
            write_loop(&mut writer, session.clone()),
        ),
        queue: session.outbound(),
    }
    .await;

    for m in app.modules() {
        m.session_closed(&app, &session).await;
    }
    app.rpc().session_closed(&session).await;
    app.groups().remove_session(&session);
    app.sessions().remove(&session);
    sessions_gauge.decrement(1.0);
    tracing::debug!(
        session = session.id(),
        reason = session.close_reason().unwrap_or(""),
        "session closed"
    );
}

/// How many times in a row a connection task polls its futures again before it yields.
const MAX_REPOLLS: usize = 4;

pin_project_lite::pin_project! {
    /// Polls a connection's reader and writer inside [`Outbound::begin_poll`] / `end_poll`: what
    /// is queued or woken while they run (an inline handler's response, a close) wakes no one;
    /// instead they are polled again right away if that is still needed. It owns the futures (no
    /// separate pinned local): the connection task's size is what every idle connection costs.
    ///
    /// [`Outbound::begin_poll`]: crate::outbound::Outbound::begin_poll
    struct ConnPoll<'a, F> {
        #[pin]
        both: F,
        queue: Option<&'a crate::outbound::Outbound>,
    }
}

impl<F: Future> Future for ConnPoll<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let Some(queue) = *this.queue else {
            return this.both.poll(cx);
        };
        for _ in 0..MAX_REPOLLS {
            queue.begin_poll();
            let r = this.both.as_mut().poll(cx);
            let again = queue.end_poll();
            if r.is_ready() || !again {
                return r;
            }
        }
        // Still busy: let other tasks run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

async fn next_packet(reader: &mut PacketReader) -> Result<Packet, String> {
    match reader.next().await {
        Some(Ok(p)) => Ok(p),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("connection closed during handshake".into()),
    }
}

/// Runs the handshake; returns the chosen serializer and the client's self-description.
async fn handshake(
    app: &App,
    reader: &mut PacketReader,
    writer: &mut PacketWriter,
) -> Result<(Serializer, HandshakeSys), String> {
    let request = loop {
        let p = next_packet(reader).await?;
        match p.kind {
            PacketType::Handshake => break p,
            PacketType::Heartbeat => continue,
            PacketType::Data => return Err("data before handshake".into()),
            other => return Err(format!("unexpected {other:?} before handshake")),
        }
    };
    let req = match HandshakeRequest::decode(&request.body) {
        Ok(r) => r,
        Err(e) => return refuse(writer, CODE_BAD_REQUEST, e.to_string()).await,
    };
    if let Some(validate) = &app.inner().validator {
        if let Err(reason) = validate(&req) {
            return refuse(writer, CODE_BAD_REQUEST, reason).await;
        }
    }
    let cfg = &app.config().gateway;
    let serializer = req.sys.serializer.unwrap_or(cfg.serializer);
    let answer = HandshakeResponse {
        code: CODE_OK,
        sys: Some(HandshakeResponseSys {
            heartbeat: cfg.heartbeat,
            dict: app
                .router()
                .dict()
                .iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            serializer,
        }),
        msg: None,
    };
    let bytes = Packet::new(PacketType::Handshake, answer.encode())
        .to_bytes()
        .map_err(|e| e.to_string())?;
    writer.write(&[bytes]).await.map_err(|e| e.to_string())?;
    loop {
        let p = next_packet(reader).await?;
        match p.kind {
            PacketType::HandshakeAck => return Ok((serializer, req.sys)),
            PacketType::Heartbeat => continue,
            PacketType::Data => return Err("data before handshake ack".into()),
            other => return Err(format!("unexpected {other:?} before handshake ack")),
        }
    }
}

/// Answers a handshake with a refusal; the caller then closes the connection.
async fn refuse(
    writer: &mut PacketWriter,
    code: u16,
    msg: String,
) -> Result<(Serializer, HandshakeSys), String> {
    let body = HandshakeResponse::refuse(code, msg.clone()).encode();
    if let Ok(b) = Packet::new(PacketType::Handshake, body).to_bytes() {
        let _ = timeout(FLUSH_DEADLINE, writer.write(&[b])).await;
    }
    Err(msg)
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

fn heartbeat_packet() -> Bytes {
    Bytes::from_static(&[PacketType::Heartbeat as u8, 0, 0, 0])
}

fn rate_limiter(app: &App) -> Option<DefaultDirectRateLimiter> {
    let rl = &app.config().gateway.rate_limit;
    let per_second = NonZeroU32::new(rl.per_second)?;
    let burst = NonZeroU32::new(rl.burst.max(rl.per_second)).unwrap_or(per_second);
    Some(RateLimiter::direct(
        Quota::per_second(per_second).allow_burst(burst),
    ))
}

/// The reader's side of a connection: reads packets and runs their requests until the
/// connection ends, then closes the session (with a Kick and a reason where there is one) once
/// the concurrent requests already accepted have finished. One function, not a loop nested in a
/// wrapper: every level of `async` nesting is a tag the connection task reads on each wake-up.
async fn read_side(app: &App, session: &Session, reader: &mut PacketReader) {
    // Concurrent requests (Dispatch::Concurrent) run as tasks owned by this tracker, made by the
    // first one; everything else runs inline, in order.
    let mut concurrent: Option<Concurrent> = None;
    let mut rate = RateCheck {
        limiter: rate_limiter(app),
        violations: 0,
        max_violations: app.config().gateway.rate_limit.max_violations,
    };
    let request_timeout = app.config().gateway.request_timeout();
    // Closing and draining are flags, looked at on every wake-up of the connection task; whoever
    // sets one wakes the task through the session's outbound queue (no lock, no waiter list).
    let mut stop = std::future::poll_fn(|cx| {
        if session.poll_closed(cx).is_ready() {
            Poll::Ready(End::Closed)
        } else if app.is_draining() {
            Poll::Ready(End::Drain)
        } else {
            Poll::Pending
        }
    });
    let end = loop {
        let next = tokio::select! {
            biased;
            end = &mut stop => break end,
            p = reader.next() => p,
        };
        // Idle connections are found by the gateway's sweep (`super::close_idle`), not by a
        // timer in every connection: no timer to poll and re-register on every request.
        let now = Instant::now();
        session.mark_seen(now.into_std());
        let packet = match next {
            None | Some(Err(ConnError::Io(_))) => break End::ClientGone,
            Some(Err(e)) => break End::Violation(e.to_string()),
            Some(Ok(p)) => p,
        };
        match packet.kind {
            PacketType::Heartbeat => {
                let _ = session.send_packet(heartbeat_packet());
            }
            PacketType::Data => {
                // Decoded and resolved in a plain function: the message itself is not part of
                // the state kept while the request runs.
                let job = match resolve(app, session, packet.body, now, &mut rate) {
                    Ok(Some(job)) => job,
                    Ok(None) => continue,
                    Err(end) => break end,
                };
                // An ordered route's request (the common case) goes from here into its box:
                // the job is never part of the connection task's own state. Other routes take
                // a lock or a slot first, in a box of their own.
                if job.is_plain() {
                    Box::pin(run_job(app, session, job, request_timeout)).await;
                } else {
                    Box::pin(dispatch(
                        app,
                        session,
                        job,
                        request_timeout,
                        &mut concurrent,
                    ))
                    .await;
                }
            }
            PacketType::Handshake | PacketType::HandshakeAck => {
                break End::Violation("handshake after handshake".into())
            }
            PacketType::Kick => break End::Violation("clients may not send kick".into()),
        }
    };
    if let End::Violation(reason) = &end {
        metrics::counter!(telemetry::PROTOCOL_ERRORS_TOTAL).increment(1);
        session.kick(reason)
    }
    // Concurrent requests already accepted finish.
    if let Some(c) = concurrent {
        c.tasks.close();
        c.tasks.wait().await;
    }
    match end {
        End::Drain => session.kick(REASON_SHUTDOWN),
        End::ClientGone => session.close("client closed"),
        End::Violation(_) | End::Closed => {}
    }
}

/// A connection's rate limit and how often the client broke it.
struct RateCheck {
    limiter: Option<DefaultDirectRateLimiter>,
    violations: u32,
    max_violations: u32,
}

/// Turns a `Data` packet's body into a job: `Ok(None)` if it was refused with an error
/// response (rate limit, compressed payload, unknown route), `Err` if the connection must end.
fn resolve(
    app: &App,
    session: &Session,
    body: Bytes,
    received: Instant,
    rate: &mut RateCheck,
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
    if let Some(l) = &rate.limiter {
        if l.check().is_err() {
            rate.violations += 1;
            if rate.violations > rate.max_violations {
                return Err(End::Violation("rate limit exceeded".into()));
            }
            let err = Error::new(Code::RateLimited, "rate limit exceeded");
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
        None => match remote_route(app, route) {
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

/// A client route served by another node: its module is not local, some node runs it, and it
/// is not a system route.
fn remote_route(app: &App, route: &rookery_protocol::Route) -> Option<rookery_protocol::RouteName> {
    let rookery_protocol::Route::Name(name) = route else {
        return None;
    };
    let module = crate::rpc::route_module(name.as_str())?;
    if module == "sys" || app.modules().iter().any(|m| m.name() == module) {
        return None;
    }
    (!app.cluster().running(module).is_empty()).then(|| name.clone())
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

/// A session's concurrent requests: their tasks and the slots that bound them.
struct Concurrent {
    tasks: TaskTracker,
    slots: Arc<Semaphore>,
}

impl Job {
    /// True for a request that runs in order without a lock (`Dispatch::Ordered`, or forwarded).
    fn is_plain(&self) -> bool {
        match &self.dest {
            Dest::Local(e) => e.dispatch == Dispatch::Ordered,
            Dest::Remote(_) => true,
        }
    }
}

/// Runs a request of a `Serial` route inline after taking its module's lock (the next packet
/// is read when it is done), or starts a task for a `Concurrent` one. The reader runs ordered
/// routes' requests itself. Inline runs are boxed by the reader, so that a connection's task
/// stays small while it is idle. (A box per request, not one reused per connection: a fresh
/// allocation comes from memory the allocator just used, while a per-connection box is cold at a
/// thousand connections and costs more in cache misses than the allocation; measured with
/// callgrind's cache model.)
async fn dispatch(
    app: &App,
    session: &Session,
    job: Job,
    timeout: Duration,
    concurrent: &mut Option<Concurrent>,
) {
    let mode = match &job.dest {
        Dest::Local(e) => e.dispatch,
        Dest::Remote(_) => Dispatch::Ordered,
    };
    match mode {
        Dispatch::Ordered | Dispatch::Serial => {
            let lock = match &job.dest {
                Dest::Local(e) if mode == Dispatch::Serial => e.module_lock.clone(),
                _ => None,
            };
            let _guard = match &lock {
                Some(l) => Some(l.lock().await),
                None => None,
            };
            run_job(app, session, job, timeout).await
        }
        Dispatch::Concurrent => {
            let c = concurrent.get_or_insert_with(|| Concurrent {
                tasks: TaskTracker::new(),
                slots: Arc::new(Semaphore::new(app.config().gateway.inbound_queue)),
            });
            // At most `inbound_queue` at once: beyond that, reading waits for a slot.
            let Ok(slot) = c.slots.clone().acquire_owned().await else {
                return;
            };
            let (app, session) = (app.clone(), session.clone());
            c.tasks.spawn(async move {
                run_job(&app, &session, job, timeout).await;
                drop(slot);
            });
        }
    }
}

async fn run_job(app: &App, session: &Session, job: Job, timeout: Duration) {
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
        // Boxed: a forward's state is several KiB, and every local request would otherwise
        // allocate (and copy) room for it.
        Dest::Remote(route) => (
            route.as_str(),
            Box::pin(telemetry::with_trace_id(
                trace,
                app.rpc()
                    .forward(route.as_str(), route.bytes().clone(), job.payload, session),
            ))
            .await,
        ),
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

async fn write_loop(writer: &mut PacketWriter, session: Session) {
    let Some(queue) = session.outbound() else {
        return;
    };
    // A single packet is held inline; a buffer for more grows on demand, so idle connections
    // hold none.
    let mut batch = crate::outbound::Batch::default();
    loop {
        // What is queued is written first; once the queue is empty, a closing session ends the
        // loop. Both wake this task through the queue's waker.
        let n =
            std::future::poll_fn(
                |cx| match queue.poll_pop_batch(cx, &mut batch, WRITE_BATCH) {
                    Poll::Ready(n) => Poll::Ready(n),
                    Poll::Pending if session.is_closed() => Poll::Ready(0),
                    Poll::Pending => Poll::Pending,
                },
            )
            .await;
        if n == 0 {
            break;
        }
        let ok = match writer.write_now(batch.packets()) {
            Ok(true) => true,
            Err(_) => false,
            // The socket's buffer is full (or a WebSocket): wait for the rest, boxed so that its
            // state is not part of every connection's task.
            Ok(false) => {
                let mut write = Box::pin(writer.finish(batch.packets()));
                tokio::select! {
                    biased;
                    r = &mut write => r.is_ok(),
                    _ = std::future::poll_fn(|cx| session.poll_closed(cx)) => {
                        matches!(timeout(FLUSH_DEADLINE, &mut write).await, Ok(Ok(())))
                    }
                }
            }
        };
        batch.clear();
        if !ok {
            // Wakes the reader too: it ends with the session.
            session.close("write failed");
            queue.close();
            writer_shutdown(writer).await;
            return;
        }
    }
    // Deliver what was queued before the close (typically a Kick), within a deadline.
    let rest = queue.close();
    if !rest.is_empty() {
        let _ = timeout(FLUSH_DEADLINE, writer.write(&rest)).await;
    }
    writer_shutdown(writer).await;
}

async fn writer_shutdown(writer: &mut PacketWriter) {
    let _ = timeout(FLUSH_DEADLINE, writer.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size<Args, Fut>(_: impl FnOnce(Args) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection costs its task's size (plus buffers): keep the state of a running
    /// request, the handshake and the WebSocket upgrade out of it (they are boxed while they run).
    /// The TCP reader and the writer are part of it (~180 bytes; inline rather than boxed).
    #[test]
    fn an_idle_connection_task_stays_small() {
        let size = future_size(|(app, transport, remote, acceptor, permit)| {
            serve(app, transport, remote, acceptor, permit)
        });
        eprintln!("connection future: {size} bytes");
        assert!(size <= 1_300, "connection future is {size} bytes");
    }
}
