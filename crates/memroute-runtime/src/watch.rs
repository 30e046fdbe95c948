//! memcached's `watch` log streams: the process-wide hub that log lines are
//! written to, the watchers that read them, and the line formats.
//!
//! A client that sends `watch proxyreqs proxyevents` gets `OK` and from
//! then on a stream of lines such as
//! `ts=1726602194.226721 gid=4 type=proxy_backend error=disconnected ...`,
//! in memcached 1.6.45's formats (`logger.c`). Any worker (or the main
//! thread, for `mcp.log` in the config VM) may log; each watcher has a
//! bounded buffer, and a line that does not fit is dropped and counted, to
//! be reported as `skipped=N` before the next line that fits, as memcached
//! does. A writer never waits for a watcher.
//!
//! Nothing is formatted unless someone watches that stream: callers test
//! [`enabled`] (one relaxed atomic load) first, and only then build the
//! line with [`log`].

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use memroute_proto::{Response, ResponseCode};
use tokio::sync::Notify;

/// memcached's streams, as bits (`LOG_*` in its logger.h, in the order its
/// `watch` command tries the names).
pub const RAWCMDS: u16 = 1 << 0;
pub const EVICTIONS: u16 = 1 << 1;
/// The embedded cache's reads (`get`, `gets`, `gat`, `gats`, `mg`).
pub const FETCHERS: u16 = 1 << 2;
/// The embedded cache's stores (`set`, `add`, `replace`, `append`,
/// `prepend`, `cas`, `ms`).
pub const MUTATIONS: u16 = 1 << 3;
pub const SYSEVENTS: u16 = 1 << 4;
/// Client connections accepted and closed.
pub const CONNEVENTS: u16 = 1 << 5;
/// `mcp.log_req`, `mcp.log_reqsample` and the backend `log` option.
pub const PROXYREQS: u16 = 1 << 6;
/// Backend failures, Lua route errors, configuration loads.
pub const PROXYEVENTS: u16 = 1 << 7;
/// `mcp.log`.
pub const PROXYUSER: u16 = 1 << 8;
/// Items the embedded cache deletes for `delete` and `md`.
pub const DELETIONS: u16 = 1 << 9;

/// The streams memroute has data for.
const SUPPORTED: u16 =
    FETCHERS | MUTATIONS | CONNEVENTS | PROXYREQS | PROXYEVENTS | PROXYUSER | DELETIONS;

/// `watch` arguments in the order memcached compares them.
const STREAM_NAMES: &[(&str, u16)] = &[
    ("rawcmds", RAWCMDS),
    ("evictions", EVICTIONS),
    ("fetchers", FETCHERS),
    ("mutations", MUTATIONS),
    ("sysevents", SYSEVENTS),
    ("connevents", CONNEVENTS),
    ("proxyreqs", PROXYREQS),
    ("proxyevents", PROXYEVENTS),
    ("proxyuser", PROXYUSER),
    ("deletions", DELETIONS),
];

/// memcached's limit on watchers at once (`WATCHER_LIMIT`).
pub const WATCHER_LIMIT: usize = 20;

/// Bytes one watcher may have waiting to be written. memcached's default
/// watcher buffer (`-o watcher_logbuf_size`) is 256 KiB.
pub const WATCHER_BUFFER: usize = 256 * 1024;

/// Room kept free for a `skipped=N` line, as memcached asks for a line's
/// length plus 128 before writing it.
const SKIP_LINE_ROOM: usize = 128;

/// A text entry's longest body: memcached formats text entries into 512
/// bytes, its last one the terminating NUL.
pub const TEXT_ENTRY_MAX: usize = 511;

/// Why `watch` was refused; [`WatchError::reply`] is memcached's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchError {
    /// An argument names no stream memroute can feed.
    UnknownStream,
    /// [`WATCHER_LIMIT`] watchers already.
    TooMany,
    /// `-o no_watch`.
    NotAllowed,
}

impl WatchError {
    pub fn reply(self) -> &'static str {
        match self {
            WatchError::UnknownStream => "ERROR",
            WatchError::TooMany => "WATCHER_TOO_MANY log watcher limit reached",
            WatchError::NotAllowed => "CLIENT_ERROR watch commands not allowed",
        }
    }
}

