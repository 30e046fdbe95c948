//! The [`Cache`] handle: sharding, flush state, CAS generation and the
//! classic text-protocol operations (`get`, `set`, `incr`, `touch`, ...).
//!
//! Meta-protocol operations are implemented in [`crate::meta`] on the same
//! type; both share the store path in this module so classic and meta
//! commands cannot disagree about CAS, expiry or size rules.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use crate::clock::{Clock, SystemClock};
use crate::config::{item_size, CacheConfig};
use crate::expiry::{absolute_exptime, remaining_ttl};
use crate::outcome::{ArithOutcome, DeleteOutcome, GetOutcome, ItemView, StoreOutcome};
use crate::stats::CacheStats;
use crate::store::{hash_key, item_heap_cost, Item, Liveness, Shard, Validator};
use memroute_proto::item::{ArithMode, StoreMode};

/// What a store must do; the common form of classic storage commands and
/// meta `ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreRequest {
    pub mode: StoreMode,
    pub flags: u32,
    /// Raw client exptime (converted with `absolute_exptime`).
    pub exptime: i64,
    pub compare_cas: Option<u64>,
    pub new_cas: Option<u64>,
    /// `ms I`: a CAS older than the item's stores the value as stale.
    pub invalidate: bool,
    /// `ms MA N<ttl>`: append/prepend on a miss creates the item.
    pub vivify_exptime: Option<i64>,
}

/// State of `flush_all`, read (three relaxed loads) by every operation.
#[derive(Debug)]
struct FlushState {
    seq_floor: AtomicU64,
    fired_before: AtomicI64,
    pending_at: AtomicI64,
    /// Serializes `flush_all` calls; readers never take it.
    writer: Mutex<()>,
}

/// The embedded memcached-compatible cache. `Send + Sync`; share it
/// between worker threads with `Arc<Cache>`.
#[derive(Debug)]
pub struct Cache {
    shards: Box<[RwLock<Shard>]>,
    shard_mask: u64,
    shard_capacity: u64,
    seed: u64,
    clock: Arc<dyn Clock>,
    /// Next CAS unique / store sequence number; starts at 1.
    next_cas: AtomicU64,
    flush: FlushState,
    config: CacheConfig,
    store_too_large: AtomicU64,
    store_no_memory: AtomicU64,
}

