//! Latency histograms (HdrHistogram, nanoseconds, 3 significant digits) per
//! operation kind, error counters, and the summaries printed and saved.

use hdrhistogram::Histogram;

use crate::proto::{ErrorReply, OpKind, Outcome};

/// Highest latency a histogram holds (longer ones are recorded as this).
pub const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Errors, counted apart from the operations that succeeded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// `SERVER_ERROR ...` replies.
    pub server_error: u64,
    /// `CLIENT_ERROR ...` replies.
    pub client_error: u64,
    /// `ERROR` replies.
    pub error: u64,
    /// Valid replies of the wrong kind (`NOT_STORED` to a set, ...).
    pub unexpected_reply: u64,
    /// Keys missing from a get when every key was set first (`--prefill`).
    pub unexpected_miss: u64,
    /// Values whose length or content is not the key's.
    pub wrong_value: u64,
    /// Requests lost to a reply that could not be parsed.
    pub protocol: u64,
    /// Requests lost to a read that timed out.
    pub timeout: u64,
    /// Requests lost to a closed or failed connection, and failed connects.
    pub connection: u64,
}

impl Errors {
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("server_error", self.server_error),
            ("client_error", self.client_error),
            ("error", self.error),
            ("unexpected_reply", self.unexpected_reply),
            ("unexpected_miss", self.unexpected_miss),
            ("wrong_value", self.wrong_value),
            ("protocol", self.protocol),
            ("timeout", self.timeout),
            ("connection", self.connection),
        ]
    }

    pub fn total(&self) -> u64 {
        self.fields().iter().map(|(_, v)| v).sum()
    }

    pub fn add(&mut self, o: &Errors) {
        self.server_error += o.server_error;
        self.client_error += o.client_error;
        self.error += o.error;
        self.unexpected_reply += o.unexpected_reply;
        self.unexpected_miss += o.unexpected_miss;
        self.wrong_value += o.wrong_value;
        self.protocol += o.protocol;
        self.timeout += o.timeout;
        self.connection += o.connection;
    }
}

/// Everything one phase measured.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Indexed by `OpKind as usize`.
    pub hist: [Histogram<u64>; 3],
    pub errors: Errors,
    pub hits: u64,
    pub misses: u64,
    /// Requests sent.
    pub sent: u64,
    /// Open loop: the latest a request left after its scheduled time.
    pub max_send_lag_ns: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: [new_histogram(), new_histogram(), new_histogram()],
            errors: Errors::default(),
            hits: 0,
            misses: 0,
            sent: 0,
            max_send_lag_ns: 0,
        }
    }
}

impl Stats {
    /// Counts one parsed reply. Only replies without any error go into the
    /// latency histograms (an error reply is cheap and would flatter them).
    pub fn record(&mut self, kind: OpKind, o: &Outcome, latency_ns: u64, expect_hits: bool) {
        self.hits += u64::from(o.hits);
        self.misses += u64::from(o.misses);
        let mut bad = false;
        match o.error {
            None => {}
            Some(ErrorReply::Server) => self.errors.server_error += 1,
            Some(ErrorReply::Client) => self.errors.client_error += 1,
            Some(ErrorReply::Error) => self.errors.error += 1,
            Some(ErrorReply::Unexpected) => self.errors.unexpected_reply += 1,
        }
        bad |= o.error.is_some();
        if o.wrong_values > 0 {
            self.errors.wrong_value += u64::from(o.wrong_values);
            bad = true;
        }
        if expect_hits && o.misses > 0 {
            self.errors.unexpected_miss += u64::from(o.misses);
            bad = true;
        }
        if !bad {
            self.hist[kind as usize].saturating_record(latency_ns.max(1));
        }
    }

    #[cfg(test)]
    pub fn merge(&mut self, o: &Stats) {
        for (a, b) in self.hist.iter_mut().zip(&o.hist) {
            a.add(b).expect("histograms of the same bounds");
        }
        self.errors.add(&o.errors);
        self.hits += o.hits;
        self.misses += o.misses;
        self.sent += o.sent;
        self.max_send_lag_ns = self.max_send_lag_ns.max(o.max_send_lag_ns);
    }

