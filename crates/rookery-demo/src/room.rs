//! `room`: chat rooms built on groups (`room:NAME`).

use std::sync::Arc;

use rookery::{async_trait, App, Context, Error, Json, Module, ModuleInit, Session, Target};
use serde::{Deserialize, Serialize};
use serde_json::json;

const PREFIX: &str = "room:";

/// Settings, `[modules.room]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomSettings {
    /// Members per room at most (`ROOM-FULL` beyond).
    pub max_members: usize,
    /// Longest room name, in bytes.
    pub max_name_len: usize,
    /// Longest chat text, in bytes.
    pub max_text_len: usize,
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            max_members: 1000,
            max_name_len: 64,
            max_text_len: 1024,
        }
    }
}

/// The room module.
#[derive(Debug, Default)]
pub struct Room {
    settings: std::sync::OnceLock<RoomSettings>,
}

#[derive(Deserialize)]
struct RoomReq {
    room: String,
}

#[derive(Deserialize)]
struct SayReq {
    room: String,
    text: String,
}

#[derive(Serialize)]
struct JoinResp {
    room: String,
    members: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct RoomInfo {
    room: String,
    members: usize,
}

#[derive(Serialize, Deserialize)]
struct ListResp {
    rooms: Vec<RoomInfo>,
}

impl Room {
    fn settings(&self) -> &RoomSettings {
        self.settings.get_or_init(RoomSettings::default)
    }

    fn group(&self, room: &str) -> Result<String, Error> {
        if room.is_empty() || room.len() > self.settings().max_name_len {
            return Err(Error::bad_request(format!(
                "room must be 1 to {} bytes",
                self.settings().max_name_len
            )));
        }
        Ok(format!("{PREFIX}{room}"))
    }

    async fn join(&self, ctx: Context, req: RoomReq) -> Result<Json<JoinResp>, Error> {
        let uid = ctx.require_uid()?;
        let group = self.group(&req.room)?;
        let groups = ctx.app().groups();
        if !groups.contains(&group, &uid)
            && groups.members(&group).len() >= self.settings().max_members
        {
            return Err(Error::custom("ROOM-FULL", "room is full"));
        }
        if groups.add(&group, ctx.session())? {
            groups.broadcast_except(
                &group,
                "onJoin",
                Json(json!({"room": req.room, "uid": &*uid})),
                Some(&uid),
            );
        }
        Ok(Json(JoinResp {
            members: groups.members(&group),
            room: req.room,
        }))
    }

    async fn say(&self, ctx: Context, req: SayReq) -> Result<(), Error> {
        let uid = ctx.require_uid()?;
        let group = self.group(&req.room)?;
        if req.text.len() > self.settings().max_text_len {
            return Err(Error::bad_request("text too long"));
        }
        let groups = ctx.app().groups();
        if !groups.contains(&group, &uid) {
            return Err(Error::bad_request(format!("not in room {:?}", req.room)));
        }
        groups.broadcast(
            &group,
            "onMessage",
            Json(json!({"room": req.room, "from": &*uid, "text": req.text})),
        );
        Ok(())
    }

    async fn leave(&self, ctx: Context, req: RoomReq) -> Result<(), Error> {
        let uid = ctx.require_uid()?;
        let group = self.group(&req.room)?;
        let groups = ctx.app().groups();
        if !groups.remove(&group, &uid) {
            return Err(Error::bad_request(format!("not in room {:?}", req.room)));
        }
        groups.broadcast(
            &group,
            "onLeave",
            Json(json!({"room": req.room, "uid": &*uid})),
        );
        Ok(())
    }

    /// Rooms held by this node.
    fn local_rooms(&self, app: &App) -> ListResp {
        let rooms = app
            .groups()
            .list()
            .into_iter()
            .filter_map(|g| {
                g.name.strip_prefix(PREFIX).map(|r| RoomInfo {
                    room: r.to_string(),
                    members: g.members,
                })
            })
            .collect();
        ListResp { rooms }
    }

    /// Rooms of every node running this module (rooms are spread over room nodes by name).
    async fn list(&self, app: &App) -> Result<ListResp, Error> {
        let mut rooms = Vec::new();
        for (node, r) in app
            .rpc()
            .call_all::<_, Json<ListResp>>(Target::Module("room".into()), "room.room.rooms", ())
            .await
        {
            match r {
                Ok(Json(part)) => rooms.extend(part.rooms),
                Err(e) => tracing::warn!(%node, error = %e, "room node did not answer the list"),
            }
        }
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(ListResp { rooms })
    }
}

#[async_trait]
impl Module for Room {
    fn name(&self) -> &str {
        "room"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        let _ = self.settings.set(init.settings::<RoomSettings>()?);
        let me = self.clone();
        init.handler(
            "room.join",
            move |ctx: Context, Json(req): Json<RoomReq>| {
                let me = me.clone();
                async move { me.join(ctx, req).await }
            },
        )
        .login_required();
        let me = self.clone();
        init.handler("room.say", move |ctx: Context, Json(req): Json<SayReq>| {
            let me = me.clone();
            async move { me.say(ctx, req).await }
        })
        .login_required();
        let me = self.clone();
        init.handler(
            "room.leave",
            move |ctx: Context, Json(req): Json<RoomReq>| {
                let me = me.clone();
                async move { me.leave(ctx, req).await }
            },
        )
        .login_required();
        let me = self.clone();
        init.handler("room.list", move |ctx: Context, _: ()| {
            let me = me.clone();
            async move { Ok(Json(me.list(ctx.app()).await?)) }
        });
        // Answers its argument: the handler load tests and benchmarks drive.
        init.handler(
            "room.echo",
            |_ctx: Context, Json(v): Json<serde_json::Value>| async move { Ok(Json(v)) },
        );
        let me = self;
        init.handler("room.rooms", move |ctx: Context, _: ()| {
            let resp = me.local_rooms(ctx.app());
            async move { Ok(Json(resp)) }
        })
        .internal();
        for push in ["onJoin", "onMessage", "onLeave"] {
            init.push_route(push);
        }
        Ok(())
    }

    async fn session_closed(&self, app: &App, session: &Session) {
        let Some(uid) = session.uid() else { return };
        for group in app.groups().groups_of(session) {
            if let Some(room) = group.strip_prefix(PREFIX) {
                app.groups().broadcast_except(
                    &group,
                    "onLeave",
                    Json(json!({"room": room, "uid": &*uid})),
                    Some(&uid),
                );
            }
        }
    }
}
