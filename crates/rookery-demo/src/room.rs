//! `room`: chat rooms built on groups (`room:NAME`).

use std::sync::Arc;

use rookery::middleware::{Middleware, Next};
use rookery::{
    async_trait, App, Bytes, Context, Error, Json, Module, ModuleInit, Push, Route, Session, Target,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

const PREFIX: &str = "room:";

/// `room.room.join`: joins a room; answers its members.
pub const JOIN: Route<Json<RoomReq>, Json<JoinResp>> = Route::new("room.room.join");
/// `room.room.say`: says something to a room.
pub const SAY: Route<Json<SayReq>, ()> = Route::new("room.room.say");
/// `room.room.leave`: leaves a room.
pub const LEAVE: Route<Json<RoomReq>, ()> = Route::new("room.room.leave");
/// `room.room.list`: the rooms of every room node.
pub const LIST: Route<(), Json<ListResp>> = Route::new("room.room.list");
/// `room.room.rooms` (internal): the rooms of one node, for `list`.
pub const ROOMS: Route<(), Json<ListResp>> = Route::new("room.room.rooms");
/// Pushed to a room's members when someone joins.
pub const ON_JOIN: Push<Json<serde_json::Value>> = Push::new("onJoin");
/// Pushed to a room's members when someone speaks.
pub const ON_MESSAGE: Push<Json<serde_json::Value>> = Push::new("onMessage");
/// Pushed to a room's members when someone leaves.
pub const ON_LEAVE: Push<Json<serde_json::Value>> = Push::new("onLeave");

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
    /// Pass-through middleware layers around `room.echo` (the handler load tests drive): what
    /// a layer costs is measured with them (bench/run.sh sets 3 for one of P2's rows).
    pub echo_layers: usize,
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            max_members: 1000,
            max_name_len: 64,
            max_text_len: 1024,
            echo_layers: 0,
        }
    }
}

/// The room module. Its handlers are methods of [`Rooms`], the state `init` builds from the
/// module's settings.
#[derive(Debug, Default)]
pub struct Room;

/// The room module's state: its settings (rooms themselves are groups).
#[derive(Debug)]
pub struct Rooms {
    settings: RoomSettings,
}

/// A room's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomReq {
    /// The room.
    pub room: String,
}

/// Something said in a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SayReq {
    /// The room.
    pub room: String,
    /// What is said.
    pub text: String,
}

/// The answer to a join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResp {
    /// The room.
    pub room: String,
    /// Its members' uids.
    pub members: Vec<String>,
}

/// One room of a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room.
    pub room: String,
    /// How many members it has.
    pub members: usize,
}

/// The rooms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListResp {
    /// Every room, by name.
    pub rooms: Vec<RoomInfo>,
}

impl Rooms {
    fn settings(&self) -> &RoomSettings {
        &self.settings
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

    async fn join(
        self: Arc<Self>,
        ctx: Context,
        Json(req): Json<RoomReq>,
    ) -> Result<Json<JoinResp>, Error> {
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
                ON_JOIN,
                Json(json!({"room": req.room, "uid": &*uid})),
                Some(&uid),
            );
        }
        Ok(Json(JoinResp {
            members: groups.members(&group),
            room: req.room,
        }))
    }

    async fn say(self: Arc<Self>, ctx: Context, Json(req): Json<SayReq>) -> Result<(), Error> {
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
            ON_MESSAGE,
            Json(json!({"room": req.room, "from": &*uid, "text": req.text})),
        );
        Ok(())
    }

    async fn leave(self: Arc<Self>, ctx: Context, Json(req): Json<RoomReq>) -> Result<(), Error> {
        let uid = ctx.require_uid()?;
        let group = self.group(&req.room)?;
        let groups = ctx.app().groups();
        if !groups.remove(&group, &uid) {
            return Err(Error::bad_request(format!("not in room {:?}", req.room)));
        }
        groups.broadcast(
            &group,
            ON_LEAVE,
            Json(json!({"room": req.room, "uid": &*uid})),
        );
        Ok(())
    }

    /// Rooms held by this node.
    async fn rooms(self: Arc<Self>, ctx: Context, (): ()) -> Result<Json<ListResp>, Error> {
        Ok(Json(Self::local_rooms(ctx.app())))
    }

    fn local_rooms(app: &App) -> ListResp {
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
    async fn list(self: Arc<Self>, ctx: Context, (): ()) -> Result<Json<ListResp>, Error> {
        let mut rooms = Vec::new();
        for (node, r) in ctx
            .app()
            .rpc()
            .call_all(Target::Module("room".into()), ROOMS, ())
            .await
        {
            match r {
                Ok(Json(part)) => rooms.extend(part.rooms),
                Err(e) => tracing::warn!(%node, error = %e, "room node did not answer the list"),
            }
        }
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(Json(ListResp { rooms }))
    }
}

/// A layer that only calls the rest of the chain.
struct PassThrough;

#[async_trait]
impl Middleware for PassThrough {
    async fn handle(&self, ctx: Context, payload: Bytes, next: Next<'_>) -> Result<Bytes, Error> {
        next.run(ctx, payload).await
    }
}

#[async_trait]
impl Module for Room {
    fn name(&self) -> &str {
        "room"
    }

    fn init(self: Arc<Self>, init: &mut ModuleInit<'_>) -> Result<(), Error> {
        let rooms = Arc::new(Rooms {
            settings: init.settings()?,
        });
        init.method(&rooms, JOIN, Rooms::join).login_required();
        init.method(&rooms, SAY, Rooms::say).login_required();
        init.method(&rooms, LEAVE, Rooms::leave).login_required();
        init.method(&rooms, LIST, Rooms::list);
        init.method(&rooms, ROOMS, Rooms::rooms).internal();
        // Answers its argument: the handler load tests and benchmarks drive.
        let mut echo = init.handler(
            "room.echo",
            |_ctx: Context, Json(v): Json<serde_json::Value>| async move { Ok(Json(v)) },
        );
        for _ in 0..rooms.settings.echo_layers {
            echo = echo.middleware(PassThrough);
        }
        for push in [ON_JOIN, ON_MESSAGE, ON_LEAVE] {
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
                    ON_LEAVE,
                    Json(json!({"room": room, "uid": &*uid})),
                    Some(&uid),
                );
            }
        }
    }
}
