//! User names for uids, cached: on HPC nodes the lookup may go to LDAP.
use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use crate::sync::lock;

fn cache() -> &'static Mutex<HashMap<u32, String>> {
    static CACHE: OnceLock<Mutex<HashMap<u32, String>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The user name of `uid`, or the uid as text when it has none.
pub fn name(uid: u32) -> String {
    let mut c = lock(cache());
    if let Some(n) = c.get(&uid) {
        return n.clone();
    }
    let n = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    if c.len() < 65_536 {
        c.insert(uid, n.clone());
    }
    n
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_and_unknown() {
        assert_eq!(super::name(0), "root");
        assert_eq!(super::name(3_999_999_999), "3999999999");
    }
}
