//! The health state machine of one backend (per worker), free of I/O so it
//! can be tested with made-up clocks.
//!
//! ```text
//!            failure (count < limit)           failure (probe failed)
//!             ┌──────┐                          ┌──────┐
//!             ▼      │   count reaches limit    ▼      │
//!          Healthy ──┴────────────────────────► Bad ───┘
//!             ▲        (retry_at = now + wait)   │
//!             └──────────────────────────────────┘
//!               a new connection passes its `version` check
//! ```
//!
//! * Every failure (a connect error or failed validation, a read timeout, an
//!   I/O error, a malformed reply, the backend closing a connection with
//!   requests in flight) adds one to the consecutive-failure count; a reply
//!   to a real request resets it to 0.
//! * When the count reaches the failure limit the backend is bad: requests
//!   fail fast and each connection is retried at `retry_at`.
//! * A connection that connects and answers `version` ends the bad state
//!   but does not reset the count (only a real reply does): the next failure
//!   before a successful reply marks the backend bad again at once, a
//!   half-open circuit.
//! * Flapping (memcached's `flaptime`): when a backend is marked bad less
//!   than `flap_time` after it last recovered, its flap count grows,
//!   otherwise it restarts at 0. The retry wait is `retry_wait *
//!   ramp ^ flaps`, capped at `flap_backoff_max` (never below `retry_wait`).

use std::time::Duration;

use tokio::time::Instant;

use super::config::BackendConfig;

/// What one failure did to the backend's health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FailureOutcome {
    /// Counted; the backend is still healthy.
    Counted,
    /// The backend just went bad; retried after `wait`.
    MarkedBad { wait: Duration, flaps: u32 },
    /// The backend was already bad (a probe failed); retried after `wait`.
    StillBad { wait: Duration },
}

#[derive(Debug, Default)]
pub(crate) struct Health {
    consecutive_failures: u32,
    retry_at: Option<Instant>,
    recovered_at: Option<Instant>,
    flaps: u32,
}

impl Health {
    pub(crate) fn is_bad(&self) -> bool {
        self.retry_at.is_some()
    }

    /// When a bad backend is next retried; `None` while healthy.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(crate) fn flaps(&self) -> u32 {
        self.flaps
    }

    /// A reply to a real request arrived.
    pub(crate) fn success(&mut self) {
        self.consecutive_failures = 0;
    }

    /// A new connection passed its `version` check. Returns whether this
    /// ended a bad state.
    pub(crate) fn validated(&mut self, now: Instant) -> bool {
        if self.retry_at.take().is_some() {
            self.recovered_at = Some(now);
            true
        } else {
            false
        }
    }

    /// One failure at `now`.
    pub(crate) fn failure(&mut self, config: &BackendConfig, now: Instant) -> FailureOutcome {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.retry_at.is_some() {
            let wait = retry_wait(config, self.flaps);
            self.retry_at = Some(now + wait);
            return FailureOutcome::StillBad { wait };
        }
        if self.consecutive_failures < config.effective_failure_limit() {
            return FailureOutcome::Counted;
        }
        let flapping = !config.flap_time.is_zero()
            && self
                .recovered_at
                .is_some_and(|at| now.saturating_duration_since(at) < config.flap_time);
        self.flaps = if flapping {
            self.flaps.saturating_add(1)
        } else {
            0
        };
        let wait = retry_wait(config, self.flaps);
        self.retry_at = Some(now + wait);
        FailureOutcome::MarkedBad {
            wait,
            flaps: self.flaps,
        }
    }
}

