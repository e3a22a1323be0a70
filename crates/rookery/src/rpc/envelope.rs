//! The internal frame between nodes: one protobuf `Envelope` per RPC call, notify or reply.
//!
//! Decoding is bounded by the transport's frame limit; prost never allocates beyond the frame.
//!
//! The text fields a call carries (route, trace id, source, the session's uid and gateway) are
//! declared as `bytes`: protobuf's `string` and `bytes` have the same wire form, so the frame is
//! unchanged, but decoding makes them slices of the frame instead of a `String` each. They are
//! checked as UTF-8 where they are read ([`text`]).

use bytes::Bytes;
use rookery_protocol::Serializer;

use crate::Error;

/// What an envelope is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    /// A call that expects a reply.
    Call = 0,
    /// A one-way message.
    Notify = 1,
    /// A successful reply.
    Reply = 2,
    /// An error reply (`error_code`, `error_msg`).
    Error = 3,
}

/// The client session a forwarded request acts for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionRef {
    /// Session id on its gateway.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Bound uid (empty when not logged in); UTF-8.
    #[prost(bytes = "bytes", tag = "2")]
    pub uid: Bytes,
    /// Node id of the gateway holding the connection; UTF-8.
    #[prost(bytes = "bytes", tag = "3")]
    pub gateway: Bytes,
    /// Session data as a JSON object.
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
    /// The client's serializer (0 JSON, 1 protobuf).
    #[prost(uint32, tag = "5")]
    pub serializer: u32,
    /// The client's address as its gateway sees it (`ip:port`); UTF-8.
    #[prost(bytes = "bytes", tag = "6")]
    pub remote: Bytes,
}

/// One node-to-node message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Call, notify, reply or error.
    #[prost(enumeration = "Kind", tag = "1")]
    pub kind: i32,
    /// Route, `module.handler.method` (calls and notifies); UTF-8.
    #[prost(bytes = "bytes", tag = "2")]
    pub route: Bytes,
    /// Serialized argument or result.
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
    /// Serializer of `payload` (0 JSON, 1 protobuf).
    #[prost(uint32, tag = "4")]
    pub serializer: u32,
    /// The client session, for requests forwarded by a gateway.
    #[prost(message, optional, tag = "5")]
    pub session: Option<SessionRef>,
    /// Trace id, carried across hops (16 hex digits).
    #[prost(bytes = "bytes", tag = "6")]
    pub trace_id: Bytes,
    /// Milliseconds the caller will wait (the callee's handler deadline).
    #[prost(uint64, tag = "7")]
    pub timeout_ms: u64,
    /// Error code (error replies).
    #[prost(string, tag = "8")]
    pub error_code: String,
    /// Error message (error replies).
    #[prost(string, tag = "9")]
    pub error_msg: String,
    /// Sending node id; UTF-8.
    #[prost(bytes = "bytes", tag = "10")]
    pub source: Bytes,
    /// Session data after the handler ran, when it changed (replies to forwarded requests).
    #[prost(bytes = "bytes", optional, tag = "11")]
    pub session_data: Option<Bytes>,
    /// The call is a client request forwarded by a gateway: internal routes are refused.
    #[prost(bool, tag = "12")]
    pub from_client: bool,
}

/// A text field's value as a string; a field that is not UTF-8 makes the frame malformed.
pub fn text(field: &Bytes) -> Result<&str, Error> {
    std::str::from_utf8(field)
        .map_err(|_| Error::bad_request("malformed internal frame: text field is not UTF-8"))
}

/// A text field holding `s` (one copy; `Bytes::from_static` for constants needs none).
pub fn text_field(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub(crate) fn ser_to_u32(s: Serializer) -> u32 {
    match s {
        Serializer::Json => 0,
        Serializer::Protobuf => 1,
    }
}

pub(crate) fn ser_from_u32(v: u32) -> Serializer {
    if v == 1 {
        Serializer::Protobuf
    } else {
        Serializer::Json
    }
}

/// Field writers for [`Envelope::to_bytes`]: prost's own, except that a `Bytes` field is copied
/// from its slice (prost's encoder clones each `Bytes` first, which allocates when the buffer
/// is not yet shared). Proto3 rules as prost applies them: default scalars and empty
/// non-optional fields are left out.
mod put {
    use prost::encoding::{encode_key, encode_varint, WireType};

    pub(super) fn varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
        if v != 0 {
            encode_key(tag, WireType::Varint, buf);
            encode_varint(v, buf);
        }
    }

    /// A length-delimited field, written even when empty.
    pub(super) fn slice_always(tag: u32, v: &[u8], buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(v.len() as u64, buf);
        buf.extend_from_slice(v);
    }

    pub(super) fn slice(tag: u32, v: &[u8], buf: &mut Vec<u8>) {
        if !v.is_empty() {
            slice_always(tag, v, buf);
        }
    }
}

