//! Key hash functions.
//!
//! This module owns [`KeyHash`], the closed set of hash functions a pool can
//! run over a (filtered) key, and their byte-exact implementations.  Every
//! function except XXH3 reproduces the 32-bit value that libmemcached's
//! libhashkit and twemproxy's hashkit compute, *including their quirks*:
//!
//! * both libraries read keys through `const char *`, and `char` is signed on
//!   the x86 and ARM Linux builds operators run, so several functions
//!   (fnv1*, one_at_a_time, the hsieh tail) sign-extend bytes `>= 0x80`.  We
//!   do the same, otherwise non-ASCII keys would land on other servers;
//! * `crc32` is libmemcached's 15-bit variant `(crc32(key) >> 16) & 0x7fff`,
//!   not the standard CRC-32; the standard one is `crc32a` (twemproxy's name,
//!   and what PHP's `crc32()` returns);
//! * the `*_64` FNV variants are truncated to 32 bits, as both libraries do;
//! * `md5` is the first four digest bytes read little-endian (ketama's
//!   `hashi`), which is what libmemcached, twemproxy and memcached's proxy
//!   ring all use as the key hash.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

use crate::Error;

/// A key hash function, selected by name in pool configuration.
///
/// [`KeyHash::hash`] always returns a `u64`; 32-bit algorithms return their
/// value zero-extended (see [`KeyHash::bits`]).  Ring distributions use the
/// low 32 bits, exactly like the C implementations that store the hash in a
/// `uint32_t`.
// The FNV variant names follow the algorithms' own spelling (fnv1a_32).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyHash {
    /// XXH3-64 with a seed (memcached proxy's default hash with seed 0).
    Xxh3 {
        /// Seed passed to `XXH3_64bits_withSeed`.
        seed: u64,
    },
    /// MD5, first four digest bytes little-endian (libmemcached `md5`).
    Md5,
    /// libmemcached/twemproxy `crc32`: `(crc32(key) >> 16) & 0x7fff`.
    Crc32,
    /// Standard CRC-32 (IEEE), twemproxy's `crc32a`, PHP's `crc32()`.
    Crc32a,
    /// twemproxy's `crc16` (CRC-16/XMODEM in an unmasked 32-bit accumulator).
    Crc16,
    /// FNV-1 32-bit.
    Fnv1_32,
    /// FNV-1a 32-bit.
    Fnv1a_32,
    /// FNV-1 64-bit, truncated to 32 bits.
    Fnv1_64,
    /// FNV-1a 64-bit, truncated to 32 bits (twemproxy's default).
    Fnv1a_64,
    /// Bob Jenkins' one-at-a-time (libmemcached's `HASH_DEFAULT`).
    OneAtATime,
    /// MurmurHash2 with seed `0xdeadbeef * len` (libhashkit/twemproxy `murmur`).
    Murmur,
    /// Bob Jenkins' lookup3 `hashlittle` with initval 13.
    Jenkins,
    /// Paul Hsieh's SuperFastHash.
    Hsieh,
    /// MurmurHash64A with furc's seed (4193360111): the key hash of
    /// mcrouter's Ch3 distribution, 64 bits.
    Murmur64a,
}

impl Default for KeyHash {
    fn default() -> Self {
        KeyHash::Xxh3 { seed: 0 }
    }
}

/// Every hash, with its canonical name (the one [`KeyHash::name`] returns).
const TABLE: &[(&str, KeyHash)] = &[
    ("xxh3", KeyHash::Xxh3 { seed: 0 }),
    ("md5", KeyHash::Md5),
    ("crc32", KeyHash::Crc32),
    ("crc32a", KeyHash::Crc32a),
    ("crc16", KeyHash::Crc16),
    ("fnv1_32", KeyHash::Fnv1_32),
    ("fnv1a_32", KeyHash::Fnv1a_32),
    ("fnv1_64", KeyHash::Fnv1_64),
    ("fnv1a_64", KeyHash::Fnv1a_64),
    ("one_at_a_time", KeyHash::OneAtATime),
    ("murmur", KeyHash::Murmur),
    ("jenkins", KeyHash::Jenkins),
    ("hsieh", KeyHash::Hsieh),
    ("murmur64a", KeyHash::Murmur64a),
];

