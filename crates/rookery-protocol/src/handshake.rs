//! Handshake documents (JSON bodies of `Handshake` packets).

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// Handshake code for success.
pub const CODE_OK: u16 = 200;
/// Handshake code for a malformed or refused handshake.
pub const CODE_BAD_REQUEST: u16 = 400;
/// Handshake code for a client/server version mismatch or an unsupported option.
pub const CODE_UNSUPPORTED: u16 = 501;

/// How payloads are serialized on a connection, chosen in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Serializer {
    /// JSON (serde).
    #[default]
    Json,
    /// Protocol Buffers (prost).
    Protobuf,
}

impl Serializer {
    /// The name used in handshakes (`json`, `protobuf`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Protobuf => "protobuf",
        }
    }
}

/// The `sys` part of a client's handshake.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeSys {
    /// Client kind (e.g. `js-websocket`, `rust`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub client_type: Option<String>,
    /// Client version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Client platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Serializer the client asks for; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serializer: Option<Serializer>,
    /// Payload compression the client reads (`"zlib"`): the server may then compress large
    /// responses and pushes (message flag 0x10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// A client's handshake: `{"sys": {...}, "user": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// Protocol-level fields.
    #[serde(default)]
    pub sys: HandshakeSys,
    /// Application data (e.g. an auth token), handed to the handshake validator.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub user: serde_json::Value,
}

impl HandshakeRequest {
    /// Parses a handshake body. An empty body is an empty handshake (pomelo clients may send `{}`).
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        if body.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(body).map_err(|e| ProtocolError::BadHandshake(e.to_string()))
    }

    /// Serializes the handshake.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// The `sys` part of the server's handshake answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeResponseSys {
    /// Heartbeat interval in seconds.
    #[serde(default)]
    pub heartbeat: u64,
    /// Route dictionary: route name to code.
    #[serde(default)]
    pub dict: HashMap<String, u16>,
    /// Serializer used on this connection.
    #[serde(default)]
    pub serializer: Serializer,
}

/// The server's handshake answer: `{"code": 200, "sys": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    /// 200 on success; anything else means the server will close the connection.
    pub code: u16,
    /// Present on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sys: Option<HandshakeResponseSys>,
    /// Reason for a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
}

impl HandshakeResponse {
    /// A refusal with a code and reason.
    pub fn refuse(code: u16, msg: impl Into<String>) -> Self {
        Self {
            code,
            sys: None,
            msg: Some(msg.into()),
        }
    }

    /// Parses a handshake answer.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(body).map_err(|e| ProtocolError::BadHandshake(e.to_string()))
    }

    /// Serializes the answer.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// The client's side of the handshake, without I/O: the packet to send, what each packet the
/// server sends before its answer means, and the ack. Every client (the Rust client, the load
/// generators) drives this one.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    request: HandshakeRequest,
}

/// Why a client's handshake did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandshakeFailure {
    /// The server answered with a code other than 200.
    #[error("handshake refused: code {code}{}", msg.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        /// The handshake code.
        code: u16,
        /// The server's reason.
        msg: Option<String>,
    },
    /// The server kicked the connection instead of answering.
    #[error("kicked during the handshake{}", .0.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Kicked(Option<String>),
    /// The server sent something that is not a handshake answer.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl ClientHandshake {
    /// A handshake describing the client with `sys`, carrying `user` (the application's part).
    pub fn new(sys: HandshakeSys, user: serde_json::Value) -> Self {
        Self {
            request: HandshakeRequest { sys, user },
        }
    }

    /// The `Handshake` packet to send first.
    pub fn request_packet(&self) -> Bytes {
        crate::packet::encode_parts(crate::PacketType::Handshake, &self.request.encode())
            .unwrap_or_default()
    }

    /// What a packet received before the answer means: `Ok(None)` to keep waiting (a
    /// heartbeat), the server's answer when it accepted, or why not.
    pub fn on_packet(
        &self,
        kind: crate::PacketType,
        body: &[u8],
    ) -> Result<Option<HandshakeResponse>, HandshakeFailure> {
        match kind {
            crate::PacketType::Heartbeat => Ok(None),
            crate::PacketType::Kick => Err(HandshakeFailure::Kicked(kick_reason(body))),
            crate::PacketType::Handshake => {
                let answer = HandshakeResponse::decode(body)?;
                if answer.code != CODE_OK {
                    return Err(HandshakeFailure::Refused {
                        code: answer.code,
                        msg: answer.msg,
                    });
                }
                Ok(Some(answer))
            }
            _ => {
                Err(ProtocolError::Invalid("unexpected packet before the handshake answer").into())
            }
        }
    }

    /// The `HandshakeAck` packet to send once the answer arrived.
    pub fn ack_packet() -> Bytes {
        Bytes::from_static(&[crate::PacketType::HandshakeAck as u8, 0, 0, 0])
    }
}

