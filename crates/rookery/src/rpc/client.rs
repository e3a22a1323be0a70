//! Calls from this node: typed calls, notifies, broadcasts; the choice of a node; the envelope.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rookery_protocol::Serializer;
use tokio::time::Instant;

use super::envelope::{ser_to_u32, text_field, Envelope, Kind, SessionRef};
use super::{current_trace, Rpc, RpcError, Target};
use crate::cluster::selector::{SelectContext, Selector};
use crate::cluster::NodeInfo;
use crate::middleware::{Call, NextCall};
use crate::typed::RouteName;
use crate::{FromPayload, Session, ToPayload};

/// Options of one call: `CallOptions::default().with_tag("zone", "eu").with_key(room)`.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Deadline; the cluster's `rpc_timeout` when absent.
    pub timeout: Option<Duration>,
    /// Key for consistent-hash selection.
    pub key: Option<String>,
    /// Serializer of the argument and result (JSON by default).
    pub serializer: Option<Serializer>,
    /// The client session the call acts for (its gateway can be reached from the callee).
    pub session: Option<Session>,
    /// How the node is chosen, when the call says ([`CallOptions::with_tag`],
    /// [`CallOptions::with_selector`]); boxed: most calls (every forwarded request) say nothing.
    pub choice: Option<Box<NodeChoice>>,
}

/// A call's own way of choosing its node.
#[derive(Clone, Default)]
pub struct NodeChoice {
    /// Tags the chosen node must carry (all of them), e.g. `("zone", "eu")`.
    pub tags: Vec<(String, String)>,
    /// The selector, in place of the one configured for the target.
    pub selector: Option<Arc<dyn Selector>>,
}

impl std::fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallOptions")
            .field("timeout", &self.timeout)
            .field("key", &self.key)
            .field("serializer", &self.serializer)
            .field("session", &self.session.as_ref().map(Session::id))
            .field("tags", &self.choice.as_ref().map(|c| &c.tags))
            .field(
                "selector",
                &self.choice.as_ref().is_some_and(|c| c.selector.is_some()),
            )
            .finish()
    }
}

impl CallOptions {
    /// Sets the deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the consistent-hash key (the node is chosen by it with a hashing selector).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Requires the chosen node to carry tag `key` = `value`.
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.choice
            .get_or_insert_with(Box::default)
            .tags
            .push((key.into(), value.into()));
        self
    }

    /// Chooses the node with `selector` (any [`Selector`]: a strategy such as
    /// `selector::ConsistentHash`, `selector::NewestVersion`, or a filter of your own).
    pub fn with_selector(mut self, selector: impl Selector) -> Self {
        self.choice.get_or_insert_with(Box::default).selector = Some(Arc::new(selector));
        self
    }

    /// Sets the serializer of the argument and result.
    pub fn with_serializer(mut self, serializer: Serializer) -> Self {
        self.serializer = Some(serializer);
        self
    }

    /// Makes the call on behalf of a client session.
    pub fn with_session(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }
}

impl<'a> Rpc<'a> {
    /// Calls `route` (a typed [`crate::Route`], whose argument and result types the compiler
    /// checks, or a string) on a node of `target` and waits for the typed result.
    pub async fn call<A: ToPayload, R: FromPayload>(
        &self,
        target: impl Into<Target>,
        route: impl RouteName<A, R>,
        arg: A,
    ) -> Result<R, RpcError> {
        self.call_with(target, route, arg, CallOptions::default())
            .await
    }

    /// [`Rpc::call`] with options.
    pub async fn call_with<A: ToPayload, R: FromPayload>(
        &self,
        target: impl Into<Target>,
        route: impl RouteName<A, R>,
        arg: A,
        opts: CallOptions,
    ) -> Result<R, RpcError> {
        let ser = opts.serializer.unwrap_or(Serializer::Json);
        let payload = arg.to_payload(ser).map_err(RpcError::Remote)?;
        let reply = self
            .call_raw(&target.into(), route.route_name(), payload, &opts)
            .await?;
        R::from_payload(ser, reply).map_err(RpcError::Remote)
    }

