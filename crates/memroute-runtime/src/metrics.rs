//! The Prometheus / OpenMetrics endpoint (`--metrics-listen HOST:PORT`).
//!
//! `GET /metrics` answers every series below, read at scrape time from the
//! same sources `stats` reads (the workers' counters in
//! [`ServerStats`](crate::stats::ServerStats), the cache's own stats, the
//! proxy's counters, the backend registry and the shared stores): nothing
//! is counted twice on the request path. The server runs on a thread of its
//! own with a one-thread tokio runtime, so a scrape never holds up a worker.
//!
//! The reply is OpenMetrics text when the scraper asks for it (`Accept:
//! application/openmetrics-text`, as Prometheus does), else the Prometheus
//! text format 0.0.4. Both are written by the `prometheus-client` crate.
//! Other paths answer 404, other methods 405.
//!
//! Series (all prefixed `memroute_`; counters end in `_total`):
//! - `info{version,config_digest}` 1;
//! - `uptime_seconds`, `max_connections`, `curr_connections`,
//!   `connections_total`, `rejected_connections_total`;
//! - `<field>_total` for every worker counter `stats` sums
//!   ([`Totals::fields`](crate::stats::Totals::fields)): `cmd_get_total`,
//!   `get_hits_total`, `delete_misses_total`, `bytes_read_total`, ...;
//! - the embedded cache: `cache_bytes`, `cache_heap_bytes`,
//!   `cache_limit_bytes`, `cache_items`, `cache_stored_items_total`,
//!   `cache_evictions_total`, `cache_evicted_unfetched_total`,
//!   `cache_reclaimed_total`, `cache_expired_unfetched_total`;
//! - proxy mode: `proxy_req_active`, `buffer_memory_used_bytes`,
//!   `routed_requests_total`, `lua_errors_total`,
//!   `config_reloads_total`, `config_reload_fails_total`,
//!   `config_cron_runs_total`, `config_cron_fails_total`,
//!   `user_stat{name}`; per pool (`{pool}`, the pool's name; `internal` is
//!   the embedded cache as a pool) `pool_requests_total` and
//!   `pool_errors_total`; per attached route (`{route,tag}`: the command it
//!   is attached for, `get`, `mg`, `set`..., and the listener tag, empty
//!   for untagged clients) `route_requests_total` and
//!   `route_replies_total{outcome}` (`ok`, `miss`, `error`); and per
//!   memcached backend (`{backend}`, named as in
//!   `stats backends`) its counters, gauges, `backend_state{state}` and the
//!   `backend_latency_seconds` histogram;
//! - shared stores (DynamoDB pools): `store_<field>{store}`.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use memroute_cache::Cache;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::admin::{Admin, VERSION};
use crate::backend::{BackendState, LATENCY_BUCKETS_US};
use crate::stats::{Outcome, RouteTotals};

/// The OpenMetrics text `Content-Type`.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Most scrapers connected at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;

/// How long a scraper has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared-store fields that are current values, not counts (exported as
/// gauges; every other store field is a counter).
const STORE_GAUGES: &[&str] = &[
    "queue_depth",
    "queue_bytes",
    "in_flight",
    "spool_bytes",
    "spool_segments",
];

/// `--metrics-listen` as given: `HOST:PORT`, `[IPv6]:PORT`, or a bare
/// `:PORT` or `PORT`, which mean 127.0.0.1.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = port_only
            .parse()
            .map_err(|_| format!("{s:?}: the port must be 0 to 65535"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s:?} resolves to no address")),
        Err(e) => Err(format!("{s:?} is not HOST:PORT, :PORT or PORT ({e})")),
    }
}

