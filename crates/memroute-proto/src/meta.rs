//! Meta-command flags: parsed once, validated, kept in client order.
//!
//! Every meta command shares one flag grammar (a letter, optionally followed
//! by a token). The typed values the cache needs (`T`, `N`, `R`, `C`, `E`,
//! `F`, `M`, `D`, `J`) are validated here, at decode time, so the executor
//! never sees a malformed number. Flags that are echoed back (`O`, `k`, `b`)
//! stay in [`MetaFlags::iter`] in the order the client sent them, because
//! memcached answers in that order.

use bytes::Bytes;
use smallvec::SmallVec;

use crate::errors::ErrorReply;
use crate::number::{parse_flags, parse_i32_wrapping, parse_u64};

/// Longest opaque (`O`) token memcached accepts, including the `O`.
pub const MAX_OPAQUE_LENGTH: usize = 32;

/// One flag as sent: its letter and the token after the letter (possibly
/// empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaFlag<'a> {
    pub letter: u8,
    pub token: &'a [u8],
}

/// A flag's letter and where its token lies in the command line. Offsets
/// rather than `Bytes` keep requests small (they are moved on the hot path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlagSpan {
    letter: u8,
    start: u32,
    end: u32,
}

/// The flags of one meta command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaFlags {
    present: u64,
    line: Bytes,
    list: SmallVec<[FlagSpan; 8]>,
    /// `T`: new TTL.
    pub ttl: Option<i32>,
    /// `N`: vivify on miss with this TTL.
    pub vivify_ttl: Option<i32>,
    /// `R`: win a recache token if the remaining TTL is below this.
    pub recache_ttl: Option<i32>,
    /// `C`: compare CAS.
    pub compare_cas: Option<u64>,
    /// `E`: explicit new CAS value.
    pub new_cas: Option<u64>,
    /// `F`: client flags for `ms`.
    pub client_flags: Option<u32>,
    /// `M`: mode switch character for `ms`/`ma`.
    pub mode: Option<u8>,
    /// `D`: delta for `ma` (default 1).
    pub delta: Option<u64>,
    /// `J`: initial value for `ma` vivification (default 0).
    pub initial: Option<u64>,
}

/// Why a flag list was refused; [`MetaFlagError::reply`] is memcached's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaFlagError {
    Duplicate,
    Invalid,
    BadToken,
    BadModeLength,
    BadInitial,
    BadDelta,
    OpaqueTooLong,
    /// A malformed `F` token: memcached reports its generic message here.
    BadFormat,
}

impl MetaFlagError {
    /// The error line memcached's `mg` and `ms` send for this problem.
    pub fn reply(self) -> &'static str {
        self.error().text()
    }

    /// The error line as a table entry.
    pub fn error(self) -> ErrorReply {
        match self {
            MetaFlagError::Duplicate => ErrorReply::DuplicateFlag,
            MetaFlagError::Invalid => ErrorReply::InvalidFlag,
            MetaFlagError::BadToken => ErrorReply::BadToken,
            MetaFlagError::BadModeLength => ErrorReply::BadModeLength,
            MetaFlagError::BadInitial => ErrorReply::BadInitial,
            MetaFlagError::BadDelta => ErrorReply::BadDeltaValue,
            MetaFlagError::OpaqueTooLong => ErrorReply::OpaqueTooLong,
            MetaFlagError::BadFormat => ErrorReply::BadFormat,
        }
    }
}

fn bit(letter: u8) -> Option<u64> {
    match letter {
        b'A'..=b'Z' => Some(1 << (letter - b'A')),
        b'a'..=b'z' => Some(1 << (26 + letter - b'a')),
        _ => None,
    }
}

impl MetaFlags {
    /// Parses flag tokens, given as `(start, end)` offsets of whole
    /// space-separated tokens within `line`.
    pub fn parse<I>(line: &Bytes, tokens: I) -> Result<MetaFlags, MetaFlagError>
    where
        I: IntoIterator<Item = (usize, usize)>,
    {
        let mut flags = MetaFlags {
            line: line.clone(),
            ..MetaFlags::default()
        };
        // memcached reports the first problem, but scans every flag first for
        // duplicates and unknown letters (which end the scan at once).
        let mut first_error: Option<MetaFlagError> = None;
        for (start, end) in tokens {
            let token = &line[start..end];
            let letter = token[0];
            let Some(b) = bit(letter) else {
                return Err(MetaFlagError::Invalid);
            };
            if flags.present & b != 0 {
                return Err(MetaFlagError::Duplicate);
            }
            flags.present |= b;
            let value = &token[1..];
            let mut note = |e: MetaFlagError| {
                first_error.get_or_insert(e);
            };
            match letter {
                b'N' => match parse_i32_wrapping(value) {
                    Some(v) => flags.vivify_ttl = Some(v),
                    None => note(MetaFlagError::BadToken),
                },
                b'T' => match parse_i32_wrapping(value) {
                    Some(v) => flags.ttl = Some(v),
                    None => note(MetaFlagError::BadToken),
                },
                b'R' => match parse_i32_wrapping(value) {
                    Some(v) => flags.recache_ttl = Some(v),
                    None => note(MetaFlagError::BadToken),
                },
                b'C' => match parse_u64(value) {
                    Some(v) => flags.compare_cas = Some(v),
                    None => note(MetaFlagError::BadToken),
                },
                b'E' => match parse_u64(value) {
                    Some(v) => flags.new_cas = Some(v),
                    None => note(MetaFlagError::BadToken),
                },
                b'F' => match parse_flags(value) {
                    Some(v) => flags.client_flags = Some(v),
                    None => note(MetaFlagError::BadFormat),
                },
                b'M' => {
                    if value.len() == 1 {
                        flags.mode = Some(value[0]);
                    } else {
                        note(MetaFlagError::BadModeLength);
                    }
                }
                b'J' => match parse_u64(value) {
                    Some(v) => flags.initial = Some(v),
                    None => note(MetaFlagError::BadInitial),
                },
                b'D' => match parse_u64(value) {
                    Some(v) => flags.delta = Some(v),
                    None => note(MetaFlagError::BadDelta),
                },
                b'O' => {
                    if token.len() > MAX_OPAQUE_LENGTH {
                        note(MetaFlagError::OpaqueTooLong);
                    }
                }
                b'b' | b'c' | b'f' | b'h' | b'k' | b'l' | b'q' | b's' | b't' | b'u' | b'v'
                | b'x' | b'I' | b'P' | b'L' => {}
                _ => return Err(MetaFlagError::Invalid),
            }
            flags.list.push(FlagSpan {
                letter,
                start: start as u32 + 1,
                end: end as u32,
            });
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(flags),
        }
    }

