//! Internal storage: one shard = hash index + slot arena + CLOCK eviction.
//!
//! A [`Shard`] owns its items, its byte budget and its counters; the
//! [`Cache`](crate::Cache) wraps each shard in an `RwLock`. Readers take
//! the read lock and record accesses through atomics inside the item
//! (fetched bit, last access, CLOCK reference bit), so concurrent `get`s
//! on a shard never wait for each other. Anything that changes an item's
//! value, CAS, expiry or presence takes the write lock, which makes each
//! such operation (CAS compare-and-store, append, incr, ...) atomic.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};

use bytes::Bytes;
use hashbrown::HashTable;

use crate::expiry::is_expired;

/// One stored item. Fields that only change under the write lock are
/// plain; the access bookkeeping that readers update is atomic.
#[derive(Debug)]
pub(crate) struct Item {
    pub value: Bytes,
    pub flags: u32,
    pub cas: u64,
    /// Store sequence number, drawn from the same counter as CAS uniques.
    /// Kept separate from `cas` because meta `E` lets clients pick any CAS,
    /// which must not change whether `flush_all` covers the item.
    pub seq: u64,
    /// Absolute expiry (Unix seconds), 0 = never.
    pub exptime: i64,
    /// When the value was stored; a delayed `flush_all` invalidates items
    /// stored before its deadline.
    pub stored_at: i64,
    /// Marked stale by meta invalidation (`md I`, `ms I`).
    pub stale: bool,
    /// A meta win token (`W`) has been handed out for this item.
    pub token_sent: AtomicBool,
    /// Fetched at least once (meta `h`, `*_unfetched` stats).
    pub fetched: AtomicBool,
    /// Last access (Unix seconds).
    pub last_access: AtomicI64,
    /// CLOCK reference bit: set on access, cleared by the eviction hand.
    pub referenced: AtomicBool,
}

impl Item {
    pub fn new(value: Bytes, flags: u32, cas: u64, seq: u64, exptime: i64, now: i64) -> Self {
        Self {
            value,
            flags,
            cas,
            seq,
            exptime,
            stored_at: now,
            stale: false,
            token_sent: AtomicBool::new(false),
            fetched: AtomicBool::new(false),
            last_access: AtomicI64::new(now),
            referenced: AtomicBool::new(false),
        }
    }

    /// Record an access. Loads before stores so a hot item that is
    /// already marked does not bounce its cache line between readers.
    #[inline]
    pub fn bump(&self, now: i64) {
        if !self.fetched.load(Relaxed) {
            self.fetched.store(true, Relaxed);
        }
        if self.last_access.load(Relaxed) != now {
            self.last_access.store(now, Relaxed);
        }
        if !self.referenced.load(Relaxed) {
            self.referenced.store(true, Relaxed);
        }
    }
}

/// Validity of an item at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    Live,
    Expired,
    Flushed,
}

/// Everything needed to judge validity, loaded once per operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Validator {
    pub now: i64,
    /// Items with `seq` below this were stored before an immediate flush.
    pub seq_floor: u64,
    /// Items stored before this second were covered by a delayed flush
    /// that has already fired.
    pub fired_before: i64,
    /// Pending delayed flush deadline (0 = none).
    pub pending_at: i64,
}

impl Validator {
    #[inline]
    pub fn liveness(&self, item: &Item) -> Liveness {
        let flushed = item.seq < self.seq_floor
            || item.stored_at < self.fired_before
            || (self.pending_at != 0
                && self.now >= self.pending_at
                && item.stored_at < self.pending_at);
        if flushed {
            Liveness::Flushed
        } else if is_expired(item.exptime, self.now) {
            Liveness::Expired
        } else {
            Liveness::Live
        }
    }
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub hash: u64,
    pub key: Box<[u8]>,
    pub weight: u64,
    pub item: Item,
}

/// Monotonic per-shard counters, updated under the shard write lock (so
/// they cost no atomics) and summed by `Cache::stats`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ShardCounters {
    pub total_items: u64,
    pub evictions: u64,
    pub evicted_unfetched: u64,
    pub reclaimed: u64,
    pub expired_unfetched: u64,
}

#[derive(Debug)]
pub(crate) struct Shard {
    index: HashTable<usize>,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    hand: usize,
    pub bytes: u64,
    pub items: u64,
    pub capacity: u64,
    pub counters: ShardCounters,
}

