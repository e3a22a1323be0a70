//! Transports under a connection: TCP (a byte stream cut into frames by the protocol's framing),
//! any other byte stream (the same over a boxed reader and writer) and WebSocket (one pomelo
//! packet per binary frame). Each gives the connection driver a stream of frames and a writer of
//! encoded bytes; what the frames are is the protocol's business (`super::wire`).

use std::io;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, Stream};
use futures_util::{SinkExt, StreamExt};
use rookery_protocol::{Packet, PacketCodec, ProtocolError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
    /// A frame of another protocol's that could not be read.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

use super::WsIo;

/// Reads frames: a TCP stream cut by the framing `D`, held inline (a connection's every request
/// reads through it; no box, no dynamic call), or frames from elsewhere (a WebSocket's), boxed
/// (its adapter type is large and its own allocation does not matter beside its buffers).
pub(crate) enum FrameReader<D: Decoder> {
    Tcp(FramedRead<OwnedReadHalf, Roomy<D>>),
    /// Any other byte stream, boxed so that the TCP variant stays the size of the enum.
    Stream(Box<FramedRead<BoxedRead, Roomy<D>>>),
    Frames(Pin<Box<dyn Stream<Item = Result<D::Item, ConnError>> + Send>>),
}

/// The pomelo protocol's reader.
pub(crate) type PacketReader = FrameReader<PacketDecoder>;

impl<D: Decoder<Error = ConnError> + Unpin> Stream for FrameReader<D> {
    type Item = Result<D::Item, ConnError>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.get_mut() {
            Self::Tcp(r) => Pin::new(r).poll_next(cx),
            Self::Stream(r) => Pin::new(&mut **r).poll_next(cx),
            Self::Frames(r) => r.as_mut().poll_next(cx),
        }
    }
}

/// Writes already-encoded packets: the write half of a TCP or WebSocket connection (a closed
/// set, dispatched by `match`).
///
/// A batch is written in two steps: [`write_now`](Self::write_now) hands it to the socket without
/// waiting (a TCP socket with room in its buffer, the usual case, takes it all: no future, no
/// allocation), and only if something is left does [`finish`](Self::finish) wait for the rest.
pub(crate) enum PacketWriter {
    Tcp(TcpWriter),
    Stream(Box<StreamWriter>),
    Ws(WsWriter),
}

impl PacketWriter {
    /// Writes as much of `batch` as the socket takes without waiting; true if that was all of
    /// it. A WebSocket writes nothing here: its frames go through [`finish`](Self::finish).
    pub(crate) fn write_now(&mut self, batch: &[Bytes]) -> io::Result<bool> {
        match self {
            Self::Tcp(w) => w.write_now(batch),
            Self::Stream(w) => w.write_now(batch),
            Self::Ws(_) => Ok(false),
        }
    }

    /// Writes what [`write_now`](Self::write_now) left of the same `batch`, and flushes.
    pub(crate) async fn finish(&mut self, batch: &[Bytes]) -> io::Result<()> {
        match self {
            Self::Tcp(w) => w.finish(batch).await,
            Self::Stream(w) => w.finish(batch).await,
            Self::Ws(w) => w.write(batch).await,
        }
    }

    /// Writes a batch of packets and flushes.
    pub(crate) async fn write(&mut self, batch: &[Bytes]) -> io::Result<()> {
        if self.write_now(batch)? {
            return Ok(());
        }
        // Boxed: the rest's state (a WebSocket sink's is large) stays out of the caller's.
        Box::pin(self.finish(batch)).await
    }

    /// Closes the write side.
    pub(crate) async fn shutdown(&mut self) {
        match self {
            Self::Tcp(w) => {
                let _ = w.half.shutdown().await;
            }
            Self::Stream(w) => {
                let _ = w.io.shutdown().await;
            }
            Self::Ws(w) => {
                let _ = w.sink.close().await;
            }
        }
    }
}

/// A frame reader and writer over one connection. Both are held inline in the connection's
/// task (a box each would cost as much memory and one more cache line per request).
pub(crate) struct Transport<D: Decoder = PacketDecoder> {
    pub reader: FrameReader<D>,
    pub writer: PacketWriter,
}

/// A TCP connection's initial read buffer; it grows for larger packets.
const READ_BUF: usize = 1024;
/// Room kept free in the read buffer before each read. Every packet taken off the front shrinks
/// the room behind it; a read into a few bytes' room would cut packets in pieces and cost a
/// second `recv` for each.
const MIN_READ_ROOM: usize = READ_BUF / 4;

/// The pomelo packet framing.
pub(crate) struct PacketDecoder(pub(crate) PacketCodec);

impl Decoder for PacketDecoder {
    type Item = Packet;
    type Error = ConnError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ConnError> {
        Ok(self.0.decode(src)?)
    }
}

/// A framing that keeps [`MIN_READ_ROOM`] free in the read buffer.
pub(crate) struct Roomy<D>(D);

impl<D: Decoder<Error = ConnError>> Decoder for Roomy<D> {
    type Item = D::Item;
    type Error = ConnError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D::Item>, ConnError> {
        let frame = self.0.decode(src)?;
        // `None`: the next thing is a read. Once the frames read before are dropped (requests
        // are handled before the next read), this reuses the same buffer instead of allocating.
        if frame.is_none() && src.capacity() - src.len() < MIN_READ_ROOM {
            src.reserve(READ_BUF);
        }
        Ok(frame)
    }
}

pub(crate) struct TcpWriter {
    half: OwnedWriteHalf,
    /// Where a batch of several packets is coalesced: one system call for all of them.
    buf: BytesMut,
    /// Bytes of the current batch already written by `write_now`.
    sent: usize,
}

