//! The framework's error type: what a handler returns and what a client receives.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use rookery_protocol::Serializer;
use serde::Serialize;

/// The framework's standard error codes. Handlers may also use codes of their own
/// ([`Error::custom`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// `RK-400`: the request could not be decoded or is invalid.
    BadRequest,
    /// `RK-401`: the route requires a logged-in (bound) session.
    NotLoggedIn,
    /// `RK-404`: no such route (or not callable by clients).
    NotFound,
    /// `RK-408`: the handler did not finish within the request timeout.
    Timeout,
    /// `RK-429`: the session exceeded its rate limit.
    RateLimited,
    /// `RK-500`: the handler failed; details are logged, never sent.
    Internal,
    /// `RK-503`: no node is available to serve the route.
    Unavailable,
}

impl Code {
    /// The code as sent on the wire, e.g. `RK-404`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "RK-400",
            Self::NotLoggedIn => "RK-401",
            Self::NotFound => "RK-404",
            Self::Timeout => "RK-408",
            Self::RateLimited => "RK-429",
            Self::Internal => "RK-500",
            Self::Unavailable => "RK-503",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a code a client can act on, a human message, and optional metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {msg}")]
pub struct Error {
    code: Cow<'static, str>,
    msg: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

impl Error {
    /// An error with a standard code.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code: Cow::Borrowed(code.as_str()),
            msg: msg.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// An error with an application-defined code (e.g. `ROOM-FULL`).
    pub fn custom(code: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            code: Cow::Owned(code.into()),
            msg: msg.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// `RK-400`.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, msg)
    }

    /// `RK-401`.
    pub fn not_logged_in() -> Self {
        Self::new(Code::NotLoggedIn, "login required")
    }

    /// `RK-404` for a route.
    pub fn not_found(route: &str) -> Self {
        Self::new(Code::NotFound, format!("unknown route {route:?}"))
    }

    /// `RK-500`. The detail is logged here and not sent to the client.
    pub fn internal(detail: impl fmt::Display) -> Self {
        tracing::error!(%detail, "handler failure");
        Self::new(Code::Internal, "internal error")
    }

    /// Adds a metadata entry (sent to the client).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The code, e.g. `RK-404`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message.
    pub fn msg(&self) -> &str {
        &self.msg
    }

    /// True if this error has the given standard code.
    pub fn is(&self, code: Code) -> bool {
        self.code == code.as_str()
    }

    /// Serializes the error for the wire: `{"code","msg","metadata"?}` in JSON, or the pitaya
    /// `Error` message (`code = 1, msg = 2, metadata = 3`) in protobuf.
    pub fn encode(&self, serializer: Serializer) -> Bytes {
        match serializer {
            Serializer::Json => Bytes::from(serde_json::to_vec(self).unwrap_or_default()),
            Serializer::Protobuf => {
                let wire = WireError {
                    code: self.code.to_string(),
                    msg: self.msg.clone(),
                    metadata: self.metadata.clone().into_iter().collect(),
                };
                Bytes::from(prost::Message::encode_to_vec(&wire))
            }
        }
    }
}

/// Protobuf form of an error, field-compatible with pitaya's `protos.Error`.
#[derive(Clone, PartialEq, prost::Message)]
struct WireError {
    #[prost(string, tag = "1")]
    code: String,
    #[prost(string, tag = "2")]
    msg: String,
    #[prost(map = "string, string", tag = "3")]
    metadata: std::collections::HashMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = Error::not_found("a.b.c");
        let v: serde_json::Value = serde_json::from_slice(&e.encode(Serializer::Json)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code":"RK-404","msg":"unknown route \"a.b.c\""})
        );
        let e = Error::custom("ROOM-FULL", "full").with_metadata("max", "10");
        let v: serde_json::Value = serde_json::from_slice(&e.encode(Serializer::Json)).unwrap();
        assert_eq!(v["metadata"]["max"], "10");
        assert!(Error::internal("db down").msg() == "internal error");
    }

    #[test]
    fn protobuf_shape() {
        let e = Error::new(Code::Timeout, "slow");
        let back: WireError = prost::Message::decode(e.encode(Serializer::Protobuf)).unwrap();
        assert_eq!(back.code, "RK-408");
        assert_eq!(back.msg, "slow");
    }
}
