//! Per-backend, per-worker counters and an HDR latency histogram, and
//! the registry that sums them over workers for `stats backends`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::config::BackendConfig;
use crate::stats::Counter;

/// Upper bounds (inclusive, in microseconds) of the buckets the metrics
/// endpoint exposes the latency distribution in (Prometheus histograms
/// need fixed buckets); one more bucket holds everything slower. The
/// distribution itself is kept with HDR precision.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// Slowest latency the histogram tells apart (an hour, in microseconds);
/// slower replies count as this.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Significant decimal digits kept: values within 1% are told apart.
const LATENCY_DIGITS: u8 = 2;

fn new_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Reply latencies (from [`Backend::send`](super::Backend::send) queueing
/// the request to its reply being read), in microseconds, with HDR
/// precision (an HdrHistogram with two significant digits).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    pub histogram: hdrhistogram::Histogram<u64>,
    /// Replies recorded.
    pub count: u64,
    /// Sum of their latencies.
    pub sum: Duration,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            histogram: new_histogram(),
            count: 0,
            sum: Duration::ZERO,
        }
    }
}

impl LatencyHistogram {
    /// Mean latency; `None` before the first reply.
    pub fn mean(&self) -> Option<Duration> {
        let count = u32::try_from(self.count).ok().filter(|&c| c > 0)?;
        Some(self.sum / count)
    }

    /// The `q` quantile (0.0..=1.0), within 1%; `None` before the first
    /// reply.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        Some(Duration::from_micros(self.histogram.value_at_quantile(q)))
    }

    /// [`quantile`](Self::quantile)`(0.5)`.
    pub fn p50(&self) -> Option<Duration> {
        self.quantile(0.5)
    }

    /// [`quantile`](Self::quantile)`(0.99)`.
    pub fn p99(&self) -> Option<Duration> {
        self.quantile(0.99)
    }

    /// Replies per [`LATENCY_BUCKETS_US`] bucket (slower than the bound
    /// before, at most this one), then the rest: what `/metrics` exposes.
    pub fn buckets(&self) -> [u64; LATENCY_BUCKETS_US.len() + 1] {
        let mut out = [0; LATENCY_BUCKETS_US.len() + 1];
        let mut below = 0;
        for (slot, &bound) in out.iter_mut().zip(LATENCY_BUCKETS_US.iter()) {
            let upto = self.histogram.count_between(0, bound);
            *slot = upto - below;
            below = upto;
        }
        out[LATENCY_BUCKETS_US.len()] = self.count.saturating_sub(below);
        out
    }

    fn add(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
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
    /// Values over the item size limit dropped unread (their requests were
    /// answered `SERVER_ERROR out of memory writing get response`).
    pub oversize_values: u64,
    /// Requests refused because the backend was at its `depthlimit`.
    pub depth_refused: u64,
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

/// A gauge with a single writer (the backend's worker) and many readers,
/// like [`Counter`].
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicUsize);

impl Gauge {
    pub(crate) fn add(&self, n: usize) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    pub(crate) fn sub(&self, n: usize) {
        self.0
            .store(self.0.load(Relaxed).saturating_sub(n), Relaxed);
    }
    pub(crate) fn get(&self) -> usize {
        self.0.load(Relaxed)
    }
}

/// The bucket layout hdrhistogram uses for [`new_histogram`]'s bounds
/// (lowest value 1, so unit magnitude 0; two significant digits, so 256
/// sub-buckets, the power of two above 2 * 10^2): what [`SharedHistogram`]
/// reproduces so that its counts convert to an `hdrhistogram::Histogram`
/// bucket for bucket.
const SUB_BUCKET_HALF_COUNT_MAGNITUDE: u32 = 7;
const SUB_BUCKET_HALF_COUNT: u64 = 1 << SUB_BUCKET_HALF_COUNT_MAGNITUDE;
const SUB_BUCKET_MASK: u64 = (SUB_BUCKET_HALF_COUNT << 1) - 1;
/// 64 less the bits of the largest value the first bucket holds.
const LEADING_ZERO_COUNT_BASE: u32 = 64 - (SUB_BUCKET_HALF_COUNT_MAGNITUDE + 1);

