//! Deterministic samples for experiments and benchmarks: a tiny seeded
//! random generator and random backend names, the same on every platform.
//! (The distribution report behind `memroute hash-report` lives in the
//! binary; this crate only computes.)

use crate::Backend;

/// SplitMix64 (Steele, Lea & Flood), a tiny deterministic PRNG; good enough
/// for drawing backend ids and sample hashes, and stable across platforms.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random backend name `10.a.b.c:11211`.
    pub fn backend(&mut self) -> Backend {
        let r = self.next();
        Backend::new(format!(
            "10.{}.{}.{}:11211",
            r & 0xff,
            (r >> 8) & 0xff,
            (r >> 16) & 0xff
        ))
    }
}
