//! memroute-cache: the embedded, memcached-compatible in-memory cache that
//! serves requests when memroute runs without a routing configuration.
//!
//! It implements memcached's *item semantics* — storage modes (shared with
//! every store: [`memroute_proto::item`]), CAS,
//! expiry, `flush_all`, `incr`/`decr`, `touch`/`gat`, the meta protocol's
//! stale / win / recache state — behind a typed API. It does not parse or
//! encode the wire protocol: the runtime maps parsed requests to these
//! calls and the returned outcomes ([`outcome`]) to replies.
//!
//! # Layout
//!
//! - [`cache`] — the [`Cache`] handle: sharding, CAS generation,
//!   `flush_all`, classic operations and the shared store path.
//! - [`meta`] — meta-protocol options and operations (`mg`/`ms`/`md`/`ma`/`me`).
//! - [`outcome`] — every result type (the crate's one outcome vocabulary).
//! - [`expiry`] — the exptime conversion rule ([`absolute_exptime`]).
//! - [`config`] — [`CacheConfig`] and the size accounting ([`item_size`]).
//! - [`clock`] — the coarse seconds [`Clock`] (system and manual).
//! - [`stats`] — [`CacheStats`].
//! - `store` (private) — shard internals: hash index, slot arena, CLOCK
//!   eviction, validity (expiry + flush) checks.
//!
//! # Concurrency
//!
//! Keys are spread over up to 64 shards, each behind its own `RwLock`.
//! Reads (`get`, `mg` without `T`/`N`, `me`) take only the read lock and
//! record the access with atomics, so readers never serialize; every
//! mutation takes its shard's write lock, which makes CAS checks,
//! append/prepend, incr/decr and meta win tokens atomic. No background
//! threads: expired items are freed when touched or by the eviction hand.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use memroute_cache::{Cache, CacheConfig, GetOutcome, ManualClock, StoreMode, StoreOutcome};
//!
//! let clock = Arc::new(ManualClock::new(1_700_000_000));
//! let cache = Cache::with_clock(CacheConfig::default(), clock.clone());
//!
//! let StoreOutcome::Stored { cas } =
//!     cache.store(StoreMode::Set, b"k", Bytes::from_static(b"v1"), 7, 10)
//! else { unreachable!() };
//!
//! // A CAS store with the current unique succeeds, a stale one does not.
//! assert!(matches!(
//!     cache.store_if(StoreMode::Set, Some(cas), b"k", Bytes::from_static(b"v2"), 7, 10),
//!     StoreOutcome::Stored { .. }
//! ));
//! assert_eq!(
//!     cache.store_if(StoreMode::Set, Some(cas), b"k", Bytes::from_static(b"v3"), 7, 10),
//!     StoreOutcome::Exists
//! );
//!
//! let hit = cache.get(b"k").hit().unwrap();
//! assert_eq!((&hit.value[..], hit.flags), (&b"v2"[..], 7));
//!
//! clock.advance(10); // the 10 s TTL is up
//! assert_eq!(cache.get(b"k"), GetOutcome::Expired);
//! ```

#![forbid(unsafe_code)]

pub mod cache;
pub mod clock;
pub mod config;
pub mod expiry;
pub mod meta;
pub mod outcome;
pub mod stats;

mod store;

pub use bytes::Bytes;
pub use cache::Cache;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    item_size, CacheConfig, DEFAULT_MAX_ITEM_SIZE, DEFAULT_MEMORY_LIMIT, ITEM_OVERHEAD,
};
pub use expiry::{absolute_exptime, MAX_RELATIVE_EXPTIME};
/// The item semantics the cache shares with every other store.
pub use memroute_proto::item::{ArithMode, StoreMode};
pub use meta::{MetaArithOptions, MetaDeleteOptions, MetaGetOptions, MetaSetOptions};
pub use outcome::{
    ArithOutcome, DeleteOutcome, GetOutcome, ItemView, MetaDebugInfo, MetaGetOutcome, MetaHit,
    StoreOutcome,
};
pub use stats::CacheStats;

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn cache_is_send_sync() {
        assert_send_sync::<super::Cache>();
    }
}
