//! Message layer: the body of a `Data` packet.
//!
//! ```text
//! flag (1 byte) | id (varint, Request/Response) | route (Request/Notify/Push) | payload
//! flag: bit 0 route compressed, bits 1-3 type, bit 4 payload compressed, bit 5 error
//! ```

use bytes::{Bytes, BytesMut};

use crate::packet::{PacketType, HEADER_LEN, MAX_WIRE_BODY};
use crate::{ProtocolError, RouteName};

const FLAG_ROUTE_COMPRESSED: u8 = 0x01;
const FLAG_TYPE_MASK: u8 = 0x07;
const FLAG_PAYLOAD_COMPRESSED: u8 = 0x10;
const FLAG_ERROR: u8 = 0x20;
const MAX_VARINT_LEN: usize = 10;

/// The four message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Client to server, expects a response; has an id and a route.
    Request = 0,
    /// Client to server, no response; has a route.
    Notify = 1,
    /// Server to client answer to a request; has the request's id.
    Response = 2,
    /// Server to client unsolicited message; has a route.
    Push = 3,
}

impl MessageType {
    fn has_id(self) -> bool {
        matches!(self, Self::Request | Self::Response)
    }
    fn has_route(self) -> bool {
        !matches!(self, Self::Response)
    }
}

impl TryFrom<u8> for MessageType {
    type Error = ProtocolError;
    fn try_from(b: u8) -> Result<Self, ProtocolError> {
        Ok(match b {
            0 => Self::Request,
            1 => Self::Notify,
            2 => Self::Response,
            3 => Self::Push,
            other => return Err(ProtocolError::UnknownMessageType(other)),
        })
    }
}

/// A route as carried on the wire: by name or by dictionary code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Uncompressed route (`module.handler.method`).
    Name(RouteName),
    /// Compressed route: a code from the handshake's route dictionary.
    Code(u16),
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message type.
    pub kind: MessageType,
    /// Message id (0 for Notify and Push).
    pub id: u64,
    /// Route (None for Response).
    pub route: Option<Route>,
    /// Serialized payload.
    pub payload: Bytes,
    /// The payload is zlib-compressed (flag 0x10).
    pub compressed: bool,
    /// The payload is an error object (flag 0x20, pitaya).
    pub error: bool,
}

impl Message {
    /// A request.
    pub fn request(id: u64, route: Route, payload: impl Into<Bytes>) -> Self {
        Self::new(MessageType::Request, id, Some(route), payload.into())
    }
    /// A notify.
    pub fn notify(route: Route, payload: impl Into<Bytes>) -> Self {
        Self::new(MessageType::Notify, 0, Some(route), payload.into())
    }
    /// A response.
    pub fn response(id: u64, payload: impl Into<Bytes>) -> Self {
        Self::new(MessageType::Response, id, None, payload.into())
    }
    /// An error response (flag 0x20).
    pub fn error_response(id: u64, payload: impl Into<Bytes>) -> Self {
        Self {
            error: true,
            ..Self::response(id, payload)
        }
    }
    /// A push.
    pub fn push(route: Route, payload: impl Into<Bytes>) -> Self {
        Self::new(MessageType::Push, 0, Some(route), payload.into())
    }

    fn new(kind: MessageType, id: u64, route: Option<Route>, payload: Bytes) -> Self {
        Self {
            kind,
            id,
            route,
            payload,
            compressed: false,
            error: false,
        }
    }

    /// Decodes a message from a `Data` packet body. The payload shares `body`'s buffer.
    pub fn decode(body: Bytes) -> Result<Self, ProtocolError> {
        let flag = *body.first().ok_or(ProtocolError::Truncated("flag"))?;
        if flag & 0xC0 != 0 {
            return Err(ProtocolError::Invalid("reserved flag bits set"));
        }
        let kind = MessageType::try_from((flag >> 1) & FLAG_TYPE_MASK)?;
        let mut pos = 1;
        let mut id = 0;
        if kind.has_id() {
            let (v, n) = decode_varint(&body[pos..])?;
            id = v;
            pos += n;
        }
        let route_compressed = flag & FLAG_ROUTE_COMPRESSED != 0;
        let route = if kind.has_route() {
            if route_compressed {
                let b = body
                    .get(pos..pos + 2)
                    .ok_or(ProtocolError::Truncated("route code"))?;
                pos += 2;
                Some(Route::Code(u16::from_be_bytes([b[0], b[1]])))
            } else {
                let len = *body
                    .get(pos)
                    .ok_or(ProtocolError::Truncated("route length"))?
                    as usize;
                pos += 1;
                if body.len() < pos + len {
                    return Err(ProtocolError::Truncated("route"));
                }
                let name = RouteName::from_bytes(body.slice(pos..pos + len))?;
                pos += len;
                Some(Route::Name(name))
            }
        } else {
            if route_compressed {
                return Err(ProtocolError::Invalid("response with a compressed route"));
            }
            None
        };
        Ok(Self {
            kind,
            id,
            route,
            payload: body.slice(pos..),
            compressed: flag & FLAG_PAYLOAD_COMPRESSED != 0,
            error: flag & FLAG_ERROR != 0,
        })
    }

