//! MQTT 3.1.1 clients (mqant's gateway protocol) as a [`Wire`], over TCP, TLS and WebSocket
//! (subprotocol `mqtt`). Packets are read and written by rumqttc's MQTT 3.1.1 codec.
//!
//! - CONNECT is the handshake: client id, username, password and will go to the handshake
//!   validator (as the handshake's `user` object); the keep-alive sets the session's idle
//!   timeout (one and a half keep-alives, as the specification says).
//! - A PUBLISH on `module/handler/method/MSGID` is a request, answered by a PUBLISH on the same
//!   topic; on `module/handler/method` it is a notify. mqant's form `moduleType/HD_handler[/msgid]`
//!   maps to routes through `[mqtt.mqant]`, and its answers carry mqant's envelope.
//! - Pushes are PUBLISHes on the push route's topic, at the QoS the client subscribed to it with
//!   (QoS 0 without a subscription): see [`delivery`].

mod delivery;
mod topics;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rookery_protocol::handshake::HandshakeSys;
use rookery_protocol::{HandshakeRequest, Message, MessageType, Route, RouteName};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, UnsubAck};
use rumqttc::mqttbytes::{Error as MqttError, Protocol, QoS};
use tokio_util::codec::Decoder;

use super::transport::{ConnError, FrameReader, PacketWriter};
use super::wire::{next_frame, Accepted, End, Incoming, Refusal, Wire};
use crate::config::{Config, MqttLogin};
use crate::{App, Error, Session};
use delivery::Delivery;
pub(crate) use delivery::MqttCodec;
use topics::Topics;

/// The MQTT protocol of a node: its topic mapping and delivery settings.
pub(crate) struct Mqtt {
    topics: Arc<Topics>,
    /// QoS 1 pushes in flight per client, at most.
    inflight: usize,
    redeliver: Duration,
    max_packet: usize,
    /// Pushes waiting for the in-flight window, per client, at most.
    waiting: usize,
    login: MqttLogin,
    /// Seconds.
    max_keep_alive: u64,
}

impl Mqtt {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            topics: Arc::new(Topics::new(&config.mqtt.mqant)),
            inflight: usize::from(config.mqtt.inflight),
            redeliver: config.mqtt.redeliver(),
            // What clients are sent is limited as pomelo's packets are, not by what they may send.
            max_packet: rookery_protocol::packet::MAX_WIRE_BODY,
            waiting: config.gateway.outbound_queue,
            login: config.mqtt.login,
            max_keep_alive: u64::from(config.mqtt.max_keep_alive),
        }
    }
}

/// What the framing yields: a packet, or a CONNECT of another protocol version (answered with
/// CONNACK code 1 rather than a bare close).
pub(crate) enum MqttFrame {
    Packet(Packet),
    BadProtocol(String),
}

/// MQTT framing: the remaining length is checked against the packet-size limit before anything
/// is allocated for the packet.
pub(crate) struct MqttDecoder {
    max: usize,
}

impl Decoder for MqttDecoder {
    type Item = MqttFrame;
    type Error = ConnError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<MqttFrame>, ConnError> {
        match Packet::read(src, self.max) {
            Ok(p) => Ok(Some(MqttFrame::Packet(p))),
            Err(MqttError::InsufficientBytes(_)) => Ok(None),
            Err(e @ (MqttError::InvalidProtocol | MqttError::InvalidProtocolLevel(_))) => {
                Ok(Some(MqttFrame::BadProtocol(e.to_string())))
            }
            Err(e) => Err(ConnError::Malformed(format!("mqtt: {e}"))),
        }
    }
}

/// One MQTT connection's state: its codec (shared with the session) holds the delivery window.
pub(crate) struct MqttConn {
    codec: Arc<Delivery>,
    topics: Arc<Topics>,
    /// The user id CONNECT logged in as (`mqtt.login`), bound when the session opens.
    login: Option<String>,
}

impl Wire for Mqtt {
    type Frame = MqttFrame;
    type Decoder = MqttDecoder;
    type Conn = MqttConn;

