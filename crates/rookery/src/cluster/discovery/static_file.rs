//! Static discovery: a fixed list of nodes from a file (zinx-cluster `dinx.json` style) or from
//! the configuration. Nodes never leave; a dead node is noticed by its transport failing.

use std::path::Path;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Discovery, DiscoveryError, DiscoveryEvent, EVENT_QUEUE};
use crate::cluster::NodeInfo;

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
            .map_err(|e| DiscoveryError::Config(format!("{}: {e}", path.display())))?;
        let parsed: FileFormat = serde_json::from_str(&text)
            .map_err(|e| DiscoveryError::Config(format!("{}: {e}", path.display())))?;
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
    async fn register(&self, node: &NodeInfo) -> Result<(), DiscoveryError> {
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
