//! Executes requests against the embedded cache and answers with typed
//! replies.
//!
//! This is the "internal" backend: with no route configured, every command
//! lands here. It maps each parsed [`Request`] to one call on
//! [`memroute_cache::Cache`] and each outcome to a [`Reply`], counting what
//! `stats` reports on the way. The reply is then encoded for the client's
//! protocol (text, meta or binary: [`memroute_proto::typed`]), or framed
//! as a [`Response`] for `mcp.internal`. Only `stats` and `me`, which no
//! typed reply describes, are written as text.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use memroute_cache::{
    ArithMode, ArithOutcome, Cache, DeleteOutcome, GetOutcome, MetaArithOptions, MetaDeleteOptions,
    MetaGetOptions, MetaGetOutcome, MetaSetOptions, StoreMode, StoreOutcome,
};
use memroute_proto::binary::BinaryContext;
use memroute_proto::reply;
use memroute_proto::{
    ArithOp, Command, ErrorReply, GetCommand, MetaCommand, MetaOp, Reply, Request, Response,
    ResponseDecoder, Status, StoreCommand,
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

    /// Runs `request` and appends its text or meta reply (if any) to `out`.
    pub fn execute(&self, request: &Request, out: &mut BytesMut, stats: &WorkerStats) -> Flow {
        match request.command() {
            Command::Get(get) => {
                for key in &get.keys {
                    self.get_key(get, key, out, stats);
                }
                reply::end(out);
            }
            Command::Stats { args } => self.admin.stats(args, &self.cache, out),
            Command::Quit => return Flow::Close,
            Command::Meta(meta) if meta.op == MetaOp::Debug => {
                stats.cmd_meta.incr();
                self.meta_debug(meta, out);
            }
            _ => {
                let reply = self.reply(request, stats);
                if !reply.hidden_from(request) {
                    reply.encode(request, out);
                }
            }
        }
        Flow::Continue
    }

    /// Runs a request translated from the binary protocol and appends its
    /// binary reply to `out`: typed replies are encoded straight to binary;
    /// `stats` output (the one reply made as text) goes through
    /// [`BinaryContext::encode`].
    pub fn execute_binary(
        &self,
        request: &Request,
        bin: &BinaryContext,
        out: &mut BytesMut,
        stats: &WorkerStats,
    ) -> Flow {
        if answers_with_one_reply(request) {
            bin.encode_reply(&self.reply(request, stats), out);
            return Flow::Continue;
        }
        let mut text = BytesMut::new();
        let flow = self.execute(request, &mut text, stats);
        bin.encode(&text.freeze(), out);
        flow
    }

    /// Runs `request` for `mcp.internal` and returns its reply as a framed
    /// [`Response`], built from the typed reply without parsing it back
    /// (`stats` and `me`, made as text, are framed by the decoder).
    pub fn respond(&self, request: &Request, stats: &WorkerStats) -> Response {
        if let Command::Get(get) = request.command() {
            let replies: Vec<Reply> = get
                .keys
                .iter()
                .map(|key| self.get_reply(get, key, stats))
                .collect();
            return Reply::retrieval_response(&get.keys, &replies, get.op.returns_cas());
        }
        if answers_with_one_reply(request) {
            return self.reply(request, stats).to_response(request);
        }
        let mut out = BytesMut::new();
        self.execute(request, &mut out, stats);
        match ResponseDecoder::for_request(request).decode(&mut out) {
            Ok(Some(response)) => response,
            _ => Reply::from(ErrorReply::BadResponse).to_response(request),
        }
    }

    /// One key of a `get`-family command: its `VALUE` block if it hits
    /// (the caller ends the reply with `END`). A connection streams a
    /// multi-key get through this, writing as it goes, so a reply never
    /// has to be held whole.
    pub fn get_key(&self, get: &GetCommand, key: &[u8], out: &mut BytesMut, stats: &WorkerStats) {
        self.get_reply(get, key, stats)
            .encode_value(key, get.op.returns_cas(), out);
    }

    /// The typed reply to one key of a `get`-family command.
    fn get_reply(&self, get: &GetCommand, key: &[u8], stats: &WorkerStats) -> Reply {
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
        if crate::watch::enabled(crate::watch::FETCHERS) {
            log_get(key, &outcome);
        }
        match outcome {
            GetOutcome::Hit(item) => Reply::hit(item.value, item.flags).with_cas(item.cas),
            _ => Reply::from(Status::Miss),
        }
    }

    /// The typed reply to a request answered by one reply (see
    /// [`answers_with_one_reply`]), counting what `stats` reports.
    fn reply(&self, request: &Request, stats: &WorkerStats) -> Reply {
        match request.command() {
            Command::Get(get) => match get.keys.first() {
                Some(key) => self.get_reply(get, key, stats),
                None => Reply::from(Status::Miss),
            },
            Command::Store(store) => self.store(store, request.value(), stats),
            Command::Delete { key, .. } => match self.delete(key) {
                DeleteOutcome::Deleted => {
                    stats.delete_hits.incr();
                    Reply::from(Status::Deleted)
                }
                _ => {
                    stats.delete_misses.incr();
                    Reply::from(Status::NotFound)
                }
            },
            Command::Arith(arith) => {
                let incr = arith.op == ArithOp::Incr;
                let outcome = self.cache.incr_decr(&arith.key, arith.delta, incr);
                count_arith(stats, incr, &outcome);
                arith_reply(outcome)
            }
            Command::Touch { key, exptime, .. } => {
                stats.cmd_touch.incr();
                if self.cache.touch(key, i64::from(*exptime)) {
                    stats.touch_hits.incr();
                    Reply::from(Status::Touched)
                } else {
                    stats.touch_misses.incr();
                    Reply::from(Status::NotFound)
                }
            }
            Command::FlushAll { delay, .. } => {
                stats.cmd_flush.incr();
                self.cache.flush_all(i64::from(*delay));
                Reply::from(Status::Ok)
            }
            Command::Version => Reply::version(admin::VERSION),
            Command::Verbosity { .. } => Reply::from(Status::Ok),
            Command::MetaNoop => Reply::from(Status::Noop),
            Command::Meta(meta) => {
                stats.cmd_meta.incr();
                self.meta(meta, request.value(), stats)
            }
            // Answered as text by `execute`; never asked for here.
            // `watch` turns a client connection into a log stream; it means
            // nothing as a request run here (`mcp.internal`).
            Command::Stats { .. } | Command::Quit | Command::Watch { .. } => {
                Reply::from(ErrorReply::Error)
            }
        }
    }

    /// `delete`, logged to `watch deletions` readers.
    fn delete(&self, key: &[u8]) -> DeleteOutcome {
        if !crate::watch::enabled(crate::watch::DELETIONS) {
            return self.cache.delete(key);
        }
        let (outcome, size) = self.cache.delete_sized(key);
        if outcome == DeleteOutcome::Deleted {
            log_deletion(key, "delete", size);
        }
        outcome
    }

    fn store(&self, store: &StoreCommand, value: &Bytes, stats: &WorkerStats) -> Reply {
        stats.cmd_set.incr();
        let (mode, compare_cas) = StoreMode::of_command(store.op, store.cas);
        // Copy out of the connection's read buffer: a slice would pin the
        // whole buffer in the cache and defeat its memory accounting.
        let value = Bytes::copy_from_slice(value);
        let value_len = value.len();
        let outcome = self.cache.store_if(
            mode,
            compare_cas,
            &store.key,
            value,
            store.flags,
            i64::from(store.exptime),
        );
        if matches!(outcome, StoreOutcome::Stored { .. }) && compare_cas.is_some() {
            stats.cas_hits.incr();
        }
        if crate::watch::enabled(crate::watch::MUTATIONS) {
            log_store(
                &store.key,
                &outcome,
                store.op.name(),
                store.exptime,
                value_len,
            );
        }
        store_reply(outcome, stats)
    }

    fn meta(&self, meta: &MetaCommand, value: &Bytes, stats: &WorkerStats) -> Reply {
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
                let outcome = self.cache.meta_get(&meta.key, &opts);
                if crate::watch::enabled(crate::watch::FETCHERS) {
                    let (status, size) = match &outcome {
                        MetaGetOutcome::Hit(hit) => ("found", Some(hit.item.value.len())),
                        MetaGetOutcome::Miss => ("not_found", None),
                        MetaGetOutcome::Expired => ("expired", None),
                        MetaGetOutcome::Flushed => ("flushed", None),
                    };
                    crate::watch::item_get(&meta.key, status, size);
                }
                match outcome {
                    MetaGetOutcome::Hit(hit) => {
                        if touching {
                            stats.touch_hits.incr();
                        } else {
                            stats.get_hits.incr();
                        }
                        let item = hit.item;
                        Reply {
                            cas: Some(item.cas),
                            ttl: Some(item.ttl),
                            ttl_before_touch: Some(hit.ttl_before_touch),
                            last_access: Some(item.last_access_ago),
                            fetched: Some(item.fetched),
                            won: hit.won,
                            stale: hit.stale,
                            win_token_sent: hit.win_token_sent,
                            ..Reply::hit(item.value, item.flags)
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
                        Reply::from(Status::Miss)
                    }
                }
            }
            MetaOp::Set => {
                stats.cmd_set.incr();
                let opts = MetaSetOptions {
                    mode: StoreMode::of_meta(f.mode),
                    flags: f.client_flags.unwrap_or(0),
                    ttl: ttl(f.ttl).unwrap_or(0),
                    compare_cas: f.compare_cas,
                    new_cas: f.new_cas,
                    invalidate: f.has(b'I'),
                    vivify_ttl: ttl(f.vivify_ttl),
                };
                let value = Bytes::copy_from_slice(value);
                let value_len = value.len();
                let outcome = self.cache.meta_set(&meta.key, value, &opts);
                if crate::watch::enabled(crate::watch::MUTATIONS) {
                    // As memcached: a set with a CAS to match is `cas`.
                    let command = match opts.mode {
                        StoreMode::Set if opts.compare_cas.is_some() => "cas",
                        StoreMode::Set => "set",
                        StoreMode::Add => "add",
                        StoreMode::Replace => "replace",
                        StoreMode::Append => "append",
                        StoreMode::Prepend => "prepend",
                    };
                    let exptime = i32::try_from(opts.ttl).unwrap_or(i32::MAX);
                    log_store(&meta.key, &outcome, command, exptime, value_len);
                }
                store_reply(outcome, stats)
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
                let outcome = if crate::watch::enabled(crate::watch::DELETIONS) {
                    let (outcome, removed) = self.cache.meta_delete_sized(&meta.key, &opts);
                    if let Some(size) = removed {
                        log_deletion(&meta.key, "md", size);
                    }
                    outcome
                } else {
                    self.cache.meta_delete(&meta.key, &opts)
                };
                let status = match outcome {
                    DeleteOutcome::Deleted => {
                        stats.delete_hits.incr();
                        Status::Deleted
                    }
                    DeleteOutcome::NotFound => {
                        stats.delete_misses.incr();
                        Status::NotFound
                    }
                    DeleteOutcome::Exists => {
                        stats.delete_misses.incr();
                        Status::Exists
                    }
                };
                Reply::from(status)
            }
            MetaOp::Arith => {
                let opts = MetaArithOptions {
                    mode: ArithMode::of_meta(f.mode),
                    delta: f.delta.unwrap_or(1),
                    initial: f.initial.unwrap_or(0),
                    vivify_ttl: ttl(f.vivify_ttl),
                    ttl: ttl(f.ttl),
                    compare_cas: f.compare_cas,
                    new_cas: f.new_cas,
                };
                let outcome = self.cache.meta_arith(&meta.key, &opts);
                count_arith(stats, opts.mode == ArithMode::Incr, &outcome);
                arith_reply(outcome)
            }
            // Written as text by `execute`; never asked for here.
            MetaOp::Debug => Reply::from(ErrorReply::Error),
        }
    }

    /// `me`: memcached's debug line, which no other protocol has.
    fn meta_debug(&self, meta: &MetaCommand, out: &mut BytesMut) {
        match self.cache.meta_debug(&meta.key) {
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
            // `me` echoes no flags, not even on a miss.
            None => reply::line(out, "EN"),
        }
    }
}

