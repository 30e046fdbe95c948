//! Expiration-time conversion: the one place where memcached's exptime
//! rules live.
//!
//! Every TTL the cache accepts (`set`/`touch`/`gat` exptime, meta `T`, `N`
//! and `R` tokens, the `flush_all` delay) goes through [`absolute_exptime`],
//! so the rules cannot drift between commands.

/// Largest exptime that is still read as "seconds from now" (30 days).
/// Anything larger is an absolute Unix time, exactly as in memcached.
pub const MAX_RELATIVE_EXPTIME: i64 = 60 * 60 * 24 * 30;

/// The absolute time stored for "already expired" (negative exptime). Any
/// time in the past works; 1 keeps it distinct from 0 (= never).
pub const EXPIRED_EXPTIME: i64 = 1;

/// Convert a client-supplied exptime into an absolute Unix time (0 = never).
///
/// | input                         | result                          |
/// |-------------------------------|---------------------------------|
/// | `0`                           | `0` (never expires)             |
/// | `< 0`                         | [`EXPIRED_EXPTIME`] (expired now) |
/// | `1 ..= 2_592_000` (30 days)   | `now + exptime`                 |
/// | `> 2_592_000`                 | `exptime` as absolute Unix time (already expired if `<= now`) |
///
/// Saturates instead of overflowing, so no input can panic.
pub fn absolute_exptime(exptime: i64, now: i64) -> i64 {
    if exptime == 0 {
        0
    } else if exptime < 0 {
        EXPIRED_EXPTIME
    } else if exptime <= MAX_RELATIVE_EXPTIME {
        now.saturating_add(exptime).max(EXPIRED_EXPTIME)
    } else {
        exptime
    }
}

/// Whether an absolute exptime (0 = never) has been reached at `now`.
/// An item expires *at* its exptime second, like memcached (`exptime <= now`).
#[inline]
pub fn is_expired(abs_exptime: i64, now: i64) -> bool {
    abs_exptime != 0 && abs_exptime <= now
}

/// Remaining TTL as memcached's meta `t` flag reports it: -1 for "never",
/// otherwise seconds left (never negative).
#[inline]
pub fn remaining_ttl(abs_exptime: i64, now: i64) -> i64 {
    if abs_exptime == 0 {
        -1
    } else {
        abs_exptime.saturating_sub(now).max(0)
    }
}
