//! RPC between modules, across nodes or within one: typed calls with deadlines, notifies,
//! broadcasts; gateway forwarding of client requests; backends acting on remote sessions.
//!
//! Addressing ([`Target`]): a node type (a selector picks one node), a node id (`type@id`), a
//! logical address, or the nodes running a module. A call whose chosen node is this node runs
//! the handler directly, with no envelope and no transport.
//!
//! Delivery: calls are at-most-once; a call either gets the handler's reply, the handler's
//! error, or an [`RpcError`] (timeout, no node, link closed) by its deadline; it never hangs.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rookery_protocol::Serializer;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::AppInner;
use crate::cluster::envelope::{
    ser_from_u32, ser_to_u32, text, text_field, Envelope, Kind, SessionRef, SysBind, SysBound,
    SysClosed, SysKick, SysPush, SysPushMany, SysUidKick, SysUidPush,
};
use crate::cluster::selector::SelectContext;
use crate::cluster::{FrameHandler, LogicalAddr, NodeInfo, TransportError};
use crate::payload::EncodedOnce;
use crate::{App, Code, Error, FromPayload, Session, ToPayload};

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Any available node of a type; the type's selector picks.
    Type(String),
    /// Any available node running a module; the module's selector picks.
    Module(String),
    /// One node by id.
    Node(String),
    /// One node by logical address.
    Logical(LogicalAddr),
}

impl Target {
    /// Parses `type@id` (a node), `c.t.i` (a logical address) or `type`.
    pub fn parse(s: &str) -> Self {
        if let Some((_, id)) = s.split_once('@') {
            return Self::Node(id.to_string());
        }
        if let Ok(a) = s.parse::<LogicalAddr>() {
            return Self::Logical(a);
        }
        Self::Type(s.to_string())
    }
}

impl Target {
    /// A low-cardinality label for metrics: the type or module, or the node id.
    pub fn label(&self) -> String {
        match self {
            Target::Type(t) | Target::Module(t) => t.clone(),
            Target::Node(id) => id.clone(),
            Target::Logical(a) => a.to_string(),
        }
    }
}

impl RpcError {
    /// A short name of the failure kind (`timeout`, `no_node`, `remote`, `closed`, `transport`).
    pub fn kind(&self) -> &'static str {
        match self {
            RpcError::Timeout => "timeout",
            RpcError::NoNode(_) => "no_node",
            RpcError::Remote(_) => "remote",
            RpcError::Closed(_) => "closed",
            RpcError::Transport(_) => "transport",
        }
    }
}

impl From<&str> for Target {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl From<LogicalAddr> for Target {
    fn from(a: LogicalAddr) -> Self {
        Self::Logical(a)
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The deadline passed.
    #[error("call timed out")]
    Timeout,
    /// No available node matches the target.
    #[error("no node available for {0}")]
    NoNode(String),
    /// The handler answered with an error (its code is kept).
    #[error("{0}")]
    Remote(Error),
    /// The link to the node closed with the call in flight (node died or left).
    #[error("link closed: {0}")]
    Closed(String),
    /// Any other transport failure.
    #[error("transport: {0}")]
    Transport(String),
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Timeout => Error::new(Code::Timeout, "call timed out"),
            RpcError::NoNode(t) => {
                Error::new(Code::Unavailable, format!("no node available for {t}"))
            }
            RpcError::Remote(e) => e,
            RpcError::Closed(n) => Error::new(Code::Unavailable, format!("node {n} went away")),
            RpcError::Transport(m) => Error::new(Code::Unavailable, m),
        }
    }
}

impl From<TransportError> for RpcError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Timeout => RpcError::Timeout,
            TransportError::Closed(n) => RpcError::Closed(n),
            other => RpcError::Transport(other.to_string()),
        }
    }
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Deadline; the cluster's `rpc_timeout` when absent.
    pub timeout: Option<Duration>,
    /// Key for consistent-hash selection.
    pub key: Option<String>,
    /// Serializer of the argument and result (JSON by default).
    pub serializer: Option<Serializer>,
    /// The client session the call acts for (its gateway can be reached from the callee).
    pub session: Option<Session>,
}

