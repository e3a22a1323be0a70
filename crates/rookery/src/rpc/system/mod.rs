//! The `sys.*` operations nodes send each other (mostly backends to gateways): one enum, decoded
//! once from a frame's route and payload, each operation in its own file with its handling.

mod broadcast;
mod session_bind;
mod session_closed;
mod session_data;
mod session_kick;
mod session_push;
mod session_push_many;
mod session_unbind;
mod uid_bound;
mod uid_kick;
mod uid_push;

use bytes::Bytes;

pub(crate) use session_bind::SysBind;
pub(crate) use session_closed::SysClosed;
pub(crate) use session_data::SysData;
pub(crate) use session_kick::SysKick;
pub(crate) use session_push::SysPush;
pub(crate) use session_push_many::SysPushMany;
pub(crate) use session_unbind::SysUnbind;
pub(crate) use uid_bound::SysBound;
pub(crate) use uid_kick::SysUidKick;
pub(crate) use uid_push::SysUidPush;

use crate::{App, Error};

/// One system operation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SysOp {
    /// `sys.session.push`: a push to one session of the receiving gateway.
    SessionPush(SysPush),
    /// `sys.session.push_many`: one push to several sessions of the receiving gateway.
    SessionPushMany(SysPushMany),
    /// `sys.session.kick`: kick one session of the receiving gateway.
    SessionKick(SysKick),
    /// `sys.session.bind`: bind a uid to a session of the receiving gateway (a call).
    SessionBind(SysBind),
    /// `sys.session.unbind`: unbind the uid of a session of the receiving gateway (a call).
    SessionUnbind(SysUnbind),
    /// `sys.session.data`: changes of a session's data made on the sending node.
    SessionData(SysData),
    /// `sys.session.closed`: a session the receiving node served ended on its gateway.
    SessionClosed(SysClosed),
    /// `sys.uid.bound`: another gateway bound a uid (or tells its binding clock).
    UidBound(SysBound),
    /// `sys.uid.push`: a push to users, wherever the receiving gateway holds them.
    UidPush(SysUidPush),
    /// `sys.broadcast`: a push to every session of the receiving gateway.
    Broadcast(SysUidPush),
    /// `sys.uid.kick`: kick a user's session on the receiving gateway.
    UidKick(SysUidKick),
}

impl SysOp {
    /// The operation a frame carries; `None` when `route` names none (then it is an ordinary
    /// route, and an unknown `sys.*` route is answered `RK-404` like any other).
    pub(crate) fn decode(route: &str, payload: &Bytes) -> Result<Option<Self>, Error> {
        fn msg<M: prost::Message + Default>(b: &Bytes) -> Result<M, Error> {
            M::decode(b.clone()).map_err(|e| Error::bad_request(format!("bad system message: {e}")))
        }
        Ok(Some(match route {
            "sys.session.push" => Self::SessionPush(msg(payload)?),
            "sys.session.push_many" => Self::SessionPushMany(msg(payload)?),
            "sys.session.kick" => Self::SessionKick(msg(payload)?),
            "sys.session.bind" => Self::SessionBind(msg(payload)?),
            "sys.session.unbind" => Self::SessionUnbind(msg(payload)?),
            "sys.session.data" => Self::SessionData(msg(payload)?),
            "sys.session.closed" => Self::SessionClosed(msg(payload)?),
            "sys.uid.bound" => Self::UidBound(msg(payload)?),
            "sys.uid.push" => Self::UidPush(msg(payload)?),
            "sys.broadcast" => Self::Broadcast(msg(payload)?),
            "sys.uid.kick" => Self::UidKick(msg(payload)?),
            _ => return Ok(None),
        }))
    }

