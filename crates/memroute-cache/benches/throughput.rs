//! get/set throughput of the embedded cache, single- and multi-threaded.
//!
//! Run: `cargo bench -p memroute-cache --bench throughput`

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memroute_cache::{Cache, CacheConfig, StoreMode};

const KEYS: usize = 100_000;

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| format!("key:{i:08}").into_bytes())
        .collect()
}

fn filled(keys: &[Vec<u8>]) -> Arc<Cache> {
    let cache = Arc::new(Cache::new(CacheConfig::with_memory_limit(256 << 20)));
    let value = Bytes::from(vec![b'v'; 100]);
    for k in keys {
        cache.store(StoreMode::Set, k, value.clone(), 0, 0);
    }
    cache
}

fn single_thread(c: &mut Criterion) {
    let keys = keys();
    let cache = filled(&keys);
    let value = Bytes::from(vec![b'v'; 100]);
    let mut g = c.benchmark_group("single_thread");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            cache.get(&keys[i])
        })
    });
    g.bench_function("set_100b", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            cache.store(StoreMode::Set, &keys[i], value.clone(), 0, 0)
        })
    });
    g.finish();
}

/// `threads` threads each doing `iters / threads` operations, 90% get /
/// 10% set when `mixed`, else all gets. Reports wall time for all ops.
fn run_parallel(
    cache: &Arc<Cache>,
    keys: &Arc<Vec<Vec<u8>>>,
    threads: usize,
    iters: u64,
    mixed: bool,
) -> Duration {
    let per = iters / threads as u64 + 1;
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (cache, keys) = (Arc::clone(cache), Arc::clone(keys));
            thread::spawn(move || {
                let value = Bytes::from(vec![b'v'; 100]);
                let mut i = t * 31_337;
                for n in 0..per {
                    i = (i + 7919) % KEYS;
                    if mixed && n % 10 == 0 {
                        cache.store(StoreMode::Set, &keys[i], value.clone(), 0, 0);
                    } else {
                        std::hint::black_box(cache.get(&keys[i]));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    start.elapsed()
}

fn multi_thread(c: &mut Criterion) {
    let keys = Arc::new(keys());
    let cache = filled(&keys);
    let mut g = c.benchmark_group("multi_thread");
    g.throughput(Throughput::Elements(1));
    for threads in [2usize, 4] {
        g.bench_function(format!("get_{threads}t"), |b| {
            b.iter_custom(|iters| run_parallel(&cache, &keys, threads, iters, false))
        });
        g.bench_function(format!("get90_set10_{threads}t"), |b| {
            b.iter_custom(|iters| run_parallel(&cache, &keys, threads, iters, true))
        });
    }
    g.finish();
}

criterion_group!(benches, single_thread, multi_thread);
criterion_main!(benches);