    /// The encoded length of this message.
    pub fn encoded_len(&self) -> usize {
        let mut n = 1 + self.payload.len();
        if self.kind.has_id() {
            n += varint_len(self.id);
        }
        if self.kind.has_route() {
            n += match &self.route {
                Some(Route::Code(_)) => 2,
                Some(Route::Name(r)) => 1 + r.as_bytes().len(),
                None => 1,
            };
        }
        n
    }

    /// Appends the encoding of this message to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) -> Result<(), ProtocolError> {
        out.reserve(self.encoded_len());
        self.put(out, None);
        Ok(())
    }

    /// Encodes this message as a complete `Data` packet (header included) in one buffer.
    pub fn to_packet_bytes(&self) -> Result<Bytes, ProtocolError> {
        let len = self.encoded_len();
        if len > MAX_WIRE_BODY {
            return Err(ProtocolError::BodyTooLarge {
                len,
                max: MAX_WIRE_BODY,
            });
        }
        let mut out = BytesMut::with_capacity(HEADER_LEN + len);
        self.put(&mut out, Some(len));
        Ok(out.freeze())
    }

    /// Writes the message (after a `Data` packet header for a body of `packet_len` bytes, if
    /// given) into `out`, which has room for it. The fixed-size head (packet header, flag, id,
    /// route length) is assembled on the stack and copied in one go.
    fn put(&self, out: &mut BytesMut, packet_len: Option<usize>) {
        let mut flag = (self.kind as u8) << 1;
        if self.compressed {
            flag |= FLAG_PAYLOAD_COMPRESSED;
        }
        if self.error {
            flag |= FLAG_ERROR;
        }
        if self.kind.has_route() {
            if let Some(Route::Code(_)) = self.route {
                flag |= FLAG_ROUTE_COMPRESSED;
            }
        }
        let mut head = [0u8; HEADER_LEN + 1 + MAX_VARINT_LEN + 2];
        let mut n = 0;
        if let Some(len) = packet_len {
            head[0] = PacketType::Data as u8;
            head[1..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
            n = HEADER_LEN;
        }
        head[n] = flag;
        n += 1;
        if self.kind.has_id() {
            n += put_varint(&mut head[n..], self.id);
        }
        let mut name: &[u8] = &[];
        if self.kind.has_route() {
            match &self.route {
                Some(Route::Code(c)) => {
                    head[n..n + 2].copy_from_slice(&c.to_be_bytes());
                    n += 2;
                }
                Some(Route::Name(r)) => {
                    name = r.as_bytes();
                    head[n] = name.len() as u8;
                    n += 1;
                }
                None => {
                    head[n] = 0;
                    n += 1;
                }
            }
        }
        out.extend_from_slice(&head[..n]);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.payload);
    }
}