    /// The route the operation travels under.
    pub(crate) fn route(&self) -> &'static str {
        match self {
            Self::SessionPush(_) => "sys.session.push",
            Self::SessionPushMany(_) => "sys.session.push_many",
            Self::SessionKick(_) => "sys.session.kick",
            Self::SessionBind(_) => "sys.session.bind",
            Self::SessionUnbind(_) => "sys.session.unbind",
            Self::SessionData(_) => "sys.session.data",
            Self::SessionClosed(_) => "sys.session.closed",
            Self::UidBound(_) => "sys.uid.bound",
            Self::UidPush(_) => "sys.uid.push",
            Self::Broadcast(_) => "sys.broadcast",
            Self::UidKick(_) => "sys.uid.kick",
        }
    }

    /// The route as an envelope field.
    pub(crate) fn route_field(&self) -> Bytes {
        Bytes::from_static(self.route().as_bytes())
    }

    /// The payload.
    pub(crate) fn encode(&self) -> Bytes {
        use prost::Message;
        Bytes::from(match self {
            Self::SessionPush(m) => m.encode_to_vec(),
            Self::SessionPushMany(m) => m.encode_to_vec(),
            Self::SessionKick(m) => m.encode_to_vec(),
            Self::SessionBind(m) => m.encode_to_vec(),
            Self::SessionUnbind(m) => m.encode_to_vec(),
            Self::SessionData(m) => m.encode_to_vec(),
            Self::SessionClosed(m) => m.encode_to_vec(),
            Self::UidBound(m) => m.encode_to_vec(),
            Self::UidPush(m) | Self::Broadcast(m) => m.encode_to_vec(),
            Self::UidKick(m) => m.encode_to_vec(),
        })
    }

    /// Carries the operation out on this node; the answer of a call is empty.
    pub(crate) async fn apply(self, app: &App) -> Result<(), Error> {
        match self {
            Self::SessionPush(m) => m.apply(app),
            Self::SessionPushMany(m) => {
                m.apply(app);
                Ok(())
            }
            Self::SessionKick(m) => {
                m.apply(app);
                Ok(())
            }
            Self::SessionBind(m) => m.apply(app).await,
            Self::SessionUnbind(m) => m.apply(app),
            Self::SessionData(m) => {
                m.apply(app);
                Ok(())
            }
            Self::SessionClosed(m) => m.apply(app).await,
            Self::UidBound(m) => {
                m.apply(app).await;
                Ok(())
            }
            Self::UidPush(m) => {
                uid_push::to_uids(app, &m);
                Ok(())
            }
            Self::Broadcast(m) => {
                broadcast::to_everyone(app, &m);
                Ok(())
            }
            Self::UidKick(m) => {
                m.apply(app);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_decodes_from_its_route() {
        let ops = [
            SysOp::SessionPush(SysPush {
                sid: 1,
                route: "onX".into(),
                body: Bytes::from_static(b"{}"),
            }),
            SysOp::SessionPushMany(SysPushMany {
                sids: vec![1, 2],
                route: "onX".into(),
                body: Bytes::from_static(b"{}"),
            }),
            SysOp::SessionKick(SysKick {
                sid: 3,
                reason: "r".into(),
            }),
            SysOp::SessionBind(SysBind {
                sid: 4,
                uid: "u".into(),
            }),
            SysOp::SessionUnbind(SysUnbind { sid: 5 }),
            SysOp::SessionData(SysData::new(
                6,
                "game-1".into(),
                vec![crate::session::DataChange {
                    key: "k".into(),
                    value: Some(serde_json::json!(1)),
                    seq: 7,
                }],
            )),
            SysOp::SessionClosed(SysClosed {
                session: None,
                reason: "gone".into(),
            }),
            SysOp::UidBound(SysBound {
                uid: "u".into(),
                bound_at: 9,
                gateway: "g".into(),
            }),
            SysOp::UidPush(SysUidPush {
                uids: vec!["u".into()],
                route: "onX".into(),
                json: Some(Bytes::from_static(b"1")),
                proto: None,
            }),
            SysOp::Broadcast(SysUidPush::default()),
            SysOp::UidKick(SysUidKick {
                uid: "u".into(),
                reason: "r".into(),
            }),
        ];
        for op in ops {
            let back = SysOp::decode(op.route(), &op.encode()).unwrap();
            assert_eq!(back.as_ref(), Some(&op));
        }
        assert_eq!(SysOp::decode("sys.nope", &Bytes::new()).unwrap(), None);
        assert_eq!(
            SysOp::decode("room.room.join", &Bytes::new()).unwrap(),
            None
        );
        let bad = SysOp::decode("sys.session.push", &Bytes::from_static(b"\xff\xff"));
        assert_eq!(bad.unwrap_err().code(), "RK-400");
    }
}
