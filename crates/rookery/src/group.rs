//! Groups: named sets of users for broadcast (rooms, guilds, channels).
//!
//! Members are users (bound uids) together with the session that joined. When that session
//! closes, the member is removed from every group; a newer session of the same user (after a
//! duplicate login) is not affected. A group made by [`Groups::create`] stays when empty; one made
//! implicitly by [`Groups::add`] disappears with its last member.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::session::{fan_out, Session, SessionKey};
use crate::{Error, PushName, ToPayload};

/// The groups of a node. A cheap handle; clones share state.
#[derive(Clone, Default)]
pub struct Groups {
    inner: Arc<RwLock<State>>,
}

#[derive(Default)]
struct State {
    groups: HashMap<String, Group>,
    by_session: HashMap<SessionKey, HashSet<String>>,
}

#[derive(Default)]
struct Group {
    members: BTreeMap<Arc<str>, Session>,
    persistent: bool,
}

/// A group's name and size, as listed by [`Groups::list`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Number of members.
    pub members: usize,
}

impl Groups {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates an empty group that persists until [`Groups::delete`]. Returns false if it existed.
    pub fn create(&self, name: &str) -> bool {
        let mut st = self.write();
        if let Some(g) = st.groups.get_mut(name) {
            g.persistent = true;
            return false;
        }
        st.groups.insert(
            name.to_string(),
            Group {
                persistent: true,
                ..Group::default()
            },
        );
        true
    }

    /// Deletes a group and its memberships. Returns whether it existed.
    pub fn delete(&self, name: &str) -> bool {
        let mut st = self.write();
        let Some(g) = st.groups.remove(name) else {
            return false;
        };
        for s in g.members.values() {
            unindex(&mut st.by_session, &s.key(), name);
        }
        true
    }

    /// Adds the user bound to `session` to a group (creating it if needed). Returns false if the
    /// user was already a member through this session. `RK-401` if the session has no uid.
    pub fn add(&self, name: &str, session: &Session) -> Result<bool, Error> {
        let uid = session.uid().ok_or_else(Error::not_logged_in)?;
        if session.is_closed() {
            return Err(Error::new(crate::Code::Unavailable, "session closed"));
        }
        let mut st = self.write();
        let group = st.groups.entry(name.to_string()).or_default();
        let previous = group.members.insert(uid, session.clone());
        if let Some(prev) = &previous {
            if prev.key() == session.key() {
                return Ok(false);
            }
            let prev_key = prev.key();
            unindex(&mut st.by_session, &prev_key, name);
        }
        st.by_session
            .entry(session.key())
            .or_default()
            .insert(name.to_string());
        Ok(true)
    }

    /// Removes a user from a group. Returns whether it was a member.
    pub fn remove(&self, name: &str, uid: &str) -> bool {
        let mut st = self.write();
        let Some(group) = st.groups.get_mut(name) else {
            return false;
        };
        let Some(s) = group.members.remove(uid) else {
            return false;
        };
        let drop_group = group.members.is_empty() && !group.persistent;
        if drop_group {
            st.groups.remove(name);
        }
        unindex(&mut st.by_session, &s.key(), name);
        true
    }

    /// Removes a closed session from all its groups; returns the groups it left.
    pub fn remove_session(&self, session: &Session) -> Vec<String> {
        let mut st = self.write();
        let Some(names) = st.by_session.remove(&session.key()) else {
            return Vec::new();
        };
        let mut left = Vec::with_capacity(names.len());
        for name in names {
            let Some(group) = st.groups.get_mut(&name) else {
                continue;
            };
            let Some(uid) = session.uid() else { continue };
            if group.members.get(&uid).map(Session::key) == Some(session.key()) {
                group.members.remove(&uid);
                if group.members.is_empty() && !group.persistent {
                    st.groups.remove(&name);
                }
                left.push(name);
            }
        }
        left
    }

    /// Member uids of a group, sorted; empty if it does not exist.
    pub fn members(&self, name: &str) -> Vec<String> {
        self.read()
            .groups
            .get(name)
            .map(|g| g.members.keys().map(|u| u.to_string()).collect())
            .unwrap_or_default()
    }

    /// True if the user is a member.
    pub fn contains(&self, name: &str, uid: &str) -> bool {
        self.read()
            .groups
            .get(name)
            .is_some_and(|g| g.members.contains_key(uid))
    }

    /// True if the group exists.
    pub fn exists(&self, name: &str) -> bool {
        self.read().groups.contains_key(name)
    }

    /// Names of the groups a session is in.
    pub fn groups_of(&self, session: &Session) -> Vec<String> {
        let mut v: Vec<String> = self
            .read()
            .by_session
            .get(&session.key())
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// All groups with their sizes, sorted by name.
    pub fn list(&self) -> Vec<GroupInfo> {
        let mut v: Vec<GroupInfo> = self
            .read()
            .groups
            .iter()
            .map(|(name, g)| GroupInfo {
                name: name.clone(),
                members: g.members.len(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Pushes to every member; returns how many sessions accepted it. The payload is encoded once
    /// per serializer.
    pub fn broadcast<P: ToPayload>(
        &self,
        name: &str,
        route: impl PushName<P>,
        payload: P,
    ) -> usize {
        self.broadcast_except(name, route, payload, None)
    }

    /// Like [`Groups::broadcast`], skipping one user.
    pub fn broadcast_except<P: ToPayload>(
        &self,
        name: &str,
        route: impl PushName<P>,
        payload: P,
        except_uid: Option<&str>,
    ) -> usize {
        let route = route.push_name();
        let sessions: Vec<Session> = match self.read().groups.get(name) {
            Some(g) => g
                .members
                .iter()
                .filter(|(uid, _)| Some(&***uid) != except_uid)
                .map(|(_, s)| s.clone())
                .collect(),
            None => return 0,
        };
        fan_out(&sessions, route, &payload)
    }
}

fn unindex(by_session: &mut HashMap<SessionKey, HashSet<String>>, key: &SessionKey, name: &str) {
    if let Some(set) = by_session.get_mut(key) {
        set.remove(name);
        if set.is_empty() {
            by_session.remove(key);
        }
    }
}
