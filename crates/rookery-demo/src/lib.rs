//! The demo chat game: a `connector` module (login) and a `room` module (join, say, leave, list).
//!
//! | route | request | response | pushes |
//! |---|---|---|---|
//! | `connector.entry.login` | `{"uid"}` | `{"uid"}` | older session of the uid is kicked |
//! | `room.room.join` | `{"room"}` | `{"room","members":[uid]}` | `onJoin {"room","uid"}` to others |
//! | `room.room.say` | `{"room","text"}` | `{}` | `onMessage {"room","from","text"}` to all |
//! | `room.room.leave` | `{"room"}` | `{}` | `onLeave {"room","uid"}` to others |
//! | `room.room.list` | `{}` | `{"rooms":[{"room","members"}]}` | |
//! | `room.room.echo` | any JSON | the same JSON | (for load tests) |

#![forbid(unsafe_code)]

mod connector;
mod room;

pub use connector::Connector;
pub use room::{Room, RoomSettings};

/// Adds every demo module to a server builder.
pub fn modules(builder: rookery::ServerBuilder) -> rookery::ServerBuilder {
    builder.module(Connector).module(Room)
}
