//! A connection's running phase (after the handshake) as one hand-written state machine: the
//! reader (packets in, each ordered request run inline before the next packet is read) and the
//! writer (queued packets out, batched), polled in turn by the connection task.
//!
//! Written by hand rather than as two `async` loops joined: every request wakes the connection
//! task, and with 10,000 connections its state is out of the caches each time. The compiler's
//! layout of nested futures (a join, a `select!`, a loop's locals, each with its own tag) spread
//! what a request touches over many cache lines; here it is a few fields in one struct, the ones
//! every request reads first. What is rare (a blocked write, the end of either side, a request
//! that waits for a lock or a slot) is a boxed future of its own, outside that struct.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::Stream;
use tokio::sync::Semaphore;
use tokio::time::{timeout, Instant};
use tokio_util::task::TaskTracker;

use super::close::{FLUSH_DEADLINE, REASON_RATE_LIMIT, REASON_SHUTDOWN};
use super::request::{self, Dest, Job, RateCheck};
use super::transport::{ConnError, FrameReader, PacketWriter};
use super::wire::{End, Wire};
use crate::outbound::{Batch, Outbound};
use crate::router::Dispatch;
use crate::telemetry::DisconnectReason;
use crate::{telemetry, App, Session};

/// Packets written per batch at most.
const WRITE_BATCH: usize = 128;
/// How many times in a row the connection task polls its two sides again before it yields.
const MAX_REPOLLS: usize = 4;

/// The reader's side.
enum Reading<'a> {
    /// Reading packets; the inline request, if one runs, comes first.
    Open,
    /// The reader ended: the concurrent requests it started finish, then the session closes.
    Ending(BoxFuture<'a, ()>),
    Done,
}

/// The writer's side.
enum Writing<'a> {
    /// Writing what is queued as it comes (the writer is in [`Running::writer`]).
    Idle,
    /// The socket took part of a batch: the rest is written here, by a future that owns the
    /// writer and the batch until it gives them back (with whether it succeeded).
    Blocked(BoxFuture<'a, (bool, PacketWriter, Batch)>),
    /// Flushing what was queued before the close, then shutting the socket down.
    Ending(BoxFuture<'a, ()>),
    Done,
}

/// A session's concurrent requests (`Dispatch::Concurrent`): their tasks and the slots that
/// bound them. Made by the first such request.
struct Concurrent {
    tasks: TaskTracker,
    slots: Arc<Semaphore>,
}

/// The running phase of one connection. A future that ends once both sides have: the reader
/// when the client leaves, breaks the protocol, the session closes or the node drains; the
/// writer when the session is closed and what was queued is flushed (within
/// [`FLUSH_DEADLINE`]) or a write fails.
///
/// Each poll registers the task's waker with the session's queue once, before anything is looked
/// at, and runs between [`Outbound::begin_poll`] and [`Outbound::end_poll`]: what is queued or
/// woken meanwhile (an inline handler's response, a close) wakes no one; the sides are polled
/// again right away instead, if that is still needed.
// `repr(C)`: the fields every request touches, in this order, at the front.
#[repr(C)]
pub(super) struct Running<'a, W: Wire> {
    queue: &'a Outbound,
    session: &'a Session,
    app: &'a App,
    /// What the protocol keeps of this connection (nothing, for pomelo).
    conn: W::Conn,
    /// The connection's rate limit, if there is one.
    rate: Option<Box<RateCheck>>,
    /// The request running inline, boxed: the next packet is read when it is done.
    request: Option<BoxFuture<'a, ()>>,
    reading: Reading<'a>,
    reader: FrameReader<W::Decoder>,
    /// `None` while a blocked write or the writer's end owns it.
    writer: Option<PacketWriter>,
    batch: Batch,
    writing: Writing<'a>,
    request_timeout: Duration,
    // Rarely touched.
    concurrent: Option<Concurrent>,
}

impl<'a, W: Wire> Running<'a, W> {
    pub(super) fn new(
        app: &'a App,
        conn: W::Conn,
        session: &'a Session,
        queue: &'a Outbound,
        reader: FrameReader<W::Decoder>,
        writer: PacketWriter,
    ) -> Self {
        Self {
            queue,
            session,
            app,
            conn,
            rate: RateCheck::new(app),
            request: None,
            reading: Reading::Open,
            reader,
            writer: Some(writer),
            batch: Batch::default(),
            writing: Writing::Idle,
            request_timeout: app.config().gateway.request_timeout(),
            concurrent: None,
        }
    }

