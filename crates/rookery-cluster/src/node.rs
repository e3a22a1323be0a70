//! Node identity: id, type, version, metadata and the 32-bit logical address.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's 32-bit logical address `cluster.type.index` (clustergo layout): the high 12 bits are
/// the cluster, the middle 8 bits the node type number (255 is reserved for harbor nodes), the low
/// 12 bits the index of the node within its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LogicalAddr(u32);

impl LogicalAddr {
    /// Largest cluster number (12 bits).
    pub const MAX_CLUSTER: u16 = 0xFFF;
    /// Largest type number (8 bits); 255 is reserved for harbor nodes.
    pub const MAX_TYPE: u8 = 0xFF;
    /// Type number of harbor nodes.
    pub const HARBOR_TYPE: u8 = 0xFF;
    /// Largest index (12 bits).
    pub const MAX_INDEX: u16 = 0xFFF;

    /// Packs the three fields; `None` if a field is out of range.
    pub fn new(cluster: u16, node_type: u8, index: u16) -> Option<Self> {
        if cluster > Self::MAX_CLUSTER || index > Self::MAX_INDEX {
            return None;
        }
        Some(Self(
            (u32::from(cluster) << 20) | (u32::from(node_type) << 12) | u32::from(index),
        ))
    }

    /// From the packed 32-bit form.
    pub fn from_u32(v: u32) -> Self {
        Self(v)
    }

    /// The packed 32-bit form.
    pub fn as_u32(self) -> u32 {
        self.0
    }

    /// Cluster field.
    pub fn cluster(self) -> u16 {
        (self.0 >> 20) as u16
    }

    /// Type field.
    pub fn node_type(self) -> u8 {
        ((self.0 >> 12) & 0xFF) as u8
    }

    /// Index field.
    pub fn index(self) -> u16 {
        (self.0 & 0xFFF) as u16
    }

    /// True for harbor nodes (type 255).
    pub fn is_harbor(self) -> bool {
        self.node_type() == Self::HARBOR_TYPE
    }
}

impl fmt::Display for LogicalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.cluster(),
            self.node_type(),
            self.index()
        )
    }
}

/// Error parsing a logical address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid logical address {0:?}: expected cluster.type.index within 12.8.12 bits")]
pub struct BadLogicalAddr(pub String);

impl FromStr for LogicalAddr {
    type Err = BadLogicalAddr;
    fn from_str(s: &str) -> Result<Self, BadLogicalAddr> {
        let bad = || BadLogicalAddr(s.to_string());
        let mut parts = s.split('.');
        let (Some(c), Some(t), Some(i), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let c: u16 = c.parse().map_err(|_| bad())?;
        let t: u8 = t.parse().map_err(|_| bad())?;
        let i: u16 = i.parse().map_err(|_| bad())?;
        Self::new(c, t, i).ok_or_else(bad)
    }
}

impl Serialize for LogicalAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogicalAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether a node takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Serving.
    #[default]
    Available,
    /// Finishing in-flight work before leaving; selectors skip it.
    Draining,
    /// Registered but not taking work (e.g. maintenance).
    Unavailable,
}

/// Everything the cluster knows about a node. Serialized as JSON in discovery back ends.
/// Unknown fields are ignored, so that nodes of a newer version, which may publish more, can
/// join a running cluster (rolling upgrades).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique node id.
    pub id: String,
    /// Node type (e.g. `gate`, `room`); RPCs addressed to a type go to a node of it.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Software version of the node (selectors may filter on it).
    #[serde(default)]
    pub version: String,
    /// The version of each module it runs (`Module::version`), for selectors that choose by a
    /// module's version ([`crate::selector::NewestVersion`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub module_versions: BTreeMap<String, String>,
    /// Address other nodes reach it at, for transports that dial (TCP); empty otherwise.
    #[serde(default)]
    pub address: String,
    /// Logical address.
    #[serde(default)]
    pub logical: LogicalAddr,
    /// Modules this node runs (routes `module.*` can be served here).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Client routes and declared push routes of its modules, so that every gateway's route
    /// dictionary holds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Client routes whose handlers run concurrently (`Dispatch::Concurrent`): a gateway
    /// forwarding them does not wait for one of a session's requests to end before the next.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concurrent_routes: Vec<String>,
    /// True if this node accepts client connections.
    #[serde(default)]
    pub frontend: bool,
    /// Selection weight (weighted selector); 0 means never chosen by weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// State.
    #[serde(default)]
    pub state: NodeState,
    /// Free-form tags (routing tags, zone, ...).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    100
}

impl NodeInfo {
    /// A node with an id and a type and defaults for everything else.
    pub fn new(id: impl Into<String>, node_type: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            node_type: node_type.into(),
            version: String::new(),
            module_versions: BTreeMap::new(),
            address: String::new(),
            logical: LogicalAddr::default(),
            modules: Vec::new(),
            routes: Vec::new(),
            concurrent_routes: Vec::new(),
            frontend: false,
            weight: default_weight(),
            state: NodeState::Available,
            tags: BTreeMap::new(),
        }
    }

    /// True if the node runs the module.
    pub fn runs(&self, module: &str) -> bool {
        self.modules.iter().any(|m| m == module)
    }

    /// The version that counts for calls to `module`: the module's own when the node publishes
    /// it, else the node's.
    pub fn version_of(&self, module: &str) -> &str {
        self.module_versions.get(module).unwrap_or(&self.version)
    }

    /// True if selectors may pick it.
    pub fn is_available(&self) -> bool {
        self.state == NodeState::Available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_addr_layout() {
        let a = LogicalAddr::new(1, 2, 3).unwrap();
        assert_eq!(a.as_u32(), (1 << 20) | (2 << 12) | 3);
        assert_eq!((a.cluster(), a.node_type(), a.index()), (1, 2, 3));
        assert_eq!(a.to_string(), "1.2.3");
        assert_eq!("1.2.3".parse::<LogicalAddr>().unwrap(), a);
        let max = LogicalAddr::new(4095, 255, 4095).unwrap();
        assert_eq!(max.as_u32(), u32::MAX);
        assert!(max.is_harbor());
        assert!(LogicalAddr::new(4096, 0, 0).is_none());
        assert!(LogicalAddr::new(0, 0, 4096).is_none());
        for bad in ["1.2", "1.2.3.4", "a.b.c", "1.256.0", "4096.0.0", ""] {
            assert!(bad.parse::<LogicalAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn node_info_json() {
        let mut n = NodeInfo::new("room-1", "room");
        n.logical = LogicalAddr::new(1, 3, 1).unwrap();
        n.modules = vec!["room".into()];
        let j = serde_json::to_value(&n).unwrap();
        assert_eq!(j["type"], "room");
        assert_eq!(j["logical"], "1.3.1");
        let back: NodeInfo = serde_json::from_value(j).unwrap();
        assert_eq!(back, n);
        let minimal: NodeInfo = serde_json::from_str(r#"{"id":"a","type":"gate"}"#).unwrap();
        assert_eq!(minimal.weight, 100);
        assert!(minimal.is_available());
    }
}
