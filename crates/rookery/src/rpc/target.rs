//! Where a call goes.

use crate::cluster::LogicalAddr;

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Any available node of a type; the type's selector picks.
    Type(String),
    /// Any available node running a module; the module's selector picks.
    Module(String),
    /// One node by id.
    Node(String),
    /// One node by logical address.
    Logical(LogicalAddr),
}

impl Target {
    /// Parses `type@id` (a node), `c.t.i` (a logical address) or `type`.
    pub fn parse(s: &str) -> Self {
        if let Some((_, id)) = s.split_once('@') {
            return Self::Node(id.to_string());
        }
        if let Ok(a) = s.parse::<LogicalAddr>() {
            return Self::Logical(a);
        }
        Self::Type(s.to_string())
    }
}

impl Target {
    /// The label of the call metrics, borrowed where the target holds it.
    pub(crate) fn metric_label(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Target::Type(s) | Target::Module(s) | Target::Node(s) => std::borrow::Cow::Borrowed(s),
            Target::Logical(a) => std::borrow::Cow::Owned(a.to_string()),
        }
    }

    /// A low-cardinality label for metrics: the type or module, or the node id.
    pub fn label(&self) -> String {
        match self {
            Target::Type(t) | Target::Module(t) => t.clone(),
            Target::Node(id) => id.clone(),
            Target::Logical(a) => a.to_string(),
        }
    }
}

impl From<&str> for Target {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl From<LogicalAddr> for Target {
    fn from(a: LogicalAddr) -> Self {
        Self::Logical(a)
    }
}
