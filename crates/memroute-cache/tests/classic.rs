//! Classic text-protocol semantics: storage modes, CAS, expiry,
//! flush_all, incr/decr, touch/gat, size limits, eviction and stats.

use std::sync::Arc;

use bytes::Bytes;
use memroute_cache::{
    item_size, ArithOutcome, Cache, CacheConfig, DeleteOutcome, GetOutcome, ManualClock, StoreMode,
    StoreOutcome, ITEM_OVERHEAD,
};

const T0: i64 = 1_700_000_000;

fn cache_with(cfg: CacheConfig) -> (Cache, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    (Cache::with_clock(cfg, clock.clone()), clock)
}

fn cache() -> (Cache, Arc<ManualClock>) {
    cache_with(CacheConfig::default())
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn set(c: &Cache, k: &str, v: &str, flags: u32, exp: i64) -> u64 {
    match c.store(StoreMode::Set, k.as_bytes(), b(v), flags, exp) {
        StoreOutcome::Stored { cas } => cas,
        other => panic!("set {k}: {other:?}"),
    }
}

fn value(c: &Cache, k: &str) -> Option<String> {
    c.get(k.as_bytes())
        .hit()
        .map(|v| String::from_utf8(v.value.to_vec()).unwrap())
}

#[test]
fn set_get_roundtrip_with_u32_flags_and_cas_from_one() {
    let (c, _) = cache();
    let cas = set(&c, "a", "hello", u32::MAX, 0);
    assert_eq!(cas, 1, "CAS uniques start at 1");
    let hit = c.get(b"a").hit().unwrap();
    assert_eq!(&hit.value[..], b"hello");
    assert_eq!(hit.flags, u32::MAX);
    assert_eq!(hit.cas, 1);
    assert_eq!(hit.exptime, 0);
    assert_eq!(hit.ttl, -1);
    assert_eq!(
        set(&c, "a", "x", 0, 0),
        2,
        "every store gets a new, higher CAS"
    );
    assert_eq!(c.get(b"missing"), GetOutcome::Miss);
}

#[test]
fn empty_values_and_binary_keys() {
    let (c, _) = cache();
    set(&c, "e", "", 0, 0);
    assert_eq!(value(&c, "e").as_deref(), Some(""));
    let key = [0u8, 255, 10, 13];
    c.store(StoreMode::Set, &key, b("bin"), 0, 0);
    assert_eq!(&c.get(&key).hit().unwrap().value[..], b"bin");
}

#[test]
fn relative_expiry_up_to_30_days_then_absolute() {
    let (c, clock) = cache();
    set(&c, "rel", "v", 0, 2_592_000);
    let hit = c.get(b"rel").hit().unwrap();
    assert_eq!(
        hit.exptime,
        T0 + 2_592_000,
        "exactly 30 days is still relative"
    );
    assert_eq!(hit.ttl, 2_592_000);

    set(&c, "abs", "v", 0, 2_592_001);
    assert_eq!(
        c.get(b"abs"),
        GetOutcome::Expired,
        "2592001 is an absolute time in 1970: already expired"
    );

    set(&c, "future", "v", 0, T0 + 100);
    let hit = c.get(b"future").hit().unwrap();
    assert_eq!((hit.exptime, hit.ttl), (T0 + 100, 100));
    clock.advance(100);
    assert_eq!(c.get(b"future"), GetOutcome::Expired);
}

#[test]
fn expiry_edges_negative_past_and_exact_second() {
    let (c, clock) = cache();
    assert!(matches!(
        c.store(StoreMode::Set, b"neg", b("v"), 0, -1),
        StoreOutcome::Stored { .. }
    ));
    assert_eq!(
        c.get(b"neg"),
        GetOutcome::Expired,
        "negative exptime expires at once"
    );
    assert_eq!(c.get(b"neg"), GetOutcome::Miss, "expired item was removed");

    set(&c, "past", "v", 0, T0 - 1);
    assert_eq!(c.get(b"past"), GetOutcome::Expired);

    set(&c, "ten", "v", 0, 10);
    clock.advance(9);
    assert_eq!(c.get(b"ten").hit().unwrap().ttl, 1);
    clock.advance(1);
    assert_eq!(
        c.get(b"ten"),
        GetOutcome::Expired,
        "expires at exptime itself"
    );

    set(&c, "never", "v", 0, 0);
    clock.advance(10 * 365 * 86_400);
    assert!(c.get(b"never").hit().is_some());
}

#[test]
fn negative_exptime_overwrites_existing_item() {
    let (c, _) = cache();
    set(&c, "k", "old", 0, 0);
    set(&c, "k", "new", 0, -1);
    assert!(c.get(b"k").is_miss());
}

#[test]
fn add_and_replace_conditions() {
    let (c, clock) = cache();
    assert_eq!(
        c.store(StoreMode::Replace, b"k", b("v"), 0, 0),
        StoreOutcome::NotStored
    );
    assert!(matches!(
        c.store(StoreMode::Add, b"k", b("v1"), 0, 5),
        StoreOutcome::Stored { .. }
    ));
    assert_eq!(
        c.store(StoreMode::Add, b"k", b("v2"), 0, 0),
        StoreOutcome::NotStored
    );
    assert!(matches!(
        c.store(StoreMode::Replace, b"k", b("v3"), 3, 5),
        StoreOutcome::Stored { .. }
    ));
    assert_eq!(value(&c, "k").as_deref(), Some("v3"));
    clock.advance(5);
    assert!(
        matches!(
            c.store(StoreMode::Add, b"k", b("v4"), 0, 0),
            StoreOutcome::Stored { .. }
        ),
        "add succeeds over an expired item"
    );
    assert_eq!(value(&c, "k").as_deref(), Some("v4"));
}

#[test]
fn cas_stored_exists_not_found() {
    let (c, clock) = cache();
    assert_eq!(
        c.store_if(StoreMode::Set, Some(1), b"k", b("v"), 0, 0),
        StoreOutcome::NotFound
    );
    let cas = set(&c, "k", "v1", 0, 10);
    assert_eq!(
        c.store_if(StoreMode::Set, Some(cas + 1), b"k", b("x"), 0, 0),
        StoreOutcome::Exists
    );
    assert_eq!(
        c.store_if(StoreMode::Set, Some(0), b"k", b("x"), 0, 0),
        StoreOutcome::Exists
    );
    let StoreOutcome::Stored { cas: cas2 } =
        c.store_if(StoreMode::Set, Some(cas), b"k", b("v2"), 9, 0)
    else {
        panic!()
    };
    assert!(cas2 > cas);
    let hit = c.get(b"k").hit().unwrap();
    assert_eq!((&hit.value[..], hit.flags, hit.cas), (&b"v2"[..], 9, cas2));
    assert_eq!(
        c.store_if(StoreMode::Set, Some(cas), b"k", b("v3"), 0, 0),
        StoreOutcome::Exists
    );
    // An expired item is gone for CAS purposes.
    let cas3 = set(&c, "t", "v", 0, 1);
    clock.advance(1);
    assert_eq!(
        c.store_if(StoreMode::Set, Some(cas3), b"t", b("v"), 0, 0),
        StoreOutcome::NotFound
    );
}

#[test]
fn append_prepend_keep_flags_and_exptime() {
    let (c, clock) = cache();
    assert_eq!(
        c.store(StoreMode::Append, b"k", b("x"), 0, 0),
        StoreOutcome::NotStored
    );
    assert_eq!(
        c.store(StoreMode::Prepend, b"k", b("x"), 0, 0),
        StoreOutcome::NotStored
    );
    let cas = set(&c, "k", "mid", 42, 100);
    let StoreOutcome::Stored { cas: c2 } = c.store(StoreMode::Append, b"k", b("-end"), 7, 0) else {
        panic!()
    };
    assert!(c2 > cas, "append bumps the CAS");
    c.store(StoreMode::Prepend, b"k", b("start-"), 8, 5);
    let hit = c.get(b"k").hit().unwrap();
    assert_eq!(&hit.value[..], b"start-mid-end");
    assert_eq!(hit.flags, 42, "flags of the existing item are kept");
    assert_eq!(
        hit.exptime,
        T0 + 100,
        "exptime of the existing item is kept"
    );
    clock.advance(100);
    assert!(c.get(b"k").is_miss());
}

#[test]
fn append_beyond_max_item_size_is_too_large_and_keeps_item() {
    let (c, _) = cache_with(CacheConfig {
        max_item_size: 200,
        ..CacheConfig::default()
    });
    set(&c, "k", &"a".repeat(100), 0, 0);
    assert_eq!(
        c.store(StoreMode::Append, b"k", b(&"b".repeat(100)), 0, 0),
        StoreOutcome::TooLarge
    );
    assert_eq!(value(&c, "k").unwrap().len(), 100);
}

#[test]
fn delete_semantics() {
    let (c, clock) = cache();
    assert_eq!(c.delete(b"k"), DeleteOutcome::NotFound);
    set(&c, "k", "v", 0, 0);
    assert_eq!(c.delete(b"k"), DeleteOutcome::Deleted);
    assert_eq!(c.delete(b"k"), DeleteOutcome::NotFound);
    assert!(c.get(b"k").is_miss());
    set(&c, "e", "v", 0, 1);
    clock.advance(1);
    assert_eq!(
        c.delete(b"e"),
        DeleteOutcome::NotFound,
        "expired items cannot be deleted"
    );
}

#[test]
fn incr_wraps_and_decr_floors() {
    let (c, _) = cache();
    assert_eq!(c.incr_decr(b"n", 1, true), ArithOutcome::NotFound);
    set(&c, "n", "18446744073709551610", 5, 0);
    let ArithOutcome::Value { value: n, cas, .. } = c.incr_decr(b"n", 10, true) else {
        panic!()
    };
    assert_eq!(n, 4, "incr wraps at 2^64");
    let hit = c.get(b"n").hit().unwrap();
    assert_eq!(hit.cas, cas);
    assert_eq!(hit.flags, 5, "flags survive incr");
    assert_eq!(
        &hit.value[..],
        b"4                   ",
        "in-place rule: padded to old length"
    );

    set(&c, "d", "5", 0, 0);
    assert!(matches!(
        c.incr_decr(b"d", 10, false),
        ArithOutcome::Value { value: 0, .. }
    ));
    assert_eq!(value(&c, "d").as_deref(), Some("0"));
    assert!(matches!(
        c.incr_decr(b"d", u64::MAX, true),
        ArithOutcome::Value {
            value: u64::MAX,
            ..
        }
    ));
    assert_eq!(value(&c, "d").as_deref(), Some("18446744073709551615"));
}

#[test]
fn incr_length_rules_match_memcached() {
    let (c, _) = cache();
    set(&c, "w", "100", 0, 0);
    assert!(matches!(
        c.incr_decr(b"w", 1, false),
        ArithOutcome::Value { value: 99, .. }
    ));
    assert_eq!(
        value(&c, "w").as_deref(),
        Some("99 "),
        "shrinking keeps the length, space padded"
    );
    assert!(matches!(
        c.incr_decr(b"w", 1, true),
        ArithOutcome::Value { value: 100, .. }
    ));
    assert_eq!(value(&c, "w").as_deref(), Some("100"));
    set(&c, "g", "99", 0, 0);
    c.incr_decr(b"g", 1, true);
    assert_eq!(
        value(&c, "g").as_deref(),
        Some("100"),
        "growing gets the exact length"
    );
}

#[test]
fn incr_parsing_edge_cases() {
    let (c, _) = cache();
    set(&c, "s", "  12", 0, 0);
    assert!(matches!(
        c.incr_decr(b"s", 1, true),
        ArithOutcome::Value { value: 13, .. }
    ));
    assert_eq!(value(&c, "s").as_deref(), Some("13  "));
    for bad in [
        "abc",
        "",
        "-1",
        "1a2",
        "12abc",
        "18446744073709551616",
        "123456789012345678901",
    ] {
        set(&c, "x", bad, 0, 0);
        assert_eq!(
            c.incr_decr(b"x", 1, true),
            ArithOutcome::NonNumeric,
            "{bad:?}"
        );
        assert_eq!(
            value(&c, "x").as_deref(),
            Some(bad),
            "non-numeric leaves the value alone"
        );
    }
    // memcached accepts leading zeros of any length (strtoull does).
    set(&c, "z", "000000000000000000000000000001", 0, 0);
    assert!(matches!(
        c.incr_decr(b"z", 1, true),
        ArithOutcome::Value { value: 2, .. }
    ));
}

#[test]
fn touch_and_gat() {
    let (c, clock) = cache();
    assert!(!c.touch(b"k", 10));
    assert_eq!(c.get_and_touch(b"k", 10), GetOutcome::Miss);
    set(&c, "k", "v", 0, 10);
    clock.advance(5);
    assert!(c.touch(b"k", 10));
    clock.advance(9);
    assert!(c.get(b"k").hit().is_some(), "touch replaced the exptime");
    let hit = c.get_and_touch(b"k", 100).hit().unwrap();
    assert_eq!(
        (&hit.value[..], hit.ttl, hit.exptime),
        (&b"v"[..], 100, T0 + 114)
    );
    clock.advance(99);
    assert!(c.get(b"k").hit().is_some());
    assert!(c.touch(b"k", 0));
    clock.advance(1_000_000);
    assert!(c.get(b"k").hit().is_some(), "touch 0 = never expires");
    assert!(
        c.get_and_touch(b"k", -1).hit().is_some(),
        "gat returns the item it expires"
    );
    assert_eq!(c.get(b"k"), GetOutcome::Expired);
}

#[test]
fn flush_all_now_spares_later_stores_in_same_second() {
    let (c, _) = cache();
    set(&c, "a", "1", 0, 0);
    set(&c, "b", "1", 0, 0);
    c.flush_all(0);
    set(&c, "b", "2", 0, 0);
    assert_eq!(c.get(b"a"), GetOutcome::Flushed);
    assert_eq!(c.get(b"a"), GetOutcome::Miss);
    assert_eq!(value(&c, "b").as_deref(), Some("2"));
    assert_eq!(
        c.store(StoreMode::Replace, b"a", b("x"), 0, 0),
        StoreOutcome::NotStored
    );
    c.flush_all(-5);
    assert_eq!(c.get(b"b"), GetOutcome::Flushed, "negative delay = now");
}

#[test]
fn flush_all_with_delay() {
    let (c, clock) = cache();
    set(&c, "before", "v", 0, 0);
    c.flush_all(10);
    clock.advance(3);
    set(&c, "during", "v", 0, 0);
    clock.advance(6); // T0 + 9
    assert!(
        c.get(b"before").hit().is_some(),
        "not yet at the flush point"
    );
    assert!(c.get(b"during").hit().is_some());
    clock.advance(1); // T0 + 10: flush point reached
    set(&c, "after", "v", 0, 0);
    assert_eq!(c.get(b"before"), GetOutcome::Flushed);
    assert_eq!(
        c.get(b"during"),
        GetOutcome::Flushed,
        "stored before the flush point"
    );
    assert!(
        c.get(b"after").hit().is_some(),
        "stored at the flush point survives"
    );
    clock.advance(100);
    assert!(c.get(b"after").hit().is_some());
}

#[test]
fn later_flush_replaces_pending_one_but_not_a_fired_one() {
    let (c, clock) = cache();
    set(&c, "a", "v", 0, 0);
    c.flush_all(10);
    c.flush_all(20); // replaces the pending flush
    clock.advance(10);
    assert!(c.get(b"a").hit().is_some());
    clock.advance(10);
    set(&c, "b", "v", 0, 0);
    assert_eq!(c.get(b"a"), GetOutcome::Flushed);
    // The fired flush keeps covering old items after a new one is scheduled.
    set(&c, "c", "v", 0, 0);
    clock.advance(1);
    c.flush_all(100);
    assert!(c.get(b"b").hit().is_some());
    assert!(c.get(b"c").hit().is_some());
}

#[test]
fn flush_all_absolute_time() {
    let (c, clock) = cache();
    set(&c, "a", "v", 0, 0);
    c.flush_all(T0 + 50);
    clock.advance(49);
    assert!(c.get(b"a").hit().is_some());
    clock.advance(1);
    assert_eq!(c.get(b"a"), GetOutcome::Flushed);
}

#[test]
fn too_large_and_out_of_memory() {
    let (c, _) = cache_with(CacheConfig {
        memory_limit: 10_000,
        max_item_size: 1000,
        shards: 1,
    });
    let fits = 1000 - ITEM_OVERHEAD as usize - 1;
    assert!(matches!(
        c.store(StoreMode::Set, b"k", Bytes::from(vec![b'x'; fits]), 0, 0),
        StoreOutcome::Stored { .. }
    ));
    assert_eq!(
        c.store(
            StoreMode::Set,
            b"k",
            Bytes::from(vec![b'x'; fits + 1]),
            0,
            0
        ),
        StoreOutcome::TooLarge
    );
    assert!(
        c.get(b"k").is_miss(),
        "a failed set removes the old value, like memcached"
    );

    let (small, _) = cache_with(CacheConfig {
        memory_limit: 500,
        max_item_size: 1000,
        shards: 0,
    });
    assert_eq!(
        small.store(StoreMode::Set, b"k", Bytes::from(vec![b'x'; 600]), 0, 0),
        StoreOutcome::OutOfMemory,
        "bigger than the whole memory limit"
    );
    let st = small.stats();
    assert_eq!((st.store_no_memory, st.store_too_large), (1, 0));
    assert_eq!(c.stats().store_too_large, 1);
}

#[test]
fn stats_track_items_and_bytes() {
    let (c, clock) = cache();
    set(&c, "a", "12345", 0, 0);
    set(&c, "bb", "1", 0, 1);
    set(&c, "a", "123", 0, 0);
    let st = c.stats();
    assert_eq!(st.curr_items, 2);
    assert_eq!(st.total_items, 3);
    assert_eq!(st.bytes, item_size(1, 3) + item_size(2, 1));
    assert_eq!(st.limit_maxbytes, CacheConfig::default().memory_limit);
    clock.advance(1);
    assert_eq!(c.get(b"bb"), GetOutcome::Expired);
    let st = c.stats();
    assert_eq!(
        (st.curr_items, st.reclaimed, st.expired_unfetched),
        (1, 1, 1)
    );
    assert_eq!(st.bytes, item_size(1, 3));
    c.delete(b"a");
    assert_eq!(c.stats().bytes, 0);
    assert!(c.is_empty());
}

#[test]
fn eviction_keeps_bytes_under_limit_and_prefers_cold_items() {
    // The limit bounds the heap really held (about 1050 bytes for each of
    // these items: data block, slot, index), so 100 items of memcached
    // size 1000 fit in 120 000 bytes, but not many more.
    let limit = 120_000;
    let (c, _) = cache_with(CacheConfig {
        memory_limit: limit,
        max_item_size: 10_000,
        shards: 1,
    });
    let val = Bytes::from(vec![b'v'; 1000 - 4 - ITEM_OVERHEAD as usize]); // 1000 bytes per item
    for i in 0..100 {
        c.store(
            StoreMode::Set,
            format!("k{i:03}").as_bytes(),
            val.clone(),
            0,
            0,
        );
    }
    let st = c.stats();
    assert_eq!(st.bytes, 100_000, "memcached's item sizes");
    assert!(st.bytes < st.heap_bytes && st.heap_bytes <= limit, "{st:?}");
    assert_eq!(st.evictions, 0);
    // Keep the first 20 keys hot while 200 new keys stream through.
    for i in 0..200 {
        for h in 0..20 {
            assert!(
                c.get(format!("k{h:03}").as_bytes()).hit().is_some(),
                "hot key k{h:03} evicted at step {i}"
            );
        }
        c.store(
            StoreMode::Set,
            format!("n{i:03}").as_bytes(),
            val.clone(),
            0,
            0,
        );
        let st = c.stats();
        assert!(
            st.bytes <= st.heap_bytes && st.heap_bytes <= limit,
            "{st:?}"
        );
    }
    let st = c.stats();
    assert_eq!(st.curr_items + st.evictions, 300);
    assert!(
        (180..=200).contains(&st.evictions),
        "about one eviction per new item once full: {st:?}"
    );
    assert_eq!(
        st.evicted_unfetched, st.evictions,
        "only cold, never read items were evicted: {st:?}"
    );
    // The most recent inserts are present, the oldest cold ones are gone.
    assert!(c.get(b"n199").hit().is_some());
    assert!(c.get(b"k050").is_miss());
}

#[test]
fn eviction_with_mixed_sizes_never_exceeds_limit() {
    let limit = 1 << 20;
    let (c, _) = cache_with(CacheConfig {
        memory_limit: limit,
        max_item_size: 64 * 1024,
        shards: 0,
    });
    let mut x: u64 = 12345;
    for i in 0..5000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (x >> 33) as usize % 20_000;
        let key = format!("key{}", i % 700);
        let out = c.store(
            StoreMode::Set,
            key.as_bytes(),
            Bytes::from(vec![0u8; len]),
            0,
            0,
        );
        assert!(matches!(out, StoreOutcome::Stored { .. }), "{out:?}");
        if i % 3 == 0 {
            c.store(
                StoreMode::Append,
                key.as_bytes(),
                Bytes::from(vec![1u8; len / 4]),
                0,
                0,
            );
        }
        let st = c.stats();
        assert!(
            st.bytes <= st.heap_bytes && st.heap_bytes <= limit,
            "{st:?}"
        );
    }
    assert!(c.stats().evictions > 0);
}

#[test]
fn cache_is_usable_with_tiny_or_zero_limits() {
    let (c, _) = cache_with(CacheConfig {
        memory_limit: 0,
        max_item_size: 0,
        shards: 0,
    });
    assert_eq!(
        c.store(StoreMode::Set, b"k", b("v"), 0, 0),
        StoreOutcome::TooLarge
    );
    assert!(c.get(b"k").is_miss());
    assert_eq!(c.incr_decr(b"k", 1, true), ArithOutcome::NotFound);
    c.flush_all(0);
    assert_eq!(c.stats().bytes, 0);
}

#[test]
fn oldest_item_age_is_the_least_recent_access() {
    let (c, clock) = cache();
    assert_eq!(c.oldest_item_age(), None, "empty");
    set(&c, "a", "1", 0, 0);
    clock.advance(5);
    set(&c, "b", "2", 0, 0);
    clock.advance(3);
    assert_eq!(c.oldest_item_age(), Some(8), "a, stored 8 s ago");
    assert!(c.get(b"a").hit().is_some());
    assert_eq!(
        c.oldest_item_age(),
        Some(3),
        "a was read: b is the oldest now"
    );
    c.delete(b"b");
    assert_eq!(c.oldest_item_age(), Some(0));
}