    /// Whether the flag `letter` was given.
    pub fn has(&self, letter: u8) -> bool {
        bit(letter).is_some_and(|b| self.present & b != 0)
    }

    /// The token after `letter`, if the flag was given.
    pub fn token(&self, letter: u8) -> Option<&[u8]> {
        if !self.has(letter) {
            return None;
        }
        self.iter().find(|f| f.letter == letter).map(|f| f.token)
    }

    /// The flags in the order the client sent them.
    pub fn iter(&self) -> impl Iterator<Item = MetaFlag<'_>> {
        self.list.iter().map(|span| MetaFlag {
            letter: span.letter,
            token: &self.line[span.start as usize..span.end as usize],
        })
    }

    /// `q`: hide nominal replies (EN for mg, HD/NF for others).
    pub fn quiet(&self) -> bool {
        self.has(b'q')
    }

    /// `b`: the key is base64.
    pub fn base64_key(&self) -> bool {
        self.has(b'b')
    }

    /// `v`: return the value.
    pub fn return_value(&self) -> bool {
        self.has(b'v')
    }

    /// The opaque token (`O...`), echoed back verbatim.
    pub fn opaque(&self) -> Option<&[u8]> {
        self.token(b'O')
    }

    /// Number of flags given.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether no flag was given.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Decodes standard base64 (with padding), as memcached's `b` flag expects.
/// Returns `None` on malformed input.
pub fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if input.is_empty() || !input.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let chunks = input.len() / 4;
    for (i, chunk) in input.chunks_exact(4).enumerate() {
        let last = i + 1 == chunks;
        let pad = if last {
            chunk.iter().rev().take_while(|&&c| c == b'=').count()
        } else {
            0
        };
        if pad > 2 {
            return None;
        }
        let mut n: u32 = 0;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Encodes `input` as standard base64 with padding, appending to `out`.
pub fn base64_encode(input: &[u8], out: &mut bytes::BytesMut) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in input.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let emit = chunk.len() + 1;
        for i in 0..4 {
            if i < emit {
                out.extend_from_slice(&[ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]]);
            } else {
                out.extend_from_slice(b"=");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(s: &'static str) -> Result<MetaFlags, MetaFlagError> {
        let line = Bytes::from_static(s.as_bytes());
        let mut spans = Vec::new();
        let mut pos = 0;
        for t in s.split(' ') {
            if !t.is_empty() {
                spans.push((pos, pos + t.len()));
            }
            pos += t.len() + 1;
        }
        MetaFlags::parse(&line, spans)
    }

    #[test]
    fn typed_values_and_order() {
        let f = flags("v T30 O123 k C99 q").unwrap();
        assert_eq!(f.ttl, Some(30));
        assert_eq!(f.compare_cas, Some(99));
        assert!(f.quiet() && f.return_value() && f.has(b'k'));
        let order: Vec<u8> = f.iter().map(|f| f.letter).collect();
        assert_eq!(order, b"vTOkCq");
        assert_eq!(f.opaque().unwrap(), b"123");
    }

    #[test]
    fn errors_match_memcached() {
        assert_eq!(flags("v v"), Err(MetaFlagError::Duplicate));
        assert_eq!(flags("zz"), Err(MetaFlagError::Invalid));
        assert_eq!(flags("T"), Err(MetaFlagError::BadToken));
        assert_eq!(flags("Tabc"), Err(MetaFlagError::BadToken));
        assert_eq!(flags("MAB"), Err(MetaFlagError::BadModeLength));
        assert_eq!(flags("Dx"), Err(MetaFlagError::BadDelta));
        assert_eq!(flags("Jx"), Err(MetaFlagError::BadInitial));
        assert_eq!(
            flags("O123456789012345678901234567890123"),
            Err(MetaFlagError::OpaqueTooLong)
        );
        // An unknown flag stops the scan even after a bad token.
        assert_eq!(flags("Tabc zz"), Err(MetaFlagError::Invalid));
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64_decode(b"YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        assert!(base64_decode(b"Y").is_none());
        assert!(base64_decode(b"Y!==").is_none());
        for len in 0..20 {
            let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let mut enc = bytes::BytesMut::new();
            base64_encode(&data, &mut enc);
            if len > 0 {
                assert_eq!(base64_decode(&enc).unwrap(), data);
            }
        }
    }
}
