//! Token bucket filters, as memcached's proxy has them (`mcp.ratelim_tbf`,
//! `mcp.ratelim_global_tbf`, routelib's `route_ratelim`): a bucket of at
//! most `limit` tokens, starting full, given `fill_rate` tokens back every
//! `tick` milliseconds. A take of `n` tokens succeeds, and removes them,
//! only if the bucket holds *more* than `n` (memcached's rule: a bucket of
//! `limit` tokens admits `limit - 1` takes of one in a burst).
//!
//! [`TokenBucket`] belongs to one worker (plain cells, no atomics);
//! [`GlobalTokenBucket`] is shared by every worker and is lock-free: its
//! whole state (tokens, time of the last refill) is one 128-bit word,
//! updated by compare-and-swap, so no worker ever waits on another.
//! memcached guards its global bucket with a mutex; the arithmetic is the
//! same.
//!
//! Time is monotonic milliseconds since the bucket was made (memcached
//! reads the wall clock; a clock step cannot refill or starve a bucket
//! here). The refill arithmetic saturates where memcached's 32-bit sums
//! would wrap.

use std::cell::Cell;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::time::Instant;

use portable_atomic::AtomicU128;

/// A bucket's settings, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbfParams {
    /// Most tokens the bucket holds, and what it starts with.
    pub limit: u32,
    /// Tokens given back per tick.
    pub fill_rate: u32,
    /// Milliseconds per tick, at least 1.
    pub tick_ms: u32,
}

/// The largest setting memcached accepts (`UINT_MAX - 1`).
pub const MAX_SETTING: i64 = u32::MAX as i64 - 1;

impl TbfParams {
    /// Checks settings as memcached reads them (each an unsigned 32-bit
    /// integer), and that the tick is at least a millisecond (memcached
    /// divides by it: 0 would crash it at the first refill).
    pub fn new(limit: i64, fill_rate: i64, tick_ms: i64) -> Result<TbfParams, String> {
        let each = |v: i64| {
            if (0..=MAX_SETTING).contains(&v) {
                Ok(v as u32)
            } else {
                Err("arguments must be unsigned 32 bit integer".to_string())
            }
        };
        let params = TbfParams {
            limit: each(limit)?,
            fill_rate: each(fill_rate)?,
            tick_ms: each(tick_ms)?,
        };
        if params.tick_ms == 0 {
            return Err("tickrate must be at least 1 (milliseconds per refill)".to_string());
        }
        Ok(params)
    }

    /// The bucket after refilling up to `now` and trying to take `take`
    /// tokens: `(tokens, time of the last whole tick, admitted)`.
    fn step(&self, tokens: u32, last: u64, now: u64, take: i64) -> (u32, u64, bool) {
        let (mut tokens, mut last) = (tokens, last);
        let tick = u64::from(self.tick_ms);
        let elapsed = now.saturating_sub(last);
        if elapsed > tick {
            // Whole ticks only: the time of a partial tick counts toward
            // the next refill.
            let ticks = elapsed / tick;
            last += ticks * tick;
            let refill = ticks.saturating_mul(u64::from(self.fill_rate));
            tokens = (u64::from(tokens).saturating_add(refill)).min(u64::from(self.limit)) as u32;
        }
        // A negative take never succeeds: memcached compares it as unsigned.
        if take >= 0 && i64::from(tokens) > take {
            (tokens - take as u32, last, true)
        } else {
            (tokens, last, false)
        }
    }
}

/// Milliseconds since `epoch`.
fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// A token bucket used by one worker only.
#[derive(Debug)]
pub struct TokenBucket {
    params: TbfParams,
    epoch: Instant,
    tokens: Cell<u32>,
    last: Cell<u64>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(params: TbfParams) -> TokenBucket {
        TokenBucket {
            params,
            epoch: Instant::now(),
            tokens: Cell::new(params.limit),
            last: Cell::new(0),
        }
    }

    /// Takes `take` tokens if the bucket holds more than that.
    pub fn take(&self, take: i64) -> bool {
        self.take_at(take, millis_since(self.epoch))
    }

    fn take_at(&self, take: i64, now: u64) -> bool {
        let (tokens, last, admitted) =
            self.params
                .step(self.tokens.get(), self.last.get(), now, take);
        self.tokens.set(tokens);
        self.last.set(last);
        admitted
    }
}

/// A token bucket shared by every worker, updated without a lock.
#[derive(Debug)]
pub struct GlobalTokenBucket {
    params: TbfParams,
    epoch: Instant,
    /// Tokens in the high 64 bits, the time of the last whole tick (ms
    /// since `epoch`) in the low 64: one compare-and-swap moves both, so
    /// a refill is never counted twice by racing workers.
    state: AtomicU128,
}

