//! A session's bounded outbound packet queue: many producers (handlers, pushes, other nodes),
//! one consumer (the connection's writer). Pushing never waits: a full queue is reported so that
//! the session can be closed as too slow. It allocates nothing while empty, which keeps idle
//! connections small.
//!
//! The queue also holds the connection task's waker: a push, a close of the queue or a close of
//! the session ([`Outbound::wake`]) wakes that one task. Registering and waking are a few atomic
//! operations (no lock, no waiter list), which matters because the connection polls this on every
//! wake-up.
//!
//! While the connection task is being polled ([`Outbound::begin_poll`] .. [`Outbound::end_poll`]),
//! a push or wake does not wake it: the task looks again before it returns instead. An inline
//! handler's response, queued while the task runs, so costs no wake-up and no second poll.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::task::Waker;
#[cfg(test)]
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

/// Why a packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue holds its capacity already.
    Full,
    /// The writer is gone.
    Closed,
}

pub(crate) struct Outbound {
    state: Mutex<State>,
    /// The connection task (its writer and reader).
    waker: AtomicWaker,
    /// `POLLING` while the connection task is being polled; `PUSHED` / `WOKEN` when a push / a
    /// wake came in meanwhile.
    poll_state: AtomicU8,
    /// `QUEUED` while a packet is queued, `SHUT` once the queue is closed: written under the
    /// lock, read without it, so that the connection task looks at an empty queue without
    /// taking the lock.
    contents: AtomicU8,
    /// Packets queued at most (`u32`, so that the queue stays within its size budget and a
    /// session's fields every request touches share two cache lines: see `budgets.rs`).
    capacity: u32,
}

const POLLING: u8 = 1;
const PUSHED: u8 = 2;
const WOKEN: u8 = 4;

const QUEUED: u8 = 1;
const SHUT: u8 = 2;

struct State {
    /// The oldest queued packet, kept inline: with one packet in flight (a response) the queue
    /// touches no memory beyond the session's own.
    head: Option<Bytes>,
    /// The packets after `head` (empty while `head` is `None`). Boxed on purpose (a pointer in
    /// the session instead of a whole `VecDeque`) and made on the first push behind another:
    /// most connections never have more than one packet queued.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Bytes>>>,
    closed: bool,
}

impl State {
    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.as_ref().map_or(0, |r| r.len())
    }

    fn take_all(&mut self) -> Vec<Bytes> {
        let mut all = Vec::with_capacity(self.len());
        all.extend(self.head.take());
        if let Some(rest) = &mut self.rest {
            all.extend(rest.drain(..));
        }
        all
    }
}

/// Packets taken off a queue for one write. A single packet, the usual case, is held inline.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    one: Option<Bytes>,
    many: Vec<Bytes>,
}

impl Batch {
    /// The packets, oldest first.
    pub(crate) fn packets(&self) -> &[Bytes] {
        match &self.one {
            Some(p) => std::slice::from_ref(p),
            None => &self.many,
        }
    }

    /// Empties the batch (keeping its buffer for the next one).
    pub(crate) fn clear(&mut self) {
        self.one = None;
        self.many.clear();
    }
}

