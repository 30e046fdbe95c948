//! The `stats` family of replies and the version string.
//!
//! Field names and order follow memcached 1.6 so that monitoring tools
//! written for memcached read memroute unchanged.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use memroute_cache::Cache;
use memroute_proto::reply;

use crate::config::ServerConfig;
use crate::stats::{cpu_times, write_stat, ServerStats};

/// What `version` answers. It leads with the memcached protocol level we
/// implement, because client libraries (libmemcached among them) parse the
/// leading `major.minor.patch` to decide which commands a server supports.
pub const VERSION: &str = concat!("1.6.18-memroute-", env!("CARGO_PKG_VERSION"));

/// Shared state behind `stats`.
pub struct Admin {
    pub stats: Arc<ServerStats>,
    pub config: ServerConfig,
    pub proxy_stats: Arc<crate::stats::ProxyStats>,
    /// Client-facing TLS, for its settings and counters.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Client authentication, for `auth_cmds` and `auth_errors`.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// The configuration digest in force (`config_digest`).
    pub digest: Arc<crate::metrics::ConfigDigest>,
}

/// The live membership of the proxy, as `stats` summarises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// [`membership_digest`](crate::metrics::membership_digest) of the
    /// backends every worker sees healthy.
    pub digest: String,
    /// How many backends every worker sees healthy.
    pub healthy: usize,
    /// Every memcached backend of the live configuration.
    pub total: usize,
}

impl Admin {
    /// Answers `stats [args]`.
    pub fn stats(&self, args: &[u8], cache: &Cache, out: &mut BytesMut) {
        match args {
            b"" => self.general(cache, out),
            b"settings" => self.settings(cache, out),
            b"proxy" => {
                for (name, value) in self.proxy_stats.snapshot(self.stats.routed_requests()) {
                    write_stat(out, &name, value);
                }
                write_stat(out, "buffer_memory_used", self.stats.load_totals().1);
                reply::end(out);
            }
            b"backends" => self.backends(out),
            b"proxybe" => self.bad_backends(out),
            b"proxyfuncs" => {
                crate::stats::write_funcgen_stats(out);
                reply::end(out);
            }
            b"reset" => {
                self.stats.reset();
                self.proxy_stats.backends.reset();
                if let Some(auth) = &self.auth {
                    auth.reset_counts();
                }
                reply::line(out, "RESET");
            }
            // The embedded cache as one "slab class" (it has no slab
            // allocator): the fields with a true value, see
            // docs/compatibility.md.
            b"items" => self.items(cache, out),
            b"slabs" => self.slabs(cache, out),
            // No equivalent in memroute; an empty list keeps tools that
            // poll them working.
            b"sizes" | b"conns" | b"extstore" => reply::end(out),
            _ => reply::line(out, "ERROR"),
        }
    }

