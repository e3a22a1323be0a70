//! `sys.uid.push`: a push to users, delivered by whichever gateway holds them.

use bytes::Bytes;
use rookery_protocol::Serializer;

use crate::{App, Session};

/// A push to users; the body in both serializer forms (each session gets the one it uses).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SysUidPush {
    /// Target users (empty for a broadcast).
    #[prost(string, repeated, tag = "1")]
    pub uids: Vec<String>,
    /// Push route.
    #[prost(string, tag = "2")]
    pub route: String,
    /// Body for JSON sessions, when the payload has a JSON form.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub json: Option<Bytes>,
    /// Body for protobuf sessions, when the payload has a protobuf form.
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub proto: Option<Bytes>,
}

/// Delivers to those of the users whose sessions this gateway holds.
pub(super) fn to_uids(app: &App, m: &SysUidPush) {
    let sessions = app.sessions();
    let targets: Vec<Session> = m.uids.iter().filter_map(|u| sessions.by_uid(u)).collect();
    push_both_forms(&targets, m);
}

/// Pushes a body sent in both serializer forms to each session in the form it uses.
pub(super) fn push_both_forms(sessions: &[Session], m: &SysUidPush) {
    for s in sessions {
        let body = match s.serializer() {
            Serializer::Json => m.json.clone(),
            Serializer::Protobuf => m.proto.clone(),
        };
        if let Some(b) = body {
            let _ = s.push_encoded(&m.route, b);
        }
    }
}
