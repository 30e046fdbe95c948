//! The cache's whole result vocabulary: what an operation hands back.
//!
//! Every public operation returns one of these enums (or `bool` /
//! `Option` where there is nothing else to say). They are shaped after
//! memcached's replies so the runtime can map them to the wire one-to-one;
//! nothing in this crate returns `Result` or panics on client input.

use bytes::Bytes;

/// A snapshot of an item, taken under the shard lock at access time.
///
/// `value` is a refcounted `Bytes` handle: cloning it or sending it to a
/// socket never copies the data, and a later overwrite of the key does not
/// affect this view.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ItemView {
    /// The data block.
    pub value: Bytes,
    /// 32-bit client flags.
    pub flags: u32,
    /// CAS unique (`gets`, meta `c`).
    pub cas: u64,
    /// Absolute expiry in Unix seconds; 0 = never.
    pub exptime: i64,
    /// Remaining TTL in seconds at access time, -1 = never (meta `t`).
    pub ttl: i64,
    /// Seconds since the previous access, measured before this access
    /// (meta `l`, `me` `la`).
    pub last_access_ago: i64,
    /// Whether the item had been fetched before this access (meta `h`).
    pub fetched: bool,
    /// Whether the item is marked stale by an invalidation (meta `X`).
    pub stale: bool,
}

/// Result of `get` / `gets` / `gat` / `gats` for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetOutcome {
    /// Found and valid.
    Hit(ItemView),
    /// No such key.
    Miss,
    /// The key existed but its TTL has passed (memcached `get_expired`);
    /// the item has been removed. On the wire this is a miss.
    Expired,
    /// The key existed but was invalidated by `flush_all`
    /// (memcached `get_flushed`); removed. On the wire this is a miss.
    Flushed,
}

impl GetOutcome {
    /// The item on a hit.
    pub fn hit(self) -> Option<ItemView> {
        match self {
            GetOutcome::Hit(v) => Some(v),
            _ => None,
        }
    }

    /// True for `Miss`, `Expired` and `Flushed`.
    pub fn is_miss(&self) -> bool {
        !matches!(self, GetOutcome::Hit(_))
    }
}

/// Result of a storage command (`set`/`add`/.../`cas`, meta `ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// `STORED` / `HD`; `cas` is the new item's CAS unique (meta `c`).
    Stored { cas: u64 },
    /// `NOT_STORED` / `NS`: the add/replace/append condition was not met.
    NotStored,
    /// `EXISTS` / `EX`: CAS mismatch.
    Exists,
    /// `NOT_FOUND` / `NF`: CAS store on a missing key.
    NotFound,
    /// [`ErrorReply::TooLarge`](memroute_proto::ErrorReply::TooLarge): item size exceeds the
    /// configured max item size. For `set` the old item is removed, like
    /// memcached does, so stale data cannot outlive a failed set.
    TooLarge,
    /// [`ErrorReply::NoMemoryStoring`](memroute_proto::ErrorReply::NoMemoryStoring): the item can never
    /// fit in the memory limit. Same removal rule as `TooLarge`.
    OutOfMemory,
}

/// Result of `delete` / meta `md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// `DELETED` / `HD`: removed (or, for meta, invalidated / emptied).
    Deleted,
    /// `NOT_FOUND` / `NF`.
    NotFound,
    /// `EX`: meta `md` with `C` whose CAS did not match (classic delete
    /// never returns this).
    Exists,
}

/// Result of `incr` / `decr` / meta `ma`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOutcome {
    /// The new counter value (`incr` reply / `ma v`), the item's new CAS
    /// (meta `c`), its remaining TTL (-1 = never, meta `t`), and whether
    /// the item was auto-created by meta `N` (then `value` is the `J`
    /// initial value and no delta was applied).
    Value {
        value: u64,
        cas: u64,
        ttl: i64,
        created: bool,
    },
    /// `NOT_FOUND` / `NF`.
    NotFound,
    /// [`ErrorReply::NonNumeric`](memroute_proto::ErrorReply::NonNumeric).
    NonNumeric,
    /// `EX`: meta `ma` with `C` whose CAS did not match.
    Exists,
    /// [`ErrorReply::NoMemory`](memroute_proto::ErrorReply::NoMemory): the (auto-created) counter item
    /// cannot fit in the memory limit (only with absurdly small limits).
    OutOfMemory,
}

/// A meta-get hit with the meta protocol's item state flags.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetaHit {
    /// The item (after any `T` touch; `fetched` / `last_access_ago` are
    /// the values from before this access).
    pub item: ItemView,
    /// `W`: this client won the right to recache the item.
    pub won: bool,
    /// `Z`: a win token had already been handed out for this item.
    pub win_token_sent: bool,
    /// `X`: the item is stale (invalidated by `md I` / `ms I`).
    pub stale: bool,
    /// The item was just created by `N` (vivify on miss): empty value,
    /// flags 0; `won` is then true.
    pub created: bool,
    /// The remaining TTL before this request's `T` touch (-1 = never).
    /// memcached prints `t` in flag order, so a `t` placed before `T` shows
    /// this value.
    pub ttl_before_touch: i64,
}

/// Result of meta `mg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaGetOutcome {
    /// Found (or vivified). Wire: `VA`/`HD` plus flags.
    Hit(MetaHit),
    /// `EN`.
    Miss,
    /// `EN`; counted as `get_expired` by the runtime.
    Expired,
    /// `EN`; counted as `get_flushed` by the runtime.
    Flushed,
}

/// What meta `me` prints for an item:
/// `ME <key> exp=<exp> la=<la> cas=<cas> fetch=<yes|no> cls=<cls> size=<size>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetaDebugInfo {
    /// Seconds until expiry, -1 = never.
    pub exp: i64,
    /// Seconds since last access.
    pub la: i64,
    /// CAS unique.
    pub cas: u64,
    /// Fetched at least once.
    pub fetched: bool,
    /// Slab class the item would live in with memcached's default slab
    /// layout (emulated: 96-byte first class, growth factor 1.25).
    pub cls: u32,
    /// Total accounted size ([`item_size`](crate::item_size)).
    pub size: u64,
}
