//! Meta-protocol item semantics (`mg`, `ms`, `md`, `ma`, `me`).
//!
//! Owns the option structs the runtime fills from parsed meta flags and
//! the meta operations on [`Cache`]. Flag letters are noted on each field;
//! wire parsing and reply encoding stay in the runtime. Semantics follow
//! memcached's `proto_text.c` (see docs/embedded-cache.md for the list).

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use crate::cache::{Cache, StoreRequest};
use crate::config::item_size;
use crate::expiry::{absolute_exptime, remaining_ttl};
use crate::outcome::{
    ArithOutcome, DeleteOutcome, ItemView, MetaDebugInfo, MetaGetOutcome, MetaHit, StoreOutcome,
};
use crate::store::{Item, Liveness};
use memroute_proto::item::{parse_counter, render_counter, ArithMode, StoreMode};

/// Options of `mg` that change what the cache does (flags that only
/// select reply fields — `v`, `c`, `f`, `s`, `t`, `h`, `l`, `k`, `O`, `q`
/// — need nothing from the cache: every hit carries all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaGetOptions {
    /// `T(token)`: set a new TTL (exptime rules of `set`).
    pub touch_ttl: Option<i64>,
    /// `N(token)`: on a miss, create an empty item (flags 0) with this
    /// TTL and hand this caller the win (`W`).
    pub vivify_ttl: Option<i64>,
    /// `R(token)`: win (`W`) if the item has a TTL and less than `token`
    /// seconds of it remain (judged before any `T` touch), unless a win
    /// token was already sent.
    pub recache_ttl: Option<i64>,
    /// `u`: do not record the access (fetched bit, last access, LRU).
    pub no_bump: bool,
}

/// Options of `ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaSetOptions {
    /// `M(token)`.
    pub mode: StoreMode,
    /// `F(token)`: client flags.
    pub flags: u32,
    /// `T(token)`: TTL (0 = never).
    pub ttl: i64,
    /// `C(token)`: compare CAS. With set/replace it makes the store a CAS
    /// store (`NF` if missing, `EX` on mismatch); with append/prepend the
    /// CAS must match if the item exists; ignored by add (as memcached).
    pub compare_cas: Option<u64>,
    /// `E(token)`: use this as the new item's CAS instead of a fresh one.
    pub new_cas: Option<u64>,
    /// `I`: if the `C` CAS is *older* than the item's, store anyway but
    /// mark the new value stale (it keeps the old TTL and win state).
    pub invalidate: bool,
    /// `N(token)`: in append/prepend mode, create the item on a miss with
    /// this TTL (and the `F` flags).
    pub vivify_ttl: Option<i64>,
}

/// Options of `md`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetaDeleteOptions {
    /// `C(token)`: only act if the CAS matches (else `EX`).
    pub compare_cas: Option<u64>,
    /// `E(token)`: CAS to give an invalidated / emptied item.
    pub new_cas: Option<u64>,
    /// `I`: instead of removing, mark stale, clear the win state (so the
    /// next `mg` wins) and bump the CAS.
    pub invalidate: bool,
    /// `T(token)`: with `I` or `x`, the item's new TTL.
    pub ttl: Option<i64>,
    /// `x`: replace the value with an empty one (flags from `F`), keeping
    /// the item and its CAS (unless `E`).
    pub remove_value: bool,
    /// `F(token)`: flags for the emptied item of `x`.
    pub flags: u32,
}

/// Options of `ma` (classic `incr`/`decr` use the defaults plus a delta).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaArithOptions {
    /// `M(token)`.
    pub mode: ArithMode,
    /// `D(token)`: delta, default 1.
    pub delta: u64,
    /// `J(token)`: initial value when auto-created by `N`, default 0.
    pub initial: u64,
    /// `N(token)`: on a miss, create the counter with value `initial` and
    /// this TTL (no delta is applied).
    pub vivify_ttl: Option<i64>,
    /// `T(token)`: new TTL for an existing counter.
    pub ttl: Option<i64>,
    /// `C(token)`: compare CAS (`EX` on mismatch).
    pub compare_cas: Option<u64>,
    /// `E(token)`: CAS for the updated / created item.
    pub new_cas: Option<u64>,
}

impl Default for MetaArithOptions {
    fn default() -> Self {
        Self {
            mode: ArithMode::Incr,
            delta: 1,
            initial: 0,
            vivify_ttl: None,
            ttl: None,
            compare_cas: None,
            new_cas: None,
        }
    }
}

/// memcached's default slab class for a total item size: first chunk 96
/// bytes, growth factor 1.25, 8-byte aligned (for `me` `cls=`).
fn slab_class(size: u64) -> u32 {
    let mut class = 1u32;
    let mut chunk = 96u64;
    while chunk < size && class < 63 {
        chunk = (chunk * 5 / 4 + 7) & !7;
        class += 1;
    }
    class
}

