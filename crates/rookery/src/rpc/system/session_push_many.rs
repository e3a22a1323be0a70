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
    /// Encodes the packet once per kind of client (protocol class, compression) and shares it;
    /// a session whose protocol keeps delivery state gets its own.
    pub(super) fn apply(self, app: &App) {
        // `None` for a kind whose encoding failed (not retried for each session).
        let mut packets: Vec<((u8, bool), Option<bytes::Bytes>)> = Vec::new();
        for sid in self.sids {
            let Some(s) = app.sessions().get(sid) else {
                continue;
            };
            let Some(class) = s.push_class() else {
                let _ = s.codec().push(&s, &self.route, self.body.clone());
                continue;
            };
            let key = (class, s.compresses(self.body.len()));
            let packet = match packets.iter().find(|(k, _)| *k == key) {
                Some((_, Some(p))) => p.clone(),
                Some((_, None)) => continue,
                None => {
                    let encoded = s.codec().encode_push(&s, &self.route, self.body.clone());
                    if let Err(e) = &encoded {
                        tracing::warn!(route = %self.route, error = %e, "push encoding failed");
                    }
                    packets.push((key, encoded.as_ref().ok().cloned()));
                    match encoded {
                        Ok(p) => p,
                        Err(_) => continue,
                    }
                }
            };
            let _ = s.send_packet(packet);
        }
    }
}