fn pack(tokens: u32, last: u64) -> u128 {
    (u128::from(tokens) << 64) | u128::from(last)
}

fn unpack(state: u128) -> (u32, u64) {
    ((state >> 64) as u32, state as u64)
}

impl GlobalTokenBucket {
    /// A full bucket.
    pub fn new(params: TbfParams) -> GlobalTokenBucket {
        GlobalTokenBucket {
            params,
            epoch: Instant::now(),
            state: AtomicU128::new(pack(params.limit, 0)),
        }
    }

    /// The bucket's settings.
    pub fn params(&self) -> TbfParams {
        self.params
    }

    /// Takes `take` tokens if the bucket holds more than that.
    pub fn take(&self, take: i64) -> bool {
        self.take_at(take, millis_since(self.epoch))
    }

    fn take_at(&self, take: i64, now: u64) -> bool {
        let mut current = self.state.load(Acquire);
        loop {
            let (tokens, last) = unpack(current);
            let (new_tokens, new_last, admitted) = self.params.step(tokens, last, now, take);
            let new = pack(new_tokens, new_last);
            if new == current {
                // Refused with nothing to refill: nothing to write.
                return admitted;
            }
            match self
                .state
                .compare_exchange_weak(current, new, AcqRel, Acquire)
            {
                Ok(_) => return admitted,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn params(limit: i64, fill: i64, tick: i64) -> TbfParams {
        TbfParams::new(limit, fill, tick).unwrap()
    }

    #[test]
    fn settings_are_checked_as_memcached_reads_them() {
        assert!(TbfParams::new(-1, 1, 1).is_err());
        assert!(TbfParams::new(1, u32::MAX as i64, 1).is_err());
        assert!(TbfParams::new(MAX_SETTING, MAX_SETTING, MAX_SETTING).is_ok());
        assert!(TbfParams::new(10, 1, 0).unwrap_err().contains("tickrate"));
        // A bucket of nothing is allowed; it refuses every take.
        let empty = TokenBucket::new(params(0, 0, 1));
        assert!(!empty.take_at(0, 0));
    }

    #[test]
    fn a_full_bucket_admits_while_it_holds_more_than_the_take() {
        let b = TokenBucket::new(params(5, 1, 100));
        let admitted = (0..10).filter(|_| b.take_at(1, 0)).count();
        assert_eq!(
            admitted, 4,
            "5 tokens admit 4 takes of 1 (more than, not as many as)"
        );
        assert!(b.take_at(0, 0), "a take of 0 passes while a token is left");
        assert!(!b.take_at(-1, 0), "a negative take never passes");
    }

    #[test]
    fn refills_whole_ticks_up_to_the_limit() {
        let b = TokenBucket::new(params(10, 3, 100));
        while b.take_at(1, 0) {}
        assert_eq!(b.tokens.get(), 1);
        // A tick counts only once more than a tick has passed.
        assert!(!b.take_at(1, 100));
        // 250 ms: two ticks, +6 tokens; the last refill is at 200.
        assert!(b.take_at(1, 250));
        assert_eq!((b.tokens.get(), b.last.get()), (6, 200));
        // Far later: full again, never above the limit.
        assert!(b.take_at(1, 1_000_000));
        assert_eq!(b.tokens.get(), 9);
    }

    #[test]
    fn a_large_take_is_refused_without_spending() {
        let b = TokenBucket::new(params(10, 1, 10));
        assert!(!b.take_at(10, 0));
        assert!(b.take_at(9, 0));
        assert_eq!(b.tokens.get(), 1);
    }

    #[test]
    fn the_global_bucket_counts_like_the_local_one() {
        let local = TokenBucket::new(params(7, 2, 50));
        let global = GlobalTokenBucket::new(params(7, 2, 50));
        for (i, now) in [0u64, 0, 0, 10, 60, 60, 130, 500, 500, 500, 501]
            .iter()
            .enumerate()
        {
            let take = (i % 3) as i64;
            assert_eq!(
                local.take_at(take, *now),
                global.take_at(take, *now),
                "step {i}"
            );
        }
    }

    /// The shared bucket's claim: no lock on the machines memroute is
    /// built for (x86_64 has cmpxchg16b, found at run time; aarch64 has
    /// 128-bit exclusives).
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn the_shared_bucket_takes_no_lock() {
        assert!(AtomicU128::is_lock_free());
    }

    #[test]
    fn racing_workers_share_one_bucket_exactly() {
        // No refill: exactly limit - 1 takes succeed across all threads.
        let global = Arc::new(GlobalTokenBucket::new(params(10_001, 0, 1000)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let g = global.clone();
                std::thread::spawn(move || (0..5_000).filter(|_| g.take_at(1, 0)).count())
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 10_000);
    }
}
