//! Server counters and the `stats` replies.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer, so counters
//! are bumped with a plain load and store (no locked instruction on the hot
//! path); `stats` on any worker reads every worker's block and sums them, as
//! memcached does with its per-thread stats. The per-route counters
//! ([`RouteCounters`], a block per worker indexed by route slot) and the
//! per-pool ones ([`PoolCounters`], per worker and pool name, listed in the
//! [`PoolRegistry`]) work the same way, for the metrics endpoint.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use memroute_proto::reply;

/// A counter with a single writer (its worker) and many readers.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this: two writers would
    /// lose updates.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub(crate) fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A gauge with a single writer (its worker) and many readers.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// Only the owning worker may call this.
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).saturating_sub(n),
            Ordering::Relaxed,
        );
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a worker's clients hold right now, for the proxy's limits
/// (`mcp.active_req_limit`, `mcp.buffer_memory_limit`); gauges, which
/// `stats reset` leaves alone.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerLoad {
    /// Routed requests in flight (`proxy_req_active`).
    pub active: Gauge,
    /// Bytes reserved for routed replies not yet written to clients
    /// (`buffer_memory_used`).
    pub buffered: Gauge,
}

macro_rules! worker_counters {
    ($($name:ident),* $(,)?) => {
        /// Per-worker command counters, named as memcached names them.
        #[derive(Debug, Default)]
        #[repr(align(128))] // keep workers' blocks off each other's cache lines
        pub struct WorkerStats {
            $(pub $name: Counter,)*
        }

        /// The sum of every worker's counters.
        #[derive(Debug, Default, Clone, Copy)]
        pub struct Totals {
            $(pub $name: u64,)*
        }

        impl WorkerStats {
            fn add_to(&self, t: &mut Totals) {
                $(t.$name += self.$name.get();)*
            }
            fn reset(&self) {
                $(self.$name.reset();)*
            }
        }

        // Metrics endpoint (crate::metrics): every counter by name, so a
        // counter added here is exported without a second list.
        impl Totals {
            /// `(name, value)` of every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

worker_counters!(
    cmd_get,
    cmd_set,
    cmd_flush,
    cmd_touch,
    cmd_meta,
    get_hits,
    get_misses,
    get_expired,
    get_flushed,
    delete_misses,
    delete_hits,
    incr_misses,
    incr_hits,
    decr_misses,
    decr_hits,
    cas_misses,
    cas_hits,
    cas_badval,
    touch_hits,
    touch_misses,
    store_too_large,
    store_no_memory,
    idle_kicks,
    proxy_request_failed_active,
    proxy_request_failed_bufmem,
    bytes_read,
    bytes_written,
);

/// One attached route's counters on one worker: client requests that took
/// it, and their replies by outcome (see [`Outcome`]).
#[derive(Debug, Default)]
pub struct RouteCounters {
    pub requests: Counter,
    pub ok: Counter,
    pub misses: Counter,
    pub errors: Counter,
}

impl RouteCounters {
    /// Counts one reply. Only the owning worker may call this.
    #[inline]
    pub fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.ok.incr(),
            Outcome::Miss => self.misses.incr(),
            Outcome::Error => self.errors.incr(),
        }
    }
}

/// What a routed reply was, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Anything else: a hit, a store, a delete, an empty reply (`noreply`,
    /// or a quiet meta request's hidden nominal reply).
    Ok,
    /// The key was not there: `END` alone, `EN`, `NOT_FOUND`, `NF`, or the
    /// binary protocol's key-not-found status.
    Miss,
    /// `ERROR`, `CLIENT_ERROR`, `SERVER_ERROR` (which the proxy's own
    /// failures are), or a binary error status.
    Error,
}

impl Outcome {
    /// The outcome of a text (or meta) reply.
    #[inline]
    pub fn of_text(reply: &[u8]) -> Outcome {
        match reply.first() {
            Some(b'S') if reply.starts_with(b"SERVER_ERROR") => Outcome::Error,
            Some(b'C') if reply.starts_with(b"CLIENT_ERROR") => Outcome::Error,
            Some(b'E') => {
                if reply == b"END\r\n" || reply == b"EN\r\n" {
                    Outcome::Miss
                } else if reply.starts_with(b"ERROR") {
                    Outcome::Error
                } else {
                    Outcome::Ok
                }
            }
            Some(b'N') if reply.starts_with(b"NOT_FOUND") || reply.starts_with(b"NF") => {
                Outcome::Miss
            }
            _ => Outcome::Ok,
        }
    }

