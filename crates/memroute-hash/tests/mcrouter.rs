//! mcrouter's pool hash functions against mcrouter's own unit tests.
//!
//! Every expected value here comes from facebook/mcrouter:
//! `mcrouter/lib/test/Ch3HashTest.cpp` (Ch3Func.basic, ch3_3, ch3_10),
//! `mcrouter/lib/test/WeightedCh3HashFuncTest.cpp` (basic, zeroWeight,
//! reducedWeight, randomWeights) and
//! `mcrouter/lib/test/Crc32HashTest.cpp` (Crc32Func.basic). The pools are
//! built with as many backends as those tests' pool sizes, except for the
//! 2^23 and 2^30-1 sizes, checked on the bare functions.

use memroute_hash::{
    furc_hash, murmur_hash_64a, Backend, DistributionConfig, DistributionKind, FURC_MAX_POOL,
    FURC_SEED,
};

fn pool(kind: DistributionKind, n: usize) -> memroute_hash::Distribution {
    let backends: Vec<Backend> = (0..n)
        .map(|i| Backend::new(format!("10.0.{}.{}:11211", i / 250, i % 250)))
        .collect();
    DistributionConfig::new(kind).build(&backends).unwrap()
}

/// The bytes -128..127 as C `char`s, and reversed (the tests' long key).
fn all_bytes() -> (Vec<u8>, Vec<u8>) {
    let up: Vec<u8> = (0..256i32).map(|i| (i - 128) as i8 as u8).collect();
    let mut down = up.clone();
    down.reverse();
    (up, down)
}

fn ch3(key: &[u8], n: u32) -> u32 {
    furc_hash(murmur_hash_64a(key, FURC_SEED), n)
}

#[test]
fn ch3_basic() {
    let p100 = pool(DistributionKind::Ch3, 100);
    assert_eq!(p100.pick(b"sample"), 97);
    assert_eq!(p100.pick(b""), 72);
    let p1 = pool(DistributionKind::Ch3, 1);
    assert_eq!(p1.pick(b"sample"), 0);
    assert_eq!(p1.pick(b""), 0);
    assert_eq!(ch3(b"", FURC_MAX_POOL), 6_173_600);
    assert_eq!(ch3(b"sample", FURC_MAX_POOL), 5_167_780);
    let (up, down) = all_bytes();
    assert_eq!(ch3(&up, 99_999), 31_015);
    assert_eq!(ch3(&down, 99_999), 67_101);
}

fn counts(kind: DistributionKind, n: usize, keys: usize) -> Vec<usize> {
    let p = pool(kind, n);
    let mut counts = vec![0; n];
    for i in 0..keys {
        counts[p.pick(i.to_string().as_bytes())] += 1;
    }
    counts
}

#[test]
fn ch3_spreads() {
    assert_eq!(counts(DistributionKind::Ch3, 3, 1000), [307, 342, 351]);
    assert_eq!(
        counts(DistributionKind::Ch3, 10, 10_000),
        [995, 955, 1046, 968, 1032, 972, 1016, 1038, 1010, 968]
    );
}

#[test]
fn crc32_basic() {
    let p100 = pool(DistributionKind::Crc32, 100);
    assert_eq!(p100.pick(b"sample"), 7);
    assert_eq!(p100.pick(b""), 0);
    assert_eq!(pool(DistributionKind::Crc32, 1).pick(b"sample"), 0);
    // The bare function for the huge pool: (crc32 & 0x7fffffff) % n.
    let crc = |key: &[u8], n: u64| (u64::from(crc32fast_hash(key)) & 0x7fff_ffff) % n;
    assert_eq!(crc(b"sample", (1 << 30) - 1), 822_834_884);
    assert_eq!(crc(b"", (1 << 30) - 1), 0);
    let p = pool(DistributionKind::Crc32, 99_999);
    let (up, down) = all_bytes();
    assert_eq!(p.pick(&up), 11_697);
    assert_eq!(p.pick(&down), 97_630);
}

/// The standard CRC-32, through the crate's `crc32a` key hash.
fn crc32fast_hash(key: &[u8]) -> u32 {
    memroute_hash::KeyHash::Crc32a.hash(key) as u32
}

#[test]
fn ch3_only_moves_keys_to_new_servers() {
    for i in 0..2000 {
        let key = format!("key:{i}");
        let mut last = ch3(key.as_bytes(), 1);
        for n in 2..40 {
            let now = ch3(key.as_bytes(), n);
            assert!(now == last || now == n - 1, "{key} {n}");
            last = now;
        }
    }
}

/// Backends with WeightedCh3 thresholds for `weights` (0..=1), as
/// mcrouter computes them: `weight * (2^32 - 1)`, truncated.
fn weighted(weights: &[f64]) -> memroute_hash::Distribution {
    let backends: Vec<Backend> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            Backend::with_weight(format!("10.1.0.{i}:11211"), (w * u32::MAX as f64) as u32)
        })
        .collect();
    DistributionConfig::new(DistributionKind::WeightedCh3)
        .build(&backends)
        .unwrap()
}

// From mcrouter/lib/test/WeightedCh3HashFuncTest.cpp.
#[test]
fn weighted_ch3_full_weights_are_ch3() {
    let p100 = weighted(&[1.0; 100]);
    assert_eq!(p100.pick(b"sample"), 97);
    assert_eq!(p100.pick(b""), 72);
    let p = weighted(&vec![1.0; 99_999]);
    let (up, down) = all_bytes();
    assert_eq!(p.pick(&up), 31_015);
    assert_eq!(p.pick(&down), 67_101);
}

#[test]
fn weighted_ch3_zero_weights_give_up_on_a_valid_index() {
    let p1 = weighted(&[0.0]);
    assert_eq!(p1.pick(b"sample"), 0);
    assert_eq!(p1.pick(b""), 0);
    let p100 = weighted(&[0.0; 100]);
    assert_eq!(p100.pick(b"sample"), 59);
    assert_eq!(p100.pick(b""), 45);
}

fn weighted_counts(weights: &[f64], keys: usize) -> Vec<usize> {
    let p = weighted(weights);
    let mut counts = vec![0; weights.len()];
    for i in 0..keys {
        counts[p.pick(i.to_string().as_bytes())] += 1;
    }
    counts
}

#[test]
fn weighted_ch3_reduced_and_random_weights() {
    assert_eq!(weighted_counts(&[1.0, 1.0, 0.7], 1000), [341, 371, 288]);
    assert_eq!(
        weighted_counts(
            &[0.429, 0.541, 0.117, 0.998, 0.283, 0.065, 0.109, 0.042, 0.676, 0.943],
            10_000
        ),
        [1016, 1252, 288, 2354, 661, 195, 247, 122, 1668, 2197]
    );
}