    /// Runs the reader until it waits (for a packet, or for the inline request) or ends.
    fn poll_reader(&mut self, cx: &mut Context<'_>) {
        loop {
            match &mut self.reading {
                Reading::Open => {}
                Reading::Ending(f) => {
                    if f.as_mut().poll(cx).is_ready() {
                        self.reading = Reading::Done;
                    }
                    return;
                }
                Reading::Done => return,
            }
            if let Some(request) = &mut self.request {
                if request.as_mut().poll(cx).is_pending() {
                    return;
                }
                self.request = None;
            }
            // Closing and draining are flags, looked at before each read; whoever sets one
            // wakes this task through the session's outbound queue (no lock, no waiter list),
            // where `poll` registered it.
            if self.session.is_closed() {
                self.end_reading(End::Closed);
                continue;
            }
            if self.app.is_draining() {
                self.end_reading(End::Drain);
                continue;
            }
            let Poll::Ready(next) = Pin::new(&mut self.reader).poll_next(cx) else {
                return;
            };
            // Idle connections are found by the gateway's sweep (`super::close_idle`), not by a
            // timer in every connection: no timer to poll and re-register on every request.
            let now = Instant::now();
            self.session.mark_seen(now.into_std());
            let result = match next {
                None | Some(Err(ConnError::Io(_))) => Err(End::ClientGone),
                Some(Err(e)) => Err(End::Violation(e.to_string())),
                Some(Ok(frame)) => self.on_frame(frame, now),
            };
            if let Err(end) = result {
                self.end_reading(end);
            }
        }
    }

    /// Handles one frame (what it means is the protocol's); `Err` if the connection must end.
    fn on_frame(&mut self, frame: W::Frame, now: Instant) -> Result<(), End> {
        let Some(incoming) = W::on_frame(&self.conn, self.session, frame)? else {
            return Ok(());
        };
        // Resolved in a plain function: the message itself is not part of the state kept while
        // the request runs.
        if let Some(job) = request::resolve(
            self.app,
            self.session,
            incoming,
            now,
            self.rate.as_deref_mut(),
        )? {
            self.request = Some(self.start(job));
        }
        Ok(())
    }

