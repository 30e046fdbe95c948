//! Cache-level statistics (the memcached `stats` fields the cache owns).
//!
//! Command counters (`cmd_get`, `get_hits`, `get_expired`, ...) are the
//! runtime's: it sees every request and every outcome. The cache reports
//! what only it can know: occupancy and what the eviction / expiry
//! machinery did.

/// Snapshot returned by [`Cache::stats`](crate::Cache::stats).
///
/// Summed shard by shard, so under concurrent writes the fields are each
/// exact for some moment but not necessarily the same moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Items currently stored (expired ones not yet reclaimed included,
    /// as in memcached).
    pub curr_items: u64,
    /// Items stored since start.
    pub total_items: u64,
    /// Bytes used, counted with [`item_size`](crate::item_size) like
    /// memcached's `bytes`: key + value + 59 per item. Always at most
    /// `heap_bytes`.
    pub bytes: u64,
    /// Heap really held for the items: each item's data block (key and
    /// value) as the allocator rounds it, the slot arena (72 bytes a slot)
    /// and the hash index. This is what `limit_maxbytes` bounds.
    pub heap_bytes: u64,
    /// The configured memory limit.
    pub limit_maxbytes: u64,
    /// The configured max item size (memcached `item_size_max`).
    pub item_size_max: u64,
    /// Valid items removed to make room for new ones.
    pub evictions: u64,
    /// Evicted items that had never been fetched.
    pub evicted_unfetched: u64,
    /// Expired or flushed items whose memory was freed (found on access
    /// or by the eviction hand).
    pub reclaimed: u64,
    /// Reclaimed items that had never been fetched.
    pub expired_unfetched: u64,
    /// Stores refused with `TooLarge`.
    pub store_too_large: u64,
    /// Stores refused with `OutOfMemory`.
    pub store_no_memory: u64,
    /// Number of shards (one `RwLock` each).
    pub shards: u64,
}
