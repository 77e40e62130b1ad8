//! `--web.config.file`: TLS, basic authentication and extra response
//! headers, in the Prometheus exporter-toolkit format (YAML).
//!
//! This module parses and validates; it never touches the file system.
//! [`tls`] turns the TLS settings into a rustls configuration, [`auth`]
//! checks credentials, [`watch`] reads the file and re-reads it when it
//! changes.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

pub(crate) mod auth;
pub(crate) mod tls;
pub(crate) mod watch;

pub(crate) use watch::WebConfigHandle;

/// Response headers the exporter toolkit allows in `http_server_config.headers`.
pub(crate) const ALLOWED_HEADERS: [&str; 5] = [
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
];

/// Go's cipher suite names for TLS 1.2 that rustls (ring) implements; TLS
/// 1.3 suites are not configurable, as in Go.
pub(crate) const CIPHER_SUITES: [&str; 6] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebConfigError {
    #[error("not valid YAML for a web config")]
    Syntax(#[source] serde_norway::Error),
    #[error("tls_server_config: {given} is set but {missing} is not; both are needed for TLS")]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    #[error("tls_server_config: set either {inline} or {file}, not both")]
    InlineAndFile {
        inline: &'static str,
        file: &'static str,
    },
    #[error(
        "tls_server_config.client_auth_type: unknown value '{0}' (expected NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
    )]
    ClientAuthType(String),
    #[error(
        "tls_server_config: client_auth_type {0:?} verifies client certificates and needs client_ca_file (or client_ca)"
    )]
    ClientCaRequired(ClientAuth),
    #[error(
        "tls_server_config: client CAs are configured but client_auth_type is NoClientCert; set client_auth_type: RequireAndVerifyClientCert"
    )]
    ClientCaUnused,
    #[error(
        "tls_server_config.{field}: '{value}' is not supported (rustls offers TLS12 and TLS13)"
    )]
    TlsVersion { field: &'static str, value: String },
    #[error("tls_server_config: min_version is above max_version")]
    TlsVersionOrder,
    #[error("tls_server_config.cipher_suites: '{name}' is not supported (supported: {})", CIPHER_SUITES.join(", "))]
    CipherSuite { name: String },
    #[error(
        "tls_server_config.curve_preferences: '{name}' is not supported (supported: X25519, CurveP256, CurveP384)"
    )]
    Curve { name: String },
    #[error("{field} is not supported by apptheus: {why}")]
    Unsupported {
        field: &'static str,
        why: &'static str,
    },
    #[error("http_server_config.headers: '{name}' is not allowed (allowed: {})", ALLOWED_HEADERS.join(", "))]
    HeaderNotAllowed { name: String },
    #[error("http_server_config.headers.{name}: '{value}' is not valid (expected {expected})")]
    HeaderValue {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "basic_auth_users: the user name '{0}' is empty or contains ':' and could never log in"
    )]
    UserName(String),
    #[error(
        "basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
    )]
    Hash {
        user: String,
        #[source]
        source: bcrypt::BcryptError,
    },
    #[error("cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {why}")]
    Pem { what: String, why: String },
    #[error("the TLS settings are rejected")]
    Tls(#[from] rustls::Error),
}

