//! [`BackendConfig`]: the settings of one backend, shared by every worker.

use std::time::Duration;

/// The most pipelined connections one worker opens to one backend.
pub const MAX_CONNECTIONS: usize = 8;

/// Settings of one backend, shared by all workers (in an `Arc`).
///
/// Defaults follow memcached's proxy (`mcp.backend` options and the
/// `backend_*` global tunables): 5 s connect timeout, 3 s read timeout, 3 s
/// retry wait, failure limit 3, one connection, flap detection off
/// (`backend_flap_time` 0), flap backoff ramp 1.5 and a one-hour backoff cap.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Identity of the backend (memcached's `label`), used in logs and stats.
    pub label: String,
    /// IP address or host name. Host names are resolved on each connect.
    pub host: String,
    /// TCP port (default 11211).
    pub port: u16,
    /// How long a TCP connect may take (memcached: `connecttimeout`, 5 s).
    pub connect_timeout: Duration,
    /// How long requests may wait with no reply bytes arriving; also bounds
    /// the `version` check of a new connection (memcached: `readtimeout`,
    /// 3 s).
    pub read_timeout: Duration,
    /// How long a bad backend fast-fails before it is probed again
    /// (memcached: `retrytimeout`, 3 s).
    pub retry_wait: Duration,
    /// Consecutive failures (connect errors, failed validations, timeouts,
    /// I/O errors, bad replies) that mark the backend bad (memcached:
    /// `failurelimit`, 3). 0 behaves as 1.
    pub failure_limit: u32,
    /// Pipelined connections per worker, 1 to [`MAX_CONNECTIONS`] (values
    /// outside are clamped). Default 1.
    pub connections: usize,
    /// Operator override: the backend is always down and never contacted
    /// (memcached: `down`).
    pub down: bool,
    /// Enable TCP keepalive on backend sockets (memcached: `tcpkeepalive`).
    pub tcp_keepalive: bool,
    /// A backend marked bad again less than this long after it recovered is
    /// flapping, and its retry wait grows (memcached: `flaptime`). Zero (the
    /// default, as in memcached) turns flap detection off.
    pub flap_time: Duration,
    /// While flapping, the retry wait is `retry_wait * flap_backoff_ramp ^
    /// flaps` (memcached: `flapbackofframp`, 1.5). Values below 1 behave as 1.
    pub flap_backoff_ramp: f64,
    /// Upper bound of the flapping retry wait (memcached: `flapbackoffmax`,
    /// 3600 s).
    pub flap_backoff_max: Duration,
    /// Join single-key `get`s (and `gets`) that leave in one write into one
    /// multi-key line, and split the reply back per request (memroute:
    /// `batchgets`, default on). Replies are the same; the backend parses
    /// and answers one command instead of many.
    pub batch_gets: bool,
    /// Largest value block memroute takes from this backend (the item
    /// size limit, `-I`). A larger one is dropped as it arrives, never
    /// buffered, and its request is answered `SERVER_ERROR out of memory
    /// writing get response`; the connection stays in step.
    pub max_value: usize,
    /// TLS to this backend (`mcp.backend{tls = true}` after
    /// `mcp.init_tls()`); `None` is plain TCP.
    pub tls: Option<crate::tls::BackendTls>,
    /// Most requests queued or in flight to this backend (over all of a
    /// worker's connections to it); more are refused at once with
    /// `SERVER_ERROR backend failure` and counted as `depth_refused`
    /// (memcached: `depthlimit`, `mcp.backend_depth_limit`). 0: no limit.
    pub depth_limit: usize,
    /// Which of this backend's requests are written to `watch proxyreqs`
    /// (memcached: the backend `log` option); `None` logs none.
    pub request_log: Option<RequestLog>,
}

/// The backend `log = {deadline =, rate =, errors =, tag =}` option: a
/// request is logged when its reply is an error (`errors`), took longer
/// than `deadline_ms`, or one time in `rate` at random; with none of the
/// three set, every request is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestLog {
    pub deadline_ms: u64,
    pub rate: u64,
    pub errors: bool,
    /// Written as the line's `detail=`.
    pub tag: String,
}

impl RequestLog {
    /// Whether a request with this reply (`None`: a failure) taking
    /// `elapsed_us` is logged.
    pub fn wants(&self, response: Option<&memroute_proto::Response>, elapsed_us: u64) -> bool {
        if self.deadline_ms == 0 && self.rate == 0 && !self.errors {
            return true;
        }
        crate::watch::sampled(
            self.deadline_ms,
            self.rate,
            self.errors,
            response,
            elapsed_us,
        )
    }
}

impl BackendConfig {
    /// A backend at `host:port` with every other setting at its default;
    /// the label is `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        BackendConfig {
            label: format!("{host}:{port}"),
            host,
            port,
            ..BackendConfig::default()
        }
    }

    /// [`BackendConfig::connections`] clamped to `1..=MAX_CONNECTIONS`.
    pub fn connection_count(&self) -> usize {
        self.connections.clamp(1, MAX_CONNECTIONS)
    }

    /// [`BackendConfig::failure_limit`], at least 1.
    pub fn effective_failure_limit(&self) -> u32 {
        self.failure_limit.max(1)
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            label: String::new(),
            host: "127.0.0.1".to_string(),
            port: 11211,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(3),
            retry_wait: Duration::from_secs(3),
            failure_limit: 3,
            connections: 1,
            down: false,
            tcp_keepalive: false,
            flap_time: Duration::ZERO,
            flap_backoff_ramp: 1.5,
            flap_backoff_max: Duration::from_secs(3600),
            batch_gets: true,
            max_value: memroute_proto::Limits::default().max_item_size,
            tls: None,
            depth_limit: 0,
            request_log: None,
        }
    }
}
