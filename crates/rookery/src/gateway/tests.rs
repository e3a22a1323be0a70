//! The connection driver over an in-memory pipe (`tokio::io::duplex`), whose window is as small
//! as a test needs: partial writes and blocked writes happen on demand, with no socket buffers
//! of the host in between.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rookery_protocol::{
    ClientHandshake, HandshakeSys, Packet, PacketCodec, PacketType, DEFAULT_MAX_PACKET_SIZE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::close::FLUSH_DEADLINE;
use super::transport;
use super::wire::Wire;
use crate::session::codec::Pomelo;
use crate::session::Acceptor;
use crate::{App, Config, RunningServer, Server, Session};

/// A node with no listeners: connections are handed to it directly.
pub(crate) async fn node() -> RunningServer {
    Server::builder(Config::default())
        .start()
        .await
        .expect("a node with the default configuration starts")
}

/// The client's end of a pipe: raw bytes in, packets out.
pub(crate) struct PipeClient {
    pub io: DuplexStream,
    buf: BytesMut,
    codec: PacketCodec,
}

impl PipeClient {
    /// The next packet, reading at most `chunk` bytes at a time (a slow reader).
    pub async fn packet(&mut self, chunk: usize) -> Option<Packet> {
        loop {
            if let Some(p) = self
                .codec
                .decode(&mut self.buf)
                .expect("a well-formed packet")
            {
                return Some(p);
            }
            let mut piece = vec![0; chunk];
            let n = self.io.read(&mut piece).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&piece[..n]);
        }
    }
}

/// A connection whose pipe holds `window` bytes in each direction, served by `conn::serve` as
/// the gateway serves an accepted socket; returns once the handshake is done and the server's
/// first heartbeat has arrived, with the session the server made for it.
pub(crate) async fn connect(app: &App, window: usize) -> (PipeClient, Session, JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(window);
    let remote: SocketAddr = "127.0.0.1:7".parse().expect("an address");
    let permit = Arc::new(Semaphore::new(1))
        .try_acquire_owned()
        .expect("a free permit");
    let served = tokio::spawn(super::conn::serve(
        app.clone(),
        Arc::new(Pomelo),
        transport::stream(server, Pomelo.decoder(DEFAULT_MAX_PACKET_SIZE)),
        remote,
        Acceptor::Tcp,
        permit,
    ));
    let before: Vec<_> = app.sessions().all().iter().map(|s| s.id()).collect();
    let mut c = PipeClient {
        io: client,
        buf: BytesMut::new(),
        codec: PacketCodec::new(DEFAULT_MAX_PACKET_SIZE),
    };
    let hs = ClientHandshake::new(HandshakeSys::default(), serde_json::Value::Null);
    c.io.write_all(&hs.request_packet()).await.expect("write");
    loop {
        let p = c.packet(4096).await.expect("the handshake answer");
        if hs.on_packet(p.kind, &p.body).expect("accepted").is_some() {
            break;
        }
    }
    c.io.write_all(&ClientHandshake::ack_packet())
        .await
        .expect("write");
    let first = c.packet(4096).await.expect("the first heartbeat");
    assert_eq!(first.kind, PacketType::Heartbeat);
    let session = app
        .sessions()
        .all()
        .into_iter()
        .find(|s| !before.contains(&s.id()))
        .expect("the pipe's session");
    (c, session, served)
}

fn blob(i: usize, len: usize) -> Bytes {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

/// Packets larger than the pipe's window are written a piece at a time (the writer's non-waiting
/// write takes part of a batch, a blocked write the rest) and arrive whole and in order, while
/// the client reads a few bytes at a time.
#[tokio::test]
async fn partial_writes_deliver_every_packet_whole_and_in_order() {
    let node = node().await;
    let (mut client, session, served) = connect(node.app(), 64).await;
    let sizes = [1, 63, 64, 65, 1000, 20_000, 3, 4096];
    for (i, len) in sizes.iter().enumerate() {
        let packet = Packet::new(PacketType::Data, blob(i, *len))
            .to_bytes()
            .unwrap();
        session.send_packet(packet).expect("queued");
    }
    for (i, len) in sizes.iter().enumerate() {
        let p = client.packet(7).await.expect("a packet");
        assert_eq!(p.kind, PacketType::Data);
        assert_eq!(p.body, blob(i, *len), "packet {i} ({len} bytes)");
    }
    session.close("done");
    served.await.expect("the connection task ends");
    assert!(node.app().sessions().get(session.id()).is_none());
    node.shutdown().await;
}

/// A session closed while its writer waits for a client that reads nothing ends within the
/// flush deadlines (the blocked write's, the kick's, the shutdown's), and the session is gone.
#[tokio::test(start_paused = true)]
async fn a_close_while_a_write_is_blocked_ends_within_the_flush_deadline() {
    let node = node().await;
    let (client, session, served) = connect(node.app(), 64).await;
    let big = Packet::new(PacketType::Data, blob(0, 100_000))
        .to_bytes()
        .unwrap();
    session.send_packet(big).expect("queued");
    // Let the writer fill the window and block on the rest.
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    session.kick("closing under a blocked write");
    tokio::time::timeout(FLUSH_DEADLINE * 4, served)
        .await
        .expect("the connection ends within its flush deadlines")
        .expect("the connection task does not panic");
    assert!(
        started.elapsed() >= FLUSH_DEADLINE,
        "the blocked write was given its deadline before the connection ended"
    );
    assert!(node.app().sessions().get(session.id()).is_none());
    drop(client);
    node.shutdown().await;
}
