//! `rookery-protobench`: closed-loop request/response load over the client protocols, each
//! connection with one request in flight, all measured by this one generator so that their
//! figures compare:
//!
//! - `pomelo://HOST:PORT`: pomelo packets over TCP (handshake, then `--route` requests);
//! - `kcp://HOST:PORT`: the same over KCP;
//! - `mqtt://HOST:PORT`: MQTT 3.1.1 to Rookery (a PUBLISH on `module/handler/method/N`,
//!   answered on the same topic);
//! - `broker://HOST:PORT`: MQTT through a plain broker (mosquitto): each connection subscribes
//!   to a topic of its own and publishes the payload there, so a request is the broker's
//!   publish/subscribe round trip (the yardstick for what a gateway adds).
//!
//! Prints the same JSON as `rookery bench --json` (the fields that apply).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use hdrhistogram::Histogram;
use rookery_protocol::{Message, MessageType, Packet, PacketCodec, PacketType, Route, RouteName};
use rumqttc::mqttbytes::v4::{Connect, Packet as Mqtt, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "Closed-loop load over pomelo TCP, KCP, MQTT, and MQTT through a broker")]
struct Args {
    /// pomelo://, kcp://, mqtt:// or broker:// HOST:PORT.
    #[arg(long)]
    addr: String,
    /// Connections, each with one request in flight.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before the measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Request payload.
    #[arg(
        long,
        default_value = r#"{"data":"0123456789abcdef0123456789abcdef0123456789abcdefghijk"}"#
    )]
    payload: String,
    /// Route of the requests (pomelo, KCP, MQTT).
    #[arg(long, default_value = "room.room.echo")]
    route: String,
    /// New connections per second while connecting.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// A request unanswered for this many seconds counts as a timeout and ends its connection.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Pomelo,
    Kcp,
    Mqtt,
    Broker,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    connect_errors: AtomicU64,
}

/// A connection's byte stream: TCP or KCP.
type Io = Box<dyn ByteStream>;
trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (kind, rest) = [
        ("pomelo://", Kind::Pomelo),
        ("kcp://", Kind::Kcp),
        ("mqtt://", Kind::Mqtt),
        ("broker://", Kind::Broker),
    ]
    .into_iter()
    .find_map(|(p, k)| args.addr.strip_prefix(p).map(|r| (k, r)))
    .ok_or("--addr must start with pomelo://, kcp://, mqtt:// or broker://")?;
    let addr: SocketAddr = tokio::net::lookup_host(rest)
        .await?
        .next()
        .ok_or("no address")?;
    let counters = Arc::new(Counters::default());
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let connect_gap = Duration::from_secs_f64(1.0 / args.connect_rate.max(1.0));
    let connected_by =
        Duration::from_secs_f64(args.connections as f64 / args.connect_rate.max(1.0));
    let begin = Instant::now() + connected_by + Duration::from_secs_f64(args.warmup);
    let end = begin + Duration::from_secs_f64(args.duration);
    let payload = Bytes::from(args.payload.clone().into_bytes());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        let (counters, hist, payload, route) = (
            counters.clone(),
            hist.clone(),
            payload.clone(),
            args.route.clone(),
        );
        let timeout = Duration::from_secs_f64(args.timeout);
        tasks.spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let r = connection(
                kind, addr, i, &route, payload, begin, end, timeout, &counters, &mut local,
            )
            .await;
            if let Err(e) = r {
                eprintln!("connection {i}: {e}");
            }
            hist.lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(&local)
                .ok();
        });
        tokio::time::sleep(connect_gap).await;
    }
    while tasks.join_next().await.is_some() {}
    let h = hist.lock().unwrap_or_else(|e| e.into_inner());
    let requests = counters.requests.load(Ordering::Relaxed);
    let failed = counters.connect_errors.load(Ordering::Relaxed);
    let measured = args.duration;
    let report = serde_json::json!({
        "connections": args.connections - failed as usize,
        "connect_errors": failed,
        "requests": requests,
        "errors": counters.errors.load(Ordering::Relaxed),
        "timeouts": counters.timeouts.load(Ordering::Relaxed),
        "errors_by_code": {},
        "closed_by_server": {"total": 0, "reasons": {}},
        "duration_secs": args.duration,
        "measured_secs": measured,
        "requests_per_sec": requests as f64 / measured,
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": h.mean(),
        "pushes": 0,
        "pushes_per_sec": 0.0,
        "push_p50_us": 0,
        "push_p99_us": 0,
    });
    println!("{report}");
    Ok(())
}

