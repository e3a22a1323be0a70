//! TLS on the gateway's acceptors (rustls: TLS 1.2 and 1.3 only). The certificate and key are
//! read at start and again on [`Tls::reload`] (the `rookery` binary calls it on SIGHUP): a
//! connection accepted afterwards gets the new certificate, the open ones keep theirs.

use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, ConfigErrorKind, TlsFiles};

/// The gateway's current TLS configuration.
pub(crate) struct Tls {
    files: TlsFiles,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, ConfigError> {
        Ok(Self {
            acceptor: RwLock::new(acceptor(files)?),
            files: files.clone(),
        })
    }

    /// The acceptor for the next connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files again; on an error the current certificate stays.
    pub(crate) fn reload(&self) -> Result<(), ConfigError> {
        let fresh = acceptor(&self.files)?;
        *self.acceptor.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ConfigError> {
    let bad = |what: &str, path: &str, e: &dyn std::fmt::Display| {
        ConfigError::new(
            ConfigErrorKind::Invalid,
            format!("gateway.tls.{what} {path}: {e}"),
        )
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("cert", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cert", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(bad("cert", &files.cert, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad("key", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("cert", &files.cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("key", &files.key, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
