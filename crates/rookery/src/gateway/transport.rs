//! Packet transports under a connection: TCP (a byte stream cut into packets) and WebSocket (one
//! packet per binary frame). Both give the connection driver a stream of packets and a writer.

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, Stream};
use futures_util::{SinkExt, StreamExt};
use rookery_protocol::{Packet, PacketCodec, ProtocolError};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::{Decoder, FramedRead};

/// Why reading packets failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("websocket error: {0}")]
    Ws(String),
}

pub(crate) type PacketReader = Pin<Box<dyn Stream<Item = Result<Packet, ConnError>> + Send>>;

/// Writes already-encoded packets.
#[async_trait]
pub(crate) trait PacketWriter: Send {
    /// Writes a batch of packets and flushes.
    async fn write(&mut self, batch: &[Bytes]) -> io::Result<()>;
    /// Closes the write side.
    async fn shutdown(&mut self);
}

/// A packet reader and writer over one connection.
pub(crate) struct Transport {
    pub reader: PacketReader,
    pub writer: Box<dyn PacketWriter>,
}

struct TcpDecoder(PacketCodec);

impl Decoder for TcpDecoder {
    type Item = Packet;
    type Error = ConnError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ConnError> {
        Ok(self.0.decode(src)?)
    }
}

struct TcpWriter {
    half: OwnedWriteHalf,
    buf: BytesMut,
}

#[async_trait]
impl PacketWriter for TcpWriter {
    async fn write(&mut self, batch: &[Bytes]) -> io::Result<()> {
        if let [one] = batch {
            return self.half.write_all(one).await;
        }
        // Coalesce the batch into one write: one syscall for many small packets.
        self.buf.clear();
        for p in batch {
            self.buf.extend_from_slice(p);
        }
        self.half.write_all(&self.buf).await
    }

    async fn shutdown(&mut self) {
        let _ = self.half.shutdown().await;
    }
}

/// A TCP transport with the given packet-size limit.
pub(crate) fn tcp(stream: TcpStream, max_packet: usize) -> Transport {
    let (read, write) = stream.into_split();
    // A small initial buffer keeps idle connections cheap; it grows for larger packets.
    let reader = FramedRead::with_capacity(read, TcpDecoder(PacketCodec::new(max_packet)), 1024);
    Transport {
        reader: Box::pin(reader),
        writer: Box::new(TcpWriter {
            half: write,
            buf: BytesMut::new(),
        }),
    }
}

/// WebSocket limits for a packet-size limit: one packet per message, nothing larger.
pub(crate) fn ws_config(max_packet: usize) -> WebSocketConfig {
    let max_message = max_packet + rookery_protocol::HEADER_LEN;
    WebSocketConfig::default()
        // Small read buffer: it grows for larger frames; idle connections stay cheap.
        .read_buffer_size(1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .write_buffer_size(0)
        .max_write_buffer_size(max_message.max(64 * 1024) * 4)
}

struct WsWriter {
    sink: SplitSink<WebSocketStream<TcpStream>, WsMessage>,
}

#[async_trait]
impl PacketWriter for WsWriter {
    async fn write(&mut self, batch: &[Bytes]) -> io::Result<()> {
        for p in batch {
            self.sink
                .feed(WsMessage::Binary(p.clone()))
                .await
                .map_err(io::Error::other)?;
        }
        self.sink.flush().await.map_err(io::Error::other)
    }

    async fn shutdown(&mut self) {
        let _ = self.sink.close().await;
    }
}

/// A WebSocket transport over an upgraded stream.
pub(crate) fn ws(stream: WebSocketStream<TcpStream>, max_packet: usize) -> Transport {
    let codec = PacketCodec::new(max_packet);
    let (sink, stream) = stream.split();
    let reader = stream.filter_map(move |msg| {
        let item = match msg {
            Ok(WsMessage::Binary(frame)) => {
                Some(codec.decode_frame(frame).map_err(ConnError::from))
            }
            Ok(WsMessage::Text(_)) => Some(Err(ConnError::Ws(
                "text frames are not part of the protocol".into(),
            ))),
            Ok(WsMessage::Close(_)) => None,
            Ok(_) => None, // ping/pong are answered by the WebSocket layer
            Err(e) => Some(Err(ConnError::Ws(e.to_string()))),
        };
        std::future::ready(item)
    });
    Transport {
        reader: Box::pin(reader),
        writer: Box::new(WsWriter { sink }),
    }
}
