//! Number parsing with memcached's acceptance rules.
//!
//! memcached parses numbers with `strtol`/`strtoul` wrappers (`safe_strtol`
//! and friends). Clients depend on the corner cases (`+1` is a valid length,
//! `0x1` is not, flags wrap to 32 bits), so we reproduce them exactly rather
//! than use Rust's stricter `str::parse`.

/// C's `isspace`: what `strtol` skips before a number and what memcached
/// accepts right after one (so `1\r` from a `\r\r\n` line end is 1).
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The number part of a token as `strtol` sees it: leading whitespace
/// skipped, and everything from the first whitespace after the number
/// ignored (memcached checks only that the number ends at whitespace or at
/// the end of the token).
fn number_part(token: &[u8]) -> &[u8] {
    let start = token.iter().take_while(|&&b| is_c_space(b)).count();
    let token = &token[start..];
    let end = token
        .iter()
        .position(|&b| is_c_space(b))
        .unwrap_or(token.len());
    &token[..end]
}

/// Parses an unsigned decimal exactly as memcached's `safe_strtoull` does,
/// for command tokens and for stored counter values alike: leading
/// whitespace, an optional sign, digits, then the end or whitespace
/// (anything after it is ignored). Overflow is refused. A `-` is accepted
/// only when the wrapped result is not negative as a signed number (`strtoull`
/// negates in unsigned arithmetic), so `-0` is 0 and `-1` is refused.
pub fn parse_u64(token: &[u8]) -> Option<u64> {
    let (negative, digits) = split_sign(number_part(token));
    let magnitude = parse_digits(digits)?;
    if !negative {
        return Some(magnitude);
    }
    let wrapped = magnitude.wrapping_neg();
    ((wrapped as i64) >= 0).then_some(wrapped)
}

/// Parses flags the way memcached 1.6's `safe_strtoul` does on 64-bit
/// systems: as an unsigned 64-bit number, then truncated to 32 bits.
pub fn parse_flags(token: &[u8]) -> Option<u32> {
    parse_u64(token).map(|v| v as u32)
}

/// Parses a signed decimal the way `safe_strtol` does: an optional sign and
/// digits, refused on 64-bit overflow, then truncated to 32 bits (memcached
/// stores it in an `int32_t`).
pub fn parse_i32_wrapping(token: &[u8]) -> Option<i32> {
    let (negative, digits) = split_sign(number_part(token));
    let magnitude = parse_digits(digits)?;
    let value: i64 = if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return None;
        }
        (magnitude as i64).wrapping_neg()
    } else {
        i64::try_from(magnitude).ok()?
    };
    Some(value as i32)
}

/// Parses a whole token as memcached 1.6.45's token-bounded converters
/// (`mcmc_tokto32` in vendor/mcmc/mcmc.c) do: at most 11 bytes, an
/// optional leading `-`, then only digits, within `i32` (no wrapping). No
/// `+`, no whitespace (so `1\r` is refused), and a lone `-` reads as 0.
/// 1.6.45 reads the length of a storage command and of `ms`, and the
/// exptime of `gat` and `flush_all`, this way.
pub fn parse_token_i32(token: &[u8]) -> Option<i32> {
    if token.len() > 11 {
        return None;
    }
    let (negative, digits) = match token.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, token),
    };
    let mut value: i32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i32::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(d)?
        } else {
            value.checked_add(d)?
        };
    }
    Some(value)
}

/// `mcmc_toktou32`: at most 11 bytes, digits only, within `u32`.
pub fn parse_token_u32(token: &[u8]) -> Option<u32> {
    if token.len() > 11 {
        return None;
    }
    token.iter().try_fold(0u32, |v, &d| {
        d.is_ascii_digit()
            .then(|| v.checked_mul(10)?.checked_add(u32::from(d - b'0')))
            .flatten()
    })
}

/// `mcmc_toktou64`: at most 22 bytes, digits only, within `u64`. 1.6.45
/// reads the compare value of `cas` this way.
pub fn parse_token_u64(token: &[u8]) -> Option<u64> {
    if token.len() > 22 {
        return None;
    }
    token.iter().try_fold(0u64, |v, &d| {
        d.is_ascii_digit()
            .then(|| v.checked_mul(10)?.checked_add(u64::from(d - b'0')))
            .flatten()
    })
}

