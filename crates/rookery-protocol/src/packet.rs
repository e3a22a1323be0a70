//! Packet layer: `type | length (3 bytes, BE) | body`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtocolError;

/// Size of the packet header: one type byte and a 3-byte big-endian length.
pub const HEADER_LEN: usize = 4;
/// The largest body the 3-byte length can describe.
pub const MAX_WIRE_BODY: usize = (1 << 24) - 1;
/// Default limit on a packet body: 64 KiB.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 64 * 1024;

/// The five packet types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Handshake request (client) or response (server); JSON body.
    Handshake = 1,
    /// Client acknowledges the handshake; data may flow after it.
    HandshakeAck = 2,
    /// Keep-alive, both ways; empty body.
    Heartbeat = 3,
    /// Carries one [`crate::Message`].
    Data = 4,
    /// Server tells the client it is being disconnected, then closes.
    Kick = 5,
}

impl TryFrom<u8> for PacketType {
    type Error = ProtocolError;

    fn try_from(b: u8) -> Result<Self, ProtocolError> {
        Ok(match b {
            1 => Self::Handshake,
            2 => Self::HandshakeAck,
            3 => Self::Heartbeat,
            4 => Self::Data,
            5 => Self::Kick,
            other => return Err(ProtocolError::UnknownPacketType(other)),
        })
    }
}

/// One packet: its type and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Packet type.
    pub kind: PacketType,
    /// Packet body (may be empty).
    pub body: Bytes,
}

impl Packet {
    /// A packet with the given type and body.
    pub fn new(kind: PacketType, body: impl Into<Bytes>) -> Self {
        Self {
            kind,
            body: body.into(),
        }
    }

    /// Encodes this packet into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, ProtocolError> {
        encode_parts(self.kind, &self.body)
    }
}

/// Encodes a packet from its parts into a fresh buffer.
pub fn encode_parts(kind: PacketType, body: &[u8]) -> Result<Bytes, ProtocolError> {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    encode_into(kind, body, &mut out)?;
    Ok(out.freeze())
}

/// Appends the encoding of a packet to `out`.
pub fn encode_into(kind: PacketType, body: &[u8], out: &mut BytesMut) -> Result<(), ProtocolError> {
    if body.len() > MAX_WIRE_BODY {
        return Err(ProtocolError::BodyTooLarge {
            len: body.len(),
            max: MAX_WIRE_BODY,
        });
    }
    out.reserve(HEADER_LEN + body.len());
    out.put_u8(kind as u8);
    let len = body.len() as u32;
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_slice(body);
    Ok(())
}

/// Stream decoder for packets with a body-size limit.
///
/// [`PacketCodec::decode`] follows the `tokio_util` decoder contract: `Ok(None)` means "need more
/// bytes". The header is validated (type and length against the limit) before any body bytes are
/// buffered or allocated, so a lying length is refused at once.
#[derive(Debug, Clone, Copy)]
pub struct PacketCodec {
    max_body: usize,
}

impl Default for PacketCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PACKET_SIZE)
    }
}

impl PacketCodec {
    /// A codec refusing bodies larger than `max_body` bytes (capped at the wire maximum).
    pub fn new(max_body: usize) -> Self {
        Self {
            max_body: max_body.min(MAX_WIRE_BODY),
        }
    }

    /// The body limit in force.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Validates a header and returns the type and body length.
    fn header(&self, head: &[u8]) -> Result<(PacketType, usize), ProtocolError> {
        let kind = PacketType::try_from(head[0])?;
        let len = u32::from_be_bytes([0, head[1], head[2], head[3]]) as usize;
        if len > self.max_body {
            return Err(ProtocolError::BodyTooLarge {
                len,
                max: self.max_body,
            });
        }
        Ok((kind, len))
    }