impl Outbound {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                head: None,
                rest: None,
                closed: false,
            }),
            waker: AtomicWaker::new(),
            poll_state: AtomicU8::new(0),
            contents: AtomicU8::new(0),
            capacity: u32::try_from(capacity.max(1)).unwrap_or(u32::MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes what the queue holds (called under the lock after every change).
    fn publish(&self, st: &State) {
        let c = if st.head.is_some() { QUEUED } else { 0 } | if st.closed { SHUT } else { 0 };
        self.contents.store(c, Ordering::Release);
    }

    /// Queues a packet without waiting.
    pub(crate) fn push(&self, packet: Bytes) -> Result<(), PushError> {
        {
            let mut st = self.lock();
            if st.closed {
                return Err(PushError::Closed);
            }
            if st.len() >= self.capacity as usize {
                return Err(PushError::Full);
            }
            if st.head.is_none() {
                st.head = Some(packet);
                self.publish(&st);
            } else {
                st.rest.get_or_insert_with(Box::default).push_back(packet);
            }
        }
        self.notify(PUSHED);
        Ok(())
    }

    /// Wakes the connection task, unless it is being polled: then `end_poll` sees `why`.
    fn notify(&self, why: u8) {
        if self.poll_state.fetch_or(why, Ordering::AcqRel) & POLLING == 0 {
            self.waker.wake();
        }
    }

    /// The connection task starts a poll of its futures.
    pub(crate) fn begin_poll(&self) {
        self.poll_state.store(POLLING, Ordering::Release);
    }

    /// The connection task ends a poll of its futures: true if it must poll them again, because
    /// something woke it meanwhile, or a packet pushed meanwhile is still queued.
    pub(crate) fn end_poll(&self) -> bool {
        let seen = self.poll_state.swap(0, Ordering::AcqRel);
        seen & WOKEN != 0
            || (seen & PUSHED != 0 && self.contents.load(Ordering::Acquire) & QUEUED != 0)
    }

    /// Makes `waker` the one that pushes and closes wake (the connection task's).
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Wakes the registered task (e.g. because its session is closing).
    pub(crate) fn wake(&self) {
        self.notify(WOKEN);
    }

    /// Moves up to `max` queued packets into `out` (which must be empty), or registers the task
    /// to be woken by the next push or close. Ready with 0 once the queue is closed and empty.
    #[cfg(test)]
    fn poll_pop_batch(&self, cx: &mut Context<'_>, out: &mut Batch, max: usize) -> Poll<usize> {
        // Registered before looking: a push after the look wakes this task.
        self.waker.register(cx.waker());
        match self.pop_batch_now(out, max) {
            Some(n) => Poll::Ready(n),
            None => Poll::Pending,
        }
    }

    /// Moves up to `max` queued packets into `out` (which must be empty): `Some(n)`, with 0 once
    /// the queue is closed and empty; `None` if nothing is queued (found without the lock). The
    /// caller registers its waker ([`register`](Self::register)) before it looks, so that a push
    /// after the look wakes it: the connection task does so once per poll.
    pub(crate) fn pop_batch_now(&self, out: &mut Batch, max: usize) -> Option<usize> {
        if self.contents.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        if let Some(first) = st.head.take() {
            let n = st.len().min(max.saturating_sub(1)) + 1;
            match &mut st.rest {
                Some(rest) if n > 1 => {
                    out.many.push(first);
                    out.many.extend(rest.drain(..n - 1));
                }
                _ => out.one = Some(first),
            }
            if let Some(rest) = &mut st.rest {
                // What is left moves up: the oldest into `head`.
                st.head = rest.pop_front();
                if rest.is_empty() && rest.capacity() > 64 {
                    rest.shrink_to(16);
                }
            }
            self.publish(st);
            return Some(n);
        }
        st.closed.then_some(0)
    }

    /// Moves up to `max` queued packets into `out`; waits while the queue is empty. Returns 0
    /// once the queue is closed and empty.
    #[cfg(test)]
    async fn pop_batch(&self, out: &mut Batch, max: usize) -> usize {
        std::future::poll_fn(|cx| self.poll_pop_batch(cx, out, max)).await
    }

    /// Refuses further packets; returns what is still queued.
    pub(crate) fn close(&self) -> Vec<Bytes> {
        let mut st = self.lock();
        st.closed = true;
        let rest = st.take_all();
        self.publish(&st);
        drop(st);
        self.notify(WOKEN);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_batches_and_close() {
        let q = Outbound::new(3);
        for i in 0..3u8 {
            q.push(Bytes::from(vec![i])).unwrap();
        }
        assert_eq!(q.push(Bytes::new()), Err(PushError::Full));
        let b = |v: &[u8]| Bytes::copy_from_slice(v);
        let mut out = Batch::default();
        assert_eq!(q.pop_batch(&mut out, 2).await, 2);
        assert_eq!(out.packets(), [b(&[0]), b(&[1])]);
        out.clear();
        // Room again: a push after a pop queues behind what is left, in order.
        q.push(b(&[3])).unwrap();
        q.push(b(&[4])).unwrap();
        assert_eq!(q.push(Bytes::new()), Err(PushError::Full));
        assert_eq!(q.pop_batch(&mut out, 1).await, 1);
        assert_eq!(out.packets(), [b(&[2])]);
        out.clear();
        assert_eq!(q.pop_batch(&mut out, 10).await, 2);
        assert_eq!(out.packets(), [b(&[3]), b(&[4])]);
        out.clear();
        q.push(b(b"x")).unwrap();
        q.push(b(b"y")).unwrap();
        assert_eq!(q.close(), vec![b(b"x"), b(b"y")]);
        assert_eq!(q.push(Bytes::new()), Err(PushError::Closed));
        assert_eq!(q.pop_batch(&mut out, 10).await, 0);
        assert!(out.packets().is_empty());
    }

    #[test]
    fn pushes_during_a_poll_wake_no_one_and_ask_for_another_look() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let q = Outbound::new(8);
        let mut out = Batch::default();

        // Pushed during a poll, and taken by the writer in the same poll: no wake, no second look.
        q.begin_poll();
        assert!(q.poll_pop_batch(&mut cx, &mut out, 8).is_pending());
        q.push(Bytes::from_static(b"a")).unwrap();
        assert!(q.poll_pop_batch(&mut cx, &mut out, 8).is_ready());
        assert!(!q.end_poll());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);

        // Pushed during a poll after the writer looked: another look, still no wake.
        q.begin_poll();
        assert!(q.poll_pop_batch(&mut cx, &mut out, 8).is_pending());
        q.push(Bytes::from_static(b"b")).unwrap();
        assert!(q.end_poll());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(q.poll_pop_batch(&mut cx, &mut out, 8).is_ready());

        // A wake during a poll (e.g. the session closing) always asks for another look.
        q.begin_poll();
        assert!(q.poll_pop_batch(&mut cx, &mut out, 8).is_pending());
        q.wake();
        assert!(q.end_poll());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);

        // Outside a poll, a push wakes the registered task.
        assert!(q.poll_pop_batch(&mut cx, &mut out, 8).is_pending());
        q.push(Bytes::from_static(b"c")).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    /// The connection task's look without a waker: nothing queued is `None` (read from the
    /// published contents, not under the lock), a closed and empty queue `Some(0)`.
    #[test]
    fn a_look_without_a_waker_follows_pushes_pops_and_the_close() {
        let q = Outbound::new(4);
        let mut out = Batch::default();
        assert_eq!(q.pop_batch_now(&mut out, 8), None);
        q.push(Bytes::from_static(b"a")).unwrap();
        q.push(Bytes::from_static(b"b")).unwrap();
        assert_eq!(q.pop_batch_now(&mut out, 1), Some(1));
        out.clear();
        // One left: still published as queued.
        assert_eq!(q.pop_batch_now(&mut out, 8), Some(1));
        assert_eq!(out.packets(), [Bytes::from_static(b"b")]);
        out.clear();
        assert_eq!(q.pop_batch_now(&mut out, 8), None);
        q.push(Bytes::from_static(b"c")).unwrap();
        assert_eq!(q.close(), vec![Bytes::from_static(b"c")]);
        assert_eq!(q.pop_batch_now(&mut out, 8), Some(0));
    }

    #[tokio::test]
    async fn wakes_the_waiting_consumer() {
        let q = std::sync::Arc::new(Outbound::new(8));
        let q2 = q.clone();
        let consumer = tokio::spawn(async move {
            let mut out = Batch::default();
            q2.pop_batch(&mut out, 8).await;
            out.packets().to_vec()
        });
        tokio::task::yield_now().await;
        q.push(Bytes::from_static(b"hi")).unwrap();
        assert_eq!(consumer.await.unwrap(), vec![Bytes::from_static(b"hi")]);
    }
}