/// Decodes a base-128 varint (low 7 bits first); returns the value and the bytes read.
pub fn decode_varint(buf: &[u8]) -> Result<(u64, usize), ProtocolError> {
    let mut value: u64 = 0;
    for (i, b) in buf.iter().enumerate() {
        if i >= MAX_VARINT_LEN {
            return Err(ProtocolError::BadVarint);
        }
        let bits = u64::from(b & 0x7F);
        if i == MAX_VARINT_LEN - 1 && bits > 1 {
            return Err(ProtocolError::BadVarint);
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(ProtocolError::BadVarint)
    } else {
        Err(ProtocolError::Truncated("message id"))
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Writes `v` as a varint at the start of `out` (room for [`MAX_VARINT_LEN`] bytes); returns
/// the bytes written.
fn put_varint(out: &mut [u8], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8 & 0x7F) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(s: &str) -> Route {
        Route::Name(RouteName::try_from(s).unwrap())
    }

    fn enc(m: &Message) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode_into(&mut b).unwrap();
        assert_eq!(b.len(), m.encoded_len());
        b.to_vec()
    }

    #[test]
    fn pitaya_fixtures() {
        // Request id 0 route "a".
        let req = Message::request(0, name("a"), Bytes::new());
        assert_eq!(enc(&req), vec![0x00, 0x00, 0x01, 0x61]);
        assert_eq!(
            Message::decode(Bytes::from_static(&[0x00, 0x00, 0x01, 0x61])).unwrap(),
            req
        );
        // Same with route code 1.
        let req = Message::request(0, Route::Code(1), Bytes::new());
        assert_eq!(enc(&req), vec![0x01, 0x00, 0x00, 0x01]);
        assert_eq!(
            Message::decode(Bytes::from_static(&[0x01, 0x00, 0x00, 0x01])).unwrap(),
            req
        );
        // Push route "a".
        let push = Message::push(name("a"), Bytes::new());
        assert_eq!(enc(&push), vec![0x06, 0x01, 0x61]);
        // Error response id 0.
        let err = Message::error_response(0, &b"{}"[..]);
        assert_eq!(&enc(&err)[..2], &[0x24, 0x00]);
        let back = Message::decode(Bytes::from(enc(&err))).unwrap();
        assert!(back.error);
        assert_eq!(back.kind, MessageType::Response);
        assert_eq!(&back.payload[..], b"{}");
    }

    #[test]
    fn notify_has_no_id_and_response_no_route() {
        let n = Message::notify(name("x.y"), &b"{}"[..]);
        assert_eq!(enc(&n), b"\x02\x03x.y{}".to_vec());
        let r = Message::response(300, &b"ok"[..]);
        // 300 = 0b10_0101100 -> 0xAC 0x02
        assert_eq!(enc(&r), vec![0x04, 0xAC, 0x02, b'o', b'k']);
        assert_eq!(Message::decode(Bytes::from(enc(&r))).unwrap(), r);
    }

    #[test]
    fn varint_edges() {
        assert_eq!(decode_varint(&[0x7F]).unwrap(), (127, 1));
        assert_eq!(decode_varint(&[0x80, 0x01]).unwrap(), (128, 2));
        let mut max = [0u8; MAX_VARINT_LEN];
        assert_eq!(put_varint(&mut max, u64::MAX), 10);
        assert_eq!(decode_varint(&max).unwrap(), (u64::MAX, 10));
        assert_eq!(decode_varint(&[0x80; 11]), Err(ProtocolError::BadVarint));
        assert_eq!(
            decode_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]),
            Err(ProtocolError::BadVarint)
        );
        assert_eq!(
            decode_varint(&[0x80, 0x80]),
            Err(ProtocolError::Truncated("message id"))
        );
        assert_eq!(
            decode_varint(&[]),
            Err(ProtocolError::Truncated("message id"))
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert_eq!(
            Message::decode(Bytes::new()),
            Err(ProtocolError::Truncated("flag"))
        );
        assert_eq!(
            Message::decode(Bytes::from_static(&[0x08])),
            Err(ProtocolError::UnknownMessageType(4))
        );
        assert_eq!(
            Message::decode(Bytes::from_static(&[0x00, 0x00, 0x05, b'a'])),
            Err(ProtocolError::Truncated("route"))
        );
        assert_eq!(
            Message::decode(Bytes::from_static(&[0x01, 0x00, 0x00])),
            Err(ProtocolError::Truncated("route code"))
        );
        assert_eq!(
            Message::decode(Bytes::from_static(&[0x00, 0x00, 0x01, 0xFF])),
            Err(ProtocolError::BadRoute)
        );
    }

    #[test]
    fn packet_bytes_have_header() {
        let m = Message::push(name("onMessage"), &b"{}"[..]);
        let p = m.to_packet_bytes().unwrap();
        assert_eq!(p[0], 4);
        let len = u32::from_be_bytes([0, p[1], p[2], p[3]]) as usize;
        assert_eq!(len, p.len() - 4);
        assert_eq!(Message::decode(p.slice(4..)).unwrap(), m);
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(Bytes::from(data));
        }

        #[test]
        fn roundtrip(kind in 0u8..4, id in any::<u64>(), code in any::<u16>(), use_code in any::<bool>(),
                     route in "[a-z.]{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..100),
                     error in any::<bool>(), compressed in any::<bool>()) {
            let kind = MessageType::try_from(kind).unwrap();
            let r = if use_code { Route::Code(code) } else { name(&route) };
            let mut m = Message::new(kind, if kind.has_id() { id } else { 0 },
                                     if kind.has_route() { Some(r) } else { None }, Bytes::from(payload));
            m.error = error;
            m.compressed = compressed;
            let body = enc(&m);
            let packet = m.to_packet_bytes().unwrap();
            prop_assert_eq!(packet.len(), 4 + body.len());
            prop_assert_eq!(u32::from_be_bytes([0, packet[1], packet[2], packet[3]]) as usize, body.len());
            prop_assert_eq!(&packet[4..], &body[..]);
            let back = Message::decode(Bytes::from(body)).unwrap();
            prop_assert_eq!(back, m);
        }
    }
}