/// A `get`-family read for `watch fetchers`.
fn log_get(key: &[u8], outcome: &GetOutcome) {
    let (status, size) = match outcome {
        GetOutcome::Hit(item) => ("found", Some(item.value.len())),
        GetOutcome::Miss => ("not_found", None),
        GetOutcome::Expired => ("expired", None),
        GetOutcome::Flushed => ("flushed", None),
    };
    crate::watch::item_get(key, status, size);
}

/// A store for `watch mutations`, with memcached's words for its outcome
/// and its expiry as the seconds left (0: none). `exptime` is the
/// client's: up to 30 days relative, beyond an absolute Unix time.
fn log_store(key: &[u8], outcome: &StoreOutcome, command: &str, exptime: i32, size: usize) {
    let status = match outcome {
        StoreOutcome::Stored { .. } => "stored",
        StoreOutcome::NotStored => "not_stored",
        StoreOutcome::Exists => "exists",
        StoreOutcome::NotFound => "not_found",
        StoreOutcome::TooLarge => "too_large",
        StoreOutcome::OutOfMemory => "no_memory",
    };
    const RELATIVE_MAX: i64 = 60 * 60 * 24 * 30;
    let exptime = i64::from(exptime);
    let ttl = if exptime <= 0 {
        0
    } else if exptime <= RELATIVE_MAX {
        exptime
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (exptime - now).max(0)
    };
    crate::watch::item_store(key, status, command, ttl as u64, size);
}

