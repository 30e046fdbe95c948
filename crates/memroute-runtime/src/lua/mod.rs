//! The Lua routing layer, modelled on memcached's built-in proxy.
//!
//! Two kinds of Lua VM exist:
//! - the **config VM** ([`config`]), kept for the server's life by the
//!   config thread ([`host`]), which also runs its crons ([`cron`]): at
//!   start and at every reload it runs the startfile and calls
//!   `mcp_config_pools()`, where `mcp.backend` and `mcp.pool` describe the
//!   backends. What that function returns is turned into a [`ConfigValue`]:
//!   plain data plus `Arc`'d pool definitions and shared rate limiters,
//!   the only thing that crosses threads;
//! - one **worker VM** per worker thread ([`worker`]), which loads the same
//!   startfile and calls `mcp_config_routes(pools)` with its own copy of
//!   that value, where pools are worker-local objects over the worker's own
//!   backend connections. `mcp.attach` installs route functions (or a
//!   pool, served with no Lua per request).
//!
//! The routes themselves live in `crate::route`, which knows nothing of
//! Lua. A Lua route runs as a coroutine (kept for reuse once finished);
//! every call that waits (`pool(r)`, `mcp.await`, the funcgen waits)
//! starts its work in Rust and yields until it is done, then resumes with
//! the result (see `coroutine`).
//!
//! # Layout
//! - [`config`]: startfile loading, `mcp.backend`, `mcp.pool`,
//!   [`ConfigValue`].
//! - [`host`]: the config thread, owner of the config VM.
//! - [`cron`]: `mcp.register_cron`, `mcp.schedule_config_reload`.
//! - [`worker`]: [`WorkerProxy`] (builds a worker's routes from its VM at
//!   start and every reload), the Lua route node, and the bindings routes
//!   call (`pool(r)`, `mcp.await`, `mcp.internal`...).
//! - `coroutine`: the driver of route coroutines and their waits.
//! - `raw`: the only code that calls Lua's C API directly (resumes, raw
//!   stack access, the fast waits' C functions), behind safe functions.
//! - [`dynamo`]: `mcp.dynamo_pool`, pools backed by a DynamoDB table.
//! - [`funcgen`]: memcached's current API in worker VMs: function
//!   generators, request contexts and their handles.
//! - [`logging`]: `mcp.log_req` and `mcp.log_reqsample`, for `watch
//!   proxyreqs`.
//! - [`inspect`]: `mcp.req_inspector_new` / `mcp.res_inspector_new`,
//!   step lists compiled once and run over requests and responses.
//! - [`mutate`]: `mcp.req_mutator_new` / `mcp.res_mutator_new`, which write
//!   new requests and responses, and the per-slot objects
//!   (`rctx:request_new()`) they write into.
//! - [`router`]: `mcp.router_new` read from Lua, over the route tree's key
//!   router ([`crate::route::router`]), for funcgens.
//! - [`objects`]: the request and response objects routes see.
//! - [`ratelim`]: `mcp.ratelim_tbf` and `mcp.ratelim_global_tbf`.
//! - [`server_stats`]: `mcp.server_stats` in the config VM, over the
//!   server's `stats` replies.
//! - [`routelib`]: routelib configurations, checked into a route plan that
//!   workers build natively.
//! - [`vm`]: what both VMs share: the `mcp` table's constants and helpers,
//!   `package.path`, the embedded Lua libraries.

pub mod config;
mod coroutine;
pub mod cron;
pub mod dynamo;
mod fresh;
pub mod funcgen;
pub mod host;
pub mod inspect;
pub mod logging;
pub mod mutate;
pub mod objects;
pub mod ratelim;
mod raw;
pub mod routelib;
pub mod router;
pub mod server_stats;
pub mod userroutes;
pub mod vm;
pub mod worker;

pub use config::{load_config, ConfigError, ConfigValue, LoadedConfig, ProxyConfig};
pub use worker::WorkerProxy;
