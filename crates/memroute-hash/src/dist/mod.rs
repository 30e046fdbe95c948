//! Distributions: from a key hash to a backend index.
//!
//! This module owns the configuration types ([`DistributionKind`],
//! [`RingMode`], [`DistributionConfig`]) and the built, immutable
//! [`Distribution`].  Each algorithm lives in its own submodule and is a plain
//! data structure built once per backend list:
//!
//! | kind | submodule | lookup | fallback order ([`Distribution::candidates`]) |
//! | --- | --- | --- | --- |
//! | jump | `jump` | O(log n), no table | jump over the remaining backends with a re-mixed hash |
//! | ring (ketama & co) | `ring` | binary search over points | next distinct owners clockwise |
//! | maglev | `maglev` | one table read | next distinct owners in the table |
//! | modula | `modula` | one division | `hash % remaining weight` over the remaining backends |
//! | rendezvous | `rendezvous` | n score computations | backends by descending score |
//! | ch3, crc32 (mcrouter) | `furc` | a few rehashes / one division | the pick, then index order |
//!
//! Lookups never allocate; [`Distribution::candidates`] only writes into the
//! caller's vector (which keeps its capacity between calls).

mod furc;
mod jump;
mod maglev;
mod modula;
mod rendezvous;
mod ring;

use std::fmt;
use std::str::FromStr;

use crate::{Backend, Error, KeyFilter, KeyHash};

pub use furc::{furc_hash, murmur_hash_64a, spooky_v2_hash32, FURC_MAX_POOL, FURC_SEED};
pub use maglev::DEFAULT_TABLE_SIZE;
pub use ring::{HostPort, DEFAULT_POINTS};

/// How a ring (continuum) is built; each mode reproduces one implementation.
///
/// The identity string hashed for a backend is derived from
/// [`Backend::name`] as documented on [`HostPort`]: `host` when the port is
/// 11211 or absent, else `host:port`, for the libmemcached/twemproxy forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingMode {
    /// libmemcached `MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED` (PHP
    /// `OPT_LIBKETAMA_COMPATIBLE`): md5 of `"<id>-<i>"` gives 4 points, 160
    /// points per server scaled by weight, key hash md5.
    Libmemcached,
    /// twemproxy `distribution: ketama`: the same continuum as libmemcached
    /// (server name or `host[:port]`), key hash from the pool (default
    /// `fnv1a_64`).
    Twemproxy,
    /// memcached proxy `mcp.dist_ring_hash` omode `"default"`: one XXH3 point
    /// per bucket from `"<addr>:<port>-<k>"`, low 32 bits.  Upstream (1.6.x)
    /// never advances its continuum cursor in this mode, so its ring is
    /// degenerate; this builds the evident intent and cannot match it.
    McproxyDefault,
    /// memcached proxy omode `"ketama"`: md5 of `"<addr>:<port>-<k>"`.
    McproxyKetama,
    /// memcached proxy omode `"twemproxy"`: md5 of `"<addr>-<k>"` when the port
    /// is 11211, else `"<addr>:<port>-<k>"`.
    McproxyTwemproxy,
    /// memcached proxy omode `"evcache"`: md5 of `"<addr>/<addr>:<port>-<k>"`.
    McproxyEvcache,
}

impl RingMode {
    /// The key hash this implementation uses unless configured otherwise.
    pub fn default_hash(self) -> KeyHash {
        match self {
            RingMode::Twemproxy => KeyHash::Fnv1a_64,
            // mcp.dist_ring_hash exports its own md5 key hasher, which the
            // proxy's pool uses when no `hash` option is given.
            _ => KeyHash::Md5,
        }
    }

    fn omode(self) -> Option<&'static str> {
        match self {
            RingMode::McproxyDefault => Some("default"),
            RingMode::McproxyKetama => Some("ketama"),
            RingMode::McproxyTwemproxy => Some("twemproxy"),
            RingMode::McproxyEvcache => Some("evcache"),
            _ => None,
        }
    }
}

