//! Coarse wall clock used for every time decision in the cache.
//!
//! memcached works in whole seconds (expiry, last access, `flush_all`
//! delays), so the cache does too. The clock is a trait so tests can move
//! time forward without sleeping ([`ManualClock`]); production uses
//! [`SystemClock`].

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in whole Unix seconds.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Current Unix time in seconds.
    fn now(&self) -> i64;
}

/// The real wall clock (`SystemTime::now()`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        // A clock set before 1970 is a broken host; treat it as the epoch
        // rather than panicking.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    secs: AtomicI64,
}

impl ManualClock {
    /// A clock reading `start` Unix seconds.
    pub fn new(start: i64) -> Self {
        Self {
            secs: AtomicI64::new(start),
        }
    }

    /// Set the current time.
    pub fn set(&self, secs: i64) {
        self.secs.store(secs, Ordering::Relaxed);
    }

    /// Move the clock forward (or backward, with a negative `secs`).
    pub fn advance(&self, secs: i64) {
        self.secs.fetch_add(secs, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.secs.load(Ordering::Relaxed)
    }
}