impl SessionRef {
    fn encode_fields(&self, buf: &mut Vec<u8>) {
        put::varint(1, self.id, buf);
        put::slice(2, &self.uid, buf);
        put::slice(3, &self.gateway, buf);
        put::slice(4, &self.data, buf);
        put::varint(5, u64::from(self.serializer), buf);
        put::slice(6, &self.remote, buf);
    }
}

impl Envelope {
    /// Encodes to bytes (the same bytes as prost's encoder, in one exactly sized buffer).
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = Vec::with_capacity(prost::Message::encoded_len(self));
        // Enumerations are varints of their i32 value (sign-extended, as prost writes them).
        put::varint(1, self.kind as i64 as u64, &mut buf);
        put::slice(2, &self.route, &mut buf);
        put::slice(3, &self.payload, &mut buf);
        put::varint(4, u64::from(self.serializer), &mut buf);
        if let Some(s) = &self.session {
            prost::encoding::encode_key(5, prost::encoding::WireType::LengthDelimited, &mut buf);
            prost::encoding::encode_varint(prost::Message::encoded_len(s) as u64, &mut buf);
            s.encode_fields(&mut buf);
        }
        put::slice(6, &self.trace_id, &mut buf);
        put::varint(7, self.timeout_ms, &mut buf);
        put::slice(8, self.error_code.as_bytes(), &mut buf);
        put::slice(9, self.error_msg.as_bytes(), &mut buf);
        put::slice(10, &self.source, &mut buf);
        if let Some(d) = &self.session_data {
            put::slice_always(11, d, &mut buf);
        }
        put::varint(12, u64::from(self.from_client), &mut buf);
        Bytes::from(buf)
    }

    /// Decodes from bytes.
    pub fn from_bytes(b: Bytes) -> Result<Self, Error> {
        <Self as prost::Message>::decode(b)
            .map_err(|e| Error::bad_request(format!("malformed internal frame: {e}")))
    }

    /// A success reply.
    pub fn reply(payload: Bytes, session_data: Option<Bytes>) -> Self {
        Self {
            kind: Kind::Reply as i32,
            payload,
            session_data,
            ..Self::default()
        }
    }

    /// An error reply.
    pub fn error(e: &Error) -> Self {
        Self {
            kind: Kind::Error as i32,
            error_code: e.code().to_string(),
            error_msg: e.msg().to_string(),
            ..Self::default()
        }
    }

    /// The reply's result: the payload, or the error it carries.
    pub fn into_result(self) -> Result<(Bytes, Option<Bytes>), Error> {
        match self.kind() {
            Kind::Error => Err(Error::custom(self.error_code, self.error_msg)),
            _ => Ok((self.payload, self.session_data)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let e = Envelope {
            kind: Kind::Call as i32,
            route: Bytes::from_static(b"room.room.join"),
            payload: Bytes::from_static(b"{}"),
            session: Some(SessionRef {
                id: 7,
                uid: Bytes::from_static(b"u"),
                gateway: Bytes::from_static(b"gate-1"),
                data: Bytes::from_static(b"{}"),
                serializer: 0,
                remote: Bytes::from_static(b"127.0.0.1:4000"),
            }),
            timeout_ms: 5000,
            ..Envelope::default()
        };
        let back = Envelope::from_bytes(e.to_bytes()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.kind(), Kind::Call);
        let err = Envelope::error(&Error::not_found("x"));
        assert_eq!(
            Envelope::from_bytes(err.to_bytes())
                .unwrap()
                .into_result()
                .unwrap_err()
                .code(),
            "RK-404"
        );
        assert!(Envelope::from_bytes(Bytes::from_static(&[0xFF, 0xFF, 0xFF])).is_err());
    }

    /// The hand-written encoder writes exactly what prost's derived one does.
    #[test]
    fn to_bytes_matches_prost() {
        let full = Envelope {
            kind: Kind::Error as i32,
            route: Bytes::from_static(b"room.room.join"),
            payload: Bytes::from_static(b"{\"a\":1}"),
            serializer: 1,
            session: Some(SessionRef {
                id: 300,
                uid: Bytes::from_static(b"user-1"),
                gateway: Bytes::from_static(b"gate-1"),
                data: Bytes::from_static(b"{\"k\":\"v\"}"),
                serializer: 1,
                remote: Bytes::new(),
            }),
            trace_id: Bytes::from_static(b"00000000000000ab"),
            timeout_ms: 5000,
            error_code: "RK-404".into(),
            error_msg: "no route".into(),
            source: Bytes::from_static(b"room-1"),
            session_data: Some(Bytes::from_static(b"{}")),
            from_client: true,
        };
        let cases = [
            full.clone(),
            Envelope::default(),
            Envelope {
                session: Some(SessionRef::default()),
                session_data: Some(Bytes::new()),
                ..Envelope::default()
            },
            Envelope::reply(Bytes::from(vec![7u8; 300]), None),
            Envelope { kind: -1, ..full },
        ];
        for e in cases {
            assert_eq!(e.to_bytes(), prost::Message::encode_to_vec(&e), "{e:?}");
        }
    }

    /// The text fields, declared as `bytes`, keep the wire form of protobuf `string` fields: a
    /// frame from an encoder that declares them as strings decodes to the same values.
    #[test]
    fn text_fields_keep_the_string_wire_form() {
        #[derive(Clone, PartialEq, prost::Message)]
        struct AsStrings {
            #[prost(string, tag = "2")]
            route: String,
            #[prost(string, tag = "6")]
            trace_id: String,
            #[prost(string, tag = "10")]
            source: String,
        }
        let wire = prost::Message::encode_to_vec(&AsStrings {
            route: "room.room.say".into(),
            trace_id: "00000000000000ab".into(),
            source: "gate-1".into(),
        });
        let env = Envelope::from_bytes(Bytes::from(wire.clone())).unwrap();
        assert_eq!(text(&env.route).unwrap(), "room.room.say");
        assert_eq!(text(&env.trace_id).unwrap(), "00000000000000ab");
        assert_eq!(text(&env.source).unwrap(), "gate-1");
        assert_eq!(env.to_bytes(), Bytes::from(wire));
        let bad = Envelope {
            route: Bytes::from_static(&[0xC3, 0x28]),
            ..Envelope::default()
        };
        assert_eq!(text(&bad.route).unwrap_err().code(), "RK-400");
    }

    fn bytes() -> impl proptest::strategy::Strategy<Value = Bytes> {
        proptest::collection::vec(proptest::num::u8::ANY, 0..40).prop_map(Bytes::from)
    }

    fn session_ref() -> impl proptest::strategy::Strategy<Value = SessionRef> {
        (
            proptest::num::u64::ANY,
            bytes(),
            bytes(),
            bytes(),
            proptest::num::u32::ANY,
            bytes(),
        )
            .prop_map(|(id, uid, gateway, data, serializer, remote)| SessionRef {
                id,
                uid,
                gateway,
                data,
                serializer,
                remote,
            })
    }

    use proptest::prelude::*;

    proptest! {
        /// For any envelope, the hand-written encoder writes what prost writes, and decoding
        /// gives the envelope back.
        #[test]
        fn to_bytes_matches_prost_for_any_envelope(
            kind in 0i32..4,
            route in bytes(),
            payload in bytes(),
            serializer in any::<u32>(),
            session in proptest::option::of(session_ref()),
            trace_id in bytes(),
            timeout_ms in any::<u64>(),
            error_code in ".{0,12}",
            error_msg in ".{0,24}",
            source in bytes(),
            session_data in proptest::option::of(bytes()),
            from_client in any::<bool>(),
        ) {
            let e = Envelope {
                kind,
                route,
                payload,
                serializer,
                session,
                trace_id,
                timeout_ms,
                error_code,
                error_msg,
                source,
                session_data,
                from_client,
            };
            let ours = e.to_bytes();
            prop_assert_eq!(&ours[..], &prost::Message::encode_to_vec(&e)[..]);
            prop_assert_eq!(Envelope::from_bytes(ours).unwrap(), e);
        }
    }
}
