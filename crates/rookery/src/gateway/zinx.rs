//! zinx clients as a [`Wire`]: zinx's data pack (an 8-byte header of msgID and data length,
//! big-endian since zinx 1.1.3, or the older little-endian length-first pack) over TCP or TLS,
//! routed by msgID.
//!
//! zinx has no handshake: a connection is a session at once (the handshake validator still
//! sees it, with `sys.type = "zinx"`). Every message is a request, answered with the msgID
//! configured for its route (`[zinx.replies]`; by default its own). A msgID is a route through
//! `[zinx.routes]`, else the route with that code in the dictionary (pin it in `[routes]`).
//! Pushes go out with `[zinx.pushes]`' msgID for their route, else its dictionary code.
//! zinx-cluster's `route.json` and `dinx.json` are read at start and checked against those.

use std::collections::{BTreeMap, HashMap};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rookery_protocol::handshake::HandshakeSys;
use rookery_protocol::{HandshakeRequest, Message, MessageType, Route, RouteName};
use serde::Deserialize;
use tokio_util::codec::Decoder;

use super::transport::{ConnError, FrameReader, PacketWriter};
use super::wire::{Accepted, End, Incoming, Refusal, Wire};
use crate::config::{Config, ZinxPack};
use crate::session::codec::ClientCodec;
use crate::{App, Error, Session};

/// zinx's header: msgID and data length, 4 bytes each.
const HEADER: usize = 8;

/// The zinx protocol of a node: its pack and msgID tables.
pub(crate) struct Zinx {
    tables: std::sync::Arc<Tables>,
}

/// What both directions need: the pack and the msgID tables.
pub(crate) struct Tables {
    pack: ZinxPack,
    routes: HashMap<u32, RouteName>,
    replies: HashMap<String, u32>,
    pushes: HashMap<String, u32>,
    error_msg_id: Option<u32>,
    heartbeat_msg_id: u32,
}

impl Zinx {
    /// The tables from `[zinx]`, with `route_file` and `node_file` read and checked.
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        let z = &config.zinx;
        let mut routes = HashMap::new();
        for (id, route) in &z.routes {
            let id: u32 = id
                .parse()
                .map_err(|_| format!("zinx.routes: {id:?} is not a msgID"))?;
            let name = RouteName::try_from(route.as_str())
                .map_err(|e| format!("zinx.routes: {id} = {route:?}: {e}"))?;
            routes.insert(id, name);
        }
        let tables = Tables {
            pack: z.pack,
            routes,
            replies: z.replies.clone().into_iter().collect(),
            pushes: z.pushes.clone().into_iter().collect(),
            error_msg_id: z.error_msg_id,
            heartbeat_msg_id: z.heartbeat_msg_id,
        };
        if let Some(path) = &z.route_file {
            let groups = read_json::<BTreeMap<String, Vec<RouteEntry>>>(path)?;
            if let Some(nodes) = &z.node_file {
                let nodes = read_json::<BTreeMap<String, Vec<NodeEntry>>>(nodes)?;
                if let Some(g) = groups.keys().find(|g| !nodes.contains_key(*g)) {
                    return Err(format!(
                        "{path}: group {g:?} is not in {}",
                        z.node_file.as_deref().unwrap_or_default()
                    ));
                }
            }
            for (group, entries) in &groups {
                for e in entries {
                    let route = tables.route_of(e.msg_id, |code| {
                        config
                            .routes
                            .iter()
                            .find(|(_, c)| u32::from(**c) == code)
                            .map(|(r, _)| r.clone())
                    });
                    let Some(route) = route else {
                        return Err(format!(
                            "{path}: msgID {} ({group}, {:?}) has no route: add it to [zinx.routes] or pin a route to code {} in [routes]",
                            e.msg_id, e.name, e.msg_id
                        ));
                    };
                    if crate::rpc::route_module(&route) != Some(group.as_str()) {
                        tracing::info!(msg_id = e.msg_id, %group, %route, "zinx msgID's group is not its route's module");
                    }
                }
            }
        } else if let Some(nodes) = &z.node_file {
            read_json::<BTreeMap<String, Vec<NodeEntry>>>(nodes)?;
        }
        Ok(Self {
            tables: std::sync::Arc::new(tables),
        })
    }
}

