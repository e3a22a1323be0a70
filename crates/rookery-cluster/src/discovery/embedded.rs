//! Embedded discovery: an in-memory membership list shared by the nodes of one process.
//!
//! The default for a single process (it then knows only itself), and a convenient way to run
//! several nodes in one test process: give each a [`EmbeddedDiscovery::handle`] of the same list.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Discovery, DiscoveryError, DiscoveryEvent, EVENT_QUEUE};
use crate::NodeInfo;

/// Shared in-memory discovery. Clones share the membership list; each clone registers one node.
#[derive(Clone, Default)]
pub struct EmbeddedDiscovery {
    shared: Arc<Mutex<Shared>>,
    me: Arc<Mutex<Option<String>>>,
}

#[derive(Default)]
struct Shared {
    nodes: BTreeMap<String, NodeInfo>,
    watchers: Vec<mpsc::Sender<DiscoveryEvent>>,
}

impl EmbeddedDiscovery {
    /// A new, empty membership list.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle on the same membership list for another node.
    pub fn handle(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            me: Arc::new(Mutex::new(None)),
        }
    }

    fn publish(shared: &mut Shared, event: DiscoveryEvent) {
        // A watcher whose queue is full or closed is dropped: embedded watchers are in-process
        // and drain promptly; a full one means its owner is gone or stuck.
        shared
            .watchers
            .retain(|w| w.try_send(event.clone()).is_ok());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Discovery for EmbeddedDiscovery {
    async fn register(&self, node: &NodeInfo) -> Result<(), DiscoveryError> {
        let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = self.lock();
        match me.as_deref() {
            Some(mine) if mine != node.id => {
                return Err(DiscoveryError::config(format!(
                    "embedded discovery: this handle registered {mine}; deregister before \
                     registering {}",
                    node.id
                )))
            }
            Some(_) => {}
            None => {
                if let Some(holder) = s.nodes.get(&node.id) {
                    return Err(DiscoveryError::duplicate_id(
                        node.id.clone(),
                        format!(
                            "type {}, address {}, registered through another handle in this \
                             process",
                            holder.node_type, holder.address
                        ),
                    ));
                }
                *me = Some(node.id.clone());
            }
        }
        let event = match s.nodes.insert(node.id.clone(), node.clone()) {
            Some(_) => DiscoveryEvent::Updated(node.clone()),
            None => DiscoveryEvent::Added(node.clone()),
        };
        Self::publish(&mut s, event);
        Ok(())
    }

    async fn update(&self, node: &NodeInfo) -> Result<(), DiscoveryError> {
        self.register(node).await
    }

    async fn deregister(&self) -> Result<(), DiscoveryError> {
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(id) = me {
            let mut s = self.lock();
            if s.nodes.remove(&id).is_some() {
                Self::publish(&mut s, DiscoveryEvent::Removed(id));
            }
        }
        Ok(())
    }

    async fn watch(&self) -> Result<mpsc::Receiver<DiscoveryEvent>, DiscoveryError> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut s = self.lock();
        for n in s.nodes.values() {
            tx.try_send(DiscoveryEvent::Added(n.clone()))
                .map_err(|_| DiscoveryError::unavailable("too many nodes for one snapshot"))?;
        }
        s.watchers.push(tx);
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_id_held_through_another_handle_is_refused() {
        let list = EmbeddedDiscovery::new();
        let (a, b) = (list.handle(), list.handle());
        a.register(&NodeInfo::new("n", "room")).await.unwrap();
        let e = b.register(&NodeInfo::new("n", "room")).await.unwrap_err();
        assert!(
            e.kind() == crate::DiscoveryErrorKind::DuplicateId && e.message() == "n",
            "{e}"
        );
        // The holder may register again (an update); once it leaves, the id is free.
        a.register(&NodeInfo::new("n", "room")).await.unwrap();
        a.deregister().await.unwrap();
        b.register(&NodeInfo::new("n", "room")).await.unwrap();
    }
}
