//! `sys.session.push_many`: one push to several sessions of the receiving gateway.

use bytes::Bytes;

use crate::App;

/// One body for several sessions (all in the same serializer).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysPushMany {
    /// Session ids.
    #[prost(uint64, repeated, tag = "1")]
    pub sids: Vec<u64>,
    /// Push route.
    #[prost(string, tag = "2")]
    pub route: String,
    /// Body, in the sessions' serializer.
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
}

impl SysPushMany {
    /// Encodes the packet once, for the first session still here, and shares it.
    pub(super) fn apply(self, app: &App) {
        let mut packet = None;
        for sid in self.sids {
            let Some(s) = app.sessions().get(sid) else {
                continue;
            };
            if packet.is_none() {
                packet = s.encode_push(&self.route, self.body.clone()).ok();
            }
            if let Some(p) = &packet {
                let _ = s.send_packet(p.clone());
            }
        }
    }
}