/// `type=deleted key=... cmd=delete|md clsid=1 size=...`, memcached's
/// `watch deletions` line (the embedded cache is one slab class, 1, as
/// `stats items` shows it).
fn log_deletion(key: &[u8], command: &str, size: usize) {
    crate::watch::log(crate::watch::DELETIONS, |line| {
        line.push_str("type=deleted key=");
        crate::watch::uri_encode(line, key);
        line.push_str(" cmd=");
        line.push_str(command);
        line.push_str(" clsid=1 size=");
        line.push_str(&size.to_string());
    });
}

/// Whether `request` is answered by one typed reply: everything but a
/// multi-key retrieval, `stats`, `quit` and `me`.
fn answers_with_one_reply(request: &Request) -> bool {
    match request.command() {
        Command::Get(get) => get.keys.len() == 1,
        Command::Stats { .. } | Command::Quit => false,
        Command::Meta(meta) => meta.op != MetaOp::Debug,
        _ => true,
    }
}

/// The reply to a storage command (meta `c` shows the new item's CAS,
/// and memcached shows `c0` when nothing was stored), counting CAS
/// failures and refusals.
fn store_reply(outcome: StoreOutcome, stats: &WorkerStats) -> Reply {
    let (status, cas) = match outcome {
        StoreOutcome::Stored { cas } => (Status::Stored, cas),
        StoreOutcome::NotStored => (Status::NotStored, 0),
        StoreOutcome::Exists => {
            stats.cas_badval.incr();
            (Status::Exists, 0)
        }
        StoreOutcome::NotFound => {
            stats.cas_misses.incr();
            (Status::NotFound, 0)
        }
        StoreOutcome::TooLarge => {
            stats.store_too_large.incr();
            return Reply::from(ErrorReply::TooLarge);
        }
        StoreOutcome::OutOfMemory => {
            stats.store_no_memory.incr();
            return Reply::from(ErrorReply::NoMemoryStoring);
        }
    };
    Reply::from(status).with_cas(cas)
}

/// The reply to `incr`/`decr`/`ma` (meta `t` and `c` show the counter's
/// TTL and new CAS).
fn arith_reply(outcome: ArithOutcome) -> Reply {
    match outcome {
        ArithOutcome::Value {
            value,
            cas,
            ttl,
            created,
        } => Reply {
            created,
            ..Reply::number(value).with_cas(cas).with_ttl(ttl)
        },
        ArithOutcome::NotFound => Reply::from(Status::NotFound),
        ArithOutcome::Exists => Reply::from(Status::Exists),
        ArithOutcome::NonNumeric => Reply::from(ErrorReply::NonNumeric),
        ArithOutcome::OutOfMemory => Reply::from(ErrorReply::NoMemory),
    }
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
