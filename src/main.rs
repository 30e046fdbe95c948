//! The `memroute` binary: parses memcached-style flags and starts the
//! runtime. All behaviour lives in the `memroute-*` crates.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};
use memroute_runtime::auth::AuthSettings;
use memroute_runtime::config::{Protocol, TaggedListen, UnixSocket, DEFAULT_UNIX_MODE};
use memroute_runtime::route_of::KeyRoute;
use memroute_runtime::tls::{MinVersion, TlsSettings, VerifyMode};
use memroute_runtime::{Server, ServerConfig};

mod fleet;
mod hash_report;

/// The process's allocator. A proxy allocates and frees small blocks per
/// request (a request frame, a reply's piece, the future that serves it)
/// with many requests in flight at once; glibc's malloc keeps only seven
/// free blocks per size for a thread, so under load most of those calls
/// take its slow path. jemalloc's per-thread caches hold many more
/// (docs/benchmarks.md, run 26). mimalloc was as fast but held the
/// embedded cache's process about 20 MiB over glibc; jemalloc about 10.
/// Its per-thread caches are built larger than its defaults (see
/// `.cargo/config.toml`; `_RJEM_MALLOC_CONF` overrides them at run time).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The Lua libraries in `lua/`, compiled into the binary: `require "simple"`
/// works with no file on disk (a file of the same name on the search path
/// wins).
const LUA_LIBRARIES: memroute_runtime::config::LuaLibraries = &[
    ("simple", include_str!("../lua/simple.lua")),
    ("tier", include_str!("../lua/tier.lua")),
    ("routelib", include_str!("../lua/routelib.lua")),
];

/// A Lua-scriptable memcached routing proxy. With no configuration it is a
/// drop-in memcached served by an embedded in-memory cache.
#[derive(Parser, Debug)]
#[command(name = "memroute", version, about, disable_help_flag = true)]
struct Cli {
    /// TCP port to listen on.
    #[arg(short = 'p', long = "port", default_value_t = 11211, global = true)]
    port: u16,
    /// Interfaces to listen on, comma-separated or repeated: an IP address
    /// (`*` for all), `IP:PORT`, `[IPv6]:PORT`, each optionally prefixed
    /// `tag_NAME_:` to route by tag [default: 127.0.0.1].
    #[arg(short = 'l', long = "listen", global = true)]
    listen: Vec<String>,
    /// UNIX socket to listen on (disables TCP, as in memcached).
    #[arg(short = 's', long = "unix-socket", value_name = "FILE", global = true)]
    unix_socket: Option<PathBuf>,
    /// Permissions of the UNIX socket file, in octal [default: 700].
    #[arg(short = 'a', long = "unix-mask", value_name = "MASK", value_parser = parse_unix_mask, global = true)]
    unix_mask: Option<u32>,
    /// Worker threads (default: number of cores).
    #[arg(short = 't', long = "threads", global = true)]
    threads: Option<usize>,
    /// Embedded cache memory limit, in megabytes.
    #[arg(
        short = 'm',
        long = "memory-limit",
        default_value_t = 64,
        global = true
    )]
    memory_limit_mb: u64,
    /// Most simultaneous connections.
    #[arg(
        short = 'c',
        long = "conn-limit",
        default_value_t = 1024,
        global = true
    )]
    conn_limit: usize,
    /// Largest item (value, key and header), e.g. 1m, 512k, 2097152.
    #[arg(short = 'I', long = "max-item-size", default_value = "1m", value_parser = parse_size, global = true)]
    max_item_size: usize,
    /// TCP listen backlog.
    #[arg(
        short = 'b',
        long = "listen-backlog",
        default_value_t = 1024,
        global = true
    )]
    backlog: u32,
    /// Protocol: auto (each connection's first byte decides), ascii (text
    /// and meta only) or binary [default: auto; ascii with -Y, binary with
    /// -S].
    #[arg(short = 'B', long = "protocol", value_parser = parse_protocol, global = true)]
    protocol: Option<Protocol>,
    /// UDP port: memroute speaks TCP only, so only 0 is accepted (as in
    /// memcached's default).
    #[arg(short = 'U', long = "udp-port", default_value_t = 0, global = true)]
    udp_port: u16,
    /// Accepted for compatibility with memcached's command line; memroute
    /// does not switch users (run it as the user you want).
    #[arg(short = 'u', long = "user", global = true)]
    user: Option<String>,
    /// Lua startfile: run as a routing proxy (see docs/lua-api.md).
    #[arg(long = "config", value_name = "STARTFILE", global = true)]
    config: Option<std::path::PathBuf>,
    /// String passed to the startfile as `mcp.start_arg`.
    #[arg(long = "config-arg", value_name = "STR", global = true)]
    config_arg: Option<String>,
    /// A route file in memcached's routelib format, run by memroute's
    /// native route library (the same as `-o
    /// proxy_config=routelib,proxy_arg=FILE`; see docs/routes.md).
    #[arg(long = "routes", value_name = "FILE", conflicts_with_all = ["config", "config_arg"], global = true)]
    routes: Option<std::path::PathBuf>,
    /// With `--routes`: a library of route handlers written in Lua
    /// (routelib's `register_route_handlers`), run after routelib on the
    /// config VM and every worker VM (repeatable; the same as `-o
    /// proxy_config=routelib:LIB.lua`).
    #[arg(
        long = "route-handlers",
        value_name = "FILE",
        requires = "routes",
        global = true
    )]
    route_handlers: Vec<std::path::PathBuf>,
    /// An mcrouter JSON configuration, read into memroute's native route
    /// handlers (see docs/mcrouter-migration.md).
    #[arg(long = "mcrouter-config", value_name = "FILE", conflicts_with_all = ["config", "config_arg", "routes"], global = true)]
    mcrouter_config: Option<std::path::PathBuf>,
    /// mcrouter's `--big-value-split-threshold`: with `--mcrouter-config`,
    /// values over this many bytes are stored as chunks of this size plus
    /// an index item (mcrouter's BigValueRoute; 0, the default: off).
    #[arg(
        long = "big-value-split-threshold",
        value_name = "BYTES",
        default_value_t = 0,
        requires = "mcrouter_config",
        global = true
    )]
    big_value_split_threshold: usize,
    /// Extra directory for Lua's `require` (repeatable).
    #[arg(long = "lua-path", value_name = "DIR", global = true)]
    lua_path: Vec<std::path::PathBuf>,
    /// memcached-style extended options, comma-separated: `proxy_config=FILE`,
    /// `proxy_arg=STR`, `idle_timeout=SECS`. memcached's memory tuning options
    /// (slabs, LRU, hash table, extstore) are accepted with a warning; any
    /// other option stops the start.
    #[arg(short = 'o', long = "extended", value_name = "OPTS", global = true)]
    extended: Vec<String>,
    /// Close a client connection idle this many seconds (0: never), as
    /// memcached's `-o idle_timeout`.
    #[arg(long = "idle-timeout", value_name = "SECS", global = true)]
    idle_timeout: Option<u64>,
    /// Most bytes of replies held for one client connection, e.g. 64m (at
    /// least twice -I; default 64m, or twice -I if that is more).
    #[arg(long = "client-buffer-limit", value_name = "SIZE", value_parser = parse_size, global = true)]
    client_buffer_limit: Option<usize>,
    /// TLS on every listener (needs a certificate: --tls-cert or
    /// -o ssl_chain_cert=FILE).
    #[arg(short = 'Z', long = "enable-ssl", global = true)]
    enable_ssl: bool,
    /// TLS certificate chain, PEM (memcached's -o ssl_chain_cert).
    #[arg(long = "tls-cert", value_name = "FILE", global = true)]
    tls_cert: Option<PathBuf>,
    /// TLS private key, PEM, if not in the chain file (-o ssl_key).
    #[arg(long = "tls-key", value_name = "FILE", global = true)]
    tls_key: Option<PathBuf>,
    /// CA certificates client certificates must chain to (-o ssl_ca_cert).
    #[arg(long = "tls-ca", value_name = "FILE", global = true)]
    tls_ca: Option<PathBuf>,
    /// Client certificates: 0 not asked, 1 asked and checked if sent, 2 and
    /// 3 required (-o ssl_verify_mode).
    #[arg(long = "tls-verify-mode", value_name = "0-3", global = true)]
    tls_verify_mode: Option<String>,
    /// Binary SASL PLAIN authentication (binary protocol only), against
    /// --sasl-pwdb or $MEMCACHED_SASL_PWDB.
    #[arg(short = 'S', long = "enable-sasl", global = true)]
    enable_sasl: bool,
    /// SASL password database: user:password lines (default:
    /// $MEMCACHED_SASL_PWDB).
    #[arg(long = "sasl-pwdb", value_name = "FILE", global = true)]
    sasl_pwdb: Option<PathBuf>,
    /// Text-protocol authentication: user:password lines (memcached's -Y).
    #[arg(short = 'Y', long = "auth-file", value_name = "FILE", global = true)]
    auth_file: Option<PathBuf>,
    /// Seconds graceful shutdown waits for requests in flight.
    #[arg(long = "shutdown-timeout", default_value_t = 10, global = true)]
    shutdown_timeout: u64,
    /// Serve Prometheus / OpenMetrics metrics at http://HOST:PORT/metrics
    /// (`:PORT` or PORT: on 127.0.0.1); off by default.
    #[arg(long = "metrics-listen", value_name = "HOST:PORT",
          value_parser = memroute_runtime::metrics::parse_listen, global = true)]
    metrics_listen: Option<SocketAddr>,
    /// Verbose logging: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, global = true)]
    verbose: u8,
    /// Print help.
    #[arg(short = 'h', long = "help", action = ArgAction::Help)]
    help: Option<bool>,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(Subcommand, Debug)]