    /// A job's future, which the reader runs before it reads on: the request itself for an
    /// ordered route (the common case) or a forwarded one (the backend applies a `Serial`
    /// route's lock); the request after its module's lock for a local `Serial` route; for a
    /// `Concurrent` one, here or on the nodes it is forwarded to, a wait for a slot (at most
    /// `gateway.inbound_queue` at once) and then a task of its own.
    ///
    /// A box per request, not one reused per connection: a fresh allocation comes from memory
    /// the allocator just used, while a per-connection box is cold at a thousand connections and
    /// costs more in cache misses than the allocation (BENCHMARKS.md).
    fn start(&mut self, job: Job) -> BoxFuture<'a, ()> {
        let (app, session, timeout) = (self.app, self.session, self.request_timeout);
        match &job.dest {
            Dest::Local(entry) if entry.dispatch == Dispatch::Serial => {
                let lock = entry.module_lock.clone();
                Box::pin(async move {
                    let _guard = match &lock {
                        Some(l) => Some(l.lock().await),
                        None => None,
                    };
                    request::run_job(app, session, job, timeout).await
                })
            }
            Dest::Local(entry) if entry.dispatch == Dispatch::Concurrent => {
                self.spawn_concurrent(job)
            }
            // A route its nodes run concurrently: forwarded the same way.
            Dest::Remote(_, true) => self.spawn_concurrent(job),
            // Ordered routes (the common case) and forwarded requests run as they are.
            _ => Box::pin(request::run_job(app, session, job, timeout)),
        }
    }

    /// A concurrent request: a wait for a slot (at most `gateway.inbound_queue` at once), then a
    /// task of its own.
    fn spawn_concurrent(&mut self, job: Job) -> BoxFuture<'a, ()> {
        let (app, session, timeout) = (self.app, self.session, self.request_timeout);
        let c = self.concurrent.get_or_insert_with(|| Concurrent {
            tasks: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(app.config().gateway.inbound_queue)),
        });
        let (tasks, slots) = (c.tasks.clone(), c.slots.clone());
        let (app, session) = (app.clone(), session.clone());
        Box::pin(async move {
            let Ok(slot) = slots.acquire_owned().await else {
                return;
            };
            tasks.spawn(async move {
                request::run_job(&app, &session, job, timeout).await;
                drop(slot);
            });
        })
    }

    /// The reader is done: kick with a reason where there is one, and close the session once
    /// the concurrent requests already accepted have finished.
    fn end_reading(&mut self, end: End) {
        match &end {
            End::Violation(reason) => {
                metrics::counter!(telemetry::PROTOCOL_ERRORS_TOTAL).increment(1);
                self.session
                    .kick_as(DisconnectReason::ProtocolError, reason);
            }
            End::RateLimited => {
                // Also a protocol error: that metric counts every violation that closes a
                // connection, and dashboards built on it keep seeing floods.
                metrics::counter!(telemetry::PROTOCOL_ERRORS_TOTAL).increment(1);
                self.session
                    .kick_as(DisconnectReason::RateLimit, REASON_RATE_LIMIT);
            }
            End::Drain | End::ClientGone | End::Closed => {}
        }
        let session = self.session;
        let close = move || match end {
            End::Drain => session.kick_as(DisconnectReason::Shutdown, REASON_SHUTDOWN),
            End::ClientGone => session.close_as(None, "client closed"),
            End::Violation(_) | End::RateLimited | End::Closed => {}
        };
        self.reading = match self.concurrent.take() {
            None => {
                close();
                Reading::Done
            }
            Some(c) => {
                c.tasks.close();
                Reading::Ending(Box::pin(async move {
                    c.tasks.wait().await;
                    close();
                }))
            }
        };
    }

    /// Runs the writer until it waits (for packets, or for the socket) or ends.
    fn poll_writer(&mut self, cx: &mut Context<'_>) {
        loop {
            match &mut self.writing {
                Writing::Idle => {}
                Writing::Blocked(f) => {
                    let Poll::Ready((ok, writer, batch)) = f.as_mut().poll(cx) else {
                        return;
                    };
                    self.writer = Some(writer);
                    self.batch = batch;
                    self.batch.clear();
                    self.writing = Writing::Idle;
                    if !ok {
                        self.write_failed();
                    }
                    continue;
                }
                Writing::Ending(f) => {
                    if f.as_mut().poll(cx).is_ready() {
                        self.writing = Writing::Done;
                    }
                    return;
                }
                Writing::Done => return,
            }
            // What is queued is written first; once the queue is empty, a closing session ends
            // the writer. Both wake this task through the queue's waker.
            let n = match self.queue.pop_batch_now(&mut self.batch, WRITE_BATCH) {
                Some(n) => n,
                None if self.session.is_closed() => 0,
                None => return,
            };
            if n == 0 {
                self.end_writing();
                continue;
            }
            let Some(writer) = self.writer.as_mut() else {
                self.writing = Writing::Done;
                return;
            };
            match writer.write_now(self.batch.packets()) {
                Ok(true) => self.batch.clear(),
                Ok(false) => self.block(),
                Err(_) => {
                    self.batch.clear();
                    self.write_failed();
                }
            }
        }
    }

    /// The socket's buffer is full (or the transport is a WebSocket): a future of its own waits
    /// for the rest; a closing session gives it [`FLUSH_DEADLINE`].
    fn block(&mut self) {
        let Some(mut writer) = self.writer.take() else {
            self.writing = Writing::Done;
            return;
        };
        let batch = std::mem::take(&mut self.batch);
        let session = self.session;
        self.writing = Writing::Blocked(Box::pin(async move {
            let ok = {
                let mut write = std::pin::pin!(writer.finish(batch.packets()));
                tokio::select! {
                    biased;
                    r = &mut write => r.is_ok(),
                    _ = std::future::poll_fn(|cx| session.poll_closed(cx)) => {
                        matches!(timeout(FLUSH_DEADLINE, &mut write).await, Ok(Ok(())))
                    }
                }
            };
            (ok, writer, batch)
        }));
    }

    /// A write failed: the session closes (which ends the reader too) and the socket is shut.
    fn write_failed(&mut self) {
        self.session.close_as(None, "write failed");
        self.queue.close();
        self.writing = match self.writer.take() {
            Some(mut writer) => {
                Writing::Ending(Box::pin(async move { shutdown(&mut writer).await }))
            }
            None => Writing::Done,
        };
    }

    /// The session is closed and its queue empty: what is queued before the queue closes
    /// (typically a Kick) is delivered within [`FLUSH_DEADLINE`], then the socket is shut.
    fn end_writing(&mut self) {
        let rest = self.queue.close();
        self.writing = match self.writer.take() {
            Some(mut writer) => Writing::Ending(Box::pin(async move {
                if !rest.is_empty() {
                    let _ = timeout(FLUSH_DEADLINE, writer.write(&rest)).await;
                }
                shutdown(&mut writer).await
            })),
            None => Writing::Done,
        };
    }
}

