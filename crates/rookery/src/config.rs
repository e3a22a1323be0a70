//! Configuration: a TOML file, then `ROOKERY_*` environment overrides, then CLI flags (applied by
//! the binary on the resulting [`Config`]).
//!
//! Environment overrides name a path with `__` between levels after the `ROOKERY_` prefix, e.g.
//! `ROOKERY_GATEWAY__HEARTBEAT=10` or `ROOKERY_MODULES__ROOM__MAX_MEMBERS=50`. Values are read as
//! TOML literals (numbers, booleans, arrays) and fall back to strings.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rookery_protocol::{Serializer, DEFAULT_MAX_PACKET_SIZE};
use serde::{Deserialize, Serialize};

/// The most `gateway.disconnect_log_per_second` may be: a cap higher than any log can take is
/// a mistake (a missing digit separator, a value meant for another setting), not a choice.
pub const MAX_DISCONNECT_LOG_PER_SECOND: u32 = 1_000_000;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "ROOKERY_";

/// Why a configuration could not be loaded.
pub type ConfigError = crate::LayerError<ConfigErrorKind>;

/// What kind of configuration failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Read,
    /// The TOML (after overrides) does not describe a valid configuration.
    Invalid,
}

impl std::fmt::Display for ConfigErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Read => "cannot read config file",
            Self::Invalid => "invalid configuration",
        })
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::new(ConfigErrorKind::Invalid, message)
}

/// The whole configuration of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node.
    pub node: NodeConfig,
    /// Client-facing acceptors and per-connection limits.
    pub gateway: GatewayConfig,
    /// MQTT clients: delivery of pushes, mqant's topic form.
    pub mqtt: MqttConfig,
    /// zinx clients: the msgID table.
    pub zinx: ZinxConfig,
    /// KCP clients.
    pub kcp: KcpConfig,
    /// Per-module settings, `[modules.NAME]`, handed to each module's `init`.
    pub modules: BTreeMap<String, toml::Value>,
    /// How this node joins a cluster.
    pub cluster: ClusterConfig,
    /// The operations endpoint: metrics, admin API, dashboard.
    pub admin: AdminConfig,
    /// The HTTP gateway: `POST /{module}/{handler}/{method}` runs a route without a session.
    pub http: HttpConfig,
    /// Per-process overrides (mqant `ProcessID`): `[processes.NAME]` holds any of the sections
    /// above plus `modules = [...]`; applied by [`Config::load_process`].
    pub processes: BTreeMap<String, toml::Value>,
    /// The async runtime a node's process builds ([`RuntimeConfig::build`]).
    pub runtime: RuntimeConfig,
    /// Route codes fixed by the user (`[routes]`, `"room.room.join" = 12`): they win over the
    /// codes derived from route names, and every gateway hands them out, whether or not a node
    /// running their module is up yet.
    pub routes: BTreeMap<String, u16>,
    /// Settings of the application as a whole (`[settings]`, mqant's `Settings`): every module
    /// of every process reads them ([`Config::app_settings`]), whichever modules it runs.
    pub settings: toml::Table,
    /// Where log lines go (`[log]`): stderr, a rotated file, or both.
    pub log: LogConfig,
}

/// Log output, `[log]`. `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// The filter when `RUST_LOG` is unset, e.g. `"info"` or `"info,my_game=debug"`; the
    /// command's own default when absent.
    pub level: Option<String>,
    /// `"text"` (the default) or `"json"` (one object per line).
    pub format: LogFormat,
    /// Lines also go to stderr (on by default).
    pub stderr: bool,
    /// A log file, rotated (`[log.file]`); none when absent.
    pub file: Option<LogFileConfig>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: None,
            format: LogFormat::Text,
            stderr: true,
            file: None,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// tracing's usual text lines, with the request in scope.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A rotated log file, `[log.file]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogFileConfig {
    /// The file's path; its directory is created if missing. With time-based rotation each
    /// period's file gets the date as a suffix (`rookery.log.2026-12-06`); with size-based
    /// rotation the current file keeps the name and older ones get `.1`, `.2`, ...
    pub path: String,
    /// `"daily"` (the default), `"hourly"`, `"size"` (at `max_size_mb`) or `"never"`.
    pub rotation: LogRotation,
    /// With `rotation = "size"`: the size at which a file is rotated, in MiB.
    pub max_size_mb: u64,
    /// Rotated files kept (older ones are deleted); at least 1.
    pub keep: usize,
}

impl Default for LogFileConfig {
    fn default() -> Self {
        Self {
            path: "logs/rookery.log".into(),
            rotation: LogRotation::Daily,
            max_size_mb: 100,
            keep: 7,
        }
    }
}

/// When a log file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    /// A new file every day.
    #[default]
    Daily,
    /// A new file every hour.
    Hourly,
    /// A new file once the current one reaches `max_size_mb`.
    Size,
    /// One file, never rotated.
    Never,
}

/// Which discovery back end a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryKind {
    /// In-memory, this process only (the default).
    #[default]
    Embedded,
    /// A fixed list of nodes (`cluster.static_nodes` or `cluster.static_file`).
    Static,
    /// etcd (`[cluster.etcd]`); needs the `etcd` feature.
    Etcd,
}

/// Which node-to-node transport a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// In-process only (the default).
    #[default]
    Inproc,
    /// Direct TCP between nodes (`[cluster.tcp]`).
    Tcp,
    /// NATS (`[cluster.nats]`); needs the `nats` feature.
    Nats,
}