/// RPC on behalf of a node: `app.rpc()`.
#[derive(Clone, Copy)]
pub struct Rpc<'a> {
    app: &'a App,
}

impl App {
    /// RPC from this node.
    pub fn rpc(&self) -> Rpc<'_> {
        Rpc { app: self }
    }
}

impl<'a> Rpc<'a> {
    /// Calls `route` on a node of `target` and waits for the typed result.
    pub async fn call<A: ToPayload, R: FromPayload>(
        &self,
        target: impl Into<Target>,
        route: &str,
        arg: A,
    ) -> Result<R, RpcError> {
        self.call_with(target, route, arg, CallOptions::default())
            .await
    }

    /// [`Rpc::call`] with options.
    pub async fn call_with<A: ToPayload, R: FromPayload>(
        &self,
        target: impl Into<Target>,
        route: &str,
        arg: A,
        opts: CallOptions,
    ) -> Result<R, RpcError> {
        let ser = opts.serializer.unwrap_or(Serializer::Json);
        let payload = arg.to_payload(ser).map_err(RpcError::Remote)?;
        let reply = self.call_raw(&target.into(), route, payload, &opts).await?;
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
        let node = self.pick(&target, route, None, None)?;
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
    /// type); returns how many nodes it was sent to.
    pub async fn broadcast<A: ToPayload>(
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
        route: &str,
        arg: A,
    ) -> Vec<(String, Result<R, RpcError>)> {
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

    /// Calls with an encoded payload; the result is encoded too.
    pub async fn call_raw(
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
    async fn call_inner(
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
        self.cluster()
            .rpc_metrics
            .record(target, outcome, started.elapsed().as_secs_f64());
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
        let node = self.pick(target, route, opts.key.as_deref(), session_id)?;
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

    /// Forwards a client request for a module that runs elsewhere (gateway side).
    /// `route_field` is `route` as the envelope carries it (the client's buffer, not a copy).
    pub(crate) async fn forward(
        &self,
        route: &str,
        route_field: Bytes,
        payload: Bytes,
        session: &Session,
    ) -> Result<Bytes, Error> {
        let module = route_module(route).unwrap_or(route);
        let key = self.routing_key(module, &payload, session);
        let opts = CallOptions {
            timeout: Some(self.app.config().gateway.request_timeout()),
            key,
            serializer: Some(session.serializer()),
            session: Some(session.clone()),
        };
        self.call_inner(
            &Target::Module(module.to_string()),
            route,
            route_field,
            payload,
            &opts,
            true,
        )
        .await
        .map_err(Error::from)
    }

    /// The consistent-hash key for a client request, per `[cluster.routing.MODULE] key`.
    fn routing_key(&self, module: &str, payload: &[u8], session: &Session) -> Option<String> {
        let field = self
            .app
            .config()
            .cluster
            .routing
            .get(module)?
            .key
            .as_ref()?;
        if session.serializer() == Serializer::Json {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
                match &v[field] {
                    serde_json::Value::String(s) => return Some(s.clone()),
                    serde_json::Value::Null => {}
                    other => return Some(other.to_string()),
                }
            }
        }
        session.uid().map(|u| u.to_string())
    }

    /// Pushes to users wherever they are connected: local sessions directly, the others through
    /// their gateways (one message per gateway for all the users). Returns the local deliveries.
    pub async fn push_to_uids(
        &self,
        uids: &[&str],
        route: &str,
        payload: impl ToPayload,
    ) -> Result<usize, RpcError> {
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for uid in uids {
            match self.app.sessions().by_uid(uid) {
                Some(s) => local.push(s),
                None => remote.push(uid.to_string()),
            }
        }
        let delivered = crate::session::fan_out(&local, route, &payload);
        if !remote.is_empty() {
            let mut enc = EncodedOnce::new(&payload);
            let msg = SysUidPush {
                uids: remote,
                route: route.to_string(),
                json: enc.get(Serializer::Json).ok(),
                proto: enc.get(Serializer::Protobuf).ok(),
            };
            self.notify_other_frontends("sys.uid.push", prost::Message::encode_to_vec(&msg))
                .await;
        }
        Ok(delivered)
    }

    /// Pushes to every session on every gateway; returns the local deliveries.
    pub async fn broadcast_all(&self, route: &str, payload: impl ToPayload) -> usize {
        let delivered = crate::session::fan_out(&self.app.sessions().all(), route, &payload);
        let mut enc = EncodedOnce::new(&payload);
        let msg = SysUidPush {
            uids: Vec::new(),
            route: route.to_string(),
            json: enc.get(Serializer::Json).ok(),
            proto: enc.get(Serializer::Protobuf).ok(),
        };
        self.notify_other_frontends("sys.broadcast", prost::Message::encode_to_vec(&msg))
            .await;
        delivered
    }

    /// Kicks a user wherever it is connected.
    pub async fn kick_uid(&self, uid: &str, reason: &str) {
        self.app.sessions().kick_uid(uid, reason);
        let msg = SysUidKick {
            uid: uid.to_string(),
            reason: reason.to_string(),
        };
        self.notify_other_frontends("sys.uid.kick", prost::Message::encode_to_vec(&msg))
            .await;
    }

    /// Tells the nodes a closed session's requests went to that it ended (gateway side).
    pub(crate) async fn session_closed(&self, session: &Session) {
        let touched = session.touched();
        if touched.is_empty() {
            return;
        }
        let msg = SysClosed {
            session: Some(self.session_ref(session)),
            reason: session.close_reason().unwrap_or_default().to_string(),
        };
        let body = Bytes::from(prost::Message::encode_to_vec(&msg));
        for id in touched {
            let Some(node) = self.cluster().registry.get(&id) else {
                continue;
            };
            let env = self.envelope(
                Kind::Notify,
                Bytes::from_static(b"sys.session.closed"),
                body.clone(),
                Serializer::Json,
                None,
                None,
            );
            if let Err(e) = self.cluster().transport.notify(&node, env.to_bytes()).await {
                tracing::debug!(node = %id, error = %e, "session-closed notify failed");
            }
        }
    }

    /// Tells the other gateways a uid was bound here, so that older sessions of the same uid
    /// elsewhere are kicked (the binding with the larger stamp wins everywhere).
    pub(crate) async fn announce_bind(&self, session: &Session) {
        let Some(msg) = self.bound_msg(session) else {
            return;
        };
        self.notify_other_frontends("sys.uid.bound", prost::Message::encode_to_vec(&msg))
            .await;
    }

    /// Tells one gateway of a binding here (that it has an older session of the uid to kick),
    /// or, for `None`, only this gateway's binding clock (a gateway that joins).
    pub(crate) async fn announce_bind_to(&self, gateway: &str, session: Option<&Session>) {
        let msg = match session {
            Some(s) => match self.bound_msg(s) {
                Some(m) => m,
                None => return,
            },
            None => SysBound {
                uid: String::new(),
                bound_at: self.app.sessions().binding_clock(),
                gateway: self.app.node_id().to_string(),
            },
        };
        let Some(node) = self.cluster().registry.get(gateway) else {
            return;
        };
        let env = self.envelope(
            Kind::Notify,
            Bytes::from_static(b"sys.uid.bound"),
            Bytes::from(prost::Message::encode_to_vec(&msg)),
            Serializer::Json,
            None,
            None,
        );
        if let Err(e) = self.cluster().transport.notify(&node, env.to_bytes()).await {
            tracing::debug!(%gateway, error = %e, "binding notify failed");
        }
    }

    fn bound_msg(&self, session: &Session) -> Option<SysBound> {
        Some(SysBound {
            uid: session.uid()?.to_string(),
            bound_at: session.bound_at(),
            gateway: self.app.node_id().to_string(),
        })
    }

    async fn notify_other_frontends(&self, route: &str, body: Vec<u8>) {
        let body = Bytes::from(body);
        for gw in self.cluster().registry.frontends() {
            if gw.id == self.app.node_id() {
                continue;
            }
            let env = self.envelope(
                Kind::Notify,
                text_field(route),
                body.clone(),
                Serializer::Json,
                None,
                None,
            );
            if let Err(e) = self.cluster().transport.notify(&gw, env.to_bytes()).await {
                tracing::debug!(gateway = %gw.id, %route, error = %e, "frontend notify failed");
            }
        }
    }

    fn cluster(&self) -> &'a crate::cluster::runtime::ClusterState {
        &self.app.inner().cluster
    }

    fn session_ref(&self, s: &Session) -> SessionRef {
        SessionRef {
            id: s.id(),
            uid: s.uid().map(|u| text_field(&u)).unwrap_or_default(),
            gateway: match s.gateway() {
                Some(g) => text_field(g),
                None => self.cluster().source.clone(),
            },
            data: s.data_json(),
            serializer: ser_to_u32(s.serializer()),
        }
    }

    fn envelope(
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
        key: Option<&str>,
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
        let ctx = SelectContext {
            route,
            key,
            session_id,
            tags: &[],
        };
        let chosen = c
            .selector(selector_key)
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

/// The module of a client route `module.handler.method`; None unless it has exactly three parts.
/// (A byte scan: `split('.')` sets up a general pattern searcher per call.)
pub(crate) fn route_module(route: &str) -> Option<&str> {
    let mut dots = route
        .bytes()
        .enumerate()
        .filter_map(|(i, b)| (b == b'.').then_some(i));
    let first = dots.next()?;
    (dots.next().is_some() && dots.next().is_none()).then(|| &route[..first])
}

/// Pushes a body sent in both serializer forms to each session in the form it uses.
fn push_both_forms(sessions: &[Session], m: &SysUidPush) {
    for s in sessions {
        let body = match s.serializer() {
            Serializer::Json => m.json.clone(),
            Serializer::Protobuf => m.proto.clone(),
        };
        if let Some(p) = body.and_then(|b| s.encode_push(&m.route, b).ok()) {
            let _ = s.send_packet(p);
        }
    }
}

/// The current trace id in envelope form (empty when there is none).
fn current_trace() -> Bytes {
    crate::telemetry::current_trace_id()
        .map(|id| Bytes::copy_from_slice(&crate::telemetry::trace_id_hex(id)))
        .unwrap_or_default()
}

fn apply_session_data(session: &Session, data: &[u8]) {
    if let Ok(map) = serde_json::from_slice::<HashMap<String, serde_json::Value>>(data) {
        session.replace_data(map);
    }
}

/// A backend's way to reach the gateway that holds a session: operations are queued in order
/// and sent by one task per gateway.
#[derive(Clone)]
pub(crate) struct RemoteSession {
    gateway: Arc<str>,
    /// This node's id, as the envelopes' `source`.
    source: Bytes,
    ops: mpsc::Sender<Bytes>,
}

impl RemoteSession {
    pub(crate) fn new(gateway: &str, source: Bytes, ops: mpsc::Sender<Bytes>) -> Self {
        Self {
            gateway: Arc::from(gateway),
            source,
            ops,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.ops.is_closed()
    }

    pub(crate) fn gateway(&self) -> &str {
        &self.gateway
    }

    fn send(&self, route: &str, body: Vec<u8>) -> Result<(), Error> {
        let env = Envelope {
            kind: Kind::Notify as i32,
            route: text_field(route),
            payload: Bytes::from(body),
            source: self.source.clone(),
            trace_id: current_trace(),
            ..Envelope::default()
        };
        self.ops.try_send(env.to_bytes()).map_err(|_| {
            Error::new(
                Code::Unavailable,
                format!("gateway {} unreachable or overloaded", self.gateway),
            )
        })
    }

    pub(crate) fn push(&self, sid: u64, route: &str, body: Bytes) -> Result<(), Error> {
        let msg = SysPush {
            sid,
            route: route.to_string(),
            body,
        };
        self.send("sys.session.push", prost::Message::encode_to_vec(&msg))
    }

    pub(crate) fn push_many(&self, sids: Vec<u64>, route: &str, body: Bytes) -> Result<(), Error> {
        let msg = SysPushMany {
            sids,
            route: route.to_string(),
            body,
        };
        self.send("sys.session.push_many", prost::Message::encode_to_vec(&msg))
    }

    pub(crate) fn kick(&self, sid: u64, reason: &str) -> Result<(), Error> {
        let msg = SysKick {
            sid,
            reason: reason.to_string(),
        };
        self.send("sys.session.kick", prost::Message::encode_to_vec(&msg))
    }
}

impl App {
    /// Runs a client-visible route without a client session (the HTTP gateway's path): a local
    /// handler, or a node running the route's module. Internal routes and unknown routes are
    /// `RK-404`; routes that need a login are `RK-401`.
    pub async fn request(
        &self,
        route: &str,
        payload: Bytes,
        serializer: Serializer,
    ) -> Result<Bytes, Error> {
        let session = Session::detached(serializer);
        let trace = crate::telemetry::new_trace_id();
        if let Some(entry) = self.router().get(route).cloned() {
            if entry.internal {
                return Err(Error::not_found(route));
            }
            let timeout = self.config().gateway.request_timeout();
            return self
                .invoke(&entry, session, payload, timeout, trace, None)
                .await;
        }
        match route_module(route) {
            Some(module) if module != "sys" && !self.cluster().running(module).is_empty() => {}
            _ => return Err(Error::not_found(route)),
        }
        let rpc = self.rpc();
        let forward = rpc.forward(route, text_field(route), payload, &session);
        crate::telemetry::with_trace_id(trace, forward).await
    }

    /// Runs a route on this node: the handler of a local module (internal routes included).
    pub(crate) async fn dispatch(
        &self,
        route: &str,
        payload: Bytes,
        session: Session,
        timeout: Option<Duration>,
    ) -> Result<Bytes, Error> {
        let entry = self
            .router()
            .get(route)
            .cloned()
            .ok_or_else(|| Error::not_found(route))?;
        let timeout = timeout.unwrap_or_else(|| self.config().gateway.request_timeout());
        let trace =
            crate::telemetry::current_trace_id().unwrap_or_else(crate::telemetry::new_trace_id);
        self.invoke(&entry, session, payload, timeout, trace, None)
            .await
    }

    /// The link to a gateway for remote sessions (created on first use).
    pub(crate) fn gateway_link(&self, gateway: &str) -> RemoteSession {
        self.inner().cluster.gateway_link(gateway, self)
    }

    /// Binds a uid to a session wherever its connection is.
    pub(crate) async fn bind_session(&self, session: &Session, uid: &str) -> Result<(), Error> {
        let Some(link) = session.remote_link() else {
            self.sessions().bind(session, uid)?;
            self.rpc().announce_bind(session).await;
            return Ok(());
        };
        let msg = SysBind {
            sid: session.id(),
            uid: uid.to_string(),
        };
        let payload = Bytes::from(prost::Message::encode_to_vec(&msg));
        self.rpc()
            .call_raw(
                &Target::Node(link.gateway().to_string()),
                "sys.session.bind",
                payload,
                &CallOptions::default(),
            )
            .await?;
        session.set_uid(Some(Arc::from(uid)));
        Ok(())
    }
}

/// Receives frames from other nodes and runs them here.
pub(crate) struct RpcServer {
    pub(crate) app: Weak<AppInner>,
}

impl RpcServer {
    fn app(&self) -> Option<App> {
        self.app.upgrade().map(App::from_inner)
    }

    /// Runs an inbound envelope under the trace id it carries (a new one if none).
    async fn run_traced(&self, env: Envelope) -> Result<(Bytes, Option<Bytes>), Error> {
        let trace = text(&env.trace_id)
            .ok()
            .and_then(crate::telemetry::parse_trace_id)
            .unwrap_or_else(crate::telemetry::new_trace_id);
        crate::telemetry::with_trace_id(trace, self.run(env)).await
    }

    async fn run(&self, env: Envelope) -> Result<(Bytes, Option<Bytes>), Error> {
        let app = self
            .app()
            .ok_or_else(|| Error::new(Code::Unavailable, "node stopping"))?;
        let _in_flight = app.inner().cluster.inbound.token();
        let route = text(&env.route)?;
        if route.starts_with("sys.") {
            if let Some(r) = app.system(route, &env.payload).await {
                return r.map(|b| (b, None));
            }
        }
        let entry = app
            .router()
            .get(route)
            .filter(|e| !(env.from_client && e.internal))
            .cloned()
            .ok_or_else(|| Error::not_found(route))?;
        let ser = ser_from_u32(env.serializer);
        let session = match &env.session {
            Some(s) => {
                let session = app.remote_session(s)?;
                app.inner().remote_sessions.seen(&session);
                session
            }
            None => Session::detached(ser),
        };
        let timeout = match env.timeout_ms {
            0 => app.config().gateway.request_timeout(),
            ms => Duration::from_millis(ms),
        };
        let trace =
            crate::telemetry::current_trace_id().unwrap_or_else(crate::telemetry::new_trace_id);
        let out = app
            .invoke(&entry, session.clone(), env.payload, timeout, trace, None)
            .await?;
        let data = session.data_dirty().then(|| match session.data_json() {
            b if b.is_empty() => Bytes::from_static(b"{}"),
            b => b,
        });
        Ok((out, data))
    }
}

#[async_trait]
impl FrameHandler for RpcServer {
    async fn request(&self, frame: Bytes) -> Bytes {
        let reply = match Envelope::from_bytes(frame) {
            Ok(env) => match self.run_traced(env).await {
                Ok((payload, data)) => Envelope::reply(payload, data),
                Err(e) => Envelope::error(&e),
            },
            Err(e) => Envelope::error(&e),
        };
        reply.to_bytes()
    }

    async fn notify(&self, frame: Bytes) {
        match Envelope::from_bytes(frame) {
            Ok(env) => {
                let route = String::from_utf8_lossy(&env.route).into_owned();
                if let Err(e) = self.run_traced(env).await {
                    tracing::debug!(%route, error = %e, "inbound notify failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "malformed inbound frame"),
        }
    }
}

impl App {
    /// Another gateway bound a uid (or, with an empty uid, told its binding clock). Of two
    /// sessions of the same uid, the one with the smaller (stamp, gateway id) is kicked; both
    /// gateways compare the same pair, and the one keeping its session tells the other, so
    /// exactly one survives whatever order the messages arrive in.
    async fn uid_bound_elsewhere(&self, m: SysBound) {
        self.sessions().observe_binding(m.bound_at);
        if m.uid.is_empty() || m.gateway == self.node_id() {
            return;
        }
        let Some(s) = self.sessions().by_uid(&m.uid) else {
            return;
        };
        let mine = (s.bound_at(), self.node_id());
        if mine < (m.bound_at, m.gateway.as_str()) {
            s.kick_as(
                crate::telemetry::DisconnectReason::DuplicateLogin,
                crate::REASON_DUPLICATE_LOGIN,
            );
        } else {
            // Ours is newer: the other gateway may have bound its session after it heard of
            // ours, and then nobody else would tell it.
            self.rpc().announce_bind_to(&m.gateway, Some(&s)).await;
        }
    }

    /// Handles the built-in `sys.*` routes of gateways; None for any other route.
    async fn system(&self, route: &str, payload: &Bytes) -> Option<Result<Bytes, Error>> {
        fn decode<M: prost::Message + Default>(b: &Bytes) -> Result<M, Error> {
            M::decode(b.clone()).map_err(|e| Error::bad_request(format!("bad system message: {e}")))
        }
        let sessions = self.sessions();
        let r = match route {
            "sys.session.push" => decode::<SysPush>(payload).and_then(|m| {
                let s = sessions
                    .get(m.sid)
                    .ok_or_else(|| Error::new(Code::NotFound, "session gone"))?;
                s.send_packet(s.encode_push(&m.route, m.body)?)
            }),
            "sys.session.kick" => decode::<SysKick>(payload).map(|m| {
                if let Some(s) = sessions.get(m.sid) {
                    s.kick(&m.reason);
                }
            }),
            "sys.session.bind" => match decode::<SysBind>(payload) {
                Ok(m) => match sessions.get(m.sid) {
                    Some(s) => match sessions.bind(&s, &m.uid) {
                        Ok(()) => {
                            self.rpc().announce_bind(&s).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    None => Err(Error::new(Code::Unavailable, "session closed")),
                },
                Err(e) => Err(e),
            },
            "sys.session.push_many" => decode::<SysPushMany>(payload).map(|m| {
                let mut packet = None;
                for sid in m.sids {
                    let Some(s) = sessions.get(sid) else { continue };
                    if packet.is_none() {
                        packet = s.encode_push(&m.route, m.body.clone()).ok();
                    }
                    if let Some(p) = &packet {
                        let _ = s.send_packet(p.clone());
                    }
                }
            }),
            "sys.uid.bound" => match decode::<SysBound>(payload) {
                Ok(m) => {
                    self.uid_bound_elsewhere(m).await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            "sys.session.closed" => match decode::<SysClosed>(payload) {
                Ok(SysClosed {
                    session: Some(r),
                    reason,
                }) => self.remote_session_closed(&r, &reason).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
            "sys.uid.push" => decode::<SysUidPush>(payload).map(|m| {
                let targets: Vec<Session> =
                    m.uids.iter().filter_map(|u| sessions.by_uid(u)).collect();
                push_both_forms(&targets, &m);
            }),
            "sys.broadcast" => decode::<SysUidPush>(payload).map(|m| {
                push_both_forms(&sessions.all(), &m);
            }),
            "sys.uid.kick" => decode::<SysUidKick>(payload).map(|m| {
                sessions.kick_uid(&m.uid, &m.reason);
            }),
            _ => return None,
        };
        Some(r.map(|()| Bytes::new()))
    }

    /// The copy of another gateway's session that a forwarded request or notice carries.
    fn remote_session(&self, r: &SessionRef) -> Result<Session, Error> {
        // Most sessions carry no data: skip the JSON parse then.
        let data = if r.data.is_empty() {
            HashMap::new()
        } else {
            serde_json::from_slice(&r.data).unwrap_or_default()
        };
        Ok(Session::remote(
            r.id,
            Some(text(&r.uid)?),
            ser_from_u32(r.serializer),
            data,
            self.gateway_link(text(&r.gateway)?),
            self.router().dict().clone(),
        ))
    }

    /// A session of another gateway closed: this node's modules and groups let go of it (once:
    /// not again if its gateway's loss let go of it already).
    async fn remote_session_closed(&self, r: &SessionRef, reason: &str) -> Result<(), Error> {
        if !self.inner().remote_sessions.forget(text(&r.gateway)?, r.id) {
            return Ok(());
        }
        let s = self.remote_session(r)?;
        self.let_go(&s, reason).await;
        Ok(())
    }

    /// A gateway left the cluster: this node lets go of every session it brought here, as if
    /// each had closed (a gateway that dies cannot say so itself).
    pub(crate) async fn gateway_gone(&self, gateway: &str) {
        let sessions = self.inner().remote_sessions.gateway_gone(gateway);
        if sessions.is_empty() {
            return;
        }
        tracing::info!(
            %gateway,
            sessions = sessions.len(),
            "gateway left the cluster; its sessions are closed here"
        );
        for s in &sessions {
            self.let_go(s, "gateway lost").await;
        }
    }

    async fn let_go(&self, s: &Session, reason: &str) {
        // The gateway counted the disconnect (if it could); this copy only records that it is
        // closed.
        s.close_as(None, reason);
        for module in self.modules() {
            module.session_closed(self, s).await;
        }
        self.groups().remove_session(s);
    }
}

#[cfg(test)]
mod tests {
    use super::route_module;

    #[test]
    fn route_module_needs_exactly_three_parts() {
        assert_eq!(route_module("room.room.say"), Some("room"));
        assert_eq!(route_module("a..b"), Some("a"));
        assert_eq!(route_module("room.room"), None);
        assert_eq!(route_module("room.room.say.more"), None);
        assert_eq!(route_module("room"), None);
        assert_eq!(route_module(""), None);
        assert_eq!(route_module("é.x.y"), Some("é"));
    }
}