/// An entry of zinx-cluster's `route.json`.
#[derive(Deserialize)]
struct RouteEntry {
    #[serde(rename = "MsgID")]
    msg_id: u32,
    #[serde(rename = "Name", default)]
    name: String,
}

/// An entry of zinx-cluster's `dinx.json` (its other fields are read and not used: nodes find
/// each other through discovery).
#[derive(Deserialize)]
#[allow(dead_code)]
struct NodeEntry {
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "Name", default)]
    name: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &str) -> Result<T, String> {
    let text = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("{path}: {e}"))
}

impl Tables {
    /// The route a msgID names: `[zinx.routes]`, else the dictionary's code.
    fn route_of(&self, id: u32, by_code: impl FnOnce(u32) -> Option<String>) -> Option<String> {
        match self.routes.get(&id) {
            Some(r) => Some(r.as_str().to_string()),
            None => by_code(id),
        }
    }

    fn pack(&self, id: u32, body: &[u8]) -> Result<Bytes, Error> {
        let len =
            u32::try_from(body.len()).map_err(|_| Error::internal("zinx: message too large"))?;
        let mut b = BytesMut::with_capacity(HEADER + body.len());
        match self.pack {
            ZinxPack::TlvBigEndian => {
                b.put_u32(id);
                b.put_u32(len);
            }
            ZinxPack::LtvLittleEndian => {
                b.put_u32_le(len);
                b.put_u32_le(id);
            }
        }
        b.put_slice(body);
        Ok(b.freeze())
    }
}

/// zinx framing: the header's length is checked against the packet-size limit before the
/// data is waited for.
pub(crate) struct ZinxDecoder {
    pack: ZinxPack,
    max: usize,
}

