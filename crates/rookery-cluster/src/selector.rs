//! Selectors: how one node of a type is picked for a call.
//!
//! A [`Selector`] gets every known node of the wanted type (the *candidates*) and a
//! [`SelectContext`] describing the call, and returns one candidate or `None`.
//!
//! # Eligibility rules (common to every selector)
//!
//! A candidate is *eligible* ([`is_eligible`]) when
//! 1. it carries every routing tag of [`SelectContext::tags`] (same key, same value), and
//! 2. its state is [`NodeState::Available`].
//!
//! Selectors only ever return eligible nodes; when no candidate is eligible they return `None`.
//!
//! # Filters and node states
//!
//! [`Filter`] wraps another selector and narrows the candidates with a predicate before the inner
//! selector sees them. A plain filter ([`Filter::new`], [`Filter::version`], [`Filter::tag`]) only
//! ever *narrows*: the availability rule above still applies afterwards.
//!
//! [`Filter::state`] is the one way to select non-available nodes: `Filter::state(inner, s)` keeps
//! only candidates in state `s` and presents them to `inner` *as if they were available*, so
//! `Filter::state(Random, NodeState::Draining)` picks uniformly among draining nodes (useful for
//! admin calls), and `Filter::state(inner, NodeState::Available)` is the same as `inner`. Routing
//! tags still apply to the promoted nodes.
//!
//! # Composition order
//!
//! Stateful selectors ([`RoundRobin`], [`ConsistentHash`], [`Sticky`]) identify nodes by id, so
//! they work unchanged behind filters. Put filters *outside* [`Sticky`]
//! (`Filter::version(Sticky::new(Random), "1.2")`): a remembered node is re-checked only against
//! the candidates Sticky is given, so a filter inside Sticky would not re-check it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::node::{NodeInfo, NodeState};

/// What a selection may depend on.
#[derive(Debug, Clone, Default)]
pub struct SelectContext<'a> {
    /// Route of the call, e.g. `"room.room.join"`.
    pub route: &'a str,
    /// Consistent-hash key (e.g. room name, uid).
    pub key: Option<&'a str>,
    /// Session of the call, for sticky selection.
    pub session_id: Option<u64>,
    /// Routing tags a node must carry (all must match).
    pub tags: &'a [(&'a str, &'a str)],
}

impl<'a> SelectContext<'a> {
    /// A context for a route, with no key, session or tags.
    pub fn new(route: &'a str) -> Self {
        Self {
            route,
            ..Self::default()
        }
    }

    /// Sets the consistent-hash key.
    pub fn with_key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets the session id.
    pub fn with_session(mut self, session_id: u64) -> Self {
        self.session_id = Some(session_id);
        self
    }

    /// Sets the routing tags.
    pub fn with_tags(mut self, tags: &'a [(&'a str, &'a str)]) -> Self {
        self.tags = tags;
        self
    }
}

/// True if `node` carries every routing tag of `ctx`.
pub fn has_tags(node: &NodeInfo, ctx: &SelectContext<'_>) -> bool {
    ctx.tags
        .iter()
        .all(|(k, v)| node.tags.get(*k).is_some_and(|have| have == v))
}

/// True if a selector may return `node` for `ctx`: it carries every routing tag and is available.
pub fn is_eligible(node: &NodeInfo, ctx: &SelectContext<'_>) -> bool {
    node.is_available() && has_tags(node, ctx)
}

/// Picks one node among candidates (all of the wanted type; unavailable ones may be among them).
pub trait Selector: Send + Sync + 'static {
    /// Returns one eligible candidate (see the [module docs](self)), or `None` if there is none.
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo>;
}

impl<S: Selector + ?Sized> Selector for Box<S> {
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        (**self).select(candidates, ctx)
    }
}

impl<S: Selector + ?Sized> Selector for Arc<S> {
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        (**self).select(candidates, ctx)
    }
}

