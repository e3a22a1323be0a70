//! Static discovery: a fixed list of nodes from a file (zinx-cluster `dinx.json` style) or from
//! the configuration. Nodes never leave; a dead node is noticed by its transport failing.

use std::path::Path;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Discovery, DiscoveryError, DiscoveryEvent, EVENT_QUEUE};
use crate::NodeInfo;

/// A fixed membership list.
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    nodes: Vec<NodeInfo>,
    me: std::sync::Arc<std::sync::Mutex<Option<NodeInfo>>>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum FileFormat {
    List(Vec<NodeInfo>),
    Object { nodes: Vec<NodeInfo> },
}

impl StaticDiscovery {
    /// From a list of nodes.
    pub fn new(nodes: Vec<NodeInfo>) -> Self {
        Self {
            nodes,
            me: Default::default(),
        }
    }

    /// From a JSON file holding an array of nodes or `{"nodes": [...]}`.
    pub fn from_file(path: &Path) -> Result<Self, DiscoveryError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DiscoveryError::config(format!("{}: {e}", path.display())))?;
        let parsed: FileFormat = serde_json::from_str(&text)
            .map_err(|e| DiscoveryError::config(format!("{}: {e}", path.display())))?;
        Ok(Self::new(match parsed {
            FileFormat::List(n) | FileFormat::Object { nodes: n } => n,
        }))
    }

    /// The configured nodes.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// The configured nodes, with this node's registered info in place of (or added to) its
    /// entry.
    fn current(&self) -> Vec<NodeInfo> {
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut nodes: Vec<NodeInfo> = self
            .nodes
            .iter()
            .filter(|n| me.as_ref().is_none_or(|m| m.id != n.id))
            .cloned()
            .collect();
        nodes.extend(me);
        nodes
    }
}

#[async_trait]
impl Discovery for StaticDiscovery {
    /// The list has no liveness to check, so an id is refused when the list itself makes it
    /// ambiguous: listed twice, or listed for a node of another type.
    async fn register(&self, node: &NodeInfo) -> Result<(), DiscoveryError> {
        let mut listed = self.nodes.iter().filter(|n| n.id == node.id);
        if let (Some(first), Some(second)) = (listed.next(), listed.next()) {
            return Err(DiscoveryError::duplicate_id(
                node.id.clone(),
                format!(
                    "the static node list holds it twice, at {} and {}",
                    first.address, second.address
                ),
            ));
        }
        if let Some(other) = self
            .nodes
            .iter()
            .find(|n| n.id == node.id && n.node_type != node.node_type)
        {
            return Err(DiscoveryError::duplicate_id(
                node.id.clone(),
                format!(
                    "the static node list gives it to a node of type {} at {}, this node is of \
                     type {}",
                    other.node_type, other.address, node.node_type
                ),
            ));
        }
        *self.me.lock().unwrap_or_else(|e| e.into_inner()) = Some(node.clone());
        Ok(())
    }

    async fn update(&self, node: &NodeInfo) -> Result<(), DiscoveryError> {
        self.register(node).await
    }

    async fn deregister(&self) -> Result<(), DiscoveryError> {
        Ok(())
    }

    async fn watch(&self) -> Result<mpsc::Receiver<DiscoveryEvent>, DiscoveryError> {
        let nodes = self.current();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE.max(nodes.len()));
        for n in nodes {
            let _ = tx.try_send(DiscoveryEvent::Added(n));
        }
        // Keep the channel open for the life of the receiver: static membership never changes.
        tokio::spawn(async move { tx.closed().await });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ambiguous_ids_are_refused() {
        let listed = |id: &str, ty: &str, addr: &str| {
            let mut n = NodeInfo::new(id, ty);
            n.address = addr.into();
            n
        };
        let d = StaticDiscovery::new(vec![
            listed("room-1", "room", "127.0.0.1:4001"),
            listed("room-1", "room", "127.0.0.1:4002"),
            listed("gate-1", "connector", "127.0.0.1:4003"),
        ]);
        let e = d.register(&listed("room-1", "room", "")).await.unwrap_err();
        assert!(
            e.kind() == crate::DiscoveryErrorKind::DuplicateId && e.message() == "room-1",
            "{e}"
        );
        let e = d.register(&listed("gate-1", "room", "")).await.unwrap_err();
        assert!(e.to_string().contains("type connector"), "{e}");
        d.register(&listed("gate-1", "connector", "127.0.0.1:9"))
            .await
            .expect("its own entry");
        d.register(&listed("room-9", "room", ""))
            .await
            .expect("unlisted");
    }
}
