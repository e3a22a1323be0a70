//! `sys.uid.kick`: kick a user on whichever gateway holds it.

use crate::App;

/// Kick a user's session.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysUidKick {
    /// User id.
    #[prost(string, tag = "1")]
    pub uid: String,
    /// Reason sent to the client.
    #[prost(string, tag = "2")]
    pub reason: String,
}

impl SysUidKick {
    pub(super) fn apply(self, app: &App) {
        app.sessions().kick_uid(&self.uid, &self.reason);
    }
}
