//! The framework's error type: what a handler returns and what a client receives.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use rookery_protocol::Serializer;
use serde::Serialize;

/// What kind of error: the framework's standard codes, or a code of the application's own
/// ([`Error::custom`]). The wire form is [`Code::as_str`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// An application's code (e.g. `ROOM-FULL`), sent as it is.
    App(Cow<'static, str>),
}

impl Code {
    /// The code as sent on the wire, e.g. `RK-404`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::BadRequest => "RK-400",
            Self::NotLoggedIn => "RK-401",
            Self::NotFound => "RK-404",
            Self::Timeout => "RK-408",
            Self::RateLimited => "RK-429",
            Self::Internal => "RK-500",
            Self::Unavailable => "RK-503",
            Self::App(c) => c,
        }
    }

    /// The code a wire string stands for (an `RK-` code the framework defines, else the
    /// application's).
    pub fn from_wire(code: impl Into<Cow<'static, str>>) -> Self {
        let code = code.into();
        match &*code {
            "RK-400" => Self::BadRequest,
            "RK-401" => Self::NotLoggedIn,
            "RK-404" => Self::NotFound,
            "RK-408" => Self::Timeout,
            "RK-429" => Self::RateLimited,
            "RK-500" => Self::Internal,
            "RK-503" => Self::Unavailable,
            _ => Self::App(code),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The cause of an error, kept for the log (never sent to a client).
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error with a code a client can act on, a human message, optional metadata (sent to the
/// client) and an optional source (logged where the error is handled, never sent). Boxed, so
/// that a `Result<T, Error>` stays one pointer wide beside `T`.
#[derive(Clone)]
pub struct Error(Box<Inner>);

#[derive(Clone)]
struct Inner {
    code: Code,
    msg: String,
    metadata: BTreeMap<String, String>,
    source: Option<Source>,
}

impl Error {
    /// An error with a code.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            code,
            msg: msg.into(),
            metadata: BTreeMap::new(),
            source: None,
        }))
    }

    /// An error with an application-defined code (e.g. `ROOM-FULL`); a framework code
    /// (`RK-404`...) given here is that code.
    pub fn custom(code: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::new(Code::from_wire(code.into()), msg)
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

    /// `RK-500`. The client sees "internal error"; the detail is the error's source, logged
    /// where the error is handled (for a handler's error, by the request pipeline).
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(Code::Internal, "internal error").with_source(Detail(detail.to_string()))
    }

    /// Keeps `source` as the cause (for the log; never sent).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Arc::new(source));
        self
    }

    /// Adds a metadata entry (sent to the client).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.metadata.insert(key.into(), value.into());
        self
    }

    /// The code's wire form, e.g. `RK-404`.
    pub fn code(&self) -> &str {
        self.0.code.as_str()
    }

    /// The code.
    pub fn kind(&self) -> &Code {
        &self.0.code
    }

    /// The message.
    pub fn msg(&self) -> &str {
        &self.0.msg
    }

    /// The metadata sent with the error.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.0.metadata
    }

    /// True if this error has the given code.
    pub fn is(&self, code: Code) -> bool {
        self.0.code == code
    }

    /// Serializes the error for the wire: `{"code","msg","metadata"?}` in JSON, or the pitaya
    /// `Error` message (`code = 1, msg = 2, metadata = 3`) in protobuf. The source is not sent.
    pub fn encode(&self, serializer: Serializer) -> Bytes {
        match serializer {
            Serializer::Json => Bytes::from(serde_json::to_vec(self).unwrap_or_default()),
            Serializer::Protobuf => {
                let wire = WireError {
                    code: self.code().to_string(),
                    msg: self.0.msg.clone(),
                    metadata: self.0.metadata.clone().into_iter().collect(),
                };
                Bytes::from(prost::Message::encode_to_vec(&wire))
            }
        }
    }
}

/// A detail given as text (e.g. to [`Error::internal`]).
#[derive(Debug)]
struct Detail(String);

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Detail {}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("code", &self.code()).field("msg", &self.0.msg);
        if !self.0.metadata.is_empty() {
            d.field("metadata", &self.0.metadata);
        }
        if let Some(s) = &self.0.source {
            d.field("source", &format_args!("{s}"));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.0.msg)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Errors are equal when what a client sees of them is (code, message, metadata).
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.0.code == other.0.code
            && self.0.msg == other.0.msg
            && self.0.metadata == other.0.metadata
    }
}

impl Eq for Error {}

impl Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let with_metadata = !self.0.metadata.is_empty();
        let mut m = s.serialize_map(Some(2 + usize::from(with_metadata)))?;
        m.serialize_entry("code", self.code())?;
        m.serialize_entry("msg", &self.0.msg)?;
        if with_metadata {
            m.serialize_entry("metadata", &self.0.metadata)?;
        }
        m.end()
    }
}

/// Why a node could not start.
pub type StartError = crate::LayerError<StartErrorKind>;

/// What kind of startup failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartErrorKind {
    /// The configuration is invalid or names what is not there (a module, a selector).
    Config,
    /// A module's `init` failed (the source is its [`crate::Error`]).
    Module,
    /// Routes clash: registered twice, or a code given twice.
    Routes,
    /// An acceptor address could not be bound.
    Bind,
    /// The node-to-node transport could not start.
    Transport,
    /// Discovery could not be reached, refused the node, or holds its id for another node.
    Discovery,
}

impl std::fmt::Display for StartErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Config => "invalid setup",
            Self::Module => "module failed to initialise",
            Self::Routes => "invalid routes",
            Self::Bind => "cannot listen",
            Self::Transport => "transport",
            Self::Discovery => "discovery",
        })
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
        let e = Error::internal("db down");
        assert_eq!(e.msg(), "internal error");
        assert!(!String::from_utf8_lossy(&e.encode(Serializer::Json)).contains("db down"));
        assert_eq!(
            std::error::Error::source(&e).map(|s| s.to_string()),
            Some("db down".to_string())
        );
    }

    #[test]
    fn codes_round_trip() {
        for code in [
            Code::BadRequest,
            Code::NotLoggedIn,
            Code::NotFound,
            Code::Timeout,
            Code::RateLimited,
            Code::Internal,
            Code::Unavailable,
            Code::App("ROOM-FULL".into()),
        ] {
            assert_eq!(Code::from_wire(code.as_str().to_string()), code);
        }
        assert!(Error::custom("RK-404", "x").is(Code::NotFound));
        assert_eq!(
            Error::custom("ROOM-FULL", "x").kind(),
            &Code::App("ROOM-FULL".into())
        );
    }

    #[test]
    fn protobuf_shape() {
        let e = Error::new(Code::Timeout, "slow");
        let back: WireError = prost::Message::decode(e.encode(Serializer::Protobuf)).unwrap();
        assert_eq!(back.code, "RK-408");
        assert_eq!(back.msg, "slow");
    }
}