/// The configuration digest (`stats` `config_digest`, `memroute_info`'s
/// `config_digest` label): FNV-1a (64-bit), as 16 hex digits, of the
/// startfile's bytes followed by the resolved backend lists
/// ([`LoadedConfig::backend_lists`](crate::lua::LoadedConfig::backend_lists)),
/// so two proxies running the same file with different backends differ.
/// `none` without a startfile, `unreadable` if the file cannot be read.
/// Files the startfile `require`s do not count.
pub fn config_digest(startfile: Option<&Path>, backend_lists: &[String]) -> String {
    let Some(path) = startfile else {
        return "none".into();
    };
    startfile_digest(std::fs::read(path).ok().as_deref(), backend_lists)
}

/// [`config_digest`] of a startfile already read (`None`: it could not
/// be), for callers that use its bytes for more than the digest.
pub fn startfile_digest(startfile: Option<&[u8]>, backend_lists: &[String]) -> String {
    match startfile {
        Some(bytes) => digest_of(bytes, backend_lists),
        None => "unreadable".into(),
    }
}

/// [`config_digest`] of bytes already read. Each part is hashed after its
/// length, so no bytes can move between the file and the lists (or between
/// two lists) and leave the digest unchanged.
pub fn digest_of(startfile: &[u8], backend_lists: &[String]) -> String {
    let mut hash = fnv1a64_continue(FNV_OFFSET, &(startfile.len() as u64).to_le_bytes());
    hash = fnv1a64_continue(hash, startfile);
    hash = fnv1a64_continue(hash, &(backend_lists.len() as u64).to_le_bytes());
    for list in backend_lists {
        hash = fnv1a64_continue(hash, &(list.len() as u64).to_le_bytes());
        hash = fnv1a64_continue(hash, list.as_bytes());
    }
    format!("{hash:016x}")
}