/// How the server treats client certificates (Go's `tls.ClientAuthType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ClientAuth {
    #[default]
    NoClientCert,
    /// Asks for a certificate, accepts any or none (no verification).
    RequestClientCert,
    /// Requires a certificate, accepts any (no verification).
    RequireAnyClientCert,
    /// Verifies a certificate if one is sent.
    VerifyClientCertIfGiven,
    /// Requires a certificate signed by the client CA.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(s: &str) -> Result<Self, WebConfigError> {
        Ok(match s {
            "" | "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            "RequireAnyClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            other => return Err(WebConfigError::ClientAuthType(other.to_string())),
        })
    }

    fn verifies(self) -> bool {
        matches!(
            self,
            Self::VerifyClientCertIfGiven | Self::RequireAndVerifyClientCert
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    fn parse(field: &'static str, s: &str) -> Result<Self, WebConfigError> {
        match s {
            "TLS12" => Ok(Self::Tls12),
            "TLS13" => Ok(Self::Tls13),
            other => Err(WebConfigError::TlsVersion {
                field,
                value: other.to_string(),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    X25519,
    P256,
    P384,
}

impl Curve {
    fn parse(s: &str) -> Result<Self, WebConfigError> {
        match s {
            "X25519" => Ok(Self::X25519),
            "CurveP256" => Ok(Self::P256),
            "CurveP384" => Ok(Self::P384),
            other => Err(WebConfigError::Curve {
                name: other.to_string(),
            }),
        }
    }
}

/// PEM text given inline, or a file holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pem {
    Inline(String),
    File(PathBuf),
}

impl Pem {
    /// The file behind it, if any.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Pem::File(p) => Some(p),
            Pem::Inline(_) => None,
        }
    }
}

/// Validated TLS settings; files are named, not yet read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub client_ca: Option<Pem>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Go names of the TLS 1.2 suites, in preference order; empty for the
    /// defaults.
    pub cipher_suites: Vec<&'static str>,
    pub prefer_server_cipher_suites: bool,
    /// Empty for the defaults.
    pub curves: Vec<Curve>,
}

impl TlsSettings {
    /// Files this configuration reads, for change detection.
    pub(crate) fn files(&self) -> Vec<&Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(Pem::path)
            .collect()
    }
}

/// A validated web configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// User name to bcrypt hash; empty means no authentication.
    pub users: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth_type: Option<String>,
    #[serde(default)]
    client_allowed_sans: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    curve_preferences: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted for compatibility; apptheus serves HTTP/1.1.
    #[serde(default)]
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

/// Parses and validates the text of a web config file. Relative file names
/// are taken from `base_dir` (the config file's directory), as the
/// exporter toolkit does.
pub(crate) fn parse(text: &str, base_dir: &Path) -> Result<WebConfig, WebConfigError> {
    // An empty file is a valid, empty configuration.
    let raw: RawFile = if text.trim().is_empty() {
        RawFile::default()
    } else {
        serde_norway::from_str::<Option<RawFile>>(text)
            .map_err(WebConfigError::Syntax)?
            .unwrap_or_default()
    };
    if raw.rate_limit.is_some() {
        return Err(WebConfigError::Unsupported {
            field: "rate_limit",
            why: "scrapes are bounded by the connection limit instead; remove the section",
        });
    }
    let tls = match raw.tls_server_config {
        Some(t) => tls_settings(t, base_dir)?,
        None => None,
    };
    let mut users = BTreeMap::new();
    for (user, hash) in raw.basic_auth_users.unwrap_or_default() {
        if user.is_empty() || user.contains(':') {
            return Err(WebConfigError::UserName(user));
        }
        if let Err(source) = hash.parse::<bcrypt::HashParts>() {
            return Err(WebConfigError::Hash { user, source });
        }
        users.insert(user, hash);
    }
    let headers = match raw.http_server_config.and_then(|h| h.headers) {
        Some(h) => headers(h)?,
        None => Vec::new(),
    };
    Ok(WebConfig {
        tls,
        users,
        headers,
    })
}

fn pem_source(
    inline: Option<String>,
    file: Option<String>,
    names: (&'static str, &'static str),
    base_dir: &Path,
) -> Result<Option<Pem>, WebConfigError> {
    let inline = inline.filter(|s| !s.trim().is_empty());
    let file = file.filter(|s| !s.trim().is_empty());
    match (inline, file) {
        (Some(_), Some(_)) => Err(WebConfigError::InlineAndFile {
            inline: names.0,
            file: names.1,
        }),
        (Some(text), None) => Ok(Some(Pem::Inline(text))),
        (None, Some(f)) => Ok(Some(Pem::File(base_dir.join(f)))),
        (None, None) => Ok(None),
    }
}

