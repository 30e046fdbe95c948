//! memroute's server runtime: threads, connections, command execution and
//! stats. The binary only parses flags into a [`ServerConfig`] and calls
//! [`Server::run`].
//!
//! May depend on: `memroute-proto` (wire codecs), `memroute-hash` (key
//! distributions), `memroute-cache` (the embedded cache),
//! `memroute-dynamo` (DynamoDB stores), tokio, mlua (only in [`lua`]),
//! rustls, hyper and prometheus-client (only in [`tls`] and [`metrics`]).
//! Inside, the layering is: [`backend`] (the memcached client) knows no
//! route, connection or Lua; [`route`] knows no connection, server or Lua;
//! only [`lua`], [`server`], [`reload`] and [`route_of`] know Lua (checked by
//! `tests/layering.rs`; see docs/architecture.md).
//!
//! # Layout
//! - [`config`]: [`ServerConfig`], with memcached's defaults.
//! - [`server`]: listeners, the acceptor, worker threads, graceful shutdown.
//! - [`reload`]: SIGHUP: certificates, password files and the Lua
//!   configuration, staged on every worker and committed on all or none.
//! - [`connection`]: the per-connection read/decode/execute/write loop.
//! - [`embedded`]: requests executed against the embedded cache.
//! - [`admin`]: `stats`, `stats settings`, `stats proxy`, the version string.
//! - [`route`]: the route tree (routes, pools, per-worker route sets),
//!   free of Lua.
//! - [`lua`]: the Lua layer (config VM, worker VMs, Lua routes, bindings).
//! - [`mcrouter`]: mcrouter JSON configurations, read into a route plan.
//! - [`route_of`]: `memroute route-of`: where keys go under a
//!   configuration, from one worker's routes built offline.
//! - [`discovery`]: pools whose members come from DNS or a configuration
//!   endpoint, re-read on a period.
//! - [`backend`]: worker-local pipelined connections to memcached servers.
//! - [`store`]: stores shared by all workers (DynamoDB tables) and their
//!   registry.
//! - [`stats`]: per-worker counters.
//! - [`metrics`]: the Prometheus / OpenMetrics endpoint (`--metrics-listen`).
//! - [`tls`]: TLS for clients (`-Z`) and backends (`mcp.init_tls`).
//! - [`auth`]: client authentication (`-Y` auth file, `-S` SASL PLAIN).
//! - [`watch`]: memcached's `watch` log streams (`proxyreqs`,
//!   `proxyevents`, `proxyuser`, `fetchers`, `mutations`, `deletions`,
//!   `connevents`), fed from anywhere.
//!
//! # Example
//! ```no_run
//! use memroute_runtime::{Server, ServerConfig};
//!
//! let config = ServerConfig { listen: vec!["127.0.0.1:0".parse().unwrap()], ..Default::default() };
//! let server = Server::bind(config).unwrap();
//! println!("listening on {:?}", server.local_addrs());
//! server.run(true).unwrap(); // until SIGTERM
//! ```

// Module docs name the private items that do the work (the way into the
// code for a developer); `cargo doc --document-private-items` renders them.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod config;
pub mod connection;
pub mod discovery;
pub mod embedded;
pub mod lua;
pub mod mcrouter;
pub mod mcrouter_macros;
pub mod metrics;
pub mod reload;
pub mod route;
pub mod route_of;
pub mod server;
pub mod stats;
pub mod store;
pub mod tls;
pub mod watch;

pub use config::ServerConfig;
pub use server::{ReloadHandle, RuntimeError, Server, ShutdownHandle};
