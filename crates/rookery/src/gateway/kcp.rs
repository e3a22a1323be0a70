//! The KCP acceptor (`gateway.kcp`): reliable, ordered streams over UDP (tokio_kcp), carrying
//! the pomelo protocol exactly as TCP does. KCP resends lost segments faster than TCP (no
//! exponential back-off in nodelay mode), which is what lossy mobile links want.
//!
//! Each conversation is one peer address (tokio_kcp keys sessions by it; a client's
//! conversation id is its own, or allocated when it sends 0). Sessions, limits, heartbeats and
//! the idle sweep are the gateway's, as for every protocol.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_kcp::{KcpConfig, KcpListener, KcpNoDelayConfig};
use tokio_util::sync::CancellationToken;

use crate::codec::Pomelo;
use crate::config::Config;
use crate::session::Acceptor;
use crate::App;

/// tokio_kcp's settings from `[kcp]`. A conversation silent for longer than the gateway's idle
/// timeout (two heartbeats) and a margin is dropped by KCP too, after the sweep closed it.
pub(crate) fn kcp_config(config: &Config) -> KcpConfig {
    let k = &config.kcp;
    KcpConfig {
        mtu: k.mtu,
        nodelay: KcpNoDelayConfig {
            nodelay: k.nodelay,
            interval: k.interval,
            resend: k.resend,
            nc: k.no_congestion_control,
        },
        wnd_size: (k.window, k.window),
        session_expire: config.gateway.heartbeat_interval() * 2 + Duration::from_secs(10),
        flush_write: true,
        flush_acks_input: true,
        stream: false,
        ..KcpConfig::default()
    }
}

/// Binds the KCP acceptor.
pub(crate) async fn bind(config: &Config, addr: &str) -> std::io::Result<KcpListener> {
    KcpListener::bind(kcp_config(config), addr)
        .await
        .map_err(std::io::Error::other)
}

/// Accepts KCP conversations until `stop` fires, under the gateway's connection limit.
pub(crate) async fn accept_loop(
    app: App,
    mut listener: KcpListener,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "KCP accept failed");
                    tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        metrics::counter!(crate::telemetry::CONNECTIONS_TOTAL, "acceptor" => "kcp").increment(1);
        app.inner().tasks.spawn(super::serve_stream(
            app.clone(),
            Arc::new(Pomelo),
            stream,
            remote,
            Acceptor::Kcp,
            permit,
        ));
    }
}