fn tls_settings(t: RawTls, base_dir: &Path) -> Result<Option<TlsSettings>, WebConfigError> {
    let cert = pem_source(t.cert, t.cert_file, ("cert", "cert_file"), base_dir)?;
    let key = pem_source(t.key, t.key_file, ("key", "key_file"), base_dir)?;
    let client_ca = pem_source(
        t.client_ca,
        t.client_ca_file,
        ("client_ca", "client_ca_file"),
        base_dir,
    )?;
    let client_auth = ClientAuth::parse(t.client_auth_type.as_deref().unwrap_or(""))?;
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => {
            // Like the toolkit: no certificate means plain HTTP, and TLS
            // options without one are a mistake worth reporting.
            if client_ca.is_some() || client_auth != ClientAuth::NoClientCert {
                return Err(WebConfigError::Incomplete {
                    given: "client authentication",
                    missing: "cert_file",
                });
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(WebConfigError::Incomplete {
                given: "cert_file",
                missing: "key_file",
            });
        }
        (None, Some(_)) => {
            return Err(WebConfigError::Incomplete {
                given: "key_file",
                missing: "cert_file",
            });
        }
    };
    if client_auth.verifies() && client_ca.is_none() {
        return Err(WebConfigError::ClientCaRequired(client_auth));
    }
    if client_auth == ClientAuth::NoClientCert && client_ca.is_some() {
        return Err(WebConfigError::ClientCaUnused);
    }
    if !t.client_allowed_sans.is_empty() {
        return Err(WebConfigError::Unsupported {
            field: "tls_server_config.client_allowed_sans",
            why: "issue client certificates from a dedicated CA and use RequireAndVerifyClientCert",
        });
    }
    let min_version = match t.min_version.as_deref() {
        None | Some("") => TlsVersion::Tls12,
        Some(v) => TlsVersion::parse("min_version", v)?,
    };
    let max_version = match t.max_version.as_deref() {
        None | Some("") => TlsVersion::Tls13,
        Some(v) => TlsVersion::parse("max_version", v)?,
    };
    if min_version > max_version {
        return Err(WebConfigError::TlsVersionOrder);
    }
    let mut cipher_suites = Vec::new();
    for name in &t.cipher_suites {
        // Go also names the ChaCha suites without the hash.
        let full = if name.ends_with("_CHACHA20_POLY1305") {
            format!("{name}_SHA256")
        } else {
            name.clone()
        };
        match CIPHER_SUITES.iter().find(|s| **s == full) {
            Some(s) if !cipher_suites.contains(s) => cipher_suites.push(*s),
            Some(_) => {}
            None => return Err(WebConfigError::CipherSuite { name: name.clone() }),
        }
    }
    let curves = t
        .curve_preferences
        .iter()
        .map(|c| Curve::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(TlsSettings {
        cert,
        key,
        client_auth,
        client_ca,
        min_version,
        max_version,
        cipher_suites,
        prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
        curves,
    }))
}

fn headers(
    raw: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, WebConfigError> {
    let mut out = Vec::new();
    for (name, value) in raw {
        let Some(canonical) = ALLOWED_HEADERS
            .iter()
            .find(|h| h.eq_ignore_ascii_case(&name))
        else {
            return Err(WebConfigError::HeaderNotAllowed { name });
        };
        // Blank means unset.
        if value.trim().is_empty() {
            continue;
        }
        let bad = |expected| WebConfigError::HeaderValue {
            name: name.clone(),
            value: value.clone(),
            expected,
        };
        match *canonical {
            "X-Frame-Options"
                if !["deny", "sameorigin"]
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case(&value)) =>
            {
                return Err(bad("deny or sameorigin"));
            }
            "X-Content-Type-Options" if !value.eq_ignore_ascii_case("nosniff") => {
                return Err(bad("nosniff"));
            }
            _ => {}
        }
        let header_value =
            HeaderValue::from_str(&value).map_err(|_| bad("printable ASCII on one line"))?;
        out.push((HeaderName::from_static(lower(canonical)), header_value));
    }
    Ok(out)
}

