//! The load generator on its own, for use before (or without) the `rookery bench` subcommand:
//! `cargo run --release -p rookery-bench --example bench -- --addr 127.0.0.1:3300 --inflight 8`.

use clap::Parser;

/// Command line: the same options as `rookery bench`.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(flatten)]
    args: rookery_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cli = Cli::parse();
    let json = cli.args.json;
    let report = rookery_bench::run(cli.args).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        rookery_bench::print_table(&report);
    }
    Ok(())
}