impl Decoder for ZinxDecoder {
    type Item = (u32, Bytes);
    type Error = ConnError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<(u32, Bytes)>, ConnError> {
        if src.len() < HEADER {
            return Ok(None);
        }
        let mut h = &src[..HEADER];
        let (id, len) = match self.pack {
            ZinxPack::TlvBigEndian => (h.get_u32(), h.get_u32()),
            ZinxPack::LtvLittleEndian => {
                let len = h.get_u32_le();
                (h.get_u32_le(), len)
            }
        };
        let len = len as usize;
        if len > self.max {
            return Err(ConnError::Malformed(format!(
                "zinx: message of {len} bytes is over the {} byte limit",
                self.max
            )));
        }
        if src.len() < HEADER + len {
            src.reserve(HEADER + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        Ok(Some((id, src.split_to(len).freeze())))
    }
}

/// What a zinx connection keeps: the tables.
pub(crate) struct ZinxConn(std::sync::Arc<Tables>);

impl Wire for Zinx {
    type Frame = (u32, Bytes);
    type Decoder = ZinxDecoder;
    type Conn = ZinxConn;

    fn decoder(&self, max_packet: usize) -> ZinxDecoder {
        ZinxDecoder {
            pack: self.tables.pack,
            max: max_packet,
        }
    }

    async fn handshake(
        &self,
        app: &App,
        _reader: &mut FrameReader<ZinxDecoder>,
        _writer: &mut PacketWriter,
    ) -> Result<Accepted<ZinxConn>, Refusal> {
        let request = HandshakeRequest {
            sys: HandshakeSys {
                client_type: Some("zinx".into()),
                ..Default::default()
            },
            user: serde_json::Value::Null,
        };
        if let Some(validate) = &app.inner().validator {
            validate(&request).map_err(|e| Refusal::refused(e.msg().to_string()))?;
        }
        Ok(Accepted {
            serializer: app.config().gateway.serializer,
            client: request.sys,
            codec: Box::new(ZinxCodec(self.tables.clone())),
            conn: ZinxConn(self.tables.clone()),
            dict: app.sessions().dict(),
        })
    }

    fn opened(_: &App, _: &ZinxConn, _: &Session) {}

    fn on_frame(
        conn: &ZinxConn,
        session: &Session,
        (id, data): (u32, Bytes),
    ) -> Result<Option<Incoming>, End> {
        let t = &conn.0;
        if id == t.heartbeat_msg_id {
            if let Ok(b) = t.pack(id, &data) {
                let _ = session.send_packet(b);
            }
            return Ok(None);
        }
        let route = t.route_of(id, |code| {
            let code = u16::try_from(code).ok()?;
            session.dict().name(code).map(str::to_string)
        });
        let Some(route) = route.and_then(|r| RouteName::try_from(r.as_str()).ok()) else {
            let err = Error::not_found(&format!("zinx msgID {id}"));
            return Ok(Some(Incoming::refused(true, u64::from(id), None, err)));
        };
        let reply = t.replies.get(route.as_str()).copied().unwrap_or(id);
        let mut msg = Message::notify(Route::Name(route), data);
        msg.kind = MessageType::Request;
        msg.id = u64::from(reply);
        Ok(Some(msg.into()))
    }

    fn refusal(&self, _reason: &str) -> Option<Bytes> {
        None
    }
}

/// The session's codec of a zinx client.
pub(crate) struct ZinxCodec(std::sync::Arc<Tables>);

impl ClientCodec for ZinxCodec {
    fn response(
        &self,
        session: &Session,
        id: u64,
        _reply_to: Option<&str>,
        result: Result<Bytes, Error>,
    ) -> Result<Bytes, Error> {
        let id = u32::try_from(id).map_err(|_| Error::internal("zinx: msgID out of range"))?;
        match result {
            Ok(body) => self.0.pack(id, &body),
            Err(e) => self.0.pack(
                self.0.error_msg_id.unwrap_or(id),
                &e.encode(session.serializer()),
            ),
        }
    }

    fn encode_push(&self, session: &Session, route: &str, body: Bytes) -> Result<Bytes, Error> {
        let id = match self.0.pushes.get(route) {
            Some(id) => *id,
            None => u32::from(session.dict().code(route).ok_or_else(|| {
                Error::internal(format!(
                    "push {route:?} has no zinx msgID: add it to [zinx.pushes] or pin it in [routes]"
                ))
            })?),
        };
        self.0.pack(id, &body)
    }

    fn shared_class(&self) -> Option<u8> {
        Some(2)
    }

    fn kick(&self, _reason: &str) -> Option<Bytes> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_packs_frame_and_refuse_oversized_lengths_before_reading_them() {
        for pack in [ZinxPack::TlvBigEndian, ZinxPack::LtvLittleEndian] {
            let tables = Tables {
                pack,
                routes: HashMap::new(),
                replies: HashMap::new(),
                pushes: HashMap::new(),
                error_msg_id: None,
                heartbeat_msg_id: 99999,
            };
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&tables.pack(7, b"hello").unwrap());
            buf.extend_from_slice(&tables.pack(8, b"").unwrap());
            let mut d = ZinxDecoder { pack, max: 16 };
            let mut part = buf.split_to(10);
            assert!(d.decode(&mut part).unwrap().is_none(), "a partial message");
            part.unsplit(buf);
            let mut buf = part;
            assert_eq!(d.decode(&mut buf).unwrap(), Some((7, Bytes::from("hello"))));
            assert_eq!(d.decode(&mut buf).unwrap(), Some((8, Bytes::new())));
            let mut huge = BytesMut::from(&tables.pack(9, &[0; 17]).unwrap()[..HEADER]);
            assert!(
                d.decode(&mut huge).is_err(),
                "17 bytes announced, 16 allowed"
            );
        }
        // zinx's default pack is big-endian, msgID first.
        let t = Tables {
            pack: ZinxPack::TlvBigEndian,
            routes: HashMap::new(),
            replies: HashMap::new(),
            pushes: HashMap::new(),
            error_msg_id: None,
            heartbeat_msg_id: 99999,
        };
        assert_eq!(
            &t.pack(1, b"ab").unwrap()[..],
            &[0, 0, 0, 1, 0, 0, 0, 2, b'a', b'b']
        );
    }
}
