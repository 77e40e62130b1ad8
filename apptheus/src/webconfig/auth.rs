//! HTTP basic authentication against bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), so a
//! successful check is remembered for a while, keyed by a keyed hash of the
//! credentials (never the password itself), and checks run off the async
//! threads, a few at a time.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::sync::lock;

use base64::Engine as _;
use hyper::header::HeaderValue;
use ring::hmac;
use tokio::sync::Semaphore;

/// How long a verified password is trusted without running bcrypt again.
const CACHE_TTL: Duration = Duration::from_secs(300);
/// Entries kept at most; the cache is emptied when full.
const CACHE_MAX: usize = 1024;
/// bcrypt checks run at once.
const CONCURRENT_CHECKS: usize = 2;

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    key: hmac::Key,
    cache: Mutex<HashMap<Vec<u8>, Instant>>,
    checks: Arc<Semaphore>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// User and password from an `Authorization: Basic` header.
pub fn credentials(header: &HeaderValue) -> Option<(String, String)> {
    let value = header.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

impl BasicAuth {
    /// None when there are no users (no authentication).
    pub fn new(users: BTreeMap<String, String>) -> Option<Self> {
        if users.is_empty() {
            return None;
        }
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &nonce()));
        Some(Self {
            users,
            key,
            cache: Mutex::new(HashMap::new()),
            checks: Arc::new(Semaphore::new(CONCURRENT_CHECKS)),
        })
    }

    /// Whether the request's Authorization header holds valid credentials.
    pub async fn check(&self, header: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = header.and_then(credentials) else {
            return false;
        };
        let tag = self.tag(&user, &password);
        if self.cached(&tag) {
            return true;
        }
        let known = self.users.contains_key(&user);
        // An unknown user costs as much as a known one: verify against some
        // hash and refuse whatever the result.
        let Some(hash) = self
            .users
            .get(&user)
            .or_else(|| self.users.values().next())
            .cloned()
        else {
            return false;
        };
        let Ok(_permit) = self.checks.clone().acquire_owned().await else {
            return false;
        };
        let verified =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if known && verified {
            self.remember(tag);
            return true;
        }
        false
    }

    fn tag(&self, user: &str, password: &str) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        ctx.sign().as_ref().to_vec()
    }

    fn cached(&self, tag: &[u8]) -> bool {
        let cache = lock(&self.cache);
        cache.get(tag).is_some_and(|t| t.elapsed() < CACHE_TTL)
    }

    fn remember(&self, tag: Vec<u8>) {
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(tag, Instant::now());
    }
}

/// A key for the cache when the system's random source fails (it does
/// not on Linux): unpredictable enough for a process-local cache key.
fn nonce() -> Vec<u8> {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut v = t.as_nanos().to_le_bytes().to_vec();
    v.extend_from_slice(&std::process::id().to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    #[test]
    fn header_parsing() {
        assert_eq!(
            credentials(&basic("alice", "p:w")),
            Some(("alice".into(), "p:w".into()))
        );
        assert_eq!(
            credentials(&HeaderValue::from_static("bAsIc YTpi")),
            Some(("a".into(), "b".into()))
        );
        for bad in ["Bearer YTpi", "Basic", "Basic !!!", "Basic YWI=", ""] {
            assert_eq!(credentials(&HeaderValue::from_static(bad)), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn checks_and_caches() {
        let users = BTreeMap::from([
            ("alice".to_string(), bcrypt::hash("secret", 4).unwrap()),
            ("bob".to_string(), bcrypt::hash("other", 4).unwrap()),
        ]);
        let auth = BasicAuth::new(users).unwrap();
        assert!(auth.check(Some(&basic("alice", "secret"))).await);
        assert!(auth.check(Some(&basic("alice", "secret"))).await);
        assert_eq!(auth.cache.lock().unwrap().len(), 1);
        assert!(!auth.check(Some(&basic("alice", "wrong"))).await);
        assert!(!auth.check(Some(&basic("alice", ""))).await);
        // Alice's password for a user that does not exist.
        assert!(!auth.check(Some(&basic("carol", "secret"))).await);
        assert!(!auth.check(Some(&basic("bob", "secret"))).await);
        assert!(auth.check(Some(&basic("bob", "other"))).await);
        assert!(!auth.check(None).await);
        assert!(BasicAuth::new(BTreeMap::new()).is_none());
    }
}
