//! Reads the web config file, and re-reads it (and the certificate, key and
//! CA files it names) when any of them changes. A change that does not
//! load keeps the last good configuration and logs an error.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock, Weak},
    time::Duration,
};

use hyper::header::{HeaderName, HeaderValue};
use ring::digest;

use super::{WebConfigError, auth::BasicAuth, parse, tls};
use crate::sync;

/// How often the files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(3);

/// The configuration in force.
#[derive(Debug, Default)]
pub struct Active {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub auth: Option<BasicAuth>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A web config file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("web config file {}: {problem}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub problem: WebConfigError,
}

/// Whether a check for changes changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
    /// The files changed but do not load; the previous configuration stays.
    Failed,
}

#[derive(Debug)]
pub struct WebConfigHandle {
    path: PathBuf,
    current: RwLock<Arc<Active>>,
    /// Fingerprint of the files as last looked at (loaded or not).
    seen: Mutex<Vec<u8>>,
}

/// Reads and builds everything the file describes.
pub fn load(path: &Path) -> Result<Active, LoadError> {
    let fail = |problem| LoadError {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|source| {
        fail(WebConfigError::Read {
            what: "the file",
            path: path.to_path_buf(),
            source,
        })
    })?;
    let config = parse(&text, base_dir(path)).map_err(fail)?;
    let tls = config
        .tls
        .as_ref()
        .map(tls::server_config)
        .transpose()
        .map_err(fail)?;
    Ok(Active {
        tls,
        auth: BasicAuth::new(config.users),
        headers: config.headers,
    })
}

fn base_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// A digest of the config file and the files it names, as they are now.
fn fingerprint(path: &Path) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let add = |ctx: &mut digest::Context, p: &Path| match std::fs::read(p) {
        Ok(bytes) => {
            ctx.update(b"1");
            ctx.update(&bytes);
            bytes
        }
        Err(_) => {
            ctx.update(b"0");
            Vec::new()
        }
    };
    let bytes = add(&mut ctx, path);
    if let Ok(text) = std::str::from_utf8(&bytes)
        && let Ok(config) = parse(text, base_dir(path))
        && let Some(t) = config.tls
    {
        for f in t.files() {
            add(&mut ctx, f);
        }
    }
    ctx.finish().as_ref().to_vec()
}

impl WebConfigHandle {
    /// Loads the file: an error here is a start-up error.
    pub fn load(path: &Path) -> Result<Arc<Self>, LoadError> {
        let seen = fingerprint(path);
        let active = load(path)?;
        log_active(path, &active);
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(active)),
            seen: Mutex::new(seen),
        }))
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Active> {
        sync::read(&self.current).clone()
    }

    /// Reloads if any of the files changed since last looked at.
    pub fn reload_if_changed(&self) -> Reload {
        let now = fingerprint(&self.path);
        {
            let mut seen = sync::lock(&self.seen);
            if *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        match load(&self.path) {
            Ok(active) => {
                tracing::info!(file = %self.path.display(), "web config reloaded");
                log_active(&self.path, &active);
                *sync::write(&self.current) = Arc::new(active);
                Reload::Reloaded
            }
            Err(e) => {
                tracing::error!(error = %e, "web config change not applied; keeping the previous configuration");
                Reload::Failed
            }
        }
    }

    /// Checks for changes every `every` until the handle is dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(handle) = weak.upgrade() else { return };
                // File reads and parsing stay off the async threads.
                if tokio::task::spawn_blocking(move || handle.reload_if_changed())
                    .await
                    .is_err()
                {
                    tracing::error!("checking the web config file for changes failed");
                }
            }
        })
    }
}

fn log_active(path: &Path, a: &Active) {
    tracing::info!(
        file = %path.display(),
        tls = a.tls.is_some(),
        basic_auth = a.auth.is_some(),
        headers = a.headers.len(),
        "web config in force"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_change_keeps_the_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&path, format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
        let h = WebConfigHandle::load(&path).unwrap();
        assert!(h.current().auth.is_some());
        assert_eq!(h.reload_if_changed(), Reload::Unchanged);

        std::fs::write(&path, "basic_auth_users: [").unwrap();
        assert_eq!(h.reload_if_changed(), Reload::Failed);
        assert!(h.current().auth.is_some());
        // Not retried (nor logged again) until the file changes again.
        assert_eq!(h.reload_if_changed(), Reload::Unchanged);

        std::fs::write(
            &path,
            "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n",
        )
        .unwrap();
        assert_eq!(h.reload_if_changed(), Reload::Reloaded);
        assert!(h.current().auth.is_none());
        assert_eq!(h.current().headers.len(), 1);
    }

    #[test]
    fn start_errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        let e = WebConfigHandle::load(&path).unwrap_err().to_string();
        assert!(e.contains("web.yml") && e.contains("cannot read"), "{e}");
        std::fs::write(
            &path,
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
        )
        .unwrap();
        let e = WebConfigHandle::load(&path).unwrap_err().to_string();
        assert!(e.contains("web.yml") && e.contains("missing.crt"), "{e}");
    }

    #[test]
    fn certificate_changes_are_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), cert.signing_key.serialize_pem()).unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(
            &path,
            "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n",
        )
        .unwrap();
        let h = WebConfigHandle::load(&path).unwrap();
        assert!(h.current().tls.is_some());
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("c.pem"), other.cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), other.signing_key.serialize_pem()).unwrap();
        assert_eq!(h.reload_if_changed(), Reload::Reloaded);
    }
}
