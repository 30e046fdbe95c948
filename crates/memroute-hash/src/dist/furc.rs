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
//! * WeightedCh3 is Ch3 with a weight in 0..=1 per server: a server keeps
//!   a key when the key's SpookyHash V2 falls under its weight, else the
//!   key is salted and hashed again ([`WeightedCh3`]).
//!
//! Ch3 and Crc32 ignore weights, as in mcrouter. Fallback lists put the
//! picked server first; the rest follow in index order (mcrouter has no
//! per-key order).
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

/// mcrouter's `WeightedCh3`: Ch3, but a server keeps a key only when the
/// key's SpookyHash V2 (32 bits, seed 0xface2014) is under the server's
/// threshold (its weight in 0..=1 times 2^32-1); otherwise the key is
/// salted with a counter ("0", "1", ..., "9", "01", "11": the counter's
/// digits, lowest first) and tried again, 32 times at most, the last pick
/// standing. With every weight 1 it picks what Ch3 picks.
#[derive(Debug, Clone)]
pub(super) struct WeightedCh3 {
    thresholds: Box<[u64]>,
}

/// Tries before the last pick stands.
const WEIGHTED_TRIES: u64 = 32;
/// SpookyHash seed of the weight draw.
const WEIGHT_SEED: u64 = 0xface_2014;

impl WeightedCh3 {
    /// `thresholds[i]`: `weight * (2^32 - 1)`, truncated (the backend's
    /// weight field carries it, see [`DistributionKind::WeightedCh3`]).
    ///
    /// [`DistributionKind::WeightedCh3`]: super::DistributionKind::WeightedCh3
    pub(super) fn new(thresholds: impl Iterator<Item = u32>) -> Self {
        WeightedCh3 {
            thresholds: thresholds.map(u64::from).collect(),
        }
    }

    /// The pick for a (filtered) key.
    pub(super) fn pick_key(&self, key: &[u8]) -> usize {
        let n = self.thresholds.len() as u32;
        let mut salted = Vec::new();
        let mut current: &[u8] = key;
        let mut index = 0;
        for salt in 0..WEIGHTED_TRIES {
            index = furc_hash(murmur_hash_64a(current, FURC_SEED), n) as usize;
            let draw = u64::from(spooky_v2_hash32(current, WEIGHT_SEED));
            if draw < self.thresholds[index] {
                return index;
            }
            salted.clear();
            salted.extend_from_slice(key);
            let mut s = salt;
            loop {
                salted.push(b'0' + (s % 10) as u8);
                s /= 10;
                if s == 0 {
                    break;
                }
            }
            current = &salted;
        }
        index
    }
}

// SpookyHash V2 (Bob Jenkins, public domain), the one-shot 128-bit form
// mcrouter's weighted draw reads the low 32 bits of. Keys under 192 bytes
// take the short path; longer ones the 96-byte block path.

const SC_CONST: u64 = 0xdead_beef_dead_beef;
const SC_VARS: usize = 12;
const SC_BLOCK: usize = SC_VARS * 8;
const SC_BUF: usize = 2 * SC_BLOCK;

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        b[at..at + 4].try_into().expect("4 bytes"),
    ))
}

/// SpookyHash V2's 32-bit result with `seed` as both seeds.
pub fn spooky_v2_hash32(message: &[u8], seed: u64) -> u32 {
    spooky_v2_hash128(message, seed, seed).0 as u32
}

/// SpookyHash V2, 128 bits as two words.
pub fn spooky_v2_hash128(message: &[u8], seed1: u64, seed2: u64) -> (u64, u64) {
    if message.len() < SC_BUF {
        return spooky_short(message, seed1, seed2);
    }
    let mut h = [0u64; SC_VARS];
    for (i, v) in h.iter_mut().enumerate() {
        *v = match i % 3 {
            0 => seed1,
            1 => seed2,
            _ => SC_CONST,
        };
    }
    let whole = message.len() / SC_BLOCK * SC_BLOCK;
    let mut data = [0u64; SC_VARS];
    for block in message[..whole].chunks_exact(SC_BLOCK) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = le64(block, i * 8);
        }
        spooky_mix(&data, &mut h);
    }
    let rest = &message[whole..];
    let mut last = [0u8; SC_BLOCK];
    last[..rest.len()].copy_from_slice(rest);
    last[SC_BLOCK - 1] = rest.len() as u8;
    for (i, d) in data.iter_mut().enumerate() {
        *d = le64(&last, i * 8);
    }
    for (v, d) in h.iter_mut().zip(data) {
        *v = v.wrapping_add(d);
    }
    for _ in 0..3 {
        spooky_end_partial(&mut h);
    }
    (h[0], h[1])
}

fn spooky_mix(data: &[u64; SC_VARS], s: &mut [u64; SC_VARS]) {
    // Rotation of each step, in order.
    const ROT: [u32; SC_VARS] = [11, 32, 43, 31, 17, 28, 39, 57, 55, 54, 22, 46];
    for (i, (word, rot)) in data.iter().zip(ROT).enumerate() {
        s[i] = s[i].wrapping_add(*word);
        s[(i + 2) % SC_VARS] ^= s[(i + 10) % SC_VARS];
        s[(i + 11) % SC_VARS] ^= s[i];
        s[i] = s[i].rotate_left(rot);
        s[(i + 11) % SC_VARS] = s[(i + 11) % SC_VARS].wrapping_add(s[(i + 1) % SC_VARS]);
    }
}

