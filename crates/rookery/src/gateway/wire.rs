//! The client-protocol seam on the gateway's side. A protocol is a [`Wire`] (its framing, its
//! handshake and what each inbound frame means) plus the [`ClientCodec`] its handshake gives the
//! session (how responses, pushes and kicks are put on the wire). The connection driver
//! (`conn`, `running`) and everything behind it (sessions, routing, dispatch, pushes, kicks,
//! rate limits, idle sweep, limits) are the same for every protocol.
//!
//! ```text
//!  bytes ─ Wire::Decoder ─ frames ─ Wire::on_frame ─ Incoming ─┐
//!                                                             ├─ request::resolve ─ handlers
//!  bytes ─ PacketWriter ─ Outbound queue ─ ClientCodec ───────┘   (the same for all)
//! ```

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use rookery_protocol::handshake::HandshakeSys;
use rookery_protocol::{Message, RouteDict, Serializer};
use tokio_util::codec::Decoder;

use super::transport::{ConnError, FrameReader, PacketWriter};
use crate::session::codec::ClientCodec;
use crate::telemetry::DisconnectReason;
use crate::{App, Session};

/// Why the reader ended.
pub(crate) enum End {
    /// The client closed the connection (or the socket failed).
    ClientGone,
    /// The client broke the protocol: kick with this reason.
    Violation(String),
    /// The client exceeded its rate limit more than `max_violations` times.
    RateLimited,
    /// The node is draining.
    Drain,
    /// The session was closed from elsewhere (kick, duplicate login, slow client).
    Closed,
}

/// One client protocol: its framing, handshake and inbound frames.
pub(crate) trait Wire: Send + Sync + Sized + 'static {
    /// What the framing cuts the byte stream into.
    type Frame: Send + 'static;
    /// The framing; it checks a frame's length before it allocates for it.
    type Decoder: Decoder<Item = Self::Frame, Error = ConnError> + Send + Unpin + 'static;
    /// What the connection keeps of the protocol while it runs (e.g. MQTT's delivery window,
    /// and what it needs of the protocol's configuration).
    type Conn: Send + Sync + Unpin + 'static;

    /// The framing for a connection, with the gateway's packet-size limit.
    fn decoder(&self, max_packet: usize) -> Self::Decoder;

    /// Runs the handshake (within the gateway's handshake deadline, which the caller applies).
    fn handshake<'a>(
        &'a self,
        app: &'a App,
        reader: &'a mut FrameReader<Self::Decoder>,
        writer: &'a mut PacketWriter,
    ) -> impl Future<Output = Result<Accepted<Self::Conn>, Refusal>> + Send + 'a;

    /// The session exists: what the protocol does first (pomelo: the first heartbeat).
    fn opened(app: &App, conn: &Self::Conn, session: &Session);

    /// What a frame means once the session runs: a request or notify for the core, or
    /// something the protocol handled itself (`None`: a keep-alive, an acknowledgement). `Err`
    /// ends the connection.
    fn on_frame(
        conn: &Self::Conn,
        session: &Session,
        frame: Self::Frame,
    ) -> Result<Option<Incoming>, End>;

    /// What tells a client that has no session yet why it is refused, if anything.
    fn refusal(&self, reason: &str) -> Option<Bytes>;
}

/// A client the handshake accepted.
pub(crate) struct Accepted<C> {
    pub serializer: Serializer,
    pub client: HandshakeSys,
    pub codec: Box<dyn ClientCodec>,
    pub conn: C,
    /// The route dictionary the client was given (codes it sends mean what this says).
    pub dict: Arc<RouteDict>,
}

/// A request or notify, read from any protocol.
pub(crate) struct Incoming {
    pub msg: Message,
    /// What the protocol needs, beside the message id, to address the answer (MQTT: the topic).
    pub reply_to: Option<Box<str>>,
    /// Set when the protocol could not make a route of what the client sent (an MQTT topic of
    /// no route, a zinx msgID of none): the request is answered with this error once it has
    /// passed the rate limit, like one for an unknown route.
    pub refused: Option<crate::Error>,
}

impl From<Message> for Incoming {
    fn from(msg: Message) -> Self {
        Self {
            msg,
            reply_to: None,
            refused: None,
        }
    }
}

impl Incoming {
    /// A request (or notify, when `request` is false) refused with `error`.
    pub(crate) fn refused(
        request: bool,
        id: u64,
        reply_to: Option<Box<str>>,
        error: crate::Error,
    ) -> Self {
        // No route: it is answered (or, for a notify, dropped) before any route is read.
        let msg = Message {
            kind: if request {
                rookery_protocol::MessageType::Request
            } else {
                rookery_protocol::MessageType::Notify
            },
            id: if request { id } else { 0 },
            route: None,
            payload: bytes::Bytes::new(),
            compressed: false,
            error: false,
        };
        Self {
            msg,
            reply_to,
            refused: Some(error),
        }
    }
}

/// Why a handshake did not succeed: the text the client is sent, and why the server refused
/// it (None when it is not a disconnect by the server: the client left, the socket failed, or
/// the answer could not be encoded, which is logged as an error).
pub(crate) struct Refusal {
    pub why: Option<DisconnectReason>,
    pub reason: String,
}

impl Refusal {
    pub(crate) fn client_gone(reason: impl Into<String>) -> Self {
        Self {
            why: None,
            reason: reason.into(),
        }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Self {
            why: Some(DisconnectReason::ProtocolError),
            reason: reason.into(),
        }
    }

    pub(crate) fn refused(reason: impl Into<String>) -> Self {
        Self {
            why: Some(DisconnectReason::HandshakeRefused),
            reason: reason.into(),
        }
    }
}

/// The next frame during a handshake.
pub(crate) async fn next_frame<D>(reader: &mut FrameReader<D>) -> Result<D::Item, Refusal>
where
    D: Decoder<Error = ConnError> + Unpin,
{
    use futures_util::StreamExt;
    match reader.next().await {
        Some(Ok(p)) => Ok(p),
        Some(Err(e @ ConnError::Io(_))) => Err(Refusal::client_gone(e.to_string())),
        Some(Err(e)) => Err(Refusal::protocol(e.to_string())),
        None => Err(Refusal::client_gone("connection closed during handshake")),
    }
}
