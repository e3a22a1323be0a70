//! `sys.uid.bound`: another gateway bound a uid; of two sessions of the same uid on two gateways
//! exactly one survives.

use crate::App;

/// A uid bound on a gateway, with the binding's stamp. With an empty uid it only carries the
/// sender's binding clock (sent to a gateway that joins).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysBound {
    /// User id.
    #[prost(string, tag = "1")]
    pub uid: String,
    /// The binding's stamp on the gateways' logical clock (see `SessionPool::bind`).
    #[prost(uint64, tag = "2")]
    pub bound_at: u64,
    /// The gateway that bound it.
    #[prost(string, tag = "3")]
    pub gateway: String,
}

impl SysBound {
    /// The session with the smaller (stamp, gateway id) is kicked; both gateways compare the
    /// same pair, and the one keeping its session tells the other, so exactly one survives
    /// whatever order the messages arrive in.
    pub(super) async fn apply(self, app: &App) {
        app.sessions().observe_binding(self.bound_at);
        if self.uid.is_empty() || self.gateway == app.node_id() {
            return;
        }
        let Some(s) = app.sessions().by_uid(&self.uid) else {
            return;
        };
        let mine = (s.bound_at(), app.node_id());
        if mine < (self.bound_at, self.gateway.as_str()) {
            s.kick_as(
                crate::telemetry::DisconnectReason::DuplicateLogin,
                crate::REASON_DUPLICATE_LOGIN,
            );
        } else {
            // Ours is newer: the other gateway may have bound its session after it heard of
            // ours, and then nobody else would tell it.
            app.rpc().announce_bind_to(&self.gateway, Some(&s)).await;
        }
    }
}
