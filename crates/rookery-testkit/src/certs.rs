//! Certificates made at run time for TLS tests (rcgen): a self-signed server certificate, and a
//! certificate authority that signs node certificates for mutual TLS. All of them name
//! 127.0.0.1 (and the server certificate `localhost` too).

use std::path::{Path, PathBuf};

/// Writes a fresh self-signed server certificate for `localhost` and 127.0.0.1 to
/// `dir/cert.pem` and `dir/key.pem` (replacing them) and returns their paths; a client trusts
/// it with `cert.pem` as its CA.
pub fn write_server_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a self-signed certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).expect("cert.pem written");
    std::fs::write(&key, c.key_pair.serialize_pem()).expect("key.pem written");
    (cert, key)
}

/// A certificate authority, its certificate written to `dir/NAME.pem`.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem: PathBuf,
}

impl Ca {
    /// A new CA named `name`, written to `dir/NAME.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("a CA certificate");
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).expect("CA written");
        Self { cert, key, pem }
    }

    /// The CA certificate's file.
    pub fn pem(&self) -> &Path {
        &self.pem
    }

    /// A certificate for 127.0.0.1 signed by this CA, written to `dir/NAME.pem` and
    /// `dir/NAME.key`; returns their paths.
    pub fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &self.cert, &self.key)
            .expect("a signed certificate");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("certificate written");
        std::fs::write(&key_path, key.serialize_pem()).expect("key written");
        (cert_path, key_path)
    }
}