/// The streams a `watch` line asks for (its arguments after `watch`).
///
/// As memcached compares them (`strncmp` with the argument's length), an
/// argument picks the first stream whose name it begins (`proxy` is
/// `proxyreqs`). No argument means `fetchers`. A stream memroute has no
/// data for is refused like an unknown one: an `ERROR` now is clearer than
/// a watcher that never gets a line.
pub fn parse_streams<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Result<u16, WatchError> {
    let mut streams = 0;
    let mut any = false;
    for arg in args {
        any = true;
        let stream = STREAM_NAMES
            .iter()
            .find(|(name, _)| name.as_bytes().starts_with(arg))
            .map(|(_, bit)| *bit)
            .ok_or(WatchError::UnknownStream)?;
        streams |= stream;
    }
    if !any {
        streams = FETCHERS;
    }
    if streams & !SUPPORTED != 0 {
        return Err(WatchError::UnknownStream);
    }
    Ok(streams)
}

/// One watching connection's side of the hub: what it watches and the
/// lines waiting to be written to it.
pub struct Watcher {
    streams: u16,
    /// Bytes it may have waiting.
    capacity: usize,
    queue: Mutex<Queue>,
    /// Woken when lines are queued.
    pub ready: Notify,
}

#[derive(Default)]
struct Queue {
    lines: BytesMut,
    /// Lines dropped since the last one that fit.
    skipped: u64,
}

impl Watcher {
    /// Takes every queued byte (empty if none).
    pub fn take(&self) -> Bytes {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.lines.split().freeze()
    }

    /// Queues `line` if it fits, after a `skipped=N` line if lines were
    /// dropped before it; whether it was queued.
    fn offer(&self, line: &[u8]) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.lines.len() + line.len() + SKIP_LINE_ROOM > self.capacity {
            queue.skipped += 1;
            return false;
        }
        if queue.skipped > 0 {
            let skipped = queue.skipped;
            // (Writing to a BytesMut cannot fail.)
            let _ = writeln!(ByteWriter(&mut queue.lines), "skipped={skipped}");
            queue.skipped = 0;
        }
        queue.lines.extend_from_slice(line);
        true
    }
}

/// `fmt::Write` into a `BytesMut`.
struct ByteWriter<'a>(&'a mut BytesMut);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Unregisters its watcher when dropped (the connection ended, however).
pub struct WatcherGuard {
    watcher: Arc<Watcher>,
}

impl WatcherGuard {
    pub fn watcher(&self) -> &Arc<Watcher> {
        &self.watcher
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        hub().remove(&self.watcher);
    }
}

/// The process's log hub (memcached's logger, less its thread: a line is
/// handed to the watchers by the thread that logs it).
pub struct Hub {
    /// Every watcher's streams, or-ed: what [`enabled`] tests.
    streams: AtomicU16,
    /// The last line's number (`gid=`), process-wide, as memcached's.
    gid: AtomicU64,
    watchers: Mutex<Vec<Arc<Watcher>>>,
    /// Lines queued to watchers (memcached's `log_watcher_sent`).
    pub sent: AtomicU64,
    /// Lines a full watcher dropped (`log_watcher_skipped`).
    pub skipped: AtomicU64,
    /// Bytes a new watcher may have waiting (`-o watcher_logbuf_size`).
    buffer: AtomicUsize,
    /// Cleared by `-o no_watch`.
    allowed: AtomicBool,
}

/// The process's hub.
pub fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub {
        streams: AtomicU16::new(0),
        gid: AtomicU64::new(0),
        watchers: Mutex::new(Vec::new()),
        sent: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        buffer: AtomicUsize::new(WATCHER_BUFFER),
        allowed: AtomicBool::new(true),
    })
}

/// Whether anyone watches `stream`: test this before building a line.
#[inline]
pub fn enabled(stream: u16) -> bool {
    hub().streams.load(Relaxed) & stream != 0
}

/// Logs one line to the watchers of `stream`: `body` writes what follows
/// `ts=... gid=... ` (without the newline).
pub fn log(stream: u16, body: impl FnOnce(&mut String)) {
    hub().log(stream, body);
}