/// Extra spellings operators bring from other tools.
const ALIASES: &[(&str, &str)] = &[
    ("xxhash", "xxh3"),
    ("xxh3_64", "xxh3"),
    ("xxh64", "xxh3"),
    ("crc", "crc32"),
    ("oaat", "one_at_a_time"),
    ("murmur2", "murmur"),
    ("hashkit_default", "one_at_a_time"),
];

impl KeyHash {
    /// Canonical names accepted by [`FromStr`] (aliases: `xxhash`, `xxh3_64`,
    /// `xxh64`, `crc`, `oaat`, `murmur2`, `hashkit_default`; XXH3 takes an
    /// optional seed as `xxh3:SEED`, decimal or `0x` hex).
    pub const NAMES: &'static [&'static str] = &[
        "xxh3",
        "md5",
        "crc32",
        "crc32a",
        "crc16",
        "fnv1_32",
        "fnv1a_32",
        "fnv1_64",
        "fnv1a_64",
        "one_at_a_time",
        "murmur",
        "jenkins",
        "hsieh",
        "murmur64a",
    ];

    /// Every variant (XXH3 with seed 0), for tests and benchmarks.
    pub fn all() -> impl Iterator<Item = KeyHash> {
        TABLE.iter().map(|&(_, h)| h)
    }

    /// Canonical name (without the XXH3 seed; see `Display` for that).
    pub fn name(&self) -> &'static str {
        match self {
            KeyHash::Xxh3 { .. } => "xxh3",
            other => TABLE
                .iter()
                .find(|(_, h)| h == other)
                .map(|(n, _)| *n)
                .unwrap_or("?"),
        }
    }

    /// Number of significant output bits (64 for XXH3, 15 for `crc32`, ...).
    pub fn bits(&self) -> u32 {
        match self {
            KeyHash::Xxh3 { .. } | KeyHash::Murmur64a => 64,
            KeyHash::Crc32 => 15,
            _ => 32,
        }
    }

    /// Hashes `key` (already filtered; see [`crate::KeyFilter`]).
    #[inline]
    pub fn hash(&self, key: &[u8]) -> u64 {
        match *self {
            KeyHash::Xxh3 { seed } => xxhash_rust::xxh3::xxh3_64_with_seed(key, seed),
            KeyHash::Md5 => u64::from(md5_u32(key)),
            KeyHash::Crc32 => u64::from((crc32fast::hash(key) >> 16) & 0x7fff),
            KeyHash::Crc32a => u64::from(crc32fast::hash(key)),
            KeyHash::Crc16 => u64::from(crc16(key)),
            KeyHash::Fnv1_32 => u64::from(fnv1_32(key)),
            KeyHash::Fnv1a_32 => u64::from(fnv1a_32(key)),
            KeyHash::Fnv1_64 => u64::from(fnv1_64(key) as u32),
            KeyHash::Fnv1a_64 => u64::from(fnv1a_64(key) as u32),
            KeyHash::OneAtATime => u64::from(one_at_a_time(key)),
            KeyHash::Murmur => u64::from(murmur2(key)),
            KeyHash::Jenkins => u64::from(jenkins(key)),
            KeyHash::Hsieh => u64::from(hsieh(key)),
            KeyHash::Murmur64a => crate::dist::murmur_hash_64a(key, crate::dist::FURC_SEED),
        }
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyHash::Xxh3 { seed: 0 } => f.write_str("xxh3"),
            KeyHash::Xxh3 { seed } => write!(f, "xxh3:{seed}"),
            other => f.write_str(other.name()),
        }
    }
}

impl FromStr for KeyHash {
    type Err = Error;

