//! The internal frame between nodes: one protobuf `Envelope` per RPC call, notify or reply.
//!
//! Decoding is bounded by the transport's frame limit; prost never allocates beyond the frame.

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
    /// Bound uid (empty when not logged in).
    #[prost(string, tag = "2")]
    pub uid: String,
    /// Node id of the gateway holding the connection.
    #[prost(string, tag = "3")]
    pub gateway: String,
    /// Session data as a JSON object.
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
    /// The client's serializer (0 JSON, 1 protobuf).
    #[prost(uint32, tag = "5")]
    pub serializer: u32,
}

/// One node-to-node message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Call, notify, reply or error.
    #[prost(enumeration = "Kind", tag = "1")]
    pub kind: i32,
    /// Route, `module.handler.method` (calls and notifies).
    #[prost(string, tag = "2")]
    pub route: String,
    /// Serialized argument or result.
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
    /// Serializer of `payload` (0 JSON, 1 protobuf).
    #[prost(uint32, tag = "4")]
    pub serializer: u32,
    /// The client session, for requests forwarded by a gateway.
    #[prost(message, optional, tag = "5")]
    pub session: Option<SessionRef>,
    /// Trace id, carried across hops.
    #[prost(string, tag = "6")]
    pub trace_id: String,
    /// Milliseconds the caller will wait (the callee's handler deadline).
    #[prost(uint64, tag = "7")]
    pub timeout_ms: u64,
    /// Error code (error replies).
    #[prost(string, tag = "8")]
    pub error_code: String,
    /// Error message (error replies).
    #[prost(string, tag = "9")]
    pub error_msg: String,
    /// Sending node id.
    #[prost(string, tag = "10")]
    pub source: String,
    /// Session data after the handler ran, when it changed (replies to forwarded requests).
    #[prost(bytes = "bytes", optional, tag = "11")]
    pub session_data: Option<Bytes>,
    /// The call is a client request forwarded by a gateway: internal routes are refused.
    #[prost(bool, tag = "12")]
    pub from_client: bool,
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

impl Envelope {
    /// Encodes to bytes.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(prost::Message::encode_to_vec(self))
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
            route: "room.room.join".into(),
            payload: Bytes::from_static(b"{}"),
            session: Some(SessionRef {
                id: 7,
                uid: "u".into(),
                gateway: "gate-1".into(),
                data: Bytes::from_static(b"{}"),
                serializer: 0,
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
}

/// `sys.session.push`: push a serialized body to a session on the receiving gateway.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysPush {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// Push route.
    #[prost(string, tag = "2")]
    pub route: String,
    /// Body, already in the session's serializer.
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
}

/// `sys.session.kick`: kick a session on the receiving gateway.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysKick {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// Reason sent to the client.
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// `sys.session.bind`: bind a uid to a session on the receiving gateway.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysBind {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// User id.
    #[prost(string, tag = "2")]
    pub uid: String,
}

/// `sys.uid.push`: push to those of `uids` whose sessions the receiving gateway holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysUidPush {
    /// Target users.
    #[prost(string, repeated, tag = "1")]
    pub uids: Vec<String>,
    /// Push route.
    #[prost(string, tag = "2")]
    pub route: String,
    /// Body for JSON sessions, when the payload has a JSON form.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub json: Option<Bytes>,
    /// Body for protobuf sessions, when the payload has a protobuf form.
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub proto: Option<Bytes>,
}

/// `sys.uid.kick`: kick a user's session on the receiving gateway.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysUidKick {
    /// User id.
    #[prost(string, tag = "1")]
    pub uid: String,
    /// Reason sent to the client.
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// `sys.session.push_many`: push one body to several sessions on the receiving gateway.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysPushMany {
    /// Session ids.
    #[prost(uint64, repeated, tag = "1")]
    pub sids: Vec<u64>,
    /// Push route.
    #[prost(string, tag = "2")]
    pub route: String,
    /// Body, in the sessions' serializer.
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
}

/// `sys.session.closed`: a gateway tells the nodes a session used that it ended.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysClosed {
    /// The session as it was at the end.
    #[prost(message, optional, tag = "1")]
    pub session: Option<SessionRef>,
    /// Why it closed.
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// `sys.uid.bound`: a gateway bound a uid; older sessions of the uid elsewhere are kicked.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysBound {
    /// User id.
    #[prost(string, tag = "1")]
    pub uid: String,
    /// When it was bound (unix nanoseconds).
    #[prost(uint64, tag = "2")]
    pub bound_at: u64,
    /// The gateway that bound it.
    #[prost(string, tag = "3")]
    pub gateway: String,
}