enum Tool {
    /// Print the hash-distribution balance and key-movement report (see
    /// docs/hashing.md) and write its SVG box plot.
    HashReport {
        /// Where to write the SVG box plot.
        #[arg(long = "svg", default_value = "hash-report.svg")]
        svg: std::path::PathBuf,
    },
    /// Check that running proxies agree: the same configuration digest and
    /// the same backends seen healthy (docs/operations.md, "Fleet
    /// agreement"). Exits 0 when all agree, 1 when configurations differ, 3
    /// when only membership differs, 4 when a proxy cannot be read.
    FleetCheck {
        /// The proxies' memcached listeners.
        #[arg(value_name = "HOST:PORT", required = true)]
        proxies: Vec<String>,
        /// Seconds allowed to connect, and for each read and write.
        #[arg(long = "timeout", value_name = "SECS", default_value_t = 2.0)]
        timeout: f64,
        /// Print help.
        #[arg(short = 'h', long = "help", action = ArgAction::Help)]
        help: Option<bool>,
    },
    /// Print where keys go under a configuration, without serving or
    /// sending anything: for each KEY, the backends `OP KEY` tries in
    /// order and the route tree it takes (what a running proxy answers to
    /// `get __mcrouter__.route(OP,KEY)` and `route_handles`; see
    /// docs/operations.md, "Where does a key go"). Takes the server's
    /// configuration flags (--config, --config-arg, -o proxy_config=...,
    /// --routes, --route-handlers, --mcrouter-config, -l). Exits 0 when
    /// answered, 2 when the configuration or the question is bad.
    RouteOf {
        /// The operation: any key command (get, set, delete, mg, ms...).
        #[arg(value_name = "OP")]
        op: String,
        /// The keys to look up.
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
        /// Answer for connections on listeners tagged NAME (`-l
        /// tag_NAME_:...`) rather than untagged ones.
        #[arg(long = "tag", value_name = "NAME")]
        tag: Option<String>,
        /// Print help.
        #[arg(short = 'h', long = "help", action = ArgAction::Help)]
        help: Option<bool>,
    },
}

