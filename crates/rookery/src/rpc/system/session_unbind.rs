//! `sys.session.unbind`: a backend unbinds the uid of a session of the receiving gateway (a
//! call: the backend learns that it is done).

use crate::{App, Code, Error};

/// Unbind one session's uid.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysUnbind {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
}

impl SysUnbind {
    pub(super) fn apply(self, app: &App) -> Result<(), Error> {
        let s = app
            .sessions()
            .get(self.sid)
            .ok_or_else(|| Error::new(Code::Unavailable, "session closed"))?;
        app.sessions().unbind(&s);
        Ok(())
    }
}
