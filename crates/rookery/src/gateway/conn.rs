//! The connection driver: handshake, session, then the running phase ([`Running`]: a reader
//! that runs each request's handler in order, and a writer with batched writes; what a message
//! does is in `request`), then the session's end.
//!
//! Task tree for one connection, all owned by the connection task:
//! ```text
//! connection task ── reader, running ordered handlers inline
//!                 │  + writer (polled by the same task, after the reader)
//!                 └─ concurrent handler tasks (routes with Dispatch::Concurrent; bounded)
//! ```
//! Running ordered handlers inline, and the writer in the same task, keeps a request's whole
//! path in one task: no hop between read, handler and write. The next packet is read when the
//! handler is done, so the socket buffer is the inbound queue; the writer keeps writing while an
//! inline handler waits. The connection task returns only after its handler tasks and writer
//! have ended and the session has been removed from the pool and its groups.

use std::net::SocketAddr;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use super::close::{FLUSH_DEADLINE, REASON_HANDSHAKE_TIMEOUT, REASON_SHUTDOWN};
use super::running::Running;
use super::transport::{PacketWriter, Transport};
use super::wire::{Accepted, Refusal, Wire};
use crate::session::{Acceptor, NewSession};
use crate::telemetry::DisconnectReason;
use crate::{telemetry, App};

/// Serves one accepted connection, speaking `wire`, until it ends.
/// `permit` (of the gateway's connection limit) is held until the connection ends.
pub(crate) async fn serve<W: Wire>(
    app: App,
    wire: std::sync::Arc<W>,
    transport: Transport<W::Decoder>,
    remote: SocketAddr,
    acceptor: Acceptor,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let Transport {
        mut reader,
        mut writer,
    } = transport;
    let cfg = &app.config().gateway;
    let hs = tokio::select! {
        // Boxed so that the handshake's state is not kept for the connection's whole life.
        // The accepted client boxed too: it is not kept either, and a box is one pointer there.
        r = timeout(cfg.handshake_timeout(), Box::pin(async {
            wire.handshake(&app, &mut reader, &mut writer).await.map(Box::new)
        })) => r,
        _ = app.inner().draining.cancelled() => Ok(Err(Refusal {
            why: Some(DisconnectReason::Shutdown),
            reason: REASON_SHUTDOWN.into(),
        })),
    };
    let accepted = match hs {
        Ok(Ok(v)) => v,
        Ok(Err(Refusal { why, reason })) => {
            tracing::debug!(%remote, %reason, "handshake failed");
            metrics::counter!(telemetry::HANDSHAKES_FAILED_TOTAL, "reason" => "refused")
                .increment(1);
            if let Some(why) = why {
                app.disconnects().record(why, None, remote, None, &reason);
            }
            kick_raw(&mut writer, wire.refusal(&reason)).await;
            return;
        }
        Err(_) => {
            metrics::counter!(telemetry::HANDSHAKES_FAILED_TOTAL, "reason" => "timeout")
                .increment(1);
            app.disconnects().record(
                DisconnectReason::HandshakeTimeout,
                None,
                remote,
                None,
                REASON_HANDSHAKE_TIMEOUT,
            );
            kick_raw(&mut writer, wire.refusal(REASON_HANDSHAKE_TIMEOUT)).await;
            return;
        }
    };

    let Accepted {
        serializer,
        client,
        codec,
        conn,
        dict,
    } = *accepted;
    // Not needed past the handshake: not part of the running connection's state.
    drop(wire);
    let session = app.sessions().create(NewSession {
        remote,
        acceptor,
        serializer,
        client,
        outbound: cfg.outbound_queue,
        dict,
        compress_above: cfg.compress_above,
        codec,
    });
    tracing::debug!(session = session.id(), %remote, ?acceptor, "session opened");
    let sessions_gauge =
        metrics::gauge!(telemetry::SESSIONS, "acceptor" => acceptor_label(acceptor));
    sessions_gauge.increment(1.0);
    for m in app.modules() {
        m.session_opened(&app, &session).await;
    }
    W::opened(&app, &conn, &session);
    // Reader and writer until both have ended. A session made by `create` always has its queue.
    match session.outbound() {
        Some(queue) => Running::<W>::new(&app, conn, &session, queue, reader, writer).await,
        None => session.close_as(None, "no outbound queue"),
    }
    // Counted and logged here, where each connection ends once, rather than where it is
    // closed (anywhere, possibly more than once): one count and at most one line each.
    if let Some(why) = session.disconnect_reason() {
        app.disconnects().record(
            why,
            Some(session.id()),
            remote,
            session.uid().as_deref(),
            session.close_reason().unwrap_or_default(),
        );
    }

    for m in app.modules() {
        m.session_closed(&app, &session).await;
    }
    // Boxed: its state (~1 KiB) would otherwise be part of every idle connection's task.
    Box::pin(app.rpc().session_closed(&session)).await;
    app.groups().remove_session(&session);
    app.sessions().remove(&session);
    sessions_gauge.decrement(1.0);
    tracing::debug!(
        session = session.id(),
        reason = session.close_reason().unwrap_or(""),
        "session closed"
    );
}

/// Best-effort refusal (pomelo: a Kick with the reason) on a connection that has no session
/// (yet), then close.
async fn kick_raw(writer: &mut PacketWriter, refusal: Option<bytes::Bytes>) {
    if let Some(b) = refusal {
        let _ = timeout(FLUSH_DEADLINE, writer.write(&[b])).await;
    }
    let _ = timeout(FLUSH_DEADLINE, writer.shutdown()).await;
}

pub(super) fn acceptor_label(a: Acceptor) -> &'static str {
    match a {
        Acceptor::Tcp => "tcp",
        Acceptor::Ws => "ws",
        Acceptor::Mqtt => "mqtt",
        Acceptor::MqttWs => "mqtt_ws",
        Acceptor::Zinx => "zinx",
        Acceptor::Kcp => "kcp",
        Acceptor::Remote => "remote",
        Acceptor::Internal => "internal",
    }
}
