//! The background task that owns the socket: writes queued packets, reads packets, answers pending
//! requests, delivers pushes and kicks, sends heartbeats.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rookery_protocol::packet::encode_parts;
use rookery_protocol::{Message, MessageType, Packet, PacketCodec, PacketType, Route};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::transport::Transport;
use crate::{ClientError, Closed, Event, Push};

/// How long a close waits for queued packets to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a pending request receives.
pub(crate) type Reply = Result<Bytes, ClientError>;

/// Requests awaiting a response, and whether the connection has ended (with its reason).
#[derive(Default)]
pub(crate) struct PendingState {
    /// Message id to the waiting request.
    pub(crate) map: HashMap<u64, oneshot::Sender<Reply>>,
    /// `Some(reason)` once the connection has ended; no request may be added then.
    pub(crate) closed: Option<Option<String>>,
}

/// Shared handle to [`PendingState`].
pub(crate) type Pending = Arc<Mutex<PendingState>>;

/// Locks the pending state, ignoring poisoning (the state stays consistent under any panic).
pub(crate) fn lock(pending: &Mutex<PendingState>) -> MutexGuard<'_, PendingState> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the socket task owns.
pub(crate) struct Conn {
    pub(crate) transport: Transport,
    pub(crate) codec: PacketCodec,
    pub(crate) commands: mpsc::Receiver<Bytes>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) pending: Pending,
    pub(crate) closed: watch::Sender<Option<Closed>>,
    pub(crate) cancel: CancellationToken,
    /// Heartbeat interval, when heartbeats are to be sent.
    pub(crate) heartbeat: Option<Duration>,
    /// Route code to name (the inverted handshake dictionary).
    pub(crate) routes: HashMap<u16, String>,
    /// Serializer of this connection (error payloads use it too).
    pub(crate) serializer: rookery_protocol::Serializer,
}

/// Why the connection ended.
enum End {
    /// We closed it (close(), or the last handle was dropped).
    Local,
    /// The server closed it without a kick.
    Eof,
    /// The server kicked us.
    Kicked(Option<String>),
    /// A read, write or protocol error.
    Error(ClientError),
}

/// One turn of the loop.
enum Step {
    Cancel,
    Command(Option<Bytes>),
    Inbound(Result<Option<Packet>, ClientError>),
    Heartbeat,
}

