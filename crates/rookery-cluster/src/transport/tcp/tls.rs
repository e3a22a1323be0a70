//! Mutual TLS between nodes: both sides show a certificate signed by the cluster's CA (rustls,
//! TLS 1.2+). A connection's halves are the plain socket's or the TLS stream's.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use super::TcpTlsConfig;
use crate::TransportError;

/// This node's TLS: how it dials (showing its certificate) and how it accepts (asking for one).
pub(super) struct NodeTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

/// A connection's read half.
pub(super) enum Rd {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// A connection's write half.
pub(super) enum Wr {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

/// The halves of a plain connection.
pub(super) fn plain(stream: TcpStream) -> (Rd, Wr) {
    let (rd, wr) = stream.into_split();
    (Rd::Plain(rd), Wr::Plain(wr))
}

fn tls_halves(stream: TlsStream<TcpStream>) -> (Rd, Wr) {
    let (rd, wr) = tokio::io::split(stream);
    (Rd::Tls(rd), Wr::Tls(wr))
}

impl NodeTls {
    /// Reads the files; an error names the file and what is wrong.
    pub(super) fn load(cfg: &TcpTlsConfig) -> Result<Self, TransportError> {
        let bad = |what: &str, path: &str, e: &dyn std::fmt::Display| {
            TransportError::unauthorized(format!("cluster.tcp.tls.{what} {path}: {e}"))
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
            .map_err(|e| bad("cert", &cfg.cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad("cert", &cfg.cert, &e))?;
        let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| bad("key", &cfg.key, &e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&cfg.ca).map_err(|e| bad("ca", &cfg.ca, &e))? {
            roots
                .add(ca.map_err(|e| bad("ca", &cfg.ca, &e))?)
                .map_err(|e| bad("ca", &cfg.ca, &e))?;
        }
        if roots.is_empty() {
            return Err(bad("ca", &cfg.ca, &"no certificate in the file"));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad("ca", &cfg.ca, &e))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("cert", &cfg.cert, &e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| bad("key", &cfg.key, &e))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("cert", &cfg.cert, &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| bad("key", &cfg.key, &e))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// TLS to the node `node_id` dialled at `addr`, whose certificate must name its host.
    pub(super) async fn connect(
        &self,
        stream: TcpStream,
        node_id: &str,
        addr: &str,
    ) -> Result<(Rd, Wr), TransportError> {
        let host = match addr.rfind(':') {
            Some(i) if !addr[i..].contains(']') => &addr[..i],
            _ => addr,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            TransportError::unreachable(node_id.to_string(), format!("{addr}: {e}"))
        })?;
        let tls = self.connector.connect(name, stream).await.map_err(|e| {
            TransportError::unauthorized(format!("TLS with {node_id} at {addr}: {e}"))
        })?;
        Ok(tls_halves(TlsStream::Client(tls)))
    }

    /// Accepts TLS from a peer that shows a certificate of the cluster's CA.
    pub(super) async fn accept(&self, stream: TcpStream) -> io::Result<(Rd, Wr)> {
        let tls = self.acceptor.accept(stream).await?;
        Ok(tls_halves(TlsStream::Server(tls)))
    }
}

impl AsyncRead for Rd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Rd::Plain(r) => Pin::new(r).poll_read(cx, buf),
            Rd::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Wr {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Wr::Plain(w) => Pin::new(w).poll_write(cx, buf),
            Wr::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wr::Plain(w) => Pin::new(w).poll_flush(cx),
            Wr::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Wr::Plain(w) => Pin::new(w).poll_shutdown(cx),
            Wr::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Wr::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Wr::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Wr::Plain(w) => w.is_write_vectored(),
            Wr::Tls(w) => w.is_write_vectored(),
        }
    }
}