    /// Sends `route` to a node of `target` without waiting for a result.
    pub async fn notify<A: ToPayload>(
        &self,
        target: impl Into<Target>,
        route: &str,
        arg: A,
    ) -> Result<(), RpcError> {
        let target = target.into();
        let payload = arg.to_payload(Serializer::Json).map_err(RpcError::Remote)?;
        let node = self.pick(&target, route, &CallOptions::default(), None)?;
        let env = self.envelope(
            Kind::Notify,
            text_field(route),
            payload,
            Serializer::Json,
            None,
            None,
        );
        if node.id == self.app.node_id() {
            let app = self.app.clone();
            let route = route.to_string();
            app.inner().tasks.spawn({
                let app = app.clone();
                async move {
                    let session = Session::detached(Serializer::Json);
                    if let Err(e) = app.dispatch(&route, env.payload, session, None).await {
                        tracing::debug!(%route, error = %e, "local notify failed");
                    }
                }
            });
            return Ok(());
        }
        Ok(self
            .cluster()
            .transport
            .notify(&node, env.to_bytes())
            .await?)
    }

    /// Sends `route` to every available node of a type (this one included if it is of that
    /// type); returns how many nodes it was sent to. (Pushes to users: [`crate::App::broadcast`].)
    pub async fn notify_nodes<A: ToPayload>(
        &self,
        node_type: &str,
        route: &str,
        arg: A,
    ) -> Result<usize, RpcError> {
        let payload = arg.to_payload(Serializer::Json).map_err(RpcError::Remote)?;
        let nodes: Vec<NodeInfo> = self
            .cluster()
            .registry
            .of_type(node_type)
            .iter()
            .filter(|n| n.is_available())
            .cloned()
            .collect();
        for n in &nodes {
            self.notify(
                Target::Node(n.id.clone()),
                route,
                crate::Raw(payload.clone()),
            )
            .await?;
        }
        Ok(nodes.len())
    }

    /// Calls every available node of a target (`Type`: nodes of a type; `Module`: nodes running
    /// a module; `Node`/`Logical`: that node) and collects each node's result by node id.
    pub async fn call_all<A: ToPayload, R: FromPayload>(
        &self,
        target: impl Into<Target>,
        route: impl RouteName<A, R>,
        arg: A,
    ) -> Vec<(String, Result<R, RpcError>)> {
        let route = route.route_name();
        let payload = match arg.to_payload(Serializer::Json) {
            Ok(p) => p,
            Err(e) => return vec![(String::new(), Err(RpcError::Remote(e)))],
        };
        let reg = &self.cluster().registry;
        let nodes: Vec<NodeInfo> = match target.into() {
            Target::Type(t) => reg.of_type(&t).to_vec(),
            Target::Module(m) => reg.running(&m).to_vec(),
            Target::Node(id) => reg.get(&id).into_iter().collect(),
            Target::Logical(a) => reg.by_logical(a).into_iter().collect(),
        };
        let calls = nodes.iter().filter(|n| n.is_available()).map(|n| {
            let payload = payload.clone();
            async move {
                let r = self
                    .call_raw(
                        &Target::Node(n.id.clone()),
                        route,
                        payload,
                        &CallOptions::default(),
                    )
                    .await
                    .and_then(|b| R::from_payload(Serializer::Json, b).map_err(RpcError::Remote));
                (n.id.clone(), r)
            }
        });
        futures_util::future::join_all(calls).await
    }

    /// Calls with an encoded payload; the result is encoded too. The node's call middleware
    /// ([`crate::ServerBuilder::call_middleware`]) runs around it.
    pub async fn call_raw(
        &self,
        target: &Target,
        route: &str,
        payload: Bytes,
        opts: &CallOptions,
    ) -> Result<Bytes, RpcError> {
        let layers = &self.app.inner().call_layers;
        if layers.is_empty() {
            return self.call_unlayered(target, route, payload, opts).await;
        }
        let call = Call {
            target: target.clone(),
            route: route.to_string(),
            payload,
            options: opts.clone(),
        };
        NextCall::new(layers, self).run(call).await
    }