/// One connection: set up, then requests until `end`, those answered within
/// [`begin`, `end`) counted and their latencies recorded.
#[allow(clippy::too_many_arguments)]
async fn connection(
    kind: Kind,
    addr: SocketAddr,
    i: usize,
    route: &str,
    payload: Bytes,
    begin: Instant,
    end: Instant,
    timeout: Duration,
    counters: &Counters,
    hist: &mut Histogram<u64>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let io: Io = match kind {
        Kind::Kcp => {
            let cfg = tokio_kcp::KcpConfig {
                nodelay: tokio_kcp::KcpNoDelayConfig::fastest(),
                flush_write: true,
                flush_acks_input: true,
                ..Default::default()
            };
            match tokio_kcp::KcpStream::connect(&cfg, addr).await {
                Ok(s) => Box::new(s),
                Err(e) => {
                    counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
            }
        }
        _ => match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Err(e) => {
                counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        },
    };
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(4096),
        codec: PacketCodec::new(1 << 20),
    };
    let setup = async {
        let p: Box<dyn Protocol> = match kind {
            Kind::Pomelo | Kind::Kcp => Box::new(Pomelo::setup(&mut conn, route).await?),
            Kind::Mqtt => Box::new(MqttProto::setup(&mut conn, i, route, false).await?),
            Kind::Broker => Box::new(MqttProto::setup(&mut conn, i, route, true).await?),
        };
        Ok::<_, BoxError>(p)
    };
    let mut proto = match tokio::time::timeout(timeout, setup).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            counters.connect_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        Err(_) => {
            counters.connect_errors.fetch_add(1, Ordering::Relaxed);
            return Err("handshake timed out".into());
        }
    };
    loop {
        let sent = Instant::now();
        if sent >= end {
            return Ok(());
        }
        let answered = tokio::time::timeout(timeout, proto.request(&mut conn, &payload)).await;
        let done = Instant::now();
        match answered {
            Ok(Ok(())) => {
                if sent >= begin && done < end {
                    counters.requests.fetch_add(1, Ordering::Relaxed);
                    let us =
                        u64::try_from(done.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    hist.record(us.max(1)).ok();
                }
            }
            Ok(Err(e)) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            Err(_) => {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err("request timed out".into());
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Conn {
    io: Io,
    buf: BytesMut,
    codec: PacketCodec,
}

impl Conn {
    async fn fill(&mut self) -> Result<(), BoxError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        if self.io.read_buf(&mut self.buf).await? == 0 {
            return Err("closed by the server".into());
        }
        Ok(())
    }

    async fn packet(&mut self) -> Result<Packet, BoxError> {
        loop {
            if let Some(p) = self.codec.decode(&mut self.buf)? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    async fn mqtt(&mut self) -> Result<Mqtt, BoxError> {
        loop {
            match Mqtt::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Ok(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => self.fill().await?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn send(&mut self, b: &[u8]) -> Result<(), BoxError> {
        self.io.write_all(b).await?;
        self.io.flush().await?;
        Ok(())
    }

    async fn send_mqtt(&mut self, p: Mqtt) -> Result<(), BoxError> {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX)?;
        self.send(&b).await
    }
}

/// One protocol's request.
trait Protocol: Send {
    fn request<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        payload: &'a Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send + 'a>>;
}

struct Pomelo {
    route: RouteName,
    next_id: u64,
}

impl Pomelo {
    async fn setup(conn: &mut Conn, route: &str) -> Result<Self, BoxError> {
        let hs = Bytes::from_static(br#"{"sys":{"type":"protobench","version":"1"}}"#);
        conn.send(&Packet::new(PacketType::Handshake, hs).to_bytes()?)
            .await?;
        let p = conn.packet().await?;
        if p.kind != PacketType::Handshake {
            return Err(format!("expected the handshake answer, got {:?}", p.kind).into());
        }
        conn.send(&Packet::new(PacketType::HandshakeAck, Bytes::new()).to_bytes()?)
            .await?;
        Ok(Self {
            route: RouteName::try_from(route)?,
            next_id: 1,
        })
    }
}

impl Protocol for Pomelo {
    fn request<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        payload: &'a Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send + 'a>>
    {
        Box::pin(async move {
            let id = self.next_id;
            self.next_id += 1;
            let m = Message::request(id, Route::Name(self.route.clone()), payload.clone());
            conn.send(&m.to_packet_bytes()?).await?;
            loop {
                let p = conn.packet().await?;
                match p.kind {
                    PacketType::Heartbeat => {
                        conn.send(&[PacketType::Heartbeat as u8, 0, 0, 0]).await?;
                    }
                    PacketType::Data => {
                        let m = Message::decode(p.body)?;
                        if m.kind == MessageType::Response && m.id == id {
                            return if m.error {
                                Err("error response".into())
                            } else {
                                Ok(())
                            };
                        }
                    }
                    PacketType::Kick => return Err("kicked".into()),
                    _ => {}
                }
            }
        })
    }
}

struct MqttProto {
    /// `module/handler/method/` (Rookery) or the connection's own topic (broker).
    prefix: String,
    broker: bool,
    next: u64,
}

impl MqttProto {
    async fn setup(conn: &mut Conn, i: usize, route: &str, broker: bool) -> Result<Self, BoxError> {
        let mut c = Connect::new(format!("protobench-{i}-{}", std::process::id()));
        c.keep_alive = 60;
        conn.send_mqtt(Mqtt::Connect(c)).await?;
        match conn.mqtt().await? {
            Mqtt::ConnAck(a) if a.code == rumqttc::mqttbytes::v4::ConnectReturnCode::Success => {}
            other => return Err(format!("CONNECT refused: {other:?}").into()),
        }
        let prefix = if broker {
            let topic = format!("protobench/{i}");
            let mut s = Subscribe::new(topic.as_str(), QoS::AtMostOnce);
            s.pkid = 1;
            conn.send_mqtt(Mqtt::Subscribe(s)).await?;
            match conn.mqtt().await? {
                Mqtt::SubAck(_) => {}
                other => return Err(format!("expected a SUBACK, got {other:?}").into()),
            }
            topic
        } else {
            format!("{}/", route.replace('.', "/"))
        };
        Ok(Self {
            prefix,
            broker,
            next: 1,
        })
    }
}

impl Protocol for MqttProto {
    fn request<'a>(
        &'a mut self,
        conn: &'a mut Conn,
        payload: &'a Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send + 'a>>
    {
        Box::pin(async move {
            let topic = if self.broker {
                self.prefix.clone()
            } else {
                let t = format!("{}{}", self.prefix, self.next);
                self.next += 1;
                t
            };
            let p = Publish::from_bytes(topic.as_str(), QoS::AtMostOnce, payload.clone());
            conn.send_mqtt(Mqtt::Publish(p)).await?;
            loop {
                if let Mqtt::Publish(p) = conn.mqtt().await? {
                    if p.topic == topic {
                        // MQTT has no error flag: an answer other than the echo is an error
                        // object (or the broker's failure).
                        return if p.payload == *payload {
                            Ok(())
                        } else {
                            Err(format!("answer {:?}", String::from_utf8_lossy(&p.payload)).into())
                        };
                    }
                }
            }
        })
    }
}
