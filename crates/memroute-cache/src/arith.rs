//! Counter parsing and formatting for `incr` / `decr` / meta `ma`.
//!
//! memcached parses the stored value with `strtoull` (via its
//! `safe_strtoull`) and writes the result back in place when it is not
//! longer than the old value, padding with spaces. Both rules are
//! reproduced here so values round-trip byte-for-byte like memcached's.

/// C `isspace` in the "C" locale.
#[inline]
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Parse a stored value as memcached's `safe_strtoull` does:
/// optional leading whitespace, optional `+`/`-`, at least one decimal
/// digit, and then either the end of the value or whitespace (anything
/// after that whitespace is ignored, as in memcached). Values that do not
/// fit in 64 bits are rejected (`ERANGE`), and a `-` is only accepted when
/// the wrapped result is not negative as a signed number (so `-0` is 0 but
/// `-1` is non-numeric) — memcached's exact rule.
pub(crate) fn parse_counter(v: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < v.len() && is_c_space(v[i]) {
        i += 1;
    }
    let mut negative = false;
    if let Some(&sign @ (b'+' | b'-')) = v.get(i) {
        negative = sign == b'-';
        i += 1;
    }
    let digits_start = i;
    let mut acc: u64 = 0;
    let mut overflow = false;
    while let Some(&b) = v.get(i) {
        if !b.is_ascii_digit() {
            break;
        }
        match acc
            .checked_mul(10)
            .and_then(|a| a.checked_add(u64::from(b - b'0')))
        {
            Some(a) => acc = a,
            None => overflow = true,
        }
        i += 1;
    }
    if i == digits_start || overflow {
        return None;
    }
    if let Some(&b) = v.get(i) {
        if !is_c_space(b) {
            return None;
        }
    }
    let value = if negative { acc.wrapping_neg() } else { acc };
    if negative && (value as i64) < 0 {
        return None;
    }
    Some(value)
}

/// Apply the delta: `incr` wraps at 2^64, `decr` stops at 0.
#[inline]
pub(crate) fn apply_delta(current: u64, delta: u64, incr: bool) -> u64 {
    if incr {
        current.wrapping_add(delta)
    } else {
        current.saturating_sub(delta)
    }
}

/// The bytes memcached stores for a new counter value: the decimal digits,
/// right-padded with spaces to the old length when the new number is not
/// longer than the old value (memcached's in-place update), else exact.
pub(crate) fn render_counter(value: u64, old_len: usize) -> Vec<u8> {
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
    fn parses_like_strtoull() {
        assert_eq!(parse_counter(b"12"), Some(12));
        assert_eq!(parse_counter(b"  12"), Some(12));
        assert_eq!(parse_counter(b"12 "), Some(12));
        assert_eq!(parse_counter(b"12 abc"), Some(12));
        assert_eq!(parse_counter(b"+5"), Some(5));
        assert_eq!(parse_counter(b"-0"), Some(0));
        assert_eq!(parse_counter(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(
            parse_counter(b"000000000000000000000000000001"),
            Some(1),
            "leading zeros are fine, as in memcached"
        );
        assert_eq!(parse_counter(b"-18446744073709551615"), Some(1));
    }

    #[test]
    fn rejects_non_numeric() {
        for bad in [
            &b""[..],
            b" ",
            b"abc",
            b"12abc",
            b"1a2",
            b"-1",
            b"-",
            b"+",
            b"18446744073709551616",
            b"123456789012345678901",
        ] {
            assert_eq!(
                parse_counter(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn delta_rules() {
        assert_eq!(apply_delta(u64::MAX, 1, true), 0);
        assert_eq!(apply_delta(u64::MAX - 5, 10, true), 4);
        assert_eq!(apply_delta(3, 10, false), 0);
        assert_eq!(apply_delta(10, 3, false), 7);
    }

    #[test]
    fn rendering_keeps_length_when_shrinking() {
        assert_eq!(render_counter(99, 3), b"99 ".to_vec());
        assert_eq!(render_counter(100, 2), b"100".to_vec());
        assert_eq!(render_counter(13, 4), b"13  ".to_vec());
        assert_eq!(render_counter(0, 0), b"0".to_vec());
    }
}
