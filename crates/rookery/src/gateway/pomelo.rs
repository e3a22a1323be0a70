//! The pomelo/pitaya packet protocol as a [`Wire`]: packets framed by a 4-byte header, the
//! JSON handshake and its ack, heartbeats, and `Data` packets carrying messages. It runs over
//! TCP, TLS, WebSocket (one packet per binary message) and KCP.

use bytes::Bytes;
use rookery_protocol::handshake::{HandshakeResponseSys, CODE_BAD_REQUEST, CODE_OK};
use rookery_protocol::{
    HandshakeRequest, HandshakeResponse, Message, Packet, PacketCodec, PacketType,
};
use tokio::time::timeout;

use super::close::{heartbeat_packet, FLUSH_DEADLINE};
use super::transport::{PacketDecoder, PacketReader, PacketWriter};
use super::wire::{next_frame, Accepted, End, Incoming, Refusal, Wire};
use crate::session::codec::{ClientCodec, Pomelo};
use crate::{App, Session};

impl Wire for Pomelo {
    type Frame = Packet;
    type Decoder = PacketDecoder;
    type Conn = ();

    fn decoder(&self, max_packet: usize) -> PacketDecoder {
        PacketDecoder(PacketCodec::new(max_packet))
    }

    async fn handshake(
        &self,
        app: &App,
        reader: &mut PacketReader,
        writer: &mut PacketWriter,
    ) -> Result<Accepted<()>, Refusal> {
        handshake(app, reader, writer).await
    }

    fn opened(_: &App, _: &(), session: &Session) {
        // Pomelo clients start their heartbeats when the server's first one arrives.
        let _ = session.send_packet(heartbeat_packet());
    }

    fn on_frame(_: &(), session: &Session, packet: Packet) -> Result<Option<Incoming>, End> {
        match packet.kind {
            PacketType::Heartbeat => {
                let _ = session.send_packet(heartbeat_packet());
                Ok(None)
            }
            PacketType::Data => match Message::decode(packet.body) {
                Ok(m) => Ok(Some(m.into())),
                Err(e) => Err(End::Violation(format!("bad message: {e}"))),
            },
            PacketType::Handshake | PacketType::HandshakeAck => {
                Err(End::Violation("handshake after handshake".into()))
            }
            PacketType::Kick => Err(End::Violation("clients may not send kick".into())),
        }
    }

    fn refusal(&self, reason: &str) -> Option<Bytes> {
        self.kick(reason)
    }
}

/// Runs the handshake: the client's handshake, the validator, the answer (heartbeat interval,
/// route dictionary, serializer), then the client's ack.
async fn handshake(
    app: &App,
    reader: &mut PacketReader,
    writer: &mut PacketWriter,
) -> Result<Accepted<()>, Refusal> {
    let request = loop {
        let p = next_frame(reader).await?;
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
            return Err(Refusal::refused(reason));
        }
    }
    let cfg = &app.config().gateway;
    // The dictionary the client is given; the session keeps it to read the codes it sends.
    let dict = app.sessions().dict();
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
        let p = next_frame(reader).await?;
        match p.kind {
            PacketType::HandshakeAck => {
                return Ok(Accepted {
                    serializer,
                    client: req.sys,
                    codec: Pomelo::boxed(),
                    conn: (),
                    dict,
                })
            }
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