/// The membership digest (`stats` `membership_digest`): FNV-1a (64-bit), as
/// 16 hex digits, of the sorted `label/host:port` names of the backends
/// every worker sees healthy, one per line. The order given does not
/// matter; duplicates count once.
pub fn membership_digest<S: AsRef<str>>(healthy: &[S]) -> String {
    let mut names: Vec<&str> = healthy.iter().map(AsRef::as_ref).collect();
    names.sort_unstable();
    names.dedup();
    let hash = names.iter().fold(FNV_OFFSET, |hash, name| {
        fnv1a64_continue(fnv1a64_continue(hash, name.as_bytes()), b"\n")
    });
    format!("{hash:016x}")
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a64_continue(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_continue(FNV_OFFSET, bytes)
}

/// The digest of the configuration in force: set at start and by each
/// successful reload.
#[derive(Debug)]
pub struct ConfigDigest(Mutex<String>);

impl ConfigDigest {
    pub fn new(digest: String) -> Self {
        ConfigDigest(Mutex::new(digest))
    }

    pub fn set(&self, digest: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = digest;
    }

    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a scrape reads: the same state `stats` reads.
#[derive(Clone)]
pub struct Sources {
    pub admin: Arc<Admin>,
    pub cache: Arc<Cache>,
    pub digest: Arc<ConfigDigest>,
    /// The listeners' tags, which name route slots' `tag` label.
    pub listener_tags: Arc<[String]>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// The registry every scrape encodes: one collector over [`Sources`].
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::with_prefix("memroute");
    registry.register_collector(Box::new(Collector(sources)));
    registry
}

/// One scrape's text: OpenMetrics (ending in `# EOF`) or the Prometheus
/// text format 0.0.4.
pub fn render(registry: &Registry, openmetrics: bool) -> Result<String, fmt::Error> {
    let mut out = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    }
    Ok(out)
}

#[derive(Debug)]
struct Collector(Sources);

type Labels = Vec<(&'static str, String)>;

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge<V: EncodeGaugeValue + fmt::Debug>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One family of labelled samples; nothing at all when `rows` is empty.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Label values made unique (a repeated one gets `#2`, `#3`, ...), so that
/// no two samples of a family collide.
fn unique(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for name in names {
        let mut candidate = name.clone();
        let mut n = 1;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{name}#{n}");
        }
        seen.push(candidate);
    }
    seen
}

/// `name` with anything but `[A-Za-z0-9_]` made `_`, for metric names built
/// from field names.
fn metric_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// HELP text for the worker counters `stats` shows, by memcached's name.
fn totals_help(field: &str) -> String {
    let help = match field {
        "cmd_get" => "Keys requested by get-type commands",
        "cmd_set" => "Storage commands",
        "cmd_flush" => "flush_all commands",
        "cmd_touch" => "touch and gat-type commands",
        "cmd_meta" => "Meta commands",
        "get_hits" => "Keys requested and found",
        "get_misses" => "Keys requested and not found",
        "get_expired" => "Keys requested and found expired",
        "get_flushed" => "Keys requested and found flushed",
        "bytes_read" => "Bytes read from clients",
        "bytes_written" => "Bytes written to clients",
        "store_too_large" => "Stores refused as larger than the item size limit",
        "store_no_memory" => "Stores refused for lack of memory",
        "idle_kicks" => "Clients closed by the idle timeout",
        _ => "",
    };
    if help.is_empty() {
        format!("memcached stats field {field}")
    } else {
        format!("{help} (stats field {field})")
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let Sources {
            admin,
            cache,
            digest,
            ..
        } = &self.0;
        let stats = &admin.stats;
        let info: Labels = vec![
            ("version", VERSION.to_string()),
            ("config_digest", digest.get()),
        ];
        family(
            &mut enc,
            "info",
            "memroute's version and its configuration digest (FNV-1a 64 of the startfile and the resolved backend lists, as stats config_digest; none without a startfile)",
            MetricType::Gauge,
            [(info, ConstGauge::new(1i64))],
        )?;
        gauge(
            &mut enc,
            "uptime_seconds",
            "Seconds since the server started",
            stats.uptime_secs(),
        )?;
        gauge(
            &mut enc,
            "max_connections",
            "Most simultaneous client connections (-c)",
            admin.config.max_connections as u64,
        )?;
        gauge(
            &mut enc,
            "curr_connections",
            "Client connections open now",
            stats.curr_connections.load(Relaxed) as u64,
        )?;
        counter(
            &mut enc,
            "connections",
            "Client connections accepted (stats field total_connections)",
            stats.total_connections.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "rejected_connections",
            "Client connections refused at the connection limit",
            stats.rejected_connections.load(Relaxed),
        )?;
        for (field, value) in stats.totals().fields() {
            counter(&mut enc, field, &totals_help(field), value)?;
        }

        let c = cache.stats();
        gauge(
            &mut enc,
            "cache_bytes",
            "Bytes of items as memcached counts them (stats field bytes)",
            c.bytes,
        )?;
        gauge(
            &mut enc,
            "cache_heap_bytes",
            "Heap held for the embedded cache's items, what the memory limit bounds",
            c.heap_bytes,
        )?;
        gauge(
            &mut enc,
            "cache_limit_bytes",
            "The embedded cache's memory limit (stats field limit_maxbytes)",
            c.limit_maxbytes,
        )?;
        gauge(
            &mut enc,
            "cache_items",
            "Items stored now (stats field curr_items)",
            c.curr_items,
        )?;
        counter(
            &mut enc,
            "cache_stored_items",
            "Items stored since start (stats field total_items)",
            c.total_items,
        )?;
        counter(
            &mut enc,
            "cache_evictions",
            "Valid items evicted to make room",
            c.evictions,
        )?;
        counter(
            &mut enc,
            "cache_evicted_unfetched",
            "Evicted items never fetched",
            c.evicted_unfetched,
        )?;
        counter(
            &mut enc,
            "cache_reclaimed",
            "Expired or flushed items whose memory was reused",
            c.reclaimed,
        )?;
        counter(
            &mut enc,
            "cache_expired_unfetched",
            "Reclaimed items never fetched",
            c.expired_unfetched,
        )?;

        if admin.config.proxy.is_some() {
            self.encode_proxy(&mut enc)?;
        }
        self.encode_stores(&mut enc)
    }
}

impl Collector {
    fn encode_proxy(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let proxy = &self.0.admin.proxy_stats;
        counter(
            enc,
            "routed_requests",
            "Requests run by routes",
            self.0.admin.stats.routed_requests(),
        )?;
        counter(
            enc,
            "lua_errors",
            "Route errors (each answered SERVER_ERROR lua failure)",
            proxy.lua_errors.load(Relaxed),
        )?;
        counter(
            enc,
            "config_reloads",
            "Successful configuration reloads",
            proxy.reloads.load(Relaxed),
        )?;
        counter(
            enc,
            "config_reload_fails",
            "Configuration reloads that failed (the old one kept)",
            proxy.reload_failures.load(Relaxed),
        )?;
        counter(
            enc,
            "config_cron_runs",
            "Runs of mcp.register_cron functions",
            proxy.cron_runs.load(Relaxed),
        )?;
        counter(
            enc,
            "config_cron_fails",
            "Runs of mcp.register_cron functions that failed",
            proxy.cron_fails.load(Relaxed),
        )?;
        let (active, buffered) = self.0.admin.stats.load_totals();
        gauge(enc, "proxy_req_active", "Routed requests in flight", active)?;
        gauge(
            enc,
            "buffer_memory_used_bytes",
            "Bytes reserved for routed replies not yet written to clients",
            buffered,
        )?;
        let user = proxy.user_stats();
        let names = unique(user.iter().map(|(name, _)| name.clone()));
        family(
            enc,
            "user_stat",
            "Counters registered with mcp.add_stat and bumped with mcp.stat",
            MetricType::Gauge,
            names
                .into_iter()
                .zip(&user)
                .map(|(name, (_, value))| (vec![("name", name)], ConstGauge::new(*value))),
        )?;
        self.encode_pools(enc)?;
        self.encode_routes(enc)?;
        self.encode_backends(enc)
    }

    fn encode_pools(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let pools = self.0.admin.proxy_stats.pools.summaries();
        let labels = |p: &crate::stats::PoolSummary| -> Labels { vec![("pool", p.name.clone())] };
        family(
            enc,
            "pool_requests",
            "Requests sent to the pool (a multi-key get once per backend it reaches)",
            MetricType::Counter,
            pools
                .iter()
                .map(|p| (labels(p), ConstCounter::new(p.requests))),
        )?;
        family(
            enc,
            "pool_errors",
            "Pool requests answered with an error reply (ERROR, CLIENT_ERROR, SERVER_ERROR) or failed",
            MetricType::Counter,
            pools.iter().map(|p| (labels(p), ConstCounter::new(p.errors))),
        )
    }

    fn encode_routes(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let stats = &self.0.admin.stats;
        let tags = &self.0.listener_tags;
        // Slots no request has taken yet are left out: most of the
        // command-by-tag table has no route.
        let routes: Vec<(Labels, RouteTotals)> = (0..stats.route_slots())
            .filter_map(|slot| {
                let totals = stats.route_totals(slot);
                if totals.requests == 0 {
                    return None;
                }
                let (route, tag) = crate::route::route_slot(slot, tags);
                let labels: Labels = vec![
                    ("route", route.to_string()),
                    ("tag", tag.unwrap_or("").to_string()),
                ];
                Some((labels, totals))
            })
            .collect();
        family(
            enc,
            "route_requests",
            "Client requests that took the route attached for a command (a multi-key get counts once)",
            MetricType::Counter,
            routes
                .iter()
                .map(|(l, t)| (l.clone(), ConstCounter::new(t.requests))),
        )?;
        let outcomes = [Outcome::Ok, Outcome::Miss, Outcome::Error];
        family(
            enc,
            "route_replies",
            "Replies of routed requests by outcome: error (ERROR, CLIENT_ERROR, SERVER_ERROR), miss (END, EN, NOT_FOUND, NF), ok (anything else)",
            MetricType::Counter,
            routes.iter().flat_map(|(l, t)| {
                outcomes.iter().map(move |&outcome| {
                    let value = match outcome {
                        Outcome::Ok => t.ok,
                        Outcome::Miss => t.misses,
                        Outcome::Error => t.errors,
                    };
                    let mut labels = l.clone();
                    labels.push(("outcome", outcome.as_str().to_string()));
                    (labels, ConstCounter::new(value))
                })
            }),
        )
    }

    fn encode_backends(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let summaries = self.0.admin.proxy_stats.backends.summaries();
        if summaries.is_empty() {
            return Ok(());
        }
        // Named as `stats backends` names them: the label, or
        // label@host:port when one label names several addresses.
        let names: Vec<String> = summaries
            .iter()
            .map(|b| {
                let cfg = &b.config;
                let shared = summaries
                    .iter()
                    .filter(|o| o.config.label == cfg.label)
                    .count()
                    > 1;
                if shared {
                    format!("{}@{}:{}", cfg.label, cfg.host, cfg.port)
                } else {
                    cfg.label.clone()
                }
            })
            .collect();
        let names = unique(names);
        let labels = |i: usize| -> Labels { vec![("backend", names[i].clone())] };
        type Field = fn(&crate::backend::BackendSummary) -> u64;
        let counters: [(&str, &str, Field); 16] = [
            (
                "backend_requests",
                "Requests sent or refused (calls to send)",
                |b| b.stats.requests,
            ),
            ("backend_responses", "Replies received", |b| {
                b.stats.responses
            }),
            (
                "backend_failed_requests",
                "Requests that failed, fast fails included",
                |b| b.stats.failed_requests,
            ),
            (
                "backend_fast_fails",
                "Requests failed at once while the backend was bad",
                |b| b.stats.fast_fails,
            ),
            (
                "backend_busy",
                "Requests failed waiting for room under the in-flight limit",
                |b| b.stats.busy,
            ),
            (
                "backend_failures",
                "Failure events counted against the backend's health",
                |b| b.stats.failures,
            ),
            ("backend_timeouts", "Read timeouts", |b| b.stats.timeouts),
            (
                "backend_oversize_values",
                "Values over the item size limit dropped unread",
                |b| b.stats.oversize_values,
            ),
            (
                "backend_depth_refused",
                "Requests refused at once because the backend was at its depthlimit",
                |b| b.stats.depth_refused,
            ),
            (
                "backend_connects",
                "Connections opened and validated",
                |b| b.stats.connects,
            ),
            (
                "backend_reconnects",
                "Connection attempts after each connection's first",
                |b| b.stats.reconnects,
            ),
            (
                "backend_connect_failures",
                "Connection attempts that failed",
                |b| b.stats.connect_failures,
            ),
            (
                "backend_marked_bad",
                "Times the backend was marked bad",
                |b| b.stats.marked_bad,
            ),
            (
                "backend_writes",
                "Write batches sent (pipelined requests share one)",
                |b| b.stats.writes,
            ),
            (
                "backend_bytes_written",
                "Bytes written to the backend",
                |b| b.stats.bytes_written,
            ),
            ("backend_bytes_read", "Bytes read from the backend", |b| {
                b.stats.bytes_read
            }),
        ];
        for (name, help, field) in counters {
            family(
                enc,
                name,
                help,
                MetricType::Counter,
                summaries
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (labels(i), ConstCounter::new(field(b)))),
            )?;
        }
        let gauges: [(&str, &str, Field); 4] = [
            (
                "backend_connections",
                "Connections open and validated now",
                |b| b.stats.connections_open as u64,
            ),
            (
                "backend_in_flight",
                "Requests sent or queued and not yet answered",
                |b| b.stats.in_flight as u64,
            ),
            (
                "backend_workers",
                "Workers with connections to the backend",
                |b| b.workers as u64,
            ),
            (
                "backend_bad_workers",
                "Workers that see the backend bad now",
                |b| b.bad_workers as u64,
            ),
        ];
        for (name, help, field) in gauges {
            family(
                enc,
                name,
                help,
                MetricType::Gauge,
                summaries
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (labels(i), ConstGauge::new(field(b)))),
            )?;
        }
        let states = [BackendState::Healthy, BackendState::Bad, BackendState::Down];
        family(
            enc,
            "backend_state",
            "1 for the backend's state (healthy, bad: some worker fails it fast, down: configured down), 0 for the others",
            MetricType::Gauge,
            summaries.iter().enumerate().flat_map(|(i, b)| {
                states.iter().map(move |&state| {
                    let mut l = labels(i);
                    l.push(("state", state.as_str().to_string()));
                    (l, ConstGauge::new(i64::from(b.stats.state == state)))
                })
            }),
        )?;
        // The histogram: the HDR distribution in fixed buckets, in seconds.
        let mut metric = enc.encode_descriptor(
            "backend_latency_seconds",
            "Latency from queueing a request to parsing its reply",
            None,
            MetricType::Histogram,
        )?;
        for (i, b) in summaries.iter().enumerate() {
            let h = &b.stats.latency;
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain(std::iter::once(f64::INFINITY))
                .zip(h.buckets())
                .collect();
            let l = labels(i);
            metric.encode_family(&l)?.encode_histogram::<NoLabelSet>(
                h.sum.as_secs_f64(),
                h.count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }

    fn encode_stores(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let stores = self.0.admin.proxy_stats.stores.all();
        if stores.is_empty() {
            return Ok(());
        }
        let names = unique(stores.iter().map(|s| s.name().to_string()));
        // One family per field, every store's value in it.
        let mut fields: Vec<(String, Vec<(usize, u64)>)> = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            for (field, value) in store.stats() {
                match fields.iter_mut().find(|(f, _)| *f == field) {
                    Some((_, rows)) => rows.push((i, value)),
                    None => fields.push((field, vec![(i, value)])),
                }
            }
        }
        for (field, rows) in fields {
            let name = format!("store_{}", metric_name(&field));
            let help = format!("Shared store (DynamoDB pool) stats field {field}");
            let labels = |i: usize| -> Labels { vec![("store", names[i].clone())] };
            if STORE_GAUGES.contains(&field.as_str()) {
                let rows = rows.iter().map(|&(i, v)| (labels(i), ConstGauge::new(v)));
                family(enc, &name, &help, MetricType::Gauge, rows)?;
            } else {
                let rows = rows.iter().map(|&(i, v)| (labels(i), ConstCounter::new(v)));
                family(enc, &name, &help, MetricType::Counter, rows)?;
            }
        }
        Ok(())
    }
}

