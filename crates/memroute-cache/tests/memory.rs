//! Issue 16: the memory limit bounds the heap the cache really holds.
//!
//! A counting global allocator asks the C allocator for the real size of
//! every block (`malloc_usable_size`, plus the 8-byte chunk header), so
//! allocator headers and size-class rounding are measured, not assumed.
//! Each fill goes far past the limit with 10-byte keys; the live heap must
//! then stay within 1.2 x the limit plus a small fixed amount, and within
//! what the cache itself says it holds (`CacheStats::heap_bytes`).
//!
//! This file holds a single test: the counters are process-wide, and tests
//! of one binary run on parallel threads.

#![allow(unsafe_code)] // the allocator below; the library forbids unsafe code

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use bytes::Bytes;
use memroute_cache::{Cache, CacheConfig, GetOutcome, StoreMode, StoreOutcome};

extern "C" {
    fn malloc_usable_size(ptr: *mut c_void) -> usize;
}

/// Chunk header of glibc malloc (one size word before the user block).
const CHUNK_HEADER: i64 = 8;

static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

struct Counting;

fn real_size(ptr: *mut u8) -> i64 {
    // SAFETY: `ptr` is a live block from the system allocator.
    unsafe { malloc_usable_size(ptr.cast()) as i64 + CHUNK_HEADER }
}

fn add(n: i64) {
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to `System`; the counting only reads the
// size of blocks that are live at that moment.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(real_size(p));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(real_size(p));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-real_size(ptr));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = real_size(ptr);
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(real_size(p) - old);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: i64 = 1 << 20;
/// What may be held beyond 1.2 x the limit: the shard array, the cache
/// handle, and the caller's value in flight.
const FIXED: i64 = MIB;

fn key(i: usize) -> [u8; 10] {
    let mut k = *b"k000000000";
    let mut n = i;
    for b in k[1..].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

/// Fill a fresh cache of `limit` bytes with `items` values of `size` bytes
/// and check the live heap; returns (real, charged) bytes per item.
fn fill(limit: u64, size: usize, items: usize) -> (f64, f64) {
    let before = LIVE.load(Relaxed);
    let cache = Cache::new(CacheConfig::with_memory_limit(limit));
    PEAK.store(LIVE.load(Relaxed), Relaxed);
    let value = vec![b'v'; size];
    for i in 0..items {
        // A fresh copy per store, as the runtime copies each value out of
        // the connection's read buffer.
        let out = cache.store(
            StoreMode::Set,
            &key(i),
            Bytes::copy_from_slice(&value),
            0,
            0,
        );
        assert!(matches!(out, StoreOutcome::Stored { .. }), "{out:?}");
    }
    let live = LIVE.load(Relaxed) - before;
    let peak = PEAK.load(Relaxed) - before;
    let st = cache.stats();
    let n = st.curr_items as f64;
    let (real, charged) = (live as f64 / n, st.heap_bytes as f64 / n);
    println!(
        "{size:>5}-byte values, limit {} MiB: {} items kept of {items}, live heap {:.2} MiB \
         (peak {:.2} MiB), counted {:.2} MiB; {real:.1} real / {charged:.1} counted / \
         {:.1} `bytes` per item",
        limit >> 20,
        st.curr_items,
        live as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        st.heap_bytes as f64 / MIB as f64,
        st.bytes as f64 / n,
    );

    let bound = (limit as f64 * 1.2) as i64 + FIXED;
    assert!(live <= bound, "live heap {live} > {bound}");
    assert!(peak <= bound, "peak heap {peak} > {bound}");
    // The accounting is honest: what the cache says it holds covers what
    // it really holds (the fixed part aside), and never passes the limit.
    assert!(live <= st.heap_bytes as i64 + FIXED, "{live} vs {st:?}");
    assert!(st.heap_bytes <= st.limit_maxbytes, "{st:?}");
    assert!(st.bytes <= st.heap_bytes, "{st:?}");
    // The fill went far past the limit: the oldest keys are gone, the
    // newest are all there.
    assert!(st.evictions > 0 && st.curr_items + st.evictions == items as u64);
    assert!(st.curr_items as usize * 2 < items, "not far past the limit");
    assert_eq!(cache.get(&key(0)), GetOutcome::Miss);
    for i in items - 100..items {
        let hit = cache.get(&key(i)).hit().expect("recent key evicted");
        assert_eq!(hit.value.len(), size);
    }

    drop(cache);
    let leaked = LIVE.load(Relaxed) - before;
    assert!(leaked.abs() < 64 * 1024, "{leaked} bytes still live");
    (real, charged)
}

#[test]
fn live_heap_stays_within_the_memory_limit() {
    // 16 MiB: two shards, like any limit below 32 MiB with 1 MiB items.
    let limit = 16 << 20;
    let (real_100, _) = fill(limit, 100, 300_000);
    let (real_1, _) = fill(limit, 1, 500_000);
    let (real_1k, _) = fill(limit, 1024, 45_000);
    // Per-item cost of the layout (10-byte key): one allocation for key
    // and value, a 72-byte slot and the index. Guards against regressions
    // of the layout, not just of the accounting.
    assert!(real_1 < 140.0, "{real_1:.1} bytes per 1-byte item");
    assert!(real_100 < 240.0, "{real_100:.1} bytes per 100-byte item");
    assert!(real_1k < 1180.0, "{real_1k:.1} bytes per 1 KiB item");
}
