//! `sys.session.closed`: a gateway tells the nodes a session used that it ended; they let go of
//! it (module hooks, groups).

use crate::rpc::envelope::SessionRef;
use crate::{App, Error};

/// A session ended on its gateway.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysClosed {
    /// The session as it was at the end.
    #[prost(message, optional, tag = "1")]
    pub session: Option<SessionRef>,
    /// Why it closed.
    #[prost(string, tag = "2")]
    pub reason: String,
}

impl SysClosed {
    pub(super) async fn apply(self, app: &App) -> Result<(), Error> {
        match &self.session {
            Some(r) => app.remote_session_closed(r, &self.reason).await,
            None => Ok(()),
        }
    }
}
