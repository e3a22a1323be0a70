//! Fixtures of the bench's tests (the `integration` binary and `pacer.rs`): bench arguments as
//! on the command line, and the ceiling server on port 0.

use std::net::SocketAddr;

use clap::Parser;
use rookery_bench::{serve_ceiling, BenchArgs};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

/// Bench arguments as on the command line (all of them given), with progress off.
pub fn argv(argv: &[&str]) -> BenchArgs {
    let mut all = vec!["bench", "--no-progress"];
    all.extend_from_slice(argv);
    Cli::parse_from(all).args
}

/// Bench arguments as on the command line, with progress off.
pub fn args(addr: SocketAddr, extra: &[&str]) -> BenchArgs {
    let addr = addr.to_string();
    let mut all = vec!["--addr", addr.as_str()];
    all.extend_from_slice(extra);
    argv(&all)
}

/// Starts the ceiling server on a free loopback port.
pub async fn ceiling() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_ceiling(listener));
    addr
}