/// Selector for a configuration name: `"random"`, `"round-robin"`, `"weighted"`,
/// `"consistent-hash"` (100 virtual nodes), `"newest-version"` (round robin among the newest).
/// Underscores are accepted in place of hyphens.
pub fn by_name(name: &str) -> Option<Box<dyn Selector>> {
    match name {
        "random" => Some(Box::new(Random)),
        "round-robin" | "round_robin" => Some(Box::new(RoundRobin::new())),
        "weighted" => Some(Box::new(Weighted)),
        "consistent-hash" | "consistent_hash" => Some(Box::new(ConsistentHash::new(100))),
        "newest-version" | "newest_version" => {
            Some(Box::new(NewestVersion::new(RoundRobin::new())))
        }
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Eligible candidates sorted by id, duplicates (same id) removed keeping the first.
fn eligible_sorted<'n>(candidates: &'n [NodeInfo], ctx: &SelectContext<'_>) -> Vec<&'n NodeInfo> {
    let mut v: Vec<&NodeInfo> = candidates.iter().filter(|n| is_eligible(n, ctx)).collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v.dedup_by(|a, b| a.id == b.id);
    v
}

// ---------------------------------------------------------------------------------------------
// Random

/// Uniform choice among eligible nodes. The default selector.
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl Selector for Random {
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        let count = candidates.iter().filter(|n| is_eligible(n, ctx)).count();
        if count == 0 {
            return None;
        }
        candidates
            .iter()
            .filter(|n| is_eligible(n, ctx))
            .nth(fastrand::usize(..count))
    }
}

// ---------------------------------------------------------------------------------------------
// RoundRobin

/// Cycles through the eligible nodes in order of node id, one step per call (a shared counter,
/// so concurrent callers interleave but every node keeps getting its turn).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the node with the smallest id.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Selector for RoundRobin {
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        let nodes = eligible_sorted(candidates, ctx);
        if nodes.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(nodes[turn % nodes.len()])
    }
}

// ---------------------------------------------------------------------------------------------
// Weighted

/// Random choice with probability proportional to [`NodeInfo::weight`]; nodes of weight 0 are
/// never picked (if every eligible node weighs 0, the result is `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Weighted;

impl Selector for Weighted {
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        let weighted = || {
            candidates
                .iter()
                .filter(|n| n.weight > 0 && is_eligible(n, ctx))
        };
        let total: u64 = weighted().map(|n| u64::from(n.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(..total);
        for n in weighted() {
            let w = u64::from(n.weight);
            if r < w {
                return Some(n);
            }
            r -= w;
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// ConsistentHash

/// FNV-1a 64 followed by a 64-bit finalizer (murmur3 `fmix64`) for better avalanche on short,
/// similar inputs. Stable across processes and platforms.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// A built hash ring over a set of node ids.
#[derive(Debug, Default)]
struct Ring {
    /// Sorted, deduplicated node ids the ring was built from.
    ids: Vec<String>,
    /// (point, index into `ids`), sorted.
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn build(ids: Vec<String>, virtual_nodes: usize) -> Self {
        let mut points = Vec::with_capacity(ids.len() * virtual_nodes);
        for (i, id) in ids.iter().enumerate() {
            for v in 0..virtual_nodes {
                let v = (v as u64).to_le_bytes();
                points.push((stable_hash(&[id.as_bytes(), b"#", &v]), i));
            }
        }
        points.sort_unstable();
        Self { ids, points }
    }

    fn matches(&self, nodes: &[&NodeInfo]) -> bool {
        self.ids.len() == nodes.len() && self.ids.iter().zip(nodes).all(|(a, n)| *a == n.id)
    }

    /// Index into `ids` of the owner of `hash`; the ring must not be empty.
    fn owner(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|(p, _)| *p < hash);
        self.points[if i == self.points.len() { 0 } else { i }].1
    }
}

/// Consistent hashing: a ring of `virtual_nodes` points per eligible node; a call goes to the
/// node owning the first point at or after the hash of its key ([`SelectContext::key`], else the
/// session id, else the route). When a node leaves, only the keys it owned move; when one joins,
/// it only takes keys over. The hash is stable across processes (FNV-1a 64 based).
///
/// The ring is cached and rebuilt only when the set of eligible node ids changes.
#[derive(Debug)]
pub struct ConsistentHash {
    virtual_nodes: usize,
    ring: Mutex<Ring>,
}

impl ConsistentHash {
    /// A ring with `virtual_nodes` points per node (at least 1; 100 or more balances well).
    pub fn new(virtual_nodes: usize) -> Self {
        Self {
            virtual_nodes: virtual_nodes.max(1),
            ring: Mutex::new(Ring::default()),
        }
    }

    fn key_hash(ctx: &SelectContext<'_>) -> u64 {
        match (ctx.key, ctx.session_id) {
            (Some(k), _) => stable_hash(&[b"k", k.as_bytes()]),
            (None, Some(s)) => stable_hash(&[b"s", &s.to_le_bytes()]),
            (None, None) => stable_hash(&[b"r", ctx.route.as_bytes()]),
        }
    }
}

impl Default for ConsistentHash {
    /// 100 virtual nodes.
    fn default() -> Self {
        Self::new(100)
    }
}

impl Selector for ConsistentHash {
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        let nodes = eligible_sorted(candidates, ctx);
        if nodes.is_empty() {
            return None;
        }
        let hash = Self::key_hash(ctx);
        let mut ring = lock(&self.ring);
        if !ring.matches(&nodes) {
            let ids = nodes.iter().map(|n| n.id.clone()).collect();
            *ring = Ring::build(ids, self.virtual_nodes);
        }
        Some(nodes[ring.owner(hash)])
    }
}

// ---------------------------------------------------------------------------------------------
// Filter

type Predicate = dyn Fn(&NodeInfo, &SelectContext<'_>) -> bool + Send + Sync;

/// Keeps only the candidates passing a predicate and lets the inner selector choose among them.
///
/// See the [module docs](self) for how [`Filter::state`] interacts with availability.
pub struct Filter<S> {
    inner: S,
    pred: Box<Predicate>,
    /// Present the kept nodes to `inner` as available (set by [`Filter::state`]).
    promote: bool,
}

impl<S: fmt::Debug> fmt::Debug for Filter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("inner", &self.inner)
            .field("promote", &self.promote)
            .finish_non_exhaustive()
    }
}

impl<S: Selector> Filter<S> {
    /// Keeps the candidates for which `pred` is true. Only narrows: non-available nodes stay
    /// ineligible.
    pub fn new(
        inner: S,
        pred: impl Fn(&NodeInfo, &SelectContext<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            pred: Box::new(pred),
            promote: false,
        }
    }

