//! The KCP acceptor (`gateway.kcp`): reliable, ordered streams over UDP (tokio_kcp), carrying
//! the pomelo protocol exactly as TCP does. KCP resends lost segments faster than TCP (no
//! exponential back-off in nodelay mode), which is what lossy mobile links want.
//!
//! Each conversation is one peer address (tokio_kcp keys sessions by it; a client's
//! conversation id is its own, or allocated when it sends 0). Sessions, limits, heartbeats and
//! the idle sweep are the gateway's, as for every protocol.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_kcp::{KcpConfig, KcpListener, KcpNoDelayConfig, KcpStream};

/// KCP's segment header, in bytes (the MTU less this is a segment's data).
const KCP_OVERHEAD: usize = 24;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::session::codec::Pomelo;
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
        // Stream mode: every segment stands alone (no message spans a client's receive window);
        // the pomelo framing marks packet boundaries.
        stream: true,
        ..KcpConfig::default()
    }
}

/// Segments one write hands to KCP at most: KCP refuses a send of 128 segments or more, and the
/// writer coalesces up to a whole batch of packets into one write.
const SEGMENTS_PER_WRITE: usize = 64;

/// A KCP stream whose writes are cut to [`SEGMENTS_PER_WRITE`] segments (the rest is written by
/// the next call, as with any partial write).
struct Chunked {
    stream: KcpStream,
    max_write: usize,
}

impl tokio::io::AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Chunked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.max_write);
        Pin::new(&mut self.stream).poll_write(cx, &buf[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Binds the KCP acceptor.
pub(crate) async fn bind(config: &Config, addr: &str) -> std::io::Result<KcpListener> {
    KcpListener::bind(kcp_config(config), addr)
        .await
        .map_err(std::io::Error::other)
}

/// Accepts KCP conversations until `stop` fires, under the gateway's connection limit. A
/// conversation is accepted before it waits for a slot (an idle KCP listener holds none), and
/// while it waits, the listener's own backlog (tokio_kcp's, bounded) holds further ones.
pub(crate) async fn accept_loop(
    app: App,
    mut listener: KcpListener,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let max_write = (app.config().kcp.mtu.saturating_sub(KCP_OVERHEAD)).max(1) * SEGMENTS_PER_WRITE;
    loop {
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
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let stream = Chunked { stream, max_write };
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
