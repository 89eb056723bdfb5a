//! The router's locks: parking_lot's `Mutex` and `RwLock`.
//!
//! Every lock in the router comes from here, so that the request path's lock acquisitions can
//! be counted. With the `lock-count` feature each acquisition adds one to a process-wide
//! counter ([`acquisitions`]), read by the counting bench (`benches/request_path.rs`).
//! Without it (every normal build) these are parking_lot's types themselves, at no cost.

#[cfg(not(feature = "lock-count"))]
pub use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[cfg(feature = "lock-count")]
pub use counted::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, acquisitions};

#[cfg(feature = "lock-count")]
mod counted {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// parking_lot's guards, unchanged.
    pub type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;
    pub type RwLockReadGuard<'a, T> = parking_lot::RwLockReadGuard<'a, T>;
    pub type RwLockWriteGuard<'a, T> = parking_lot::RwLockWriteGuard<'a, T>;

    static ACQUIRED: AtomicU64 = AtomicU64::new(0);

    /// Lock acquisitions (mutex locks, read and write locks) in this process so far.
    pub fn acquisitions() -> u64 {
        ACQUIRED.load(Ordering::Relaxed)
    }

    fn count() {
        ACQUIRED.fetch_add(1, Ordering::Relaxed);
    }

    /// parking_lot's `Mutex`, counting its acquisitions.
    #[derive(Debug, Default)]
    pub struct Mutex<T: ?Sized>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        pub const fn new(value: T) -> Self {
            Self(parking_lot::Mutex::new(value))
        }
    }

    impl<T: ?Sized> Mutex<T> {
        pub fn lock(&self) -> MutexGuard<'_, T> {
            count();
            self.0.lock()
        }
    }

    /// parking_lot's `RwLock`, counting its acquisitions.
    #[derive(Debug, Default)]
    pub struct RwLock<T: ?Sized>(parking_lot::RwLock<T>);

    impl<T> RwLock<T> {
        pub const fn new(value: T) -> Self {
            Self(parking_lot::RwLock::new(value))
        }
    }

    impl<T: ?Sized> RwLock<T> {
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            count();
            self.0.read()
        }

        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            count();
            self.0.write()
        }
    }
}
