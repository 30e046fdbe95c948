//! Multi-threaded behaviour: CAS atomicity, incr atomicity, exactly one
//! meta win, and readers racing writers.

use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use memroute_cache::{
    ArithOutcome, Cache, CacheConfig, GetOutcome, MetaDeleteOptions, MetaGetOptions,
    MetaGetOutcome, StoreMode, StoreOutcome,
};

const THREADS: usize = 8;

#[test]
fn cas_increment_loops_lose_no_update() {
    const PER_THREAD: u64 = 2_000;
    let cache = Arc::new(Cache::new(CacheConfig::default()));
    for k in 0..3 {
        cache.store(
            StoreMode::Set,
            format!("c{k}").as_bytes(),
            Bytes::from_static(b"0"),
            0,
            0,
        );
    }
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                let key = format!("c{}", t % 3);
                let mut retries = 0u64;
                for _ in 0..PER_THREAD {
                    loop {
                        let GetOutcome::Hit(item) = cache.get(key.as_bytes()) else {
                            panic!("counter vanished");
                        };
                        let n: u64 = std::str::from_utf8(&item.value).unwrap().parse().unwrap();
                        let next = Bytes::from((n + 1).to_string());
                        match cache.store_if(
                            StoreMode::Set,
                            Some(item.cas),
                            key.as_bytes(),
                            next,
                            0,
                            0,
                        ) {
                            StoreOutcome::Stored { .. } => break,
                            StoreOutcome::Exists => retries += 1,
                            other => panic!("{other:?}"),
                        }
                    }
                }
                retries
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total: u64 = (0..3)
        .map(|k| {
            let v = cache.get(format!("c{k}").as_bytes()).hit().unwrap().value;
            std::str::from_utf8(&v).unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(total, THREADS as u64 * PER_THREAD);
}

#[test]
fn concurrent_incr_is_exact() {
    const PER_THREAD: u64 = 5_000;
    let cache = Arc::new(Cache::new(CacheConfig::default()));
    cache.store(StoreMode::Set, b"n", Bytes::from_static(b"0"), 0, 0);
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                for _ in 0..PER_THREAD {
                    assert!(matches!(
                        cache.incr_decr(b"n", 1, true),
                        ArithOutcome::Value { .. }
                    ));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let ArithOutcome::Value { value, .. } = cache.incr_decr(b"n", 0, true) else {
        panic!()
    };
    assert_eq!(value, THREADS as u64 * PER_THREAD);
}

#[test]
fn exactly_one_thread_wins_a_stale_item() {
    for round in 0..50 {
        let cache = Arc::new(Cache::new(CacheConfig::default()));
        let key = format!("hot{round}");
        cache.store(
            StoreMode::Set,
            key.as_bytes(),
            Bytes::from_static(b"v"),
            0,
            0,
        );
        cache.meta_delete(
            key.as_bytes(),
            &MetaDeleteOptions {
                invalidate: true,
                ..Default::default()
            },
        );
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let cache = Arc::clone(&cache);
                let key = key.clone();
                thread::spawn(move || {
                    match cache.meta_get(key.as_bytes(), &MetaGetOptions::default()) {
                        MetaGetOutcome::Hit(h) => {
                            assert!(h.stale);
                            assert_ne!(h.won, h.win_token_sent, "W and Z are exclusive");
                            h.won as u32
                        }
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        let wins: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(wins, 1);
    }
}

#[test]
fn exactly_one_thread_vivifies() {
    let cache = Arc::new(Cache::new(CacheConfig::default()));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                let opts = MetaGetOptions {
                    vivify_ttl: Some(30),
                    ..Default::default()
                };
                match cache.meta_get(b"missing", &opts) {
                    MetaGetOutcome::Hit(h) => (h.won as u32, h.created as u32),
                    other => panic!("{other:?}"),
                }
            })
        })
        .collect();
    let (wins, created) = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!((wins, created), (1, 1));
}

#[test]
fn readers_always_see_a_complete_value_during_overwrites() {
    // Writers alternate between two values of different sizes; readers
    // must see one of them, whole, and never a miss.
    let cache = Arc::new(Cache::new(CacheConfig::with_memory_limit(8 << 20)));
    let a = Bytes::from(vec![b'a'; 100]);
    let b = Bytes::from(vec![b'b'; 3000]);
    cache.store(StoreMode::Set, b"k", a.clone(), 1, 0);
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (cache, a, b) = (Arc::clone(&cache), a.clone(), b.clone());
            thread::spawn(move || {
                for i in 0..20_000 {
                    let (v, f) = if i % 2 == 0 {
                        (b.clone(), 2)
                    } else {
                        (a.clone(), 1)
                    };
                    cache.store(StoreMode::Set, b"k", v, f, 0);
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                for _ in 0..20_000 {
                    let item = cache.get(b"k").hit().expect("never a miss");
                    let ok = (item.flags == 1
                        && item.value.len() == 100
                        && item.value.iter().all(|&c| c == b'a'))
                        || (item.flags == 2
                            && item.value.len() == 3000
                            && item.value.iter().all(|&c| c == b'b'));
                    assert!(ok, "torn read");
                }
            })
        })
        .collect();
    for h in writers.into_iter().chain(readers) {
        h.join().unwrap();
    }
}

#[test]
fn mixed_load_under_memory_pressure_stays_within_limit() {
    let limit = 256 * 1024;
    let cache = Arc::new(Cache::new(CacheConfig {
        memory_limit: limit,
        max_item_size: 16 * 1024,
        shards: 0,
    }));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                for i in 0..5_000usize {
                    let key = format!("k{}", (i * 7 + t * 13) % 2_000);
                    match i % 4 {
                        0 | 1 => {
                            cache.store(
                                StoreMode::Set,
                                key.as_bytes(),
                                Bytes::from(vec![0u8; (i % 50) * 40]),
                                0,
                                0,
                            );
                        }
                        2 => {
                            cache.get(key.as_bytes());
                        }
                        _ => {
                            cache.store(
                                StoreMode::Append,
                                key.as_bytes(),
                                Bytes::from_static(b"xyz"),
                                0,
                                0,
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let st = cache.stats();
    assert!(
        st.bytes <= st.heap_bytes && st.heap_bytes <= limit,
        "{st:?}"
    );
    assert!(st.evictions > 0);
}