    /// The outcome of a binary-protocol reply (its status field).
    #[inline]
    pub fn of_binary(reply: &[u8]) -> Outcome {
        match reply.get(6..8) {
            None | Some([0, 0]) => Outcome::Ok,
            Some([0, 1]) => Outcome::Miss,
            Some(_) => Outcome::Error,
        }
    }

    /// A short lowercase name, for the metrics endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Miss => "miss",
            Outcome::Error => "error",
        }
    }
}

/// The sum over workers of one route slot's [`RouteCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouteTotals {
    pub requests: u64,
    pub ok: u64,
    pub misses: u64,
    pub errors: u64,
}

/// Process-wide state shown by `stats`.
#[derive(Debug)]
pub struct ServerStats {
    workers: Box<[WorkerStats]>,
    loads: Box<[WorkerLoad]>,
    /// Per worker, a [`RouteCounters`] per route slot: per route table
    /// (untagged, then one per listener tag) per command id, the slots a
    /// `RouteSet` looks routes up in. Fixed at start (a reload cannot add
    /// listeners), so counts carry over reloads.
    routes: Box<[Box<[RouteCounters]>]>,
    route_slots: usize,
    started: Instant,
    started_unix: u64,
    pub curr_connections: AtomicUsize,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
}

impl ServerStats {
    /// Counters for `workers` workers with `route_slots` route slots each.
    pub fn new(workers: usize, route_slots: usize) -> Self {
        ServerStats {
            workers: (0..workers).map(|_| WorkerStats::default()).collect(),
            loads: (0..workers).map(|_| WorkerLoad::default()).collect(),
            routes: (0..workers)
                .map(|_| (0..route_slots).map(|_| RouteCounters::default()).collect())
                .collect(),
            route_slots,
            started: Instant::now(),
            started_unix: unix_now(),
            curr_connections: AtomicUsize::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
        }
    }

    /// How many workers there are.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The load gauges of worker `i`.
    pub fn load(&self, i: usize) -> &WorkerLoad {
        &self.loads[i]
    }

    /// Routed requests in flight and reply bytes held, over all workers.
    pub fn load_totals(&self) -> (u64, u64) {
        self.loads.iter().fold((0, 0), |(a, b), l| {
            (a + l.active.get(), b + l.buffered.get())
        })
    }

    /// The counters block of worker `i`.
    pub fn worker(&self, i: usize) -> &WorkerStats {
        &self.workers[i]
    }

    /// The route counters of worker `i`, indexed by route slot.
    pub fn routes(&self, i: usize) -> &[RouteCounters] {
        &self.routes[i]
    }

    /// Route slot `slot` summed over workers.
    pub fn route_totals(&self, slot: usize) -> RouteTotals {
        let mut t = RouteTotals::default();
        for worker in self.routes.iter() {
            if let Some(c) = worker.get(slot) {
                t.requests += c.requests.get();
                t.ok += c.ok.get();
                t.misses += c.misses.get();
                t.errors += c.errors.get();
            }
        }
        t
    }

    /// How many route slots each worker counts in.
    pub fn route_slots(&self) -> usize {
        self.route_slots
    }

    /// Client requests that took a route, over all workers (`stats proxy`
    /// `routed_requests`): a multi-key get counts once.
    pub fn routed_requests(&self) -> u64 {
        self.routes
            .iter()
            .flat_map(|w| w.iter())
            .map(|c| c.requests.get())
            .sum()
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for w in self.workers.iter() {
            w.add_to(&mut t);
        }
        t
    }