/// The counts slot of `value` (at most [`LATENCY_MAX_US`]): its bucket (a
/// power of two) and its place among that bucket's sub-buckets, as
/// hdrhistogram indexes it.
#[inline]
fn slot_of(value: u64) -> usize {
    let bucket = LEADING_ZERO_COUNT_BASE - (value | SUB_BUCKET_MASK).leading_zeros();
    let sub_bucket = value >> bucket;
    // Bucket 0 uses all of its sub-buckets, every later one its top half:
    // (bucket + 1) * half + sub_bucket - half.
    ((u64::from(bucket) << SUB_BUCKET_HALF_COUNT_MAGNITUDE) + sub_bucket) as usize
}

/// The lowest value that falls in counts slot `slot` (the inverse of
/// [`slot_of`]).
fn value_of(slot: usize) -> u64 {
    let slot = slot as u64;
    // Slots come in halves of a bucket: the first two halves are bucket 0,
    // each later half is the top half of the next bucket.
    let half = slot >> SUB_BUCKET_HALF_COUNT_MAGNITUDE;
    let in_half = slot & (SUB_BUCKET_HALF_COUNT - 1);
    if half == 0 {
        in_half
    } else {
        (in_half + SUB_BUCKET_HALF_COUNT) << (half - 1)
    }
}

/// Counts slots [`SharedHistogram`] needs: up to [`LATENCY_MAX_US`]'s.
const HISTOGRAM_SLOTS: usize = {
    // slot_of is not const (leading_zeros on a u64 is, but keep one
    // formula): the same arithmetic, spelled out.
    let bucket = LEADING_ZERO_COUNT_BASE - (LATENCY_MAX_US | SUB_BUCKET_MASK).leading_zeros();
    ((bucket as u64) << SUB_BUCKET_HALF_COUNT_MAGNITUDE) as usize
        + (LATENCY_MAX_US >> bucket) as usize
        + 1
};

/// One worker's [`LatencyHistogram`] of a backend, readable from other
/// threads (`stats` on any worker and the metrics endpoint sum them).
///
/// Its worker is the only writer: a reply's latency is one plain load and
/// store of a relaxed atomic in the HDR counts slot it falls in (no lock, no
/// locked instruction on the request path). Readers copy the counts into
/// an `hdrhistogram::Histogram` of the same layout, so the distribution
/// keeps full HDR precision; a read racing a write may miss that one reply
/// (or see it in the count and not yet in the sum), which a scrape
/// tolerates.
#[derive(Debug)]
pub(crate) struct SharedHistogram {
    counts: Box<[Counter]>,
    sum_nanos: Counter,
}

impl Default for SharedHistogram {
    fn default() -> Self {
        SharedHistogram {
            counts: (0..HISTOGRAM_SLOTS).map(|_| Counter::default()).collect(),
            sum_nanos: Counter::default(),
        }
    }
}

