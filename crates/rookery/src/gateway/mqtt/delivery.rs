//! What an MQTT client is sent, and how: answers and QoS 0 pushes go straight to the session's
//! queue; a push on a topic the client subscribed to with QoS 1 gets a packet id and waits in
//! the in-flight window (`mqtt.inflight`) until the client's PUBACK, and is sent again with DUP
//! every `mqtt.redeliver` while the client stays connected. Pushes beyond the window wait (at
//! most `gateway.outbound_queue` of them; beyond that the client is too slow and is closed).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::mqttbytes::v4::{Packet, Publish, SubscribeReasonCode};
use rumqttc::mqttbytes::{matches, valid_filter, QoS};

use super::{encode, topics, Mqtt};
use crate::session::codec::ClientCodec;
use crate::session::REASON_SLOW_CLIENT;
use crate::telemetry::DisconnectReason;
use crate::{Code, Error, Session};

/// The topic a kick's reason is published on before the connection closes (MQTT 3.1.1 has no
/// server-side DISCONNECT).
pub(crate) const KICK_TOPIC: &str = "sys/kick";

/// Topic filters one client may hold at once; beyond it a SUBSCRIBE's new filters are refused
/// (`0x80`), so that a client cannot grow the gateway's memory by subscribing.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 128;

/// One client's subscriptions and delivery window.
pub(crate) struct Delivery {
    limits: Limits,
    /// The keep-alive's idle timeout, if the client asked for one.
    idle: Option<Duration>,
    state: Mutex<State>,
}

/// What a connection needs of the node's MQTT settings.
struct Limits {
    inflight: usize,
    redeliver: Duration,
    max_packet: usize,
    waiting: usize,
}

#[derive(Default)]
struct State {
    /// Topic filters and the QoS granted for them.
    subscriptions: Vec<(String, QoS)>,
    /// True while some subscription has QoS 1 (pushes are then each client's own).
    any_qos1: bool,
    last_pkid: u16,
    inflight: VecDeque<InFlight>,
    waiting: VecDeque<(String, Bytes)>,
}

struct InFlight {
    pkid: u16,
    packet: Bytes,
    sent: Instant,
}

impl Delivery {
    pub(super) fn new(mqtt: &Mqtt, idle: Option<Duration>) -> Self {
        Self {
            limits: Limits {
                inflight: mqtt.inflight,
                redeliver: mqtt.redeliver,
                max_packet: mqtt.max_packet,
                waiting: mqtt.waiting,
            },
            idle,
            state: Mutex::new(State::default()),
        }
    }

    pub(super) fn idle(&self) -> Option<Duration> {
        self.idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A SUBSCRIBE's filter: granted at QoS 0 or 1; QoS 2, malformed filters and filters beyond
    /// [`MAX_SUBSCRIPTIONS`] are refused (`0x80`).
    pub(super) fn subscribe(&self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        if qos == QoS::ExactlyOnce || !valid_filter(filter) {
            return SubscribeReasonCode::Failure;
        }
        let mut s = self.lock();
        s.subscriptions.retain(|(f, _)| f != filter);
        if s.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return SubscribeReasonCode::Failure;
        }
        s.subscriptions.push((filter.to_string(), qos));
        s.any_qos1 = s.subscriptions.iter().any(|(_, q)| *q == QoS::AtLeastOnce);
        SubscribeReasonCode::Success(qos)
    }

    pub(super) fn unsubscribe(&self, filter: &str) {
        let mut s = self.lock();
        s.subscriptions.retain(|(f, _)| f != filter);
        s.any_qos1 = s.subscriptions.iter().any(|(_, q)| *q == QoS::AtLeastOnce);
    }

    /// The client acknowledged `pkid`: the window moves on.
    pub(super) fn acked(&self, session: &Session, pkid: u16) {
        let mut s = self.lock();
        if let Some(i) = s.inflight.iter().position(|f| f.pkid == pkid) {
            s.inflight.remove(i);
        }
        while s.inflight.len() < self.limits.inflight {
            let Some((topic, body)) = s.waiting.pop_front() else {
                break;
            };
            if let Err(e) = self.send_qos1(&mut s, session, topic, body) {
                if session.is_closed() {
                    break;
                }
                // This push could not be encoded: the ones behind it still go.
                tracing::warn!(session = session.id(), error = %e, "MQTT push not sent");
            }
        }
    }

