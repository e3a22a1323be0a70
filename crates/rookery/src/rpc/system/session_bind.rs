//! `sys.session.bind`: a backend binds a uid to a session of the receiving gateway (a call: the
//! backend learns whether it worked), which then tells the other gateways.

use crate::{App, Code, Error};

/// Bind a uid to one session.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysBind {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// User id.
    #[prost(string, tag = "2")]
    pub uid: String,
}

impl SysBind {
    pub(super) async fn apply(self, app: &App) -> Result<(), Error> {
        let s = app
            .sessions()
            .get(self.sid)
            .ok_or_else(|| Error::new(Code::Unavailable, "session closed"))?;
        app.sessions().bind(&s, &self.uid)?;
        app.rpc().announce_bind(&s).await;
        Ok(())
    }
}