impl SharedHistogram {
    /// Only the owning worker may call this (see [`Counter::add`]).
    #[inline]
    pub(crate) fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(count) = self.counts.get(slot_of(us.min(LATENCY_MAX_US))) {
            count.incr();
        }
        self.sum_nanos
            .add(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    fn snapshot(&self) -> LatencyHistogram {
        let mut histogram = new_histogram();
        for (slot, count) in self.counts.iter().enumerate() {
            let n = count.get();
            if n > 0 {
                histogram.saturating_record_n(value_of(slot), n);
            }
        }
        LatencyHistogram {
            count: histogram.len(),
            histogram,
            sum: Duration::from_nanos(self.sum_nanos.get()),
        }
    }

    /// `stats reset`; like the counters' reset, it may keep a reply its
    /// worker records meanwhile.
    fn reset(&self) {
        for count in self.counts.iter() {
            count.reset();
        }
        self.sum_nanos.reset();
    }
}

/// One backend's counters on one worker. The worker is the only writer;
/// any worker reads them through the [`BackendRegistry`] to answer `stats
/// backends`, so they are single-writer atomics (a plain load and store
/// each, no locked instruction on the request path).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: Counter,
    pub responses: Counter,
    pub failed_requests: Counter,
    pub fast_fails: Counter,
    pub busy: Counter,
    pub failures: Counter,
    pub timeouts: Counter,
    pub oversize_values: Counter,
    pub depth_refused: Counter,
    pub connects: Counter,
    pub reconnects: Counter,
    pub connect_failures: Counter,
    pub marked_bad: Counter,
    pub writes: Counter,
    pub bytes_written: Counter,
    pub bytes_read: Counter,
    pub latency: SharedHistogram,
    pub connections_open: Gauge,
    pub in_flight: Gauge,
    /// Mirrors the worker's health: marked bad and not yet recovered.
    pub bad: AtomicBool,
}

impl Counters {
    /// A snapshot; the health gauges only the owning worker knows
    /// (`flaps`, `consecutive_failures`) read 0.
    pub(crate) fn snapshot(&self, config: &BackendConfig) -> BackendStats {
        let state = if config.down {
            BackendState::Down
        } else if self.bad.load(Relaxed) {
            BackendState::Bad
        } else {
            BackendState::Healthy
        };
        BackendStats {
            state,
            requests: self.requests.get(),
            responses: self.responses.get(),
            failed_requests: self.failed_requests.get(),
            fast_fails: self.fast_fails.get(),
            busy: self.busy.get(),
            failures: self.failures.get(),
            timeouts: self.timeouts.get(),
            oversize_values: self.oversize_values.get(),
            depth_refused: self.depth_refused.get(),
            connects: self.connects.get(),
            reconnects: self.reconnects.get(),
            connect_failures: self.connect_failures.get(),
            marked_bad: self.marked_bad.get(),
            flaps: 0,
            consecutive_failures: 0,
            in_flight: self.in_flight.get(),
            connections_open: self.connections_open.get(),
            writes: self.writes.get(),
            bytes_written: self.bytes_written.get(),
            bytes_read: self.bytes_read.get(),
            latency: self.latency.snapshot(),
        }
    }

    /// `stats reset`: zeroes the counters, not the gauges. Like the
    /// server's own reset, it may lose an increment racing it.
    fn reset(&self) {
        for counter in [
            &self.requests,
            &self.responses,
            &self.failed_requests,
            &self.fast_fails,
            &self.busy,
            &self.failures,
            &self.timeouts,
            &self.oversize_values,
            &self.depth_refused,
            &self.connects,
            &self.reconnects,
            &self.connect_failures,
            &self.marked_bad,
            &self.writes,
            &self.bytes_written,
            &self.bytes_read,
        ] {
            counter.reset();
        }
        self.latency.reset();
    }
}

impl BackendStats {
    /// Adds another worker's view of the same backend: counters and gauges
    /// add up, the histograms merge, and the state is the worst of the two.
    fn merge(&mut self, other: &BackendStats) {
        self.state = match (self.state, other.state) {
            (BackendState::Down, _) | (_, BackendState::Down) => BackendState::Down,
            (BackendState::Bad, _) | (_, BackendState::Bad) => BackendState::Bad,
            _ => BackendState::Healthy,
        };
        self.requests += other.requests;
        self.responses += other.responses;
        self.failed_requests += other.failed_requests;
        self.fast_fails += other.fast_fails;
        self.busy += other.busy;
        self.failures += other.failures;
        self.timeouts += other.timeouts;
        self.oversize_values += other.oversize_values;
        self.depth_refused += other.depth_refused;
        self.connects += other.connects;
        self.reconnects += other.reconnects;
        self.connect_failures += other.connect_failures;
        self.marked_bad += other.marked_bad;
        self.flaps = self.flaps.max(other.flaps);
        self.consecutive_failures = self.consecutive_failures.max(other.consecutive_failures);
        self.in_flight += other.in_flight;
        self.connections_open += other.connections_open;
        self.writes += other.writes;
        self.bytes_written += other.bytes_written;
        self.bytes_read += other.bytes_read;
        self.latency.add(&other.latency);
    }
}

