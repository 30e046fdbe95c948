//! Per-backend, per-worker counters and a small latency histogram.

use std::cell::Cell;
use std::time::Duration;

/// Upper bounds (inclusive, in microseconds) of the latency buckets; one
/// more bucket holds everything slower.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// Number of buckets in [`LatencyHistogram::buckets`] (the bounds of
/// [`LATENCY_BUCKETS_US`] plus the overflow bucket).
pub const LATENCY_BUCKET_COUNT: usize = LATENCY_BUCKETS_US.len() + 1;

/// Reply latencies (from [`Backend::send`](super::Backend::send) queueing
/// the request to its reply being parsed) in fixed buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `buckets[i]` counts replies slower than `LATENCY_BUCKETS_US[i - 1]`
    /// and at most `LATENCY_BUCKETS_US[i]`; the last bucket counts the rest.
    pub buckets: [u64; LATENCY_BUCKET_COUNT],
    /// Replies recorded.
    pub count: u64,
    /// Sum of their latencies.
    pub sum: Duration,
}

impl LatencyHistogram {
    /// Records one reply.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(latency);
    }

    /// Mean latency; `None` before the first reply.
    pub fn mean(&self) -> Option<Duration> {
        let count = u32::try_from(self.count).ok().filter(|&c| c > 0)?;
        Some(self.sum / count)
    }

    /// An upper bound of the `q` quantile (0.0..=1.0): the bound of the
    /// bucket it falls in, or `Duration::MAX` for the overflow bucket.
    /// `None` before the first reply.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    LATENCY_BUCKETS_US
                        .get(i)
                        .map_or(Duration::MAX, |&us| Duration::from_micros(us)),
                );
            }
        }
        Some(Duration::MAX)
    }

    /// [`quantile`](Self::quantile)`(0.5)`.
    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.5)
    }

    /// [`quantile`](Self::quantile)`(0.99)`.
    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }
}

/// Health of a backend as one worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Requests are sent (connections may still be opening).
    Healthy,
    /// Marked bad after too many consecutive failures: requests fail fast
    /// until a retry connects.
    Bad,
    /// Configured `down`: never contacted.
    Down,
}

impl BackendState {
    /// A short lowercase name for stats output.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Healthy => "healthy",
            BackendState::Bad => "bad",
            BackendState::Down => "down",
        }
    }
}

/// A snapshot of one backend's counters on one worker
/// ([`Backend::stats`](super::Backend::stats)). Counters only grow; gauges
/// (`state`, `in_flight`, `connections_open`, `consecutive_failures`,
/// `flaps`) are current values.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStats {
    pub state: BackendState,
    /// Calls to `send`.
    pub requests: u64,
    /// Replies delivered (including dropped waiters' replies).
    pub responses: u64,
    /// Calls to `send` that returned an error, fast fails included.
    pub failed_requests: u64,
    /// Requests refused with `Down` without being sent.
    pub fast_fails: u64,
    /// Requests refused with `Busy` (connection at its in-flight limit).
    pub busy: u64,
    /// Failure events counted against the backend's health (one per failed
    /// connect or broken connection, however many requests it failed).
    pub failures: u64,
    /// Read timeouts (also counted in `failures`).
    pub timeouts: u64,
    /// Connections that passed their `version` check.
    pub connects: u64,
    /// Connection attempts after each connection's first.
    pub reconnects: u64,
    /// Connect attempts that failed (refused, timed out, failed validation).
    pub connect_failures: u64,
    /// Times the backend was marked bad.
    pub marked_bad: u64,
    /// Current flap count (0 when not flapping).
    pub flaps: u32,
    /// Current consecutive-failure count.
    pub consecutive_failures: u32,
    /// Requests queued or sent and not yet answered.
    pub in_flight: usize,
    /// Connections currently open and validated.
    pub connections_open: usize,
    /// `write` batches sent (several requests issued together share one).
    pub writes: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub latency: LatencyHistogram,
}

/// Single-threaded counters behind [`BackendStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: Cell<u64>,
    pub responses: Cell<u64>,
    pub failed_requests: Cell<u64>,
    pub fast_fails: Cell<u64>,
    pub busy: Cell<u64>,
    pub failures: Cell<u64>,
    pub timeouts: Cell<u64>,
    pub connects: Cell<u64>,
    pub reconnects: Cell<u64>,
    pub connect_failures: Cell<u64>,
    pub writes: Cell<u64>,
    pub bytes_written: Cell<u64>,
    pub bytes_read: Cell<u64>,
    pub connections_open: Cell<usize>,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &Cell<u64>, n: u64) {
    counter.set(counter.get().wrapping_add(n));
}

/// Adds one to a counter.
pub(crate) fn incr(counter: &Cell<u64>) {
    add(counter, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.p50(), None);
        assert_eq!(h.mean(), None);
        for _ in 0..98 {
            h.record(Duration::from_micros(80)); // bucket <= 100 us
        }
        h.record(Duration::from_millis(3)); // <= 5 ms
        h.record(Duration::from_secs(60)); // overflow
        assert_eq!(h.count, 100);
        assert_eq!(h.buckets[1], 98);
        assert_eq!(h.buckets[6], 1);
        assert_eq!(h.buckets[LATENCY_BUCKET_COUNT - 1], 1);
        assert_eq!(h.p50(), Some(Duration::from_micros(100)));
        assert_eq!(h.p99(), Some(Duration::from_millis(5)));
        assert_eq!(h.quantile(1.0), Some(Duration::MAX));
        assert_eq!(h.quantile(0.0), Some(Duration::from_micros(100)));
        let mut exact = LatencyHistogram::default();
        exact.record(Duration::from_micros(50));
        assert_eq!(exact.buckets[0], 1, "bounds are inclusive");
        assert_eq!(exact.mean(), Some(Duration::from_micros(50)));
    }
}
