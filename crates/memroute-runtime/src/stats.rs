//! Server counters and the `stats` replies.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer, so counters
//! are bumped with a plain load and store (no locked instruction on the hot
//! path); `stats` on any worker reads every worker's block and sums them, as
//! memcached does with its per-thread stats.

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

/// Process-wide state shown by `stats`.
#[derive(Debug)]
pub struct ServerStats {
    workers: Box<[WorkerStats]>,
    loads: Box<[WorkerLoad]>,
    started: Instant,
    started_unix: u64,
    pub curr_connections: AtomicUsize,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
}

impl ServerStats {
    pub fn new(workers: usize) -> Self {
        ServerStats {
            workers: (0..workers).map(|_| WorkerStats::default()).collect(),
            loads: (0..workers).map(|_| WorkerLoad::default()).collect(),
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

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for w in self.workers.iter() {
            w.add_to(&mut t);
        }
        t
    }

    /// `stats reset`. Counters are owned by their workers; a reset racing a
    /// worker's update may keep that one update, which memcached tolerates
    /// too.
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
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

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
    pub routed_requests: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Runs of `mcp.register_cron` functions, and those that failed.
    pub cron_runs: AtomicU64,
    pub cron_fails: AtomicU64,
    /// Every worker's memcached backends, for `stats backends`.
    pub backends: BackendRegistry,
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
            routed_requests: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            cron_runs: AtomicU64::new(0),
            cron_fails: AtomicU64::new(0),
            backends: BackendRegistry::default(),
            stores: Arc::default(),
            config_file: Mutex::new(None),
        }
    }
}

impl ProxyStats {
    /// Records `path` as the configuration file in force (read again here,
    /// as the configuration digest is; unreadable, it has no MD5).
    pub fn set_config_file(&self, path: &std::path::Path) {
        use md5::Digest;
        let md5 = std::fs::read(path)
            .map(|bytes| {
                md5::Md5::digest(&bytes)
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

    /// `(name, value)` for every registered user stat, then memroute's own.
    pub fn snapshot(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        if let Ok(names) = self.names.lock() {
            for (id, name) in names.iter() {
                let value = self.values.get(*id as usize).map_or(0, |v| v.load(Relaxed));
                out.push((name.clone(), value));
            }
        }
        out.push(("lua_errors".into(), self.lua_errors.load(Relaxed) as i64));
        out.push((
            "routed_requests".into(),
            self.routed_requests.load(Relaxed) as i64,
        ));
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