    /// Keeps the nodes whose version is exactly `version`.
    pub fn version(inner: S, version: impl Into<String>) -> Self {
        let version = version.into();
        Self::new(inner, move |n, _| n.version == version)
    }

    /// Keeps the nodes carrying tag `key` with value `value`.
    pub fn tag(inner: S, key: impl Into<String>, value: impl Into<String>) -> Self {
        let (key, value) = (key.into(), value.into());
        Self::new(inner, move |n, _| n.tags.get(&key) == Some(&value))
    }

    /// Keeps the nodes in `state` and lets `inner` choose among them as if they were available:
    /// `Filter::state(Random, NodeState::Draining)` picks a draining node. With
    /// `NodeState::Available` this is the same as `inner` alone.
    pub fn state(inner: S, state: NodeState) -> Self {
        Self {
            inner,
            pred: Box::new(move |n, _| n.state == state),
            promote: state != NodeState::Available,
        }
    }

    /// The wrapped selector.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Selector> Selector for Filter<S> {
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        let keep: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(_, n)| (self.pred)(n, ctx))
            .map(|(i, _)| i)
            .collect();
        select_among(&self.inner, candidates, &keep, self.promote, ctx)
    }
}

/// Lets `inner` choose among the candidates at positions `keep` (as available ones if
/// `promote`), and returns its choice as a reference into `candidates`.
fn select_among<'n, S: Selector + ?Sized>(
    inner: &S,
    candidates: &'n [NodeInfo],
    keep: &[usize],
    promote: bool,
    ctx: &SelectContext<'_>,
) -> Option<&'n NodeInfo> {
    if keep.is_empty() {
        return None;
    }
    if keep.len() == candidates.len() && !promote {
        return inner.select(candidates, ctx);
    }
    let subset: Vec<NodeInfo> = keep
        .iter()
        .map(|&i| {
            let mut n = candidates[i].clone();
            if promote {
                n.state = NodeState::Available;
            }
            n
        })
        .collect();
    let picked = inner.select(&subset, ctx)?;
    let pos = subset.iter().position(|n| std::ptr::eq(n, picked))?;
    Some(&candidates[keep[pos]])
}

// ---------------------------------------------------------------------------------------------
// NewestVersion

/// Prefers the newest version (lego's default): `inner` chooses among the eligible candidates
/// of the highest version only. A node's version for a call is its module's
/// ([`NodeInfo::version_of`], the module being the route's first part), else the node's.
/// Versions compare as dotted numbers (`1.10.0` > `1.9.2`; a part that is not a number
/// compares as text, after numbers; no version is the oldest).
#[derive(Debug)]
pub struct NewestVersion<S> {
    inner: S,
}

impl<S: Selector> NewestVersion<S> {
    /// Newest first, then `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

/// Compares two versions as dotted numbers (see [`NewestVersion`]).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    // No version at all is the oldest.
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        _ => {}
    }
    let mut a = a.split(['.', '-', '+']);
    let mut b = b.split(['.', '-', '+']);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (Some(_), None) => return Ordering::Greater,
            (None, Some(_)) => return Ordering::Less,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

