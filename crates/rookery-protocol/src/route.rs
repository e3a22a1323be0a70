//! Routes: names (`module.handler.method`) and the route dictionary that maps them to codes.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;

use crate::ProtocolError;

/// A route name validated as UTF-8 and at most 255 bytes, sharing the received buffer (no copy).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RouteName(Bytes);

impl RouteName {
    /// Largest route the 1-byte length prefix can carry.
    pub const MAX_LEN: usize = 255;

    /// Validates bytes as a route name.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, ProtocolError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(ProtocolError::RouteTooLong);
        }
        std::str::from_utf8(&bytes).map_err(|_| ProtocolError::BadRoute)?;
        Ok(Self(bytes))
    }

    /// The route as text.
    pub fn as_str(&self) -> &str {
        // Validated as UTF-8 in every constructor.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The route's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared buffer holding the route (cloning it copies nothing).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl TryFrom<&str> for RouteName {
    type Error = ProtocolError;
    fn try_from(s: &str) -> Result<Self, ProtocolError> {
        Self::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<String> for RouteName {
    type Error = ProtocolError;
    fn try_from(s: String) -> Result<Self, ProtocolError> {
        Self::from_bytes(Bytes::from(s))
    }
}

impl fmt::Debug for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Two-way map between route names and their 16-bit codes, sent to clients in the handshake so
/// that they may send compressed routes.
#[derive(Debug, Clone, Default)]
pub struct RouteDict {
    by_name: HashMap<String, u16>,
    by_code: HashMap<u16, String>,
}

impl RouteDict {
    /// Builds a dictionary giving codes 1, 2, ... to the given routes in sorted order, so that the
    /// same set of routes always gets the same codes. Duplicates are ignored.
    pub fn from_routes<I, S>(routes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: Vec<String> = routes.into_iter().map(Into::into).collect();
        names.sort();
        names.dedup();
        let mut dict = Self::default();
        for (i, name) in names.into_iter().enumerate() {
            let code = u16::try_from(i + 1).unwrap_or(u16::MAX);
            dict.insert(name, code);
        }
        dict
    }

    /// Adds (or replaces) one entry.
    pub fn insert(&mut self, name: impl Into<String>, code: u16) {
        let name = name.into();
        if let Some(old) = self.by_name.insert(name.clone(), code) {
            self.by_code.remove(&old);
        }
        self.by_code.insert(code, name);
    }

    /// The code of a route, if it has one.
    pub fn code(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// The route of a code, if known.
    pub fn name(&self, code: u16) -> Option<&str> {
        self.by_code.get(&code).map(String::as_str)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Iterates over `(route, code)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u16)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict_codes_are_sorted_and_stable() {
        let d =
            RouteDict::from_routes(["room.room.say", "connector.entry.login", "room.room.join"]);
        assert_eq!(d.code("connector.entry.login"), Some(1));
        assert_eq!(d.code("room.room.join"), Some(2));
        assert_eq!(d.code("room.room.say"), Some(3));
        assert_eq!(d.name(2), Some("room.room.join"));
        assert_eq!(d.code("nope"), None);
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn route_name_validation() {
        assert!(RouteName::try_from("a.b.c").is_ok());
        assert_eq!(
            RouteName::from_bytes(Bytes::from_static(&[0xff, 0xfe])),
            Err(ProtocolError::BadRoute)
        );
        assert_eq!(
            RouteName::try_from("x".repeat(256)),
            Err(ProtocolError::RouteTooLong)
        );
    }
}
