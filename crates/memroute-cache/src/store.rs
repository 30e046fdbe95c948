//! Internal storage: one shard = hash index + slot arena + CLOCK eviction.
//!
//! A [`Shard`] owns its items, its byte budget and its counters; the
//! [`Cache`](crate::Cache) wraps each shard in an `RwLock`. Readers take
//! the read lock and record accesses through atomics inside the item
//! (fetched bit, last access, CLOCK reference bit), so concurrent `get`s
//! on a shard never wait for each other. Anything that changes an item's
//! value, CAS, expiry or presence takes the write lock, which makes each
//! such operation (CAS compare-and-store, append, incr, ...) atomic.

use std::mem::size_of;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashTable;

use crate::config::item_size;
use crate::expiry::is_expired;

/// The hash of a key (xxh3 with the cache's per-process seed).
#[inline]
pub(crate) fn hash_key(key: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, seed)
}

/// Heap bytes that one allocation of `n` bytes really takes, modelled on
/// glibc malloc (the system allocator memroute runs on): an 8-byte chunk
/// header, rounding to 16 bytes, a 32-byte minimum; from its 128 KiB mmap
/// threshold on, whole pages plus the header. An upper bound for blocks
/// that grow past the threshold but are still served from the heap.
/// `tests/memory.rs` checks the model against the allocator's own sizes.
pub(crate) fn heap_cost(n: usize) -> u64 {
    const PAGE: u64 = 4096;
    let n = n as u64;
    if n == 0 {
        0
    } else if n >= MMAP_THRESHOLD as u64 {
        (n + MMAP_OVERHEAD as u64).div_ceil(PAGE) * PAGE
    } else {
        ((n + CHUNK_HEADER as u64).div_ceil(16) * 16).max(32)
    }
}

/// glibc's default mmap threshold: larger blocks get their own pages.
const MMAP_THRESHOLD: usize = 128 * 1024;
/// Bytes of a heap chunk that its user cannot use (the size word).
const CHUNK_HEADER: usize = 8;
/// Upper bound of the bytes an mmapped chunk adds to its request.
const MMAP_OVERHEAD: usize = 32;
/// The two reference counts in front of an `Arc<[u8]>`'s bytes.
const ARC_HEADER: usize = 2 * size_of::<usize>();

/// Size of the `Arc<[u8]>` allocation for `len` bytes.
#[inline]
fn arc_request(len: usize) -> usize {
    ARC_HEADER
        .saturating_add(len)
        .next_multiple_of(size_of::<usize>())
}

/// Heap cost of an item's data block holding `len` bytes of key and value:
/// an `Arc<[u8]>` allocation (two reference counts, then the bytes).
#[inline]
pub(crate) fn data_cost(len: usize) -> u64 {
    heap_cost(arc_request(len))
}

/// Length of the data block made for `len` bytes: the whole chunk the
/// allocator hands out for them anyway (`data_cost` is the same), so that
/// blocks of one size class are interchangeable (see [`Item::adopt`]).
#[inline]
pub(crate) fn block_len(len: usize) -> usize {
    let request = arc_request(len);
    let usable = if request < MMAP_THRESHOLD {
        heap_cost(request) as usize - CHUNK_HEADER
    } else {
        heap_cost(request) as usize - MMAP_OVERHEAD
    };
    usable - ARC_HEADER
}

/// Heap bytes an item costs against the memory limit, apart from its slot
/// and index bucket (which are counted with the shard's arrays).
#[inline]
pub(crate) fn item_heap_cost(key_len: usize, value_len: usize) -> u64 {
    data_cost(key_len.saturating_add(value_len))
}

/// One stored item. Fields that only change under the write lock are
/// plain; the access bookkeeping that readers update is atomic.
///
/// Key and value share one allocation, `data` (key first, then value,
/// then unused bytes up to the end of the allocator's chunk): no separate
/// key box, no `Bytes` header. A reader gets the value as a `Bytes` that
/// owns a reference to `data` ([`Item::value_bytes`]). 72 bytes in all.
#[derive(Debug)]
pub(crate) struct Item {
    data: Arc<[u8]>,
    key_len: u32,
    value_len: u32,
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
    /// Last access (Unix seconds).
    pub last_access: AtomicI64,
    /// Marked stale by meta invalidation (`md I`, `ms I`).
    pub stale: bool,
    /// A meta win token (`W`) has been handed out for this item.
    pub token_sent: AtomicBool,
    /// Fetched at least once (meta `h`, `*_unfetched` stats).
    pub fetched: AtomicBool,
    /// CLOCK reference bit: set on access, cleared by the eviction hand.
    pub referenced: AtomicBool,
}

