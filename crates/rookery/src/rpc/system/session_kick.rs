//! `sys.session.kick`: a backend kicks one session of the receiving gateway.

use crate::App;

/// Kick one session.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysKick {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// Reason sent to the client.
    #[prost(string, tag = "2")]
    pub reason: String,
}

impl SysKick {
    pub(super) fn apply(self, app: &App) {
        if let Some(s) = app.sessions().get(self.sid) {
            s.kick(&self.reason);
        }
    }
}