    /// `stats reset`. Counters are owned by their workers; a reset racing a
    /// worker's update may keep that one update, which memcached tolerates
    /// too. Route counters stay, as `routed_requests` always has.
    pub fn reset(&self) {
        for w in self.workers.iter() {
            w.reset();
        }
        self.total_connections.store(0, Ordering::Relaxed);
        self.rejected_connections.store(0, Ordering::Relaxed);
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The Unix time the server started, from which `time` is derived so
    /// that `time - uptime` stays constant like memcached's.
    pub fn now_unix(&self) -> u64 {
        self.started_unix + self.uptime_secs()
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Process CPU time (user, system) in seconds, read from /proc so that no
/// `unsafe` libc call is needed. Zero where /proc is missing.
pub fn cpu_times() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0.0);
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 Hz on Linux).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return (0.0, 0.0);
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// Writes `STAT` lines for `name value` pairs.
pub fn write_stat(out: &mut BytesMut, name: &str, value: impl std::fmt::Display) {
    reply::stat(out, name, value);
}

// The proxy's process-wide counters (below) are written from every worker.
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use crate::backend::BackendRegistry;

/// Highest id `mcp.add_stat` accepts.
pub const MAX_USER_STATS: usize = 1024;

/// Process-wide proxy counters: `mcp.add_stat`/`mcp.stat` user counters and
/// memroute's own, shown by `stats proxy`.
#[derive(Debug)]
pub struct ProxyStats {
    names: Mutex<Vec<(i64, String)>>,
    values: Box<[AtomicI64]>,
    pub lua_errors: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Runs of `mcp.register_cron` functions, and those that failed.
    pub cron_runs: AtomicU64,
    pub cron_fails: AtomicU64,
    /// Every worker's memcached backends, for `stats backends`.
    pub backends: BackendRegistry,
    /// Every worker's pools' counters, for the metrics endpoint.
    pub pools: PoolRegistry,
    /// The process's shared stores (DynamoDB tables), for `stats`,
    /// metrics, warm-up and shutdown.
    pub stores: Arc<crate::store::StoreRegistry>,
    /// The configuration file in force, for mcrouter's admin keys
    /// `__mcrouter__.config_file` and `__mcrouter__.config_md5_digest`.
    config_file: Mutex<Option<Arc<ConfigFile>>>,
}

/// A configuration file in force: its path and the MD5 of its bytes (hex),
/// what mcrouter's health checks compare with `md5sum` of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub path: String,
    pub md5: String,
}

impl Default for ProxyStats {
    fn default() -> Self {
        ProxyStats {
            names: Mutex::new(Vec::new()),
            values: (0..=MAX_USER_STATS).map(|_| AtomicI64::new(0)).collect(),
            lua_errors: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            cron_runs: AtomicU64::new(0),
            cron_fails: AtomicU64::new(0),
            backends: BackendRegistry::default(),
            pools: PoolRegistry::default(),
            stores: Arc::default(),
            config_file: Mutex::new(None),
        }
    }
}