    /// A call without the node's call middleware (system operations, and the end of the
    /// middleware's chain).
    pub(crate) async fn call_unlayered(
        &self,
        target: &Target,
        route: &str,
        payload: Bytes,
        opts: &CallOptions,
    ) -> Result<Bytes, RpcError> {
        self.call_inner(target, route, text_field(route), payload, opts, false)
            .await
    }

    /// `route_field`: `route` as the envelope carries it. `from_client`: a gateway forwarding
    /// a client request (internal routes are refused).
    pub(super) async fn call_inner(
        &self,
        target: &Target,
        route: &str,
        route_field: Bytes,
        payload: Bytes,
        opts: &CallOptions,
        from_client: bool,
    ) -> Result<Bytes, RpcError> {
        let timeout = opts
            .timeout
            .unwrap_or_else(|| self.app.config().cluster.rpc_timeout());
        // One clock read for both (tokio's clock, so that a paused test clock sets deadlines).
        let now = Instant::now();
        let deadline = now + timeout;
        let started = now.into_std();
        let ser = opts.serializer.unwrap_or(Serializer::Json);
        let session_id = opts.session.as_ref().map(Session::id);
        let result = self
            .call_picked(
                target,
                route,
                route_field,
                payload,
                opts,
                from_client,
                deadline,
                timeout,
                ser,
                session_id,
            )
            .await;
        let outcome = match &result {
            Ok(_) => None,
            Err(RpcError::Remote(e)) => Some(e.code().to_string()),
            Err(e) => Some(e.kind().to_string()),
        };
        self.cluster().rpc_metrics.record(
            &target.metric_label(),
            outcome,
            started.elapsed().as_secs_f64(),
        );
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_picked(
        &self,
        target: &Target,
        route: &str,
        route_field: Bytes,
        payload: Bytes,
        opts: &CallOptions,
        from_client: bool,
        deadline: Instant,
        timeout: Duration,
        ser: Serializer,
        session_id: Option<u64>,
    ) -> Result<Bytes, RpcError> {
        let node = self.pick(target, route, opts, session_id)?;
        if node.id == self.app.node_id() {
            let session = opts
                .session
                .clone()
                .unwrap_or_else(|| Session::detached(ser));
            // Boxed: a local dispatch's state (the handler's future under a deadline) would
            // otherwise be part of every remote call's future, copied into each forwarded
            // request's box.
            return match Box::pin(tokio::time::timeout_at(
                deadline,
                self.app.dispatch(route, payload, session, Some(timeout)),
            ))
            .await
            {
                Ok(r) => r.map_err(RpcError::Remote),
                Err(_) => Err(RpcError::Timeout),
            };
        }
        // Encoded in a block: the envelope is not kept across the wait for the reply.
        let frame = {
            let session_ref = opts.session.as_ref().map(|s| self.session_ref(s));
            let mut env = self.envelope(
                Kind::Call,
                route_field,
                payload,
                ser,
                session_ref,
                Some(timeout),
            );
            env.from_client = from_client;
            env.to_bytes()
        };
        if let Some(s) = &opts.session {
            s.touch(&node.id);
        }
        let reply = self
            .cluster()
            .transport
            .request(&node, frame, deadline)
            .await?;
        let reply = Envelope::from_bytes(reply).map_err(RpcError::Remote)?;
        let (payload, data) = reply.into_result().map_err(RpcError::Remote)?;
        if let (Some(s), Some(data)) = (&opts.session, data) {
            apply_session_data(s, &data);
        }
        Ok(payload)
    }

    pub(super) fn cluster(&self) -> &'a crate::cluster::runtime::ClusterState {
        &self.app.inner().cluster
    }