impl Cache {
    /// A cache on the system clock.
    pub fn new(config: CacheConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A cache on the given clock (tests use [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(mut config: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        // An item's key length is stored in 32 bits; no key can be longer
        // than the largest item.
        config.max_item_size = config.max_item_size.min(u32::MAX as usize);
        let n = config.effective_shards();
        let shard_capacity = config.memory_limit / n as u64;
        // Per-process random seed so clients cannot aim keys at one bucket.
        let seed =
            std::collections::hash_map::RandomState::new().hash_one(0x6d65_6d72_6f75_7465_u64);
        let shards = (0..n)
            .map(|_| RwLock::new(Shard::new(shard_capacity, seed)))
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Self {
            shards,
            shard_mask: n as u64 - 1,
            shard_capacity,
            seed,
            clock,
            next_cas: AtomicU64::new(1),
            flush: FlushState {
                seq_floor: AtomicU64::new(0),
                fired_before: AtomicI64::new(i64::MIN),
                pending_at: AtomicI64::new(0),
                writer: Mutex::new(()),
            },
            config,
            store_too_large: AtomicU64::new(0),
            store_no_memory: AtomicU64::new(0),
        }
    }

    /// The configuration this cache was built with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The cache clock's current Unix time (for the `time` stat).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    // ---- internals shared with meta.rs ---------------------------------

    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        hash_key(key, self.seed)
    }

    /// Shard for a hash. Uses bits 40.. so the shard choice is independent
    /// of the low bits (bucket index) and top 7 bits (control byte) that
    /// the hash table inside the shard uses.
    #[inline]
    fn shard_of(&self, hash: u64) -> &RwLock<Shard> {
        &self.shards[((hash >> 40) & self.shard_mask) as usize]
    }

    #[inline]
    pub(crate) fn read(&self, hash: u64) -> RwLockReadGuard<'_, Shard> {
        // A panic while holding a shard lock cannot leave a shard
        // half-updated in a way that matters more than losing the cache,
        // so recover from poisoning instead of propagating the panic.
        self.shard_of(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    pub(crate) fn write(&self, hash: u64) -> RwLockWriteGuard<'_, Shard> {
        self.shard_of(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    pub(crate) fn validator(&self) -> Validator {
        Validator {
            now: self.clock.now(),
            seq_floor: self.flush.seq_floor.load(Ordering::Acquire),
            fired_before: self.flush.fired_before.load(Ordering::Acquire),
            pending_at: self.flush.pending_at.load(Ordering::Acquire),
        }
    }

    /// A fresh CAS unique (also used as store sequence number).
    #[inline]
    pub(crate) fn next_cas(&self) -> u64 {
        self.next_cas.fetch_add(1, Ordering::Relaxed)
    }

    /// New item for `key` with a fresh sequence number; its value is the
    /// concatenation of `value`; CAS is `new_cas` or a fresh one.
    pub(crate) fn make_item(
        &self,
        key: &[u8],
        value: &[&[u8]],
        flags: u32,
        abs_exptime: i64,
        new_cas: Option<u64>,
        now: i64,
    ) -> Item {
        let seq = self.next_cas();
        Item::new(
            key,
            value,
            flags,
            new_cas.unwrap_or(seq),
            seq,
            abs_exptime,
            now,
        )
    }

    pub(crate) fn view(item: &Item, now: i64) -> ItemView {
        ItemView {
            value: item.value_bytes(),
            flags: item.flags,
            cas: item.cas,
            exptime: item.exptime,
            ttl: remaining_ttl(item.exptime, now),
            last_access_ago: now
                .saturating_sub(item.last_access.load(Ordering::Relaxed))
                .max(0),
            fetched: item.fetched.load(Ordering::Relaxed),
            stale: item.stale,
        }
    }

    pub(crate) fn miss_outcome(dead: Liveness) -> GetOutcome {
        match dead {
            Liveness::Live => GetOutcome::Miss,
            Liveness::Expired => GetOutcome::Expired,
            Liveness::Flushed => GetOutcome::Flushed,
        }
    }

    /// Remove the item under `key` if it is (still) dead.
    pub(crate) fn reap(&self, hash: u64, key: &[u8]) {
        let v = self.validator();
        let mut shard = self.write(hash);
        let _ = shard.find_live(hash, key, &v);
    }

    /// Size precheck for a new value: `Err` with the refusal outcome.
    /// `TooLarge` is judged on memcached's item size, `OutOfMemory` on
    /// the heap the item would take.
    fn check_size(&self, key_len: usize, value_len: usize) -> Result<(), StoreOutcome> {
        if item_size(key_len, value_len) > self.config.max_item_size as u64 {
            self.store_too_large.fetch_add(1, Ordering::Relaxed);
            Err(StoreOutcome::TooLarge)
        } else if item_heap_cost(key_len, value_len) > self.shard_capacity {
            self.store_no_memory.fetch_add(1, Ordering::Relaxed);
            Err(StoreOutcome::OutOfMemory)
        } else {
            Ok(())
        }
    }

    /// The one store path behind `store` and `meta_set`.
    pub(crate) fn store_request(
        &self,
        key: &[u8],
        value: Bytes,
        req: &StoreRequest,
    ) -> StoreOutcome {
        let plain_set = req.mode == StoreMode::Set && req.compare_cas.is_none();
        if let Err(refused) = self.check_size(key.len(), value.len()) {
            // memcached drops the old item when a set fails, so a client
            // never reads data older than the write it just attempted.
            if plain_set {
                self.delete(key);
            }
            return refused;
        }
        let hash = self.hash(key);
        let v = self.validator();
        let now = v.now;
        let mut shard = self.write(hash);
        let existing = shard.find_live(hash, key, &v).ok();

        match req.mode {
            StoreMode::Add => {
                if let Some(idx) = existing {
                    // memcached bumps the item an add collided with.
                    if let Some(item) = shard.entry(idx) {
                        item.referenced.store(true, Ordering::Relaxed);
                    }
                    return StoreOutcome::NotStored;
                }
                let item = self.make_item(
                    key,
                    &[&value],
                    req.flags,
                    absolute_exptime(req.exptime, now),
                    req.new_cas,
                    now,
                );
                self.put(&mut shard, hash, None, item, &v)
            }
            StoreMode::Set | StoreMode::Replace => {
                let Some(idx) = existing else {
                    return match (req.compare_cas, req.mode) {
                        (Some(_), _) => StoreOutcome::NotFound,
                        (None, StoreMode::Replace) => StoreOutcome::NotStored,
                        (None, _) => {
                            let item = self.make_item(
                                key,
                                &[&value],
                                req.flags,
                                absolute_exptime(req.exptime, now),
                                req.new_cas,
                                now,
                            );
                            self.put(&mut shard, hash, None, item, &v)
                        }
                    };
                };
                let Some(old) = shard.entry(idx) else {
                    return StoreOutcome::NotFound;
                };
                let mut stale_from = None;
                if let Some(cas) = req.compare_cas {
                    if cas != old.cas {
                        if !(req.invalidate && cas < old.cas) {
                            return StoreOutcome::Exists;
                        }
                        stale_from = Some((old.exptime, old.token_sent.load(Ordering::Relaxed)));
                    }
                }
                let mut item = self.make_item(
                    key,
                    &[&value],
                    req.flags,
                    absolute_exptime(req.exptime, now),
                    req.new_cas,
                    now,
                );
                if let Some((exptime, token_sent)) = stale_from {
                    // ms I with an older CAS: keep the value but as a
                    // stale copy that keeps the old TTL and win state, so
                    // the recache race is still decided by mg.
                    item.exptime = exptime;
                    item.stale = true;
                    *item.token_sent.get_mut() = token_sent;
                }
                self.put(&mut shard, hash, Some(idx), item, &v)
            }
            StoreMode::Append | StoreMode::Prepend => {
                let Some(idx) = existing else {
                    return match req.vivify_exptime {
                        Some(ttl) => {
                            let item = self.make_item(
                                key,
                                &[&value],
                                req.flags,
                                absolute_exptime(ttl, now),
                                req.new_cas,
                                now,
                            );
                            self.put(&mut shard, hash, None, item, &v)
                        }
                        None => StoreOutcome::NotStored,
                    };
                };
                let Some(old) = shard.entry(idx) else {
                    return StoreOutcome::NotStored;
                };
                if req.compare_cas.is_some_and(|cas| cas != old.cas) {
                    return StoreOutcome::Exists;
                }
                let joined_len = old.value().len().saturating_add(value.len());
                if let Err(refused) = self.check_size(key.len(), joined_len) {
                    return refused;
                }
                let parts = req.mode.join_order(old.value(), &value);
                let item = self.make_item(key, &parts, old.flags, old.exptime, req.new_cas, now);
                self.put(&mut shard, hash, Some(idx), item, &v)
            }
        }
    }

    /// Replace (`old = Some`) or insert an item under the held write lock.
    pub(crate) fn put(
        &self,
        shard: &mut Shard,
        hash: u64,
        old: Option<usize>,
        mut item: Item,
        v: &Validator,
    ) -> StoreOutcome {
        let cas = item.cas;
        if old.is_some() {
            // A rewritten key is demonstrably in use: let it start with its
            // CLOCK bit set so it is not the next victim.
            *item.referenced.get_mut() = true;
        }
        let replaced = old.and_then(|idx| shard.remove(idx));
        if shard.insert(hash, item, replaced, v) {
            StoreOutcome::Stored { cas }
        } else {
            self.store_no_memory.fetch_add(1, Ordering::Relaxed);
            StoreOutcome::OutOfMemory
        }
    }

    /// Read path shared by `get` and `meta_get` without `T`/`N`: read lock
    /// only; the access is recorded through the item's atomics.
    pub(crate) fn read_item<T>(
        &self,
        key: &[u8],
        f: impl FnOnce(&Item, i64) -> T,
    ) -> Result<T, Liveness> {
        let hash = self.hash(key);
        let v = self.validator();
        let dead = {
            let shard = self.read(hash);
            let Some(item) = shard.find(hash, key).and_then(|i| shard.entry(i)) else {
                return Err(Liveness::Live);
            };
            match v.liveness(item) {
                Liveness::Live => return Ok(f(item, v.now)),
                dead => dead,
            }
        };
        // Free the dead item now rather than waiting for the eviction hand.
        self.reap(hash, key);
        Err(dead)
    }

    // ---- classic protocol ----------------------------------------------

    /// `get` / `gets`: fetch one key and record the access.
    pub fn get(&self, key: &[u8]) -> GetOutcome {
        match self.read_item(key, |item, now| {
            let view = Self::view(item, now);
            item.bump(now);
            view
        }) {
            Ok(view) => GetOutcome::Hit(view),
            Err(dead) => Self::miss_outcome(dead),
        }
    }

    /// `gat` / `gats`: fetch and set a new exptime (same rules as `set`).
    pub fn get_and_touch(&self, key: &[u8], exptime: i64) -> GetOutcome {
        let hash = self.hash(key);
        let v = self.validator();
        let mut shard = self.write(hash);
        let idx = match shard.find_live(hash, key, &v) {
            Ok(idx) => idx,
            Err(dead) => return Self::miss_outcome(dead),
        };
        let Some(item) = shard.entry_mut(idx) else {
            return GetOutcome::Miss;
        };
        let before = Self::view(item, v.now);
        item.exptime = absolute_exptime(exptime, v.now);
        item.bump(v.now);
        GetOutcome::Hit(ItemView {
            exptime: item.exptime,
            ttl: remaining_ttl(item.exptime, v.now),
            ..before
        })
    }

    /// `touch`: set a new exptime; false if the key holds no valid item.
    pub fn touch(&self, key: &[u8], exptime: i64) -> bool {
        self.get_and_touch(key, exptime).hit().is_some()
    }

    /// `set` / `add` / `replace` / `append` / `prepend`.
    ///
    /// `flags` and `exptime` are ignored by append/prepend (the existing
    /// item's are kept), as in memcached.
    pub fn store(
        &self,
        mode: StoreMode,
        key: &[u8],
        value: Bytes,
        flags: u32,
        exptime: i64,
    ) -> StoreOutcome {
        self.store_if(mode, None, key, value, flags, exptime)
    }

    /// A classic storage command: `mode`, and the CAS unique the item must
    /// still have if `compare_cas` is given (`cas <unique>` is a `set`
    /// with one; see [`StoreMode::of_command`]).
    pub fn store_if(
        &self,
        mode: StoreMode,
        compare_cas: Option<u64>,
        key: &[u8],
        value: Bytes,
        flags: u32,
        exptime: i64,
    ) -> StoreOutcome {
        let req = StoreRequest {
            mode,
            flags,
            exptime,
            compare_cas,
            new_cas: None,
            invalidate: false,
            vivify_exptime: None,
        };
        self.store_request(key, value, &req)
    }

    /// `delete`.
    pub fn delete(&self, key: &[u8]) -> DeleteOutcome {
        self.delete_sized(key).0
    }

    /// `delete`, with the length of the value it removed (0 when none):
    /// what memcached's `watch deletions` reports.
    pub fn delete_sized(&self, key: &[u8]) -> (DeleteOutcome, usize) {
        let hash = self.hash(key);
        let v = self.validator();
        let mut shard = self.write(hash);
        match shard.find_live(hash, key, &v) {
            Ok(idx) => {
                let size = shard.remove(idx).map_or(0, |item| item.value().len());
                (DeleteOutcome::Deleted, size)
            }
            Err(_) => (DeleteOutcome::NotFound, 0),
        }
    }

    /// `incr` (`incr = true`) / `decr`: unsigned 64-bit arithmetic on a
    /// decimal value; incr wraps at 2^64, decr stops at 0. The stored
    /// value keeps memcached's length rule (space padded when it shrinks).
    pub fn incr_decr(&self, key: &[u8], delta: u64, incr: bool) -> ArithOutcome {
        self.meta_arith(
            key,
            &crate::meta::MetaArithOptions {
                mode: if incr {
                    ArithMode::Incr
                } else {
                    ArithMode::Decr
                },
                delta,
                ..Default::default()
            },
        )
    }

    /// `flush_all [delay]`: invalidate every item stored before the flush
    /// point. `delay <= 0` flushes now; otherwise the flush point is
    /// `absolute_exptime(delay)` (so > 30 days means a Unix time), and
    /// items stored before it become invalid once it is reached. A new
    /// `flush_all` replaces a pending one that has not fired yet.
    pub fn flush_all(&self, delay: i64) {
        let _writer = self
            .flush
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = self.clock.now();
        let pending = self.flush.pending_at.load(Ordering::Acquire);
        if pending != 0 && now >= pending {
            // The pending flush has fired: keep its effect permanently
            // before the slot is reused.
            let fired = self.flush.fired_before.load(Ordering::Acquire).max(pending);
            self.flush.fired_before.store(fired, Ordering::Release);
        }
        let at = if delay <= 0 {
            now
        } else {
            absolute_exptime(delay, now)
        };
        if at <= now {
            // Draw a sequence number: every item stored so far has a lower
            // one, every later store a higher one. Exact even within the
            // current second.
            let floor = self.next_cas();
            self.flush.seq_floor.store(floor, Ordering::Release);
            self.flush.pending_at.store(0, Ordering::Release);
        } else {
            self.flush.pending_at.store(at, Ordering::Release);
        }
    }

    /// Occupancy and eviction counters.
    pub fn stats(&self) -> CacheStats {
        let mut s = CacheStats {
            limit_maxbytes: self.config.memory_limit,
            item_size_max: self.config.max_item_size as u64,
            store_too_large: self.store_too_large.load(Ordering::Relaxed),
            store_no_memory: self.store_no_memory.load(Ordering::Relaxed),
            shards: self.shards.len() as u64,
            ..CacheStats::default()
        };
        for lock in self.shards.iter() {
            let shard = lock.read().unwrap_or_else(PoisonError::into_inner);
            s.curr_items += shard.items;
            s.bytes += shard.bytes;
            s.heap_bytes += shard.heap_bytes();
            s.total_items += shard.counters.total_items;
            s.evictions += shard.counters.evictions;
            s.evicted_unfetched += shard.counters.evicted_unfetched;
            s.reclaimed += shard.counters.reclaimed;
            s.expired_unfetched += shard.counters.expired_unfetched;
        }
        s
    }

    /// Seconds since the least recently used item was last accessed (what
    /// memcached's `stats items` calls `age`: the age of its LRU tail);
    /// `None` when the cache is empty. Expired items not yet reclaimed count,
    /// as in memcached. Reads every item (one shard at a time, under its read
    /// lock), so it is for `stats items`, not for the request path.
    pub fn oldest_item_age(&self) -> Option<u64> {
        let oldest = self
            .shards
            .iter()
            .filter_map(|lock| {
                lock.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .oldest_access()
            })
            .min()?;
        Some(self.now().saturating_sub(oldest).max(0) as u64)
    }

    /// Number of stored items (same as `stats().curr_items`).
    pub fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|l| l.read().unwrap_or_else(PoisonError::into_inner).items)
            .sum()
    }

    /// True if no item is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
