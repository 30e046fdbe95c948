//! Server settings, with memcached's defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use memroute_proto::Limits;

/// Which protocols clients may speak (memcached's `-B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Each connection's first byte decides: 0x80 binary, else text and
    /// meta (memcached's default).
    #[default]
    Auto,
    /// Text and meta only: a binary request reads as a bad text line.
    Ascii,
    /// Binary only: anything else closes the connection.
    Binary,
}

/// Everything the server needs to start. The binary fills it from the
/// command line; tests build it directly (with port 0).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses to listen on (memcached's `-l`, `-p`), untagged.
    pub listen: Vec<SocketAddr>,
    /// Tagged listeners (memcached's `-l tag_NAME_:host:port`): their
    /// connections take the routes attached for their tag.
    pub tagged_listen: Vec<TaggedListen>,
    /// A UNIX socket to listen on (memcached's `-s` and `-a`), served
    /// like a TCP connection on an untagged listener, never with TLS.
    pub unix_socket: Option<UnixSocket>,
    /// Worker threads (`-t`); each owns its connections.
    pub threads: usize,
    /// Embedded cache memory limit in bytes (`-m`, given in MiB).
    pub memory_limit: u64,
    /// Most simultaneous client connections (`-c`); more are refused with
    /// `ERROR Too many open connections`.
    pub max_connections: usize,
    /// Logging verbosity (`-v` count), reported by `stats settings`.
    pub verbosity: u8,
    /// Protocol bounds (key length, item size, line length).
    pub limits: Limits,
    /// How long graceful shutdown waits for requests in flight before the
    /// process exits anyway.
    pub shutdown_timeout: Duration,
    /// How long shutdown waits for write-behind queues (DynamoDB pools) to
    /// reach their store.
    pub drain_timeout: Duration,
    /// TCP listen backlog (memcached's `-b`).
    pub backlog: u32,
    /// Which protocols clients may speak (memcached's `-B`).
    pub protocol: Protocol,
    /// The Lua routing configuration; `None` serves everything from the
    /// embedded cache.
    pub proxy: Option<ProxyConfig>,
    /// A client connection that sends nothing for this long while no
    /// request of its is in flight is closed (memcached's
    /// `-o idle_timeout`); `None` never closes idle clients.
    pub idle_timeout: Option<Duration>,
    /// Most bytes of replies memroute holds for one client connection
    /// (answered by a backend and not yet written to the client, or
    /// reserved for a get in flight). Past it, the connection stops taking
    /// requests until the client reads its replies.
    pub client_buffer_limit: usize,
    /// TLS on every listener (memcached's `-Z` and `-o ssl_*`); `None`
    /// serves plain TCP.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Client authentication (memcached's `-Y` or `-S`); `None` lets every
    /// client in.
    pub auth: Option<crate::auth::AuthSettings>,
    /// Where to serve Prometheus / OpenMetrics metrics over HTTP
    /// (`--metrics-listen`, see [`crate::metrics`]); `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
}

/// Default [`ServerConfig::client_buffer_limit`]: 64 MiB.
pub const DEFAULT_CLIENT_BUFFER_LIMIT: usize = 64 * 1024 * 1024;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 11211))],
            tagged_listen: Vec::new(),
            unix_socket: None,
            threads: std::thread::available_parallelism().map_or(4, |n| n.get()),
            memory_limit: 64 * 1024 * 1024,
            max_connections: 1024,
            verbosity: 0,
            limits: Limits::default(),
            shutdown_timeout: Duration::from_secs(10),
            backlog: 1024,
            protocol: Protocol::Auto,
            drain_timeout: Duration::from_secs(120),
            proxy: None,
            idle_timeout: None,
            client_buffer_limit: DEFAULT_CLIENT_BUFFER_LIMIT,
            tls: None,
            auth: None,
            metrics_listen: None,
        }
    }
}

/// A listener whose connections carry a tag (`-l tag_NAME_:host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedListen {
    /// 1 to 8 bytes (see [`crate::route::check_tag`]).
    pub tag: String,
    pub addr: SocketAddr,
}

/// A UNIX socket listener (`-s PATH`, `-a MASK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    pub path: PathBuf,
    /// The socket file's permission bits (`-a`, octal; memcached's
    /// default is 0700).
    pub mode: u32,
}

/// memcached's default `-a`.
pub const DEFAULT_UNIX_MODE: u32 = 0o700;

/// Where the routing configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The startfile (memcached's `-o proxy_config=FILE`).
    pub startfile: PathBuf,
    /// `mcp.start_arg` (memcached's `proxy_arg=STR`).
    pub start_arg: Option<String>,
    /// The start argument came with memcached's spelling (`-o
    /// proxy_arg=STR`): `mcp.start_arg` then takes memcached's form, a
    /// table when the argument holds `:` (see `lua::vm`). memroute's own
    /// `--config-arg` gives the string as it is.
    pub split_start_arg: bool,
    /// Extra directories searched by `require`, before the startfile's own
    /// directory and the embedded libraries.
    pub lua_path: Vec<PathBuf>,
    /// Lua libraries compiled into the binary (`lua/*.lua`), as `(name,
    /// source)`. `require` finds a file of the same name on the search path
    /// first, so operators can override them from disk.
    pub libraries: LuaLibraries,
}

/// `(name, source)` of Lua libraries `require` can load without a file.
pub type LuaLibraries = &'static [(&'static str, &'static str)];