    /// Sends a QoS 1 publish with the next free packet id and keeps it until acknowledged.
    fn send_qos1(
        &self,
        s: &mut State,
        session: &Session,
        topic: String,
        body: Bytes,
    ) -> Result<(), Error> {
        let mut pkid = s.last_pkid;
        loop {
            pkid = pkid.wrapping_add(1).max(1);
            if !s.inflight.iter().any(|f| f.pkid == pkid) {
                break;
            }
        }
        s.last_pkid = pkid;
        let mut p = Publish::from_bytes(topic, QoS::AtLeastOnce, body);
        p.pkid = pkid;
        let packet = encode(&Packet::Publish(p), self.limits.max_packet)?;
        session.send_packet(packet.clone())?;
        s.inflight.push_back(InFlight {
            pkid,
            packet,
            sent: Instant::now(),
        });
        Ok(())
    }

    /// The QoS a push on `topic` is sent with: the highest a matching subscription granted.
    fn qos_for(s: &State, topic: &str) -> QoS {
        if !s.any_qos1 {
            return QoS::AtMostOnce;
        }
        let qos1 = s
            .subscriptions
            .iter()
            .any(|(f, q)| *q == QoS::AtLeastOnce && matches(topic, f));
        if qos1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        }
    }

    fn publish_qos0(&self, topic: &str, body: Bytes) -> Result<Bytes, Error> {
        let p = Publish::from_bytes(topic, QoS::AtMostOnce, body);
        encode(&Packet::Publish(p), self.limits.max_packet)
    }
}

/// The session's codec of an MQTT client.
pub(crate) struct MqttCodec(pub(super) Arc<Delivery>);

impl ClientCodec for MqttCodec {
    fn response(
        &self,
        session: &Session,
        _id: u64,
        reply_to: Option<&str>,
        result: Result<Bytes, Error>,
    ) -> Result<Bytes, Error> {
        let topic = reply_to.ok_or_else(|| Error::internal("an MQTT answer without a topic"))?;
        let body = if topics::is_mqant(topic) {
            mqant_envelope(result)
        } else {
            match result {
                Ok(body) => body,
                Err(e) => e.encode(session.serializer()),
            }
        };
        self.0.publish_qos0(topic, body)
    }

    fn encode_push(&self, _session: &Session, route: &str, body: Bytes) -> Result<Bytes, Error> {
        self.0.publish_qos0(route, body)
    }

    fn push(&self, session: &Session, route: &str, body: Bytes) -> Result<(), Error> {
        let d = &self.0;
        let mut s = d.lock();
        if Delivery::qos_for(&s, route) == QoS::AtMostOnce {
            drop(s);
            return session.send_packet(d.publish_qos0(route, body)?);
        }
        if s.inflight.len() < d.limits.inflight && s.waiting.is_empty() {
            return d.send_qos1(&mut s, session, route.to_string(), body);
        }
        if s.waiting.len() >= d.limits.waiting {
            drop(s);
            session.close_as(Some(DisconnectReason::SlowClient), REASON_SLOW_CLIENT);
            return Err(Error::new(Code::Unavailable, REASON_SLOW_CLIENT));
        }
        s.waiting.push_back((route.to_string(), body));
        Ok(())
    }

    fn shared_class(&self) -> Option<u8> {
        // A client with a QoS 1 subscription gets pushes of its own (packet ids).
        (!self.0.lock().any_qos1).then_some(1)
    }

    fn kick(&self, reason: &str) -> Option<Bytes> {
        let body = serde_json::to_vec(&serde_json::json!({ "reason": reason })).ok()?;
        self.0.publish_qos0(KICK_TOPIC, body.into()).ok()
    }

    fn tick(&self, session: &Session, now: Instant) {
        let d = &self.0;
        let mut s = d.lock();
        for f in s.inflight.iter_mut() {
            if now.saturating_duration_since(f.sent) >= d.limits.redeliver {
                // The same packet with DUP set (bit 3 of the first byte).
                let mut again = f.packet.to_vec();
                again[0] |= 0b1000;
                if session.send_packet(again.into()).is_err() {
                    return;
                }
                f.sent = now;
            }
        }
    }
}

/// mqant's answer: `{"Trace", "Error", "Result"}` (its default `resultInfo`, field names as
/// Go writes them). The result is the handler's JSON answer, or its text if it is not JSON.
fn mqant_envelope(result: Result<Bytes, Error>) -> Bytes {
    let (result, error) = match result {
        Ok(body) => (
            serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into())
            }),
            String::new(),
        ),
        Err(e) => (serde_json::Value::Null, e.to_string()),
    };
    let v = serde_json::json!({ "Trace": "", "Error": error, "Result": result });
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}
