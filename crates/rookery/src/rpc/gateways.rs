//! User operations that reach every gateway (pushes to uids, broadcasts, kicks), the close of a
//! session told to the nodes it used, and uid bindings.

use std::sync::Arc;

use bytes::Bytes;
use rookery_protocol::Serializer;

use super::envelope::Kind;
use crate::session::GatewayLink;

/// Operations queued to one gateway at most (a push beyond it fails at once).
const GATEWAY_LINK_QUEUE: usize = 4096;
use super::system::{SysBind, SysBound, SysClosed, SysOp, SysUidKick, SysUidPush};
use super::{CallOptions, RemoteSession, Rpc, RpcError, Target};
use crate::cluster::NodeInfo;
use crate::payload::EncodedOnce;
use crate::{App, Error, PushName, Session, ToPayload};

impl<'a> Rpc<'a> {
    /// Pushes to users wherever they are connected: local sessions directly, the others through
    /// their gateways (one message per gateway for all the users). Returns the local deliveries.
    pub async fn push_to_uids<P: ToPayload>(
        &self,
        uids: &[&str],
        route: impl PushName<P>,
        payload: P,
    ) -> Result<usize, RpcError> {
        let route = route.push_name();
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
            self.notify_other_frontends(&SysOp::UidPush(msg)).await;
        }
        Ok(delivered)
    }

    /// Pushes to every session on every gateway; returns the local deliveries.
    pub async fn broadcast_all<P: ToPayload>(&self, route: impl PushName<P>, payload: P) -> usize {
        let route = route.push_name();
        let delivered = crate::session::fan_out(&self.app.sessions().all(), route, &payload);
        let mut enc = EncodedOnce::new(&payload);
        let msg = SysUidPush {
            uids: Vec::new(),
            route: route.to_string(),
            json: enc.get(Serializer::Json).ok(),
            proto: enc.get(Serializer::Protobuf).ok(),
        };
        self.notify_other_frontends(&SysOp::Broadcast(msg)).await;
        delivered
    }

    /// Kicks a user wherever it is connected.
    pub async fn kick_uid(&self, uid: &str, reason: &str) {
        self.app.sessions().kick_uid(uid, reason);
        let msg = SysUidKick {
            uid: uid.to_string(),
            reason: reason.to_string(),
        };
        self.notify_other_frontends(&SysOp::UidKick(msg)).await;
    }

    /// Tells the nodes a closed session's requests went to that it ended (gateway side).
    pub(crate) async fn session_closed(&self, session: &Session) {
        let touched = session.touched();
        if touched.is_empty() {
            return;
        }
        let op = SysOp::SessionClosed(SysClosed {
            session: Some(self.session_ref(session)),
            reason: session.close_reason().unwrap_or_default().to_string(),
        });
        let frame = self.sys_frame(&op);
        for id in touched {
            if let Some(node) = self.cluster().registry.get(&id) {
                self.send_sys(&node, &op, frame.clone()).await;
            }
        }
    }

    /// Tells the other gateways a uid was bound here, so that older sessions of the same uid
    /// elsewhere are kicked (the binding with the larger stamp wins everywhere).
    pub(crate) async fn announce_bind(&self, session: &Session) {
        let Some(msg) = self.bound_msg(session) else {
            return;
        };
        self.notify_other_frontends(&SysOp::UidBound(msg)).await;
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
        if let Some(node) = self.cluster().registry.get(gateway) {
            let op = SysOp::UidBound(msg);
            self.send_sys(&node, &op, self.sys_frame(&op)).await;
        }
    }

    fn bound_msg(&self, session: &Session) -> Option<SysBound> {
        Some(SysBound {
            uid: session.uid()?.to_string(),
            bound_at: session.bound_at(),
            gateway: self.app.node_id().to_string(),
        })
    }

    /// Sends a system operation to every gateway but this one.
    async fn notify_other_frontends(&self, op: &SysOp) {
        let frame = self.sys_frame(op);
        for gw in self.cluster().registry.frontends() {
            if gw.id != self.app.node_id() {
                self.send_sys(&gw, op, frame.clone()).await;
            }
        }
    }

    /// A system operation's frame (a notify).
    fn sys_frame(&self, op: &SysOp) -> Bytes {
        self.envelope(
            Kind::Notify,
            op.route_field(),
            op.encode(),
            Serializer::Json,
            None,
            None,
        )
        .to_bytes()
    }

    async fn send_sys(&self, node: &NodeInfo, op: &SysOp, frame: Bytes) {
        if let Err(e) = self.cluster().transport.notify(node, frame).await {
            tracing::debug!(node = %node.id, route = op.route(), error = %e, "system notify failed");
        }
    }
}

impl App {
    /// The link to a gateway for remote sessions (created on first use).
    /// The ordered operation queue to a gateway, created (with its sender task, owned by the
    /// cluster's tracker) on first use.
    pub(crate) fn gateway_link(&self, gateway: &str) -> Arc<dyn GatewayLink> {
        let c = &self.inner().cluster;
        if let Some(link) = c.link(gateway) {
            return link;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(GATEWAY_LINK_QUEUE);
        let (link, new) = c.keep_link(
            gateway,
            Arc::new(RemoteSession::new(gateway, c.source.clone(), tx)),
        );
        if !new {
            return link;
        }
        let app = self.clone();
        let gateway = gateway.to_string();
        let stop = c.stop.clone();
        c.tasks.spawn(async move {
            loop {
                let frame = tokio::select! {
                    f = rx.recv() => match f { Some(f) => f, None => return },
                    _ = stop.cancelled() => return,
                };
                let c = &app.inner().cluster;
                let Some(node) = c.registry.get(&gateway) else {
                    tracing::debug!(%gateway, "dropping operation for an unknown gateway");
                    continue;
                };
                if let Err(e) = c.transport.notify(&node, frame).await {
                    tracing::debug!(%gateway, error = %e, "gateway operation failed");
                }
            }
        });
        link
    }

    /// Unbinds a session's uid wherever its connection is; returns the uid it had.
    pub(crate) async fn unbind_session(
        &self,
        session: &Session,
    ) -> Result<Option<Arc<str>>, Error> {
        let Some(link) = session.remote_link() else {
            return Ok(self.sessions().unbind(session));
        };
        let op = SysOp::SessionUnbind(super::system::SysUnbind { sid: session.id() });
        self.call_gateway(link.gateway(), &op).await?;
        let uid = session.uid();
        session.set_uid(None);
        Ok(uid)
    }

    /// Binds a uid to a session wherever its connection is.
    pub(crate) async fn bind_session(&self, session: &Session, uid: &str) -> Result<(), Error> {
        let Some(link) = session.remote_link() else {
            self.sessions().bind(session, uid)?;
            self.rpc().announce_bind(session).await;
            return Ok(());
        };
        let op = SysOp::SessionBind(SysBind {
            sid: session.id(),
            uid: uid.to_string(),
        });
        self.call_gateway(link.gateway(), &op).await?;
        session.set_uid(Some(Arc::from(uid)));
        Ok(())
    }

    /// Calls a system operation on a gateway (not through the node's call middleware) and waits
    /// for it to be done.
    async fn call_gateway(&self, gateway: &str, op: &SysOp) -> Result<(), Error> {
        self.rpc()
            .call_unlayered(
                &Target::Node(gateway.to_string()),
                op.route(),
                op.encode(),
                &CallOptions::default(),
            )
            .await?;
        Ok(())
    }
}