fn split_sign(token: &[u8]) -> (bool, &[u8]) {
    match token.first() {
        Some(b'+') => (false, &token[1..]),
        Some(b'-') => (true, &token[1..]),
        _ => (false, token),
    }
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(value)
}

/// Writes `value` in decimal into `out` (no allocation).
pub fn write_u64(out: &mut bytes::BytesMut, value: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut v = value;
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Writes a signed `value` in decimal into `out`.
pub fn write_i64(out: &mut bytes::BytesMut, value: i64) {
    if value < 0 {
        out.extend_from_slice(b"-");
    }
    write_u64(out, value.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_rules() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"+12"), Some(12));
        assert_eq!(parse_u64(b"-0"), Some(0));
        assert_eq!(parse_u64(b"-1"), None);
        // strtoull negates in unsigned arithmetic; memcached only refuses
        // results that look negative as signed numbers.
        assert_eq!(parse_u64(b"-18446744073709551615"), Some(1));
        assert_eq!(parse_u64(b"000000000000000000000000000001"), Some(1));
        assert_eq!(parse_u64(b"0x1"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"+"), None);
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        // strtol's whitespace rules: a trailing \r (from "\r\r\n") is fine.
        assert_eq!(parse_u64(b"1\r"), Some(1));
        assert_eq!(parse_u64(b"\t7"), Some(7));
        assert_eq!(parse_u64(b"7\tjunk"), Some(7));
        assert_eq!(parse_u64(b"\r"), None);
    }

    #[test]
    fn counters_follow_memcached() {}

    #[test]
    fn flags_truncate_like_memcached() {
        assert_eq!(parse_flags(b"4294967297"), Some(1));
        assert_eq!(parse_flags(b"4294967295"), Some(u32::MAX));
    }

    #[test]
    fn signed_rules() {
        assert_eq!(parse_i32_wrapping(b"-5"), Some(-5));
        assert_eq!(parse_i32_wrapping(b"4294967296"), Some(0));
        assert_eq!(parse_i32_wrapping(b"abc"), None);
        assert_eq!(parse_i32_wrapping(b"99999999999999999999"), None);
    }

    #[test]
    fn token_bounded_rules() {
        assert_eq!(parse_token_i32(b"0"), Some(0));
        assert_eq!(parse_token_i32(b"01"), Some(1));
        assert_eq!(parse_token_i32(b"-5"), Some(-5));
        assert_eq!(parse_token_i32(b"-"), Some(0), "a lone sign reads as 0");
        assert_eq!(parse_token_i32(b"+1"), None);
        assert_eq!(parse_token_i32(b"1\r"), None);
        assert_eq!(parse_token_i32(b"abc"), None);
        assert_eq!(parse_token_i32(b"2147483647"), Some(i32::MAX));
        assert_eq!(parse_token_i32(b"2147483648"), None, "no wrapping");
        assert_eq!(parse_token_i32(b"-2147483648"), Some(i32::MIN));
        assert_eq!(parse_token_i32(b"-2147483649"), None);
        assert_eq!(parse_token_i32(b"4294967297"), None);
        assert_eq!(parse_token_i32(b"00000000001"), Some(1));
        assert_eq!(parse_token_i32(b"000000000001"), None, "over 11 bytes");
        assert_eq!(parse_token_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_token_u32(b"4294967296"), None);
        assert_eq!(parse_token_u32(b"-0"), None);
        assert_eq!(parse_token_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_token_u64(b"18446744073709551616"), None);
        assert_eq!(parse_token_u64(b"+1"), None);
        assert_eq!(parse_token_u64(b"-0"), None);
        assert_eq!(parse_token_u64(&[b'0'; 22]), Some(0));
        assert_eq!(parse_token_u64(&[b'0'; 23]), None);
    }

    #[test]
    fn writes_decimal() {
        let mut b = bytes::BytesMut::new();
        write_u64(&mut b, 0);
        b.extend_from_slice(b" ");
        write_u64(&mut b, u64::MAX);
        b.extend_from_slice(b" ");
        write_i64(&mut b, -42);
        assert_eq!(&b[..], b"0 18446744073709551615 -42");
    }
}