/// Routing of calls to one module or node type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Selector name: `random` (default), `round-robin`, `weighted`, `consistent-hash`.
    pub selector: Option<String>,
    /// For `consistent-hash`: the JSON field of a client request whose value is the hash key
    /// (e.g. `room`); the session's uid, then its id, are used when it is absent.
    pub key: Option<String>,
    /// Only nodes of this version.
    pub version: Option<String>,
    /// Only nodes carrying all these tags.
    pub tags: BTreeMap<String, String>,
    /// Keep each session on the node first chosen for it while that node is available.
    pub sticky: bool,
}

/// Cluster membership and node-to-node messaging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Discovery back end.
    pub discovery: DiscoveryKind,
    /// Transport.
    pub transport: TransportKind,
    /// Nodes for static discovery.
    pub static_nodes: Vec<rookery_cluster::NodeInfo>,
    /// JSON file of nodes for static discovery.
    pub static_file: Option<String>,
    /// etcd settings (see the etcd back end).
    pub etcd: toml::Table,
    /// NATS settings (see the NATS transport).
    pub nats: toml::Table,
    /// TCP transport settings.
    pub tcp: toml::Table,
    /// Default deadline of RPC calls, seconds.
    pub rpc_timeout: f64,
    /// Calls from other nodes (forwarded requests and RPC) one module runs or waits to run at
    /// once; beyond it a call is refused at once with `RK-503` ("module busy").
    pub inbound_per_module: usize,
    /// Routing per module (or node type): `[cluster.routing.room]`.
    pub routing: BTreeMap<String, RoutingConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            discovery: DiscoveryKind::Embedded,
            transport: TransportKind::Inproc,
            static_nodes: Vec::new(),
            static_file: None,
            etcd: toml::Table::new(),
            nats: toml::Table::new(),
            tcp: toml::Table::new(),
            rpc_timeout: 5.0,
            inbound_per_module: 1024,
            routing: BTreeMap::new(),
        }
    }
}

impl ClusterConfig {
    /// Default RPC deadline.
    pub fn rpc_timeout(&self) -> Duration {
        secs(self.rpc_timeout)
    }
}

/// Identity of this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id, unique in the cluster.
    pub id: String,
    /// Node type (e.g. `gate`, `room`).
    #[serde(rename = "type")]
    pub node_type: String,
    /// Seconds allowed for draining in-flight work at shutdown.
    pub drain_timeout: f64,
    /// Software version published to the cluster.
    pub version: String,
    /// Logical address `cluster.type.index`.
    pub logical: Option<String>,
    /// Selection weight.
    pub weight: u32,
    /// Tags published to the cluster (routing tags, zone, ...).
    pub tags: BTreeMap<String, String>,
    /// Modules this process runs; all registered modules when absent.
    pub modules: Option<Vec<String>>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: generated_node_id(),
            node_type: "game".into(),
            drain_timeout: 10.0,
            version: env!("CARGO_PKG_VERSION").into(),
            logical: None,
            weight: 100,
            tags: BTreeMap::new(),
            modules: None,
        }
    }
}

/// A node id unique across machines and restarts: the host name and 48 random bits
/// (`game-host-3f9a0c21b7de`), so two machines or containers never pick the same one.
pub fn generated_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    // Only characters safe in keys, subjects and URLs.
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .take(48)
        .collect();
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

/// Acceptors and limits of the client-facing gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// TCP acceptor address; none when absent.
    pub tcp: Option<String>,
    /// WebSocket acceptor address; none when absent.
    pub ws: Option<String>,
    /// WebSocket path.
    pub ws_path: String,
    /// MQTT 3.1.1 acceptor address (TCP); none when absent. See `[mqtt]`.
    pub mqtt: Option<String>,
    /// MQTT over WebSocket acceptor address (subprotocol `mqtt`, path `mqtt.ws_path`).
    pub mqtt_ws: Option<String>,
    /// zinx framing acceptor address (TCP); none when absent. See `[zinx]`.
    pub zinx: Option<String>,
    /// KCP (UDP) acceptor address carrying the pomelo protocol; none when absent. See `[kcp]`.
    pub kcp: Option<String>,
    /// Responses and pushes larger than this many bytes are compressed (zlib, flag 0x10) for
    /// clients that announce `sys.compression = "zlib"` in their handshake; 0: never.
    pub compress_above: usize,
    /// TLS for the TCP and WebSocket acceptors (`tls://`, `wss://`): certificate chain and key,
    /// PEM files; read again on SIGHUP. Plain when absent.
    pub tls: Option<TlsFiles>,
    /// Heartbeat interval in whole seconds; a connection silent for twice this is closed.
    pub heartbeat: u64,
    /// Seconds a new connection has to complete the handshake (and its ack).
    pub handshake_timeout: f64,
    /// Seconds a handler may run before the request fails with `RK-408`.
    pub request_timeout: f64,
    /// Largest packet body accepted, in bytes.
    pub max_packet_size: usize,
    /// Packets queued towards one client before it is disconnected as too slow.
    pub outbound_queue: usize,
    /// Requests of one client running at once on concurrent routes; reading from it pauses
    /// beyond. (Ordered requests run one at a time.)
    pub inbound_queue: usize,
    /// Connections accepted at once; further ones wait in the OS backlog.
    pub max_connections: usize,
    /// Default serializer when the client does not ask for one.
    pub serializer: Serializer,
    /// Per-connection message rate limit.
    pub rate_limit: RateLimitConfig,
    /// Lines logged per second, at most, for connections the server closes (one line per
    /// connection); beyond it they are counted, and one summary line a second says how many
    /// were left out by reason, so that a flood of disconnects cannot flood the log. 0 logs
    /// only the summaries. The `rookery_disconnects_total` metric counts every one.
    pub disconnect_log_per_second: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            tcp: None,
            ws: None,
            ws_path: "/".into(),
            mqtt: None,
            mqtt_ws: None,
            zinx: None,
            kcp: None,
            compress_above: 1024,
            tls: None,
            heartbeat: 30,
            handshake_timeout: 10.0,
            request_timeout: 5.0,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            outbound_queue: 1024,
            inbound_queue: 64,
            max_connections: 100_000,
            serializer: Serializer::Json,
            rate_limit: RateLimitConfig::default(),
            disconnect_log_per_second: 100,
        }
    }
}

