//! Key hashing and backend distribution for memroute pools.
//!
//! A pure crate (no I/O, no global state): given a key and the list of a
//! pool's backends, pick the backend, and the ordered fallbacks for failover
//! routes.  Operators migrate to memroute from client-side hashing
//! (libmemcached / PHP ketama), twemproxy and memcached's proxy, so the
//! compatibility modes reproduce those implementations bit for bit; the
//! golden vectors in `tests/golden/` were captured from the real programs.
//!
//! # Layout
//!
//! * [`hash`] — [`KeyHash`]: XXH3 (default), md5, crc32, crc32a, crc16, the
//!   FNV family, one_at_a_time, murmur, jenkins, hsieh.
//! * [`filter`] — [`KeyFilter`]: hash only part of a key (`|#|` stop string,
//!   `{}` hash tags).
//! * [`dist`] — [`DistributionKind`], [`RingMode`], [`DistributionConfig`]
//!   and the built [`Distribution`] (jump, ketama-style rings, Maglev,
//!   modula, rendezvous).
//! * [`sample`] — a seeded generator for experiments and benchmarks (the
//!   load-balance report built on it, `memroute hash-report`, lives in the
//!   binary: this crate computes, it writes no files).
//!
//! # Example
//!
//! ```
//! use memroute_hash::{Backend, DistributionConfig, DistributionKind, KeyFilter, KeyHash};
//!
//! let backends = vec![
//!     Backend::new("127.0.0.1:11211"),
//!     Backend::new("127.0.0.1:11212"),
//!     Backend::with_weight("127.0.0.1:11213", 2),
//! ];
//! // What a PHP client with OPT_LIBKETAMA_COMPATIBLE computes:
//! let config = DistributionConfig::new("ketama".parse().unwrap());
//! let dist = config.build(&backends).unwrap();
//! let primary = dist.pick(b"user:42");
//! let mut order = Vec::new();
//! dist.candidates(b"user:42", 2, &mut order);
//! assert_eq!(order[0], primary);
//! assert_ne!(order[1], primary);
//!
//! // memroute's default: jump consistent hash over XXH3, here hashing only
//! // the part of the key before "|#|".
//! let dist = DistributionConfig::new(DistributionKind::Jump)
//!     .with_hash(KeyHash::Xxh3 { seed: 0 })
//!     .with_filter(KeyFilter::stop("|#|"))
//!     .build(&backends)
//!     .unwrap();
//! assert_eq!(dist.pick(b"user:42|#|name"), dist.pick(b"user:42|#|avatar"));
//! ```
//!
//! # Backend identity
//!
//! Rings hash a string per backend, so [`Backend::name`] must be what the old
//! setup hashed (see [`HostPort`]):
//!
//! * libmemcached / PHP ketama and twemproxy: `host:port` as configured; port
//!   11211 is left out of the hashed string (`"10.0.0.1-0"`), any other port
//!   is kept (`"10.0.0.1:11212-0"`).  A twemproxy server with a name
//!   (`- 10.0.0.1:11211:1 alpha`) must use that name (`"alpha"`).  The host
//!   must be spelled as the client spelled it (a hostname is not resolved).
//! * memcached proxy rings: `addr:port` of `mcp.backend` (port 11211 if
//!   omitted).
//! * jump and modula only use the order of the list; Maglev and rendezvous
//!   hash the name as given.
//!
//! Backend **order** matters for jump, modula and for ring ties; keep the
//! order of the old configuration.

pub mod dist;
pub mod filter;
pub mod hash;
pub mod sample;

pub use dist::{
    furc_hash, murmur_hash_64a, spooky_v2_hash32, Distribution, DistributionConfig,
    DistributionKind, HostPort, RingMode, DEFAULT_POINTS, DEFAULT_TABLE_SIZE, FURC_MAX_POOL,
    FURC_SEED,
};
pub use filter::KeyFilter;
pub use hash::KeyHash;

/// One backend of a pool, as the distributions see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Identity hashed by rings, Maglev and rendezvous: `host:port` (see the
    /// crate docs for what each compatibility mode expects).
    pub name: String,
    /// Relative weight; 0 means the backend receives no keys (it still has
    /// an index and appears last in fallback lists).
    pub weight: u32,
}

impl Backend {
    /// A backend with weight 1.
    pub fn new(name: impl Into<String>) -> Self {
        Backend {
            name: name.into(),
            weight: 1,
        }
    }

    /// A backend with an explicit weight.
    pub fn with_weight(name: impl Into<String>, weight: u32) -> Self {
        Backend {
            name: name.into(),
            weight,
        }
    }
}

/// Configuration and build errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The backend list is empty.
    #[error("a distribution needs at least one backend")]
    NoBackends,
    /// Every backend has weight 0.
    #[error("every backend has weight 0")]
    ZeroWeight,
    /// More backends than indexes can address.
    #[error("too many backends ({0})")]
    TooManyBackends(usize),
    /// Maglev table size is not a prime at least the number of backends.
    #[error("maglev table size {0} must be a prime >= the number of backends ({1})")]
    BadTableSize(u32, usize),
    /// Ring points per server must be positive.
    #[error("ring points per server must be >= 1 (got {0})")]
    BadPoints(u32),
    /// The ring ended up without any point (e.g. fewer than 4 points per
    /// server in an md5 mode, which makes 4 points per digest).
    #[error("the ring has no points (points per server too small for this mode)")]
    EmptyRing,
    /// The ring would be unreasonably large.
    #[error("the ring would have {0} points; lower the points or weights")]
    TooManyPoints(u64),
    /// Unknown key hash name.
    #[error("unknown key hash {0:?}; known: xxh3[:seed], md5, crc32, crc32a, crc16, fnv1_32, fnv1a_32, fnv1_64, fnv1a_64, one_at_a_time, murmur, jenkins, hsieh")]
    UnknownHash(String),
    /// Unknown distribution name.
    #[error("unknown distribution {0:?}; known: jump, ketama, twemproxy, ring_hash[:default|ketama|twemproxy|evcache][/points], maglev[:prime], modula, rendezvous")]
    UnknownDistribution(String),
    /// Malformed key filter.
    #[error("bad key filter {0:?}; use none, stop:STRING or tag:OC (e.g. tag:{{}})")]
    BadFilter(String),
}
