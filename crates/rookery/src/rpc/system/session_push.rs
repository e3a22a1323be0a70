//! `sys.session.push`: a backend pushes to one session of the receiving gateway.

use bytes::Bytes;

use crate::{App, Code, Error};

/// A push to one session, its body already in the session's serializer.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysPush {
    /// Session id.
    #[prost(uint64, tag = "1")]
    pub sid: u64,
    /// Push route.
    #[prost(string, tag = "2")]
    pub route: String,
    /// Body, already in the session's serializer.
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
}

impl SysPush {
    pub(super) fn apply(self, app: &App) -> Result<(), Error> {
        let s = app
            .sessions()
            .get(self.sid)
            .ok_or_else(|| Error::new(Code::NotFound, "session gone"))?;
        s.push_encoded(&self.route, self.body)
    }
}
