//! The one error type of the protocol layer.

use thiserror::Error;

/// Why bytes could not be decoded (or a value encoded). Every variant is a protocol violation by
/// the peer, except [`ProtocolError::RouteTooLong`] and [`ProtocolError::BodyTooLarge`] which can
/// also be raised while encoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The packet type byte is not one of 1..=5.
    #[error("unknown packet type {0}")]
    UnknownPacketType(u8),
    /// The declared body length exceeds the configured maximum.
    #[error("packet body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge {
        /// Declared (or attempted) body length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A WebSocket frame held a partial packet or trailing bytes after one packet.
    #[error("frame does not hold exactly one packet")]
    FrameMismatch,
    /// The message flag byte names an unknown message type.
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    /// A compressed payload that does not inflate.
    #[error("bad compressed payload: {0}")]
    BadCompression(String),
    /// The message ended before a required field.
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    /// The message id varint is longer than 10 bytes or overflows 64 bits.
    #[error("malformed message id varint")]
    BadVarint,
    /// The route is not valid UTF-8.
    #[error("route is not valid UTF-8")]
    BadRoute,
    /// A route longer than 255 bytes cannot be encoded.
    #[error("route longer than 255 bytes")]
    RouteTooLong,
    /// A field that this message type must not carry (or must carry) is wrong.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
    /// A handshake document could not be parsed.
    #[error("bad handshake: {0}")]
    BadHandshake(String),
}