impl GatewayConfig {
    /// Heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat.max(1))
    }
    /// Handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        secs(self.handshake_timeout)
    }
    /// Handler deadline.
    pub fn request_timeout(&self) -> Duration {
        secs(self.request_timeout)
    }
}

/// MQTT clients (`gateway.mqtt`, `gateway.mqtt_ws`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// The WebSocket path of `gateway.mqtt_ws`.
    pub ws_path: String,
    /// QoS 1 pushes sent to one client and not yet acknowledged, at most; further ones wait
    /// (within `gateway.outbound_queue`).
    pub inflight: u16,
    /// Seconds after which an unacknowledged QoS 1 push is sent again (with DUP), while the
    /// client stays connected.
    pub redeliver: f64,
    /// Whether CONNECT logs the client in: `"username"` or `"client_id"` binds it as the
    /// session's user id once the handshake validator has accepted it (an older session of
    /// that user is kicked, as with any login); `"none"` leaves login to the game's handlers.
    pub login: MqttLogin,
    /// The longest keep-alive a client may ask for, in seconds; a longer one is cut to it (the
    /// client is then closed after one and a half of these without a packet).
    pub max_keep_alive: u16,
    /// mqant's topic form `moduleType/HD_handler[/msgid]`.
    pub mqant: MqantConfig,
}

/// What, of an MQTT CONNECT, is the session's user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqttLogin {
    /// Nothing: the game's login handler binds the user.
    None,
    /// The username.
    Username,
    /// The client id.
    ClientId,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            ws_path: "/mqtt".into(),
            inflight: 32,
            redeliver: 5.0,
            login: MqttLogin::None,
            max_keep_alive: 600,
            mqant: MqantConfig::default(),
        }
    }
}

impl MqttConfig {
    /// Redelivery interval of unacknowledged QoS 1 pushes.
    pub fn redeliver(&self) -> Duration {
        secs(self.redeliver)
    }
}

/// How mqant's topics `moduleType/HD_handler[/msgid]` map to routes. A topic's
/// `moduleType/HD_handler` is looked up in `routes` first (a whole route), then its moduleType
/// in `modules` (a `module.handler`, to which the handler's name without `HD_` is appended).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqantConfig {
    /// `"moduleType/HD_handler"` → route, e.g. `"Chat/HD_Say" = "room.room.say"`.
    pub routes: BTreeMap<String, String>,
    /// `"moduleType"` → `module.handler`, e.g. `Login = "connector.entry"`: `Login/HD_login`
    /// is `connector.entry.login`.
    pub modules: BTreeMap<String, String>,
}

/// zinx clients (`gateway.zinx`): which route each msgID is, and the msgIDs of answers and
/// pushes. A msgID without an entry in `routes` is the route pinned to that code in `[routes]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZinxConfig {
    /// The data pack: `"tlv-big-endian"` (zinx 1.1.3 and later: msgID, then length, big-endian)
    /// or `"ltv-little-endian"` (earlier zinx: length, then msgID, little-endian).
    pub pack: ZinxPack,
    /// msgID → route (keys are the msgIDs, as TOML keys are strings).
    pub routes: BTreeMap<String, String>,
    /// Route → the msgID its answers are sent with; by default the request's own.
    pub replies: BTreeMap<String, u32>,
    /// Push route → the msgID pushes on it are sent with; by default the route's code in the
    /// dictionary. A push on a route with neither is not sent to zinx clients (and logged).
    pub pushes: BTreeMap<String, u32>,
    /// The msgID errors are answered with; by default the answer's own.
    pub error_msg_id: Option<u32>,
    /// The msgID of zinx's heartbeat (`ping`), echoed back as it came (zinx's default 99999).
    pub heartbeat_msg_id: u32,
    /// zinx-cluster's `route.json` (group → `[{MsgID, Name}]`): every msgID it lists must
    /// have a route (in `routes` or `[routes]`), checked at start.
    pub route_file: Option<String>,
    /// zinx-cluster's `dinx.json` (group → nodes): read and checked at start; its groups must
    /// be those of `route_file`. Nodes find each other through discovery, not this file.
    pub node_file: Option<String>,
}

impl Default for ZinxConfig {
    fn default() -> Self {
        Self {
            pack: ZinxPack::TlvBigEndian,
            routes: BTreeMap::new(),
            replies: BTreeMap::new(),
            pushes: BTreeMap::new(),
            error_msg_id: None,
            heartbeat_msg_id: 99999,
            route_file: None,
            node_file: None,
        }
    }
}

