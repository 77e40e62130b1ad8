//! Taking the daemon's locks. A panic while a lock is held poisons it;
//! nothing the daemon does under a lock leaves the data half-changed (each
//! change is complete before the guard goes), so the next user takes the
//! data as it is rather than failing in turn: one panicked task must not
//! take every later scrape, connection or sample down with it.
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_under_a_lock_does_not_lock_others_out() {
        let m = Mutex::new(1);
        let l = RwLock::new(1);
        std::thread::scope(|s| {
            let poisoned = s.spawn(|| {
                let _m = lock(&m);
                let _l = write(&l);
                panic!("a task fails while holding both");
            });
            assert!(poisoned.join().is_err());
        });
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *read(&l)), (2, 2));
    }
}