impl ProxyStats {
    /// Records `path` as the configuration file in force, with the bytes
    /// it was read as (the same read as the configuration digest's;
    /// `None`, unreadable, gives no MD5).
    pub fn set_config_file(&self, path: &std::path::Path, bytes: Option<&[u8]>) {
        use md5::Digest;
        let md5 = bytes
            .map(|bytes| {
                md5::Md5::digest(bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .unwrap_or_default();
        let file = ConfigFile {
            path: path.display().to_string(),
            md5,
        };
        if let Ok(mut f) = self.config_file.lock() {
            *f = Some(Arc::new(file));
        }
    }

    /// The configuration file in force, if there is one.
    pub fn config_file(&self) -> Option<Arc<ConfigFile>> {
        self.config_file.lock().ok().and_then(|f| f.clone())
    }

    /// Installs the names a (re)loaded configuration registered.
    pub fn set_names(&self, names: &[(i64, String)]) {
        if let Ok(mut n) = self.names.lock() {
            *n = names.to_vec();
        }
    }

    /// `mcp.stat(id, delta)`.
    pub fn add(&self, id: i64, delta: i64) {
        if let Some(v) = usize::try_from(id).ok().and_then(|i| self.values.get(i)) {
            v.fetch_add(delta, Relaxed);
        }
    }

    /// `(name, value)` for every registered user stat (`mcp.add_stat`),
    /// for the metrics endpoint.
    pub fn user_stats(&self) -> Vec<(String, i64)> {
        let Ok(names) = self.names.lock() else {
            return Vec::new();
        };
        names
            .iter()
            .map(|(id, name)| {
                let value = self.values.get(*id as usize).map_or(0, |v| v.load(Relaxed));
                (name.clone(), value)
            })
            .collect()
    }

    /// `(name, value)` for every registered user stat, then memroute's own
    /// (`routed` is [`ServerStats::routed_requests`]).
    pub fn snapshot(&self, routed: u64) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        if let Ok(names) = self.names.lock() {
            for (id, name) in names.iter() {
                let value = self.values.get(*id as usize).map_or(0, |v| v.load(Relaxed));
                out.push((name.clone(), value));
            }
        }
        out.push(("lua_errors".into(), self.lua_errors.load(Relaxed) as i64));
        out.push(("routed_requests".into(), routed as i64));
        out.push(("config_reloads".into(), self.reloads.load(Relaxed) as i64));
        out.push((
            "config_reload_fails".into(),
            self.reload_failures.load(Relaxed) as i64,
        ));
        out.push((
            "config_cron_runs".into(),
            self.cron_runs.load(Relaxed) as i64,
        ));
        out.push((
            "config_cron_fails".into(),
            self.cron_fails.load(Relaxed) as i64,
        ));
        out
    }
}

/// `stats proxyfuncs`: how many ready function generators each name has,
/// over every worker, and how many slots they hold (memcached's
/// `funcs_<name>` and `slots_<name>`).
fn funcgen_counts() -> &'static Mutex<std::collections::BTreeMap<String, (i64, i64)>> {
    static COUNTS: std::sync::OnceLock<Mutex<std::collections::BTreeMap<String, (i64, i64)>>> =
        std::sync::OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

fn funcgen_delta(name: &str, funcs: i64, slots: i64) {
    let mut counts = funcgen_counts().lock().unwrap_or_else(|e| e.into_inner());
    let entry = counts.entry(name.to_string()).or_default();
    entry.0 += funcs;
    entry.1 += slots;
    if entry.0 <= 0 && entry.1 <= 0 {
        counts.remove(name);
    }
}

/// A function generator's slot count, used like a `Cell<usize>`, that
/// also keeps `stats proxyfuncs` up to date once the generator is ready
/// ([`FuncgenSlots::register`]) and until it is dropped. Slots are made
/// and let go rarely (not per request), so the shared counts take a lock.
#[derive(Default)]
pub struct FuncgenSlots {
    slots: std::cell::Cell<usize>,
    /// The name it is counted under, once ready.
    name: std::cell::RefCell<Option<String>>,
}

impl FuncgenSlots {
    pub fn get(&self) -> usize {
        self.slots.get()
    }

    pub fn set(&self, slots: usize) {
        let old = self.slots.replace(slots);
        if let Some(name) = self.name.borrow().as_deref() {
            funcgen_delta(name, 0, slots as i64 - old as i64);
        }
    }

    /// Counts the generator (and its slots) under `name`, once.
    pub fn register(&self, name: &str) {
        let mut registered = self.name.borrow_mut();
        if registered.is_none() {
            funcgen_delta(name, 1, self.slots.get() as i64);
            *registered = Some(name.to_string());
        }
    }
}

impl Drop for FuncgenSlots {
    fn drop(&mut self) {
        if let Some(name) = self.name.get_mut().as_deref() {
            funcgen_delta(name, -1, -(self.slots.get() as i64));
        }
    }
}

/// Appends `stats proxyfuncs` (`funcs_<name>`, `slots_<name>` for each
/// name with a ready generator), without the closing `END`.
pub fn write_funcgen_stats(out: &mut BytesMut) {
    let counts = funcgen_counts().lock().unwrap_or_else(|e| e.into_inner());
    for (name, (funcs, slots)) in counts.iter() {
        if *funcs > 0 {
            write_stat(out, &format!("funcs_{name}"), funcs);
            write_stat(out, &format!("slots_{name}"), slots);
        }
    }
}

/// One pool's counters on one worker: requests it was sent (a multi-key
/// get split over backends counts once per backend it reaches, a
/// `flush_all` once per backend) and those answered with an error reply or
/// failed (`SERVER_ERROR`, `CLIENT_ERROR`, `ERROR`). The worker is the only
/// writer.
#[derive(Debug, Default)]
pub struct PoolCounters {
    pub requests: Counter,
    pub errors: Counter,
}

/// A pool's counters summed over workers, for the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSummary {
    pub name: String,
    pub requests: u64,
    pub errors: u64,
}

/// Every worker's pool counters, by pool name. Entries go when no worker's
/// configuration has a pool of that name any more.
#[derive(Debug, Default)]
pub struct PoolRegistry {
    entries: Mutex<Vec<(String, Weak<PoolCounters>)>>,
}

impl PoolRegistry {
    fn register(&self, name: &str, counters: &Arc<PoolCounters>) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|(_, c)| c.strong_count() > 0);
            entries.push((name.to_owned(), Arc::downgrade(counters)));
        }
    }

    /// Each live pool name, summed over workers, in the order first
    /// registered.
    pub fn summaries(&self) -> Vec<PoolSummary> {
        let mut out: Vec<PoolSummary> = Vec::new();
        let Ok(entries) = self.entries.lock() else {
            return out;
        };
        for (name, counters) in entries.iter() {
            let Some(counters) = counters.upgrade() else {
                continue;
            };
            let (requests, errors) = (counters.requests.get(), counters.errors.get());
            match out.iter_mut().find(|s| s.name == *name) {
                Some(s) => {
                    s.requests += requests;
                    s.errors += errors;
                }
                None => out.push(PoolSummary {
                    name: name.clone(),
                    requests,
                    errors,
                }),
            }
        }
        out
    }
}

