//! Time: memcached's expiry rules and the per-key write versions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest exptime read as "seconds from now" (30 days); larger values are
/// absolute Unix times, as in memcached.
pub const MAX_RELATIVE_EXPTIME: i64 = memroute_proto::REALTIME_MAXDELTA;

/// The current Unix time in seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Converts a client exptime into the absolute expiry stored in the table
/// (0 = never). memcached's rules: 0 never, negative already expired,
/// up to 30 days relative, larger absolute. An expiry that is already in the
/// past is stored as `now` rather than as the client's (possibly 1970) time:
/// the item reads as expired either way, and DynamoDB TTL only removes items
/// whose expiry is less than five years old.
pub fn absolute_expiry(exptime: i64, now: i64) -> i64 {
    let abs = if exptime == 0 {
        return 0;
    } else if exptime < 0 {
        now
    } else if exptime <= MAX_RELATIVE_EXPTIME {
        now.saturating_add(exptime)
    } else {
        exptime
    };
    abs.max(now)
}

/// Whether an absolute expiry (0 = never) has been reached at `now`
/// (memcached: an item expires *at* its exptime second).
pub fn is_expired(expires: i64, now: i64) -> bool {
    expires != 0 && expires <= now
}

/// Remaining TTL as the meta `t` flag reports it: -1 for never.
pub fn remaining_ttl(expires: i64, now: i64) -> i64 {
    if expires == 0 {
        -1
    } else {
        expires.saturating_sub(now).max(0)
    }
}

/// The last version handed out, shared by every store in the process so
/// that two stores on one table (for example across a configuration reload)
/// still order their writes.
static LAST_VERSION: AtomicU64 = AtomicU64::new(0);

/// A fresh write version: the wall clock in microseconds, forced strictly
/// above every version handed out before in this process. Versions are
/// stored in the `cas` attribute and double as memcached CAS uniques.
pub fn next_version() -> u64 {
    let now = now_micros();
    let mut last = LAST_VERSION.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        match LAST_VERSION.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => last = actual,
        }
    }
}

/// Makes sure later versions are above `seen` (a version read from the
/// table, possibly written by another process with a clock ahead of ours).
pub fn observe_version(seen: u64) {
    LAST_VERSION.fetch_max(seen, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rules() {
        let now = 1_700_000_000;
        assert_eq!(absolute_expiry(0, now), 0);
        assert_eq!(absolute_expiry(-1, now), now);
        assert_eq!(absolute_expiry(10, now), now + 10);
        assert_eq!(
            absolute_expiry(MAX_RELATIVE_EXPTIME, now),
            now + MAX_RELATIVE_EXPTIME
        );
        assert_eq!(absolute_expiry(now + 100, now), now + 100);
        // An absolute time in the past (the PHP session "exists" probe).
        assert_eq!(absolute_expiry(2_678_400, now), now);
        assert!(is_expired(absolute_expiry(-1, now), now));
        assert!(!is_expired(0, now));
        assert_eq!(remaining_ttl(0, now), -1);
        assert_eq!(remaining_ttl(now + 5, now), 5);
        assert_eq!(remaining_ttl(now - 5, now), 0);
    }

    #[test]
    fn versions_increase() {
        let a = next_version();
        let b = next_version();
        assert!(b > a);
        observe_version(b + 1_000_000_000);
        assert!(next_version() > b + 1_000_000_000);
    }
}