/// The value part of an item's data block, as the owner of a `Bytes`.
struct ValueOf {
    data: Arc<[u8]>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for ValueOf {
    fn as_ref(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
}

impl Item {
    /// A new item for `key` whose value is the concatenation of `value`.
    ///
    /// Key and value must each be shorter than 4 GiB: the cache caps
    /// `max_item_size` there, and every new item passes the size check.
    pub fn new(
        key: &[u8],
        value: &[&[u8]],
        flags: u32,
        cas: u64,
        seq: u64,
        exptime: i64,
        now: i64,
    ) -> Self {
        let value_len = value.iter().map(|part| part.len()).sum::<usize>();
        // One allocation of the exact size (`repeat_n` has a trusted
        // length), then filled in place.
        let len = block_len(key.len() + value_len);
        let mut data: Arc<[u8]> = std::iter::repeat_n(0u8, len).collect();
        let buf = Arc::get_mut(&mut data).expect("a new Arc is unique");
        let (head, mut rest) = buf.split_at_mut(key.len());
        head.copy_from_slice(key);
        for part in value {
            let (dst, tail) = rest.split_at_mut(part.len());
            dst.copy_from_slice(part);
            rest = tail;
        }
        Self {
            data,
            key_len: u32::try_from(key.len()).expect("keys are shorter than max_item_size"),
            value_len: u32::try_from(value_len).expect("values are shorter than max_item_size"),
            flags,
            cas,
            seq,
            exptime,
            stored_at: now,
            last_access: AtomicI64::new(now),
            stale: false,
            token_sent: AtomicBool::new(false),
            fetched: AtomicBool::new(false),
            referenced: AtomicBool::new(false),
        }
    }

    #[inline]
    pub fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }

    #[inline]
    pub fn value(&self) -> &[u8] {
        let start = self.key_len as usize;
        &self.data[start..start + self.value_len as usize]
    }

    /// The value as a refcounted `Bytes` sharing the item's data block:
    /// no copy; the view stays valid after the item is replaced or freed
    /// (a block is only reused once nobody else holds it).
    pub fn value_bytes(&self) -> Bytes {
        if self.value_len == 0 {
            return Bytes::new();
        }
        let start = self.key_len as usize;
        Bytes::from_owner(ValueOf {
            data: Arc::clone(&self.data),
            start,
            end: start + self.value_len as usize,
        })
    }

    /// memcached's item size (`key + value + ITEM_OVERHEAD`), the `bytes`
    /// stat and the `max_item_size` check.
    #[inline]
    pub fn size(&self) -> u64 {
        item_size(self.key_len as usize, self.value_len as usize)
    }

    /// Move this item's bytes into `block`, the data block of an item that
    /// was just removed, if it is of the same size class and nobody else
    /// holds it (no reader's view). The item's own, new block is then
    /// freed at once by the calling thread, which reuses it for its next
    /// allocation, while the long-lived block stays where it was.
    ///
    /// This matters with glibc's per-thread arenas: without it, a worker
    /// thread that stores more than the others grows its arena with new
    /// blocks while the blocks it evicts are freed into the other threads'
    /// arenas, where it cannot reuse them, and RSS drifts above the limit.
    pub fn adopt(&mut self, mut block: Arc<[u8]>) {
        if block.len() != self.data.len() {
            return;
        }
        if let Some(buf) = Arc::get_mut(&mut block) {
            buf.copy_from_slice(&self.data);
            self.data = block;
        }
    }

    /// Heap bytes held by this item's data block.
    #[inline]
    pub fn heap_cost(&self) -> u64 {
        data_cost(self.data.len())
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

/// One arena slot: an item, or `None` once freed (its number is then on
/// the free list). The `Arc` gives `Option` a niche: 72 bytes.
type Slot = Option<Item>;

#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Slot>() == 72);

/// Largest slot chunk: 256 slots (18 KiB), under malloc's mmap threshold.
const MAX_CHUNK_BITS: u32 = 8;

/// Slot numbers are `u32` in the index (4 bytes a bucket instead of 8).
const MAX_SLOTS: usize = u32::MAX as usize;

#[inline]
fn slot_in(chunks: &[Box<[Slot]>], bits: u32, idx: usize) -> Option<&Item> {
    chunks
        .get(idx >> bits)?
        .get(idx & ((1 << bits) - 1))?
        .as_ref()
}

/// The index's hasher: the hash of the key in slot `i`.
fn rehasher(chunks: &[Box<[Slot]>], bits: u32, seed: u64) -> impl Fn(&u32) -> u64 + '_ {
    move |&i| slot_in(chunks, bits, i as usize).map_or(0, |item| hash_key(item.key(), seed))
}

/// One shard: a hash index of slot numbers over a slot arena, CLOCK
/// eviction, and the memory accounting.
///
/// The memory limit (`capacity`) bounds [`Shard::heap_bytes`]: the heap
/// really held for this shard's items, as the allocator hands it out (see
/// [`heap_cost`]): every item's data block, the slot chunks (free slots
/// included), the index's table and the free list. `bytes` is memcached's
/// `bytes` stat, the sum of item sizes; it is always below `heap_bytes`.
#[derive(Debug)]
pub(crate) struct Shard {
    /// Slot numbers, hashed by their item's key.
    index: HashTable<u32>,
    /// The slot arena, in chunks of `1 << chunk_bits` slots that never move
    /// or grow: no reallocation copies the arena, and the slack is at most
    /// one chunk (sized at most 1/64 of the shard's capacity).
    chunks: Vec<Box<[Slot]>>,
    chunk_bits: u32,
    /// Slots handed out so far; the eviction hand sweeps `0..used`.
    used: usize,
    /// Freed slots below `used`, reused first.
    free: Vec<u32>,
    hand: usize,
    /// The cache's hash seed, to rehash keys when the index grows or an
    /// item is unlinked.
    seed: u64,
    pub bytes: u64,
    pub items: u64,
    /// Heap held by the items' data blocks.
    data_heap: u64,
    pub capacity: u64,
    pub counters: ShardCounters,
}

impl Shard {
    pub fn new(capacity: u64, seed: u64) -> Self {
        let mut chunk_bits = MAX_CHUNK_BITS;
        while chunk_bits > 0 && ((size_of::<Slot>() as u64) << chunk_bits) > capacity / 64 {
            chunk_bits -= 1;
        }
        Self {
            index: HashTable::new(),
            chunks: Vec::new(),
            chunk_bits,
            used: 0,
            free: Vec::new(),
            hand: 0,
            seed,
            bytes: 0,
            items: 0,
            data_heap: 0,
            capacity,
            counters: ShardCounters::default(),
        }
    }

    /// Heap held for this shard's items: what `capacity` bounds.
    pub fn heap_bytes(&self) -> u64 {
        let chunk = heap_cost(size_of::<Slot>() << self.chunk_bits);
        self.data_heap
            + self.chunks.len() as u64 * chunk
            + heap_cost(self.chunks.capacity() * size_of::<Box<[Slot]>>())
            + heap_cost(self.free.capacity() * size_of::<u32>())
            + heap_cost(self.index.allocation_size())
    }

    /// The earliest last access (Unix seconds) of the shard's items, if it
    /// holds any. Reads every slot: for `stats items`, not the request path.
    pub fn oldest_access(&self) -> Option<i64> {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .flatten()
            .map(|item| item.last_access.load(Relaxed))
            .min()
    }

    /// Slot of `key`, valid or not.
    #[inline]
    pub fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let (chunks, bits) = (&self.chunks, self.chunk_bits);
        self.index
            .find(hash, |&i| {
                slot_in(chunks, bits, i as usize).is_some_and(|item| item.key() == key)
            })
            .map(|&i| i as usize)
    }

    #[inline]
    pub fn entry(&self, idx: usize) -> Option<&Item> {
        slot_in(&self.chunks, self.chunk_bits, idx)
    }

    #[inline]
    fn slot_mut(&mut self, idx: usize) -> Option<&mut Slot> {
        let mask = (1 << self.chunk_bits) - 1;
        self.chunks
            .get_mut(idx >> self.chunk_bits)?
            .get_mut(idx & mask)
    }

    #[inline]
    pub fn entry_mut(&mut self, idx: usize) -> Option<&mut Item> {
        self.slot_mut(idx)?.as_mut()
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
            Some(item) => v.liveness(item),
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
    pub fn reclaim(&mut self, idx: usize) -> Option<Item> {
        let item = self.remove(idx)?;
        self.counters.reclaimed += 1;
        if !item.fetched.load(Relaxed) {
            self.counters.expired_unfetched += 1;
        }
        Some(item)
    }

    /// Unlink and return the item in `idx`.
    pub fn remove(&mut self, idx: usize) -> Option<Item> {
        let item = self.slot_mut(idx)?.take()?;
        let hash = hash_key(item.key(), self.seed);
        if let Ok(found) = self.index.find_entry(hash, |&i| i as usize == idx) {
            found.remove();
        }
        self.free.push(idx as u32);
        self.bytes = self.bytes.saturating_sub(item.size());
        self.data_heap = self.data_heap.saturating_sub(item.heap_cost());
        self.items = self.items.saturating_sub(1);
        Some(item)
    }

    /// Whether an item of this heap cost could be stored at all.
    #[inline]
    pub fn could_hold(&self, heap_cost: u64) -> bool {
        heap_cost <= self.capacity
    }

    /// Insert a new item (its key must not be present), evicting until it
    /// fits. Returns false, storing nothing, if it cannot fit even in an
    /// empty shard. `replaced` is the item this one replaces, if any: its
    /// data block, or that of an item evicted here, is reused when it can
    /// be ([`Item::adopt`]).
    pub fn insert(
        &mut self,
        hash: u64,
        mut item: Item,
        replaced: Option<Item>,
        v: &Validator,
    ) -> bool {
        let cost = item.heap_cost();
        if !self.could_hold(cost) {
            return false;
        }
        // Grow the arena and the index first, so that what they take is
        // counted before deciding how much to evict.
        if self.free.is_empty() {
            if self.used >= MAX_SLOTS {
                if self.evict_one(v).is_none() {
                    return false;
                }
            } else if self.used == self.chunks.len() << self.chunk_bits {
                let chunk: Box<[Slot]> = (0..1usize << self.chunk_bits).map(|_| None).collect();
                self.chunks.push(chunk);
            }
        }
        self.index
            .reserve(1, rehasher(&self.chunks, self.chunk_bits, self.seed));
        let mut reusable = replaced.map(|old| old.data);
        while self.heap_bytes().saturating_add(cost) > self.capacity {
            let Some(victim) = self.evict_one(v) else {
                return false;
            };
            if reusable.as_ref().is_none_or(|b| b.len() != item.data.len()) {
                reusable = Some(victim.data);
            }
        }
        if let Some(block) = reusable {
            item.adopt(block);
        }
        let idx = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.used += 1;
                self.used - 1
            }
        };
        self.bytes += item.size();
        self.data_heap += cost;
        self.items += 1;
        self.counters.total_items += 1;
        if let Some(slot) = self.slot_mut(idx) {
            *slot = Some(item);
        }
        // The reserve above left room: this never rehashes.
        let rehash = rehasher(&self.chunks, self.chunk_bits, self.seed);
        self.index.insert_unique(hash, idx as u32, rehash);
        true
    }