    /// Successful operations (those in the histograms).
    pub fn ops(&self) -> u64 {
        self.hist.iter().map(|h| h.len()).sum()
    }

    /// All operation kinds in one histogram.
    pub fn all(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for x in &self.hist {
            h.add(x).expect("same bounds");
        }
        h
    }
}

/// The percentiles printed and saved, in microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary {
            count: 0,
            mean: 0.0,
            min: 0.0,
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            p99_9: 0.0,
            p99_99: 0.0,
            max: 0.0,
        };
    }
    Summary {
        count: h.len(),
        mean: h.mean() / 1000.0,
        min: us(h.min()),
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        p99_9: us(h.value_at_quantile(0.999)),
        p99_99: us(h.value_at_quantile(0.9999)),
        max: us(h.max()),
    }
}

/// The latency CDF as (percentile, microseconds) points, denser toward
/// the tail (HdrHistogram's percentile iteration, 5 ticks per half
/// distance), ending with the maximum at 100%.
pub fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = Vec::new();
    if h.is_empty() {
        return pts;
    }
    for v in h.iter_quantiles(5) {
        let p = v.quantile_iterated_to() * 100.0;
        let lat = us(v.value_iterated_to());
        if let Some(last) = pts.last_mut() {
            if last.0 == p {
                last.1 = lat;
                continue;
            }
        }
        pts.push((p, lat));
    }
    let max = us(h.max());
    match pts.last_mut() {
        Some(last) if last.0 >= 100.0 => last.1 = max,
        _ => pts.push((100.0, max)),
    }
    pts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=10000 us, once each.
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 1000).unwrap();
        }
        let s = summarize(&h);
        assert_eq!(s.count, 10_000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(s.p50, 5000.0), "p50 {}", s.p50);
        assert!(close(s.p90, 9000.0), "p90 {}", s.p90);
        assert!(close(s.p99, 9900.0), "p99 {}", s.p99);
        assert!(close(s.p99_9, 9990.0), "p99.9 {}", s.p99_9);
        assert!(close(s.max, 10_000.0), "max {}", s.max);
        assert!(close(s.min, 1.0), "min {}", s.min);
        assert!(close(s.mean, 5000.5), "mean {}", s.mean);
        assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.p99_9 && s.p99_9 <= s.max);
    }

    #[test]
    fn an_empty_histogram_summarizes_to_zero() {
        let s = summarize(&new_histogram());
        assert_eq!((s.count, s.p99, s.max), (0, 0.0, 0.0));
        assert!(cdf(&new_histogram()).is_empty());
    }

    #[test]
    fn cdf_is_monotonic_and_ends_at_the_max() {
        let mut h = new_histogram();
        for i in 0..100_000u64 {
            h.record(20_000 + (i % 1000) * 37 + if i % 997 == 0 { 5_000_000 } else { 0 })
                .unwrap();
        }
        let pts = cdf(&h);
        assert!(pts.len() > 20);
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let last = pts.last().unwrap();
        assert_eq!(last.0, 100.0);
        assert_eq!(last.1, summarize(&h).max);
        assert!(
            pts.iter().any(|p| p.0 >= 99.9 && p.0 < 100.0),
            "tail points"
        );
    }

    #[test]
    fn errors_stay_out_of_the_histograms() {
        let mut s = Stats::default();
        s.record(OpKind::Get, &Outcome::default(), 5_000, true);
        let miss = Outcome {
            misses: 1,
            ..Outcome::default()
        };
        s.record(OpKind::Get, &miss, 5_000, false);
        s.record(OpKind::Get, &miss, 5_000, true);
        let err = Outcome {
            error: Some(ErrorReply::Server),
            ..Outcome::default()
        };
        s.record(OpKind::Set, &err, 1_000, true);
        assert_eq!(s.ops(), 2);
        assert_eq!(s.misses, 2);
        assert_eq!(s.errors.unexpected_miss, 1);
        assert_eq!(s.errors.server_error, 1);
        assert_eq!(s.errors.total(), 2);
        let mut t = Stats::default();
        t.merge(&s);
        t.merge(&s);
        assert_eq!((t.ops(), t.errors.total(), t.all().len()), (4, 4, 4));
    }
}