    /// Parses a hash name, case-insensitively, `-` and `_` alike.
    fn from_str(s: &str) -> Result<Self, Error> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let (base, seed) = match norm.split_once(':') {
            Some((b, seed)) => (b, Some(seed)),
            None => (norm.as_str(), None),
        };
        let base = ALIASES
            .iter()
            .find(|(a, _)| *a == base)
            .map(|(_, c)| *c)
            .unwrap_or(base);
        let found = TABLE.iter().find(|(n, _)| *n == base).map(|&(_, h)| h);
        match (found, seed) {
            (Some(KeyHash::Xxh3 { .. }), Some(seed)) => {
                let seed = parse_u64(seed).ok_or_else(|| Error::UnknownHash(s.to_string()))?;
                Ok(KeyHash::Xxh3 { seed })
            }
            (Some(h), None) => Ok(h),
            _ => Err(Error::UnknownHash(s.to_string())),
        }
    }
}

/// Parses decimal or `0x`-prefixed hex.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A byte as C's signed `char` converted to `uint32_t` (sign-extending).
#[inline(always)]
fn schar(b: u8) -> u32 {
    b as i8 as i32 as u32
}

/// MD5 digest of `data`.
pub(crate) fn md5_digest(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

/// Ketama's `hashi`: digest bytes 0..4 as a little-endian `u32`.
#[inline]
fn md5_u32(key: &[u8]) -> u32 {
    let d = md5_digest(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

const FNV32_INIT: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;
const FNV64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1_32(key: &[u8]) -> u32 {
    key.iter()
        .fold(FNV32_INIT, |h, &b| h.wrapping_mul(FNV32_PRIME) ^ schar(b))
}

fn fnv1a_32(key: &[u8]) -> u32 {
    key.iter()
        .fold(FNV32_INIT, |h, &b| (h ^ schar(b)).wrapping_mul(FNV32_PRIME))
}

fn fnv1_64(key: &[u8]) -> u64 {
    key.iter().fold(FNV64_INIT, |h, &b| {
        h.wrapping_mul(FNV64_PRIME) ^ (b as i8 as i64 as u64)
    })
}

fn fnv1a_64(key: &[u8]) -> u64 {
    key.iter().fold(FNV64_INIT, |h, &b| {
        (h ^ (b as i8 as i64 as u64)).wrapping_mul(FNV64_PRIME)
    })
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &b in key {
        h = h.wrapping_add(schar(b));
        h = h.wrapping_add(h << 10);
        h ^= h >> 6;
    }
    h = h.wrapping_add(h << 3);
    h ^= h >> 11;
    h.wrapping_add(h << 15)
}

/// MurmurHash2 (32-bit) as libhashkit/twemproxy seed it: `0xdeadbeef * len`.
fn murmur2(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let mut h = 0xdead_beef_u32.wrapping_mul(len) ^ len;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        // The C switch falls through from the highest tail byte down.
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Bob Jenkins' lookup3 `hashlittle()` with initval 13 (libhashkit/twemproxy
/// `jenkins`).  The C code has aligned fast paths; on little-endian machines
/// they read the same bytes as this portable path.
fn jenkins(key: &[u8]) -> u32 {
    let init = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(13);
    let (mut a, mut b, mut c) = (init, init, init);
    let word = |bytes: &[u8]| -> u32 {
        let mut w = [0u8; 4];
        w[..bytes.len()].copy_from_slice(bytes);
        u32::from_le_bytes(w)
    };
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        jenkins_mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        // Zero-length tail: lookup3 returns without the final mix.
        return c;
    }
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]));
    }
    jenkins_final(&mut a, &mut b, &mut c);
    c
}

