//! Property tests of the selectors over arbitrary clusters: whatever the nodes (states, modules,
//! versions, tags, weights) and the call (routing tags, key, session), a selector only picks a
//! node it may pick, and picks one whenever there is one; a consistent-hash ring moves only the
//! keys of a node that leaves, about a 1/n share of them.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rookery_cluster::selector::{
    self, is_eligible, ConsistentHash, Custom, Filter, Random, RoundRobin, SelectContext, Selector,
    Sticky, Weighted,
};
use rookery_cluster::{DiscoveryEvent, NodeInfo, NodeState, Registry};

/// The module every call in these tests is for; nodes run it or not.
const MODULE: &str = "room";

fn state() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        Just(NodeState::Available),
        Just(NodeState::Draining),
        Just(NodeState::Unavailable),
    ]
}

/// A node with a small vocabulary of modules, versions and tags, so that calls often match some
/// nodes and not others.
fn node(id: String) -> impl Strategy<Value = NodeInfo> {
    (
        state(),
        proptest::sample::subsequence(vec!["room", "chat", "shop"], 0..=3),
        prop_oneof![Just("1.0"), Just("2.0")],
        proptest::option::of(prop_oneof![Just("eu"), Just("us")]),
        0u32..4,
    )
        .prop_map(move |(state, modules, version, zone, weight)| {
            let mut n = NodeInfo::new(id.clone(), "room");
            n.state = state;
            n.modules = modules.into_iter().map(String::from).collect();
            n.version = version.to_string();
            if let Some(z) = zone {
                n.tags.insert("zone".into(), z.into());
            }
            n.weight = weight;
            n
        })
}

/// Up to eight nodes with distinct ids (discovery keys nodes by id).
fn cluster() -> impl Strategy<Value = Vec<NodeInfo>> {
    proptest::collection::btree_set("[a-h][0-9]?", 0..8)
        .prop_flat_map(|ids| ids.into_iter().map(node).collect::<Vec<_>>())
}

/// A call: maybe a routing tag, maybe a hash key, maybe a session.
#[derive(Debug, Clone)]
struct Call {
    zone: Option<&'static str>,
    key: Option<String>,
    session: Option<u64>,
}

fn call() -> impl Strategy<Value = Call> {
    (
        proptest::option::of(prop_oneof![Just("eu"), Just("us")]),
        proptest::option::of("[a-z]{0,6}"),
        proptest::option::of(0u64..4),
    )
        .prop_map(|(zone, key, session)| Call { zone, key, session })
}

/// A selector under test and the rule it must obey, beyond the candidates being the nodes
/// running the module.
struct Case {
    name: &'static str,
    selector: Box<dyn Selector>,
    /// May this node be returned for this call?
    allowed: fn(&NodeInfo, &SelectContext<'_>) -> bool,
    /// Must a node be returned when one is allowed? (A custom selector may decline.)
    total: bool,
}

fn version_2(n: &NodeInfo, ctx: &SelectContext<'_>) -> bool {
    n.version == "2.0" && is_eligible(n, ctx)
}

fn zone_eu(n: &NodeInfo, ctx: &SelectContext<'_>) -> bool {
    n.tags.get("zone").map(String::as_str) == Some("eu") && is_eligible(n, ctx)
}

fn weighted(n: &NodeInfo, ctx: &SelectContext<'_>) -> bool {
    n.weight > 0 && is_eligible(n, ctx)
}

fn draining(n: &NodeInfo, ctx: &SelectContext<'_>) -> bool {
    n.state == NodeState::Draining && selector::has_tags(n, ctx)
}

fn cases() -> Vec<Case> {
    let case = |name: &'static str,
                selector: Box<dyn Selector>,
                allowed: fn(&NodeInfo, &SelectContext<'_>) -> bool| Case {
        name,
        selector,
        allowed,
        total: true,
    };
    vec![
        case("random", Box::new(Random), is_eligible),
        case("round-robin", Box::new(RoundRobin::new()), is_eligible),
        case("weighted", Box::new(Weighted), weighted),
        case(
            "consistent-hash",
            Box::new(ConsistentHash::new(16)),
            is_eligible,
        ),
        case(
            "sticky random",
            Box::new(Sticky::with_capacity(Random, 2)),
            is_eligible,
        ),
        case(
            "sticky consistent-hash",
            Box::new(Sticky::new(ConsistentHash::new(16))),
            is_eligible,
        ),
        case(
            "version filter",
            Box::new(Filter::version(RoundRobin::new(), "2.0")),
            version_2,
        ),
        case(
            "tag filter outside sticky",
            Box::new(Filter::tag(Sticky::new(Random), "zone", "eu")),
            zone_eu,
        ),
        case(
            "draining nodes",
            Box::new(Filter::state(Random, NodeState::Draining)),
            draining,
        ),
        case(
            "by name: consistent-hash",
            selector::by_name("consistent-hash").unwrap(),
            is_eligible,
        ),
        case(
            "by name: weighted",
            selector::by_name("weighted").unwrap(),
            weighted,
        ),
        Case {
            name: "custom picking the last candidate",
            selector: Box::new(Custom(|nodes: &[NodeInfo], _: &SelectContext<'_>| {
                nodes.len().checked_sub(1)
            })),
            allowed: is_eligible,
            total: false,
        },
    ]
}

