//! The pomelo/pitaya-compatible client protocol, as pure codecs over [`bytes`].
//!
//! Three layers, each in its own module:
//! - [`packet`]: `type (1 byte) | length (3 bytes, big-endian) | body`; the framing on TCP and the
//!   content of each WebSocket binary frame.
//! - [`message`]: the body of a `Data` packet: flag byte, varint message id, route, payload.
//! - [`handshake`]: the JSON documents exchanged in `Handshake` packets.
//!
//! This crate does no I/O and needs no async runtime: every decoder takes bytes and returns either
//! a value, "need more bytes", or a [`ProtocolError`]. Limits are checked before any allocation.

#![forbid(unsafe_code)]

pub mod compression;
pub mod error;
pub mod handshake;
pub mod message;
pub mod packet;
pub mod route;

pub use error::ProtocolError;
pub use handshake::{
    ClientHandshake, HandshakeFailure, HandshakeRequest, HandshakeResponse, HandshakeSys,
    Serializer,
};
pub use message::{Message, MessageType, Route};
pub use packet::{Packet, PacketCodec, PacketType, DEFAULT_MAX_PACKET_SIZE, HEADER_LEN};
pub use route::{hashed_code, DictError, RouteDict, RouteName};