/// Which distribution a pool uses (see [`DistributionKind::NAMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DistributionKind {
    /// Jump consistent hash (Lamping & Veach), memcached proxy's default.
    #[default]
    Jump,
    /// A hash ring.
    Ring {
        /// Which implementation to reproduce.
        mode: RingMode,
        /// Points per server before weighting (libmemcached/twemproxy use 160;
        /// memcached proxy calls it `obuckets`, default 160).
        points: u32,
    },
    /// Maglev hashing with a prime lookup table size.
    Maglev {
        /// Prime table size, larger than the number of backends (default 65537).
        table_size: u32,
    },
    /// `hash % n` (weights repeat a backend, like twemproxy).
    Modula,
    /// Rendezvous / highest random weight hashing.
    Rendezvous,
    /// mcrouter's `Ch3` (furc hash), the default of its pools.
    Ch3,
    /// mcrouter's `Crc32`: `(crc32 & 0x7fffffff) % n`.
    Crc32,
    /// mcrouter's `WeightedCh3`. A backend's weight field is its
    /// threshold, `weight * (2^32 - 1)` truncated, for a weight in 0..=1
    /// (so 4294967295 is a full weight); all zero is allowed, as in
    /// mcrouter (the last of 32 tries stands).
    WeightedCh3,
}

impl DistributionKind {
    /// Names accepted by [`FromStr`] (a `:suffix` selects a ring omode or a
    /// Maglev table size, e.g. `ring_hash:evcache`, `maglev:251`).
    pub const NAMES: &'static [&'static str] = &[
        "jump",
        "ketama",
        "twemproxy",
        "ring_hash",
        "ring_hash:default",
        "ring_hash:ketama",
        "ring_hash:twemproxy",
        "ring_hash:evcache",
        "maglev",
        "maglev:<prime>",
        "modula",
        "rendezvous",
        "ch3",
        "mcrouter_crc32",
        "weighted_ch3",
    ];

    /// A ring of the given mode with 160 points per server.
    pub fn ring(mode: RingMode) -> Self {
        DistributionKind::Ring {
            mode,
            points: DEFAULT_POINTS,
        }
    }

    /// Maglev with the default table size (65537).
    pub fn maglev() -> Self {
        DistributionKind::Maglev {
            table_size: DEFAULT_TABLE_SIZE,
        }
    }

    /// The key hash used when the configuration names none.
    pub fn default_hash(&self) -> KeyHash {
        match self {
            DistributionKind::Ring { mode, .. } => mode.default_hash(),
            DistributionKind::Ch3 | DistributionKind::WeightedCh3 => KeyHash::Murmur64a,
            DistributionKind::Crc32 => KeyHash::Crc32a,
            _ => KeyHash::default(),
        }
    }

    /// True for the distributions that move about 1/n of the keys when a
    /// backend is added or removed (all but modula).
    pub fn is_consistent(&self) -> bool {
        !matches!(self, DistributionKind::Modula | DistributionKind::Crc32)
    }
}

impl fmt::Display for DistributionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DistributionKind::Jump => f.write_str("jump"),
            DistributionKind::Ring { mode, points } => {
                match mode.omode() {
                    Some(o) => write!(f, "ring_hash:{o}")?,
                    None if *mode == RingMode::Libmemcached => f.write_str("ketama")?,
                    None => f.write_str("twemproxy")?,
                }
                if *points != DEFAULT_POINTS {
                    write!(f, "/{points}")?;
                }
                Ok(())
            }
            DistributionKind::Maglev { table_size } if *table_size == DEFAULT_TABLE_SIZE => {
                f.write_str("maglev")
            }
            DistributionKind::Maglev { table_size } => write!(f, "maglev:{table_size}"),
            DistributionKind::Modula => f.write_str("modula"),
            DistributionKind::Rendezvous => f.write_str("rendezvous"),
            DistributionKind::Ch3 => f.write_str("ch3"),
            DistributionKind::Crc32 => f.write_str("mcrouter_crc32"),
            DistributionKind::WeightedCh3 => f.write_str("weighted_ch3"),
        }
    }
}

impl FromStr for DistributionKind {
    type Err = Error;

