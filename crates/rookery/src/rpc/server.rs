//! Inbound frames from other nodes: calls and notifies run here, `sys.*` operations applied.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::envelope::{ser_from_u32, text, Envelope, SessionRef};
use super::system::SysOp;
use crate::app::AppInner;
use crate::cluster::FrameHandler;
use crate::{App, Code, Error, Session};

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
            if let Some(op) = SysOp::decode(route, &env.payload)? {
                return op.apply(&app).await.map(|()| (Bytes::new(), None));
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
        let is_call = env.kind == super::envelope::Kind::Call as i32;
        let result = app
            .invoke_inbound(&entry, session.clone(), env.payload, timeout, trace)
            .await;
        // The session's data changes made here: with the answer of a call that succeeded, else
        // through the link to the gateway; later changes go through the link.
        let changes = session.end_request();
        match result {
            Ok(out) if is_call && !changes.is_empty() => {
                let data = super::client::DataChanges {
                    node: app.node_id().to_string(),
                    changes,
                };
                Ok((out, serde_json::to_vec(&data).ok().map(Bytes::from)))
            }
            result => {
                session.send_data_changes(changes);
                result.map(|out| (out, None))
            }
        }
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
    /// The copy of another gateway's session that a forwarded request or notice carries.
    fn remote_session(&self, r: &SessionRef) -> Result<Session, Error> {
        // Most sessions carry no data: skip the JSON parse then.
        let data = if r.data.is_empty() {
            HashMap::new()
        } else {
            serde_json::from_slice(&r.data).unwrap_or_default()
        };
        let remote = text(&r.remote)
            .ok()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok(Session::remote(
            r.id,
            Some(text(&r.uid)?),
            remote,
            ser_from_u32(r.serializer),
            data,
            self.gateway_link(text(&r.gateway)?),
            self.router().dict().clone(),
        ))
    }

    /// A session of another gateway closed: this node's modules and groups let go of it (once:
    /// not again if its gateway's loss let go of it already).
    pub(super) async fn remote_session_closed(
        &self,
        r: &SessionRef,
        reason: &str,
    ) -> Result<(), Error> {
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
