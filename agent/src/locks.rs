//! Locks that a panic cannot poison for everyone after it.
//!
//! A std lock whose holder panicked is "poisoned": every later `lock().unwrap()` panics too, so
//! one bad request (the `/ratelimit/set?rate=1e-30` panic inside a bucket) would break every
//! later request of that service. The data these locks guard (buckets, counters, tables) stays
//! consistent between statements, so the request path takes the guard back and carries on.
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `lock`/`read`/`write` that ignore poisoning.
pub trait Unpoisoned<T: ?Sized> {
    type Read<'a>
    where
        Self: 'a;
    type Write<'a>
    where
        Self: 'a;
    fn read_unpoisoned(&self) -> Self::Read<'_>;
    fn write_unpoisoned(&self) -> Self::Write<'_>;
}

impl<T: ?Sized> Unpoisoned<T> for RwLock<T> {
    type Read<'a>
        = RwLockReadGuard<'a, T>
    where
        T: 'a;
    type Write<'a>
        = RwLockWriteGuard<'a, T>
    where
        T: 'a;
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `Mutex::lock` that ignores poisoning.
pub trait Locked<T: ?Sized> {
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_does_not_poison_later_users() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let l = std::sync::Arc::new(RwLock::new(1));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = l2.write().unwrap();
            panic!("holder panics");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *m.locked() += 1;
        *l.write_unpoisoned() += 1;
        assert_eq!((*m.locked(), *l.read_unpoisoned()), (2, 2));
    }
}