/// The running endpoint; it stops when the server shuts down.
pub struct MetricsServer {
    local_addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (errors here stop the start) and serves on a thread of
    /// its own until `shutdown` turns true.
    pub fn start(
        addr: SocketAddr,
        sources: Sources,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<MetricsServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let registry = Arc::new(registry(sources));
        let thread = std::thread::Builder::new()
            .name("memroute-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(error = %e, "metrics endpoint cannot start");
                            return;
                        }
                    };
                    let live = Arc::new(AtomicUsize::new(0));
                    loop {
                        let accepted = tokio::select! {
                            accepted = listener.accept() => accepted,
                            _ = shutdown.wait_for(|&stop| stop) => break,
                        };
                        match accepted {
                            Ok((stream, peer)) => {
                                if live.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                                    debug!(%peer, "metrics: too many scrapers, closed");
                                    continue;
                                }
                                live.fetch_add(1, Ordering::Relaxed);
                                let (registry, live) = (registry.clone(), live.clone());
                                tokio::spawn(async move {
                                    serve_connection(stream, registry).await;
                                    live.fetch_sub(1, Ordering::Relaxed);
                                });
                            }
                            Err(e) => {
                                warn!(error = %e, "metrics: accept failed");
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                });
                // Dropping the runtime drops any scrape in progress.
            })?;
        info!(addr = %local_addr, "metrics endpoint listening");
        Ok(MetricsServer { local_addr, thread })
    }

    /// The address bound (the port chosen by the OS for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the endpoint's thread to end (after shutdown).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, registry: Arc<Registry>) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |request| {
        let registry = registry.clone();
        async move { Ok::<_, Infallible>(respond(&request, &registry)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        debug!(error = %e, "metrics: connection ended with an error");
    }
}

fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let openmetrics = request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match render(registry, openmetrics) {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            let content_type = if openmetrics {
                OPENMETRICS_CONTENT_TYPE
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(parse_listen("9150"), Ok(local(9150)));
        assert_eq!(parse_listen(":9150"), Ok(local(9150)));
        assert_eq!(
            parse_listen("0.0.0.0:80"),
            Ok("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(
            parse_listen("[::1]:9150"),
            Ok("[::1]:9150".parse().unwrap())
        );
        assert_eq!(parse_listen("localhost:9150").map(|a| a.port()), Ok(9150));
        for bad in ["", ":", "99999", ":http", "1.2.3.4", "host:port:9"] {
            assert!(parse_listen(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digest_is_fnv1a_64() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(config_digest(None, &[]), "none");
        assert_eq!(
            config_digest(Some(Path::new("/nonexistent/memroute.lua")), &[]),
            "unreadable"
        );
    }

    #[test]
    fn config_digest_covers_file_and_backends() {
        let lists = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = lists(&["main: b1/10.0.0.1:11211 b2/10.0.0.2:11211"]);
        let d = digest_of(b"file", &a);
        // Stable: the same input, the same 16 hex digits.
        assert_eq!(d, digest_of(b"file", &a));
        assert_eq!(d.len(), 16);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        // The file counts, and so does every backend and its order.
        assert_ne!(d, digest_of(b"file2", &a));
        assert_ne!(d, digest_of(b"file", &lists(&[])));
        assert_ne!(
            d,
            digest_of(
                b"file",
                &lists(&["main: b1/10.0.0.1:11211 b2/10.0.0.3:11211"])
            )
        );
        assert_ne!(
            d,
            digest_of(
                b"file",
                &lists(&["main: b2/10.0.0.2:11211 b1/10.0.0.1:11211"])
            )
        );
        // Bytes cannot slide between the file and the lists.
        assert_ne!(
            digest_of(b"ab", &lists(&["c"])),
            digest_of(b"a", &lists(&["bc"]))
        );
        assert_ne!(
            digest_of(b"", &lists(&["a", "b"])),
            digest_of(b"", &lists(&["ab"]))
        );
        // A known value, so the digest does not change by accident between
        // versions (proxies of two versions must agree on one config).
        assert_eq!(
            digest_of(b"", &[]),
            format!("{:016x}", { fnv1a64(&[0u8; 16]) })
        );
    }

    #[test]
    fn membership_digest_ignores_order() {
        let a = membership_digest(&["b1/10.0.0.1:11211", "b2/10.0.0.2:11211"]);
        assert_eq!(
            a,
            membership_digest(&["b2/10.0.0.2:11211", "b1/10.0.0.1:11211"])
        );
        assert_eq!(
            a,
            membership_digest(&[
                "b2/10.0.0.2:11211",
                "b1/10.0.0.1:11211",
                "b2/10.0.0.2:11211"
            ])
        );
        assert_ne!(a, membership_digest(&["b1/10.0.0.1:11211"]));
        assert_ne!(
            a,
            membership_digest(&["b1/10.0.0.1:11211", "b2/10.0.0.3:11211"])
        );
        // Nothing healthy is a digest too (FNV-1a 64 of no bytes).
        assert_eq!(membership_digest::<&str>(&[]), "cbf29ce484222325");
    }

    #[test]
    fn label_values_are_made_unique() {
        let names = unique(["a", "b", "a", "a"].map(String::from));
        assert_eq!(names, ["a", "b", "a#2", "a#3"]);
        assert_eq!(metric_name("spool-bytes.x"), "spool_bytes_x");
    }
}
