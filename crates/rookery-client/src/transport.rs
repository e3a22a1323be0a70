//! The transports: TCP (packets framed by their header) and WebSocket (one packet per binary
//! frame), each plain or over TLS, and KCP over UDP (framed as TCP). All read and write whole
//! packets.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rookery_protocol::{Packet, PacketCodec, HEADER_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

use crate::{ClientError, TlsOptions};

/// A TCP connection, plain or over TLS.
type Io = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Read buffer growth step for TCP.
const READ_CHUNK: usize = 8 * 1024;

/// An open connection to the server.
pub(crate) enum Transport {
    /// Raw TCP with a read buffer holding partial packets.
    Tcp { stream: Io, buf: BytesMut },
    /// WebSocket over TCP.
    Ws(Box<WebSocketStream<Io>>),
    /// KCP over UDP, framed as TCP.
    Kcp {
        stream: Box<tokio_kcp::KcpStream>,
        buf: BytesMut,
    },
}

/// The KCP settings a client uses: nodelay mode with a 10 ms interval and fast resend, as the
/// gateway's defaults (`[kcp]`).
pub(crate) fn kcp_config() -> tokio_kcp::KcpConfig {
    tokio_kcp::KcpConfig {
        nodelay: tokio_kcp::KcpNoDelayConfig::fastest(),
        flush_write: true,
        flush_acks_input: true,
        ..Default::default()
    }
}

impl Transport {
    /// Connects to `addr`: `ws://host[:port][/path]` or `wss://..` for WebSocket (plain or TLS),
    /// `tls://host:port` for TCP over TLS, `kcp://host:port` for KCP, anything else as plain
    /// TCP `host:port`.
    pub(crate) async fn connect(
        addr: &str,
        max_packet_size: usize,
        tls: &TlsOptions,
    ) -> Result<Self, ClientError> {
        if let Some(rest) = addr.strip_prefix("kcp://") {
            let peer = tokio::net::lookup_host(rest)
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("no address for {rest:?}")))?;
            let stream = tokio_kcp::KcpStream::connect(&kcp_config(), peer)
                .await
                .map_err(std::io::Error::other)?;
            return Ok(Self::Kcp {
                stream: Box::new(stream),
                buf: BytesMut::with_capacity(READ_CHUNK),
            });
        }
        let (ws, secure, rest) = if let Some(r) = addr.strip_prefix("wss://") {
            (true, true, r)
        } else if let Some(r) = addr.strip_prefix("ws://") {
            (true, false, r)
        } else if let Some(r) = addr.strip_prefix("tls://") {
            (false, true, r)
        } else {
            (false, false, addr)
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() {
            return Err(ClientError::WebSocket(format!("no host in {addr:?}")));
        }
        // Default port (WebSocket: 80 or 443) unless the authority has one (mind IPv6 brackets).
        let port_at = authority
            .rfind(':')
            .filter(|&i| !authority[i..].contains(']'));
        let (host, host_port) = match port_at {
            Some(i) => (&authority[..i], authority.to_string()),
            None if ws => (
                authority,
                format!("{authority}:{}", if secure { 443 } else { 80 }),
            ),
            // Left to the connect to refuse (as an I/O error).
            None => (authority, authority.to_string()),
        };
        let tcp = TcpStream::connect(&host_port).await?;
        tcp.set_nodelay(true)?;
        let stream: Io = if secure {
            Either::Right(Box::new(crate::tls::connect(tcp, host, tls).await?))
        } else {
            Either::Left(tcp)
        };
        if !ws {
            return Ok(Self::Tcp {
                stream,
                buf: BytesMut::with_capacity(READ_CHUNK),
            });
        }
        let frame_limit = max_packet_size.saturating_add(HEADER_LEN);
        let config = WebSocketConfig::default()
            .max_message_size(Some(frame_limit))
            .max_frame_size(Some(frame_limit));
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(addr, stream, Some(config))
                .await
                .map_err(ws_error)?;
        Ok(Self::Ws(Box::new(ws)))
    }

    /// Reads the next packet; `Ok(None)` on a clean end of stream.
    ///
    /// Cancel-safe: partial TCP reads stay in the buffer, and `StreamExt::next` is cancel-safe.
    pub(crate) async fn recv(
        &mut self,
        codec: &PacketCodec,
    ) -> Result<Option<Packet>, ClientError> {
        match self {
            Self::Tcp { stream, buf } => read_packet(stream, buf, codec).await,
            Self::Kcp { stream, buf } => read_packet(&mut **stream, buf, codec).await,
            Self::Ws(ws) => loop {
                match ws.next().await {
                    None => return Ok(None),
                    Some(Ok(WsMessage::Binary(frame))) => {
                        return Ok(Some(codec.decode_frame(frame)?))
                    }
                    Some(Ok(WsMessage::Close(_))) => return Ok(None),
                    Some(Ok(WsMessage::Text(_))) => {
                        return Err(ClientError::WebSocket("unexpected text frame".into()))
                    }
                    // Ping/Pong are answered by tungstenite; raw frames are not surfaced on read.
                    Some(Ok(_)) => continue,
                    Some(Err(
                        tungstenite::Error::ConnectionClosed
                        | tungstenite::Error::AlreadyClosed
                        | tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                        ),
                    )) => return Ok(None),
                    Some(Err(e)) => return Err(ws_error(e)),
                }
            },
        }
    }

    /// Writes one encoded packet.
    pub(crate) async fn send(&mut self, packet: Bytes) -> Result<(), ClientError> {
        match self {
            Self::Tcp { stream, .. } => Ok(stream.write_all(&packet).await?),
            Self::Kcp { stream, .. } => {
                // KCP refuses one send of 128 segments or more: large packets go in pieces.
                for piece in packet.chunks(64 * 1024) {
                    stream.write_all(piece).await?;
                }
                Ok(stream.flush().await?)
            }
            Self::Ws(ws) => ws.send(WsMessage::Binary(packet)).await.map_err(ws_error),
        }
    }

    /// Closes the connection politely (WebSocket close frame, TCP write shutdown), bounded in time.
    pub(crate) async fn shutdown(&mut self) {
        let limit = Duration::from_secs(1);
        let _ = match self {
            Self::Tcp { stream, .. } => {
                tokio::time::timeout(limit, async {
                    let _ = stream.shutdown().await;
                })
                .await
            }
            Self::Ws(ws) => {
                tokio::time::timeout(limit, async {
                    let _ = ws.close().await; // SinkExt::close sends a close frame
                })
                .await
            }
            // KCP has no close of its own: the conversation expires on the server.
            Self::Kcp { .. } => Ok(()),
        };
    }
}

/// Reads from a byte stream until `buf` holds a whole packet; `Ok(None)` on a clean end.
async fn read_packet(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
    codec: &PacketCodec,
) -> Result<Option<Packet>, ClientError> {
    loop {
        if let Some(p) = codec.decode(buf)? {
            return Ok(Some(p));
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
            };
        }
    }
}

/// Maps a tungstenite error, keeping I/O errors as such.
fn ws_error(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Io(e) => ClientError::Io(e),
        other => ClientError::WebSocket(other.to_string()),
    }
}