/// `memroute route-of`: prints, for each key, the key, then `backends:`
/// and `route:` with one line each indented four spaces (tree lines keep
/// their own indentation after those four).
fn route_of(cli: &Cli, tag: Option<&str>, op: &str, keys: &[String]) -> ExitCode {
    use memroute_runtime::route::explain::Unexplained;
    let config = match config_from(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("memroute: {e}");
            return ExitCode::from(2);
        }
    };
    let answers = match memroute_runtime::route_of::route_of(&config, tag, op, keys) {
        Ok(answers) => answers,
        Err(e) => {
            eprintln!("memroute: route-of: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = String::new();
    for KeyRoute { key, answer } in &answers {
        out.push_str(&format!("{op} {key}\n"));
        match answer {
            Ok((backends, tree)) => {
                out.push_str("  backends:\n");
                for line in backends {
                    out.push_str(&format!("    {line}\n"));
                }
                out.push_str("  route:\n");
                for line in tree {
                    out.push_str(&format!("    {line}\n"));
                }
            }
            Err(Unexplained::NoRoute) => {
                out.push_str(&format!("  no route: nothing is attached for {op}\n"))
            }
            Err(Unexplained::UnknownOperation) => {
                eprintln!(
                    "memroute: route-of: {op:?} {key:?} is not a request memroute can \
                     explain: OP must be a key command (get, set, delete, mg...) and KEY \
                     a valid key for it"
                );
                return ExitCode::from(2);
            }
        }
    }
    print!("{out}");
    ExitCode::SUCCESS
}

/// memcached's `-B` names.
fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "auto" => Ok(Protocol::Auto),
        "ascii" => Ok(Protocol::Ascii),
        "binary" => Ok(Protocol::Binary),
        _ => Err(format!(
            "{s:?} is not a protocol: use auto, ascii or binary"
        )),
    }
}

/// `-a`: octal permission bits, as memcached reads them (memcached takes
/// anything `strtol` does, so `-a abc` makes a socket no one can use; here
/// it is an error).
fn parse_unix_mask(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{s:?} is not an octal permission mask (0 to 777)")),
    }
}

/// Where `-l` listens: untagged and tagged addresses.
#[derive(Debug, Default, PartialEq)]
struct Listeners {
    untagged: Vec<SocketAddr>,
    tagged: Vec<TaggedListen>,
}

/// Parses `-l` values as memcached does: each a list separated by `,` or
/// `;` of `[tag_NAME_:]HOST[:PORT]`, HOST an IP address, `[IPv6]`, or `*`
/// for every address; without a port, `-p`'s.
fn parse_listeners(values: &[String], default_port: u16) -> Result<Listeners, String> {
    let mut out = Listeners::default();
    for part in values
        .iter()
        .flat_map(|v| v.split([',', ';']))
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (tag, rest) = match part.strip_prefix("tag_") {
            Some(tagged) => match tagged.split_once('_') {
                Some((tag, rest)) if rest.starts_with(':') => {
                    memroute_runtime::route::check_tag(tag.as_bytes())
                        .map_err(|e| format!("-l {part:?}: {e}"))?;
                    (Some(tag.to_string()), &rest[1..])
                }
                _ => {
                    return Err(format!(
                        "-l {part:?}: a tag is written tag_NAME_:HOST[:PORT]"
                    ))
                }
            },
            None => (None, part),
        };
        let (host, port) = split_host_port(rest).map_err(|e| format!("-l {part:?}: {e}"))?;
        let ips: Vec<IpAddr> = if host == "*" {
            vec![IpAddr::from([0u8; 4]), IpAddr::from([0u16; 8])]
        } else {
            vec![host
                .parse()
                .map_err(|_| format!("-l {part:?}: {host:?} is not an IP address"))?]
        };
        for ip in ips {
            let addr = SocketAddr::new(ip, port.unwrap_or(default_port));
            match &tag {
                Some(tag) => out.tagged.push(TaggedListen {
                    tag: tag.clone(),
                    addr,
                }),
                None => out.untagged.push(addr),
            }
        }
    }
    Ok(out)
}