/// Checks every case for one call against the registry's current view of the module.
fn check_call(registry: &Registry, cases: &[Case], call: &Call) -> Result<(), TestCaseError> {
    let candidates = registry.running(MODULE);
    let tags: Vec<(&str, &str)> = call.zone.iter().map(|z| ("zone", *z)).collect();
    let mut ctx = SelectContext::new("room.room.join").with_tags(&tags);
    ctx.key = call.key.as_deref();
    ctx.session_id = call.session;
    for case in cases {
        let any_allowed = candidates.iter().any(|n| (case.allowed)(n, &ctx));
        match case.selector.select(&candidates, &ctx) {
            Some(picked) => {
                prop_assert!(
                    picked.runs(MODULE),
                    "{}: picked {} which does not run {MODULE}",
                    case.name,
                    picked.id
                );
                prop_assert!(
                    (case.allowed)(picked, &ctx),
                    "{}: picked {picked:?} for {call:?}",
                    case.name
                );
            }
            None => prop_assert!(
                !(case.total && any_allowed),
                "{}: picked nothing for {call:?} among {candidates:?}",
                case.name
            ),
        }
    }
    Ok(())
}

proptest! {
    /// Calls, then a node changing state (a sticky selector must not keep a node that is no
    /// longer eligible), then calls again.
    #[test]
    fn selectors_pick_only_eligible_nodes(
        nodes in cluster(),
        calls in proptest::collection::vec(call(), 1..12),
        change in (any::<proptest::sample::Index>(), state()),
    ) {
        let registry = Registry::default();
        for n in &nodes {
            registry.apply(DiscoveryEvent::Added(n.clone()));
        }
        let cases = cases();
        for call in &calls {
            check_call(&registry, &cases, call)?;
        }
        if !nodes.is_empty() {
            let mut changed = nodes[change.0.index(nodes.len())].clone();
            changed.state = change.1;
            registry.apply(DiscoveryEvent::Updated(changed));
            for call in &calls {
                check_call(&registry, &cases, call)?;
            }
        }
    }

    /// A node leaving a ring of n moves only the keys it owned, and those are about a 1/n share:
    /// over 1,000 keys and 100 virtual nodes, at most 1.5 × 1,000/n + 50 keys move. With 100
    /// virtual nodes a node's share deviates from 1/n by about 12% of it (one standard deviation
    /// over random ids), so the bound is more than four deviations out: a failure means an
    /// unbalanced ring, not bad luck. The node coming back restores every key's owner.
    #[test]
    fn consistent_hash_moves_only_the_leaving_nodes_keys(
        ids in proptest::collection::btree_set("[a-z0-9-]{1,12}", 2..=10),
        leaving in any::<proptest::sample::Index>(),
        salt in "[a-z]{0,4}",
    ) {
        const KEYS: usize = 1_000;
        let nodes: Vec<NodeInfo> = ids.iter().map(|id| NodeInfo::new(id.clone(), "room")).collect();
        let n = nodes.len();
        let gone = nodes[leaving.index(n)].id.clone();
        let rest: Vec<NodeInfo> = nodes.iter().filter(|x| x.id != gone).cloned().collect();
        let ring = ConsistentHash::new(100);
        let keys: Vec<String> = (0..KEYS).map(|i| format!("{salt}room-{i}")).collect();
        let owners = |candidates: &[NodeInfo]| -> Vec<String> {
            keys.iter()
                .map(|k| {
                    let ctx = SelectContext::new("room.room.join").with_key(k);
                    ring.select(candidates, &ctx).expect("an available node").id.clone()
                })
                .collect()
        };
        let before = owners(&nodes);
        let after = owners(&rest);
        let mut moved = 0;
        for (k, (was, is)) in keys.iter().zip(before.iter().zip(&after)) {
            if was != is {
                prop_assert_eq!(was, &gone, "{} moved from {} to {}, but {} left", k, was, is, gone);
                moved += 1;
            }
            prop_assert_ne!(is, &gone);
        }
        let owned_by_gone = before.iter().filter(|o| **o == gone).count();
        prop_assert_eq!(moved, owned_by_gone, "every key of the leaving node moved");
        let bound = KEYS * 3 / (2 * n) + 50;
        prop_assert!(moved <= bound, "{} of {} keys moved with {} nodes (bound {})", moved, KEYS, n, bound);
        prop_assert_eq!(owners(&nodes), before, "the node coming back takes its keys back");
    }
}

/// Shares of a ring are what the bound above assumes: with 100 virtual nodes no node of a
/// 10-node ring owns more than 1.5 × its fair share of 10,000 keys.
#[test]
fn consistent_hash_shares_are_balanced() {
    let nodes: Vec<NodeInfo> = (0..10)
        .map(|i| NodeInfo::new(format!("room-{i}"), "room"))
        .collect();
    let ring = ConsistentHash::new(100);
    let mut shares: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..10_000 {
        let key = format!("key-{i}");
        let ctx = SelectContext::new("r").with_key(&key);
        *shares
            .entry(ring.select(&nodes, &ctx).unwrap().id.clone())
            .or_default() += 1;
    }
    let owners: BTreeSet<&String> = shares.keys().collect();
    assert_eq!(owners.len(), 10, "{shares:?}");
    assert!(shares.values().all(|&s| s <= 1_500), "{shares:?}");
}
