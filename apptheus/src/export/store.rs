//! The snapshot store: the latest snapshot of every container, replaced
//! whole at each sample, and its encodings as readers ask for them.
use std::sync::{Arc, RwLock};

use crate::{
    export::{
        exposition::{EncodeError, Encoding},
        prepared::Prepared,
        snapshot::Snapshot,
    },
    sync,
};

pub(crate) struct SnapshotStore {
    prepared: RwLock<Arc<Prepared>>,
}

impl SnapshotStore {
    /// A store holding an empty snapshot.
    pub(crate) fn new() -> Self {
        SnapshotStore {
            prepared: RwLock::new(Arc::new(Prepared::new(Arc::new(Snapshot::default())))),
        }
    }

    /// Replaces the containers' snapshot with a new one (encoded as reads
    /// ask for it).
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        self.swap(Prepared::new(Arc::new(snapshot)));
    }

    /// Replaces the containers' snapshot with a new one, encoded first in
    /// the encodings `set` (those scrapers with a schedule ask for: their
    /// scrapes then only copy it, and a scrape meanwhile gets the last
    /// one, ready).
    pub(crate) fn publish_prepared(&self, snapshot: Snapshot, set: u8) {
        let new = Prepared::new(Arc::new(snapshot));
        if set != 0 {
            new.prepare(set);
        }
        self.swap(new);
    }

    fn swap(&self, new: Prepared) {
        let large = new.snapshot.rows.len() > 2000;
        let new = Arc::new(new);
        let mut guard = sync::write(&self.prepared);
        let old = std::mem::replace(&mut *guard, new);
        drop(guard);
        drop(old);
        // Large snapshots leave large freed blocks behind; glibc keeps them
        // unless asked (the threshold keeps small nodes from paying for it).
        if large {
            crate::allocator::release_free_heap();
        }
    }

    fn current(&self) -> Arc<Prepared> {
        sync::read(&self.prepared).clone()
    }

    /// The latest snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current().snapshot.clone()
    }

    /// `own` (the agent's own metrics, encoded) followed by the latest
    /// snapshot in `encoding`, as it was encoded for an earlier read or
    /// after the sample.
    pub(crate) fn body(&self, own: Vec<u8>, encoding: Encoding) -> Result<Vec<u8>, EncodeError> {
        self.current().body(own, encoding)
    }
}
