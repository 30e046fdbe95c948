//! The open-loop timetable. At `--rate R` over C connections, request n of
//! the whole run is due at `start + n / R`, and connection c sends requests
//! c, c + C, c + 2C, ... Each time is computed from n (not by adding
//! intervals), so the schedule does not drift, and a request's latency is
//! taken from its due time: a request that leaves late because the server
//! (or the connection's in-flight limit) held it back counts the wait.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Schedule {
    rate: f64,
    stride: u64,
    offset: u64,
}

impl Schedule {
    /// The timetable of connection `conn` out of `conns`, at `rate` requests
    /// per second in all.
    pub fn new(rate: f64, conns: u64, conn: u64) -> Self {
        assert!(rate > 0.0 && conns > 0 && conn < conns);
        Schedule {
            rate,
            stride: conns,
            offset: conn,
        }
    }

    /// When this connection's k-th request (from 0) is due, after the start.
    pub fn due(&self, k: u64) -> Duration {
        let n = k * self.stride + self.offset;
        // n / rate in nanoseconds, computed in one step.
        Duration::from_nanos((n as f64 * 1e9 / self.rate).round() as u64)
    }

    #[cfg(test)]
    /// How many of this connection's requests fall before `end`.
    pub fn count_before(&self, end: Duration) -> u64 {
        let mut lo = 0u64;
        let mut hi = 1u64;
        while self.due(hi) < end {
            hi *= 2;
        }
        // The first k with due(k) >= end, by bisection.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.due(mid) < end {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connection_is_evenly_spaced_and_does_not_drift() {
        let s = Schedule::new(1000.0, 1, 0);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), Duration::from_millis(1));
        assert_eq!(s.due(1_000_000), Duration::from_secs(1000));
        // A rate whose interval is not a whole number of nanoseconds.
        let s = Schedule::new(3.0, 1, 0);
        assert_eq!(s.due(3_000_000), Duration::from_secs(1_000_000));
        assert_eq!(s.due(1), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn connections_interleave_into_the_global_rate() {
        let conns = 7;
        let rate = 5000.0;
        let window = Duration::from_secs(2);
        let mut all: Vec<Duration> = Vec::new();
        for c in 0..conns {
            let s = Schedule::new(rate, conns, c);
            let n = s.count_before(window);
            all.extend((0..n).map(|k| s.due(k)));
        }
        all.sort();
        // Exactly rate * window requests, one every 1/rate.
        assert_eq!(all.len(), 10_000);
        for (n, t) in all.iter().enumerate() {
            assert_eq!(*t, Duration::from_nanos(n as u64 * 200_000));
        }
    }

    #[test]
    fn count_before_matches_due() {
        let s = Schedule::new(123.0, 3, 2);
        for ms in [1u64, 17, 1000, 12_345] {
            let end = Duration::from_millis(ms);
            let n = s.count_before(end);
            assert!(n == 0 || s.due(n - 1) < end);
            assert!(s.due(n) >= end);
        }
    }
}