#[inline(always)]
fn jenkins_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn jenkins_final(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Paul Hsieh's SuperFastHash as twemproxy ships it (returns 0 for "").
fn hsieh(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let get16 = |s: &[u8]| u32::from(s[0]) | (u32::from(s[1]) << 8);
    let mut h: u32 = 0;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        h = h.wrapping_add(get16(&c[0..2]));
        let tmp = (get16(&c[2..4]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    let tail = chunks.remainder();
    match tail.len() {
        3 => {
            h = h.wrapping_add(get16(tail));
            h ^= h << 16;
            // The third tail byte goes through signed `char`.
            h ^= schar(tail[2]) << 18;
            h = h.wrapping_add(h >> 11);
        }
        2 => {
            h = h.wrapping_add(get16(tail));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        1 => {
            h = h.wrapping_add(u32::from(tail[0]));
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

/// CRC-16/XMODEM table (polynomial 0x1021, not reflected), built at compile
/// time.
const CRC16_TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
};

/// twemproxy's `crc16`: CRC-16/XMODEM, but accumulated in a `uint32_t` that
/// is never masked, so bits shifted past 16 stay in the result (the low 16
/// bits are the XMODEM CRC).  Matches nutcracker 0.5 (checked by the golden
/// vectors).
fn crc16(key: &[u8]) -> u32 {
    key.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ u32::from(CRC16_TABLE[((crc >> 8) as u8 ^ b) as usize])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in KeyHash::all() {
            assert_eq!(h.to_string().parse::<KeyHash>().unwrap(), h);
            assert!(KeyHash::NAMES.contains(&h.name()));
        }
        assert_eq!(
            "xxh3:0x10".parse::<KeyHash>().unwrap(),
            KeyHash::Xxh3 { seed: 16 }
        );
        assert_eq!(
            "XXHASH".parse::<KeyHash>().unwrap(),
            KeyHash::Xxh3 { seed: 0 }
        );
        assert_eq!("FNV1A-64".parse::<KeyHash>().unwrap(), KeyHash::Fnv1a_64);
        assert!("sha1".parse::<KeyHash>().is_err());
        assert!("md5:3".parse::<KeyHash>().is_err());
        assert_eq!(KeyHash::Xxh3 { seed: 7 }.to_string(), "xxh3:7");
    }

    #[test]
    fn published_vectors() {
        // Standard check values of the underlying algorithms.
        assert_eq!(KeyHash::Crc32a.hash(b"123456789"), 0xCBF4_3926);
        // CRC-16/XMODEM check value in the low 16 bits.
        assert_eq!(KeyHash::Crc16.hash(b"123456789") & 0xffff, 0x31C3);
        assert_eq!(KeyHash::Crc16.hash(b"a"), 0x7C87);
        assert_eq!(KeyHash::Fnv1a_32.hash(b"a"), 0xe40c_292c);
        assert_eq!(KeyHash::Fnv1_32.hash(b"a"), 0x050c_5d7e);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1_64(b"a"), 0xaf63_bd4c_8601_b7be);
        assert_eq!(KeyHash::Md5.hash(b""), 0xd98c_1dd4);
        assert_eq!(KeyHash::Xxh3 { seed: 0 }.hash(b""), 0x2D06_8005_38D3_94C2);
        // lookup3: hashlittle("", 0) with initval 13 is the bare initial c.
        assert_eq!(KeyHash::Jenkins.hash(b""), 0xdeadbeef + 13);
        assert_eq!(KeyHash::Hsieh.hash(b""), 0);
    }

    #[test]
    fn crc32_is_libmemcached_15_bit() {
        let full = crc32fast::hash(b"hello");
        assert_eq!(
            KeyHash::Crc32.hash(b"hello"),
            u64::from((full >> 16) & 0x7fff)
        );
        for k in [&b"x"[..], b"key:1", b"\xff\xfe"] {
            assert!(KeyHash::Crc32.hash(k) < 0x8000);
        }
    }

    #[test]
    fn high_bytes_are_sign_extended() {
        // With unsigned bytes FNV-1a of 0xff would be (init ^ 0xff) * prime.
        let unsigned = (FNV32_INIT ^ 0xff).wrapping_mul(FNV32_PRIME);
        let signed = (FNV32_INIT ^ 0xffff_ffff).wrapping_mul(FNV32_PRIME);
        assert_eq!(KeyHash::Fnv1a_32.hash(b"\xff"), u64::from(signed));
        assert_ne!(signed, unsigned);
    }
}