/// `HOST`, `HOST:PORT`, `[IPv6]` or `[IPv6]:PORT`; a bare IPv6 address
/// (several colons) has no port, as in memcached.
fn split_host_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address opened with [ needs its ]")?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or("expected :PORT after ]")?),
            ),
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))?,
        ),
        None => None,
    };
    Ok((host, port))
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1024,
        "m" | "mb" => 1024 * 1024,
        "g" | "gb" => 1024 * 1024 * 1024,
        _ => return Err(format!("bad size unit in {s:?} (use k, m or g)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// The error for a TLS option memroute does not implement: it must not
/// serve otherwise than asked.
fn tls_unsupported(what: &str) -> String {
    format!(
        "{what}: memroute's TLS (rustls) does not implement this option; it reads \
         ssl_chain_cert, ssl_key, ssl_ca_cert, ssl_verify_mode and ssl_min_version \
         (docs/operations.md)"
    )
}

/// memcached 1.6's `-o` options that tune its own memory and item storage
/// (slab allocator, LRU, hash table, extstore, buffers, logging and
/// sandboxing knobs) or are no-ops in memcached itself. They mean nothing to
/// memroute, whose embedded cache is built differently, so they are
/// accepted with a warning: a memcached command line keeps working. Listed
/// in docs/operations.md.
const TUNING_OPTIONS: &[&str] = &[
    // Hash table.
    "hashpower",
    "no_hashexpand",
    "hash_algorithm",
    // Slab allocator.
    "slab_reassign",
    "no_slab_reassign",
    "slab_automove",
    "no_slab_automove",
    "slab_automove_ratio",
    "slab_automove_window",
    "slab_automove_freeratio",
    "slab_sizes",
    "slab_chunk_max",
    "no_chunked_items",
    // LRU.
    "tail_repair_time",
    "lru_crawler",
    "no_lru_crawler",
    "lru_crawler_sleep",
    "lru_crawler_tocrawl",
    "lru_maintainer",
    "no_lru_maintainer",
    "hot_lru_pct",
    "warm_lru_pct",
    "hot_max_factor",
    "warm_max_factor",
    "temporary_ttl",
    // Buffers, logging and statistics.
    "read_buf_mem_limit",
    "resp_obj_mem_limit",
    "worker_logbuf_size",
    "track_sizes",
    // No-ops in memcached 1.6 itself.
    "inline_ascii_resp",
    "no_inline_ascii_resp",
    "modern",
    // memroute already answers past -c with an error and closes.
    "maxconns_fast",
    // memroute does not sandbox itself: there is nothing to turn off.
    "no_drop_privileges",
    "relaxed_privileges",
    // memcached's proxy internals.
    "proxy_uring",
    "proxy_memprofile",
    // extstore (flash storage).
    "ext_path",
    "ext_page_size",
    "ext_wbuf_size",
    "ext_threads",
    "ext_io_depth",
    "ext_item_size",
    "ext_item_age",
    "ext_low_ttl",
    "ext_recache_rate",
    "ext_compact_under",
    "ext_drop_under",
    "ext_max_sleep",
    "ext_max_frag",
    "ext_drop_unread",
];

/// What one `-o` option asks for.
#[derive(Debug, PartialEq)]
enum Extended<'a> {
    ProxyConfig(&'a str),
    ProxyArg(&'a str),
    IdleTimeout(u64),
    /// A memcached tuning option memroute accepts and ignores.
    Tuning,
    /// `ssl_chain_cert`, `ssl_key`, `ssl_ca_cert`.
    SslFile(SslFile, &'a str),
    SslVerifyMode(VerifyMode),
    SslMinVersion(MinVersion),
    /// `watcher_logbuf_size=KB`: each `watch` reader's buffer.
    WatcherBuffer(usize),
    /// `no_watch`: the `watch` command is refused.
    NoWatch,
}

/// Which TLS file an `-o ssl_*` option names.
#[derive(Debug, PartialEq, Clone, Copy)]
enum SslFile {
    Chain,
    Key,
    Ca,
}

/// Whether an `-o` item right after `proxy_arg=...` is more of the
/// argument rather than an option: it has no `=` and cannot be an option
/// name (letters, digits and `_`), as with a host list
/// `proxy_arg=10.0.0.1:11211,10.0.0.2:11211`. memcached refuses such an
/// item, so no memcached command line changes meaning.
fn continues_proxy_arg(item: &str) -> bool {
    !item.contains('=') && !item.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// One `-o` option (`name` or `name=value`), or why memroute refuses it.
fn extended_option<'a>(name: &str, value: Option<&'a str>) -> Result<Extended<'a>, String> {
    let opt = match value {
        Some(v) => format!("-o {name}={v}"),
        None => format!("-o {name}"),
    };
    let needs = |what: &str| format!("{opt}: needs {what} ({name}={what})");
    match name {
        "proxy_config" => match value {
            Some(file) if !file.is_empty() => Ok(Extended::ProxyConfig(file)),
            _ => Err(needs("FILE")),
        },
        "proxy_arg" => value.map(Extended::ProxyArg).ok_or_else(|| needs("STR")),
        "idle_timeout" => match value.map(|v| v.parse::<u64>()) {
            Some(Ok(secs)) => Ok(Extended::IdleTimeout(secs)),
            Some(Err(_)) => Err(format!(
                "{opt}: the idle timeout must be a whole number of seconds (0: never)"
            )),
            None => Err(needs("SECS")),
        },
        "ssl_chain_cert" | "ssl_key" | "ssl_ca_cert" => match value {
            Some(file) if !file.is_empty() => Ok(Extended::SslFile(
                match name {
                    "ssl_chain_cert" => SslFile::Chain,
                    "ssl_key" => SslFile::Key,
                    _ => SslFile::Ca,
                },
                file,
            )),
            _ => Err(needs("FILE")),
        },
        "ssl_verify_mode" => match value.map(VerifyMode::from_number) {
            Some(Some(mode)) => Ok(Extended::SslVerifyMode(mode)),
            Some(None) => Err(format!(
                "{opt}: ssl_verify_mode is 0 (none), 1 (request), 2 (require) or 3 (once)"
            )),
            None => Err(needs("0-3")),
        },
        "ssl_min_version" => match value {
            Some("2") => Ok(Extended::SslMinVersion(MinVersion::Tls12)),
            Some("3") => Ok(Extended::SslMinVersion(MinVersion::Tls13)),
            Some("0" | "1") => Err(format!(
                "{opt}: memroute's TLS (rustls) speaks TLS 1.2 and 1.3 only: use 2 (tlsv1.2, \
                 the default) or 3 (tlsv1.3)"
            )),
            Some(_) => Err(format!(
                "{opt}: ssl_min_version is 2 (tlsv1.2) or 3 (tlsv1.3)"
            )),
            None => Err(needs("2|3")),
        },
        "watcher_logbuf_size" => match value.map(|v| v.parse::<usize>()) {
            Some(Ok(kb)) if kb > 0 => Ok(Extended::WatcherBuffer(kb.saturating_mul(1024))),
            Some(_) => Err(format!(
                "{opt}: the watcher buffer is a positive number of kilobytes"
            )),
            None => Err(needs("KB")),
        },
        "no_watch" => Ok(Extended::NoWatch),
        _ if name.starts_with("ssl_") => Err(tls_unsupported(&opt)),
        // no_modern turns maxconns_fast off too.
        "no_maxconns_fast" | "no_modern" => Err(format!(
            "{opt}: memroute cannot turn off maxconns_fast: past the connection limit \
             (-c) it always answers an error and closes the connection"
        )),
        "drop_privileges" => Err(format!(
            "{opt}: memroute cannot do this: it does not sandbox itself; run it under a \
             service manager's sandboxing instead"
        )),
        "sock_cookie_id" => Err(format!(
            "{opt}: memroute cannot do this: it does not mark its sockets"
        )),
        _ if TUNING_OPTIONS.contains(&name) => Ok(Extended::Tuning),
        _ => Err(format!(
            "{opt}: not an option memroute knows, so it cannot honour it. memroute reads \
             proxy_config, proxy_arg, idle_timeout, watcher_logbuf_size, no_watch and the TLS \
             options ssl_chain_cert, \
             ssl_key, ssl_ca_cert, ssl_verify_mode and ssl_min_version, and accepts \
             memcached's memory tuning options with a warning (docs/operations.md)"
        )),
    }
}

/// The TLS options of `-o` (each with how it was spelled, for messages).
#[derive(Default)]
struct TlsOptions {
    chain: Option<(PathBuf, String)>,
    key: Option<(PathBuf, String)>,
    ca: Option<(PathBuf, String)>,
    verify: Option<(VerifyMode, String)>,
    min_version: MinVersion,
}

/// One TLS setting from `-o` or its long flag; both must agree.
fn one_of<T: PartialEq>(
    o: Option<(T, String)>,
    long: Option<T>,
    flag: &str,
) -> Result<Option<(T, String)>, String> {
    match (o, long) {
        (Some((a, spelled)), Some(b)) if a != b => {
            Err(format!("{spelled} and {flag} disagree; give one"))
        }
        (Some(o), _) => Ok(Some(o)),
        (None, Some(b)) => Ok(Some((b, flag.to_string()))),
        (None, None) => Ok(None),
    }
}

impl TlsOptions {
    /// TLS settings when `-Z` asks for TLS. TLS options without `-Z` are an
    /// error (memcached would ignore them and serve plaintext).
    fn settings(self, cli: &Cli) -> Result<Option<TlsSettings>, String> {
        let chain = one_of(self.chain, cli.tls_cert.clone(), "--tls-cert")?;
        let key = one_of(self.key, cli.tls_key.clone(), "--tls-key")?;
        let ca = one_of(self.ca, cli.tls_ca.clone(), "--tls-ca")?;
        let long_mode = match &cli.tls_verify_mode {
            Some(n) => Some(VerifyMode::from_number(n).ok_or_else(|| {
                format!("--tls-verify-mode {n}: use 0 (none), 1 (request), 2 (require) or 3 (once)")
            })?),
            None => None,
        };
        let verify = one_of(self.verify, long_mode, "--tls-verify-mode")?;
        if !cli.enable_ssl {
            let given = [&chain, &key, &ca]
                .into_iter()
                .flatten()
                .map(|(_, spelled)| spelled.clone())
                .chain(verify.as_ref().map(|(_, spelled)| spelled.clone()))
                .next();
            return match given {
                Some(spelled) => Err(format!(
                    "{spelled}: TLS options need -Z (--enable-ssl) to turn TLS on; memroute \
                     does not serve plaintext where TLS settings were given"
                )),
                None => Ok(None),
            };
        }
        let Some((chain_cert, _)) = chain else {
            return Err(
                "-Z (--enable-ssl) needs a certificate: -o ssl_chain_cert=FILE \
                 (and ssl_key=FILE) or --tls-cert FILE (and --tls-key FILE)"
                    .into(),
            );
        };
        Ok(Some(TlsSettings {
            chain_cert,
            key: key.map(|(k, _)| k),
            ca_cert: ca.map(|(c, _)| c),
            verify_mode: verify.map_or(VerifyMode::None, |(v, _)| v),
            min_version: self.min_version,
        }))
    }
}

/// `-Y` or `-S`, with memcached's rules for the protocol: `-Y` serves the
/// text protocol only and `-S` the binary protocol only (the default
/// becomes that protocol; another `-B` is an error).
fn auth_from(cli: &Cli, protocol: &mut Protocol) -> Result<Option<AuthSettings>, String> {
    let settings = match (&cli.auth_file, cli.enable_sasl) {
        (Some(_), true) => {
            return Err(
                "-Y and -S: give one (-Y authenticates the text protocol, -S the \
                 binary protocol)"
                    .into(),
            )
        }
        (Some(file), false) => AuthSettings::Text { file: file.clone() },
        (None, true) => {
            let pwdb = cli
                .sasl_pwdb
                .clone()
                .or_else(|| std::env::var_os("MEMCACHED_SASL_PWDB").map(PathBuf::from))
                .ok_or(
                    "-S: SASL needs a password database of user:password lines: \
                     --sasl-pwdb FILE or MEMCACHED_SASL_PWDB=FILE",
                )?;
            AuthSettings::Sasl { pwdb }
        }
        (None, false) => {
            if cli.sasl_pwdb.is_some() {
                return Err("--sasl-pwdb needs -S (--enable-sasl)".into());
            }
            return Ok(None);
        }
    };
    let (wanted, flag, name) = match settings {
        AuthSettings::Text { .. } => (Protocol::Ascii, "-Y", "text (ascii)"),
        AuthSettings::Sasl { .. } => (Protocol::Binary, "-S", "binary"),
    };
    match cli.protocol {
        Some(p) if p != wanted => {
            return Err(format!(
                "{flag} authenticates the {name} protocol only: use -B {} or leave -B out",
                if wanted == Protocol::Ascii {
                    "ascii"
                } else {
                    "binary"
                }
            ))
        }
        _ => *protocol = wanted,
    }
    Ok(Some(settings))
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn config_from(cli: &Cli) -> Result<ServerConfig, String> {
    let default_listen = ["127.0.0.1".to_string()];
    let listen_values = match cli.listen.as_slice() {
        [] => &default_listen[..],
        given => given,
    };
    let mut listeners = parse_listeners(listen_values, cli.port)?;
    let unix_socket = cli.unix_socket.as_ref().map(|path| UnixSocket {
        path: path.clone(),
        mode: cli.unix_mask.unwrap_or(DEFAULT_UNIX_MODE),
    });
    if unix_socket.is_some() {
        // memcached 1.6 listens on nothing but the socket when -s is
        // given, whatever -l and -p say.
        if !cli.listen.is_empty() {
            tracing::warn!("-s: TCP is off with a UNIX socket, as in memcached; -l is ignored");
        }
        listeners = Listeners::default();
    }
    if cli.udp_port != 0 {
        return Err("-U: memroute does not serve UDP; use -U 0".into());
    }
    if cli.memory_limit_mb == 0 {
        return Err("-m: the memory limit must be at least 1 MB".into());
    }
    if cli.max_item_size < 1024 {
        return Err("-I: the item size limit must be at least 1k".into());
    }
    let mut config = ServerConfig {
        listen: listeners.untagged,
        tagged_listen: listeners.tagged,
        unix_socket,
        memory_limit: cli.memory_limit_mb.saturating_mul(1024 * 1024),
        max_connections: cli.conn_limit.max(1),
        verbosity: cli.verbose,
        backlog: cli.backlog,
        protocol: cli.protocol.unwrap_or_default(),
        shutdown_timeout: Duration::from_secs(cli.shutdown_timeout),
        ..ServerConfig::default()
    };
    if let Some(threads) = cli.threads {
        if threads == 0 {
            return Err("-t: at least one thread is needed".into());
        }
        config.threads = threads;
    }
    config.limits.max_item_size = cli.max_item_size;
    config.auth = auth_from(cli, &mut config.protocol)?;
    let mut startfile = cli.config.clone();
    let mut start_arg = cli.config_arg.clone();
    // memcached's `-o proxy_arg=` gives the startfile memcached's form of
    // `mcp.start_arg`; `--config-arg` (and what memroute passes itself)
    // the string as it is.
    let mut split_start_arg = false;
    if let Some(routes) = &cli.routes {
        let mut files = "routelib".to_string();
        for library in &cli.route_handlers {
            files.push(':');
            files.push_str(&library.display().to_string());
        }
        startfile = Some(files.into());
        start_arg = Some(routes.display().to_string());
    }
    if let Some(file) = &cli.mcrouter_config {
        startfile = Some(file.clone());
        start_arg = Some(memroute_runtime::mcrouter::start_arg(
            cli.big_value_split_threshold,
        ));
    }
    let mut o_idle_timeout = None;
    let mut tls = TlsOptions::default();
    for opts in &cli.extended {
        // Whether the item before was proxy_arg (or continued it).
        let mut after_proxy_arg = false;
        for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if after_proxy_arg && continues_proxy_arg(opt) {
                if let Some(arg) = start_arg.as_mut() {
                    arg.push(',');
                    arg.push_str(opt);
                }
                continue;
            }
            let (name, value) = match opt.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (opt, None),
            };
            let hint = after_proxy_arg && value.is_none();
            after_proxy_arg = name == "proxy_arg";
            let extended = extended_option(name, value).map_err(|e| {
                if hint {
                    format!("{e}. For a proxy_arg that holds commas, use --config-arg")
                } else {
                    e
                }
            })?;
            match extended {
                Extended::ProxyConfig(file) => startfile = Some(file.into()),
                Extended::ProxyArg(arg) => {
                    start_arg = Some(arg.to_string());
                    split_start_arg = true;
                }
                Extended::IdleTimeout(secs) => o_idle_timeout = Some(secs),
                // Process-wide, as memcached's logger is.
                Extended::WatcherBuffer(bytes) => {
                    memroute_runtime::watch::hub().set_watcher_buffer(bytes)
                }
                Extended::NoWatch => memroute_runtime::watch::hub().refuse_watchers(),
                Extended::Tuning => tracing::warn!(
                    "-o {opt}: memcached tuning option with no meaning for memroute, ignored"
                ),
                Extended::SslFile(which, file) => {
                    let slot = match which {
                        SslFile::Chain => &mut tls.chain,
                        SslFile::Key => &mut tls.key,
                        SslFile::Ca => &mut tls.ca,
                    };
                    *slot = Some((PathBuf::from(file), format!("-o {opt}")));
                }
                Extended::SslVerifyMode(mode) => tls.verify = Some((mode, format!("-o {opt}"))),
                Extended::SslMinVersion(version) => tls.min_version = version,
            }
        }
    }
    config.tls = tls.settings(cli)?;
    let idle_timeout = match (cli.idle_timeout, o_idle_timeout) {
        (Some(long), Some(o)) if long != o => {
            return Err(format!(
                "--idle-timeout {long} and -o idle_timeout={o} disagree; give one"
            ))
        }
        (long, o) => long.or(o),
    };
    // memcached's meaning: 0 never closes idle connections.
    config.idle_timeout = idle_timeout
        .filter(|&secs| secs > 0)
        .map(Duration::from_secs);
    let min_buffer = cli.max_item_size.saturating_mul(2);
    config.client_buffer_limit = match cli.client_buffer_limit {
        Some(limit) if limit < min_buffer => {
            return Err(format!(
                "--client-buffer-limit: {limit} bytes is less than twice the item size \
                 limit (-I {}, so at least {min_buffer})",
                cli.max_item_size
            ))
        }
        Some(limit) => limit,
        None => config.client_buffer_limit.max(min_buffer),
    };
    config.metrics_listen = cli.metrics_listen;
    if let Some(startfile) = startfile {
        config.proxy = Some(memroute_runtime::lua::ProxyConfig {
            startfile,
            start_arg,
            split_start_arg,
            lua_path: cli.lua_path.clone(),
            libraries: LUA_LIBRARIES,
        });
    } else if start_arg.is_some() {
        return Err("--config-arg / proxy_arg needs a startfile (--config)".into());
    }
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if cli.user.is_some() {
        tracing::warn!("-u is accepted for compatibility; memroute does not switch users");
    }
    if let Some(tool) = &cli.command {
        return match tool {
            Tool::HashReport { svg } => match hash_report::run(svg) {
                Ok(table) => {
                    print!("{table}");
                    println!("SVG written to {}", svg.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("memroute: cannot write {}: {e}", svg.display());
                    ExitCode::from(1)
                }
            },
            Tool::FleetCheck {
                proxies, timeout, ..
            } => {
                let timeout = match Duration::try_from_secs_f64(*timeout) {
                    Ok(t) if !t.is_zero() => t,
                    _ => {
                        eprintln!(
                            "memroute: fleet-check --timeout must be a positive number of seconds"
                        );
                        return ExitCode::from(2);
                    }
                };
                let (text, code) = fleet::run(proxies, timeout);
                print!("{text}");
                ExitCode::from(code)
            }
            Tool::RouteOf { op, keys, tag, .. } => route_of(&cli, tag.as_deref(), op, keys),
        };
    }
    let config = match config_from(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("memroute: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("memroute: {e}");
            return ExitCode::from(1);
        }
    };
    match server.run(true) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memroute: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<ServerConfig, String> {
        let argv = std::iter::once("memroute").chain(args.iter().copied());
        config_from(&Cli::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn extended_options() {
        assert_eq!(
            extended_option("proxy_config", Some("a.lua")),
            Ok(Extended::ProxyConfig("a.lua"))
        );
        assert_eq!(
            extended_option("idle_timeout", Some("30")),
            Ok(Extended::IdleTimeout(30))
        );
        for name in TUNING_OPTIONS {
            assert_eq!(extended_option(name, Some("1")), Ok(Extended::Tuning));
            assert_eq!(extended_option(name, None), Ok(Extended::Tuning));
        }
        for (name, value, says) in [
            ("idle_timeout", Some("abc"), "whole number"),
            ("idle_timeout", Some("-1"), "whole number"),
            ("idle_timeout", None, "needs SECS"),
            ("proxy_config", None, "needs FILE"),
            ("ssl_chain_cert", None, "needs FILE"),
            ("ssl_verify_mode", Some("4"), "0 (none)"),
            ("ssl_min_version", Some("1"), "TLS 1.2 and 1.3 only"),
            ("ssl_ciphers", Some("HIGH"), "does not implement"),
            ("ssl_anything_new", None, "does not implement"),
            ("no_maxconns_fast", None, "maxconns_fast"),
            ("no_modern", None, "maxconns_fast"),
            ("drop_privileges", None, "sandbox"),
            ("sock_cookie_id", Some("5"), "sockets"),
            ("frobnicate", Some("1"), "not an option memroute knows"),
        ] {
            let err = extended_option(name, value).unwrap_err();
            assert!(err.contains(name) && err.contains(says), "{name}: {err}");
        }
    }

    #[test]
    fn idle_timeout_and_client_buffer_limit() {
        let c = config(&[]).unwrap();
        assert_eq!(c.idle_timeout, None);
        assert_eq!(
            c.client_buffer_limit,
            ServerConfig::default().client_buffer_limit
        );
        let c = config(&["-o", "idle_timeout=30"]).unwrap();
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(30)));
        let c = config(&["--idle-timeout", "7", "-o", "idle_timeout=7"]).unwrap();
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(7)));
        assert_eq!(config(&["--idle-timeout", "0"]).unwrap().idle_timeout, None);
        assert!(config(&["--idle-timeout", "7", "-o", "idle_timeout=8"]).is_err());

        let c = config(&["--client-buffer-limit", "2m"]).unwrap();
        assert_eq!(c.client_buffer_limit, 2 << 20);
        let err = config(&["-I", "2m", "--client-buffer-limit", "3m"]).unwrap_err();
        assert!(err.contains("--client-buffer-limit"), "{err}");
        // The default grows with -I rather than refusing a large -I.
        let c = config(&["-I", "64m"]).unwrap();
        assert_eq!(c.client_buffer_limit, 128 << 20);
    }

    #[test]
    fn proxy_arg_takes_a_host_list() {
        let arg = |args: &[&str]| {
            config(args)
                .map(|c| c.proxy.and_then(|p| p.start_arg))
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            arg(&[
                "-o",
                "proxy_config=f.lua,proxy_arg=10.0.0.1:11211,10.0.0.2:11211"
            ]),
            Ok(Some("10.0.0.1:11211,10.0.0.2:11211".into()))
        );
        // Options after the host list are still options.
        assert_eq!(
            arg(&["-o", "proxy_arg=a:1,b:2,hashpower=20,proxy_config=f.lua"]),
            Ok(Some("a:1,b:2".into()))
        );
        assert_eq!(
            arg(&["-o", "proxy_config=f.lua,proxy_arg=a,modern"]),
            Ok(Some("a".into()))
        );
        // A bare name is an option, known or not; items only continue
        // proxy_arg right after it.
        assert!(arg(&["-o", "proxy_config=f.lua,proxy_arg=a,cache2"]).is_err());
        assert!(arg(&["-o", "proxy_config=f.lua,b:2"]).is_err());
        assert!(arg(&["-o", "proxy_arg=a", "-o", "b:2,proxy_config=f.lua"]).is_err());
    }

    #[test]
    fn only_memcached_spelling_splits_the_start_arg() {
        let proxy = |args: &[&str]| config(args).unwrap().proxy.unwrap();
        let p = proxy(&["-o", "proxy_config=f.lua,proxy_arg=a_b:c_d"]);
        assert_eq!(
            (p.start_arg.as_deref(), p.split_start_arg),
            (Some("a_b:c_d"), true)
        );
        let p = proxy(&["--config", "f.lua", "--config-arg", "a_b:c_d"]);
        assert_eq!(
            (p.start_arg.as_deref(), p.split_start_arg),
            (Some("a_b:c_d"), false)
        );
        assert!(!proxy(&["--routes", "r.lua"]).split_start_arg);
    }

    #[test]
    fn tls_flags() {
        let c = config(&[
            "-Z",
            "-o",
            "ssl_chain_cert=c.pem,ssl_key=k.pem,ssl_verify_mode=2",
        ])
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.chain_cert, PathBuf::from("c.pem"));
        assert_eq!(tls.key, Some(PathBuf::from("k.pem")));
        assert_eq!(tls.verify_mode, VerifyMode::Require);
        let c = config(&["-Z", "--tls-cert", "c.pem", "--tls-ca", "ca.pem"]).unwrap();
        assert_eq!(c.tls.unwrap().ca_cert, Some(PathBuf::from("ca.pem")));
        for (args, says) in [
            (&["-Z"][..], "needs a certificate"),
            (&["-o", "ssl_chain_cert=c.pem"], "need -Z"),
            (&["--tls-cert", "c.pem"], "need -Z"),
            (
                &["-Z", "--tls-cert", "a.pem", "-o", "ssl_chain_cert=b.pem"],
                "disagree",
            ),
            (
                &["-Z", "--tls-cert", "a.pem", "--tls-verify-mode", "9"],
                "--tls-verify-mode",
            ),
        ] {
            let err = config(args).unwrap_err();
            assert!(err.contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn auth_flags_follow_memcacheds_protocol_rules() {
        let c = config(&["-Y", "/etc/auth"]).unwrap();
        assert_eq!(c.protocol, Protocol::Ascii);
        assert!(matches!(c.auth, Some(AuthSettings::Text { .. })));
        let c = config(&["-S", "--sasl-pwdb", "/etc/pw"]).unwrap();
        assert_eq!(c.protocol, Protocol::Binary);
        assert!(config(&["-S", "--sasl-pwdb", "p", "-B", "binary"]).is_ok());
        for args in [
            &["-Y", "a", "-B", "auto"][..],
            &["-S", "--sasl-pwdb", "p", "-B", "ascii"],
            &["-Y", "a", "-S", "--sasl-pwdb", "p"],
            &["--sasl-pwdb", "p"],
        ] {
            assert!(config(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn listen_flags_follow_memcached() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let c = config(&["-p", "7000"]).unwrap();
        assert_eq!(c.listen, vec![addr("127.0.0.1:7000")]);
        let c = config(&[
            "-p",
            "7000",
            "-l",
            "127.0.0.1,[::1]:7001;10.0.0.1:7002",
            "-l",
            "tag_aa_:127.0.0.1:7003",
            "-l",
            "tag_bb_:[::1]",
        ])
        .unwrap();
        assert_eq!(
            c.listen,
            vec![
                addr("127.0.0.1:7000"),
                addr("[::1]:7001"),
                addr("10.0.0.1:7002")
            ]
        );
        let tags: Vec<(&str, SocketAddr)> = c
            .tagged_listen
            .iter()
            .map(|t| (t.tag.as_str(), t.addr))
            .collect();
        assert_eq!(
            tags,
            vec![("aa", addr("127.0.0.1:7003")), ("bb", addr("[::1]:7000"))]
        );
        // A bare IPv6 address has no port; `*` is every address.
        let c = config(&["-p", "7000", "-l", "::1,*"]).unwrap();
        assert_eq!(
            c.listen,
            vec![addr("[::1]:7000"), addr("0.0.0.0:7000"), addr("[::]:7000")]
        );
        for (args, says) in [
            (&["-l", "tag_waytoolong_:127.0.0.1"][..], "1 to 8 bytes"),
            (&["-l", "tag_aa:127.0.0.1"], "tag_NAME_:HOST[:PORT]"),
            (&["-l", "127.0.0.1:http"], "not a port number"),
            (&["-l", "[::1]7000"], "expected :PORT"),
            (&["-l", "localhost"], "not an IP address"),
        ] {
            let err = config(args).unwrap_err();
            assert!(err.contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn route_of_takes_the_servers_flags_before_or_after_it() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("memroute").chain(args.iter().copied()))
                .map_err(|e| e.to_string())
        };
        for args in [
            &[
                "route-of",
                "--routes",
                "r.lua",
                "-l",
                "tag_aa_:127.0.0.1",
                "get",
                "k1",
                "k2",
            ][..],
            &[
                "--routes",
                "r.lua",
                "-l",
                "tag_aa_:127.0.0.1",
                "route-of",
                "get",
                "k1",
                "k2",
            ],
        ] {
            let cli = parse(args).unwrap();
            let Some(Tool::RouteOf { op, keys, tag, .. }) = &cli.command else {
                panic!("{args:?}: not route-of");
            };
            assert_eq!((op.as_str(), keys.len(), tag), ("get", 2, &None));
            let c = config_from(&cli).unwrap();
            let proxy = c.proxy.unwrap();
            assert_eq!(proxy.start_arg.as_deref(), Some("r.lua"), "{args:?}");
            assert_eq!(c.tagged_listen.len(), 1, "{args:?}");
        }
        // A value given before the subcommand is not reset by the
        // subcommand's default.
        let cli = parse(&[
            "--mcrouter-config",
            "m.json",
            "--big-value-split-threshold",
            "100",
            "route-of",
            "get",
            "k",
        ])
        .unwrap();
        assert_eq!(cli.big_value_split_threshold, 100);
        let cli = parse(&[
            "route-of",
            "-o",
            "proxy_config=f.lua,proxy_arg=x",
            "mg",
            "k",
        ])
        .unwrap();
        let proxy = config_from(&cli).unwrap().proxy.unwrap();
        assert_eq!(proxy.startfile, PathBuf::from("f.lua"));
        assert!(parse(&["route-of", "--routes", "r.lua", "get"]).is_err());
        assert!(
            parse(&["route-of", "--routes", "r.lua", "--config", "c.lua", "get", "k"]).is_err()
        );
    }

    #[test]
    fn unix_socket_turns_tcp_off() {
        let c = config(&["-s", "/tmp/x.sock", "-l", "127.0.0.1", "-p", "7000"]).unwrap();
        assert!(c.listen.is_empty() && c.tagged_listen.is_empty());
        let unix = c.unix_socket.unwrap();
        assert_eq!(
            (unix.path.to_str(), unix.mode),
            (Some("/tmp/x.sock"), 0o700)
        );
        let c = config(&["-s", "/tmp/x.sock", "-a", "0666"]).unwrap();
        assert_eq!(c.unix_socket.unwrap().mode, 0o666);
        for mask in ["8", "1000", "778", "rw"] {
            let err = config(&["-s", "/tmp/x.sock", "-a", mask]).unwrap_err();
            assert!(err.contains("octal permission mask"), "{mask}: {err}");
        }
    }
}
