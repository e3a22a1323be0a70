//! `rookery`: serve the demo game, or talk to a server interactively.

mod repl;
mod serve;

use clap::{Parser, Subcommand};

// mimalloc: the request path makes many small, short-lived allocations across tasks; glibc's
// malloc spent ~12% of the server's time on them (BENCHMARKS.md, profiles).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Load generator: many connections sending requests, with latency histograms.
    Bench(rookery_bench::BenchArgs),
}

/// Installs the log subscriber as `[log]` says (stderr by default; `RUST_LOG` wins over its
/// level). The returned guard flushes the log file when dropped: hold it until the end.
fn init_logs(
    cfg: &rookery::config::LogConfig,
    default: &str,
) -> Result<Option<rookery::logs::FileGuard>, BoxError> {
    // Feature `otel`: spans also go to OpenTelemetry when OTEL_EXPORTER_OTLP_ENDPOINT is set;
    // then the handlers' `request` spans (level `debug`) are switched on.
    #[cfg(feature = "otel")]
    let otel = serve::otel::layer().map(|l| {
        Box::new(l)
            as Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>
    });
    #[cfg(not(feature = "otel"))]
    let otel = None;
    let debug_requests = otel.is_some();
    Ok(rookery::logs::init(cfg, default, otel, debug_requests)?)
}

async fn bench(
    args: rookery_bench::BenchArgs,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let report = rookery_bench::run(args.clone()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        rookery_bench::print_table(&report);
    }
    if let Some(hint) = rookery_bench::hint(&report) {
        eprintln!("{hint}");
    }
    rookery_bench::check(&report, &args)?;
    Ok(())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `serve` builds its runtime from the configuration's `[runtime]` section.
fn serve_main(args: serve::ServeArgs) -> Result<(), BoxError> {
    let cfg = serve::config(&args)?;
    let rt = cfg.runtime.build()?;
    rt.block_on(async {
        let _log_file = init_logs(&cfg.log, "info")?;
        for ignored in cfg.runtime.ignored_settings() {
            tracing::warn!("{ignored}");
        }
        serve::run(args, cfg).await
    })
}

/// `client` and `bench` log warnings only; `client` runs on a default runtime, `bench` on the one
/// its flags ask for.
fn run_quiet(
    rt: &rookery::config::RuntimeConfig,
    fut: impl std::future::Future<Output = Result<(), BoxError>>,
) -> Result<(), BoxError> {
    let rt = rt.build()?;
    rt.block_on(async {
        let _log_file = init_logs(&Default::default(), "warn")?;
        fut.await
    })
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(args) => serve_main(args),
        Cmd::Client(args) => run_quiet(&Default::default(), repl::run(args)),
        Cmd::Bench(args) => run_quiet(&args.runtime_config(), bench(args)),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