/// zinx's data packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZinxPack {
    /// msgID (u32), data length (u32), big-endian: zinx's default since 1.1.3.
    #[serde(rename = "tlv-big-endian")]
    TlvBigEndian,
    /// Data length (u32), msgID (u32), little-endian: zinx before 1.1.3.
    #[serde(rename = "ltv-little-endian")]
    LtvLittleEndian,
}

/// KCP clients (`gateway.kcp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KcpConfig {
    /// KCP's nodelay mode (faster resends, at the cost of bandwidth).
    pub nodelay: bool,
    /// Internal update interval, in milliseconds.
    pub interval: i32,
    /// Fast resend after this many duplicate acks (0: off).
    pub resend: i32,
    /// Turn congestion control off.
    pub no_congestion_control: bool,
    /// Send and receive windows, in packets.
    pub window: u16,
    /// The largest UDP datagram, in bytes.
    pub mtu: usize,
}

impl Default for KcpConfig {
    fn default() -> Self {
        Self {
            nodelay: true,
            interval: 10,
            resend: 2,
            no_congestion_control: true,
            window: 256,
            mtu: 1400,
        }
    }
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain (leaf first).
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// Per-connection rate limit on inbound messages (requests and notifies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained messages per second; 0 turns the limit off.
    pub per_second: u32,
    /// Burst allowance.
    pub burst: u32,
    /// Refused messages after which the client is disconnected.
    pub max_violations: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 1000,
            burst: 2000,
            max_violations: 100,
        }
    }
}

/// The async runtime of a node's process (the `rookery` binary builds it from this section;
/// an application embedding Rookery can use [`RuntimeConfig::build`] too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Which scheduler runs the node's tasks.
    pub scheduler: Scheduler,
    /// Worker threads of the multi-thread scheduler; 0 = one per core this process may run on.
    pub workers: usize,
    /// Task polls between two looks at the scheduler's global queue; 0 = tokio's default
    /// (adaptive). Matters only under overload: when more connections are ready at once than a
    /// worker's local queue holds, the rest wait in the global queue, and a small value bounds
    /// their wait, at the cost of throughput (serving every connection in turn touches each
    /// one's cold state). For operators who prefer even latency over peak throughput when
    /// overloaded; BENCHMARKS.md has the trade-off measured.
    pub global_queue_interval: u32,
}

/// The scheduler of a node's runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// tokio's multi-thread scheduler (work stealing across `workers` threads). Under overload on
    /// a core it serves the ready connections in its local queue first, which keeps throughput
    /// up and lets the others wait; `global_queue_interval` bounds how long.
    #[default]
    MultiThread,
    /// tokio's single-threaded scheduler: every task on one thread, ready connections served
    /// in turn. For a process given one core (one per core, behind a load balancer) that should
    /// keep latency even under overload, for less throughput (each turn touches every
    /// connection's cold state; BENCHMARKS.md has both measured). `workers` does not apply.
    CurrentThread,
}

impl RuntimeConfig {
    /// Settings that [`build`](Self::build) ignores with this scheduler, each as a sentence to
    /// log once the process logs (a runtime is built before logging starts).
    pub fn ignored_settings(&self) -> Vec<String> {
        let mut ignored = Vec::new();
        if self.scheduler == Scheduler::CurrentThread && self.workers > 0 {
            ignored.push(format!(
                "[runtime] workers = {} has no effect with scheduler = \"current_thread\" (one thread)",
                self.workers
            ));
        }
        ignored
    }

    /// A tokio runtime with these settings and every driver (I/O, time) enabled.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut b = match self.scheduler {
            Scheduler::MultiThread => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                if self.workers > 0 {
                    b.worker_threads(self.workers);
                }
                b
            }
            Scheduler::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        };
        b.enable_all();
        if self.global_queue_interval > 0 {
            b.global_queue_interval(self.global_queue_interval);
        }
        b.build()
    }
}

/// The admin address (Prometheus `/metrics`, JSON `/api/*`, the dashboard at `/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on; no admin server when absent.
    pub addr: Option<String>,
    /// Bearer token that unlocks the POST endpoints (kick, broadcast); read-only without it.
    pub token: Option<String>,
    /// Seconds a connection has to send a request's head (request line and headers), counted
    /// from the connection's start or from the first byte of a later request; past it the
    /// connection is closed, so a client that sends nothing or trickles its head holds no
    /// connection for long.
    pub header_timeout: f64,
    /// Seconds a request's body has to arrive in full, counted from the end of its head; past
    /// it the request is answered 408 and the connection closed.
    pub body_timeout: f64,
    /// Seconds a kept-alive connection may wait for its next request before it is closed.
    pub idle_timeout: f64,
    /// Connections served at once. Beyond it a new connection is answered 503 and closed, so
    /// no number of clients can take more file descriptors than this from the process (and
    /// from the game gateway, which shares them).
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: None,
            token: None,
            header_timeout: 5.0,
            body_timeout: 10.0,
            idle_timeout: 15.0,
            max_connections: 64,
        }
    }
}

impl AdminConfig {
    /// Deadline of a request's head.
    pub fn header_timeout(&self) -> Duration {
        secs(self.header_timeout)
    }
    /// Deadline of a request's body.
    pub fn body_timeout(&self) -> Duration {
        secs(self.body_timeout)
    }
    /// How long a kept-alive connection may be idle.
    pub fn idle_timeout(&self) -> Duration {
        secs(self.idle_timeout)
    }
}

