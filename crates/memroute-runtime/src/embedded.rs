//! Executes requests against the embedded cache and writes memcached's
//! replies.
//!
//! This is the "internal" backend: with no route configured, every command
//! lands here. It maps each parsed [`Request`] to one call on
//! [`memroute_cache::Cache`] and each outcome to the exact bytes memcached
//! 1.6 sends, counting what `stats` reports on the way.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use memroute_cache::{
    ArithMode, ArithOutcome, Cache, DeleteOutcome, GetOutcome, MetaArithOptions, MetaDeleteOptions,
    MetaGetOptions, MetaGetOutcome, MetaSetMode, MetaSetOptions, StoreMode, StoreOutcome,
};
use memroute_proto::reply::{self, MetaReply};
use memroute_proto::{
    ArithOp, Command, GetCommand, MetaCommand, MetaOp, Request, StoreCommand, StoreOp,
};

use crate::admin::{self, Admin};
use crate::stats::WorkerStats;

/// Whether the connection continues after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// `quit`: flush earlier replies, then close.
    Close,
}

const NON_NUMERIC: &str = "CLIENT_ERROR cannot increment or decrement non-numeric value";
const TOO_LARGE: &str = "SERVER_ERROR object too large for cache";
const NO_MEMORY: &str = "SERVER_ERROR out of memory storing object";

/// The embedded-cache executor of one worker (cheap to clone: two `Arc`s).
#[derive(Clone)]
pub struct Embedded {
    cache: Arc<Cache>,
    admin: Arc<Admin>,
}

impl Embedded {
    pub fn new(cache: Arc<Cache>, admin: Arc<Admin>) -> Self {
        Embedded { cache, admin }
    }

    /// Drops `key` after a store of it was refused as too large, as
    /// memcached does for `set` and `ms`: a reader must not see the value
    /// the failed write meant to replace.
    pub fn drop_stale(&self, key: &[u8]) {
        self.cache.delete(key);
    }

