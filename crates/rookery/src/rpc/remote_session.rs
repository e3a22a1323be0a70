//! A backend's ordered link to the gateway that holds a session.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::current_trace;
use super::envelope::{Envelope, Kind};
use super::system::{SysData, SysKick, SysOp, SysPush, SysPushMany};
use crate::{Code, Error};

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

    fn send(&self, op: SysOp) -> Result<(), Error> {
        let env = Envelope {
            kind: Kind::Notify as i32,
            route: op.route_field(),
            payload: op.encode(),
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
}

impl crate::session::GatewayLink for RemoteSession {
    fn gateway(&self) -> &str {
        &self.gateway
    }

    fn is_closed(&self) -> bool {
        self.ops.is_closed()
    }

    fn push(&self, sid: u64, route: &str, body: Bytes) -> Result<(), Error> {
        self.send(SysOp::SessionPush(SysPush {
            sid,
            route: route.to_string(),
            body,
        }))
    }

    fn push_many(&self, sids: Vec<u64>, route: &str, body: Bytes) -> Result<(), Error> {
        self.send(SysOp::SessionPushMany(SysPushMany {
            sids,
            route: route.to_string(),
            body,
        }))
    }

    fn set_data(&self, sid: u64, changes: Vec<crate::session::DataChange>) -> Result<(), Error> {
        let node = String::from_utf8_lossy(&self.source).into_owned();
        self.send(SysOp::SessionData(SysData::new(sid, node, changes)))
    }

    fn kick(&self, sid: u64, reason: &str) -> Result<(), Error> {
        self.send(SysOp::SessionKick(SysKick {
            sid,
            reason: reason.to_string(),
        }))
    }
}
