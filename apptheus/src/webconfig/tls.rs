//! Turns validated TLS settings into a rustls server configuration.
use std::sync::Arc;

use rustls::{
    DistinguishedName, RootCertStore, ServerConfig, SignatureScheme, SupportedCipherSuite,
    SupportedProtocolVersion,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, ring as provider},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

use super::{ClientAuth, Curve, Pem, TlsSettings, TlsVersion, WebConfigError};

/// Builds the server configuration, reading the certificate, key and client
/// CA files.
pub fn server_config(t: &TlsSettings) -> Result<Arc<ServerConfig>, WebConfigError> {
    let provider = Arc::new(crypto_provider(t));
    let certs = certificates(&t.cert, "cert_file")?;
    let key = private_key(&t.key)?;
    let versions: Vec<&'static SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (t.min_version..=t.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match t.client_auth {
        ClientAuth::NoClientCert => builder.with_no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => builder
            .with_client_cert_verifier(Arc::new(AnyClientCert {
                mandatory: t.client_auth == ClientAuth::RequireAnyClientCert,
                provider: provider.clone(),
            })),
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let mut roots = RootCertStore::empty();
            let ca = t
                .client_ca
                .as_ref()
                .ok_or(WebConfigError::ClientCaRequired(t.client_auth))?;
            for c in certificates(ca, "client_ca_file")? {
                roots.add(c)?;
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if t.client_auth == ClientAuth::VerifyClientCertIfGiven {
                v = v.allow_unauthenticated();
            }
            let verifier = v.build().map_err(|e| WebConfigError::Pem {
                what: "client_ca_file".into(),
                why: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.ignore_client_order = t.prefer_server_cipher_suites;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// ring's provider, narrowed and ordered by `cipher_suites` and
/// `curve_preferences`.
fn crypto_provider(t: &TlsSettings) -> CryptoProvider {
    let mut p = provider::default_provider();
    if !t.cipher_suites.is_empty() {
        let (tls13, tls12): (Vec<SupportedCipherSuite>, Vec<SupportedCipherSuite>) = p
            .cipher_suites
            .iter()
            .partition(|s| s.version() == &rustls::version::TLS13);
        let mut suites = tls13;
        for name in &t.cipher_suites {
            suites.extend(
                tls12
                    .iter()
                    .filter(|s| s.suite().as_str() == Some(*name))
                    .copied(),
            );
        }
        p.cipher_suites = suites;
    }
    if !t.curves.is_empty() {
        p.kx_groups = t
            .curves
            .iter()
            .map(|c| match c {
                Curve::X25519 => provider::kx_group::X25519,
                Curve::P256 => provider::kx_group::SECP256R1,
                Curve::P384 => provider::kx_group::SECP384R1,
            })
            .collect();
    }
    p
}

fn read_pem(pem: &Pem, what: &str) -> Result<Vec<u8>, WebConfigError> {
    match pem {
        Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
        Pem::File(path) => std::fs::read(path).map_err(|source| WebConfigError::Read {
            what: if what == "key_file" {
                "the TLS key"
            } else if what == "client_ca_file" {
                "the client CA"
            } else {
                "the TLS certificate"
            },
            path: path.clone(),
            source,
        }),
    }
}

fn describe(pem: &Pem, what: &str) -> String {
    match pem {
        Pem::File(p) => format!("{what} {}", p.display()),
        Pem::Inline(_) => format!("inline {}", what.trim_end_matches("_file")),
    }
}

fn certificates(pem: &Pem, what: &str) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let bytes = read_pem(pem, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebConfigError::Pem {
            what: describe(pem, what),
            why: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(WebConfigError::Pem {
            what: describe(pem, what),
            why: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn private_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, WebConfigError> {
    let bytes = read_pem(pem, "key_file")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| WebConfigError::Pem {
        what: describe(pem, "key_file"),
        why: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

/// Go's RequestClientCert and RequireAnyClientCert: the client proves it
/// holds the key of the certificate it sends, but nothing checks who
/// issued it. The toolkit calls these insecure, and so do we.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::webconfig::parse;

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn settings(dir: &Path, extra: &str) -> TlsSettings {
        let text =
            format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}");
        parse(&text, dir).unwrap().tls.unwrap()
    }

    #[test]
    fn builds_from_files_and_rejects_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        std::fs::write(dir.path().join("server.crt"), &cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &cert).unwrap();

        let c = server_config(&settings(dir.path(), "")).unwrap();
        assert!(c.ignore_client_order);
        let c = server_config(&settings(
            dir.path(),
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\n  curve_preferences: [X25519]\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n",
        ))
        .unwrap();
        assert_eq!(c.crypto_provider().kx_groups.len(), 1);
        assert_eq!(c.crypto_provider().cipher_suites.len(), 4);
        for auth in [
            "RequestClientCert",
            "RequireAnyClientCert",
            "VerifyClientCertIfGiven",
        ] {
            let extra = if auth.starts_with("Verify") {
                format!("  client_auth_type: {auth}\n  client_ca_file: ca.crt\n")
            } else {
                format!("  client_auth_type: {auth}\n")
            };
            server_config(&settings(dir.path(), &extra)).unwrap();
        }

        // A key that does not belong to the certificate.
        let (_, other_key) = self_signed();
        std::fs::write(dir.path().join("server.key"), &other_key).unwrap();
        let e = server_config(&settings(dir.path(), "")).unwrap_err();
        assert!(e.to_string().contains("rejected"), "{e}");

        std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
        let e = server_config(&settings(dir.path(), "")).unwrap_err();
        assert!(e.to_string().contains("server.key"), "{e}");
        assert!(e.to_string().contains("private key"), "{e}");

        std::fs::remove_file(dir.path().join("server.crt")).unwrap();
        let e = server_config(&settings(dir.path(), "")).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{}", dir.path().join("server.crt").display())),
            "{e}"
        );
    }

    /// A CA, a server certificate for localhost and a client certificate
    /// it issued, and a client certificate from nobody in particular. The
    /// CA and the server's certificate and key are in `dir` and in `pem`.
    struct Pki {
        dir: tempfile::TempDir,
        pem: ServerPem,
        server: CertificateDer<'static>,
        client: (CertificateDer<'static>, PrivateKeyDer<'static>),
        stranger: (CertificateDer<'static>, PrivateKeyDer<'static>),
        roots: Arc<RootCertStore>,
    }

    struct ServerPem {
        ca: String,
        cert: String,
        key: String,
    }

    fn pki() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "apptheus test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["prometheus".to_string()]).unwrap();
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &issuer).unwrap();
        let stranger = rcgen::generate_simple_self_signed(vec!["prometheus".into()]).unwrap();

        let pem = ServerPem {
            ca: ca.pem(),
            cert: server.pem(),
            key: server_key.serialize_pem(),
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &pem.ca).unwrap();
        std::fs::write(dir.path().join("server.crt"), &pem.cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &pem.key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let key = |k: &KeyPair| PrivateKeyDer::try_from(k.serialize_der()).unwrap();
        Pki {
            dir,
            pem,
            server: server.der().clone(),
            client: (client.der().clone(), key(&client_key)),
            stranger: (stranger.cert.der().clone(), key(&stranger.signing_key)),
            roots: Arc::new(roots),
        }
    }

    /// A handshake with the server from a client that trusts `roots`,
    /// presents `cert` (or none) and speaks `versions`: the certificates
    /// the server presented when both sides accepted it.
    async fn handshake(
        server: Arc<ServerConfig>,
        roots: Arc<RootCertStore>,
        cert: Option<&(CertificateDer<'static>, PrivateKeyDer<'static>)>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Option<Vec<CertificateDer<'static>>> {
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
        let client = match cert {
            Some((c, k)) => builder
                .with_client_auth_cert(vec![c.clone()], k.clone_key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (s, c) = tokio::join!(
            tokio_rustls::TlsAcceptor::from(server).accept(a),
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, b),
        );
        let (_, c) = s.and(c).ok()?.into_inner();
        Some(c.peer_certificates()?.to_vec())
    }

    /// Whether the server accepts a handshake from a client presenting
    /// `cert` (or none), limited to `versions`.
    async fn accepted(
        server: Arc<ServerConfig>,
        pki: &Pki,
        cert: Option<&(CertificateDer<'static>, PrivateKeyDer<'static>)>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> bool {
        handshake(server, pki.roots.clone(), cert, versions)
            .await
            .is_some()
    }

    #[tokio::test]
    async fn client_certificates_are_enforced_in_real_handshakes() {
        let pki = pki();
        let both: &[&'static SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let tls12: &[&'static SupportedProtocolVersion] = &[&rustls::version::TLS12];
        let config = |auth: &str| {
            server_config(&settings(
                pki.dir.path(),
                &format!("  client_auth_type: {auth}\n  client_ca_file: ca.crt\n"),
            ))
            .unwrap()
        };
        let (good, stranger) = (Some(&pki.client), Some(&pki.stranger));

        let c = config("RequireAndVerifyClientCert");
        assert!(accepted(c.clone(), &pki, good, both).await);
        assert!(accepted(c.clone(), &pki, good, tls12).await);
        assert!(!accepted(c.clone(), &pki, None, both).await);
        assert!(!accepted(c.clone(), &pki, stranger, both).await);

        let c = config("VerifyClientCertIfGiven");
        assert!(accepted(c.clone(), &pki, None, both).await);
        assert!(accepted(c.clone(), &pki, good, both).await);
        assert!(!accepted(c.clone(), &pki, stranger, both).await);

        let any = |auth: &str| {
            server_config(&settings(
                pki.dir.path(),
                &format!("  client_auth_type: {auth}\n"),
            ))
            .unwrap()
        };
        let c = any("RequireAnyClientCert");
        assert!(!accepted(c.clone(), &pki, None, both).await);
        assert!(accepted(c.clone(), &pki, stranger, both).await);
        let c = any("RequestClientCert");
        assert!(accepted(c.clone(), &pki, None, both).await);

        let c = any("NoClientCert\n  min_version: TLS13");
        assert!(accepted(c.clone(), &pki, None, both).await);
        assert!(!accepted(c, &pki, None, tls12).await);
    }

    #[tokio::test]
    async fn inline_certificates_serve_and_verify_like_files() {
        let pki = pki();
        let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
        let text = format!(
            "tls_server_config:\n  cert: |\n{}  key: |\n{}  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca: |\n{}",
            indent(&pki.pem.cert),
            indent(&pki.pem.key),
            indent(&pki.pem.ca),
        );
        let t = parse(&text, Path::new("/nowhere")).unwrap().tls.unwrap();
        assert!(t.files().is_empty(), "{:?}", t.files());
        let server = server_config(&t).unwrap();
        let both: &[&'static SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];

        // A client that trusts the CA gets the certificate given inline,
        // and its own certificate from that CA is accepted.
        let presented = handshake(server.clone(), pki.roots.clone(), Some(&pki.client), both).await;
        assert_eq!(presented, Some(vec![pki.server.clone()]));
        // A client that trusts another CA refuses the server.
        let mut other = RootCertStore::empty();
        other.add(pki.stranger.0.clone()).unwrap();
        let refused = handshake(server.clone(), Arc::new(other), Some(&pki.client), both).await;
        assert_eq!(refused, None);
        // The inline client CA decides which clients get in.
        assert!(!accepted(server.clone(), &pki, Some(&pki.stranger), both).await);
        assert!(!accepted(server, &pki, None, both).await);
    }
}