impl<S: Selector> Selector for NewestVersion<S> {
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        let module = ctx.route.split('.').next().unwrap_or_default();
        let newest = candidates
            .iter()
            .filter(|n| is_eligible(n, ctx))
            .map(|n| n.version_of(module))
            .max_by(|a, b| compare_versions(a, b))?;
        let keep: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(_, n)| is_eligible(n, ctx) && n.version_of(module) == newest)
            .map(|(i, _)| i)
            .collect();
        select_among(&self.inner, candidates, &keep, false, ctx)
    }
}

// ---------------------------------------------------------------------------------------------
// Sticky

/// Bounded session -> node id map with two generations: an approximation of LRU with O(1)
/// operations. Lookups promote entries from the old generation; when the current generation is
/// full it becomes the old one (dropping the previous old one).
#[derive(Debug)]
struct StickyMap {
    generation_cap: usize,
    current: HashMap<u64, String>,
    previous: HashMap<u64, String>,
}

impl StickyMap {
    fn new(capacity: usize) -> Self {
        Self {
            generation_cap: capacity.div_ceil(2).max(1),
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    fn get(&mut self, session: u64) -> Option<&String> {
        if !self.current.contains_key(&session) {
            let id = self.previous.remove(&session)?;
            self.insert(session, id);
        }
        self.current.get(&session)
    }

    fn insert(&mut self, session: u64, id: String) {
        self.previous.remove(&session);
        if self.current.len() >= self.generation_cap && !self.current.contains_key(&session) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(session, id);
    }

    fn remove(&mut self, session: u64) {
        self.current.remove(&session);
        self.previous.remove(&session);
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// Per-session affinity: the first call of a session asks the inner selector and remembers the
/// node; later calls of that session reuse it while it is still an eligible candidate, otherwise
/// the inner selector is asked again and the new node remembered. Calls without a session id go
/// straight to the inner selector.
///
/// The memory is bounded (default [`Sticky::DEFAULT_CAPACITY`] sessions, least recently used
/// ones evicted first, approximately); call [`Sticky::forget`] when a session closes.
#[derive(Debug)]
pub struct Sticky<S> {
    inner: S,
    map: Mutex<StickyMap>,
}

impl<S: Selector> Sticky<S> {
    /// Default number of sessions remembered.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// Sticky selection remembering up to [`Sticky::DEFAULT_CAPACITY`] sessions.
    pub fn new(inner: S) -> Self {
        Self::with_capacity(inner, Self::DEFAULT_CAPACITY)
    }

    /// Sticky selection remembering about `capacity` sessions (rounded up to an even number,
    /// at least 2).
    pub fn with_capacity(inner: S, capacity: usize) -> Self {
        Self {
            inner,
            map: Mutex::new(StickyMap::new(capacity)),
        }
    }

    /// Drops what is remembered for a session (call on session close).
    pub fn forget(&self, session_id: u64) {
        lock(&self.map).remove(session_id);
    }

    /// The node id remembered for a session, if any.
    pub fn remembered(&self, session_id: u64) -> Option<String> {
        lock(&self.map).get(session_id).cloned()
    }

    /// Number of sessions remembered.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// True if no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The wrapped selector.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Selector> Selector for Sticky<S> {
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        let Some(session) = ctx.session_id else {
            return self.inner.select(candidates, ctx);
        };
        {
            let mut map = lock(&self.map);
            if let Some(id) = map.get(session) {
                if let Some(n) = candidates
                    .iter()
                    .find(|n| n.id == *id && is_eligible(n, ctx))
                {
                    return Some(n);
                }
            }
        }
        // Not remembered or no longer eligible: ask the inner selector without holding the lock.
        let picked = self.inner.select(candidates, ctx);
        let mut map = lock(&self.map);
        match picked {
            Some(n) => map.insert(session, n.id.clone()),
            None => map.remove(session),
        }
        picked
    }
}

// ---------------------------------------------------------------------------------------------
// Custom

/// A selector from a closure returning an index into the candidates.
///
/// The closure sees *all* candidates (use [`is_eligible`] to skip ineligible ones) and is not
/// called when none is eligible. An out-of-range index, or the index of an ineligible node,
/// yields `None`.
pub struct Custom<F>(pub F)
where
    F: Fn(&[NodeInfo], &SelectContext<'_>) -> Option<usize> + Send + Sync + 'static;

impl<F> fmt::Debug for Custom<F>
where
    F: Fn(&[NodeInfo], &SelectContext<'_>) -> Option<usize> + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Custom(..)")
    }
}

impl<F> Selector for Custom<F>
where
    F: Fn(&[NodeInfo], &SelectContext<'_>) -> Option<usize> + Send + Sync + 'static,
{
    fn select<'n>(
        &self,
        candidates: &'n [NodeInfo],
        ctx: &SelectContext<'_>,
    ) -> Option<&'n NodeInfo> {
        if !candidates.iter().any(|n| is_eligible(n, ctx)) {
            return None;
        }
        let i = (self.0)(candidates, ctx)?;
        candidates.get(i).filter(|n| is_eligible(n, ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(id: &str) -> NodeInfo {
        NodeInfo::new(id, "room")
    }

    fn nodes(ids: &[&str]) -> Vec<NodeInfo> {
        ids.iter().map(|id| node(id)).collect()
    }

    fn with_state(mut n: NodeInfo, state: NodeState) -> NodeInfo {
        n.state = state;
        n
    }

    fn with_tag(mut n: NodeInfo, k: &str, v: &str) -> NodeInfo {
        n.tags.insert(k.into(), v.into());
        n
    }

    fn all_selectors() -> Vec<(&'static str, Box<dyn Selector>)> {
        vec![
            ("random", Box::new(Random)),
            ("round-robin", Box::new(RoundRobin::new())),
            ("weighted", Box::new(Weighted)),
            ("consistent-hash", Box::new(ConsistentHash::new(100))),
            ("filter", Box::new(Filter::new(Random, |_, _| true))),
            (
                "filter-draining",
                Box::new(Filter::state(Random, NodeState::Draining)),
            ),
            ("sticky", Box::new(Sticky::new(Random))),
            ("newest-version", Box::new(NewestVersion::new(Random))),
            (
                "custom",
                Box::new(Custom(|_: &[NodeInfo], _: &SelectContext<'_>| Some(0))),
            ),
        ]
    }

    #[test]
    fn empty_candidates_none_for_every_selector() {
        let ctx = SelectContext::new("room.room.join")
            .with_key("k")
            .with_session(7);
        for (name, s) in all_selectors() {
            assert!(s.select(&[], &ctx).is_none(), "{name}");
            assert!(s.select(&[], &SelectContext::default()).is_none(), "{name}");
        }
    }

    #[test]
    fn no_eligible_none_for_every_selector() {
        let c = vec![
            with_state(node("a"), NodeState::Unavailable),
            with_state(node("b"), NodeState::Unavailable),
        ];
        let ctx = SelectContext::new("r").with_session(1);
        for (name, s) in all_selectors() {
            assert!(s.select(&c, &ctx).is_none(), "{name}");
        }
    }

    #[test]
    fn by_name_knows_config_names() {
        let c = nodes(&["a"]);
        for name in [
            "random",
            "round-robin",
            "weighted",
            "consistent-hash",
            "newest-version",
        ] {
            let s = by_name(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(s.select(&c, &SelectContext::new("r")).unwrap().id, "a");
        }
        assert!(by_name("round_robin").is_some());
        assert!(by_name("nope").is_none());
        assert!(by_name("").is_none());
    }

    #[test]
    fn versions_compare_as_dotted_numbers() {
        use std::cmp::Ordering::*;
        for (a, b, o) in [
            ("1.10.0", "1.9.2", Greater),
            ("2.0", "2.0.0", Less),
            ("1.2.3", "1.2.3", Equal),
            ("1.2.3-beta", "1.2.3", Greater),
            ("1.2.x", "1.2.9", Greater),
            ("", "0.1.0", Less),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    /// Only the newest eligible version is chosen, by the module's version where a node
    /// publishes one; an unavailable newer node does not count.
    #[test]
    fn newest_version_picks_among_the_newest_only() {
        let v = |id: &str, version: &str| {
            let mut n = node(id);
            n.version = version.into();
            n
        };
        let mut c = vec![
            v("a", "1.9.0"),
            v("b", "1.10.0"),
            v("c", "1.10.0"),
            with_state(v("d", "2.0.0"), NodeState::Unavailable),
        ];
        let s = NewestVersion::new(RoundRobin::new());
        let ctx = SelectContext::new("room.room.join");
        let mut seen = BTreeMap::new();
        for _ in 0..10 {
            *seen
                .entry(s.select(&c, &ctx).unwrap().id.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["b", "c"]);
        // `a`'s room module is newer than the others' node versions.
        c[0].module_versions.insert("room".into(), "3.0.0".into());
        assert_eq!(s.select(&c, &ctx).unwrap().id, "a");
        // For another module, `a`'s node version counts.
        let chat = SelectContext::new("chat.chat.say");
        assert_ne!(s.select(&c, &chat).unwrap().id, "a");
    }

    #[test]
    fn random_never_picks_unavailable_and_reaches_all() {
        let c = vec![
            node("a"),
            with_state(node("b"), NodeState::Draining),
            node("c"),
            with_state(node("d"), NodeState::Unavailable),
        ];
        let ctx = SelectContext::new("r");
        let mut seen = BTreeMap::new();
        for _ in 0..1000 {
            let n = Random.select(&c, &ctx).unwrap();
            assert!(n.is_available(), "{}", n.id);
            *seen.entry(n.id.clone()).or_insert(0) += 1;
        }
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert!(seen.values().all(|&v| v > 300), "{seen:?}");
    }

    #[test]
    fn round_robin_cycles_in_id_order() {
        let c = vec![
            node("c"),
            node("a"),
            with_state(node("x"), NodeState::Draining),
            node("b"),
        ];
        let rr = RoundRobin::new();
        let ctx = SelectContext::new("r");
        let picks: Vec<_> = (0..7)
            .map(|_| rr.select(&c, &ctx).unwrap().id.clone())
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn weighted_follows_weights_and_skips_zero() {
        let mut a = node("a");
        a.weight = 1;
        let mut b = node("b");
        b.weight = 3;
        let mut z = node("z");
        z.weight = 0;
        let c = vec![a, z, b];
        let ctx = SelectContext::new("r");
        let (mut na, mut nb) = (0, 0);
        for _ in 0..4000 {
            match Weighted.select(&c, &ctx).unwrap().id.as_str() {
                "a" => na += 1,
                "b" => nb += 1,
                other => panic!("picked {other}"),
            }
        }
        // Expected 1000 : 3000; allow 20%.
        assert!((800..=1200).contains(&na), "a={na} b={nb}");
        assert!((2400..=3600).contains(&nb), "a={na} b={nb}");

        let mut only_zero = node("z");
        only_zero.weight = 0;
        assert!(Weighted.select(&[only_zero], &ctx).is_none());
    }

    #[test]
    fn routing_tags_filter_candidates() {
        let c = vec![
            with_tag(node("a"), "zone", "eu"),
            with_tag(with_tag(node("b"), "zone", "us"), "tier", "gold"),
            with_tag(node("c"), "zone", "us"),
        ];
        let us = [("zone", "us")];
        let gold_us = [("zone", "us"), ("tier", "gold")];
        let asia = [("zone", "asia")];
        for (name, s) in all_selectors() {
            if name == "filter-draining" || name == "custom" {
                continue;
            }
            for _ in 0..50 {
                let ctx = SelectContext::new("r").with_tags(&us);
                let id = &s.select(&c, &ctx).unwrap().id;
                assert!(id == "b" || id == "c", "{name}: {id}");
                let ctx = SelectContext::new("r").with_tags(&gold_us);
                assert_eq!(s.select(&c, &ctx).unwrap().id, "b", "{name}");
                let ctx = SelectContext::new("r").with_tags(&asia);
                assert!(s.select(&c, &ctx).is_none(), "{name}");
            }
        }
    }

    #[test]
    fn version_and_tag_filters() {
        let mut c = nodes(&["a", "b", "c"]);
        c[0].version = "1.0".into();
        c[1].version = "2.0".into();
        c[2].version = "2.0".into();
        c[2].state = NodeState::Draining;
        let ctx = SelectContext::new("r");
        let v2 = Filter::version(RoundRobin::new(), "2.0");
        for _ in 0..20 {
            // c is 2.0 but draining: a plain filter does not make it eligible.
            assert_eq!(v2.select(&c, &ctx).unwrap().id, "b");
        }
        assert!(Filter::version(Random, "3.0").select(&c, &ctx).is_none());

        let c = vec![with_tag(node("a"), "zone", "eu"), node("b")];
        let eu = Filter::tag(Random, "zone", "eu");
        for _ in 0..20 {
            assert_eq!(eu.select(&c, &ctx).unwrap().id, "a");
        }
        let custom = Filter::new(Random, |n, ctx| ctx.route.starts_with(n.id.as_str()));
        assert_eq!(
            custom.select(&c, &SelectContext::new("b.x")).unwrap().id,
            "b"
        );
    }

    #[test]
    fn state_filter_selects_among_that_state() {
        let c = vec![
            node("a"),
            with_tag(with_state(node("d1"), NodeState::Draining), "zone", "eu"),
            with_state(node("d2"), NodeState::Draining),
            with_state(node("u"), NodeState::Unavailable),
        ];
        let ctx = SelectContext::new("r");
        let draining = Filter::state(RoundRobin::new(), NodeState::Draining);
        let picks: Vec<_> = (0..4)
            .map(|_| draining.select(&c, &ctx).unwrap().id.clone())
            .collect();
        assert_eq!(picks, ["d1", "d2", "d1", "d2"]);
        // The returned reference is the original candidate (state untouched).
        assert_eq!(
            draining.select(&c, &ctx).unwrap().state,
            NodeState::Draining
        );
        // Routing tags still apply to promoted nodes.
        let eu = [("zone", "eu")];
        let ctx_eu = SelectContext::new("r").with_tags(&eu);
        for _ in 0..10 {
            assert_eq!(draining.select(&c, &ctx_eu).unwrap().id, "d1");
        }
        let available = Filter::state(Random, NodeState::Available);
        for _ in 0..10 {
            assert_eq!(available.select(&c, &ctx).unwrap().id, "a");
        }
        // Composes with other filters in either order.
        let mut c2 = c.clone();
        c2[2].version = "2".into();
        let a = Filter::version(Filter::state(Random, NodeState::Draining), "2");
        let b = Filter::state(Filter::version(Random, "2"), NodeState::Draining);
        for _ in 0..10 {
            assert_eq!(a.select(&c2, &ctx).unwrap().id, "d2");
            assert_eq!(b.select(&c2, &ctx).unwrap().id, "d2");
        }
    }

    #[test]
    fn sticky_keeps_node_and_moves_when_it_disappears() {
        let s = Sticky::new(Random);
        let mut c = nodes(&["a", "b", "c", "d"]);
        let ctx = SelectContext::new("r").with_session(42);
        let first = s.select(&c, &ctx).unwrap().id.clone();
        for _ in 0..50 {
            assert_eq!(s.select(&c, &ctx).unwrap().id, first);
        }
        assert_eq!(s.remembered(42).as_deref(), Some(first.as_str()));

        // The node goes away: the session moves and sticks to the new node.
        c.retain(|n| n.id != first);
        let second = s.select(&c, &ctx).unwrap().id.clone();
        assert_ne!(second, first);
        for _ in 0..50 {
            assert_eq!(s.select(&c, &ctx).unwrap().id, second);
        }
        // Draining counts as gone too.
        for n in c.iter_mut().filter(|n| n.id == second) {
            n.state = NodeState::Draining;
        }
        let third = s.select(&c, &ctx).unwrap().id.clone();
        assert_ne!(third, second);
        assert_ne!(third, first);

        s.forget(42);
        assert!(s.remembered(42).is_none());
        assert!(s.is_empty());

        // Without a session id it just delegates.
        let rr = Sticky::new(RoundRobin::new());
        let c = nodes(&["a", "b"]);
        let no_session = SelectContext::new("r");
        assert_eq!(rr.select(&c, &no_session).unwrap().id, "a");
        assert_eq!(rr.select(&c, &no_session).unwrap().id, "b");
        assert!(rr.is_empty());
    }

    #[test]
    fn sticky_sessions_spread_and_memory_is_bounded() {
        let s = Sticky::with_capacity(RoundRobin::new(), 4);
        let c = nodes(&["a", "b"]);
        for sid in 0..10u64 {
            let ctx = SelectContext::new("r").with_session(sid);
            s.select(&c, &ctx).unwrap();
            assert!(s.len() <= 4, "len {}", s.len());
        }
        // Recent sessions are still remembered, old ones evicted.
        assert!(s.remembered(9).is_some());
        assert!(s.remembered(0).is_none());
        // Round robin spread sessions over both nodes.
        assert_ne!(s.remembered(9), s.remembered(8));
    }

    #[test]
    fn sticky_map_promotes_recently_used() {
        let mut m = StickyMap::new(4); // two generations of 2
        m.insert(1, "a".into());
        m.insert(2, "b".into());
        m.insert(3, "c".into()); // rotates: previous = {1, 2}
        assert_eq!(m.get(1).map(String::as_str), Some("a")); // promoted into current {3, 1}
        m.insert(4, "d".into()); // rotates: previous = {3, 1}, 2 dropped
        assert!(m.get(2).is_none());
        assert_eq!(m.get(1).map(String::as_str), Some("a"));
        assert!(m.len() <= 4);
    }

    fn hash_assignments(s: &ConsistentHash, c: &[NodeInfo]) -> Vec<String> {
        (0..1000)
            .map(|i| {
                let key = format!("room-{i}");
                let ctx = SelectContext::new("room.room.join").with_key(&key);
                s.select(c, &ctx).unwrap().id.clone()
            })
            .collect()
    }

    #[test]
    fn consistent_hash_balance_and_minimal_remapping() {
        let s = ConsistentHash::new(100);
        let c = nodes(&["room-1", "room-2", "room-3"]);
        let before = hash_assignments(&s, &c);

        // Roughly balanced: every node gets at least 20% of the keys.
        for n in &c {
            let count = before.iter().filter(|id| **id == n.id).count();
            assert!(count >= 200, "{} got {count}", n.id);
        }

        // Deterministic, independent of candidate order, and stable across instances.
        let reversed: Vec<NodeInfo> = c.iter().rev().cloned().collect();
        assert_eq!(
            hash_assignments(&ConsistentHash::new(100), &reversed),
            before
        );

        // Removing a node moves only the keys that lived on it.
        let removed = "room-2";
        let remaining: Vec<NodeInfo> = c.iter().filter(|n| n.id != removed).cloned().collect();
        let after = hash_assignments(&s, &remaining);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert_ne!(a, removed);
            if b != removed {
                assert_eq!(a, b, "key {i} moved from {b} to {a}");
            }
        }
        // An unavailable node counts as removed.
        let mut draining = c.clone();
        draining[1].state = NodeState::Draining;
        assert_eq!(hash_assignments(&s, &draining), after);

        // Coming back restores the original mapping (ring rebuilt from the id set).
        assert_eq!(hash_assignments(&s, &c), before);
    }

    #[test]
    fn consistent_hash_key_fallbacks() {
        let s = ConsistentHash::default();
        let c = nodes(&["a", "b", "c", "d", "e"]);
        let same = |ctx: &SelectContext<'_>| {
            let first = s.select(&c, ctx).unwrap().id.clone();
            (0..20).all(|_| s.select(&c, ctx).unwrap().id == first)
        };
        assert!(same(&SelectContext::new("r").with_key("k")));
        assert!(same(&SelectContext::new("r").with_session(9)));
        assert!(same(&SelectContext::new("r")));
        // The key wins over session and route.
        let a = s
            .select(&c, &SelectContext::new("r1").with_key("k").with_session(1))
            .unwrap();
        let b = s
            .select(&c, &SelectContext::new("r2").with_key("k").with_session(2))
            .unwrap();
        assert_eq!(a.id, b.id);
        // Different sessions spread over nodes.
        let spread: std::collections::BTreeSet<_> = (0..200u64)
            .map(|sid| {
                s.select(&c, &SelectContext::new("r").with_session(sid))
                    .unwrap()
                    .id
                    .clone()
            })
            .collect();
        assert_eq!(spread.len(), 5);
    }

    #[test]
    fn stable_hash_is_fnv1a_based_and_fixed() {
        // Fixed values: a change here would remap every key in a running cluster.
        assert_eq!(stable_hash(&[]), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(&[b"room-1"]), 0x656b_b5e5_6c35_0c3f);
        assert_eq!(stable_hash(&[b""]), stable_hash(&[]));
        assert_eq!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"abc"]));
        assert_ne!(stable_hash(&[b"a"]), stable_hash(&[b"b"]));
    }

    #[test]
    fn custom_closure_index() {
        let c = vec![
            node("a"),
            with_state(node("b"), NodeState::Unavailable),
            node("c"),
        ];
        let ctx = SelectContext::new("r");
        let last = Custom(|c: &[NodeInfo], _: &SelectContext<'_>| Some(c.len() - 1));
        assert_eq!(last.select(&c, &ctx).unwrap().id, "c");
        let out_of_range = Custom(|c: &[NodeInfo], _: &SelectContext<'_>| Some(c.len() + 5));
        assert!(out_of_range.select(&c, &ctx).is_none());
        let ineligible = Custom(|_: &[NodeInfo], _: &SelectContext<'_>| Some(1));
        assert!(ineligible.select(&c, &ctx).is_none());
        let none = Custom(|_: &[NodeInfo], _: &SelectContext<'_>| None);
        assert!(none.select(&c, &ctx).is_none());
        let by_route = Custom(|c: &[NodeInfo], ctx: &SelectContext<'_>| {
            c.iter()
                .position(|n| is_eligible(n, ctx) && ctx.route.ends_with(n.id.as_str()))
        });
        assert_eq!(
            by_route.select(&c, &SelectContext::new("x.a")).unwrap().id,
            "a"
        );
    }

    #[test]
    fn selectors_are_shareable() {
        fn assert_selector<S: Selector>(_: &S) {}
        let shared: Arc<dyn Selector> = Arc::new(Sticky::new(ConsistentHash::new(10)));
        assert_selector(&shared);
        let boxed = by_name("random").unwrap();
        assert_selector(&boxed);
        let c = nodes(&["a"]);
        assert_eq!(shared.select(&c, &SelectContext::new("r")).unwrap().id, "a");
    }
}