/// The HTTP gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; no HTTP gateway when absent.
    pub addr: Option<String>,
    /// Largest request body accepted, in bytes (larger ones are answered 413).
    pub max_body: usize,
    /// Seconds the route's handler may take before the request is answered 408.
    pub timeout: f64,
    /// Seconds a connection has to send a request's head (request line and headers), counted
    /// from the connection's start or from the first byte of a later request; past it the
    /// connection is closed, so a client that sends nothing or trickles its head holds no
    /// connection for long.
    pub header_timeout: f64,
    /// Seconds a request's body has to arrive in full, counted from the end of its head; past
    /// it the request is answered 408 and the connection closed.
    pub body_timeout: f64,
    /// Seconds a kept-alive connection may wait for its next request before it is closed.
    pub idle_timeout: f64,
    /// Connections served at once. Beyond it a new connection is answered 503 and closed, so
    /// no number of clients can take more file descriptors than this from the process (and
    /// from the game gateway, which shares them).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: None,
            max_body: 64 * 1024,
            timeout: 5.0,
            header_timeout: 5.0,
            body_timeout: 10.0,
            idle_timeout: 15.0,
            max_connections: 1024,
        }
    }
}

impl HttpConfig {
    /// Deadline of a handler.
    pub fn timeout(&self) -> Duration {
        secs(self.timeout)
    }
    /// Deadline of a request's head.
    pub fn header_timeout(&self) -> Duration {
        secs(self.header_timeout)
    }
    /// Deadline of a request's body.
    pub fn body_timeout(&self) -> Duration {
        secs(self.body_timeout)
    }
    /// How long a kept-alive connection may be idle.
    pub fn idle_timeout(&self) -> Duration {
        secs(self.idle_timeout)
    }
}

/// A duration from seconds, clamped to sane bounds.
pub(crate) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.001, 86_400.0))
}

impl Config {
    /// Reads a TOML file (if given), applies the process environment's overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| {
                ConfigError::new(ConfigErrorKind::Read, p.display().to_string()).with_source(source)
            })?,
            None => String::new(),
        };
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Like [`Config::load`], for one process of a multi-process config: the table
    /// `[processes.NAME]` is merged over the file (its `modules` list becomes `node.modules`).
    pub fn load_process(path: Option<&Path>, process: Option<&str>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| {
                ConfigError::new(ConfigErrorKind::Read, p.display().to_string()).with_source(source)
            })?,
            None => String::new(),
        };
        Self::from_toml_process(&text, process, std::env::vars())
    }

    /// Parses TOML text and applies the given `(name, value)` environment overrides.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_toml_process(text, None, env)
    }

    /// Parses TOML text, merges the named process's overrides, then applies environment
    /// overrides.
    pub fn from_toml_process(
        text: &str,
        process: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut root: toml::Table = toml::from_str(text).map_err(|e| invalid("").with_source(e))?;
        if let Some(name) = process {
            let overrides = root
                .get("processes")
                .and_then(|p| p.get(name))
                .and_then(|p| p.as_table())
                .cloned()
                .ok_or_else(|| invalid(format!("no [processes.{name}] in the config")))?;
            for (k, v) in overrides {
                if k == "modules" {
                    set_path(&mut root, &["node".into(), "modules".into()], v)?;
                } else {
                    merge_into(&mut root, k, v);
                }
            }
        }
        for (name, value) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            if keys.iter().any(String::is_empty) {
                continue;
            }
            set_path(&mut root, &keys, parse_env_value(&value))?;
        }
        let cfg: Config = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| invalid("").with_source(e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks limits that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        let bad = |m: &str| Err(invalid(m.to_string()));
        if g.heartbeat == 0 {
            return bad("gateway.heartbeat must be at least 1 second");
        }
        if g.max_packet_size == 0 || g.max_packet_size > rookery_protocol::packet::MAX_WIRE_BODY {
            return bad("gateway.max_packet_size must be between 1 and 16777215");
        }
        if g.outbound_queue == 0 || g.inbound_queue == 0 || g.max_connections == 0 {
            return bad("gateway queues and max_connections must be at least 1");
        }
        if self.cluster.inbound_per_module == 0 {
            return bad("cluster.inbound_per_module must be at least 1");
        }
        if !g.ws_path.starts_with('/') {
            return bad("gateway.ws_path must start with '/'");
        }
        if !self.mqtt.ws_path.starts_with('/') {
            return bad("mqtt.ws_path must start with '/'");
        }
        if self.mqtt.inflight == 0 {
            return bad("mqtt.inflight must be at least 1");
        }
        if !(self.mqtt.redeliver.is_finite() && self.mqtt.redeliver > 0.0) {
            return bad("mqtt.redeliver must be a positive number of seconds");
        }
        if let Some(k) = self.zinx.routes.keys().find(|k| k.parse::<u32>().is_err()) {
            return Err(invalid(format!(
                "zinx.routes: {k:?} is not a msgID (0 to 4294967295)"
            )));
        }
        if self.kcp.interval < 1 || self.kcp.window == 0 || !(64..=65_000).contains(&self.kcp.mtu) {
            return bad(
                "kcp.interval and kcp.window must be at least 1, kcp.mtu between 64 and 65000",
            );
        }
        if g.disconnect_log_per_second > MAX_DISCONNECT_LOG_PER_SECOND {
            return bad("gateway.disconnect_log_per_second must be at most 1000000");
        }
        if let Some(f) = &self.log.file {
            if f.path.trim().is_empty() {
                return bad("log.file.path must not be empty");
            }
            if f.keep == 0 {
                return bad("log.file.keep must be at least 1");
            }
            if f.rotation == LogRotation::Size && f.max_size_mb == 0 {
                return bad("log.file.max_size_mb must be at least 1");
            }
        }
        let (a, h) = (&self.admin, &self.http);
        for (name, value) in [
            ("admin.header_timeout", a.header_timeout),
            ("admin.body_timeout", a.body_timeout),
            ("admin.idle_timeout", a.idle_timeout),
            ("http.timeout", h.timeout),
            ("http.header_timeout", h.header_timeout),
            ("http.body_timeout", h.body_timeout),
            ("http.idle_timeout", h.idle_timeout),
        ] {
            // A zero, negative or NaN deadline would be read as the shortest one and close
            // every connection at once: a mistake, not a choice.
            if !(value > 0.0 && value.is_finite()) {
                return Err(invalid(format!(
                    "{name} must be a positive number of seconds"
                )));
            }
        }
        if a.max_connections == 0 || h.max_connections == 0 {
            return bad("admin.max_connections and http.max_connections must be at least 1");
        }
        if let Err(e) = self.route_dict([]) {
            return Err(invalid("[routes]").with_source(e));
        }
        Ok(())
    }

    /// The route dictionary of `routes` with the codes pinned in `[routes]` (which it also
    /// holds); an error names two routes given the same code.
    pub fn route_dict<'a>(
        &'a self,
        routes: impl IntoIterator<Item = &'a str>,
    ) -> Result<rookery_protocol::RouteDict, rookery_protocol::DictError> {
        let pinned = self.routes.iter().map(|(r, c)| (r.as_str(), *c));
        rookery_protocol::RouteDict::stable(
            pinned,
            self.routes.keys().map(String::as_str).chain(routes),
        )
    }

    /// Settings of one module (`[modules.NAME]`), if any.
    pub fn module_settings(&self, name: &str) -> Option<&toml::Value> {
        self.modules.get(name)
    }

    /// The application's settings (`[settings]`) as `T` (its defaults for absent fields, with
    /// `#[serde(default)]`); an error names the section.
    pub fn app_settings<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::Value::Table(self.settings.clone())
            .try_into()
            .map_err(|e: toml::de::Error| invalid(format!("[settings]: {e}")))
    }
}