    pub(super) fn session_ref(&self, s: &Session) -> SessionRef {
        SessionRef {
            id: s.id(),
            uid: s.uid().map(|u| text_field(&u)).unwrap_or_default(),
            gateway: match s.gateway() {
                Some(g) => text_field(g),
                None => self.cluster().source.clone(),
            },
            data: s.data_json(),
            serializer: ser_to_u32(s.serializer()),
            remote: s.remote_text(),
        }
    }

    pub(super) fn envelope(
        &self,
        kind: Kind,
        route: Bytes,
        payload: Bytes,
        ser: Serializer,
        session: Option<SessionRef>,
        timeout: Option<Duration>,
    ) -> Envelope {
        Envelope {
            kind: kind as i32,
            route,
            payload,
            serializer: ser_to_u32(ser),
            session,
            timeout_ms: timeout.map(|t| t.as_millis() as u64).unwrap_or(0),
            source: self.cluster().source.clone(),
            trace_id: current_trace(),
            ..Envelope::default()
        }
    }

    /// Chooses the node for a call.
    fn pick(
        &self,
        target: &Target,
        route: &str,
        opts: &CallOptions,
        session_id: Option<u64>,
    ) -> Result<Picked, RpcError> {
        let c = self.cluster();
        let (candidates, selector_key) = match target {
            Target::Node(id) => {
                return c
                    .registry
                    .get(id)
                    .map(|n| Picked::Owned(Box::new(n)))
                    .ok_or_else(|| RpcError::NoNode(format!("node {id}")))
            }
            Target::Logical(a) => {
                return c
                    .registry
                    .by_logical(*a)
                    .map(|n| Picked::Owned(Box::new(n)))
                    .ok_or_else(|| RpcError::NoNode(format!("logical address {a}")))
            }
            Target::Type(t) => (c.registry.of_type(t), t),
            Target::Module(m) => (c.registry.running(m), m),
        };
        // No allocation without tags (the common case).
        let choice = opts.choice.as_deref();
        let tags: Vec<(&str, &str)> = choice
            .map(|c| {
                c.tags
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let ctx = SelectContext {
            route,
            key: opts.key.as_deref(),
            session_id,
            tags: &tags,
        };
        let selector = match choice.and_then(|c| c.selector.as_deref()) {
            Some(s) => s,
            None => c.selector(selector_key),
        };
        let chosen = selector
            .select(&candidates, &ctx)
            .ok_or_else(|| RpcError::NoNode(selector_key.clone()))?;
        // Selectors return a reference into `candidates`: keep the shared snapshot and the
        // position (a selector returning some other node gets a copy of it).
        Ok(
            match candidates.iter().position(|n| std::ptr::eq(n, chosen)) {
                Some(i) => Picked::Shared(candidates.clone(), i),
                None => Picked::Owned(Box::new(chosen.clone())),
            },
        )
    }
}

/// The node chosen for a call: an entry of a shared registry snapshot (no copy), or a copy
/// (boxed: the choice is held while the call waits, so it is part of every call's future).
enum Picked {
    Shared(Arc<[NodeInfo]>, usize),
    Owned(Box<NodeInfo>),
}

impl std::ops::Deref for Picked {
    type Target = NodeInfo;
    fn deref(&self) -> &NodeInfo {
        match self {
            Picked::Shared(set, i) => &set[*i],
            Picked::Owned(n) => n,
        }
    }
}

fn apply_session_data(session: &Session, data: &[u8]) {
    let d = match serde_json::from_slice::<DataChanges>(data) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(session = session.id(), error = %e, "bad session data in a reply");
            return;
        }
    };
    if session.gateway().is_none() {
        session.merge_data(&d.node, d.changes);
        return;
    }
    // A backend's copy (the call was made for a session of another gateway): the changes
    // become this node's, and reach the gateway as its own do.
    for c in d.changes {
        match c.value {
            Some(v) => session.set(c.key, v),
            None => {
                session.remove(&c.key);
            }
        }
    }
}

/// Changes of a session's data a node made, as a reply or `sys.session.data` carries them.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct DataChanges {
    /// The node that made them.
    pub node: String,
    /// In the order they were made.
    pub changes: Vec<crate::session::DataChange>,
}