async fn shutdown(writer: &mut PacketWriter) {
    let _ = timeout(FLUSH_DEADLINE, writer.shutdown()).await;
}

impl<W: Wire> Future for Running<'_, W> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Registered once, before anything is looked at: a push, a close or a drain after the
        // look wakes this task (or, while it is being polled, asks for another look).
        this.queue.register(cx.waker());
        for _ in 0..MAX_REPOLLS {
            this.queue.begin_poll();
            // The reader first: a response that an inline handler queued is written in the same
            // poll, without a hop to another task.
            this.poll_reader(cx);
            this.poll_writer(cx);
            let again = this.queue.end_poll();
            if matches!(
                (&this.reading, &this.writing),
                (Reading::Done, Writing::Done)
            ) {
                return Poll::Ready(());
            }
            if !again {
                return Poll::Pending;
            }
        }
        // Still busy: let other tasks run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;
    use crate::gateway::tests::node;
    use crate::session::{Acceptor, NewSession};

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection woken during every one of its polls (by pushes and wakes from other tasks)
    /// looks again at most `MAX_REPOLLS` times, then yields to the runtime and asks to be polled
    /// again; one woken once during a poll looks again once and then sleeps.
    #[tokio::test]
    async fn a_connection_woken_during_each_poll_yields_after_the_repoll_cap() {
        let node = node().await;
        let app = node.app();
        for (wakes_wanted, polls_expected, self_wakes) in [(usize::MAX, MAX_REPOLLS, 1), (1, 2, 0)]
        {
            let session = app.sessions().create(NewSession {
                remote: "127.0.0.1:7".parse().unwrap(),
                acceptor: Acceptor::Tcp,
                serializer: Default::default(),
                client: Default::default(),
                outbound: 8,
                dict: app.sessions().dict(),
                compress_above: 0,
                codec: crate::session::codec::Pomelo::boxed(),
            });
            let queue = session.outbound().expect("a local session's queue");
            let (_peer, io) = tokio::io::duplex(64);
            let t =
                super::super::transport::stream(io, crate::session::codec::Pomelo.decoder(1024));
            let mut running = Running::<crate::session::codec::Pomelo>::new(
                app,
                (),
                &session,
                queue,
                t.reader,
                t.writer,
            );
            let polls = Arc::new(AtomicUsize::new(0));
            let counted = polls.clone();
            running.request = Some(Box::pin(std::future::poll_fn(move |_| {
                // Another task wakes the connection while it is being polled.
                if counted.fetch_add(1, Ordering::SeqCst) < wakes_wanted {
                    queue.wake();
                }
                Poll::<()>::Pending
            })));
            let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
            let waker = std::task::Waker::from(wakes.clone());
            let mut cx = Context::from_waker(&waker);
            assert!(Pin::new(&mut running).poll(&mut cx).is_pending());
            assert_eq!(polls.load(Ordering::SeqCst), polls_expected);
            assert_eq!(wakes.0.load(Ordering::SeqCst), self_wakes);
            drop(running);
            app.sessions().remove(&session);
        }
        node.shutdown().await;
    }
}
