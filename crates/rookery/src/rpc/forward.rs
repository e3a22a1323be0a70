//! Client requests for modules that run elsewhere (gateway side), and running a route here.

use std::time::Duration;

use bytes::Bytes;
use rookery_protocol::Serializer;

use super::envelope::text_field;
use super::{route_module, CallOptions, Rpc, Target};
use crate::{App, Error, Session};

impl<'a> Rpc<'a> {
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
            ..CallOptions::default()
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
        self.invoke_inbound(&entry, session, payload, timeout, trace)
            .await
    }
}
