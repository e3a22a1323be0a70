//! The client-protocol seam on the session's side: how what the core sends a client (a
//! response, a push, a kick) is put on that client's wire. Each connection's protocol gives its
//! session one [`ClientCodec`]; the core never looks at the bytes.
//!
//! The other half of a protocol (its framing, handshake and keep-alive, and what each inbound
//! frame means) is the gateway's `Wire` trait. Together they are all a protocol is: sessions,
//! routing, handlers, pushes and groups are the same for every one.

use bytes::Bytes;
use rookery_protocol::{Message, Packet, PacketType, Route, RouteName};

use super::Session;
use crate::Error;

/// How messages to one client are encoded (and, for protocols with delivery state, sent).
pub(crate) trait ClientCodec: Send + Sync + 'static {
    /// The answer to a request: `id` and `reply_to` are what the protocol's reader kept of the
    /// request to address it (pomelo: the message id; MQTT: the topic).
    fn response(
        &self,
        session: &Session,
        id: u64,
        reply_to: Option<&str>,
        result: Result<Bytes, Error>,
    ) -> Result<Bytes, Error>;

    /// A push, encoded (`body` in the session's serializer).
    fn encode_push(&self, session: &Session, route: &str, body: Bytes) -> Result<Bytes, Error>;

    /// Sends a push. Protocols with delivery state (acknowledgements, a window) do it here.
    fn push(&self, session: &Session, route: &str, body: Bytes) -> Result<(), Error> {
        session.send_packet(self.encode_push(session, route, body)?)
    }

    /// The class of sessions one encoded push fits: a fan-out encodes once per class (and
    /// serializer) and shares the bytes. `None`: every push is this session's own. The session
    /// keeps a copy among its hot fields; a protocol whose answer changes (MQTT, as the client
    /// subscribes) calls `Session::refresh_push_class`.
    fn shared_class(&self) -> Option<u8>;

    /// What tells the client why it is disconnected, if the protocol has such a thing.
    fn kick(&self, reason: &str) -> Option<Bytes>;

    /// Called by the gateway's periodic sweep: protocols with delivery state send again what
    /// is still unacknowledged.
    fn tick(&self, _session: &Session, _now: std::time::Instant) {}
}

/// The pomelo/pitaya packet protocol (TCP, WebSocket, TLS, KCP).
pub(crate) struct Pomelo;

impl Pomelo {
    /// Pomelo's codec, shared by every session (it has no state).
    pub(crate) fn boxed() -> Box<dyn ClientCodec> {
        // A box of a zero-sized type allocates nothing.
        Box::new(Pomelo)
    }
}

impl ClientCodec for Pomelo {
    fn response(
        &self,
        session: &Session,
        id: u64,
        _reply_to: Option<&str>,
        result: Result<Bytes, Error>,
    ) -> Result<Bytes, Error> {
        let msg = match result {
            Ok(body) => {
                let (body, compressed) = session.maybe_compress(body);
                let mut m = Message::response(id, body);
                m.compressed = compressed;
                m
            }
            Err(e) => Message::error_response(id, e.encode(session.serializer())),
        };
        msg.to_packet_bytes().map_err(Error::internal)
    }

    fn encode_push(&self, session: &Session, route: &str, body: Bytes) -> Result<Bytes, Error> {
        let (body, compressed) = session.maybe_compress(body);
        let route = match session.dict().code(route) {
            Some(code) => Route::Code(code),
            None => Route::Name(
                RouteName::try_from(route)
                    .map_err(|e| Error::internal(format!("push route: {e}")))?,
            ),
        };
        let mut m = Message::push(route, body);
        m.compressed = compressed;
        m.to_packet_bytes().map_err(Error::internal)
    }

    fn shared_class(&self) -> Option<u8> {
        Some(0)
    }

    fn kick(&self, reason: &str) -> Option<Bytes> {
        let body = serde_json::to_vec(&serde_json::json!({ "reason": reason })).unwrap_or_default();
        Packet::new(PacketType::Kick, body).to_bytes().ok()
    }
}
