//! A certificate for the agent's HTTPS endpoint, and a client that trusts
//! it.
use std::{path::PathBuf, sync::Arc};

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// A self-signed certificate for localhost and 127.0.0.1, made now, in a
/// temporary folder (`server.crt`, `server.key`), and a client that trusts
/// it and nothing else.
pub struct Tls {
    pub dir: tempfile::TempDir,
    pub client: Arc<rustls::ClientConfig>,
}

impl Tls {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cert_pem = c.cert.pem();
        std::fs::write(dir.path().join("server.crt"), &cert_pem).unwrap();
        std::fs::write(dir.path().join("server.key"), c.signing_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            dir,
            client: Arc::new(client),
        }
    }

    /// A file in the certificate's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
