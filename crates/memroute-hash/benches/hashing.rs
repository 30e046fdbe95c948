//! Benchmarks: every key hash, lookup cost per distribution, fallback lists,
//! and table/ring build times (Maglev for 10, 100 and 1000 backends).
//!
//! `cargo bench -p memroute-hash --bench hashing` (add `-- --quick` for a
//! fast, rougher run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memroute_hash::sample::SplitMix64;
use memroute_hash::{Backend, DistributionConfig, DistributionKind, KeyHash};

fn backends(n: usize) -> Vec<Backend> {
    let mut rng = SplitMix64::new(n as u64);
    (0..n).map(|_| rng.backend()).collect()
}

fn kinds() -> Vec<DistributionKind> {
    [
        "jump",
        "ketama",
        "twemproxy",
        "ring_hash:default",
        "maglev",
        "modula",
        "rendezvous",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

fn key_hashes(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_hash");
    for len in [10usize, 64] {
        let key: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        for h in KeyHash::all() {
            g.bench_with_input(BenchmarkId::new(h.name(), len), &key, |b, key| {
                b.iter(|| h.hash(black_box(key)))
            });
        }
    }
    g.finish();
}

fn lookups(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("user:{i}:profile").into_bytes())
        .collect();
    let mut g = c.benchmark_group("pick_hash");
    for n in [9usize, 100] {
        let b = backends(n);
        for kind in kinds() {
            let d = DistributionConfig::new(kind).build(&b).unwrap();
            let hashes: Vec<u64> = keys.iter().map(|k| d.key_hash(k)).collect();
            let mut i = 0;
            g.bench_function(BenchmarkId::new(kind.to_string(), n), |bch| {
                bch.iter(|| {
                    i = (i + 1) & 1023;
                    d.pick_hash(black_box(hashes[i]))
                })
            });
        }
    }
    g.finish();

    // End to end: filter + default key hash + distribution.
    let mut g = c.benchmark_group("pick_key");
    let b = backends(9);
    for kind in kinds() {
        let d = DistributionConfig::new(kind).build(&b).unwrap();
        let mut i = 0;
        g.bench_function(BenchmarkId::new(kind.to_string(), 9), |bch| {
            bch.iter(|| {
                i = (i + 1) & 1023;
                d.pick(black_box(&keys[i]))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("candidates_3");
    for kind in kinds() {
        let d = DistributionConfig::new(kind).build(&b).unwrap();
        let mut out = Vec::with_capacity(9);
        let mut i = 0;
        g.bench_function(BenchmarkId::new(kind.to_string(), 9), |bch| {
            bch.iter(|| {
                i = (i + 1) & 1023;
                d.candidates(black_box(&keys[i]), 3, &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

fn builds(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    for n in [10usize, 100, 1000] {
        let b = backends(n);
        for kind in [DistributionKind::maglev(), "ketama".parse().unwrap()] {
            let cfg = DistributionConfig::new(kind);
            g.bench_with_input(BenchmarkId::new(kind.to_string(), n), &b, |bch, b| {
                bch.iter(|| cfg.build(black_box(b)).unwrap())
            });
        }
    }
    g.finish();
}

fn config() -> Criterion {
    // Short runs: the machine is shared; these numbers are for orientation.
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = key_hashes, lookups, builds
}
criterion_main!(benches);
