//! The cluster as this node sees it: known nodes, indexed by id, module, type and logical
//! address. Fed by discovery events; read on every routed call (snapshots are shared `Arc`s).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{DiscoveryEvent, LogicalAddr, NodeInfo};
use crate::FastMap;

/// What changed, as told to modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A node was found.
    Found(NodeInfo),
    /// A node's info changed.
    Updated(NodeInfo),
    /// A node was lost (left or expired).
    Lost(NodeInfo),
}

/// Known nodes. Cheap to read: lookups return shared snapshots.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Snapshot>,
}

#[derive(Default, Clone)]
struct Snapshot {
    by_id: FastMap<String, NodeInfo>,
    by_module: FastMap<String, Arc<[NodeInfo]>>,
    by_type: FastMap<String, Arc<[NodeInfo]>>,
}

impl Snapshot {
    fn reindex(&mut self) {
        let mut by_module: HashMap<String, Vec<NodeInfo>> = HashMap::new();
        let mut by_type: HashMap<String, Vec<NodeInfo>> = HashMap::new();
        let mut all: Vec<&NodeInfo> = self.by_id.values().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        for n in all {
            for m in &n.modules {
                by_module.entry(m.clone()).or_default().push(n.clone());
            }
            by_type
                .entry(n.node_type.clone())
                .or_default()
                .push(n.clone());
        }
        self.by_module = by_module.into_iter().map(|(k, v)| (k, v.into())).collect();
        self.by_type = by_type.into_iter().map(|(k, v)| (k, v.into())).collect();
    }
}

impl Registry {
    /// Applies a discovery event; returns what changed (None if nothing did).
    pub fn apply(&self, event: DiscoveryEvent) -> Option<NodeEvent> {
        let mut s = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let out = match event {
            DiscoveryEvent::Added(n) | DiscoveryEvent::Updated(n) => {
                match s.by_id.insert(n.id.clone(), n.clone()) {
                    None => Some(NodeEvent::Found(n)),
                    Some(old) if old != n => Some(NodeEvent::Updated(n)),
                    Some(_) => None,
                }
            }
            DiscoveryEvent::Removed(id) => s.by_id.remove(&id).map(NodeEvent::Lost),
        };
        if out.is_some() {
            s.reindex();
        }
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A node by id.
    pub fn get(&self, id: &str) -> Option<NodeInfo> {
        self.read().by_id.get(id).cloned()
    }

    /// Nodes running a module, sorted by id.
    pub fn running(&self, module: &str) -> Arc<[NodeInfo]> {
        self.read()
            .by_module
            .get(module)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Nodes of a type, sorted by id.
    pub fn of_type(&self, node_type: &str) -> Arc<[NodeInfo]> {
        self.read()
            .by_type
            .get(node_type)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// The node with a logical address.
    pub fn by_logical(&self, addr: LogicalAddr) -> Option<NodeInfo> {
        self.read()
            .by_id
            .values()
            .find(|n| n.logical == addr)
            .cloned()
    }

    /// All nodes, sorted by id.
    pub fn all(&self) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self.read().by_id.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Frontend (gateway) nodes, sorted by id.
    pub fn frontends(&self) -> Vec<NodeInfo> {
        self.all().into_iter().filter(|n| n.frontend).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, ty: &str, modules: &[&str]) -> NodeInfo {
        let mut n = NodeInfo::new(id, ty);
        n.modules = modules.iter().map(|m| m.to_string()).collect();
        n
    }

    #[test]
    fn indexes_follow_events() {
        let r = Registry::default();
        assert!(matches!(
            r.apply(DiscoveryEvent::Added(node("r2", "room", &["room"]))),
            Some(NodeEvent::Found(_))
        ));
        r.apply(DiscoveryEvent::Added(node("r1", "room", &["room", "chat"])));
        r.apply(DiscoveryEvent::Added(node("g1", "gate", &["connector"])));
        let ids: Vec<_> = r.running("room").iter().map(|n| n.id.clone()).collect();
        assert_eq!(ids, vec!["r1", "r2"]);
        assert_eq!(r.running("chat").len(), 1);
        assert_eq!(r.of_type("gate").len(), 1);
        // Same info again: no event.
        assert_eq!(
            r.apply(DiscoveryEvent::Updated(node("g1", "gate", &["connector"]))),
            None
        );
        let mut g = node("g1", "gate", &["connector"]);
        g.weight = 5;
        assert!(matches!(
            r.apply(DiscoveryEvent::Updated(g)),
            Some(NodeEvent::Updated(_))
        ));
        assert!(matches!(
            r.apply(DiscoveryEvent::Removed("r2".into())),
            Some(NodeEvent::Lost(n)) if n.id == "r2"
        ));
        assert_eq!(r.running("room").len(), 1);
        assert_eq!(r.apply(DiscoveryEvent::Removed("nope".into())), None);
    }
}