/// Deep-merges `value` into `table[key]` (tables merge key by key; anything else replaces).
fn merge_into(table: &mut toml::Table, key: String, value: toml::Value) {
    match (table.get_mut(&key), value) {
        (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
            for (k, v) in src {
                merge_into(dst, k, v);
            }
        }
        (_, v) => {
            table.insert(key, v);
        }
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Parse as a TOML value by wrapping it in a one-key document.
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(
    table: &mut toml::Table,
    keys: &[String],
    value: toml::Value,
) -> Result<(), ConfigError> {
    let (last, parents) = keys.split_last().expect("non-empty path");
    let mut cur = table;
    for k in parents {
        let entry = cur
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| invalid(format!("environment override: {k} is not a table")))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn app_settings_are_typed_with_defaults() {
        #[derive(serde::Deserialize, Default, Debug, PartialEq)]
        #[serde(default)]
        struct Game {
            motd: String,
            max_level: u32,
        }
        let cfg = Config::from_toml_with_env(
            "[settings]\nmotd = \"welcome\"\n",
            env(&[("ROOKERY_SETTINGS__MAX_LEVEL", "60")]),
        )
        .unwrap();
        assert_eq!(
            cfg.app_settings::<Game>().unwrap(),
            Game {
                motd: "welcome".into(),
                max_level: 60
            }
        );
        assert_eq!(
            Config::default().app_settings::<Game>().unwrap(),
            Game::default()
        );
        let bad = Config::from_toml_with_env("[settings]\nmax_level = \"x\"\n", vec![]).unwrap();
        let e = bad.app_settings::<Game>().unwrap_err().to_string();
        assert!(e.contains("[settings]") && e.contains("max_level"), "{e}");
    }

    #[test]
    fn log_section_reads_with_defaults_env_and_checks() {
        let cfg = Config::from_toml_with_env(
            "[log]\nformat = \"json\"\n[log.file]\npath = \"var/game.log\"\nrotation = \"size\"\n",
            env(&[
                ("ROOKERY_LOG__FILE__KEEP", "3"),
                ("ROOKERY_LOG__STDERR", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert!(!cfg.log.stderr);
        let file = cfg.log.file.as_ref().expect("a file");
        assert_eq!(file.path, "var/game.log");
        assert_eq!(file.rotation, LogRotation::Size);
        assert_eq!((file.max_size_mb, file.keep), (100, 3));
        assert!(cfg.validate().is_ok());
        // Stderr on, no file, by default.
        let d = Config::default().log;
        assert!(d.stderr && d.file.is_none() && d.format == LogFormat::Text);
        for bad in [
            "[log.file]\nkeep = 0\n",
            "[log.file]\nrotation = \"size\"\nmax_size_mb = 0\n",
            "[log.file]\npath = \"\"\n",
        ] {
            let e = Config::from_toml_with_env(bad, vec![]).unwrap_err();
            assert!(e.to_string().contains("log.file."), "{bad}: {e}");
        }
        assert!(Config::from_toml_with_env("[log]\nformat = \"xml\"\n", vec![]).is_err());
        assert!(Config::from_toml_with_env("[log.file]\nrotation = \"weekly\"\n", vec![]).is_err());
    }

    #[test]
    fn pinned_route_codes_are_checked() {
        let cfg = Config::from_toml_with_env(
            "[routes]\n\"room.room.join\" = 12\n\"room.room.say\" = 13\n",
            vec![],
        )
        .unwrap();
        let dict = cfg.route_dict(["connector.entry.login"]).unwrap();
        assert_eq!(dict.code("room.room.join"), Some(12));
        assert_eq!(dict.code("room.room.say"), Some(13));
        assert!(dict.code("connector.entry.login").is_some());
        let e = Config::from_toml_with_env(
            "[routes]\n\"room.room.join\" = 12\n\"room.room.say\" = 12\n",
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("room.room.join") && e.contains("room.room.say") && e.contains("12"),
            "{e}"
        );
    }

    #[test]
    fn generated_node_ids_differ_and_name_the_host() {
        let (a, b) = (generated_node_id(), generated_node_id());
        assert_ne!(a, b);
        let (host, suffix) = a.rsplit_once('-').unwrap();
        assert!(!host.is_empty());
        assert_eq!(suffix.len(), 12);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')),
            "{a}"
        );
        assert_ne!(Config::default().node.id, Config::default().node.id);
    }

    #[test]
    fn runtime_section_builds_the_runtime() {
        let cfg = Config::from_toml_with_env(
            "[runtime]\nworkers = 3\n",
            env(&[("ROOKERY_RUNTIME__GLOBAL_QUEUE_INTERVAL", "2")]),
        )
        .unwrap();
        assert_eq!(
            cfg.runtime,
            RuntimeConfig {
                scheduler: Scheduler::MultiThread,
                workers: 3,
                global_queue_interval: 2
            }
        );
        let rt = cfg.runtime.build().unwrap();
        assert_eq!(rt.metrics().num_workers(), 3);
        assert_eq!(rt.block_on(async { 40 + 2 }), 42);
        // No section: zeros, tokio's defaults.
        let cfg = Config::from_toml_with_env("", vec![]).unwrap();
        assert_eq!(cfg.runtime, RuntimeConfig::default());
        assert_eq!(cfg.runtime.global_queue_interval, 0);
        let rt = cfg.runtime.build().unwrap();
        assert!(rt.metrics().num_workers() >= 1);
        assert!(Config::from_toml_with_env("[runtime]\nthreads = 1\n", vec![]).is_err());
        // The single-threaded scheduler, from the file or the environment.
        let cfg = Config::from_toml_with_env(
            "",
            env(&[("ROOKERY_RUNTIME__SCHEDULER", "current_thread")]),
        )
        .unwrap();
        assert_eq!(cfg.runtime.scheduler, Scheduler::CurrentThread);
        assert!(cfg.runtime.ignored_settings().is_empty());
        let with_workers = RuntimeConfig {
            workers: 4,
            ..cfg.runtime.clone()
        };
        let ignored = with_workers.ignored_settings();
        assert_eq!(ignored.len(), 1);
        assert!(ignored[0].contains("workers = 4"), "{ignored:?}");
        let multi = RuntimeConfig {
            scheduler: Scheduler::MultiThread,
            ..with_workers
        };
        assert!(multi.ignored_settings().is_empty());
        let rt = cfg.runtime.build().unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
        assert_eq!(
            rt.block_on(async { tokio::spawn(async { 6 * 7 }).await.unwrap() }),
            42
        );
        assert!(Config::from_toml_with_env("[runtime]\nscheduler = \"fast\"\n", vec![]).is_err());
    }

    #[test]
    fn file_then_env() {
        let toml = r#"
            [gateway]
            tcp = "127.0.0.1:1"
            heartbeat = 5
            [modules.room]
            max_members = 3
        "#;
        let cfg = Config::from_toml_with_env(
            toml,
            env(&[
                ("ROOKERY_GATEWAY__HEARTBEAT", "7"),
                ("ROOKERY_GATEWAY__WS", "127.0.0.1:2"),
                ("ROOKERY_MODULES__ROOM__MAX_MEMBERS", "9"),
                ("ROOKERY_GATEWAY__RATE_LIMIT__PER_SECOND", "0"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.gateway.tcp.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(cfg.gateway.heartbeat, 7);
        assert_eq!(cfg.gateway.ws.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(cfg.gateway.rate_limit.per_second, 0);
        assert_eq!(
            cfg.module_settings("room").unwrap()["max_members"].as_integer(),
            Some(9)
        );
    }

    #[test]
    fn process_sections_merge_over_the_file() {
        let toml = r#"
            [node]
            type = "game"
            [gateway]
            heartbeat = 5
            [cluster]
            discovery = "static"
            [processes.gate-1]
            modules = ["connector"]
            node = { id = "gate-1", type = "gate" }
            gateway = { tcp = "127.0.0.1:3250" }
            [processes.room-1]
            modules = ["room"]
            node = { id = "room-1", type = "room", logical = "1.2.1" }
        "#;
        let g = Config::from_toml_process(toml, Some("gate-1"), env(&[])).unwrap();
        assert_eq!(g.node.id, "gate-1");
        assert_eq!(g.node.node_type, "gate");
        assert_eq!(
            g.node.modules.as_deref(),
            Some(&["connector".to_string()][..])
        );
        assert_eq!(g.gateway.tcp.as_deref(), Some("127.0.0.1:3250"));
        assert_eq!(
            g.gateway.heartbeat, 5,
            "untouched keys keep the file's value"
        );
        assert_eq!(g.cluster.discovery, DiscoveryKind::Static);
        let r = Config::from_toml_process(toml, Some("room-1"), env(&[])).unwrap();
        assert_eq!(r.node.logical.as_deref(), Some("1.2.1"));
        assert_eq!(r.gateway.tcp, None);
        assert!(Config::from_toml_process(toml, Some("nope"), env(&[])).is_err());
    }

    #[test]
    fn rejects_unknown_and_invalid() {
        assert!(Config::from_toml_with_env("[gateway]\nnope = 1", env(&[])).is_err());
        assert!(
            Config::from_toml_with_env("", env(&[("ROOKERY_GATEWAY__HEARTBEAT", "0")])).is_err()
        );
        assert!(
            Config::from_toml_with_env("", env(&[("ROOKERY_GATEWAY__HEARTBEAT", "abc")])).is_err()
        );
        let d = Config::from_toml_with_env("", env(&[])).unwrap();
        assert_eq!(d.gateway.max_packet_size, 64 * 1024);
        assert_eq!(d.gateway.heartbeat, 30);
    }

    #[test]
    fn disconnect_log_cap() {
        let d = Config::from_toml_with_env("", env(&[])).unwrap();
        assert_eq!(d.gateway.disconnect_log_per_second, 100);
        let cfg =
            Config::from_toml_with_env("[gateway]\ndisconnect_log_per_second = 5\n", env(&[]))
                .unwrap();
        assert_eq!(cfg.gateway.disconnect_log_per_second, 5);
        // 0: summaries only.
        let cfg = Config::from_toml_with_env(
            "",
            env(&[("ROOKERY_GATEWAY__DISCONNECT_LOG_PER_SECOND", "0")]),
        )
        .unwrap();
        assert_eq!(cfg.gateway.disconnect_log_per_second, 0);
        for bad in ["-1", "1.5", "\"many\"", "1000001"] {
            assert!(
                Config::from_toml_with_env(
                    &format!("[gateway]\ndisconnect_log_per_second = {bad}\n"),
                    env(&[]),
                )
                .is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn admin_and_http_sections() {
        let d = Config::from_toml_with_env("", env(&[])).unwrap();
        assert_eq!(d.admin, AdminConfig::default());
        assert_eq!(d.http.max_body, 64 * 1024);
        assert_eq!(d.http.timeout(), Duration::from_secs(5));
        let toml = r#"
            [admin]
            addr = "127.0.0.1:3252"
            [http]
            addr = "127.0.0.1:3253"
            max_body = 1024
            timeout = 0.5
        "#;
        let cfg =
            Config::from_toml_with_env(toml, env(&[("ROOKERY_ADMIN__TOKEN", "s3cret")])).unwrap();
        assert_eq!(cfg.admin.addr.as_deref(), Some("127.0.0.1:3252"));
        assert_eq!(cfg.admin.token.as_deref(), Some("s3cret"));
        assert_eq!(cfg.http.addr.as_deref(), Some("127.0.0.1:3253"));
        assert_eq!(cfg.http.max_body, 1024);
        assert_eq!(cfg.http.timeout(), Duration::from_millis(500));
        assert_eq!(d.http.header_timeout(), Duration::from_secs(5));
        assert_eq!(d.http.body_timeout(), Duration::from_secs(10));
        assert_eq!(d.http.idle_timeout(), Duration::from_secs(15));
        assert_eq!(d.http.max_connections, 1024);
        assert_eq!(d.admin.header_timeout(), Duration::from_secs(5));
        assert_eq!(d.admin.body_timeout(), Duration::from_secs(10));
        assert_eq!(d.admin.idle_timeout(), Duration::from_secs(15));
        assert_eq!(d.admin.max_connections, 64);
        let toml = r#"
            [admin]
            header_timeout = 0.25
            body_timeout = 0.5
            idle_timeout = 2
            max_connections = 3
            [http]
            header_timeout = 1.5
            body_timeout = 2.5
            idle_timeout = 3.5
            max_connections = 7
        "#;
        let cfg =
            Config::from_toml_with_env(toml, env(&[("ROOKERY_HTTP__IDLE_TIMEOUT", "4")])).unwrap();
        assert_eq!(cfg.admin.header_timeout(), Duration::from_millis(250));
        assert_eq!(cfg.admin.body_timeout(), Duration::from_millis(500));
        assert_eq!(cfg.admin.idle_timeout(), Duration::from_secs(2));
        assert_eq!(cfg.admin.max_connections, 3);
        assert_eq!(cfg.http.header_timeout(), Duration::from_millis(1500));
        assert_eq!(cfg.http.body_timeout(), Duration::from_millis(2500));
        assert_eq!(cfg.http.idle_timeout(), Duration::from_secs(4));
        assert_eq!(cfg.http.max_connections, 7);
        for section in ["admin", "http"] {
            for key in ["header_timeout", "body_timeout", "idle_timeout"] {
                for bad in ["0", "-1", "nan", "inf"] {
                    let toml = format!("[{section}]\n{key} = {bad}\n");
                    let err = Config::from_toml_with_env(&toml, env(&[]))
                        .expect_err(&format!("{section}.{key} = {bad} accepted"));
                    assert!(err.to_string().contains(key), "{err}");
                }
            }
            let toml = format!("[{section}]\nmax_connections = 0\n");
            assert!(Config::from_toml_with_env(&toml, env(&[])).is_err());
        }
        assert!(Config::from_toml_with_env("[http]\ntimeout = 0", env(&[])).is_err());
        assert!(Config::from_toml_with_env("[admin]\nnope = 1", env(&[])).is_err());
        assert!(Config::from_toml_with_env("[http]\nnope = 1", env(&[])).is_err());
    }
}