    /// Free one item with the CLOCK hand: dead items go first, then the
    /// first item whose reference bit is clear (bits are cleared as the
    /// hand passes, so an item survives only if it was accessed since the
    /// hand last went by). Returns false if the shard is empty.
    fn evict_one(&mut self, v: &Validator) -> Option<Item> {
        let n = self.used;
        if n == 0 || self.items == 0 {
            return None;
        }
        // Two full turns: the first may only clear reference bits, the
        // second is then guaranteed to find a victim.
        for _ in 0..=2 * n {
            let idx = self.hand % n;
            self.hand = (idx + 1) % n;
            let Some(item) = self.entry_mut(idx) else {
                continue;
            };
            if v.liveness(item) != Liveness::Live {
                return self.reclaim(idx);
            }
            if std::mem::replace(item.referenced.get_mut(), false) {
                continue;
            }
            let unfetched = !*item.fetched.get_mut();
            self.counters.evictions += 1;
            if unfetched {
                self.counters.evicted_unfetched += 1;
            }
            return self.remove(idx);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{block_len, data_cost, heap_cost};

    #[test]
    fn heap_cost_follows_glibc_chunks() {
        assert_eq!(heap_cost(0), 0);
        assert_eq!(heap_cost(1), 32);
        assert_eq!(heap_cost(24), 32);
        assert_eq!(heap_cost(25), 48);
        assert_eq!(heap_cost(126), 144);
        assert_eq!(heap_cost(128 * 1024), 132 * 1024);
    }

    #[test]
    fn a_block_fills_its_chunk_and_no_more() {
        let lens = (0..5000)
            .chain((120_000..140_000).step_by(7))
            .chain([1 << 20, 1 << 24]);
        for len in lens {
            let block = block_len(len);
            assert!(block >= len, "{len}");
            assert_eq!(data_cost(block), data_cost(len), "{len}");
            assert!(data_cost(block + 1) > data_cost(len), "{len}");
        }
        // 10-byte key + 100-byte value: a 144-byte chunk, 120 usable bytes.
        assert_eq!((block_len(110), data_cost(110)), (120, 144));
    }
}
