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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
