//! Cache configuration and the item size accounting rule.
//!
//! Owns [`CacheConfig`], the fixed per-item overhead [`ITEM_OVERHEAD`] and
//! [`item_size`], the single function that decides how many bytes an item
//! costs against the memory limit and the max item size.

/// Bytes charged per item on top of key and value.
///
/// Exactly what memcached charges: its 48-byte item header plus 8 bytes of
/// CAS, the key's terminating NUL and the trailing `\r\n` it stores with
/// the value (59 bytes). Using memcached's figure makes the largest storable
/// value identical to memcached's for every key length (1048516 bytes for a
/// 1-byte key under `-I 1m`), and equal to the protocol decoder's own check.
/// Our real per-item bookkeeping is of the same order (slot, index entry,
/// key allocation), so `limit_maxbytes` stays comparable for the same `-m`.
pub const ITEM_OVERHEAD: u64 = 59;

/// Default memory limit: 64 MiB, memcached's `-m 64` default.
pub const DEFAULT_MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

/// Default max item size: 1 MiB, memcached's `-I 1m` default.
pub const DEFAULT_MAX_ITEM_SIZE: usize = 1024 * 1024;

/// Upper bound on the number of shards (each shard is one `RwLock`).
pub const MAX_SHARDS: usize = 64;

/// Bytes an item costs: `key + value + ITEM_OVERHEAD`.
///
/// Both the memory limit and `max_item_size` are checked against this
/// figure, like memcached checks its total item size (header included)
/// against `-I`; so a value of exactly `max_item_size` bytes is refused,
/// as memcached refuses a 1 MiB value with `-I 1m`.
#[inline]
pub fn item_size(key_len: usize, value_len: usize) -> u64 {
    (key_len as u64)
        .saturating_add(value_len as u64)
        .saturating_add(ITEM_OVERHEAD)
}

/// Construction parameters of a [`Cache`](crate::Cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Memory limit in bytes (memcached `-m`, reported as
    /// `limit_maxbytes`). Counted with [`item_size`]; the sum over all
    /// items never exceeds it.
    pub memory_limit: u64,
    /// Largest accepted item, counted with [`item_size`] (memcached `-I`).
    /// Bigger stores get [`StoreOutcome::TooLarge`](crate::StoreOutcome::TooLarge).
    pub max_item_size: usize,
    /// Number of shards; 0 = automatic. Rounded down to a power of two,
    /// capped at [`MAX_SHARDS`], and lowered until every shard can hold at
    /// least one max-size item. See docs/embedded-cache.md.
    pub shards: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            max_item_size: DEFAULT_MAX_ITEM_SIZE,
            shards: 0,
        }
    }
}

impl CacheConfig {
    /// Default config with the given memory limit in bytes.
    pub fn with_memory_limit(memory_limit: u64) -> Self {
        Self {
            memory_limit,
            ..Self::default()
        }
    }

    /// The shard count actually used (a power of two, >= 1).
    ///
    /// Auto mode aims for 8 max-size items per shard so that a shard's
    /// share of the limit is never the reason a normal item is refused;
    /// an explicit count is still lowered until a max-size item fits.
    pub fn effective_shards(&self) -> usize {
        let max_item = (self.max_item_size as u64).max(1);
        let wanted = if self.shards == 0 {
            (self.memory_limit / max_item.saturating_mul(8)).max(1)
        } else {
            self.shards as u64
        };
        let mut n = prev_power_of_two(wanted.min(MAX_SHARDS as u64));
        while n > 1 && self.memory_limit / n < max_item {
            n /= 2;
        }
        n as usize
    }
}

fn prev_power_of_two(n: u64) -> u64 {
    if n <= 1 {
        1
    } else {
        1 << (63 - n.leading_zeros())
    }
}
