//! memcached's item semantics that every store keeping items shares (the
//! embedded cache and the DynamoDB pool): what a storage command asks of
//! the current item, which way a counter moves, and how a counter's value
//! is read, changed and written back.
//!
//! It lives in this crate, below both stores, so neither redefines it. What
//! a store answers is a [`Reply`](crate::typed::Reply); how the meta
//! protocol echoes flags back is the reply's meta encoder.

use crate::request::{ArithOp, StoreOp};

/// What a storage command requires of the key's current item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreMode {
    /// `set`, `ms` / `MS`: store whatever is there.
    #[default]
    Set,
    /// `add`, `ME`: store only if the key holds no live item.
    Add,
    /// `replace`, `MR`: store only if the key holds a live item.
    Replace,
    /// `append`, `MA`: add the data after the current value, keeping the
    /// item's flags and expiry.
    Append,
    /// `prepend`, `MP`: add the data before the current value (same rules).
    Prepend,
}

impl StoreMode {
    /// The mode of a classic storage command and the CAS unique it must
    /// match: `cas` is a `set` that only happens if the unique still
    /// matches (memcached's NREAD_CAS).
    pub fn of_command(op: StoreOp, cas: u64) -> (StoreMode, Option<u64>) {
        match op {
            StoreOp::Set => (StoreMode::Set, None),
            StoreOp::Add => (StoreMode::Add, None),
            StoreOp::Replace => (StoreMode::Replace, None),
            StoreOp::Append => (StoreMode::Append, None),
            StoreOp::Prepend => (StoreMode::Prepend, None),
            StoreOp::Cas => (StoreMode::Set, Some(cas)),
        }
    }

    /// The mode an `ms` `M` token selects (the decoder has refused any
    /// other letter; no token is `set`).
    pub fn of_meta(token: Option<u8>) -> StoreMode {
        match token {
            Some(b'E') => StoreMode::Add,
            Some(b'R') => StoreMode::Replace,
            Some(b'A') => StoreMode::Append,
            Some(b'P') => StoreMode::Prepend,
            _ => StoreMode::Set,
        }
    }

    /// Whether the new data is joined to the current value.
    pub fn joins(self) -> bool {
        matches!(self, StoreMode::Append | StoreMode::Prepend)
    }

    /// The joined value's two parts in order: `prepend` puts `data` first,
    /// every other mode after `current`.
    pub fn join_order<'a>(self, current: &'a [u8], data: &'a [u8]) -> [&'a [u8]; 2] {
        match self {
            StoreMode::Prepend => [data, current],
            _ => [current, data],
        }
    }
}

/// Which way `incr`/`decr`/`ma` moves a counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ArithMode {
    /// `incr`, `MI` / `M+` (the default): wraps at 2^64.
    #[default]
    Incr,
    /// `decr`, `MD` / `M-`: stops at 0.
    Decr,
}

impl ArithMode {
    /// The mode of a classic `incr`/`decr`.
    pub fn of_command(op: ArithOp) -> ArithMode {
        match op {
            ArithOp::Incr => ArithMode::Incr,
            ArithOp::Decr => ArithMode::Decr,
        }
    }

    /// The mode an `ma` `M` token selects (the decoder has refused any
    /// other letter).
    pub fn of_meta(token: Option<u8>) -> ArithMode {
        match token {
            Some(b'D' | b'-') => ArithMode::Decr,
            _ => ArithMode::Incr,
        }
    }

    /// The counter's new value: `incr` wraps at 2^64, `decr` stops at 0.
    pub fn apply(self, current: u64, delta: u64) -> u64 {
        match self {
            ArithMode::Incr => current.wrapping_add(delta),
            ArithMode::Decr => current.saturating_sub(delta),
        }
    }
}

/// A stored value read as a counter, with memcached's `safe_strtoull`
/// rules (leading spaces, trailing spaces and text after them are fine;
/// anything else is not a number).
pub fn parse_counter(value: &[u8]) -> Option<u64> {
    crate::number::parse_u64(value)
}

/// The bytes memcached stores for a counter's new value: the digits, padded
/// with spaces to the old length when the number got shorter (memcached
/// updates the value in place).
pub fn render_counter(value: u64, old_len: usize) -> Vec<u8> {
    let mut out = value.to_string().into_bytes();
    if out.len() < old_len {
        out.resize(old_len, b' ');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_commands_and_tokens() {
        assert_eq!(
            StoreMode::of_command(StoreOp::Cas, 9),
            (StoreMode::Set, Some(9))
        );
        assert_eq!(
            StoreMode::of_command(StoreOp::Prepend, 9),
            (StoreMode::Prepend, None)
        );
        assert_eq!(StoreMode::of_meta(None), StoreMode::Set);
        assert_eq!(StoreMode::of_meta(Some(b'E')), StoreMode::Add);
        assert!(StoreMode::of_meta(Some(b'A')).joins());
        assert_eq!(StoreMode::Append.join_order(b"ab", b"cd"), [b"ab", b"cd"]);
        assert_eq!(StoreMode::Prepend.join_order(b"ab", b"cd"), [b"cd", b"ab"]);
        assert_eq!(ArithMode::of_meta(Some(b'-')), ArithMode::Decr);
        assert_eq!(ArithMode::of_meta(Some(b'I')), ArithMode::Incr);
    }

    #[test]
    fn counter_rules() {
        assert_eq!(ArithMode::Incr.apply(u64::MAX, 1), 0);
        assert_eq!(ArithMode::Incr.apply(u64::MAX - 5, 10), 4);
        assert_eq!(ArithMode::Decr.apply(3, 10), 0);
        assert_eq!(ArithMode::Decr.apply(10, 3), 7);
        assert_eq!(parse_counter(b" 12 x"), Some(12));
        assert_eq!(parse_counter(b"12a"), None);
        assert_eq!(render_counter(99, 3), b"99 ".to_vec());
        assert_eq!(render_counter(100, 2), b"100".to_vec());
    }
}