    fn decoder(&self, max_packet: usize) -> MqttDecoder {
        MqttDecoder { max: max_packet }
    }

    async fn handshake(
        &self,
        app: &App,
        reader: &mut FrameReader<MqttDecoder>,
        writer: &mut PacketWriter,
    ) -> Result<Accepted<MqttConn>, Refusal> {
        let connect = match next_frame(reader).await? {
            MqttFrame::Packet(Packet::Connect(c)) => c,
            MqttFrame::BadProtocol(why) => {
                connack(writer, ConnectReturnCode::RefusedProtocolVersion).await;
                return Err(Refusal::protocol(why));
            }
            MqttFrame::Packet(other) => {
                return Err(Refusal::protocol(format!(
                    "expected CONNECT, got {}",
                    packet_name(&other)
                )))
            }
        };
        if connect.protocol != Protocol::V4 {
            connack(writer, ConnectReturnCode::RefusedProtocolVersion).await;
            return Err(Refusal::protocol(
                "only MQTT 3.1.1 (protocol level 4) is spoken",
            ));
        }
        if connect.client_id.is_empty() && !connect.clean_session {
            connack(writer, ConnectReturnCode::BadClientId).await;
            return Err(Refusal::protocol(
                "an empty client id needs a clean session",
            ));
        }
        let cfg = &app.config().gateway;
        let sys = HandshakeSys {
            client_type: Some("mqtt".into()),
            version: Some("3.1.1".into()),
            ..Default::default()
        };
        let request = HandshakeRequest {
            sys,
            user: serde_json::json!({
                "client_id": connect.client_id,
                "username": connect.login.as_ref().map(|l| l.username.clone()),
                "password": connect.login.as_ref().map(|l| l.password.clone()),
                "keep_alive": connect.keep_alive,
                "clean_session": connect.clean_session,
                "will": connect.last_will.as_ref().map(|w| serde_json::json!({
                    "topic": w.topic,
                    "message": String::from_utf8_lossy(&w.message),
                    "qos": w.qos as u8,
                    "retain": w.retain,
                })),
            }),
        };
        if let Some(validate) = &app.inner().validator {
            if let Err(e) = validate(&request) {
                connack(writer, ConnectReturnCode::NotAuthorized).await;
                return Err(Refusal::refused(e.msg().to_string()));
            }
        }
        let login = match self.login {
            MqttLogin::None => None,
            MqttLogin::Username => connect.login.as_ref().map(|l| l.username.clone()),
            MqttLogin::ClientId => Some(connect.client_id.clone()),
        }
        .filter(|u| !u.is_empty());
        write_packet(
            writer,
            &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
        )
        .await
        .map_err(|e| Refusal::client_gone(e.to_string()))?;
        // The specification's deadline: one and a half keep-alives without a packet; the
        // keep-alive capped by `mqtt.max_keep_alive` (a client may not hold its session idle
        // for hours), and the deadline no shorter than a request may run plus a second (the
        // reader does not read while an inline request runs, so pings wait meanwhile).
        let idle = (connect.keep_alive > 0).then(|| {
            let keep_alive = u64::from(connect.keep_alive).min(self.max_keep_alive);
            Duration::from_millis(keep_alive * 1500)
                .max(cfg.request_timeout() + Duration::from_secs(1))
        });
        let delivery = Arc::new(Delivery::new(self, idle));
        Ok(Accepted {
            serializer: cfg.serializer,
            client: request.sys,
            codec: Box::new(MqttCodec(delivery.clone())),
            conn: MqttConn {
                codec: delivery,
                topics: self.topics.clone(),
                login,
            },
            dict: app.sessions().dict(),
        })
    }

    fn opened(app: &App, conn: &MqttConn, session: &Session) {
        if let Some(idle) = conn.codec.idle() {
            session.set_idle_timeout(idle);
        }
        // Logged in by CONNECT (`mqtt.login`): an older session of the same user is kicked
        // with `duplicate login`, as for a login handler's bind.
        if let Some(uid) = &conn.login {
            if let Err(e) = app.sessions().bind(session, uid) {
                tracing::debug!(session = session.id(), error = %e, "MQTT login not bound");
            }
        }
    }

