//! `rookery serve`: runs the demo game with every module in one process.

use std::path::PathBuf;

use rookery::{Config, Server};

/// Arguments of `rookery serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (environment overrides `ROOKERY_SECTION__KEY` apply on top).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// TCP acceptor address [default: 127.0.0.1:3250].
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// WebSocket acceptor address [default: 127.0.0.1:3251].
    #[arg(long, value_name = "ADDR")]
    pub ws: Option<String>,
    /// Heartbeat interval in seconds [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub heartbeat: Option<u64>,
    /// Run one process of a multi-process config: the modules and settings of
    /// `[processes.NAME]`.
    #[arg(long, value_name = "NAME", requires = "config")]
    pub process: Option<String>,
}

/// Default TCP address of the demo.
pub const DEFAULT_TCP: &str = "127.0.0.1:3250";
/// Default WebSocket address of the demo.
pub const DEFAULT_WS: &str = "127.0.0.1:3251";

/// Builds the effective configuration: file (and process section), then environment, then
/// flags. Without a config file the demo's default acceptors apply; with one, the file decides.
pub fn config(args: &ServeArgs) -> Result<Config, Box<dyn std::error::Error + Send + Sync>> {
    let mut cfg = Config::load_process(args.config.as_deref(), args.process.as_deref())?;
    let demo_defaults = args.config.is_none();
    let gw = &mut cfg.gateway;
    if let Some(a) = &args.tcp {
        gw.tcp = Some(a.clone());
    }
    if let Some(a) = &args.ws {
        gw.ws = Some(a.clone());
    }
    if let Some(h) = args.heartbeat {
        gw.heartbeat = h;
    }
    if demo_defaults && gw.tcp.is_none() {
        gw.tcp = Some(DEFAULT_TCP.into());
    }
    if demo_defaults && gw.ws.is_none() {
        gw.ws = Some(DEFAULT_WS.into());
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Runs the demo until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cfg = config(&args)?;
    let server = rookery_demo::modules(Server::builder(cfg)).start().await?;
    if let Some(a) = server.tcp_addr() {
        println!("rookery: TCP on {a}");
    }
    if let Some(a) = server.ws_addr() {
        println!("rookery: WebSocket on ws://{a}/");
    }
    let node = server.app().node();
    println!(
        "rookery: node {} ({}) running [{}]",
        node.id,
        node.node_type,
        node.modules.join(", ")
    );
    let report = server.run_until(rookery::shutdown_signal()).await;
    println!(
        "rookery: stopped ({} sessions drained{})",
        report.sessions,
        if report.drained {
            ""
        } else {
            ", drain timed out"
        }
    );
    Ok(())
}
