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

/// Why a route dictionary could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DictError {
    /// Two routes were given the same code.
    #[error("route code {code} is given to both {first} and {second}")]
    DuplicateCode {
        /// The code.
        code: u16,
        /// One route holding it.
        first: String,
        /// The other.
        second: String,
    },
    /// Code 0 means "no code" on the wire.
    #[error("route {0} is given code 0; codes start at 1")]
    ZeroCode(String),
}

/// The code a route gets unless it is pinned or the code is taken: a 16-bit FNV-1a hash of its
/// name (never 0). A function of the name alone, so every gateway and every restart computes
/// the same code without coordinating, and adding a route does not move the others.
pub fn hashed_code(route: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in route.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // Fold to 16 bits, then map into 1..=65535.
    let folded = (h >> 16) ^ (h & 0xffff);
    (folded % 65535) as u16 + 1
}

impl RouteDict {
    /// Builds a dictionary with stable codes: `pinned` routes get their given codes; every other
    /// route its [`hashed_code`], or, when that code is taken, the next free one (routes taken
    /// in name order, so the result depends only on the set).
    pub fn stable<'a, I>(
        pinned: impl IntoIterator<Item = (&'a str, u16)>,
        routes: I,
    ) -> Result<Self, DictError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut dict = Self::default();
        for (route, code) in pinned {
            if code == 0 {
                return Err(DictError::ZeroCode(route.to_string()));
            }
            if let Some(first) = dict.name(code).filter(|f| *f != route) {
                return Err(DictError::DuplicateCode {
                    code,
                    first: first.to_string(),
                    second: route.to_string(),
                });
            }
            dict.insert(route, code);
        }
        dict.extend_stable(routes);
        Ok(dict)
    }

    /// Adds the routes it does not hold yet (in name order), each at its [`hashed_code`] or the
    /// next free code; existing entries never change. Returns the entries added.
    pub fn extend_stable<'a>(
        &mut self,
        routes: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(String, u16)> {
        let mut new: Vec<&str> = routes
            .into_iter()
            .filter(|r| !self.by_name.contains_key(*r))
            .collect();
        new.sort_unstable();
        new.dedup();
        let mut added = Vec::with_capacity(new.len());
        for route in new {
            if self.by_code.len() >= usize::from(u16::MAX) {
                // Every code is taken: the route is used by name.
                break;
            }
            let mut code = hashed_code(route);
            while self.by_code.contains_key(&code) {
                code = if code == u16::MAX { 1 } else { code + 1 };
            }
            self.insert(route, code);
            added.push((route.to_string(), code));
        }
        added
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
    fn stable_codes_follow_the_name_not_the_set() {
        let d = RouteDict::stable([], ["room.room.join", "connector.entry.login"]).unwrap();
        let bigger = RouteDict::stable(
            [],
            ["a.b.c", "room.room.join", "zz.z.z", "connector.entry.login"],
        )
        .unwrap();
        for (route, code) in d.iter() {
            assert_eq!(code, hashed_code(route));
            assert_eq!(bigger.code(route), Some(code), "{route} moved");
        }
        assert!(d.iter().all(|(_, c)| c != 0));
        assert_eq!(d.len(), 2);
        assert_eq!(d.code("nope"), None);
        let join = d.code("room.room.join").unwrap();
        assert_eq!(d.name(join), Some("room.room.join"));
        // Pinned codes win; a hash landing on a pinned code takes the next free one.
        let h = hashed_code("x.y.z");
        let d = RouteDict::stable([("p.q.r", h)], ["x.y.z", "p.q.r"]).unwrap();
        assert_eq!(d.code("p.q.r"), Some(h));
        assert_eq!(d.code("x.y.z"), Some(if h == u16::MAX { 1 } else { h + 1 }));
        assert_eq!(
            RouteDict::stable([("a.b.c", 7), ("d.e.f", 7)], []).unwrap_err(),
            DictError::DuplicateCode {
                code: 7,
                first: "a.b.c".into(),
                second: "d.e.f".into()
            }
        );
        assert_eq!(
            RouteDict::stable([("a.b.c", 0)], []).unwrap_err(),
            DictError::ZeroCode("a.b.c".into())
        );
    }

    #[test]
    fn extending_never_moves_an_entry() {
        let mut d = RouteDict::stable([("pinned.a.b", 3)], ["m.h.one", "m.h.two"]).unwrap();
        let before: Vec<(String, u16)> = d.iter().map(|(r, c)| (r.to_string(), c)).collect();
        let added = d.extend_stable(["m.h.three", "m.h.one", "m.h.three"]);
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].0, "m.h.three");
        for (route, code) in before {
            assert_eq!(d.code(&route), Some(code));
        }
        assert_eq!(d.name(added[0].1), Some("m.h.three"));
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

    proptest::proptest! {
        /// Whatever the routes and in whatever order they arrive, codes are unique and non-zero,
        /// and routes already present keep their codes.
        #[test]
        fn codes_stay_unique_and_put(
            first in proptest::collection::vec("[a-c]{1,3}\\.[a-c]{1,2}\\.[a-z]{1,4}", 0..80),
            later in proptest::collection::vec("[a-c]{1,3}\\.[a-c]{1,2}\\.[a-z]{1,4}", 0..80),
        ) {
            let mut d = RouteDict::stable([], first.iter().map(String::as_str)).unwrap();
            let before: Vec<(String, u16)> = d.iter().map(|(r, c)| (r.to_string(), c)).collect();
            d.extend_stable(later.iter().map(String::as_str));
            for (route, code) in &before {
                proptest::prop_assert_eq!(d.code(route), Some(*code));
            }
            let mut codes: Vec<u16> = d.iter().map(|(_, c)| c).collect();
            proptest::prop_assert!(codes.iter().all(|c| *c != 0));
            let n = codes.len();
            codes.sort_unstable();
            codes.dedup();
            proptest::prop_assert_eq!(codes.len(), n);
            for r in first.iter().chain(&later) {
                proptest::prop_assert!(d.code(r).is_some());
            }
        }
    }
}