/// Logs a text entry (`type=... msg=...`), cut as memcached cuts text
/// entries at [`TEXT_ENTRY_MAX`] bytes.
pub fn log_text(stream: u16, body: impl FnOnce(&mut String)) {
    log(stream, |line| {
        let start = line.len();
        body(line);
        if line.len() - start > TEXT_ENTRY_MAX {
            let mut end = start + TEXT_ENTRY_MAX;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
    });
}

impl Hub {
    /// Sets the buffer of watchers added from now on (memcached's
    /// `-o watcher_logbuf_size`).
    pub fn set_watcher_buffer(&self, bytes: usize) {
        self.buffer.store(bytes, Relaxed);
    }

    /// Refuses `watch` from now on (memcached's `-o no_watch`).
    pub fn refuse_watchers(&self) {
        self.allowed.store(false, Relaxed);
    }

    /// Whether `watch` is allowed (no `-o no_watch`).
    pub fn allowed(&self) -> bool {
        self.allowed.load(Relaxed)
    }

    /// Adds a watcher of `streams` (as [`parse_streams`] gave them).
    pub fn add(&self, streams: u16) -> Result<WatcherGuard, WatchError> {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if watchers.len() >= WATCHER_LIMIT {
            return Err(WatchError::TooMany);
        }
        let watcher = Arc::new(Watcher {
            streams,
            capacity: self.buffer.load(Relaxed),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        });
        watchers.push(watcher.clone());
        self.streams.fetch_or(streams, Relaxed);
        Ok(WatcherGuard { watcher })
    }

    fn remove(&self, watcher: &Arc<Watcher>) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain(|w| !Arc::ptr_eq(w, watcher));
        let streams = watchers.iter().fold(0, |acc, w| acc | w.streams);
        self.streams.store(streams, Relaxed);
    }

    /// Lines logged so far (memcached's `log_worker_written`).
    pub fn written(&self) -> u64 {
        self.gid.load(Relaxed)
    }

    /// How many watchers there are (memcached's `log_watchers`).
    pub fn watcher_count(&self) -> usize {
        self.watchers.lock().map_or(0, |w| w.len())
    }

    fn log(&self, stream: u16, body: impl FnOnce(&mut String)) {
        let gid = self.gid.fetch_add(1, Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = String::with_capacity(160);
        // memcached prints the microseconds as a plain integer, unpadded
        // (`ts=%lld.%d`).
        let _ = write!(
            line,
            "ts={}.{} gid={gid} ",
            now.as_secs(),
            now.subsec_micros()
        );
        body(&mut line);
        line.push('\n');
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        for watcher in watchers.iter().filter(|w| w.streams & stream != 0) {
            if watcher.offer(line.as_bytes()) {
                self.sent.fetch_add(1, Relaxed);
                watcher.ready.notify_one();
            } else {
                self.skipped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// A Lua error in a route, a callback or a slot generator, as memcached
/// logs it to `proxyevents`: `type=proxy_error msg=...`, the message
/// without its traceback (one line).
pub fn proxy_error(message: &str) {
    if enabled(PROXYEVENTS) {
        let first = message.lines().next().unwrap_or("");
        log_text(PROXYEVENTS, |line| {
            line.push_str("type=proxy_error msg=");
            line.push_str(first);
        });
    }
}

/// A configuration (re)load's progress, `type=proxy_conf status=...`
/// (`start`, `done`, `failed`), as memcached logs it to `proxyevents`.
pub fn proxy_conf(status: &str) {
    if enabled(PROXYEVENTS) {
        log_text(PROXYEVENTS, |line| {
            line.push_str("type=proxy_conf status=");
            line.push_str(status);
        });
    }
}

/// One `type=proxy_req` line: a request and the reply it got, as
/// `mcp.log_req` and the backend `log` option write them.
pub struct ProxyReq<'a> {
    /// Microseconds the backend took (`res:elapsed()`); 0 without a reply.
    pub elapsed_us: u64,
    /// The reply, if there is one.
    pub response: Option<&'a Response>,
    /// The backend's host and port (`be=host:port`; `be=:` when unknown).
    pub backend: Option<(&'a str, u16)>,
    /// The client's socket, as the caller gave it (0 when unknown).
    pub cfd: i64,
    /// The caller's tag (`detail=`).
    pub detail: &'a [u8],
    /// The request's command line, without `\r\n`.
    pub request_line: &'a [u8],
}

/// memcached's limits on a `proxy_req` line's request and detail.
const PROXY_REQ_MAX_LINE: usize = 300;
const PROXY_REQ_MAX_DETAIL: usize = 150;

/// A reply's `type=`, `code=`, `status=` and `res=` as memcached's proxy
/// logs them: mcmc's response type (`MCMC_RESP_*`) and code
/// (`MCMC_CODE_*`), `-1` (`MCMC_ERR`) for an error reply, and its class.
pub fn reply_fields(response: &Response) -> (u16, u16, i8, u8) {
    use ResponseCode::*;
    const GET: u16 = 100;
    const META: u16 = 101;
    const STAT: u16 = 102;
    const GENERIC: u16 = 104;
    const END: u16 = 105;
    const VERSION: u16 = 106;
    const NUMERIC: u16 = 107;
    const ERRMSG: u16 = 108;
    let code = response.code();
    let (kind, mcmc) = match code {
        Value => (GET, 15),
        ResponseCode::End => (END, 17),
        Stored => (GENERIC, 8),
        Exists => (GENERIC, 9),
        Deleted => (GENERIC, 10),
        Touched => (GENERIC, 11),
        NotFound => (GENERIC, 13),
        NotStored => (GENERIC, 14),
        Ok => (GENERIC, 15),
        Number => (NUMERIC, 15),
        ResponseCode::Version => (VERSION, 12),
        Stat => (STAT, 15),
        Hd | Va | Me => (META, 15),
        En => (META, 17),
        Nf => (META, 13),
        Ns => (META, 14),
        Ex => (META, 9),
        Mn => (META, 16),
        Error => (ERRMSG, 21),
        ClientError => (ERRMSG, 22),
        ServerError => (ERRMSG, 23),
    };
    let status = if code.is_error() { -1 } else { 0 };
    (kind, mcmc, status, crate::route::reply_class(code))
}

/// Logs a `type=proxy_req` line to `proxyreqs` (the caller has checked
/// [`enabled`]).
pub fn log_proxy_req(entry: &ProxyReq<'_>) {
    log(PROXYREQS, |line| {
        let (kind, code, status, class) = entry.response.map_or((0, 0, 0, 0), reply_fields);
        let _ = write!(
            line,
            "type=proxy_req elapsed={} type={kind} code={code} status={status} res={class} cfd={} be=",
            entry.elapsed_us, entry.cfd
        );
        if let Some((host, port)) = entry.backend {
            let _ = write!(line, "{host}:{port}");
        } else {
            line.push(':');
        }
        line.push_str(" detail=");
        push_lossy(line, cut(entry.detail, PROXY_REQ_MAX_DETAIL));
        line.push_str(" req=");
        push_lossy(line, cut(entry.request_line, PROXY_REQ_MAX_LINE));
    });
}

fn cut(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

/// Whether to log a request as `mcp.log_reqsample(ms, rate, errors, ...)`
/// and the backend `log` option decide: an error when `errors`, slower
/// than `deadline_ms` when set, or one in `rate` at random when set.
pub fn sampled(
    deadline_ms: u64,
    rate: u64,
    errors: bool,
    response: Option<&Response>,
    elapsed_us: u64,
) -> bool {
    // (No response is not an error: memcached's status stays MCMC_OK.)
    let failed = response.is_some_and(|r| r.code().is_error());
    if errors && failed {
        return true;
    }
    if deadline_ms > 0 && elapsed_us > deadline_ms.saturating_mul(1000) {
        return true;
    }
    rate > 0 && one_in(rate)
}

/// True about once in `n` calls (a per-thread xorshift; sampling needs no
/// better).
fn one_in(n: u64) -> bool {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0x9e37_79b9, |d| d.as_nanos() as u64) | 1
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        ((x >> 32) * n) >> 32 == 0
    })
}

/// `type=conn_new rip=<ip> rport=<port> transport=tcp|local cfd=<fd>`, a
/// client connection accepted (`peer` is `None` on the UNIX socket).
pub fn conn_new(peer: Option<std::net::SocketAddr>, fd: i32) {
    if enabled(CONNEVENTS) {
        log(CONNEVENTS, |line| {
            line.push_str("type=conn_new ");
            push_endpoint(line, peer);
            let _ = write!(line, " cfd={fd}");
        });
    }
}

/// `type=conn_close rip= rport= transport= reason=<why> cfd=<fd>`.
pub fn conn_close(peer: Option<std::net::SocketAddr>, fd: i32, reason: &str) {
    if enabled(CONNEVENTS) {
        log(CONNEVENTS, |line| {
            line.push_str("type=conn_close ");
            push_endpoint(line, peer);
            let _ = write!(line, " reason={reason} cfd={fd}");
        });
    }
}

/// `rip=... rport=... transport=...` as memcached writes a client's end:
/// `unix`, port 0 and `local` for the UNIX socket.
fn push_endpoint(line: &mut String, peer: Option<std::net::SocketAddr>) {
    let _ = match peer {
        Some(addr) => write!(
            line,
            "rip={} rport={} transport=tcp",
            addr.ip(),
            addr.port()
        ),
        None => write!(line, "rip=unix rport=0 transport=local"),
    };
}

/// The socket of the client being served (`cfd=` in `fetchers` and
/// `mutations` lines), 0 outside a connection.
pub fn client_fd() -> i32 {
    crate::connection::current_client_fd().unwrap_or(0)
}

/// `type=item_get key=<key> status=found|not_found|expired|flushed
/// clsid=<class> cfd=<fd> size=<value bytes>`: a read of the embedded
/// cache (`size` and `clsid` 0 on a miss, as memcached).
pub fn item_get(key: &[u8], status: &str, size: Option<usize>) {
    log(FETCHERS, |line| {
        line.push_str("type=item_get key=");
        uri_encode(line, key);
        let _ = write!(
            line,
            " status={status} clsid={} cfd={} size={}",
            u8::from(size.is_some()),
            client_fd(),
            size.unwrap_or(0)
        );
    });
}

/// `type=item_store key=<key> status=<outcome> cmd=<command> ttl=<seconds
/// left, 0: none> clsid=1 cfd=<fd> size=<value bytes>`: a store to the
/// embedded cache.
pub fn item_store(key: &[u8], status: &str, command: &str, ttl: u64, size: usize) {
    log(MUTATIONS, |line| {
        line.push_str("type=item_store key=");
        uri_encode(line, key);
        let _ = write!(
            line,
            " status={status} cmd={command} ttl={ttl} clsid=1 cfd={} size={size}",
            client_fd()
        );
    });
}

/// memcached's `uriencode` of keys and buffers in log lines: bytes other
/// than unreserved URI characters as `%XX`.
pub fn uri_encode(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Pushes `bytes` as text (invalid UTF-8 replaced), for request lines and
/// details that memcached copies as they are.
pub fn push_lossy(out: &mut String, bytes: &[u8]) {
    out.push_str(&String::from_utf8_lossy(bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<u16, WatchError> {
        parse_streams(line.split_whitespace().map(str::as_bytes))
    }

    #[test]
    fn streams_are_named_as_memcached_names_them() {
        assert_eq!(args("proxyreqs"), Ok(PROXYREQS));
        assert_eq!(
            args("proxyuser proxyevents deletions"),
            Ok(PROXYUSER | PROXYEVENTS | DELETIONS)
        );
        // A prefix picks the first stream it begins, as strncmp does.
        assert_eq!(args("proxy"), Ok(PROXYREQS));
        assert_eq!(args("proxye"), Ok(PROXYEVENTS));
        assert_eq!(args("del"), Ok(DELETIONS));
        // Unknown, longer than a name, or a stream memroute cannot feed.
        assert_eq!(args("errors"), Err(WatchError::UnknownStream));
        assert_eq!(args("proxyreqsx"), Err(WatchError::UnknownStream));
        assert_eq!(args("proxyreqs bogus"), Err(WatchError::UnknownStream));
        assert_eq!(args("evictions"), Err(WatchError::UnknownStream));
        assert_eq!(args("conn"), Ok(CONNEVENTS));
        assert_eq!(args("mutations f"), Ok(MUTATIONS | FETCHERS));
        // No argument is `fetchers`.
        assert_eq!(args(""), Ok(FETCHERS));
    }

    #[test]
    fn a_full_watcher_drops_lines_and_reports_them_before_the_next() {
        let watcher = Watcher {
            streams: PROXYUSER,
            capacity: WATCHER_BUFFER,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        };
        let line = vec![b'x'; 1000];
        let mut queued = 0;
        while watcher.offer(&line) {
            queued += 1;
        }
        assert!(!watcher.offer(&line));
        assert_eq!(watcher.take().len(), queued * line.len());
        assert!(watcher.offer(b"next\n"));
        assert_eq!(&watcher.take()[..], b"skipped=2\nnext\n");
        assert!(watcher.offer(b"again\n"));
        assert_eq!(&watcher.take()[..], b"again\n");
    }

    #[test]
    fn a_watcher_holds_its_capacity_less_room_for_a_skip_line() {
        let watcher = Watcher {
            streams: DELETIONS,
            capacity: 1024,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        };
        let line = vec![b'x'; 500];
        assert!(watcher.offer(&line));
        // 500 + 500 + 128 > 1024.
        assert!(!watcher.offer(&line));
        assert!(watcher.offer(&line[..300]));
        assert_eq!(watcher.take().len(), 500 + b"skipped=1\n".len() + 300);
    }

    #[test]
    fn uri_encoding_keeps_unreserved_bytes() {
        let mut s = String::new();
        uri_encode(&mut s, b"a/b c~d_e.f-%\r");
        assert_eq!(s, "a%2Fb%20c~d_e.f-%25%0D");
    }
}