    /// Takes one packet off the front of `buf`, or returns `Ok(None)` if `buf` holds only part of
    /// one. On `Ok(None)` the buffer has reserved room for the rest of the packet (never beyond the
    /// limit).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, ProtocolError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let (kind, len) = self.header(&buf[..HEADER_LEN])?;
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let body = buf.split_to(len).freeze();
        Ok(Some(Packet { kind, body }))
    }

    /// Decodes a buffer that must hold exactly one packet (one WebSocket binary frame).
    pub fn decode_frame(&self, frame: Bytes) -> Result<Packet, ProtocolError> {
        if frame.len() < HEADER_LEN {
            return Err(ProtocolError::FrameMismatch);
        }
        let (kind, len) = self.header(&frame[..HEADER_LEN])?;
        if frame.len() != HEADER_LEN + len {
            return Err(ProtocolError::FrameMismatch);
        }
        Ok(Packet {
            kind,
            body: frame.slice(HEADER_LEN..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_header_big_endian() {
        let b = encode_parts(PacketType::Data, &[0xAA; 0x0102]).unwrap();
        assert_eq!(&b[..4], &[4, 0x00, 0x01, 0x02]);
        assert_eq!(b.len(), 4 + 0x102);
        let hb = encode_parts(PacketType::Heartbeat, &[]).unwrap();
        assert_eq!(&hb[..], &[3, 0, 0, 0]);
    }

    #[test]
    fn decodes_split_and_coalesced_reads() {
        let codec = PacketCodec::default();
        let mut wire = BytesMut::new();
        encode_into(PacketType::Handshake, b"{}", &mut wire).unwrap();
        encode_into(PacketType::Heartbeat, b"", &mut wire).unwrap();
        encode_into(PacketType::Data, b"\x00\x00\x01a", &mut wire).unwrap();
        let all = wire.freeze();
        // Feed one byte at a time: never a wrong packet, each appears once complete.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(p) = codec.decode(&mut buf).unwrap() {
                got.push(p);
            }
        }
        assert_eq!(
            got,
            vec![
                Packet::new(PacketType::Handshake, &b"{}"[..]),
                Packet::new(PacketType::Heartbeat, Bytes::new()),
                Packet::new(PacketType::Data, &b"\x00\x00\x01a"[..]),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_unknown_type_and_lying_length_before_body() {
        let codec = PacketCodec::new(1024);
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0][..]);
        assert_eq!(
            codec.decode(&mut buf),
            Err(ProtocolError::UnknownPacketType(9))
        );
        let mut buf = BytesMut::from(&[4u8, 0xFF, 0xFF, 0xFF][..]);
        assert_eq!(
            codec.decode(&mut buf),
            Err(ProtocolError::BodyTooLarge {
                len: 0xFF_FFFF,
                max: 1024
            })
        );
        // Refused from the header alone: nothing was reserved for the lying body.
        assert!(buf.capacity() < 1024);
        let mut zero = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(
            codec.decode(&mut zero),
            Err(ProtocolError::UnknownPacketType(0))
        );
    }

    #[test]
    fn frame_must_hold_exactly_one_packet() {
        let codec = PacketCodec::default();
        let one = encode_parts(PacketType::Heartbeat, b"").unwrap();
        assert_eq!(
            codec.decode_frame(one.clone()).unwrap().kind,
            PacketType::Heartbeat
        );
        let mut two = BytesMut::from(&one[..]);
        two.extend_from_slice(&one);
        assert_eq!(
            codec.decode_frame(two.freeze()),
            Err(ProtocolError::FrameMismatch)
        );
        assert_eq!(
            codec.decode_frame(Bytes::from_static(&[4, 0, 0, 5, 1])),
            Err(ProtocolError::FrameMismatch)
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..300) {
            let codec = PacketCodec::new(max);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(p)) = codec.decode(&mut buf) {
                prop_assert!(p.body.len() <= max);
            }
            let _ = codec.decode_frame(Bytes::from(data));
        }

        #[test]
        fn roundtrip(kind in 1u8..=5, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let kind = PacketType::try_from(kind).unwrap();
            let wire = encode_parts(kind, &body).unwrap();
            let mut buf = BytesMut::from(&wire[..]);
            let p = PacketCodec::new(300).decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(p.kind, kind);
            prop_assert_eq!(&p.body[..], &body[..]);
            prop_assert!(buf.is_empty());
        }
    }
}