/// `HeaderName::from_static` wants lower case.
fn lower(name: &'static str) -> &'static str {
    match name {
        "Content-Security-Policy" => "content-security-policy",
        "X-Frame-Options" => "x-frame-options",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "strict-transport-security",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$04$lRHu0wZ5TRrbvD7yN6KGUOdSMnkvvFmfRuSTYdyZeJw2NCgDbfDEu";

    fn ok(text: &str) -> WebConfig {
        parse(text, Path::new("/etc/apptheus")).unwrap()
    }

    /// The error as the log line and the exit message say it (its causes
    /// included).
    fn err(text: &str) -> String {
        crate::error_chain::chain(&parse(text, Path::new("/etc/apptheus")).unwrap_err()).to_string()
    }

    #[test]
    fn empty_files_configure_nothing() {
        for text in ["", "\n", "---\n", "{}", "# only a comment\n"] {
            let c = ok(text);
            assert!(c.tls.is_none() && c.users.is_empty() && c.headers.is_empty());
        }
    }

    #[test]
    fn full_file() {
        let c = ok(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\n  cipher_suites: [TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305, \
             TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n  prefer_server_cipher_suites: false\n  \
             curve_preferences: [X25519, CurveP256]\n\
             http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
             strict-transport-security: max-age=31536000\n    Content-Security-Policy: ''\n\
             basic_auth_users:\n  alice: '{HASH}'\n"
        ));
        let t = c.tls.unwrap();
        assert_eq!(t.cert, Pem::File("/etc/apptheus/server.crt".into()));
        assert_eq!(t.key, Pem::File("/abs/server.key".into()));
        assert_eq!(t.client_ca, Some(Pem::File("/etc/apptheus/ca.crt".into())));
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert_eq!(t.max_version, TlsVersion::Tls13);
        assert_eq!(
            t.cipher_suites,
            vec![
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        assert!(!t.prefer_server_cipher_suites);
        assert_eq!(t.curves, vec![Curve::X25519, Curve::P256]);
        assert_eq!(t.files().len(), 3);
        assert_eq!(c.users.get("alice").map(String::as_str), Some(HASH));
        let names: Vec<&str> = c.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["x-frame-options", "strict-transport-security"]);
    }

    #[test]
    fn inline_pem() {
        let c = ok(
            "tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n    x\n  key_file: k\n",
        );
        let t = c.tls.unwrap();
        assert!(matches!(t.cert, Pem::Inline(ref s) if s.starts_with("-----BEGIN")));
        assert_eq!(t.files(), vec![Path::new("/etc/apptheus/k")]);
    }

    #[test]
    fn mistakes_are_named() {
        let cases: &[(&str, &str)] = &[
            ("tls_server_config: [", "not valid YAML"),
            ("tls_sever_config: {}", "unknown field `tls_sever_config`"),
            (
                "tls_server_config:\n  cert_fil: x",
                "unknown field `cert_fil`",
            ),
            ("tls_server_config:\n  cert_file: a", "key_file"),
            ("tls_server_config:\n  key_file: a", "cert_file"),
            (
                "tls_server_config:\n  cert_file: a\n  cert: b\n  key_file: k",
                "either cert or cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Yes",
                "unknown value 'Yes'",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert",
                "needs client_ca_file",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c",
                "client_auth_type is NoClientCert",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10",
                "'TLS10' is not supported",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12",
                "above max_version",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]",
                "'TLS_RSA_WITH_RC4_128_SHA' is not supported",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]",
                "'CurveP521'",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [x]",
                "client_allowed_sans is not supported",
            ),
            (
                "tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert",
                "cert_file",
            ),
            (
                "http_server_config:\n  headers:\n    Content-Type: x",
                "'Content-Type' is not allowed",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow",
                "deny or sameorigin",
            ),
            (
                "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff",
                "nosniff",
            ),
            ("basic_auth_users:\n  alice: plaintext", "not a bcrypt hash"),
            ("basic_auth_users:\n  'a:b': x", "contains ':'"),
            ("rate_limit:\n  interval: 1s", "rate_limit is not supported"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
