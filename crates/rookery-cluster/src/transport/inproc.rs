//! In-process transport: nodes of one process hand frames to each other's handlers directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{FrameHandler, Transport, TransportError};
use crate::NodeInfo;

/// A hub of in-process nodes. Clones share the hub.
#[derive(Clone, Default)]
pub struct InProcTransport {
    nodes: Arc<Mutex<HashMap<String, Arc<dyn FrameHandler>>>>,
}

impl InProcTransport {
    /// A new, empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn handler(&self, id: &str) -> Result<Arc<dyn FrameHandler>, TransportError> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| TransportError::unreachable(id.to_string(), "not in this process"))
    }
}

#[async_trait]
impl Transport for InProcTransport {
    async fn serve(
        &self,
        node: &NodeInfo,
        handler: Arc<dyn FrameHandler>,
        shutdown: CancellationToken,
    ) -> Result<String, TransportError> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.id.clone(), handler);
        let nodes = self.nodes.clone();
        let id = node.id.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            nodes.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
        Ok(String::new())
    }

    async fn request(
        &self,
        target: &NodeInfo,
        frame: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, TransportError> {
        let h = self.handler(&target.id)?;
        tokio::time::timeout_at(deadline, h.request(frame))
            .await
            .map_err(|_| TransportError::timeout())
    }

    async fn notify(&self, target: &NodeInfo, frame: Bytes) -> Result<(), TransportError> {
        let h = self.handler(&target.id)?;
        h.notify(frame).await;
        Ok(())
    }

    fn node_lost(&self, node_id: &str) {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node_id);
    }
}