/// `W`/`Z` decision for an existing item. memcached's rule: a stale item,
/// or an `R` hit, wins only if no token was handed out yet; `Z` reports a
/// token handed out *before* this request. The swap makes the win exact
/// even for readers racing under the shared lock.
fn decide_win(item: &Item, wants_win: bool) -> (bool, bool) {
    if wants_win {
        let already = item.token_sent.swap(true, Relaxed);
        (!already, already)
    } else {
        (false, item.token_sent.load(Relaxed))
    }
}

fn recache_wins(item: &Item, recache_ttl: Option<i64>, now: i64) -> bool {
    recache_ttl.is_some_and(|r| item.exptime != 0 && item.exptime < absolute_exptime(r, now))
}

impl Cache {
    /// `mg`: meta get. Without `T`/`N` this is a pure read-lock operation.
    pub fn meta_get(&self, key: &[u8], opts: &MetaGetOptions) -> MetaGetOutcome {
        if opts.touch_ttl.is_none() && opts.vivify_ttl.is_none() {
            let read = self.read_item(key, |item, now| {
                let view = Self::view(item, now);
                let wants = item.stale || recache_wins(item, opts.recache_ttl, now);
                let (won, win_token_sent) = decide_win(item, wants);
                if !opts.no_bump {
                    item.bump(now);
                }
                MetaHit {
                    stale: item.stale,
                    ttl_before_touch: view.ttl,
                    item: view,
                    won,
                    win_token_sent,
                    created: false,
                }
            });
            return match read {
                Ok(hit) => MetaGetOutcome::Hit(hit),
                Err(dead) => meta_miss(dead),
            };
        }

        let hash = self.hash(key);
        let v = self.validator();
        let now = v.now;
        let mut shard = self.write(hash);
        match shard.find_live(hash, key, &v) {
            Ok(idx) => {
                let Some(item) = shard.entry_mut(idx) else {
                    return MetaGetOutcome::Miss;
                };
                let before = Self::view(item, now);
                let wants = item.stale || recache_wins(item, opts.recache_ttl, now);
                if let Some(ttl) = opts.touch_ttl {
                    item.exptime = absolute_exptime(ttl, now);
                }
                let (won, win_token_sent) = decide_win(item, wants);
                if !opts.no_bump {
                    item.bump(now);
                }
                MetaGetOutcome::Hit(MetaHit {
                    stale: item.stale,
                    ttl_before_touch: before.ttl,
                    item: ItemView {
                        exptime: item.exptime,
                        ttl: remaining_ttl(item.exptime, now),
                        ..before
                    },
                    won,
                    win_token_sent,
                    created: false,
                })
            }
            Err(dead) => {
                let Some(ttl) = opts.vivify_ttl else {
                    return meta_miss(dead);
                };
                if item_size(key.len(), 0) > self.config().max_item_size as u64 {
                    return meta_miss(dead);
                }
                let exptime = absolute_exptime(ttl, now);
                let mut item = self.make_item(key, &[], 0, exptime, None, now);
                // The creator holds the win; later readers see Z.
                *item.token_sent.get_mut() = true;
                match self.put(&mut shard, hash, None, item, &v) {
                    StoreOutcome::Stored { cas } => MetaGetOutcome::Hit(MetaHit {
                        item: ItemView {
                            value: Bytes::new(),
                            flags: 0,
                            cas,
                            exptime,
                            ttl: remaining_ttl(exptime, now),
                            last_access_ago: 0,
                            fetched: false,
                            stale: false,
                        },
                        won: true,
                        win_token_sent: false,
                        stale: false,
                        created: true,
                        ttl_before_touch: remaining_ttl(exptime, now),
                    }),
                    _ => meta_miss(dead),
                }
            }
        }
    }

    /// `ms`: meta set.
    pub fn meta_set(&self, key: &[u8], value: Bytes, opts: &MetaSetOptions) -> StoreOutcome {
        let req = StoreRequest {
            mode: opts.mode,
            flags: opts.flags,
            exptime: opts.ttl,
            compare_cas: opts.compare_cas,
            new_cas: opts.new_cas,
            invalidate: opts.invalidate,
            vivify_exptime: opts.vivify_ttl,
        };
        self.store_request(key, value, &req)
    }

    /// `md`: meta delete (remove, invalidate with `I`, or empty with `x`).
    pub fn meta_delete(&self, key: &[u8], opts: &MetaDeleteOptions) -> DeleteOutcome {
        self.meta_delete_sized(key, opts).0
    }