impl Shard {
    pub fn new(capacity: u64) -> Self {
        Self {
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            bytes: 0,
            items: 0,
            capacity,
            counters: ShardCounters::default(),
        }
    }

    /// Slot of `key`, valid or not.
    #[inline]
    pub fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| {
                slots
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|e| &*e.key == key)
            })
            .copied()
    }

    #[inline]
    pub fn entry(&self, idx: usize) -> Option<&Entry> {
        self.slots.get(idx).and_then(Option::as_ref)
    }

    #[inline]
    pub fn entry_mut(&mut self, idx: usize) -> Option<&mut Entry> {
        self.slots.get_mut(idx).and_then(Option::as_mut)
    }

    /// Slot of a *valid* item for `key`. A dead (expired / flushed) item
    /// found on the way is removed and counted as reclaimed, and its
    /// liveness is returned so callers can report Expired / Flushed.
    pub fn find_live(&mut self, hash: u64, key: &[u8], v: &Validator) -> Result<usize, Liveness> {
        let Some(idx) = self.find(hash, key) else {
            // "Live" here only means "nothing dead was found": a plain miss.
            return Err(Liveness::Live);
        };
        let state = match self.entry(idx) {
            Some(e) => v.liveness(&e.item),
            None => return Err(Liveness::Live),
        };
        if state == Liveness::Live {
            Ok(idx)
        } else {
            self.reclaim(idx);
            Err(state)
        }
    }

    /// Remove a dead item, counting it as reclaimed.
    pub fn reclaim(&mut self, idx: usize) {
        if let Some(e) = self.remove(idx) {
            self.counters.reclaimed += 1;
            if !e.item.fetched.load(Relaxed) {
                self.counters.expired_unfetched += 1;
            }
        }
    }

    /// Unlink and return the entry in `idx`.
    pub fn remove(&mut self, idx: usize) -> Option<Entry> {
        let entry = self.slots.get_mut(idx)?.take()?;
        if let Ok(found) = self.index.find_entry(entry.hash, |&i| i == idx) {
            found.remove();
        }
        self.free.push(idx);
        self.bytes = self.bytes.saturating_sub(entry.weight);
        self.items = self.items.saturating_sub(1);
        Some(entry)
    }

    /// Insert a new entry (the key must not be present), evicting until it
    /// fits. Returns false, storing nothing, if it cannot fit even in an
    /// empty shard.
    pub fn insert(
        &mut self,
        hash: u64,
        key: &[u8],
        item: Item,
        weight: u64,
        v: &Validator,
    ) -> bool {
        if weight > self.capacity {
            return false;
        }
        while self.bytes.saturating_add(weight) > self.capacity {
            if !self.evict_one(v) {
                return false;
            }
        }
        let entry = Entry {
            hash,
            key: key.into(),
            weight,
            item,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(entry);
                i
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, idx, |&i| {
            slots.get(i).and_then(Option::as_ref).map_or(0, |e| e.hash)
        });
        self.bytes += weight;
        self.items += 1;
        self.counters.total_items += 1;
        true
    }

    /// Free one item with the CLOCK hand: dead items go first, then the
    /// first item whose reference bit is clear (bits are cleared as the
    /// hand passes, so an item survives only if it was accessed since the
    /// hand last went by). Returns false if the shard is empty.
    fn evict_one(&mut self, v: &Validator) -> bool {
        let n = self.slots.len();
        if n == 0 || self.items == 0 {
            return false;
        }
        // Two full turns: the first may only clear reference bits, the
        // second is then guaranteed to find a victim.
        for _ in 0..=2 * n {
            let idx = self.hand % n;
            self.hand = (idx + 1) % n;
            let Some(entry) = self.slots[idx].as_mut() else {
                continue;
            };
            if v.liveness(&entry.item) != Liveness::Live {
                self.reclaim(idx);
                return true;
            }
            if std::mem::replace(entry.item.referenced.get_mut(), false) {
                continue;
            }
            let unfetched = !*entry.item.fetched.get_mut();
            self.remove(idx);
            self.counters.evictions += 1;
            if unfetched {
                self.counters.evicted_unfetched += 1;
            }
            return true;
        }
        false
    }
}