    fn general(&self, cache: &Cache, out: &mut BytesMut) {
        let s = &self.stats;
        let t = s.totals();
        let c = cache.stats();
        let (user, system) = cpu_times();
        write_stat(out, "pid", std::process::id());
        write_stat(out, "uptime", s.uptime_secs());
        write_stat(out, "time", s.now_unix());
        write_stat(out, "version", VERSION);
        write_stat(out, "pointer_size", usize::BITS);
        write_stat(out, "rusage_user", format_args!("{user:.6}"));
        write_stat(out, "rusage_system", format_args!("{system:.6}"));
        write_stat(out, "max_connections", self.config.max_connections);
        write_stat(out, "curr_connections", s.curr_connections.load(Relaxed));
        write_stat(out, "total_connections", s.total_connections.load(Relaxed));
        write_stat(
            out,
            "rejected_connections",
            s.rejected_connections.load(Relaxed),
        );
        write_stat(
            out,
            "connection_structures",
            s.curr_connections.load(Relaxed),
        );
        write_stat(out, "cmd_get", t.cmd_get);
        write_stat(out, "cmd_set", t.cmd_set);
        write_stat(out, "cmd_flush", t.cmd_flush);
        write_stat(out, "cmd_touch", t.cmd_touch);
        write_stat(out, "cmd_meta", t.cmd_meta);
        write_stat(out, "get_hits", t.get_hits);
        write_stat(out, "get_misses", t.get_misses);
        write_stat(out, "get_expired", t.get_expired);
        write_stat(out, "get_flushed", t.get_flushed);
        write_stat(out, "delete_misses", t.delete_misses);
        write_stat(out, "delete_hits", t.delete_hits);
        write_stat(out, "incr_misses", t.incr_misses);
        write_stat(out, "incr_hits", t.incr_hits);
        write_stat(out, "decr_misses", t.decr_misses);
        write_stat(out, "decr_hits", t.decr_hits);
        write_stat(out, "cas_misses", t.cas_misses);
        write_stat(out, "cas_hits", t.cas_hits);
        write_stat(out, "cas_badval", t.cas_badval);
        write_stat(out, "touch_hits", t.touch_hits);
        write_stat(out, "touch_misses", t.touch_misses);
        write_stat(out, "store_too_large", t.store_too_large);
        write_stat(out, "store_no_memory", t.store_no_memory);
        let (auth_cmds, auth_errors) = self.auth.as_ref().map_or((0, 0), |a| a.counts());
        write_stat(out, "auth_cmds", auth_cmds);
        write_stat(out, "auth_errors", auth_errors);
        if self.config.idle_timeout.is_some() {
            write_stat(out, "idle_kicks", t.idle_kicks);
        }
        write_stat(out, "bytes_read", t.bytes_read);
        write_stat(out, "bytes_written", t.bytes_written);
        write_stat(out, "limit_maxbytes", c.limit_maxbytes);
        write_stat(out, "threads", self.config.threads);
        write_stat(out, "bytes", c.bytes);
        write_stat(out, "curr_items", c.curr_items);
        write_stat(out, "total_items", c.total_items);
        write_stat(out, "expired_unfetched", c.expired_unfetched);
        write_stat(out, "evicted_unfetched", c.evicted_unfetched);
        write_stat(out, "evictions", c.evictions);
        write_stat(out, "reclaimed", c.reclaimed);
        // memcached's logger counters, for `watch`: lines logged (none is
        // dropped before reaching the watchers: there is no per-worker log
        // buffer), lines queued to watchers and lines a full watcher dropped.
        let hub = crate::watch::hub();
        write_stat(out, "log_worker_dropped", 0);
        write_stat(out, "log_worker_written", hub.written());
        write_stat(out, "log_watcher_skipped", hub.skipped.load(Relaxed));
        write_stat(out, "log_watcher_sent", hub.sent.load(Relaxed));
        write_stat(out, "log_watchers", hub.watcher_count());
        write_stat(out, "config_digest", self.digest.get());
        if self.config.proxy.is_some() {
            // Fleet agreement: which backends every worker sees healthy.
            let m = self.membership();
            write_stat(out, "membership_digest", m.digest);
            write_stat(out, "backends_healthy", m.healthy);
            write_stat(out, "backends_total", m.total);
            // The proxy's load and refusals (memcached's names; the
            // active and bufmem refusal counters are memroute's own).
            let (active, _) = s.load_totals();
            let depth: u64 = self
                .proxy_stats
                .backends
                .summaries()
                .iter()
                .map(|b| b.stats.depth_refused)
                .sum();
            // The config thread's counters, under memcached's names and
            // as memcached counts them: its `proxy_config_reloads` counts
            // every load begun, the first and failed ones included
            // (`stats proxy`'s `config_reloads` counts reloads that took).
            let p = &self.proxy_stats;
            let (reloads, fails) = (p.reloads.load(Relaxed), p.reload_failures.load(Relaxed));
            write_stat(out, "proxy_config_reloads", 1 + reloads + fails);
            write_stat(out, "proxy_config_reload_fails", fails);
            write_stat(out, "proxy_config_cron_runs", p.cron_runs.load(Relaxed));
            write_stat(out, "proxy_config_cron_fails", p.cron_fails.load(Relaxed));
            write_stat(out, "proxy_req_active", active);
            write_stat(out, "proxy_request_failed_depth", depth);
            write_stat(
                out,
                "proxy_request_failed_active",
                t.proxy_request_failed_active,
            );
            write_stat(
                out,
                "proxy_request_failed_bufmem",
                t.proxy_request_failed_bufmem,
            );
        }
        if let Some(tls) = &self.tls {
            write_stat(out, "ssl_handshake_errors", tls.handshake_errors());
            write_stat(out, "time_since_server_cert_refresh", tls.since_refresh());
        }
        for store in self.proxy_stats.stores.all() {
            for (field, value) in store.stats() {
                write_stat(out, &format!("{}_{field}", store.name()), value);
            }
        }
        reply::end(out);
    }