fn spooky_end_partial(h: &mut [u64; SC_VARS]) {
    const ROT: [u32; SC_VARS] = [44, 15, 34, 21, 38, 33, 10, 13, 38, 53, 42, 54];
    for (i, rot) in ROT.into_iter().enumerate() {
        let (a, b, c) = ((i + 11) % SC_VARS, (i + 1) % SC_VARS, (i + 2) % SC_VARS);
        h[a] = h[a].wrapping_add(h[b]);
        h[c] ^= h[a];
        h[b] = h[b].rotate_left(rot);
    }
}

fn short_mix(h: &mut [u64; 4]) {
    const STEPS: [(usize, u32); 12] = [
        (2, 50),
        (3, 52),
        (0, 30),
        (1, 41),
        (2, 54),
        (3, 48),
        (0, 38),
        (1, 37),
        (2, 62),
        (3, 34),
        (0, 5),
        (1, 36),
    ];
    for (i, r) in STEPS {
        h[i] = h[i].rotate_left(r);
        h[i] = h[i].wrapping_add(h[(i + 1) % 4]);
        h[(i + 2) % 4] ^= h[i];
    }
}

fn short_end(h: &mut [u64; 4]) {
    const STEPS: [(usize, u32); 11] = [
        (3, 15),
        (0, 52),
        (1, 26),
        (2, 51),
        (3, 28),
        (0, 9),
        (1, 47),
        (2, 54),
        (3, 32),
        (0, 25),
        (1, 63),
    ];
    for (i, r) in STEPS {
        let prev = (i + 3) % 4;
        h[i] ^= h[prev];
        h[prev] = h[prev].rotate_left(r);
        h[i] = h[i].wrapping_add(h[prev]);
    }
}

fn spooky_short(message: &[u8], seed1: u64, seed2: u64) -> (u64, u64) {
    let len = message.len();
    let mut h = [seed1, seed2, SC_CONST, SC_CONST];
    let mut p = 0;
    let mut remainder = len % 32;
    if len > 15 {
        while p + 32 <= len {
            h[2] = h[2].wrapping_add(le64(message, p));
            h[3] = h[3].wrapping_add(le64(message, p + 8));
            short_mix(&mut h);
            h[0] = h[0].wrapping_add(le64(message, p + 16));
            h[1] = h[1].wrapping_add(le64(message, p + 24));
            p += 32;
        }
        if remainder >= 16 {
            h[2] = h[2].wrapping_add(le64(message, p));
            h[3] = h[3].wrapping_add(le64(message, p + 8));
            short_mix(&mut h);
            p += 16;
            remainder -= 16;
        }
    }
    let tail = &message[p..];
    h[3] = h[3].wrapping_add((len as u64) << 56);
    let byte = |i: usize| u64::from(tail[i]);
    let (c, d) = (&mut 0u64, &mut 0u64);
    match remainder {
        0 => {
            *c = SC_CONST;
            *d = SC_CONST;
        }
        r @ 12..=15 => {
            for i in 12..r {
                *d = d.wrapping_add(byte(i) << (8 * (i - 8)));
            }
            *d = d.wrapping_add(le32(tail, 8));
            *c = c.wrapping_add(le64(tail, 0));
        }
        r @ 8..=11 => {
            for i in 8..r {
                *d = d.wrapping_add(byte(i) << (8 * (i - 8)));
            }
            *c = c.wrapping_add(le64(tail, 0));
        }
        r @ 4..=7 => {
            for i in 4..r {
                *c = c.wrapping_add(byte(i) << (8 * i));
            }
            *c = c.wrapping_add(le32(tail, 0));
        }
        r => {
            for i in 0..r {
                *c = c.wrapping_add(byte(i) << (8 * i));
            }
        }
    }
    h[2] = h[2].wrapping_add(*c);
    h[3] = h[3].wrapping_add(*d);
    short_end(&mut h);
    (h[0], h[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SpookyHash V2 `Hash32(buf, len, 0)` with `buf[i] = i + 128`: values
    /// from the table of folly's `folly/hash/test/SpookyHashV2Test.cpp`
    /// (Bob Jenkins' own test), covering the short path, its tails, and
    /// the block path (192 bytes and up).
    #[test]
    fn spooky_v2_reference_values() {
        let buf: Vec<u8> = (0..512).map(|i| (i + 128) as u8).collect();
        for (len, expected) in [
            (0, 0x6bf5_0919),
            (1, 0x70de_1d26),
            (2, 0xa2b3_7298),
            (3, 0x35bc_5fbf),
            (12, 0x5f23_d1da),
            (13, 0x1ed9_f474),
            (14, 0xf2ef_0c89),
            (15, 0x83ec_01f9),
            (16, 0xf274_736c),
            (64, 0x069c_8bb7),
            (127, 0x8235_6bf2),
            (191, 0xe13d_9e19),
            (192, 0x77e0_12bd),
            (193, 0x2d05_114c),
            (256, 0x38ce_bf03),
            (288, 0x4788_0140),
            (511, 0xcc1c_8250),
        ] {
            assert_eq!(spooky_v2_hash32(&buf[..len], 0), expected, "length {len}");
        }
    }
}
