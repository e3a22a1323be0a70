//! Closing a connection: the reasons sent to clients, how long a close may flush, and the
//! packets every phase writes.

use std::time::Duration;

use bytes::Bytes;
use rookery_protocol::PacketType;

/// How long the writer keeps trying to deliver what was queued before a close (e.g. a Kick).
pub(crate) const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// Reason sent to sessions kicked by a graceful shutdown.
pub const REASON_SHUTDOWN: &str = "server shutting down";
/// Reason for closing a connection that sent nothing for two heartbeat intervals.
pub const REASON_IDLE: &str = "heartbeat timeout";
/// Reason sent to a client disconnected for exceeding its rate limit.
pub(crate) const REASON_RATE_LIMIT: &str = "rate limit exceeded";
/// Reason sent to a client that did not finish its handshake in time.
pub(super) const REASON_HANDSHAKE_TIMEOUT: &str = "handshake timeout";

/// The heartbeat packet (pomelo clients start theirs when the server's first one arrives).
pub(super) fn heartbeat_packet() -> Bytes {
    Bytes::from_static(&[PacketType::Heartbeat as u8, 0, 0, 0])
}
