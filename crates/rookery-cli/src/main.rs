//! `rookery`: serve the demo game, or talk to a server interactively.

mod repl;
mod serve;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Rookery game server.
#[derive(Debug, Parser)]
#[command(name = "rookery", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the demo game: every module in one process, embedded defaults.
    Serve(serve::ServeArgs),
    /// Interactive client (pitaya-cli style); reads commands from stdin, also from a pipe.
    Client(repl::ClientArgs),
}

fn init_logs(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(args) => {
            init_logs("info");
            serve::run(args).await
        }
        Cmd::Client(args) => {
            init_logs("warn");
            repl::run(args).await
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