impl TcpWriter {
    fn write_now(&mut self, batch: &[Bytes]) -> io::Result<bool> {
        coalesce(&mut self.buf, batch);
        let data = coalesced(&self.buf, batch);
        self.sent = match self.half.try_write(data) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        Ok(self.sent == data.len())
    }

    async fn finish(&mut self, batch: &[Bytes]) -> io::Result<()> {
        let data = coalesced(&self.buf, batch);
        self.half.write_all(&data[self.sent..]).await
    }
}

/// Copies a batch of several packets into `buf`, so that it is written with one call.
fn coalesce(buf: &mut BytesMut, batch: &[Bytes]) {
    if batch.len() > 1 {
        buf.clear();
        for p in batch {
            buf.extend_from_slice(p);
        }
    }
}

/// The bytes of `batch` as one slice: the packet itself, or the batch coalesced in `buf`.
fn coalesced<'a>(buf: &'a BytesMut, batch: &'a [Bytes]) -> &'a [u8] {
    match batch {
        [] => &[],
        [one] => one,
        _ => buf,
    }
}

type BoxedRead = Pin<Box<dyn AsyncRead + Send>>;

/// The writer of a byte stream other than a plain TCP socket. Such a stream may buffer what it
/// is given (TLS does), so a batch counts as written only once it has been flushed too.
pub(crate) struct StreamWriter {
    io: Pin<Box<dyn AsyncWrite + Send>>,
    buf: BytesMut,
    sent: usize,
}

impl StreamWriter {
    /// Writes and flushes what the stream takes without waiting: each write polled until the
    /// stream would block, with a waker that does nothing (`finish` polls again with the task's).
    fn write_now(&mut self, batch: &[Bytes]) -> io::Result<bool> {
        use std::task::{Context, Poll};
        coalesce(&mut self.buf, batch);
        let data = coalesced(&self.buf, batch);
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        self.sent = 0;
        while self.sent < data.len() {
            match self.io.as_mut().poll_write(&mut cx, &data[self.sent..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
        }
        match self.io.as_mut().poll_flush(&mut cx) {
            Poll::Ready(r) => r.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    async fn finish(&mut self, batch: &[Bytes]) -> io::Result<()> {
        let data = coalesced(&self.buf, batch);
        self.io.write_all(&data[self.sent..]).await?;
        self.io.flush().await
    }
}

/// A transport over any byte stream, cut into frames by `framing`.
pub(crate) fn stream<D: Decoder>(
    io: impl AsyncRead + AsyncWrite + Send + 'static,
    framing: D,
) -> Transport<D> {
    let (read, write) = tokio::io::split(io);
    let read: BoxedRead = Box::pin(read);
    let reader = FramedRead::with_capacity(read, Roomy(framing), READ_BUF);
    Transport {
        reader: FrameReader::Stream(Box::new(reader)),
        writer: PacketWriter::Stream(Box::new(StreamWriter {
            io: Box::pin(write),
            buf: BytesMut::new(),
            sent: 0,
        })),
    }
}

/// A TCP transport cut into frames by `framing`.
pub(crate) fn tcp<D: Decoder>(stream: TcpStream, framing: D) -> Transport<D> {
    let (read, write) = stream.into_split();
    // A small initial buffer keeps idle connections cheap; it grows for larger packets.
    let reader = FramedRead::with_capacity(read, Roomy(framing), READ_BUF);
    Transport {
        reader: FrameReader::Tcp(reader),
        writer: PacketWriter::Tcp(TcpWriter {
            half: write,
            buf: BytesMut::new(),
            sent: 0,
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

pub(crate) struct WsWriter {
    sink: SplitSink<WebSocketStream<WsIo>, WsMessage>,
}

impl WsWriter {
    async fn write(&mut self, batch: &[Bytes]) -> io::Result<()> {
        for p in batch {
            self.sink
                .feed(WsMessage::Binary(p.clone()))
                .await
                .map_err(io::Error::other)?;
        }
        self.sink.flush().await.map_err(io::Error::other)
    }
}

/// The bytes of a WebSocket's binary messages as one byte stream, both ways (for protocols
/// whose packets need not line up with messages, as MQTT's).
pub(crate) fn ws_bytes(
    stream: WebSocketStream<WsIo>,
) -> impl AsyncRead + AsyncWrite + Send + 'static {
    use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};
    let (sink, stream) = stream.split();
    let read = StreamReader::new(stream.filter_map(|msg| {
        std::future::ready(match msg {
            Ok(WsMessage::Binary(b)) => Some(Ok(b)),
            Ok(WsMessage::Text(_)) => Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "text frames are not part of the protocol",
            ))),
            Ok(_) => None, // ping/pong are answered by the WebSocket layer; close ends it
            Err(e) => Some(Err(io::Error::other(e))),
        })
    }));
    let sink = sink
        .with(|b: Bytes| {
            std::future::ready(Ok::<_, tokio_tungstenite::tungstenite::Error>(
                WsMessage::Binary(b),
            ))
        })
        .sink_map_err(io::Error::other);
    tokio::io::join(read, SinkWriter::new(CopyToBytes::new(sink)))
}

/// A pomelo transport over an upgraded WebSocket: one packet per binary message.
pub(crate) fn ws(stream: WebSocketStream<WsIo>, max_packet: usize) -> Transport {
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
        reader: FrameReader::Frames(Box::pin(reader)),
        writer: PacketWriter::Ws(WsWriter { sink }),
    }
}
