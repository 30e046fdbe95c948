//! Key filters: which part of a key is hashed.
//!
//! This module owns [`KeyFilter`].  Filters let related keys land on the same
//! backend by hashing only part of them:
//!
//! * `Stop` hashes the bytes before the first occurrence of a stop string,
//!   like mcrouter's `|#|` convention (`user:1|#|profile` and
//!   `user:1|#|avatar` hash as `user:1`);
//! * `Tag` hashes the bytes between two tag characters, with twemproxy's
//!   `hash_tag` rules: the first `open` byte, then the first `close` byte
//!   after it, and only if something lies between them (`{}` or a missing
//!   close byte hashes the whole key).

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Selects the part of a key that is hashed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum KeyFilter {
    /// Hash the whole key.
    #[default]
    None,
    /// Hash the part before the first occurrence of this (non-empty) string.
    Stop(Vec<u8>),
    /// Hash the part between the first `open` byte and the next `close` byte.
    Tag {
        /// Opening tag byte, e.g. `{`.
        open: u8,
        /// Closing tag byte, e.g. `}`.
        close: u8,
    },
}

impl KeyFilter {
    /// A stop-string filter; an empty stop string means no filter.
    pub fn stop(s: impl AsRef<[u8]>) -> Self {
        let s = s.as_ref();
        if s.is_empty() {
            KeyFilter::None
        } else {
            KeyFilter::Stop(s.to_vec())
        }
    }

    /// A tag filter, e.g. `KeyFilter::tag(b'{', b'}')`.
    pub fn tag(open: u8, close: u8) -> Self {
        KeyFilter::Tag { open, close }
    }

    /// Returns the part of `key` to hash (a sub-slice, never a copy).
    #[inline]
    pub fn apply<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        match self {
            KeyFilter::None => key,
            KeyFilter::Stop(stop) => match memchr::memmem::find(key, stop) {
                Some(pos) => &key[..pos],
                None => key,
            },
            KeyFilter::Tag { open, close } => {
                let Some(start) = memchr::memchr(*open, key) else {
                    return key;
                };
                match memchr::memchr(*close, &key[start + 1..]) {
                    Some(len) if len > 0 => &key[start + 1..start + 1 + len],
                    _ => key,
                }
            }
        }
    }
}

impl fmt::Display for KeyFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFilter::None => f.write_str("none"),
            KeyFilter::Stop(s) => write!(f, "stop:{}", String::from_utf8_lossy(s)),
            KeyFilter::Tag { open, close } => {
                write!(f, "tag:{}{}", char::from(*open), char::from(*close))
            }
        }
    }
}

impl FromStr for KeyFilter {
    type Err = Error;

    /// Accepts `none` (or the empty string), `stop:STRING` (e.g. `stop:|#|`)
    /// and `tag:OC` with two ASCII characters (e.g. `tag:{}`).
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadFilter(s.to_string());
        if s.is_empty() || s == "none" {
            return Ok(KeyFilter::None);
        }
        if let Some(stop) = s.strip_prefix("stop:") {
            if stop.is_empty() {
                return Err(bad());
            }
            return Ok(KeyFilter::stop(stop));
        }
        if let Some(tag) = s.strip_prefix("tag:") {
            return match tag.as_bytes() {
                [o, c] if o.is_ascii() && c.is_ascii() => Ok(KeyFilter::tag(*o, *c)),
                _ => Err(bad()),
            };
        }
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string() {
        let f = KeyFilter::stop("|#|");
        assert_eq!(f.apply(b"user:1|#|profile"), b"user:1");
        assert_eq!(f.apply(b"user:1|#|a|#|b"), b"user:1");
        assert_eq!(f.apply(b"plain"), b"plain");
        assert_eq!(f.apply(b"|#|x"), b"");
        assert_eq!(KeyFilter::stop(""), KeyFilter::None);
    }

    #[test]
    fn twemproxy_hash_tag_rules() {
        let f = KeyFilter::tag(b'{', b'}');
        assert_eq!(f.apply(b"user:{1234}:profile"), b"1234");
        assert_eq!(f.apply(b"{a}{b}"), b"a");
        assert_eq!(f.apply(b"x{y}z"), b"y");
        // Empty tag and unterminated tag hash the whole key.
        assert_eq!(f.apply(b"{}empty"), b"{}empty");
        assert_eq!(f.apply(b"open{only"), b"open{only");
        assert_eq!(f.apply(b"no tag"), b"no tag");
        // Close byte before the open byte is ignored.
        assert_eq!(f.apply(b"}a{b}"), b"b");
    }

    #[test]
    fn parse_and_display() {
        for s in ["none", "stop:|#|", "tag:{}"] {
            assert_eq!(s.parse::<KeyFilter>().unwrap().to_string(), s);
        }
        assert!("tag:{".parse::<KeyFilter>().is_err());
        assert!("stop:".parse::<KeyFilter>().is_err());
        assert!("other".parse::<KeyFilter>().is_err());
    }
}
