//! Open-loop pacing with sub-millisecond precision.
//!
//! tokio's timers have a resolution of 1 ms: a connection pacing itself with them sends its
//! requests up to 1-2 ms late, in bursts, and since latency is measured from the scheduled send
//! time, the generator alone would add about 1 ms to every figure. Instead one dedicated OS
//! thread, the [`Pacer`], follows the global schedule and wakes each connection task (through
//! its `Notify`) when its next request is due; between wake-ups it sleeps on a high-resolution
//! timer (`std::thread::park_timeout`, a futex wait with a timeout), it never spins. The
//! connection task then sends everything due, latency still counted from the scheduled times.
//!
//! The [`Schedule`] is shared by the pacer and the connections so that both compute exactly
//! the same instants: with `N` connections staggered evenly, global request `j` belongs to
//! connection `j mod N` and is due at `start + j * step`, where `step = live / (rate * N)`
//! (connections that failed to set up leave their slots empty, so the total rate stays `rate`).
//!
//! Releases are at least [`MIN_PERIOD`] (100 us) apart, so that high rates do not cost one
//! wake-up of the runtime per request; and the [`Cadence`] widens that period, up to 1 ms, while
//! the connections send late because their core is saturated (finer pacing would only add
//! wake-ups to the backlog there).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Sleeps shorter than this are not worth a timer: the pacer yields its core instead.
const MIN_SLEEP: Duration = Duration::from_micros(2);
/// Shortest time between two releases. Each release wakes the runtime's thread, and a wake-up
/// costs some microseconds of the core that the generator shares with its runtime (tens on a
/// virtual machine); requests falling due within one period leave together, at most this late
/// (plus the threads' wake-up delays).
const MIN_PERIOD: Duration = Duration::from_micros(100);
/// Longest time between two releases: the batching of tokio's 1 ms timer.
const MAX_PERIOD: Duration = Duration::from_millis(1);
/// How often the period is adapted.
const WINDOW: Duration = Duration::from_millis(2);
/// Connections sending later than the period plus this: the runtime does not keep up, and
/// releasing more often only costs it more wake-ups; the period doubles.
const GROW_ABOVE: Duration = Duration::from_micros(500);
/// Connections sending no later than the period plus this: the period halves.
const SHRINK_BELOW: Duration = Duration::from_micros(200);

/// When each connection's requests are due in an open-loop run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    start: Instant,
    /// Seconds between two consecutive global slots.
    step: f64,
    /// Connections (slots per round), including those that failed to set up.
    connections: u64,
}

impl Schedule {
    /// The schedule of `rate` requests/s spread over `live` of `connections` connections;
    /// `None` when there is nothing to send.
    pub(crate) fn new(start: Instant, rate: f64, live: usize, connections: usize) -> Option<Self> {
        let step = live.max(1) as f64 / (rate * connections.max(1) as f64);
        (step.is_finite() && step > 0.0).then_some(Self {
            start,
            step,
            connections: connections.max(1) as u64,
        })
    }

    /// Due time of global slot `j`, or `None` past any representable instant.
    fn slot(&self, j: u64) -> Option<Instant> {
        let offset = Duration::try_from_secs_f64(j as f64 * self.step).ok()?;
        self.start.checked_add(offset)
    }

    /// Due time of the `k`-th request of connection `idx`.
    pub(crate) fn at(&self, idx: usize, k: u64) -> Option<Instant> {
        let j = k.checked_mul(self.connections)?.checked_add(idx as u64)?;
        self.slot(j)
    }
}

/// Adapts the time between releases to what the runtime keeps up with. With spare CPU the
/// connections send within microseconds of their release, and the pacer releases every
/// [`MIN_PERIOD`] at most; when the core is saturated (the connections send late by more than
/// the period) finer pacing would only add wake-ups to the backlog, so the period grows, up to
/// the 1 ms batches of tokio's timer.
#[derive(Debug)]
struct Cadence {
    period: Duration,
    window_start: std::time::Instant,
    worst: Duration,
}

impl Cadence {
    fn new(now: std::time::Instant) -> Self {
        Self {
            period: MIN_PERIOD,
            window_start: now,
            worst: Duration::ZERO,
        }
    }

    /// Takes the largest delay, reported by the connections since the last call, between a
    /// request's scheduled time and its sending.
    fn observe(&mut self, now: std::time::Instant, lag: Duration) {
        self.worst = self.worst.max(lag);
        if now.saturating_duration_since(self.window_start) < WINDOW {
            return;
        }
        let excess = self.worst.saturating_sub(self.period);
        if excess > GROW_ABOVE {
            self.period = (self.period * 2).min(MAX_PERIOD);
        } else if excess <= SHRINK_BELOW {
            self.period = (self.period / 2).max(MIN_PERIOD);
        }
        self.window_start = now;
        self.worst = Duration::ZERO;
    }
}

