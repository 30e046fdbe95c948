//! The `memroute` binary: parses memcached-style flags and starts the
//! runtime. All behaviour lives in the `memroute-*` crates.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};
use memroute_runtime::config::Protocol;
use memroute_runtime::{Server, ServerConfig};

/// A Lua-scriptable memcached routing proxy. With no configuration it is a
/// drop-in memcached served by an embedded in-memory cache.
#[derive(Parser, Debug)]
#[command(name = "memroute", version, about, disable_help_flag = true)]
struct Cli {
    /// TCP port to listen on.
    #[arg(short = 'p', long = "port", default_value_t = 11211)]
    port: u16,
    /// Interfaces to listen on, comma-separated (IPv4 or IPv6 addresses).
    #[arg(short = 'l', long = "listen", default_value = "127.0.0.1")]
    listen: String,
    /// Worker threads (default: number of cores).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Embedded cache memory limit, in megabytes.
    #[arg(short = 'm', long = "memory-limit", default_value_t = 64)]
    memory_limit_mb: u64,
    /// Most simultaneous connections.
    #[arg(short = 'c', long = "conn-limit", default_value_t = 1024)]
    conn_limit: usize,
    /// Largest item (value, key and header), e.g. 1m, 512k, 2097152.
    #[arg(short = 'I', long = "max-item-size", default_value = "1m", value_parser = parse_size)]
    max_item_size: usize,
    /// TCP listen backlog.
    #[arg(short = 'b', long = "listen-backlog", default_value_t = 1024)]
    backlog: u32,
    /// Protocol: auto (each connection's first byte decides), ascii (text
    /// and meta only) or binary.
    #[arg(short = 'B', long = "protocol", default_value = "auto", value_parser = parse_protocol)]
    protocol: Protocol,
    /// UDP port: memroute speaks TCP only, so only 0 is accepted (as in
    /// memcached's default).
    #[arg(short = 'U', long = "udp-port", default_value_t = 0)]
    udp_port: u16,
    /// Accepted for compatibility with memcached's command line; memroute
    /// does not switch users (run it as the user you want).
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Lua startfile: run as a routing proxy (see docs/lua-api.md).
    #[arg(long = "config", value_name = "STARTFILE")]
    config: Option<std::path::PathBuf>,
    /// String passed to the startfile as `mcp.start_arg`.
    #[arg(long = "config-arg", value_name = "STR")]
    config_arg: Option<String>,
    /// Extra directory for Lua's `require` (repeatable).
    #[arg(long = "lua-path", value_name = "DIR")]
    lua_path: Vec<std::path::PathBuf>,
    /// memcached-style extended options, comma-separated; memroute reads
    /// `proxy_config=FILE` and `proxy_arg=STR` and ignores the rest with a
    /// warning.
    #[arg(short = 'o', long = "extended", value_name = "OPTS")]
    extended: Vec<String>,
    /// Seconds graceful shutdown waits for requests in flight.
    #[arg(long = "shutdown-timeout", default_value_t = 10)]
    shutdown_timeout: u64,
    /// Verbose logging: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
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
    let mut listen = Vec::new();
    for part in cli
        .listen
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let ip: IpAddr = part
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("-l: {part:?} is not an IP address"))?;
        listen.push(SocketAddr::new(ip, cli.port));
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
        listen,
        memory_limit: cli.memory_limit_mb.saturating_mul(1024 * 1024),
        max_connections: cli.conn_limit.max(1),
        verbosity: cli.verbose,
        backlog: cli.backlog,
        protocol: cli.protocol,
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
    let mut startfile = cli.config.clone();
    let mut start_arg = cli.config_arg.clone();
    for opts in &cli.extended {
        for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("proxy_config", file)) => startfile = Some(file.into()),
                Some(("proxy_arg", arg)) => start_arg = Some(arg.to_string()),
                _ => tracing::warn!("-o {opt}: not a memroute option, ignored"),
            }
        }
    }
    if let Some(startfile) = startfile {
        config.proxy = Some(memroute_runtime::lua::ProxyConfig {
            startfile,
            start_arg,
            lua_path: cli.lua_path.clone(),
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
            Tool::HashReport { svg } => match memroute_hash::report::run(svg) {
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
