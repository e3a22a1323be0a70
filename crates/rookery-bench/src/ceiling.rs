//! The P1 ceiling: the least a server speaking the client protocol must do.
//!
//! Per connection: read into a buffer, decode every complete packet, answer a Handshake with a
//! canned response, a Heartbeat with a Heartbeat, and each Request with a Response carrying the
//! same id and the canned payload `{"rooms":[]}`; then write all answers in one write. Nothing is
//! parsed beyond the packet header, the message flag and the id.
//!
//! With [`Answer::Nats`] it is the baseline of the remote path over NATS (P5): each request's
//! payload goes out as a plain async-nats request to a subject whose responder echoes it, and
//! the reply's payload is the response. That is raw request/reply through a NATS server, driven
//! by the same load generator and clients as Rookery's gateway, with no framework in between.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rookery_protocol::handshake::{HandshakeResponse, HandshakeResponseSys, CODE_OK};
use rookery_protocol::message::decode_varint;
use rookery_protocol::packet::encode_parts;
use rookery_protocol::{Message, PacketCodec, PacketType, Serializer, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Subject of the raw NATS responder ([`start_nats_echo`]).
pub const RAW_NATS_SUBJECT: &str = "rpcbench.echo";

/// Payload of every response.
const CANNED: &[u8] = br#"{"rooms":[]}"#;
const READ_CHUNK: usize = 16 * 1024;
const HEARTBEAT: [u8; 4] = [PacketType::Heartbeat as u8, 0, 0, 0];

/// The handshake answer: code 200, heartbeat 30 s, empty dictionary, JSON.
fn handshake_packet() -> Bytes {
    let body = HandshakeResponse {
        code: CODE_OK,
        sys: Some(HandshakeResponseSys {
            heartbeat: 30,
            dict: Default::default(),
            serializer: Serializer::Json,
        }),
        msg: None,
    }
    .encode();
    encode_parts(PacketType::Handshake, &body).unwrap_or_default()
}

/// How the ceiling answers a request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// With the canned payload (P1).
    Canned,
    /// With the reply to a raw async-nats request carrying the request's payload (P5's baseline).
    Nats {
        /// Connection to the NATS server.
        client: async_nats::Client,
        /// Where the responder listens.
        subject: async_nats::Subject,
    },
}

/// Accepts connections on `listener` forever, serving each on its own task (canned answers).
pub async fn serve_ceiling(listener: TcpListener) {
    serve_ceiling_with(listener, Answer::Canned).await
}

/// Accepts connections on `listener` forever, answering requests as `answer` says.
pub async fn serve_ceiling_with(listener: TcpListener, answer: Answer) {
    let handshake = handshake_packet();
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(ceiling_conn(sock, handshake.clone(), answer.clone()));
            }
            // Out of file descriptors and the like: back off briefly, keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn ceiling_conn(mut sock: TcpStream, handshake: Bytes, answer: Answer) {
    let codec = PacketCodec::default();
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
    let canned = Bytes::from_static(CANNED);
    loop {
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        match sock.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let p = match codec.decode(&mut rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => return,
            };
            match p.kind {
                PacketType::Handshake => wbuf.extend_from_slice(&handshake),
                PacketType::Heartbeat => wbuf.extend_from_slice(&HEARTBEAT),
                PacketType::Data => {
                    // Flag bits 1-3: message type, 0 = Request; the id follows the flag.
                    let Some(&flag) = p.body.first() else {
                        return;
                    };
                    if (flag >> 1) & 0x07 != 0 {
                        continue;
                    }
                    let (id, body) = match &answer {
                        Answer::Canned => match decode_varint(&p.body[1..]) {
                            Ok((id, _)) => (id, canned.clone()),
                            Err(_) => return,
                        },
                        Answer::Nats { client, subject } => {
                            let Ok(m) = Message::decode(p.body) else {
                                return;
                            };
                            // async-nats' own request deadline (10 s) bounds the wait.
                            match client.request(subject.clone(), m.payload).await {
                                Ok(reply) => (m.id, reply.payload),
                                Err(_) => return,
                            }
                        }
                    };
                    let m = Message::response(id, body);
                    let len = m.encoded_len();
                    wbuf.reserve(HEADER_LEN + len);
                    wbuf.put_u8(PacketType::Data as u8);
                    wbuf.put_slice(&(len as u32).to_be_bytes()[1..]);
                    if m.encode_into(&mut wbuf).is_err() {
                        return;
                    }
                }
                PacketType::HandshakeAck | PacketType::Kick => {}
            }
        }
        if !wbuf.is_empty() {
            if sock.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
    }
}

/// Starts the raw NATS responder: a plain async-nats subscription on `subject` publishing every
/// request's payload back to its reply subject. Returns once the subscription is registered at
/// the server; the task ends when the connection does.
pub async fn start_nats_echo(
    url: &str,
    subject: &str,
) -> Result<tokio::task::JoinHandle<()>, Box<dyn std::error::Error + Send + Sync>> {
    use futures_util::StreamExt;
    let client = async_nats::connect(url).await?;
    let mut sub = client.subscribe(subject.to_string()).await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = client.publish(reply, msg.payload).await;
            }
        }
    }))
}