/// The pacer thread of one run. Dropping it stops the thread and waits for it.
pub(crate) struct Pacer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Pacer {
    /// Starts the pacer: it wakes `wakers[j mod N]` (one per connection) at each global slot `j`
    /// due before `end`, then ends by itself. The connections report in `lag_us` (microseconds,
    /// the largest since the pacer last took it) how late they send. `Err` when the thread
    /// cannot be created.
    pub(crate) fn spawn(
        schedule: Schedule,
        end: Instant,
        wakers: Vec<Arc<Notify>>,
        lag_us: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::Builder::new()
            .name("rookery-bench-pacer".into())
            .spawn(move || pace(schedule, end.into_std(), &wakers, &lag_us, &flag))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// The pacer's loop: release every slot that is due, sleep until the next release.
fn pace(
    schedule: Schedule,
    end: std::time::Instant,
    wakers: &[Arc<Notify>],
    lag_us: &AtomicU64,
    stop: &AtomicBool,
) {
    let n = wakers.len() as u64;
    debug_assert_eq!(n, schedule.connections, "one signal per connection");
    if n == 0 {
        return;
    }
    let mut cadence = Cadence::new(std::time::Instant::now());
    let mut j = 0u64;
    let mut released: Option<std::time::Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let Some(due) = schedule.slot(j).map(Instant::into_std) else {
            return;
        };
        if due >= end {
            return;
        }
        let wake = match released {
            Some(last) => due.max(last + cadence.period),
            None => due,
        };
        let now = std::time::Instant::now();
        if wake > now {
            let wait = wake - now;
            if wait >= MIN_SLEEP {
                // Woken early by `unpark` (stop) or spuriously: the loop checks again.
                thread::park_timeout(wait);
            } else {
                thread::yield_now();
            }
            continue;
        }
        // Everything due by `now`, in one batch.
        released = Some(now);
        cadence.observe(
            now,
            Duration::from_micros(lag_us.swap(0, Ordering::Relaxed)),
        );
        loop {
            wakers[(j % n) as usize].notify_one();
            j += 1;
            match schedule.slot(j).map(Instant::into_std) {
                Some(t) if t <= now && t < end => {}
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_staggers_connections_evenly() {
        let start = Instant::now();
        // 1,000 req/s over 4 connections, all live: one slot per ms, connection j mod 4.
        let s = Schedule::new(start, 1000.0, 4, 4).unwrap();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        assert_eq!(s.at(0, 0), Some(start));
        assert!((ms(s.at(1, 0).unwrap() - start) - 1.0).abs() < 1e-6);
        assert!((ms(s.at(3, 0).unwrap() - start) - 3.0).abs() < 1e-6);
        // Each connection: one request every 4 ms.
        assert!((ms(s.at(2, 5).unwrap() - start) - 22.0).abs() < 1e-6);
        // Two of the four live: each sends 500/s, the failed ones' slots stay empty.
        let s = Schedule::new(start, 1000.0, 2, 4).unwrap();
        assert!((ms(s.at(0, 1).unwrap() - start) - 2.0).abs() < 1e-6);
        assert!((ms(s.at(1, 0).unwrap() - start) - 0.5).abs() < 1e-6);
        assert!(Schedule::new(start, 0.0, 4, 4).is_none());
    }

    #[test]
    fn cadence_follows_the_lag() {
        let t0 = std::time::Instant::now();
        let mut c = Cadence::new(t0);
        let mut t = t0;
        let mut window = |c: &mut Cadence, lag_us: u64| {
            t += WINDOW;
            c.observe(t, Duration::from_micros(lag_us));
            c.period
        };
        // Connections keep up: the shortest period.
        assert_eq!(window(&mut c, 80), MIN_PERIOD);
        // Saturated: doubles up to the 1 ms of tokio's timer.
        assert_eq!(window(&mut c, 3_000), MIN_PERIOD * 2);
        for _ in 0..10 {
            window(&mut c, 3_000);
        }
        assert_eq!(c.period, MAX_PERIOD);
        // A lag of about the period itself is what the period costs: no growth.
        assert_eq!(window(&mut c, 1_400), MAX_PERIOD);
        // Caught up (requests leave at most 50 us after their release): back down to the
        // shortest period.
        for _ in 0..10 {
            let lag = c.period.as_micros() as u64 + 50;
            window(&mut c, lag);
        }
        assert_eq!(c.period, MIN_PERIOD);
        // Within a window, the worst lag counts.
        let mut c = Cadence::new(t0);
        c.observe(t0 + WINDOW / 2, Duration::from_millis(5));
        c.observe(t0 + WINDOW, Duration::from_micros(10));
        assert_eq!(c.period, MIN_PERIOD * 2);
    }
}
