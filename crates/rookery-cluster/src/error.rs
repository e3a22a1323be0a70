//! The error type of the inner layers.

use std::fmt;
use std::sync::Arc;

/// An error of one of the framework's inner layers (transports, discovery; in `rookery`,
/// configuration and startup): a kind the caller can match on, a message for people (often the
/// node or address concerned), and the cause. Never sent to clients. Cheap to clone (the cause
/// is shared), and equal when kind and message are (the cause is not compared).
#[derive(Clone)]
pub struct LayerError<K> {
    kind: K,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl<K: Copy + fmt::Display + fmt::Debug> LayerError<K> {
    /// An error of `kind`, described by `message`.
    pub fn new(kind: K, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` as the cause.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// What kind of failure.
    pub fn kind(&self) -> K {
        self.kind
    }

    /// The description (without the kind and the cause).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<K: fmt::Display> fmt::Display for LayerError<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl<K: fmt::Debug> fmt::Debug for LayerError<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl<K: fmt::Display + fmt::Debug> std::error::Error for LayerError<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl<K: PartialEq> PartialEq for LayerError<K> {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl<K: Eq> Eq for LayerError<K> {}

/// A cause given as text.
#[derive(Debug)]
pub(crate) struct Detail(pub(crate) String);

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Detail {}