/// One backend summed over the workers that use it, for `stats backends`.
#[derive(Debug, Clone)]
pub struct BackendSummary {
    pub config: Arc<BackendConfig>,
    /// Workers with a live connection set to this backend.
    pub workers: usize,
    /// Of those, the ones that currently see it bad.
    pub bad_workers: usize,
    pub stats: BackendStats,
}

/// Every worker's counters for every backend a live configuration uses.
/// Workers register each backend they create; entries go when the backend
/// is dropped (a reload that no longer uses it, or changed its settings).
#[derive(Debug, Default)]
pub struct BackendRegistry {
    entries: Mutex<Vec<(Arc<BackendConfig>, Weak<Counters>)>>,
}

impl BackendRegistry {
    pub(crate) fn register(&self, config: Arc<BackendConfig>, counters: &Arc<Counters>) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|(_, c)| c.strong_count() > 0);
            entries.push((config, Arc::downgrade(counters)));
        }
    }

    /// Each live backend, summed over workers, in the order first
    /// registered. Backends with the same label, host and port (one per
    /// worker, or one per distinct setting such as timeouts) are one entry.
    pub fn summaries(&self) -> Vec<BackendSummary> {
        let mut out: Vec<BackendSummary> = Vec::new();
        let Ok(entries) = self.entries.lock() else {
            return out;
        };
        for (config, counters) in entries.iter() {
            let Some(counters) = counters.upgrade() else {
                continue;
            };
            let stats = counters.snapshot(config);
            let bad = usize::from(stats.state == BackendState::Bad);
            let same = |s: &&mut BackendSummary| {
                s.config.label == config.label
                    && s.config.host == config.host
                    && s.config.port == config.port
            };
            match out.iter_mut().find(same) {
                Some(summary) => {
                    summary.workers += 1;
                    summary.bad_workers += bad;
                    summary.stats.merge(&stats);
                }
                None => out.push(BackendSummary {
                    config: config.clone(),
                    workers: 1,
                    bad_workers: bad,
                    stats,
                }),
            }
        }
        out
    }

    /// `stats reset` for every backend's counters.
    pub fn reset(&self) {
        if let Ok(entries) = self.entries.lock() {
            for counters in entries.iter().filter_map(|(_, c)| c.upgrade()) {
                counters.reset();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_buckets_and_sums() {
        let shared = SharedHistogram::default();
        assert_eq!(shared.snapshot().p50(), None);
        assert_eq!(shared.snapshot().mean(), None);
        for _ in 0..98 {
            shared.record(Duration::from_micros(80));
        }
        shared.record(Duration::from_millis(3));
        shared.record(Duration::from_secs(60));
        let h = shared.snapshot();
        assert_eq!(h.count, 100);
        // HDR precision: within 1% of what was recorded.
        let near = |d: Option<Duration>, want: Duration| {
            let (d, w) = (d.unwrap().as_secs_f64(), want.as_secs_f64());
            assert!((d - w).abs() <= w * 0.01, "{d} vs {w}");
        };
        near(h.p50(), Duration::from_micros(80));
        near(h.p99(), Duration::from_millis(3));
        near(h.quantile(1.0), Duration::from_secs(60));
        let buckets = h.buckets();
        assert_eq!(buckets[1], 98, "80 us is in (50, 100]");
        assert_eq!(buckets[6], 1, "3 ms is in (2.5, 5] ms");
        assert_eq!(
            buckets[LATENCY_BUCKETS_US.len()],
            1,
            "60 s is past the last bound"
        );
        assert_eq!(buckets.iter().sum::<u64>(), 100);
        let exact = SharedHistogram::default();
        exact.record(Duration::from_micros(50));
        let exact = exact.snapshot();
        assert_eq!(exact.buckets()[0], 1, "bounds are inclusive");
        assert_eq!(exact.mean(), Some(Duration::from_micros(50)));
        // Workers' histograms add up.
        let mut sum = h.clone();
        sum.add(&exact);
        assert_eq!(sum.count, 101);
        assert_eq!(sum.buckets()[0], 1);
        shared.reset();
        assert_eq!(shared.snapshot(), LatencyHistogram::default());
    }

    #[test]
    fn lock_free_histogram_matches_hdrhistogram_exactly() {
        // Every slot boundary region and a spread of values across the
        // whole range, recorded both ways: the same histogram, bucket for
        // bucket, min and max.
        let shared = SharedHistogram::default();
        let mut direct = new_histogram();
        let mut values: Vec<u64> = (0..1_000).collect();
        let mut v = 1_000u64;
        while v < LATENCY_MAX_US {
            values.extend([v - 1, v, v + 1, v + v / 3]);
            v = v * 5 / 4;
        }
        values.extend([LATENCY_MAX_US - 1, LATENCY_MAX_US, LATENCY_MAX_US + 1]);
        for &us in &values {
            shared.record(Duration::from_micros(us));
            direct.saturating_record(us.min(LATENCY_MAX_US));
        }
        let snapshot = shared.snapshot();
        assert_eq!(snapshot.histogram, direct);
        assert_eq!(snapshot.count, values.len() as u64);
        assert_eq!(snapshot.histogram.max(), direct.max());
        for slot in 0..HISTOGRAM_SLOTS {
            assert_eq!(slot_of(value_of(slot)), slot, "slot {slot}");
        }
        assert_eq!(slot_of(LATENCY_MAX_US), HISTOGRAM_SLOTS - 1);
        assert!(HISTOGRAM_SLOTS <= direct.distinct_values());
    }

    #[test]
    fn registry_sums_workers_and_forgets_dropped_backends() {
        let registry = BackendRegistry::default();
        let config = Arc::new(BackendConfig::new("127.0.0.1", 11211));
        let other = Arc::new(BackendConfig::new("127.0.0.1", 11212));
        let workers: Vec<Arc<Counters>> = (0..3).map(|_| Arc::default()).collect();
        for counters in &workers {
            registry.register(config.clone(), counters);
        }
        let lone = Arc::new(Counters::default());
        registry.register(other.clone(), &lone);
        workers[0].requests.add(5);
        workers[1].requests.add(7);
        workers[1].in_flight.add(2);
        workers[2].bad.store(true, Relaxed);
        workers[0].latency.record(Duration::from_micros(40));
        workers[1].latency.record(Duration::from_millis(2));

        let summaries = registry.summaries();
        assert_eq!(summaries.len(), 2);
        let first = &summaries[0];
        assert_eq!(first.config.port, 11211);
        assert_eq!((first.workers, first.bad_workers), (3, 1));
        assert_eq!(first.stats.state, BackendState::Bad);
        assert_eq!(first.stats.requests, 12);
        assert_eq!(first.stats.in_flight, 2);
        assert_eq!(first.stats.latency.count, 2);
        // The slowest worker's reply, within HDR's 1%.
        let max = first.stats.latency.quantile(1.0).unwrap().as_micros();
        assert!((1_980..=2_020).contains(&max), "{max}");
        assert_eq!(summaries[1].stats.state, BackendState::Healthy);

        registry.reset();
        assert_eq!(registry.summaries()[0].stats.requests, 0);
        assert_eq!(registry.summaries()[0].stats.in_flight, 2, "gauges stay");

        drop(lone);
        assert_eq!(registry.summaries().len(), 1, "a dropped backend goes");
    }
}
