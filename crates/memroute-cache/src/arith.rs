//! Counter rules for `incr` / `decr` / meta `ma`: memcached parses the
//! stored value with `safe_strtoull` and writes the result back in place,
//! space-padded, when it is not longer. The rules live in
//! `memroute_proto::number`, shared with every other store; the tests here
//! pin what the cache relies on.

pub(crate) use memroute_proto::number::{apply_delta, parse_u64 as parse_counter, render_counter};

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