/// The reason in a Kick body: empty (pitaya) => None; `{"reason": ..}` (pomelo) => the reason;
/// any other JSON or text is kept as text.
pub fn kick_reason(body: &[u8]) -> Option<String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut m)) => match m.remove("reason") {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        },
        Ok(serde_json::Value::String(s)) => Some(s),
        Ok(serde_json::Value::Null) => None,
        Ok(other) => Some(other.to_string()),
        Err(_) => Some(String::from_utf8_lossy(body).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn client_handshake_steps() {
        use crate::PacketType as T;
        let hs = ClientHandshake::new(HandshakeSys::default(), serde_json::Value::Null);
        let req = hs.request_packet();
        assert_eq!(req[0], T::Handshake as u8);
        assert!(HandshakeRequest::decode(&req[4..]).is_ok());
        assert_eq!(hs.on_packet(T::Heartbeat, b"").unwrap(), None);
        let ok = HandshakeResponse {
            code: CODE_OK,
            sys: Some(HandshakeResponseSys::default()),
            msg: None,
        };
        assert_eq!(hs.on_packet(T::Handshake, &ok.encode()).unwrap(), Some(ok));
        assert_eq!(
            hs.on_packet(T::Handshake, &HandshakeResponse::refuse(400, "no").encode()),
            Err(HandshakeFailure::Refused {
                code: 400,
                msg: Some("no".into())
            })
        );
        assert_eq!(
            hs.on_packet(T::Kick, br#"{"reason":"full"}"#),
            Err(HandshakeFailure::Kicked(Some("full".into())))
        );
        assert!(matches!(
            hs.on_packet(T::Data, b""),
            Err(HandshakeFailure::Protocol(_))
        ));
        assert_eq!(
            &ClientHandshake::ack_packet()[..],
            &[T::HandshakeAck as u8, 0, 0, 0]
        );
        assert_eq!(kick_reason(b""), None);
        assert_eq!(kick_reason(b"plain"), Some("plain".into()));
    }

    #[test]
    fn parses_pomelo_handshake() {
        let h = HandshakeRequest::decode(
            br#"{"sys":{"type":"js-websocket","version":"0.0.1","rsa":{}},"user":{"token":"t"}}"#,
        )
        .unwrap();
        assert_eq!(h.sys.client_type.as_deref(), Some("js-websocket"));
        assert_eq!(h.sys.serializer, None);
        assert_eq!(h.user["token"], "t");
        assert_eq!(
            HandshakeRequest::decode(b"").unwrap(),
            HandshakeRequest::default()
        );
        assert!(matches!(
            HandshakeRequest::decode(b"{nope"),
            Err(ProtocolError::BadHandshake(_))
        ));
        let pb = HandshakeRequest::decode(br#"{"sys":{"serializer":"protobuf"}}"#).unwrap();
        assert_eq!(pb.sys.serializer, Some(Serializer::Protobuf));
        assert!(HandshakeRequest::decode(br#"{"sys":{"serializer":"xml"}}"#).is_err());
    }

    #[test]
    fn response_shape() {
        let mut dict = HashMap::new();
        dict.insert("room.room.join".to_string(), 1u16);
        let r = HandshakeResponse {
            code: CODE_OK,
            sys: Some(HandshakeResponseSys {
                heartbeat: 30,
                dict,
                serializer: Serializer::Json,
            }),
            msg: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code":200,"sys":{"heartbeat":30,"dict":{"room.room.join":1},"serializer":"json"}})
        );
        assert_eq!(HandshakeResponse::decode(&r.encode()).unwrap(), r);
        let refused: serde_json::Value =
            serde_json::from_slice(&HandshakeResponse::refuse(400, "bad token").encode()).unwrap();
        assert_eq!(refused, serde_json::json!({"code":400,"msg":"bad token"}));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = HandshakeRequest::decode(&data);
            let _ = HandshakeResponse::decode(&data);
        }
    }
}