/// The retry wait after `flaps` consecutive flaps: `retry_wait * ramp ^
/// flaps`, capped at `max(flap_backoff_max, retry_wait)`.
pub(crate) fn retry_wait(config: &BackendConfig, flaps: u32) -> Duration {
    let base = config.retry_wait;
    if flaps == 0 {
        return base;
    }
    let cap = config.flap_backoff_max.max(base);
    let ramp = if config.flap_backoff_ramp.is_finite() {
        config.flap_backoff_ramp.max(1.0)
    } else {
        1.0
    };
    let exponent = i32::try_from(flaps).unwrap_or(i32::MAX);
    let secs = base.as_secs_f64() * ramp.powi(exponent);
    match Duration::try_from_secs_f64(secs) {
        Ok(wait) if wait < cap => wait,
        _ => cap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackendConfig {
        BackendConfig {
            retry_wait: Duration::from_secs(2),
            failure_limit: 3,
            ..BackendConfig::default()
        }
    }

    #[test]
    fn marked_bad_after_limit_and_success_resets() {
        let c = config();
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.failure(&c, t0), FailureOutcome::Counted);
        assert_eq!(h.failure(&c, t0), FailureOutcome::Counted);
        h.success();
        assert_eq!(h.consecutive_failures(), 0);
        assert_eq!(h.failure(&c, t0), FailureOutcome::Counted);
        assert_eq!(h.failure(&c, t0), FailureOutcome::Counted);
        assert!(!h.is_bad());
        let outcome = h.failure(&c, t0);
        assert_eq!(
            outcome,
            FailureOutcome::MarkedBad {
                wait: Duration::from_secs(2),
                flaps: 0
            }
        );
        assert!(h.is_bad());
        assert_eq!(h.retry_at(), Some(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn failed_probe_extends_and_validation_recovers_half_open() {
        let c = config();
        let t0 = Instant::now();
        let mut h = Health::default();
        for _ in 0..3 {
            h.failure(&c, t0);
        }
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            h.failure(&c, t1),
            FailureOutcome::StillBad {
                wait: Duration::from_secs(2)
            }
        );
        assert_eq!(h.retry_at(), Some(t1 + Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        assert!(h.validated(t2));
        assert!(!h.is_bad());
        assert!(!h.validated(t2), "already healthy");
        // Half-open: one failure before any reply marks it bad again.
        assert!(matches!(
            h.failure(&c, t2 + Duration::from_secs(100)),
            FailureOutcome::MarkedBad { flaps: 0, .. }
        ));
        // A reply after recovery restores the full failure budget.
        assert!(h.validated(t2 + Duration::from_secs(200)));
        h.success();
        assert_eq!(
            h.failure(&c, t2 + Duration::from_secs(300)),
            FailureOutcome::Counted
        );
    }

    #[test]
    fn flapping_grows_the_wait_up_to_the_cap() {
        let c = BackendConfig {
            flap_time: Duration::from_secs(30),
            flap_backoff_ramp: 2.0,
            flap_backoff_max: Duration::from_secs(10),
            failure_limit: 1,
            ..config()
        };
        let mut now = Instant::now();
        let mut h = Health::default();
        let mut waits = Vec::new();
        for _ in 0..5 {
            match h.failure(&c, now) {
                FailureOutcome::MarkedBad { wait, .. } => waits.push(wait.as_secs()),
                other => panic!("{other:?}"),
            }
            now += Duration::from_secs(1);
            assert!(h.validated(now));
            now += Duration::from_secs(1); // bad again 1 s after recovering
        }
        assert_eq!(waits, vec![2, 4, 8, 10, 10]);
        assert_eq!(h.flaps(), 4);
        // Stable for longer than flap_time: no longer flapping.
        now += Duration::from_secs(31);
        assert_eq!(
            h.failure(&c, now),
            FailureOutcome::MarkedBad {
                wait: Duration::from_secs(2),
                flaps: 0
            }
        );
    }

    #[test]
    fn flap_detection_off_by_default_and_wait_math_is_safe() {
        let c = BackendConfig {
            failure_limit: 1,
            ..config()
        };
        let mut now = Instant::now();
        let mut h = Health::default();
        for _ in 0..3 {
            assert!(matches!(
                h.failure(&c, now),
                FailureOutcome::MarkedBad { flaps: 0, .. }
            ));
            now += Duration::from_millis(10);
            h.validated(now);
        }
        let wild = BackendConfig {
            flap_backoff_ramp: f64::NAN,
            ..config()
        };
        assert_eq!(retry_wait(&wild, 50), Duration::from_secs(2));
        let huge = BackendConfig {
            flap_backoff_ramp: 1e300,
            ..config()
        };
        assert_eq!(retry_wait(&huge, u32::MAX), Duration::from_secs(3600));
        let defaults = BackendConfig::default();
        assert_eq!(retry_wait(&defaults, 1), Duration::from_millis(4500));
        // A cap below retry_wait never shortens the base wait.
        let low_cap = BackendConfig {
            flap_backoff_max: Duration::from_secs(1),
            ..config()
        };
        assert_eq!(retry_wait(&low_cap, 3), Duration::from_secs(2));
        // failure_limit 0 behaves as 1.
        let zero = BackendConfig {
            failure_limit: 0,
            ..config()
        };
        let mut h = Health::default();
        assert!(matches!(
            h.failure(&zero, now),
            FailureOutcome::MarkedBad { .. }
        ));
    }
}