    /// The backends of the live configuration every worker sees healthy
    /// (not bad on any worker, not `down`), as `label/host:port`, and
    /// their digest.
    pub fn membership(&self) -> Membership {
        let summaries = self.proxy_stats.backends.summaries();
        let healthy: Vec<String> = summaries
            .iter()
            .filter(|b| {
                b.stats.state == crate::backend::BackendState::Healthy && b.bad_workers == 0
            })
            .map(|b| format!("{}/{}:{}", b.config.label, b.config.host, b.config.port))
            .collect();
        Membership {
            digest: crate::metrics::membership_digest(&healthy),
            healthy: healthy.len(),
            total: summaries.len(),
        }
    }

    /// `stats backends`: every memcached backend of the live configuration,
    /// summed over workers, as `<name>:<field>`. The name is the backend's
    /// label, or `label@host:port` when one label names several addresses.
    fn backends(&self, out: &mut BytesMut) {
        let summaries = self.proxy_stats.backends.summaries();
        for b in &summaries {
            let cfg = &b.config;
            let shared_label = summaries
                .iter()
                .filter(|other| other.config.label == cfg.label)
                .count()
                > 1;
            let name = if shared_label {
                format!("{}@{}:{}", cfg.label, cfg.host, cfg.port)
            } else {
                cfg.label.clone()
            };
            let s = &b.stats;
            let mut stat = |field: &str, value: &dyn std::fmt::Display| {
                write_stat(out, &format!("{name}:{field}"), value);
            };
            stat("address", &format_args!("{}:{}", cfg.host, cfg.port));
            stat("state", &s.state.as_str());
            stat("workers", &b.workers);
            stat("bad_workers", &b.bad_workers);
            stat("connections", &s.connections_open);
            stat("in_flight", &s.in_flight);
            stat("requests", &s.requests);
            stat("responses", &s.responses);
            stat("failed_requests", &s.failed_requests);
            stat("fast_fails", &s.fast_fails);
            stat("busy", &s.busy);
            stat("failures", &s.failures);
            stat("timeouts", &s.timeouts);
            stat("oversize_values", &s.oversize_values);
            stat("depth_refused", &s.depth_refused);
            stat("connects", &s.connects);
            stat("reconnects", &s.reconnects);
            stat("connect_failures", &s.connect_failures);
            stat("marked_bad", &s.marked_bad);
            stat("writes", &s.writes);
            stat("bytes_written", &s.bytes_written);
            stat("bytes_read", &s.bytes_read);
            let micros = |d: Option<std::time::Duration>| match d {
                None => "0".to_string(),
                Some(d) if d == std::time::Duration::MAX => "inf".to_string(),
                Some(d) => d.as_micros().to_string(),
            };
            stat("latency_mean_us", &micros(s.latency.mean()));
            for (field, q) in [
                ("latency_p50_us", 0.5),
                ("latency_p90_us", 0.9),
                ("latency_p99_us", 0.99),
                ("latency_p999_us", 0.999),
            ] {
                stat(field, &micros(s.latency.quantile(q)));
            }
        }
        reply::end(out);
    }

    /// `stats items`: the embedded cache as memcached's class 1 (listed,
    /// as memcached lists a class, only while it holds items). Only fields
    /// memroute has a true value for; no LRU segments, crawler or per-LRU
    /// hit counts.
    fn items(&self, cache: &Cache, out: &mut BytesMut) {
        let c = cache.stats();
        if c.curr_items > 0 {
            let age = cache.oldest_item_age().unwrap_or(0);
            for (field, value) in [
                ("number", c.curr_items),
                ("age", age),
                ("mem_requested", c.bytes),
                ("evicted", c.evictions),
                ("outofmemory", c.store_no_memory),
                ("reclaimed", c.reclaimed),
                ("expired_unfetched", c.expired_unfetched),
                ("evicted_unfetched", c.evicted_unfetched),
            ] {
                write_stat(out, &format!("items:1:{field}"), value);
            }
        }
        reply::end(out);
    }

    /// `stats slabs`: the embedded cache as class 1. `chunk_size` is the
    /// largest item the class holds (`-I`; each item is allocated at its
    /// own size), `used_chunks` the items; the command counters are the
    /// server's, all of which fall in the one class. No pages or free
    /// chunks. `total_malloced` is the heap held for the items.
    fn slabs(&self, cache: &Cache, out: &mut BytesMut) {
        let c = cache.stats();
        let active = c.curr_items > 0;
        if active {
            let t = self.stats.totals();
            for (field, value) in [
                ("chunk_size", c.item_size_max),
                ("used_chunks", c.curr_items),
                ("get_hits", t.get_hits),
                ("cmd_set", t.cmd_set),
                ("delete_hits", t.delete_hits),
                ("incr_hits", t.incr_hits),
                ("decr_hits", t.decr_hits),
                ("cas_hits", t.cas_hits),
                ("cas_badval", t.cas_badval),
                ("touch_hits", t.touch_hits),
            ] {
                write_stat(out, &format!("1:{field}"), value);
            }
        }
        write_stat(out, "active_slabs", u8::from(active));
        write_stat(out, "total_malloced", c.heap_bytes);
        reply::end(out);
    }