/// One worker's pool counters by pool name, kept across reloads: a pool
/// that keeps its name keeps counting where it was (a reload builds the
/// new pools while the old ones still hold the counters).
#[derive(Debug, Default)]
pub struct WorkerPoolStats {
    by_name: RefCell<HashMap<String, Weak<PoolCounters>>>,
}

impl WorkerPoolStats {
    /// The counters of this worker's pool `name`, listed in `registry`
    /// when new.
    pub fn get(&self, name: &str, registry: &PoolRegistry) -> Arc<PoolCounters> {
        let mut map = self.by_name.borrow_mut();
        if let Some(existing) = map.get(name).and_then(Weak::upgrade) {
            return existing;
        }
        map.retain(|_, c| c.strong_count() > 0);
        let counters = Arc::new(PoolCounters::default());
        registry.register(name, &counters);
        map.insert(name.to_owned(), Arc::downgrade(&counters));
        counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_replies() {
        for (reply, want) in [
            (&b"VALUE k 0 1\r\nx\r\nEND\r\n"[..], Outcome::Ok),
            (b"END\r\n", Outcome::Miss),
            (b"EN\r\n", Outcome::Miss),
            (b"NF\r\n", Outcome::Miss),
            (b"NOT_FOUND\r\n", Outcome::Miss),
            (b"NOT_STORED\r\n", Outcome::Ok),
            (b"EXISTS\r\n", Outcome::Ok),
            (b"EX\r\n", Outcome::Ok),
            (b"STORED\r\n", Outcome::Ok),
            (b"", Outcome::Ok),
            (b"ERROR\r\n", Outcome::Error),
            (b"CLIENT_ERROR bad data chunk\r\n", Outcome::Error),
            (b"SERVER_ERROR backend failure\r\n", Outcome::Error),
        ] {
            assert_eq!(Outcome::of_text(reply), want, "{reply:?}");
        }
        let binary = |status: u16| {
            let mut reply = vec![0x81, 0, 0, 0, 0, 0];
            reply.extend_from_slice(&status.to_be_bytes());
            reply.extend_from_slice(&[0; 16]);
            Outcome::of_binary(&reply)
        };
        assert_eq!(binary(0), Outcome::Ok);
        assert_eq!(binary(1), Outcome::Miss);
        assert_eq!(binary(0x81), Outcome::Error);
        assert_eq!(Outcome::of_binary(b""), Outcome::Ok);
    }

    #[test]
    fn pool_counters_follow_names_across_reloads() {
        let registry = PoolRegistry::default();
        let (w0, w1) = (WorkerPoolStats::default(), WorkerPoolStats::default());
        let a0 = w0.get("main", &registry);
        let a1 = w1.get("main", &registry);
        let b0 = w0.get("other", &registry);
        a0.requests.add(3);
        a1.requests.add(4);
        a1.errors.incr();
        b0.requests.incr();
        let want = |name: &str, requests, errors| PoolSummary {
            name: name.into(),
            requests,
            errors,
        };
        assert_eq!(
            registry.summaries(),
            [want("main", 7, 1), want("other", 1, 0)]
        );
        // A reload that keeps "main" and drops "other": the new pool gets
        // the old counters while the old pool is still alive.
        let again = w0.get("main", &registry);
        assert!(Arc::ptr_eq(&again, &a0));
        drop((a0, b0));
        assert_eq!(registry.summaries(), [want("main", 7, 1)]);
        drop((again, a1));
        assert!(registry.summaries().is_empty());
    }

    #[test]
    fn route_slots_sum_over_workers() {
        let stats = ServerStats::new(2, 4);
        stats.routes(0)[1].requests.add(2);
        stats.routes(1)[1].requests.incr();
        stats.routes(1)[1].count(Outcome::Miss);
        stats.routes(0)[3].requests.incr();
        let t = stats.route_totals(1);
        assert_eq!((t.requests, t.misses, t.ok), (3, 1, 0));
        assert_eq!(stats.routed_requests(), 4);
        stats.reset();
        assert_eq!(stats.routed_requests(), 4, "stats reset leaves routes");
    }
}
