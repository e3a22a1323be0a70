//! `sys.session.data`: changes of a session's data a backend made outside a request's answer,
//! applied by the gateway holding the session (in the order the backend made them: they travel
//! through its ordered link).

use bytes::Bytes;

use crate::rpc::client::DataChanges;
use crate::session::DataChange;
use crate::App;

/// Changes of one session's data.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysData {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// The changes and the node that made them, as JSON (`DataChanges`).
    #[prost(bytes = "bytes", tag = "2")]
    pub changes: Bytes,
}

impl SysData {
    pub(crate) fn new(sid: u64, node: String, changes: Vec<DataChange>) -> Self {
        let json = serde_json::to_vec(&DataChanges { node, changes }).unwrap_or_default();
        Self {
            sid,
            changes: Bytes::from(json),
        }
    }

    pub(super) fn apply(self, app: &App) {
        let Some(s) = app.sessions().get(self.sid) else {
            return;
        };
        match serde_json::from_slice::<DataChanges>(&self.changes) {
            Ok(d) => s.merge_data(&d.node, d.changes),
            Err(e) => tracing::warn!(session = self.sid, error = %e, "bad session data changes"),
        }
    }
}
