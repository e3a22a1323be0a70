//! Serving a [`Router`] over HTTP/1.1 on a public port: the accept loop the admin server and
//! the HTTP gateway share, with the deadlines and the connection cap that keep a client from
//! holding connections (file descriptors the game gateway needs too) without sending anything.
//!
//! Each connection is one task, owned by the accept loop's [`JoinSet`], that polls hyper's
//! connection together with one timer. Which deadline the timer holds follows what the
//! connection is doing, read from counters its socket and its requests keep:
//!
//! - waiting for a request's head (from the connection's start, or from the first byte of a
//!   later request): `header_timeout`, then the connection is closed;
//! - a request in flight (from its head until its response is handed to hyper): the request's
//!   own deadlines (the body's `body_timeout`, answered 408; the handler's), and a backstop of
//!   those plus `idle_timeout`;
//! - between requests, including while a response is still being written: `idle_timeout`.
//!
//! hyper's own `header_read_timeout` is not used: it runs from the moment the connection starts
//! waiting for a head, so it cannot tell an idle kept-alive connection from one trickling a head.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rookery::CancellationToken;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant, Sleep};

use crate::error::http_error;

/// Pause after a failed accept (e.g. the process is out of file descriptors), so the loop does
/// not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a server allows its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Deadline of a request's head.
    pub header_timeout: Duration,
    /// Deadline of a request's body, from the end of its head.
    pub body_timeout: Duration,
    /// How long a connection may go without a request once its last response was handed over.
    pub idle_timeout: Duration,
    /// The handler's own deadline, after the body was read.
    pub handler_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Limits {
    /// The longest a request can legitimately take from its head to its response handed over:
    /// its body, its handler, and writing a response the socket does not take at once. Past it
    /// the connection is dropped, and shutdown waits no longer for requests in flight.
    fn request_budget(&self) -> Duration {
        self.body_timeout + self.handler_timeout + self.idle_timeout
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` is cancelled.
///
/// Beyond `max_connections` a new connection is answered 503 with one non-blocking write and
/// closed at once: it never gets a task, so a flood costs one accept per connection and no file
/// descriptor beyond it. On shutdown the listener closes, connections without a request in
/// flight close at once, and requests in flight finish (their connections then close), within
/// the request budget.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let service = TowerToHyperService::new(router);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(ended) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = ended {
                    tracing::warn!(error = %e, "HTTP connection task failed");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let conn = connection(stream, service.clone(), limits, shutdown.clone(), slot);
                    conns.spawn(conn);
                }
                Err(_) => refuse(&stream),
            },
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.request_budget(), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "HTTP requests still in flight at shutdown were dropped"
        );
        conns.shutdown().await;
    }
    Ok(())
}

/// Answers a connection beyond the cap 503 without waiting for anything: what the socket does
/// not take at once is not sent.
fn refuse(stream: &TcpStream) {
    const BODY: &str = r#"{"code":"RK-503","msg":"too many connections"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(answer.as_bytes());
    tracing::debug!("HTTP connection refused: too many connections");
}

/// Serves one connection until it ends, a deadline passes, or shutdown finds it without a
/// request or a response in flight.
async fn connection(
    stream: TcpStream,
    service: TowerToHyperService<Router>,
    limits: Limits,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Counted {
        inner: stream,
        activity: activity.clone(),
    });
    let svc = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = activity.begin();
            call(&service, req, guard, limits.body_timeout)
        })
    };
    let mut conn = pin!(http1::Builder::new().serve_connection(io, svc));
    let mut watch = Watch::new(Instant::now());
    let mut timer = pin!(sleep_until(watch.deadline(&limits)));
    let mut stopping = pin!(shutdown.cancelled());
    let mut draining = false;
    poll_fn(|cx| loop {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            return Poll::Ready(());
        }
        // Everything the counters count happens inside `conn`'s poll, so they are current.
        watch.update(activity.snapshot());
        if !draining && stopping.as_mut().poll(cx).is_ready() {
            // hyper closes an idle connection on its next poll, and finishes a request in
            // flight (and the writing of a response) before it closes the connection.
            draining = true;
            conn.as_mut().graceful_shutdown();
            continue;
        }
        if draining && watch.awaiting_head() {
            // Nothing is owed to a client that has not sent a whole head.
            return Poll::Ready(());
        }
        let deadline = watch.deadline(&limits);
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            tracing::debug!(
                phase = watch.phase_name(),
                "HTTP connection closed: deadline passed"
            );
            return Poll::Ready(());
        }
        return Poll::Pending;
    })
    .await;
}

/// Runs one request through the router, its body (if any) under `body_timeout`: a body that
/// does not arrive in time is answered 408, whatever the handler made of the failed read.
fn call(
    service: &TowerToHyperService<Router>,
    req: Request<Incoming>,
    guard: RequestGuard,
    body_timeout: Duration,
) -> impl Future<Output = Result<Response<Tracked>, Infallible>> + Send + 'static {
    let (req, expired) = if req.body().is_end_stream() {
        (req.map(Body::new), None)
    } else {
        let expired = Arc::new(AtomicBool::new(false));
        let flag = expired.clone();
        let req = req.map(|body| {
            Body::new(Deadline {
                inner: body,
                timer: Box::pin(sleep(body_timeout)),
                expired: flag,
            })
        });
        (req, Some(expired))
    };
    let resp = service.call(req);
    async move {
        let resp = match resp.await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let resp = if expired.is_some_and(|e| e.load(Ordering::Relaxed)) {
            http_error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {}s",
                    body_timeout.as_secs_f64()
                ),
            )
        } else {
            resp
        };
        Ok(resp.map(|body| Tracked {
            inner: body,
            _guard: guard,
        }))
    }
}

/// What a connection has done so far; written inside hyper's poll of the connection, read by
/// its task right after.
#[derive(Default)]
struct Activity {
    /// Bytes read from the socket.
    read: AtomicU64,
    /// Requests whose head was read.
    started: AtomicU64,
    /// Requests whose response hyper has taken in full (or that were dropped).
    finished: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    read: u64,
    started: u64,
    finished: u64,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            read: self.read.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            finished: self.finished.load(Ordering::Relaxed),
        }
    }
}

/// Counts a request as finished when dropped: with its response body, once hyper has taken it,
/// or with the request's future if the connection ends first.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which deadline a connection is under, since when.
#[derive(Clone, Copy)]
enum Phase {
    /// Waiting for a request's head.
    Head(Instant),
    /// A request in flight.
    Busy(Instant),
    /// Between requests.
    Idle(Instant),
}

struct Watch {
    seen: Snapshot,
    phase: Phase,
}

impl Watch {
    fn new(now: Instant) -> Self {
        Self {
            seen: Snapshot {
                read: 0,
                started: 0,
                finished: 0,
            },
            phase: Phase::Head(now),
        }
    }

    /// Moves to the phase `now` shows (a change is stamped with the current time: the task
    /// looks right after the poll that made it).
    fn update(&mut self, now: Snapshot) {
        if now == self.seen {
            return;
        }
        let t = Instant::now();
        self.phase = if now.started != now.finished {
            match self.phase {
                Phase::Busy(since) if now.started == self.seen.started => Phase::Busy(since),
                _ => Phase::Busy(t),
            }
        } else if now.finished != self.seen.finished {
            Phase::Idle(t)
        } else {
            match self.phase {
                // The first bytes of the next request: its head is now on the clock.
                Phase::Idle(_) => Phase::Head(t),
                p => p,
            }
        };
        self.seen = now;
    }

    fn awaiting_head(&self) -> bool {
        matches!(self.phase, Phase::Head(_))
    }

    fn deadline(&self, limits: &Limits) -> Instant {
        match self.phase {
            Phase::Head(t) => t + limits.header_timeout,
            Phase::Busy(t) => t + limits.request_budget(),
            Phase::Idle(t) => t + limits.idle_timeout,
        }
    }

    fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Head(_) => "head",
            Phase::Busy(_) => "request",
            Phase::Idle(_) => "idle",
        }
    }
}

/// The socket, counting the bytes read from it.
struct Counted {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        self.activity.read.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The body did not arrive within `body_timeout`.
#[derive(Debug)]
struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body not received in time")
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails once its deadline passes, and says so in `expired`.
struct Deadline {
    inner: Incoming,
    timer: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its request's [`RequestGuard`] until hyper has taken it.
struct Tracked {
    inner: Body,
    _guard: RequestGuard,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