    /// `stats proxybe`, as memcached's proxy answers it: `bad_<label> 1`
    /// for each backend that some worker currently sees bad.
    fn bad_backends(&self, out: &mut BytesMut) {
        for b in self.proxy_stats.backends.summaries() {
            if b.bad_workers > 0 {
                write_stat(out, &format!("bad_{}", b.config.label), 1);
            }
        }
        reply::end(out);
    }

    fn settings(&self, cache: &Cache, out: &mut BytesMut) {
        let cfg = &self.config;
        let c = cache.stats();
        let port = cfg.listen.first().map_or(0, |a| a.port());
        let inter = cfg
            .listen
            .iter()
            .map(|a| a.ip().to_string())
            .collect::<Vec<_>>()
            .join(",");
        write_stat(out, "maxbytes", c.limit_maxbytes);
        write_stat(out, "maxconns", cfg.max_connections);
        write_stat(out, "tcpport", port);
        write_stat(out, "udpport", 0);
        write_stat(out, "inter", inter);
        write_stat(out, "verbosity", cfg.verbosity);
        write_stat(out, "evictions", "on");
        match &cfg.unix_socket {
            Some(unix) => {
                write_stat(out, "domain_socket", unix.path.display());
                write_stat(out, "umask", format!("{:o}", unix.mode));
            }
            None => write_stat(out, "domain_socket", "NULL"),
        }
        write_stat(out, "num_threads", cfg.threads);
        write_stat(out, "cas_enabled", "yes");
        write_stat(out, "tcp_backlog", cfg.backlog);
        let protocol = match cfg.protocol {
            crate::config::Protocol::Auto => "auto-negotiate",
            crate::config::Protocol::Ascii => "ascii",
            crate::config::Protocol::Binary => "binary",
        };
        write_stat(out, "binding_protocol", protocol);
        let (sasl, ascii) = match cfg.auth.as_ref() {
            Some(crate::auth::AuthSettings::Sasl { .. }) => ("yes", "no".to_string()),
            Some(crate::auth::AuthSettings::Text { file }) => ("no", file.display().to_string()),
            None => ("no", "no".to_string()),
        };
        write_stat(out, "auth_enabled_sasl", sasl);
        write_stat(out, "auth_enabled_ascii", ascii);
        write_stat(out, "item_size_max", cfg.limits.max_item_size);
        write_stat(out, "key_max_length", cfg.limits.max_key_len);
        write_stat(out, "shutdown_timeout", cfg.shutdown_timeout.as_secs());
        // memcached's TLS settings, with its meanings: ssl_verify_mode is
        // OpenSSL's flags (0, 1, 3 or 7), ssl_keyformat 1 is PEM.
        let tls = cfg.tls.as_ref();
        let path =
            |p: Option<&std::path::Path>| p.map_or("NULL".to_string(), |p| p.display().to_string());
        write_stat(out, "ssl_enabled", if tls.is_some() { "yes" } else { "no" });
        write_stat(
            out,
            "ssl_chain_cert",
            path(tls.map(|t| t.chain_cert.as_path())),
        );
        write_stat(
            out,
            "ssl_key",
            path(tls.map(|t| t.key.as_deref().unwrap_or(&t.chain_cert))),
        );
        write_stat(
            out,
            "ssl_verify_mode",
            tls.map_or(0, |t| t.verify_mode.openssl_flags()),
        );
        write_stat(out, "ssl_keyformat", 1);
        write_stat(out, "ssl_ciphers", "NULL");
        write_stat(
            out,
            "ssl_ca_cert",
            path(tls.and_then(|t| t.ca_cert.as_deref())),
        );
        write_stat(out, "ssl_wbuf_size", 16384);
        write_stat(out, "ssl_session_cache", "no");
        write_stat(out, "ssl_kernel_tls", "no");
        write_stat(
            out,
            "ssl_min_version",
            tls.map_or("tlsv1.2", |t| t.min_version.name()),
        );
        reply::end(out);
    }
}
