//! `rookery-ceiling`: the P1 yardstick server.
//!
//! A minimal tokio TCP server speaking the client protocol's packet framing just enough to be
//! driven by `rookery bench`: canned handshake, heartbeats answered, every request answered with
//! `{"rooms":[]}`. Prints `ceiling listening on ADDR` once bound.
//!
//! With `--nats URL` it answers each request with the reply of a plain async-nats request to
//! `--subject` (start `rookery-rpcbench serve nats-raw` as the responder): the remote path's
//! baseline (P5).

use std::io::Write;

use clap::Parser;

/// Command line of `rookery-ceiling`.
#[derive(Debug, Parser)]
#[command(
    name = "rookery-ceiling",
    about = "Minimal protocol server: the P1 ceiling"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3300")]
    addr: String,
    /// Runtime worker threads (default, or 0: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Answer through raw NATS request/reply at this server instead of canned responses.
    #[arg(long)]
    nats: Option<String>,
    /// Subject of the NATS responder (with `--nats`).
    #[arg(long, default_value = rookery_bench::RAW_NATS_SUBJECT)]
    subject: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let rt = rookery::config::RuntimeConfig {
        workers: cli.threads.unwrap_or(0),
        ..Default::default()
    }
    .build()?;
    rt.block_on(async {
        let answer = match &cli.nats {
            None => rookery_bench::Answer::Canned,
            Some(url) => rookery_bench::Answer::Nats {
                client: async_nats::connect(url.as_str()).await?,
                subject: cli.subject.clone().into(),
            },
        };
        let listener = tokio::net::TcpListener::bind(&cli.addr).await?;
        println!("ceiling listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        rookery_bench::serve_ceiling_with(listener, answer).await;
        Ok(())
    })
}
