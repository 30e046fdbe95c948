//! The Lua routing layer, modelled on memcached's built-in proxy.
//!
//! Two kinds of Lua VM exist:
//! - the **config VM** ([`config`]), short-lived, on the main thread: it
//!   loads the startfile and calls `mcp_config_pools()`, where `mcp.backend`
//!   and `mcp.pool` describe the backends. What that function returns is
//!   turned into a [`ConfigValue`]: plain data plus `Arc`'d pool
//!   definitions, the only thing that crosses threads;
//! - one **worker VM** per worker thread ([`worker`]), which loads the same
//!   startfile and calls `mcp_config_routes(pools)` with its own copy of
//!   that value, where pools are worker-local objects over the worker's own
//!   backend connections. `mcp.attach` installs route functions (or a
//!   pool, served with no Lua per request).
//!
//! The routes themselves live in `crate::route`, which knows nothing of
//! Lua. A Lua route runs as a coroutine (kept for reuse once finished);
//! calling a pool (`pool(r)`) starts the backend call in Rust and yields
//! until the backend answers, then resumes with a response object (see
//! `worker::PoolCall`). `mcp.await` and the funcgen waits are mlua async
//! calls in the same coroutine.
//!
//! # Layout
//! - [`config`]: startfile loading, `mcp.backend`, `mcp.pool`,
//!   [`ConfigValue`].
//! - [`worker`]: [`WorkerProxy`] (builds a worker's routes from its VM at
//!   start and every reload), the Lua route node, and the bindings routes
//!   call (`pool(r)`, `mcp.await`, `mcp.internal`...).
//! - [`dynamo`]: `mcp.dynamo_pool`, pools backed by a DynamoDB table.
//! - [`funcgen`]: memcached's current API in worker VMs: function
//!   generators, request contexts and their handles.
//! - [`logging`]: `mcp.log_req` and `mcp.log_reqsample`, for `watch
//!   proxyreqs`.
//! - [`router`]: `mcp.router_new` read from Lua, over the route tree's key
//!   router ([`crate::route::router`]), for funcgens.
//! - [`objects`]: the request and response objects routes see.
//! - [`routelib`]: routelib configurations, checked into a route plan that
//!   workers build natively.
//! - [`vm`]: what both VMs share: the `mcp` table's constants and helpers,
//!   `package.path`, the embedded Lua libraries.

pub mod config;
pub mod dynamo;
pub mod funcgen;
pub mod logging;
pub mod objects;
pub mod routelib;
pub mod router;
pub mod vm;
pub mod worker;

pub use config::{load_config, ConfigError, ConfigValue, LoadedConfig, ProxyConfig};
pub use worker::WorkerProxy;
