//! The open loop's pacer thread ends with its run, whether the run completes or is cancelled.
//!
//! A test binary of its own (not a module of `integration`): it counts the process's threads by
//! name, so no other run may be in flight at the same time.

use std::time::Duration;

use rookery_bench::run;
use tokio::time::Instant;

#[path = "integration/common.rs"]
mod common;
use common::{args, ceiling};

/// Threads of this process named like the pacer (`rookery-bench-pacer`, truncated by Linux to
/// 15 bytes).
fn pacer_threads() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "rookery-bench-p")
        .count()
}

/// Polls until `want(pacer_threads())` holds; false after `within`.
async fn until(within: Duration, want: impl Fn(usize) -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if want(pacer_threads()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacer_thread_ends_with_its_run() {
    let addr = ceiling().await;
    assert_eq!(pacer_threads(), 0);

    // A run that completes: the pacer existed while it ran, and is gone once it returns (a
    // thread that has been joined may linger in /proc for a moment while the kernel reaps it).
    let mut fut = Box::pin(run(args(
        addr,
        &["--connections", "4", "--rate", "400", "--duration", "0.5"],
    )));
    tokio::select! {
        r = &mut fut => panic!("run ended before its pacer was seen: {r:?}"),
        seen = until(Duration::from_secs(5), |n| n == 1) => assert!(seen, "no pacer thread"),
    }
    let r = fut.await.unwrap();
    assert!(r.requests > 0, "{r:?}");
    assert!(
        until(Duration::from_secs(1), |n| n == 0).await,
        "pacer outlived its run"
    );

    // A run cancelled in the middle of a 30 s window: dropping it stops the pacer.
    let mut fut = Box::pin(run(args(
        addr,
        &["--connections", "4", "--rate", "400", "--duration", "30"],
    )));
    tokio::select! {
        r = &mut fut => panic!("run ended early: {r:?}"),
        seen = until(Duration::from_secs(5), |n| n == 1) => assert!(seen, "no pacer thread"),
    }
    let t = Instant::now();
    drop(fut);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stopping the pacer took {:?}",
        t.elapsed()
    );
    assert!(
        until(Duration::from_secs(1), |n| n == 0).await,
        "pacer outlived its cancelled run"
    );
}
