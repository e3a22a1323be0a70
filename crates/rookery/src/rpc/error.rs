//! Why a call failed, and how that reaches a client.

use crate::cluster::{TransportError, TransportErrorKind};
use crate::{Code, Error};

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The deadline passed.
    #[error("call timed out")]
    Timeout,
    /// No available node matches the target.
    #[error("no node available for {0}")]
    NoNode(String),
    /// The handler answered with an error (its code is kept).
    #[error("{0}")]
    Remote(Error),
    /// The link to the node closed with the call in flight (node died or left).
    #[error("link closed: {0}")]
    Closed(String),
    /// Any other transport failure.
    #[error("transport: {0}")]
    Transport(String),
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Timeout => Error::new(Code::Timeout, "call timed out"),
            RpcError::NoNode(t) => {
                Error::new(Code::Unavailable, format!("no node available for {t}"))
            }
            RpcError::Remote(e) => e,
            RpcError::Closed(n) => Error::new(Code::Unavailable, format!("node {n} went away")),
            RpcError::Transport(m) => Error::new(Code::Unavailable, m),
        }
    }
}

impl From<TransportError> for RpcError {
    fn from(e: TransportError) -> Self {
        match e.kind() {
            TransportErrorKind::Timeout => RpcError::Timeout,
            TransportErrorKind::Closed => RpcError::Closed(e.message().to_string()),
            _ => RpcError::Transport(e.to_string()),
        }
    }
}

impl RpcError {
    /// A short name of the failure kind (`timeout`, `no_node`, `remote`, `closed`, `transport`).
    pub fn kind(&self) -> &'static str {
        match self {
            RpcError::Timeout => "timeout",
            RpcError::NoNode(_) => "no_node",
            RpcError::Remote(_) => "remote",
            RpcError::Closed(_) => "closed",
            RpcError::Transport(_) => "transport",
        }
    }
}