    /// Parses a distribution name, case-insensitively.  Rings accept a
    /// trailing `/POINTS` (e.g. `ring_hash:ketama/100`).  Aliases: `jump_hash`,
    /// `libmemcached`, `ketama_libmemcached`, `ketama_twemproxy`, `ring`,
    /// `modulo`, `hrw`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let unknown = || Error::UnknownDistribution(s.to_string());
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let (body, points) = match norm.split_once('/') {
            Some((b, p)) => (b, Some(p.parse::<u32>().map_err(|_| unknown())?)),
            None => (norm.as_str(), None),
        };
        let (name, arg) = match body.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (body, None),
        };
        let ring = |mode| DistributionKind::Ring {
            mode,
            points: points.unwrap_or(DEFAULT_POINTS),
        };
        let kind = match (name, arg) {
            ("jump" | "jump_hash", None) => DistributionKind::Jump,
            ("ketama" | "libmemcached" | "ketama_libmemcached", None) => {
                ring(RingMode::Libmemcached)
            }
            ("twemproxy" | "ketama_twemproxy", None) => ring(RingMode::Twemproxy),
            ("ring_hash" | "ring", None | Some("default")) => ring(RingMode::McproxyDefault),
            ("ring_hash" | "ring", Some("ketama")) => ring(RingMode::McproxyKetama),
            ("ring_hash" | "ring", Some("twemproxy")) => ring(RingMode::McproxyTwemproxy),
            ("ring_hash" | "ring", Some("evcache")) => ring(RingMode::McproxyEvcache),
            ("maglev", None) => DistributionKind::maglev(),
            ("maglev", Some(size)) => DistributionKind::Maglev {
                table_size: size.parse().map_err(|_| unknown())?,
            },
            ("modula" | "modulo", None) => DistributionKind::Modula,
            ("rendezvous" | "hrw", None) => DistributionKind::Rendezvous,
            ("ch3" | "furc", None) => DistributionKind::Ch3,
            ("mcrouter_crc32", None) => DistributionKind::Crc32,
            ("weighted_ch3", None) => DistributionKind::WeightedCh3,
            _ => return Err(unknown()),
        };
        if points.is_some() && !matches!(kind, DistributionKind::Ring { .. }) {
            return Err(unknown());
        }
        Ok(kind)
    }
}

/// Everything needed to build a [`Distribution`] except the backend list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DistributionConfig {
    /// The algorithm.
    pub kind: DistributionKind,
    /// Key hash; `None` uses [`DistributionKind::default_hash`].
    pub hash: Option<KeyHash>,
    /// Which part of the key is hashed.
    pub filter: KeyFilter,
}

impl DistributionConfig {
    /// A configuration with the kind's default hash and no key filter.
    pub fn new(kind: DistributionKind) -> Self {
        DistributionConfig {
            kind,
            hash: None,
            filter: KeyFilter::None,
        }
    }

    /// Sets the key hash.
    pub fn with_hash(mut self, hash: KeyHash) -> Self {
        self.hash = Some(hash);
        self
    }

