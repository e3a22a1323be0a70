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

use futures_util::StreamExt;
use rookery_protocol::handshake::{HandshakeResponseSys, CODE_BAD_REQUEST, CODE_OK};
use rookery_protocol::{
    HandshakeRequest, HandshakeResponse, HandshakeSys, Packet, PacketType, RouteDict, Serializer,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use super::close::{heartbeat_packet, FLUSH_DEADLINE, REASON_HANDSHAKE_TIMEOUT, REASON_SHUTDOWN};
use super::running::Running;
use super::transport::{PacketReader, PacketWriter, Transport};
use crate::session::{Acceptor, NewSession};
use crate::telemetry::DisconnectReason;
use crate::{telemetry, App};

/// Serves one accepted connection until it ends.
/// `permit` (of the gateway's connection limit) is held until the connection ends.
pub(crate) async fn serve(
    app: App,
    transport: Transport,
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
    // The dictionary the client is given; the session keeps it to read the codes it sends.
    let dict = app.sessions().dict();
    let hs = tokio::select! {
        // Boxed so that the handshake's state is not kept for the connection's whole life.
        r = timeout(cfg.handshake_timeout(), Box::pin(handshake(&app, &dict, &mut reader, &mut writer))) => r,
        _ = app.inner().draining.cancelled() => Ok(Err(Refusal {
            why: Some(DisconnectReason::Shutdown),
            reason: REASON_SHUTDOWN.into(),
        })),
    };
    let (serializer, client) = match hs {
        Ok(Ok(v)) => v,
        Ok(Err(Refusal { why, reason })) => {
            tracing::debug!(%remote, %reason, "handshake failed");
            metrics::counter!(telemetry::HANDSHAKES_FAILED_TOTAL, "reason" => "refused")
                .increment(1);
            if let Some(why) = why {
                app.disconnects().record(why, None, remote, None, &reason);
            }
            kick_raw(&mut writer, &reason).await;
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
            kick_raw(&mut writer, REASON_HANDSHAKE_TIMEOUT).await;
            return;
        }
    };

    let session = app.sessions().create(NewSession {
        remote,
        acceptor,
        serializer,
        client,
        outbound: cfg.outbound_queue,
        dict,
        compress_above: cfg.compress_above,
    });
    tracing::debug!(session = session.id(), %remote, ?acceptor, "session opened");
    let sessions_gauge =
        metrics::gauge!(telemetry::SESSIONS, "acceptor" => acceptor_label(acceptor));
    sessions_gauge.increment(1.0);
    for m in app.modules() {
        m.session_opened(&app, &session).await;
    }
    // Pomelo clients start their heartbeats when the server's first one arrives.
    let _ = session.send_packet(heartbeat_packet());
    // Reader and writer until both have ended. A session made by `create` always has its queue.
    match session.outbound() {
        Some(queue) => Running::new(&app, &session, queue, reader, writer).await,
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

/// Why a handshake did not succeed: the text the client is sent, and why the server refused
/// it (None when it is not a disconnect by the server: the client left, the socket failed, or
/// the answer could not be encoded, which is logged as an error).
struct Refusal {
    why: Option<DisconnectReason>,
    reason: String,
}

impl Refusal {
    fn client_gone(reason: impl Into<String>) -> Self {
        Self {
            why: None,
            reason: reason.into(),
        }
    }

    fn protocol(reason: impl Into<String>) -> Self {
        Self {
            why: Some(DisconnectReason::ProtocolError),
            reason: reason.into(),
        }
    }
}

async fn next_packet(reader: &mut PacketReader) -> Result<Packet, Refusal> {
    match reader.next().await {
        Some(Ok(p)) => Ok(p),
        Some(Err(e @ super::transport::ConnError::Io(_))) => {
            Err(Refusal::client_gone(e.to_string()))
        }
        Some(Err(e)) => Err(Refusal::protocol(e.to_string())),
        None => Err(Refusal::client_gone("connection closed during handshake")),
    }
}

/// Runs the handshake; returns the chosen serializer and the client's self-description.
async fn handshake(
    app: &App,
    dict: &RouteDict,
    reader: &mut PacketReader,
    writer: &mut PacketWriter,
) -> Result<(Serializer, HandshakeSys), Refusal> {
    let request = loop {
        let p = next_packet(reader).await?;
        match p.kind {
            PacketType::Handshake => break p,
            PacketType::Heartbeat => continue,
            PacketType::Data => return Err(Refusal::protocol("data before handshake")),
            other => {
                return Err(Refusal::protocol(format!(
                    "unexpected {other:?} before handshake"
                )))
            }
        }
    };
    let req = match HandshakeRequest::decode(&request.body) {
        Ok(r) => r,
        Err(e) => {
            let reason = e.to_string();
            refuse(writer, CODE_BAD_REQUEST, &reason).await;
            return Err(Refusal::protocol(reason));
        }
    };
    if let Some(validate) = &app.inner().validator {
        if let Err(e) = validate(&req) {
            let reason = e.msg().to_string();
            refuse(writer, CODE_BAD_REQUEST, &reason).await;
            return Err(Refusal {
                why: Some(DisconnectReason::HandshakeRefused),
                reason,
            });
        }
    }
    let cfg = &app.config().gateway;
    let serializer = req.sys.serializer.unwrap_or(cfg.serializer);
    let answer = HandshakeResponse {
        code: CODE_OK,
        sys: Some(HandshakeResponseSys {
            heartbeat: cfg.heartbeat,
            dict: dict.iter().map(|(k, v)| (k.to_string(), v)).collect(),
            serializer,
        }),
        msg: None,
    };
    let bytes = Packet::new(PacketType::Handshake, answer.encode())
        .to_bytes()
        .map_err(|e| {
            // The route dictionary is larger than a packet may be: the node's fault.
            tracing::error!(error = %e, "handshake answer cannot be encoded");
            Refusal::client_gone(e.to_string())
        })?;
    writer
        .write(&[bytes])
        .await
        .map_err(|e| Refusal::client_gone(e.to_string()))?;
    loop {
        let p = next_packet(reader).await?;
        match p.kind {
            PacketType::HandshakeAck => return Ok((serializer, req.sys)),
            PacketType::Heartbeat => continue,
            PacketType::Data => return Err(Refusal::protocol("data before handshake ack")),
            other => {
                return Err(Refusal::protocol(format!(
                    "unexpected {other:?} before handshake ack"
                )))
            }
        }
    }
}

/// Answers a handshake with a refusal; the caller then closes the connection.
async fn refuse(writer: &mut PacketWriter, code: u16, msg: &str) {
    let body = HandshakeResponse::refuse(code, msg.to_string()).encode();
    if let Ok(b) = Packet::new(PacketType::Handshake, body).to_bytes() {
        let _ = timeout(FLUSH_DEADLINE, writer.write(&[b])).await;
    }
}

/// Best-effort Kick with a reason on a connection that has no session (yet), then close.
async fn kick_raw(writer: &mut PacketWriter, reason: &str) {
    let body = serde_json::to_vec(&serde_json::json!({ "reason": reason })).unwrap_or_default();
    if let Ok(b) = Packet::new(PacketType::Kick, body).to_bytes() {
        let _ = timeout(FLUSH_DEADLINE, writer.write(&[b])).await;
    }
    let _ = timeout(FLUSH_DEADLINE, writer.shutdown()).await;
}

fn acceptor_label(a: Acceptor) -> &'static str {
    match a {
        Acceptor::Tcp => "tcp",
        Acceptor::Ws => "ws",
        Acceptor::Remote => "remote",
        Acceptor::Internal => "internal",
    }
}