    /// `md`, with the length of the value when the item was removed
    /// (`None` when it was kept: invalidated, emptied, or not found), what
    /// memcached's `watch deletions` reports.
    pub fn meta_delete_sized(
        &self,
        key: &[u8],
        opts: &MetaDeleteOptions,
    ) -> (DeleteOutcome, Option<usize>) {
        let hash = self.hash(key);
        let v = self.validator();
        let now = v.now;
        let mut shard = self.write(hash);
        let Ok(idx) = shard.find_live(hash, key, &v) else {
            return (DeleteOutcome::NotFound, None);
        };
        let Some(item) = shard.entry_mut(idx) else {
            return (DeleteOutcome::NotFound, None);
        };
        if opts.compare_cas.is_some_and(|cas| cas != item.cas) {
            return (DeleteOutcome::Exists, None);
        }
        if opts.remove_value {
            let exptime = absolute_exptime(opts.ttl.unwrap_or(0), now);
            let keep_cas = opts.new_cas.unwrap_or(item.cas);
            let mut item = self.make_item(key, &[], opts.flags, exptime, Some(keep_cas), now);
            if opts.invalidate {
                item.stale = true;
                item.cas = opts.new_cas.unwrap_or_else(|| self.next_cas());
            }
            // Shrinking never needs eviction, so this cannot fail.
            let _ = self.put(&mut shard, hash, Some(idx), item, &v);
            return (DeleteOutcome::Deleted, None);
        }
        if opts.invalidate {
            if let Some(ttl) = opts.ttl {
                item.exptime = absolute_exptime(ttl, now);
            }
            item.stale = true;
            *item.token_sent.get_mut() = false;
            item.cas = opts.new_cas.unwrap_or_else(|| self.next_cas());
            return (DeleteOutcome::Deleted, None);
        }
        let size = shard.remove(idx).map_or(0, |item| item.value().len());
        (DeleteOutcome::Deleted, Some(size))
    }

    /// `ma`: meta arithmetic (classic `incr`/`decr` go through here too).
    pub fn meta_arith(&self, key: &[u8], opts: &MetaArithOptions) -> ArithOutcome {
        let hash = self.hash(key);
        let v = self.validator();
        let now = v.now;
        let mut shard = self.write(hash);
        let (old_idx, item, value, created) = match shard.find_live(hash, key, &v) {
            Ok(idx) => {
                let Some(old) = shard.entry(idx) else {
                    return ArithOutcome::NotFound;
                };
                if opts.compare_cas.is_some_and(|cas| cas != old.cas) {
                    return ArithOutcome::Exists;
                }
                let Some(current) = parse_counter(old.value()) else {
                    return ArithOutcome::NonNumeric;
                };
                let value = opts.mode.apply(current, opts.delta);
                let bytes = render_counter(value, old.value().len());
                let exptime = opts.ttl.map_or(old.exptime, |t| absolute_exptime(t, now));
                let fetched = old.fetched.load(Relaxed);
                let mut item =
                    self.make_item(key, &[&bytes], old.flags, exptime, opts.new_cas, now);
                // memcached updates counters in place: the fetched bit stays.
                *item.fetched.get_mut() = fetched;
                (Some(idx), item, value, false)
            }
            Err(_) => {
                let Some(ttl) = opts.vivify_ttl else {
                    return ArithOutcome::NotFound;
                };
                let bytes = opts.initial.to_string().into_bytes();
                let exptime = absolute_exptime(ttl, now);
                let item = self.make_item(key, &[&bytes], 0, exptime, opts.new_cas, now);
                (None, item, opts.initial, true)
            }
        };
        if item.size() > self.config().max_item_size as u64 || !shard.could_hold(item.heap_cost()) {
            return ArithOutcome::OutOfMemory;
        }
        let exptime = item.exptime;
        match self.put(&mut shard, hash, old_idx, item, &v) {
            StoreOutcome::Stored { cas } => ArithOutcome::Value {
                value,
                cas,
                ttl: remaining_ttl(exptime, now),
                created,
            },
            _ => ArithOutcome::OutOfMemory,
        }
    }

    /// `me`: meta debug. Does not count as an access.
    pub fn meta_debug(&self, key: &[u8]) -> Option<MetaDebugInfo> {
        self.read_item(key, |item, now| {
            let size = item.size();
            MetaDebugInfo {
                exp: remaining_ttl(item.exptime, now),
                la: now.saturating_sub(item.last_access.load(Relaxed)).max(0),
                cas: item.cas,
                fetched: item.fetched.load(Relaxed),
                cls: slab_class(size),
                size,
            }
        })
        .ok()
    }
}

fn meta_miss(dead: Liveness) -> MetaGetOutcome {
    match dead {
        Liveness::Live => MetaGetOutcome::Miss,
        Liveness::Expired => MetaGetOutcome::Expired,
        Liveness::Flushed => MetaGetOutcome::Flushed,
    }
}

#[cfg(test)]
mod tests {
    use super::slab_class;

    #[test]
    fn slab_classes_grow_by_quarter() {
        assert_eq!(slab_class(10), 1);
        assert_eq!(slab_class(96), 1);
        assert_eq!(slab_class(97), 2);
        assert_eq!(slab_class(120), 2);
        assert_eq!(slab_class(121), 3);
        assert_eq!(slab_class(u64::MAX), 63);
    }
}
