//! `sys.broadcast`: a push to every session of the receiving gateway (the body travels as a
//! `SysUidPush` without uids).

use super::uid_push::{push_both_forms, SysUidPush};
use crate::App;

/// Delivers to every session this gateway holds.
pub(super) fn to_everyone(app: &App, m: &SysUidPush) {
    push_both_forms(&app.sessions().all(), m);
}
