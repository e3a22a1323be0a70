//! The sessions of other gateways this node has served, by gateway.
//!
//! A gateway tells the nodes a session's requests went to when that session closes; a gateway
//! that dies cannot. Remembering which sessions each gateway brought here lets the node let go
//! of them (module `session_closed` hooks, groups) when discovery reports the gateway gone, and
//! lets each session's close run exactly once, whichever of the two comes first.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::session::{Session, SessionId};
use crate::FastMap;

/// Remote sessions seen in forwarded requests, by gateway id then session id.
#[derive(Default)]
pub(crate) struct RemoteSessions {
    by_gateway: RwLock<FastMap<Arc<str>, HashMap<SessionId, Session>>>,
}

impl RemoteSessions {
    /// Records a session a forwarded request came with. Costs a read lock when the session is
    /// already known with the same uid (the hooks must see the uid it has now).
    pub(crate) fn seen(&self, session: &Session) {
        let Some(gateway) = session.gateway() else {
            return;
        };
        {
            let map = self.by_gateway.read().unwrap_or_else(|e| e.into_inner());
            let known = map.get(gateway).and_then(|m| m.get(&session.id()));
            if known.is_some_and(|k| k.same_uid(session)) {
                return;
            }
        }
        let mut map = self.by_gateway.write().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(gateway) {
            Some(m) => {
                m.insert(session.id(), session.clone());
            }
            None => {
                map.insert(
                    Arc::from(gateway),
                    HashMap::from([(session.id(), session.clone())]),
                );
            }
        }
    }

    /// Forgets a session that closed; true if it was known (then its close is handled here).
    pub(crate) fn forget(&self, gateway: &str, id: SessionId) -> bool {
        let mut map = self.by_gateway.write().unwrap_or_else(|e| e.into_inner());
        let Some(m) = map.get_mut(gateway) else {
            return false;
        };
        let known = m.remove(&id).is_some();
        if m.is_empty() {
            map.remove(gateway);
        }
        known
    }

    /// Takes every session of a gateway that left the cluster.
    pub(crate) fn gateway_gone(&self, gateway: &str) -> Vec<Session> {
        let mut map = self.by_gateway.write().unwrap_or_else(|e| e.into_inner());
        map.remove(gateway)
            .map(|m| m.into_values().collect())
            .unwrap_or_default()
    }
}