    /// Sets the key filter.
    pub fn with_filter(mut self, filter: KeyFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Builds the distribution over `backends` (their order is the index
    /// space of [`Distribution::pick`]).
    pub fn build(&self, backends: &[Backend]) -> Result<Distribution, Error> {
        Distribution::new(self, backends)
    }
}

/// The algorithm-specific lookup structure.
#[derive(Debug, Clone)]
enum Imp {
    Jump(jump::Jump),
    Ring(ring::Ring),
    Maglev(maglev::Maglev),
    Modula(modula::Modula),
    Rendezvous(rendezvous::Rendezvous),
    Ch3(furc::Ch3),
    Crc32(furc::Crc32Mod),
    WeightedCh3(furc::WeightedCh3),
}

/// A built distribution: immutable, `Send + Sync`, cheap to query.
///
/// [`pick`](Self::pick) applies the key filter and key hash, then maps the
/// hash to an index into the backend slice the distribution was built from.
/// Callers that already hashed the key (e.g. to try several pools) can use
/// [`key_hash`](Self::key_hash) once and [`pick_hash`](Self::pick_hash).
#[derive(Debug, Clone)]
pub struct Distribution {
    kind: DistributionKind,
    hash: KeyHash,
    filter: KeyFilter,
    weights: Vec<u32>,
    imp: Imp,
}

impl Distribution {
    /// Builds a distribution; see [`DistributionConfig::build`].
    pub fn new(config: &DistributionConfig, backends: &[Backend]) -> Result<Self, Error> {
        if backends.is_empty() {
            return Err(Error::NoBackends);
        }
        if backends.len() > u32::MAX as usize / 2 {
            return Err(Error::TooManyBackends(backends.len()));
        }
        let furc = matches!(
            config.kind,
            DistributionKind::Ch3 | DistributionKind::WeightedCh3
        );
        if furc && backends.len() > FURC_MAX_POOL as usize {
            return Err(Error::TooManyBackends(backends.len()));
        }
        let weighted_ch3 = config.kind == DistributionKind::WeightedCh3;
        if !weighted_ch3 && backends.iter().all(|b| b.weight == 0) {
            return Err(Error::ZeroWeight);
        }
        let imp = match config.kind {
            DistributionKind::Jump => Imp::Jump(jump::Jump::new(backends)),
            DistributionKind::Ring { mode, points } => {
                Imp::Ring(ring::Ring::new(mode, points, backends)?)
            }
            DistributionKind::Maglev { table_size } => {
                Imp::Maglev(maglev::Maglev::new(table_size, backends)?)
            }
            DistributionKind::Modula => Imp::Modula(modula::Modula::new(backends)),
            DistributionKind::Rendezvous => Imp::Rendezvous(rendezvous::Rendezvous::new(backends)),
            DistributionKind::Ch3 => Imp::Ch3(furc::Ch3::new(backends.len())),
            DistributionKind::Crc32 => Imp::Crc32(furc::Crc32Mod::new(backends.len())),
            DistributionKind::WeightedCh3 => {
                Imp::WeightedCh3(furc::WeightedCh3::new(backends.iter().map(|b| b.weight)))
            }
        };
        Ok(Distribution {
            kind: config.kind,
            hash: config.hash.unwrap_or_else(|| config.kind.default_hash()),
            filter: config.filter.clone(),
            weights: backends.iter().map(|b| b.weight).collect(),
            imp,
        })
    }

    /// The distribution kind it was built with.
    pub fn kind(&self) -> DistributionKind {
        self.kind
    }

    /// The key hash in effect (the configured one or the kind's default).
    pub fn key_hash_fn(&self) -> KeyHash {
        self.hash
    }

    /// The key filter in effect.
    pub fn filter(&self) -> &KeyFilter {
        &self.filter
    }

    /// Number of backends (including weight-0 ones).
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Always false: a distribution has at least one backend.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Filters and hashes `key` the way [`pick`](Self::pick) does.
    #[inline]
    pub fn key_hash(&self, key: &[u8]) -> u64 {
        self.hash.hash(self.filter.apply(key))
    }

    /// The backend index for `key`.
    #[inline]
    pub fn pick(&self, key: &[u8]) -> usize {
        self.pick_filtered(self.filter.apply(key))
    }

    /// The backend index for a key the filter was already applied to
    /// (mcrouter's salted hash routes append their salt after filtering).
    #[inline]
    pub fn pick_filtered(&self, key: &[u8]) -> usize {
        match &self.imp {
            // It rehashes salted keys, so it needs the key, not a hash.
            Imp::WeightedCh3(w) => w.pick_key(key),
            _ => self.pick_hash(self.hash.hash(key)),
        }
    }

    /// The backend index for a hash from [`key_hash`](Self::key_hash).
    /// For `weighted_ch3`, which needs the key itself, this is its first
    /// try only (plain Ch3, weights ignored): use [`pick`](Self::pick).
    #[inline]
    pub fn pick_hash(&self, hash: u64) -> usize {
        match &self.imp {
            Imp::Jump(j) => j.pick(hash),
            Imp::Ring(r) => r.pick(hash),
            Imp::Maglev(m) => m.pick(hash),
            Imp::Modula(m) => m.pick(hash),
            Imp::Rendezvous(r) => r.pick(hash),
            Imp::Ch3(c) => c.pick(hash),
            Imp::Crc32(c) => c.pick(hash),
            Imp::WeightedCh3(_) => furc_hash(hash, self.len() as u32) as usize,
        }
    }

    /// Writes the ordered, distinct fallback list for `key` into `out`
    /// (cleared first): `out[0] == pick(key)`, then the backend to use if
    /// that one is down, and so on, at most `limit` entries (all backends
    /// when `limit >= len()`).  Weight-0 backends come last, in index order.
    pub fn candidates(&self, key: &[u8], limit: usize, out: &mut Vec<usize>) {
        if let Imp::WeightedCh3(w) = &self.imp {
            // The weighted pick first, then index order (as for Ch3).
            out.clear();
            if limit > 0 {
                out.push(w.pick_key(self.filter.apply(key)));
            }
            let mut i = 0;
            while out.len() < limit.min(self.len()) {
                if !out.contains(&i) {
                    out.push(i);
                }
                i += 1;
            }
            return;
        }
        self.candidates_hash(self.key_hash(key), limit, out);
    }

    /// [`candidates`](Self::candidates) for a precomputed hash.
    pub fn candidates_hash(&self, hash: u64, limit: usize, out: &mut Vec<usize>) {
        out.clear();
        let limit = limit.min(self.len());
        if limit == 0 {
            return;
        }
        match &self.imp {
            Imp::Jump(j) => j.candidates(hash, limit, out),
            Imp::Ring(r) => r.candidates(hash, limit, out),
            Imp::Maglev(m) => m.candidates(hash, limit, out),
            Imp::Modula(m) => m.candidates(hash, limit, &self.weights, out),
            Imp::Rendezvous(r) => r.candidates(hash, limit, out),
            // The pick; index order follows below.
            Imp::Ch3(c) => out.push(c.pick(hash)),
            Imp::Crc32(c) => out.push(c.pick(hash)),
            Imp::WeightedCh3(_) => out.push(furc_hash(hash, self.len() as u32) as usize),
        }
        // Backends the walk could not reach (weight 0, or no points left on a
        // tiny ring) are appended in index order so the list is complete.
        let mut i = 0;
        while out.len() < limit && i < self.len() {
            if !out.contains(&i) {
                out.push(i);
            }
            i += 1;
        }
    }

    /// The exact share of a uniformly distributed 32-bit (ring) or 64-bit
    /// (Maglev, modula) key hash each backend receives, when it can be
    /// computed from the structure; `None` for jump and rendezvous, whose
    /// shares are only defined in expectation (their weight share).
    pub fn exact_shares(&self) -> Option<Vec<f64>> {
        match &self.imp {
            Imp::Ring(r) => Some(r.shares(self.len())),
            Imp::Maglev(m) => Some(m.shares(self.len())),
            Imp::Modula(m) => Some(m.shares(&self.weights)),
            Imp::Jump(_)
            | Imp::Rendezvous(_)
            | Imp::Ch3(_)
            | Imp::Crc32(_)
            | Imp::WeightedCh3(_) => None,
        }
    }
}

/// Weighted "r-th remaining backend": the backend that owns slot `r` when
/// the backends not in `taken` are laid out in index order, each repeated
/// `weight` times.  Used for the modula and jump fallback lists.
fn nth_remaining(weights: &[u32], taken: &[usize], mut r: u64) -> Option<usize> {
    for (i, &w) in weights.iter().enumerate() {
        if w == 0 || taken.contains(&i) {
            continue;
        }
        if r < u64::from(w) {
            return Some(i);
        }
        r -= u64::from(w);
    }
    None
}

/// Total weight of the backends not in `taken`.
fn remaining_weight(weights: &[u32], taken: &[usize]) -> u64 {
    weights
        .iter()
        .enumerate()
        .filter(|(i, _)| !taken.contains(i))
        .map(|(_, &w)| u64::from(w))
        .sum()
}

/// A strong 64-bit finalizer (MurmurHash3's fmix64), used to derive
/// independent hashes from one key hash (fallbacks, rendezvous scores).
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for name in [
            "jump",
            "ketama",
            "twemproxy",
            "ring_hash:default",
            "ring_hash:ketama",
            "ring_hash:twemproxy",
            "ring_hash:evcache",
            "ring_hash:ketama/100",
            "maglev",
            "maglev:251",
            "modula",
            "rendezvous",
            "ch3",
            "mcrouter_crc32",
            "weighted_ch3",
        ] {
            let k: DistributionKind = name.parse().unwrap();
            assert_eq!(k.to_string(), name);
        }
        assert_eq!(
            "ring_hash".parse::<DistributionKind>().unwrap(),
            DistributionKind::ring(RingMode::McproxyDefault)
        );
        assert_eq!(
            "HRW".parse::<DistributionKind>().unwrap(),
            DistributionKind::Rendezvous
        );
        for bad in [
            "",
            "jump:1",
            "ring_hash:foo",
            "maglev:x",
            "modula/3",
            "consistent",
        ] {
            assert!(bad.parse::<DistributionKind>().is_err(), "{bad}");
        }
    }

    #[test]
    fn build_errors() {
        let cfg = DistributionConfig::default();
        assert_eq!(cfg.build(&[]).unwrap_err(), Error::NoBackends);
        let zero = [Backend::with_weight("a:1", 0)];
        assert_eq!(cfg.build(&zero).unwrap_err(), Error::ZeroWeight);
    }

    #[test]
    fn distribution_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Distribution>();
    }
}