    /// Runs `request` and appends its reply (if any) to `out`.
    pub fn execute(&self, request: &Request, out: &mut BytesMut, stats: &WorkerStats) -> Flow {
        match request.command() {
            Command::Get(get) => self.get(get, out, stats),
            Command::Store(store) => self.store(store, request.value(), out, stats),
            Command::Delete { key, noreply } => {
                let line = match self.cache.delete(key) {
                    DeleteOutcome::Deleted => {
                        stats.delete_hits.incr();
                        "DELETED"
                    }
                    _ => {
                        stats.delete_misses.incr();
                        "NOT_FOUND"
                    }
                };
                if !noreply {
                    reply::line(out, line);
                }
            }
            Command::Arith(arith) => {
                let incr = arith.op == ArithOp::Incr;
                let outcome = self.cache.incr_decr(&arith.key, arith.delta, incr);
                count_arith(stats, incr, &outcome);
                if !arith.noreply {
                    match outcome {
                        ArithOutcome::Value { value, .. } => reply::number(out, value),
                        ArithOutcome::NotFound | ArithOutcome::Exists => {
                            reply::line(out, "NOT_FOUND")
                        }
                        ArithOutcome::NonNumeric => reply::line(out, NON_NUMERIC),
                        ArithOutcome::OutOfMemory => reply::line(out, "SERVER_ERROR out of memory"),
                    }
                }
            }
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                stats.cmd_touch.incr();
                let touched = self.cache.touch(key, i64::from(*exptime));
                if touched {
                    stats.touch_hits.incr();
                } else {
                    stats.touch_misses.incr();
                }
                if !noreply {
                    reply::line(out, if touched { "TOUCHED" } else { "NOT_FOUND" });
                }
            }
            Command::FlushAll { delay, noreply } => {
                stats.cmd_flush.incr();
                self.cache.flush_all(i64::from(*delay));
                if !noreply {
                    reply::line(out, "OK");
                }
            }
            Command::Version => {
                out.extend_from_slice(b"VERSION ");
                out.extend_from_slice(admin::VERSION.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Command::Verbosity { noreply } => {
                if !noreply {
                    reply::line(out, "OK");
                }
            }
            Command::Stats { args } => self.admin.stats(args, &self.cache, out),
            Command::Quit => return Flow::Close,
            Command::MetaNoop => reply::line(out, "MN"),
            Command::Meta(meta) => {
                stats.cmd_meta.incr();
                self.meta(meta, request.value(), out, stats);
            }
        }
        Flow::Continue
    }

    fn get(&self, get: &GetCommand, out: &mut BytesMut, stats: &WorkerStats) {
        for key in &get.keys {
            self.get_key(get, key, out, stats);
        }
        reply::end(out);
    }

    /// One key of a `get`-family command: its `VALUE` block if it hits
    /// (the caller ends the reply with `END`). A connection streams a
    /// multi-key get through this, writing as it goes, so a reply never
    /// has to be held whole.
    pub fn get_key(&self, get: &GetCommand, key: &[u8], out: &mut BytesMut, stats: &WorkerStats) {
        let outcome = if get.op.touches() {
            stats.cmd_touch.incr();
            let o = self.cache.get_and_touch(key, i64::from(get.exptime));
            if o.is_miss() {
                stats.touch_misses.incr();
            } else {
                stats.touch_hits.incr();
            }
            o
        } else {
            stats.cmd_get.incr();
            self.cache.get(key)
        };
        count_get(stats, &outcome, get.op.touches());
        if let GetOutcome::Hit(item) = outcome {
            let cas = get.op.returns_cas().then_some(item.cas);
            reply::value(out, key, item.flags, &item.value, cas);
        }
    }

    fn store(&self, store: &StoreCommand, value: &Bytes, out: &mut BytesMut, stats: &WorkerStats) {
        stats.cmd_set.incr();
        let mode = match store.op {
            StoreOp::Set => StoreMode::Set,
            StoreOp::Add => StoreMode::Add,
            StoreOp::Replace => StoreMode::Replace,
            StoreOp::Append => StoreMode::Append,
            StoreOp::Prepend => StoreMode::Prepend,
            StoreOp::Cas => StoreMode::Cas(store.cas),
        };
        // Copy out of the connection's read buffer: a slice would pin the
        // whole buffer in the cache and defeat its memory accounting.
        let value = Bytes::copy_from_slice(value);
        let outcome = self.cache.store(
            mode,
            &store.key,
            value,
            store.flags,
            i64::from(store.exptime),
        );
        let line = match outcome {
            StoreOutcome::Stored { .. } => {
                if store.op == StoreOp::Cas {
                    stats.cas_hits.incr();
                }
                "STORED"
            }
            StoreOutcome::NotStored => "NOT_STORED",
            StoreOutcome::Exists => {
                stats.cas_badval.incr();
                "EXISTS"
            }
            StoreOutcome::NotFound => {
                stats.cas_misses.incr();
                "NOT_FOUND"
            }
            StoreOutcome::TooLarge => {
                stats.store_too_large.incr();
                TOO_LARGE
            }
            StoreOutcome::OutOfMemory => {
                stats.store_no_memory.incr();
                NO_MEMORY
            }
        };
        // memcached's noreply hides every reply of a storage command,
        // errors included.
        if !store.noreply {
            reply::line(out, line);
        }
    }

    fn meta(&self, meta: &MetaCommand, value: &Bytes, out: &mut BytesMut, stats: &WorkerStats) {
        let f = &meta.flags;
        let ttl = |v: Option<i32>| v.map(i64::from);
        match meta.op {
            MetaOp::Get => {
                let opts = MetaGetOptions {
                    touch_ttl: ttl(f.ttl),
                    vivify_ttl: ttl(f.vivify_ttl),
                    recache_ttl: ttl(f.recache_ttl),
                    no_bump: f.has(b'u'),
                };
                let touching = opts.touch_ttl.is_some();
                if touching {
                    stats.cmd_touch.incr();
                } else {
                    stats.cmd_get.incr();
                }
                match self.cache.meta_get(&meta.key, &opts) {
                    MetaGetOutcome::Hit(hit) => {
                        if touching {
                            stats.touch_hits.incr();
                        } else {
                            stats.get_hits.incr();
                        }
                        let item = &hit.item;
                        // memcached applies flags in order: a `t` before
                        // `T` reports the TTL the item had before the touch.
                        let mut touched_yet = false;
                        let mut r = if f.return_value() {
                            MetaReply::value(out, item.value.len())
                        } else {
                            MetaReply::new(out, "HD")
                        };
                        for flag in f.iter() {
                            r = match flag.letter {
                                b's' => r.flag_u64(b's', item.value.len() as u64),
                                b't' if touching && !touched_yet => {
                                    r.flag_i64(b't', hit.ttl_before_touch)
                                }
                                b't' => r.flag_i64(b't', item.ttl),
                                b'T' => {
                                    touched_yet = true;
                                    r
                                }
                                b'c' => r.flag_u64(b'c', item.cas),
                                b'f' => r.flag_u64(b'f', u64::from(item.flags)),
                                b'l' => r.flag_i64(b'l', item.last_access_ago),
                                b'h' => r.flag_u64(b'h', u64::from(item.fetched)),
                                b'O' => r.flag_bytes(b'O', flag.token),
                                b'k' => echo_key(r, meta),
                                _ => r,
                            };
                        }
                        if hit.win_token_sent {
                            r = r.flag(b'Z');
                        }
                        if hit.stale {
                            r = r.flag(b'X');
                        }
                        if hit.won {
                            r = r.flag(b'W');
                        }
                        r.finish();
                        if f.return_value() {
                            reply::data(out, &item.value);
                        }
                    }
                    outcome => {
                        if touching {
                            stats.touch_misses.incr();
                        } else {
                            count_get(stats, &GetOutcome::Miss, false);
                            match outcome {
                                MetaGetOutcome::Expired => stats.get_expired.incr(),
                                MetaGetOutcome::Flushed => stats.get_flushed.incr(),
                                _ => {}
                            }
                        }
                        if !f.quiet() {
                            echo(MetaReply::new(out, "EN"), meta).finish();
                        }
                    }
                }
            }
            MetaOp::Set => {
                stats.cmd_set.incr();
                let mode = match f.mode {
                    Some(b'E') => MetaSetMode::Add,
                    Some(b'A') => MetaSetMode::Append,
                    Some(b'P') => MetaSetMode::Prepend,
                    Some(b'R') => MetaSetMode::Replace,
                    _ => MetaSetMode::Set,
                };
                let opts = MetaSetOptions {
                    mode,
                    flags: f.client_flags.unwrap_or(0),
                    ttl: ttl(f.ttl).unwrap_or(0),
                    compare_cas: f.compare_cas,
                    new_cas: f.new_cas,
                    invalidate: f.has(b'I'),
                    vivify_ttl: ttl(f.vivify_ttl),
                };
                let value = Bytes::copy_from_slice(value);
                let outcome = self.cache.meta_set(&meta.key, value, &opts);
                let (code, cas) = match outcome {
                    StoreOutcome::Stored { cas } => ("HD", cas),
                    StoreOutcome::NotStored => ("NS", 0),
                    StoreOutcome::Exists => {
                        stats.cas_badval.incr();
                        ("EX", 0)
                    }
                    StoreOutcome::NotFound => {
                        stats.cas_misses.incr();
                        ("NF", 0)
                    }
                    StoreOutcome::TooLarge => {
                        stats.store_too_large.incr();
                        return reply::line(out, TOO_LARGE);
                    }
                    StoreOutcome::OutOfMemory => {
                        stats.store_no_memory.incr();
                        return reply::line(out, NO_MEMORY);
                    }
                };
                if code == "HD" && f.quiet() {
                    return;
                }
                let mut r = MetaReply::new(out, code);
                for flag in f.iter() {
                    r = match flag.letter {
                        b'O' => r.flag_bytes(b'O', flag.token),
                        b'k' => echo_key(r, meta),
                        b'c' => r.flag_u64(b'c', cas),
                        _ => r,
                    };
                }
                r.finish();
            }
            MetaOp::Delete => {
                let opts = MetaDeleteOptions {
                    compare_cas: f.compare_cas,
                    new_cas: f.new_cas,
                    invalidate: f.has(b'I'),
                    ttl: ttl(f.ttl),
                    remove_value: f.has(b'x'),
                    flags: f.client_flags.unwrap_or(0),
                };
                let code = match self.cache.meta_delete(&meta.key, &opts) {
                    DeleteOutcome::Deleted => {
                        stats.delete_hits.incr();
                        "HD"
                    }
                    DeleteOutcome::NotFound => {
                        stats.delete_misses.incr();
                        "NF"
                    }
                    DeleteOutcome::Exists => {
                        stats.delete_misses.incr();
                        "EX"
                    }
                };
                if !(code == "HD" && f.quiet()) {
                    echo(MetaReply::new(out, code), meta).finish();
                }
            }
            MetaOp::Arith => {
                let mode = match f.mode {
                    Some(b'D' | b'-') => ArithMode::Decr,
                    _ => ArithMode::Incr,
                };
                let opts = MetaArithOptions {
                    mode,
                    delta: f.delta.unwrap_or(1),
                    initial: f.initial.unwrap_or(0),
                    vivify_ttl: ttl(f.vivify_ttl),
                    ttl: ttl(f.ttl),
                    compare_cas: f.compare_cas,
                    new_cas: f.new_cas,
                };
                let outcome = self.cache.meta_arith(&meta.key, &opts);
                count_arith(stats, mode == ArithMode::Incr, &outcome);
                match outcome {
                    ArithOutcome::Value {
                        value, cas, ttl, ..
                    } => {
                        if f.quiet() {
                            return;
                        }
                        let mut digits = BytesMut::with_capacity(20);
                        memroute_proto::number::write_u64(&mut digits, value);
                        let mut r = if f.return_value() {
                            MetaReply::value(out, digits.len())
                        } else {
                            MetaReply::new(out, "HD")
                        };
                        for flag in f.iter() {
                            r = match flag.letter {
                                b'O' => r.flag_bytes(b'O', flag.token),
                                b'k' => echo_key(r, meta),
                                b't' => r.flag_i64(b't', ttl),
                                b'c' => r.flag_u64(b'c', cas),
                                _ => r,
                            };
                        }
                        r.finish();
                        if f.return_value() {
                            reply::data(out, &digits);
                        }
                    }
                    ArithOutcome::NotFound => echo(MetaReply::new(out, "NF"), meta).finish(),
                    ArithOutcome::Exists => echo(MetaReply::new(out, "EX"), meta).finish(),
                    ArithOutcome::NonNumeric => reply::line(out, NON_NUMERIC),
                    ArithOutcome::OutOfMemory => reply::line(out, "SERVER_ERROR out of memory"),
                }
            }
            MetaOp::Debug => match self.cache.meta_debug(&meta.key) {
                Some(info) => {
                    use std::fmt::Write;
                    out.extend_from_slice(b"ME ");
                    out.extend_from_slice(&meta.wire_key);
                    let _ = write!(
                        out,
                        " exp={} la={} cas={} fetch={} cls={} size={}\r\n",
                        info.exp,
                        info.la,
                        info.cas,
                        if info.fetched { "yes" } else { "no" },
                        info.cls,
                        info.size
                    );
                }
                None => reply::line(out, "EN"),
            },
        }
    }
}

/// Appends the `k` flag, plus ` b` for binary keys (memcached attaches `b`
/// to the key this way). A binary key is re-encoded from its decoded bytes,
/// as memcached does, so non-canonical base64 comes back canonical.
fn echo_key<'a>(r: MetaReply<'a>, meta: &MetaCommand) -> MetaReply<'a> {
    if meta.flags.base64_key() {
        r.key(&meta.key, true).flag(b'b')
    } else {
        r.flag_bytes(b'k', &meta.wire_key)
    }
}