    fn on_frame(
        conn: &MqttConn,
        session: &Session,
        frame: MqttFrame,
    ) -> Result<Option<Incoming>, End> {
        let packet = match frame {
            MqttFrame::Packet(p) => p,
            MqttFrame::BadProtocol(why) => return Err(End::Violation(why)),
        };
        let reply = |p: Packet| {
            if let Ok(b) = encode(&p, usize::MAX) {
                let _ = session.send_packet(b);
            }
        };
        match packet {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => reply(Packet::PubAck(PubAck::new(p.pkid))),
                    QoS::ExactlyOnce => {
                        return Err(End::Violation(
                            "QoS 2 is not supported: publish with QoS 0 or 1".into(),
                        ))
                    }
                }
                let routed = conn.topics.request(&p.topic).and_then(|(route, request)| {
                    RouteName::try_from(route.as_str())
                        .map(|r| (r, request))
                        .map_err(|e| Error::bad_request(format!("topic {:?}: {e}", p.topic)))
                });
                match routed {
                    Ok((route, request)) => {
                        let kind = if request {
                            MessageType::Request
                        } else {
                            MessageType::Notify
                        };
                        let mut msg = Message::notify(Route::Name(route), p.payload);
                        msg.kind = kind;
                        Ok(Some(Incoming {
                            msg,
                            reply_to: Some(p.topic.into_boxed_str()),
                            refused: None,
                        }))
                    }
                    // Answered where the client waits for an answer (a topic with a msgid),
                    // like an unknown route.
                    Err(e) => Ok(Some(Incoming::refused(
                        topics::wants_answer(&p.topic),
                        0,
                        Some(p.topic.into_boxed_str()),
                        e,
                    ))),
                }
            }
            Packet::PubAck(ack) => {
                conn.codec.acked(session, ack.pkid);
                Ok(None)
            }
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|f| conn.codec.subscribe(&f.path, f.qos))
                    .collect();
                session.refresh_push_class();
                reply(Packet::SubAck(SubAck::new(s.pkid, codes)));
                Ok(None)
            }
            Packet::Unsubscribe(u) => {
                for t in &u.topics {
                    conn.codec.unsubscribe(t);
                }
                session.refresh_push_class();
                reply(Packet::UnsubAck(UnsubAck::new(u.pkid)));
                Ok(None)
            }
            Packet::PingReq => {
                reply(Packet::PingResp);
                Ok(None)
            }
            Packet::Disconnect => Err(End::ClientGone),
            Packet::Connect(_) => Err(End::Violation("a second CONNECT".into())),
            other => Err(End::Violation(format!(
                "clients may not send {}",
                packet_name(&other)
            ))),
        }
    }

    fn refusal(&self, _reason: &str) -> Option<Bytes> {
        // MQTT 3.1.1 has nothing to say why before CONNACK: the connection closes.
        None
    }
}

/// A packet's bytes, within `max` bytes.
pub(crate) fn encode(p: &Packet, max: usize) -> Result<Bytes, Error> {
    let mut buf = BytesMut::with_capacity(p.size() + 5);
    p.write(&mut buf, max)
        .map_err(|e| Error::internal(format!("mqtt: {e}")))?;
    Ok(buf.freeze())
}

async fn write_packet(writer: &mut PacketWriter, p: &Packet) -> std::io::Result<()> {
    let b = encode(p, usize::MAX).map_err(std::io::Error::other)?;
    writer.write(&[b]).await
}

/// Refuses a CONNECT with `code`; the caller then closes the connection.
async fn connack(writer: &mut PacketWriter, code: ConnectReturnCode) {
    let p = Packet::ConnAck(ConnAck::new(code, false));
    let _ = tokio::time::timeout(super::close::FLUSH_DEADLINE, write_packet(writer, &p)).await;
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}