impl Conn {
    /// Runs until the connection ends, then fails pending requests and publishes [`Closed`].
    pub(crate) async fn run(mut self) {
        let end = self.serve().await;
        if matches!(end, End::Local) {
            // Packets queued before the close still go out (a notify right before close()).
            self.commands.close();
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while let Ok(packet) = self.commands.try_recv() {
                    if self.transport.send(packet).await.is_err() {
                        break;
                    }
                }
            })
            .await;
            self.transport.shutdown().await;
        }
        let (closed, reason) = match end {
            End::Local | End::Eof => (
                Closed {
                    kicked: false,
                    reason: None,
                },
                None,
            ),
            End::Kicked(reason) => (
                Closed {
                    kicked: true,
                    reason: reason.clone(),
                },
                reason,
            ),
            End::Error(e) => {
                tracing::debug!(error = %e, "connection failed");
                let reason = Some(e.to_string());
                (
                    Closed {
                        kicked: false,
                        reason: reason.clone(),
                    },
                    reason,
                )
            }
        };
        let waiting = {
            let mut state = lock(&self.pending);
            state.closed = Some(reason.clone());
            std::mem::take(&mut state.map)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(ClientError::Closed {
                reason: reason.clone(),
            }));
        }
        self.closed.send_replace(Some(closed));
        // Dropping `self` closes the event queue: next_event() drains it, then returns None.
    }

    async fn serve(&mut self) -> End {
        let mut heartbeat: Option<Interval> = self.heartbeat.map(|h| {
            let mut i = tokio::time::interval_at(Instant::now() + h, h);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        loop {
            let step = tokio::select! {
                _ = self.cancel.cancelled() => Step::Cancel,
                cmd = self.commands.recv() => Step::Command(cmd),
                pkt = self.transport.recv(&self.codec) => Step::Inbound(pkt),
                _ = tick(&mut heartbeat) => Step::Heartbeat,
            };
            let result = match step {
                Step::Cancel | Step::Command(None) => return End::Local,
                Step::Command(Some(packet)) => self.write(packet).await,
                Step::Heartbeat => match encode_parts(PacketType::Heartbeat, &[]) {
                    Ok(packet) => self.write(packet).await,
                    Err(e) => Err(End::Error(e.into())),
                },
                Step::Inbound(Ok(None)) => return End::Eof,
                Step::Inbound(Err(e)) => return End::Error(e),
                Step::Inbound(Ok(Some(packet))) => self.on_packet(packet).await,
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Writes a packet. A close while the write is blocked (the server is not reading) gives it a
    /// short grace period, so that a packet taken off the queue is not cut short needlessly.
    async fn write(&mut self, packet: Bytes) -> Result<(), End> {
        let cancel = self.cancel.clone();
        tokio::select! {
            r = self.transport.send(packet) => r.map_err(End::Error),
            _ = async move {
                cancel.cancelled().await;
                tokio::time::sleep(CLOSE_GRACE).await;
            } => Err(End::Local),
        }
    }

    /// Delivers an event, waiting for queue space (backpressure) unless cancelled.
    async fn deliver(&mut self, event: Event) -> Result<(), End> {
        tokio::select! {
            r = self.events.send(event) => {
                // The receiver lives as long as the Client; if it is gone we are shutting down.
                r.map_err(|_| End::Local)
            }
            _ = self.cancel.cancelled() => Err(End::Local),
        }
    }

    async fn on_packet(&mut self, packet: Packet) -> Result<(), End> {
        match packet.kind {
            PacketType::Heartbeat => Ok(()),
            PacketType::Kick => {
                let reason = kick_reason(&packet.body);
                tracing::debug!(?reason, "kicked by the server");
                self.deliver(Event::Kick {
                    reason: reason.clone(),
                })
                .await?;
                Err(End::Kicked(reason))
            }
            PacketType::Data => {
                let msg = Message::decode(packet.body).map_err(|e| End::Error(e.into()))?;
                self.on_message(msg).await
            }
            PacketType::Handshake | PacketType::HandshakeAck => {
                tracing::warn!(kind = ?packet.kind, "ignoring unexpected packet after handshake");
                Ok(())
            }
        }
    }

    /// A message's payload, inflated if it came compressed (within the packet size limit).
    fn payload(&self, msg: &Message) -> Result<Bytes, ClientError> {
        if msg.compressed {
            Ok(rookery_protocol::compression::inflate(
                &msg.payload,
                self.codec.max_body(),
            )?)
        } else {
            Ok(msg.payload.clone())
        }
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), End> {
        match msg.kind {
            MessageType::Response => {
                let waiting = lock(&self.pending).map.remove(&msg.id);
                let Some(tx) = waiting else {
                    tracing::debug!(id = msg.id, "response for no pending request (timed out?)");
                    return Ok(());
                };
                let reply = match self.payload(&msg) {
                    Err(e) => Err(e),
                    Ok(payload) if msg.error => Err(server_error(&payload, self.serializer)),
                    Ok(payload) => Ok(payload),
                };
                let _ = tx.send(reply);
                Ok(())
            }
            MessageType::Push => {
                let payload = match self.payload(&msg) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping a push that does not inflate");
                        return Ok(());
                    }
                };
                let route = match msg.route {
                    Some(Route::Name(name)) => name.as_str().to_string(),
                    Some(Route::Code(code)) => self
                        .routes
                        .get(&code)
                        .cloned()
                        .unwrap_or_else(|| format!("#{code}")),
                    None => String::new(),
                };
                self.deliver(Event::Push(Push { route, payload })).await
            }
            MessageType::Request | MessageType::Notify => {
                tracing::warn!(kind = ?msg.kind, "ignoring client-bound message of a client-only type");
                Ok(())
            }
        }
    }
}

/// Waits for the next heartbeat tick, or forever when heartbeats are off.
async fn tick(heartbeat: &mut Option<Interval>) {
    match heartbeat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub(crate) use rookery_protocol::handshake::kick_reason;

/// Protobuf form of an error response (pitaya `protos.Error`).
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoError {
    #[prost(string, tag = "1")]
    code: String,
    #[prost(string, tag = "2")]
    msg: String,
    #[prost(map = "string, string", tag = "3")]
    metadata: HashMap<String, String>,
}

/// Builds [`ClientError::Server`] from an error response payload: `{"code","msg","metadata"?}`
/// in JSON, or pitaya's `Error` message in protobuf.
pub(crate) fn server_error(
    payload: &[u8],
    serializer: rookery_protocol::Serializer,
) -> ClientError {
    if serializer == rookery_protocol::Serializer::Protobuf {
        if let Ok(e) = <ProtoError as prost::Message>::decode(payload) {
            return ClientError::Server {
                code: e.code,
                msg: e.msg,
                metadata: (!e.metadata.is_empty())
                    .then(|| serde_json::to_value(e.metadata).unwrap_or_default()),
            };
        }
    }
    #[derive(serde::Deserialize)]
    struct Wire {
        #[serde(default)]
        code: serde_json::Value,
        #[serde(default)]
        msg: Option<String>,
        #[serde(default)]
        metadata: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Wire>(payload) {
        Ok(w) => ClientError::Server {
            code: match w.code {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            },
            msg: w.msg.unwrap_or_default(),
            metadata: w.metadata,
        },
        Err(_) => ClientError::Server {
            code: String::new(),
            msg: String::from_utf8_lossy(payload).into_owned(),
            metadata: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_reasons() {
        assert_eq!(kick_reason(b""), None);
        assert_eq!(kick_reason(br#"{"reason":"bye"}"#).as_deref(), Some("bye"));
        assert_eq!(kick_reason(br#"{}"#), None);
        assert_eq!(kick_reason(br#""dup""#).as_deref(), Some("dup"));
        assert_eq!(kick_reason(b"plain").as_deref(), Some("plain"));
    }

    const J: rookery_protocol::Serializer = rookery_protocol::Serializer::Json;

    #[test]
    fn protobuf_server_error() {
        let wire = ProtoError {
            code: "RK-400".into(),
            msg: "bad".into(),
            metadata: HashMap::new(),
        };
        let bytes = prost::Message::encode_to_vec(&wire);
        match server_error(&bytes, rookery_protocol::Serializer::Protobuf) {
            ClientError::Server {
                code,
                msg,
                metadata,
            } => {
                assert_eq!(
                    (code.as_str(), msg.as_str(), metadata),
                    ("RK-400", "bad", None)
                );
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn server_errors() {
        match server_error(br#"{"code":"PIT-404","msg":"nope","metadata":{"a":1}}"#, J) {
            ClientError::Server {
                code,
                msg,
                metadata,
            } => {
                assert_eq!(code, "PIT-404");
                assert_eq!(msg, "nope");
                assert_eq!(metadata, Some(serde_json::json!({"a":1})));
            }
            e => panic!("{e:?}"),
        }
        match server_error(br#"{"code":500,"msg":"x"}"#, J) {
            ClientError::Server { code, .. } => assert_eq!(code, "500"),
            e => panic!("{e:?}"),
        }
        match server_error(b"garbage", J) {
            ClientError::Server { code, msg, .. } => {
                assert_eq!(code, "");
                assert_eq!(msg, "garbage");
            }
            e => panic!("{e:?}"),
        }
    }
}