/// Appends the flags memcached echoes on every meta reply (`O`, `k`), in
/// the client's order.
fn echo<'a>(mut r: MetaReply<'a>, meta: &MetaCommand) -> MetaReply<'a> {
    for flag in meta.flags.iter() {
        r = match flag.letter {
            b'O' => r.flag_bytes(b'O', flag.token),
            b'k' => echo_key(r, meta),
            _ => r,
        };
    }
    r
}

fn count_get(stats: &WorkerStats, outcome: &GetOutcome, touch: bool) {
    match outcome {
        GetOutcome::Hit(_) => {
            if !touch {
                stats.get_hits.incr();
            }
        }
        GetOutcome::Miss => stats.get_misses.incr(),
        GetOutcome::Expired => {
            stats.get_misses.incr();
            stats.get_expired.incr();
        }
        GetOutcome::Flushed => {
            stats.get_misses.incr();
            stats.get_flushed.incr();
        }
    }
}

fn count_arith(stats: &WorkerStats, incr: bool, outcome: &ArithOutcome) {
    let hit = matches!(outcome, ArithOutcome::Value { .. });
    match (incr, hit) {
        (true, true) => stats.incr_hits.incr(),
        (true, false) => stats.incr_misses.incr(),
        (false, true) => stats.decr_hits.incr(),
        (false, false) => stats.decr_misses.incr(),
    }
}
