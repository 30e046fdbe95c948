//! mcrouter's two pool hash functions, so keys land where mcrouter put
//! them: `Ch3` (furc hash, mcrouter's default) and `Crc32`.
//!
//! * Ch3 is a consistent hash by Mark Rabkin's binary decision tree: the
//!   key's MurmurHash64A (seed 4193360111, [`KeyHash::Murmur64a`]) and its
//!   repeated rehashes are a bit stream; the tree walks it down to a shard,
//!   retrying (at most 32 times) when the shard is out of range. Growing a
//!   pool from n to n+k servers only moves keys to the new ones. Pools are
//!   limited to 2^23 servers, as in mcrouter.
//! * Crc32 is `(crc32(key) & 0x7fffffff) % n` over the standard CRC-32
//!   ([`KeyHash::Crc32a`]): not consistent.
//!
//! Weights are ignored by both, as in mcrouter (its weighted variant,
//! WeightedCh3, is not implemented). Fallback lists put the picked server
//! first; the rest follow in index order (mcrouter has no per-key order).
//!
//! [`KeyHash::Murmur64a`]: crate::KeyHash::Murmur64a
//! [`KeyHash::Crc32a`]: crate::KeyHash::Crc32a

/// MurmurHash64A's seed furc uses for the key and every rehash.
pub const FURC_SEED: u64 = 4_193_360_111;
/// Bit index gap per level: limits pools to 2^23 servers.
const FURC_SHIFT: u32 = 23;
/// Tries for an in-range shard before settling on 0.
const MAX_TRIES: u32 = 32;
/// Largest pool furc can address.
pub const FURC_MAX_POOL: u32 = 1 << FURC_SHIFT;

const M: u64 = 0xc6a4_a793_5bd1_e995;
const R: u32 = 47;

/// MurmurHash2's 64-bit variant (64A), little-endian words.
pub fn murmur_hash_64a(key: &[u8], seed: u64) -> u64 {
    let mut h = seed ^ (key.len() as u64).wrapping_mul(M);
    let mut words = key.chunks_exact(8);
    for w in &mut words {
        let mut k = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= u64::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^ (h >> R)
}

/// MurmurHash64A of one 64-bit word with the furc seed: the next block of
/// the bit stream.
fn rehash(k: u64) -> u64 {
    let mut h = FURC_SEED ^ 8u64.wrapping_mul(M);
    let mut k = k.wrapping_mul(M);
    k ^= k >> R;
    k = k.wrapping_mul(M);
    h ^= k;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^ (h >> R)
}

/// The bit stream of one key: block 0 is the key's hash, block n the
/// rehash of block n-1, computed as far as read.
struct Bits {
    blocks: Vec<u64>,
}

impl Bits {
    fn get(&mut self, idx: u32) -> u32 {
        let block = (idx >> 6) as usize;
        while self.blocks.len() <= block {
            let next = rehash(*self.blocks.last().expect("block 0"));
            self.blocks.push(next);
        }
        ((self.blocks[block] >> (idx & 0x3f)) & 1) as u32
    }
}

/// furc hash: the shard in `0..m` for a key whose MurmurHash64A (furc seed)
/// is `hash`.
pub fn furc_hash(hash: u64, m: u32) -> u32 {
    if m <= 1 {
        return 0;
    }
    let mut bits = Bits {
        blocks: Vec::with_capacity(8),
    };
    bits.blocks.push(hash);
    let mut d = 0;
    while m > (1u32 << d) {
        d += 1;
    }
    let mut a = d;
    for _ in 0..MAX_TRIES {
        while bits.get(a) == 0 {
            d -= 1;
            if d == 0 {
                return 0;
            }
            a = d;
        }
        a += FURC_SHIFT;
        let mut num: u32 = 1;
        for _ in 0..d - 1 {
            num = (num << 1) | bits.get(a);
            a += FURC_SHIFT;
        }
        if num < m {
            return num;
        }
    }
    0
}

/// mcrouter's `Ch3` over `n` servers.
#[derive(Debug, Clone)]
pub(super) struct Ch3 {
    n: u32,
}

impl Ch3 {
    pub(super) fn new(n: usize) -> Self {
        Ch3 { n: n as u32 }
    }

    #[inline]
    pub(super) fn pick(&self, hash: u64) -> usize {
        furc_hash(hash, self.n) as usize
    }
}

/// mcrouter's `Crc32` over `n` servers.
#[derive(Debug, Clone)]
pub(super) struct Crc32Mod {
    n: u64,
}

impl Crc32Mod {
    pub(super) fn new(n: usize) -> Self {
        Crc32Mod { n: n as u64 }
    }

    #[inline]
    pub(super) fn pick(&self, hash: u64) -> usize {
        ((hash & 0x7fff_ffff) % self.n) as usize
    }
}
