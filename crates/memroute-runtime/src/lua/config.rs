//! The config VM: loads the startfile, runs `mcp_config_pools()`, and turns
//! its result into plain data ([`ConfigValue`]) that workers can copy. The
//! config thread (`super::host`) keeps one VM and loads into it again at
//! every reload ([`load_into`]); [`load_config`] loads into a fresh one.
//!
//! `mcp.backend` and `mcp.pool` exist only here. A pool is built completely
//! on this thread (its key distribution included, which for Maglev is a
//! 65537-entry table) and shared by `Arc`; workers add only their own
//! connections.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use memroute_hash::{Backend as HashBackend, DistributionConfig, KeyFilter, KeyHash};
use mlua::{AnyUserData, Lua, Table, UserData, Value};

use super::vm::{self, DIST_MARK, HASH_MARK};
use crate::backend::BackendConfig;
pub use crate::config::ProxyConfig;
use crate::discovery::{Discovery, DiscoverySpec, Source};
pub use crate::route::{PoolDef, PoolKind};
use crate::store::StoreRegistry;

use crate::tls::{BackendTls, ClientTls, ClientTlsSettings};

/// Why a configuration could not be loaded. The message names the file and
/// line where Lua can tell.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read startfile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Lua { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    pub(crate) fn lua(path: &Path, error: mlua::Error) -> Self {
        ConfigError::Lua {
            path: path.to_path_buf(),
            message: lua_error_message(&error),
        }
    }
}

/// The most useful text of a Lua error: the message with its location and
/// traceback, without mlua's wrapper noise.
pub(crate) fn lua_error_message(error: &mlua::Error) -> String {
    match error {
        mlua::Error::CallbackError { traceback, cause } => {
            format!("{}\n{traceback}", lua_error_message(cause))
        }
        mlua::Error::WithContext { context, cause } => {
            format!("{context}: {}", lua_error_message(cause))
        }
        other => other.to_string(),
    }
}

/// Data returned by `mcp_config_pools()`: what crosses from the config VM
/// to the worker VMs. No functions, no metatables, as in memcached.
#[derive(Debug, Clone)]
pub enum ConfigValue {
    Nil,
    Bool(bool),
    Integer(i64),
    Number(f64),
    String(Vec<u8>),
    Table(Vec<(ConfigValue, ConfigValue)>),
    Pool(Arc<PoolDef>),
    /// `mcp.ratelim_global_tbf`: one bucket, shared by every worker.
    RateLimiter(Arc<crate::route::ratelim::GlobalTokenBucket>),
}

/// A loaded configuration, ready to be given to every worker.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub proxy: ProxyConfig,
    pub pools: ConfigValue,
    /// `mcp.add_stat(id, name)` registrations.
    pub stat_names: Vec<(i64, String)>,
    /// The proxy-wide limits the startfile set.
    pub settings: ProxySettings,
    /// A routelib configuration's route tree, which workers build natively
    /// (no worker VM); `None` for a startfile with `mcp_config_routes`.
    pub routelib: Option<Arc<super::routelib::RoutelibConfig>>,
}

impl LoadedConfig {
    /// Every pool `mcp_config_pools()` returned, resolved: one line per
    /// pool, `NAME: label/host:port label/host:port ...` with its memcached
    /// backends in the pool's order (`NAME: store STORE` for a shared
    /// store). The lines are sorted and a pool reached twice counts once, so
    /// the order Lua walks a table in does not matter; the order of
    /// backends inside a pool does (it places keys). Part of the
    /// configuration digest.
    pub fn backend_lists(&self) -> Vec<String> {
        let mut lines = Vec::new();
        collect_pools(&self.pools, &mut lines);
        lines.sort_unstable();
        lines.dedup();
        lines
    }
}

fn collect_pools(value: &ConfigValue, out: &mut Vec<String>) {
    match value {
        ConfigValue::Pool(pool) => out.push(pool_line(pool)),
        ConfigValue::Table(entries) => {
            for (key, value) in entries {
                collect_pools(key, out);
                collect_pools(value, out);
            }
        }
        _ => {}
    }
}

/// One pool's line of [`LoadedConfig::backend_lists`].
pub(crate) fn pool_line(pool: &PoolDef) -> String {
    let mut line = format!("{}:", pool.name);
    match &pool.kind {
        PoolKind::Memcached { backends, .. } => {
            for b in backends {
                line.push_str(&format!(" {}/{}:{}", b.label, b.host, b.port));
            }
        }
        PoolKind::Shared(store) => line.push_str(&format!(" store {}", store.name())),
        // The source, not the members: the members may change between
        // two proxies' reads, the configuration does not.
        PoolKind::Discovered(discovery) => {
            line.push_str(&format!(" discovered from {}", discovery.source()))
        }
    }
    line
}

/// Limits a startfile sets with memcached's global setters, as given (the
/// per-worker shares are [`ProxySettings::active_per_worker`] and
/// [`ProxySettings::buffer_bytes_per_worker`]). 0 means no limit, as in
/// memcached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// `mcp.active_req_limit(n)`: routed requests in flight at once.
    pub active_req_limit: u64,
    /// `mcp.buffer_memory_limit(kb)`: kilobytes of replies held for clients.
    pub buffer_memory_limit_kb: u64,
}

impl ProxySettings {
    /// One worker's share of a process-wide limit: memcached divides a
    /// limit by the worker count unless that would leave under two each.
    fn per_worker(limit: u64, workers: usize) -> Option<u64> {
        let workers = workers.max(1) as u64;
        match limit {
            0 => None,
            l if l > workers * 2 => Some(l / workers),
            l => Some(l),
        }
    }

    /// This worker's cap on routed requests in flight, if any.
    pub fn active_per_worker(&self, workers: usize) -> Option<u64> {
        Self::per_worker(self.active_req_limit, workers)
    }

    /// This worker's cap on bytes of replies held for clients, if any.
    pub fn buffer_bytes_per_worker(&self, workers: usize) -> Option<u64> {
        Self::per_worker(self.buffer_memory_limit_kb.saturating_mul(1024), workers)
    }
}

/// `mcp.backend(...)` in the config VM.
#[derive(Debug, Clone)]
pub struct BackendHandle(pub Arc<BackendConfig>);
impl UserData for BackendHandle {}

/// `mcp.pool(...)` in the config VM.
#[derive(Debug, Clone)]
pub struct PoolHandle(pub Arc<PoolDef>);
impl UserData for PoolHandle {}

const MAX_DEPTH: usize = 32;

/// Loads the startfile in a fresh config VM and runs `mcp_config_pools()`.
///
/// Stores (`mcp.dynamo_pool`) are made in, or reused from, `stores`.
/// With the start argument [`crate::mcrouter::START_ARG`] the startfile
/// is an mcrouter JSON file, read with no VM.
pub fn load_config(
    proxy: &ProxyConfig,
    stores: &Arc<StoreRegistry>,
) -> Result<LoadedConfig, ConfigError> {
    if let Some(threshold) = proxy
        .start_arg
        .as_deref()
        .and_then(crate::mcrouter::read_start_arg)
    {
        return load_mcrouter(proxy, threshold);
    }
    let lua = vm::new_vm(proxy)?;
    load_into(&lua, proxy, stores)
}

/// [`load_config`] with `mcp.server_stats` reading `stats` (a server's
/// config thread keeps its own VM instead, see `super::host`).
pub fn load_config_with_stats(
    proxy: &ProxyConfig,
    stores: &Arc<StoreRegistry>,
    stats: super::server_stats::StatsSource,
) -> Result<LoadedConfig, ConfigError> {
    if is_mcrouter(proxy) {
        return load_config(proxy, stores);
    }
    let lua = vm::new_vm(proxy)?;
    lua.set_app_data(stats);
    load_into(&lua, proxy, stores)
}

/// Whether the startfile is an mcrouter JSON file (read with no VM).
pub(crate) fn is_mcrouter(proxy: &ProxyConfig) -> bool {
    proxy
        .start_arg
        .as_deref()
        .and_then(crate::mcrouter::read_start_arg)
        .is_some()
}

/// Loads the startfile into `lua`, a config VM made by [`vm::new_vm`],
/// fresh or kept from an earlier load (the config thread keeps one for the
/// server's life, so the startfile's globals live on across reloads, as in
/// memcached), and runs `mcp_config_pools()`. The `mcp` functions and
/// their settings (backend defaults, limits, TLS, stat names) start afresh
/// on every load.
pub(crate) fn load_into(
    lua: &Lua,
    proxy: &ProxyConfig,
    stores: &Arc<StoreRegistry>,
) -> Result<LoadedConfig, ConfigError> {
    lua.set_app_data(stores.clone());
    lua.set_app_data(ProxySettings::default());
    let stat_names = Rc::new(RefCell::new(Vec::new()));
    register(lua, stat_names.clone()).map_err(|e| ConfigError::lua(&proxy.startfile, e))?;
    vm::load_startfile(lua, proxy)?;
    let pools = match lua.globals().get::<Value>("mcp_config_pools") {
        Ok(Value::Function(f)) => {
            let value: Value = f
                .call(())
                .map_err(|e| ConfigError::lua(&proxy.startfile, e))?;
            to_config_value(&value, "pools", 0).map_err(ConfigError::Invalid)?
        }
        Ok(Value::Nil) => ConfigValue::Nil,
        Ok(_) => {
            return Err(ConfigError::Invalid(
                "mcp_config_pools must be a function".into(),
            ))
        }
        Err(e) => return Err(ConfigError::lua(&proxy.startfile, e)),
    };
    let mut stat_names = stat_names.borrow().clone();
    let first_free_stat = stat_names.iter().map(|(id, _)| id + 1).max().unwrap_or(1);
    let routelib = super::routelib::plan(&pools, first_free_stat).map_err(ConfigError::Invalid)?;
    if let Some(routelib) = &routelib {
        stat_names.extend(routelib.stat_names.iter().cloned());
    } else {
        match lua.globals().get::<Value>("mcp_config_routes") {
            Ok(Value::Function(_)) => {}
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "{}: no mcp_config_routes function: a startfile must define one",
                    proxy.startfile.display()
                )))
            }
        }
    }
    let settings = lua
        .app_data_ref::<ProxySettings>()
        .map(|s| *s)
        .unwrap_or_default();
    Ok(LoadedConfig {
        proxy: proxy.clone(),
        pools,
        stat_names,
        settings,
        routelib: routelib.map(Arc::new),
    })
}

/// An mcrouter JSON file (the startfile) as a loaded configuration: its
/// tree is built natively by workers, as a routelib file's is.
fn load_mcrouter(
    proxy: &ProxyConfig,
    big_value_threshold: usize,
) -> Result<LoadedConfig, ConfigError> {
    let file = &proxy.startfile;
    let config = crate::mcrouter::load(file, big_value_threshold)
        .map_err(|e| ConfigError::Invalid(format!("{}: {e}", file.display())))?;
    let pools = ConfigValue::Table(
        config
            .pools
            .iter()
            .map(|(name, def)| {
                (
                    ConfigValue::String(name.clone().into_bytes()),
                    ConfigValue::Pool(def.clone()),
                )
            })
            .collect(),
    );
    Ok(LoadedConfig {
        proxy: proxy.clone(),
        pools,
        stat_names: Vec::new(),
        settings: ProxySettings::default(),
        routelib: Some(Arc::new(super::routelib::RoutelibConfig {
            routers: vec![(None, config.router())],
            pools: config.pools.into_iter().map(|(_, def)| def).collect(),
            stat_names: Vec::new(),
            user_handlers: false,
        })),
    })
}

fn register(lua: &Lua, stat_names: Rc<RefCell<Vec<(i64, String)>>>) -> mlua::Result<()> {
    let mcp = vm::mcp_table(lua)?;
    super::server_stats::register(lua, &mcp)?;
    mcp.set(
        "backend",
        lua.create_function(|lua, args: mlua::MultiValue| backend(lua, args))?,
    )?;
    // memcached's global limits: a non-negative integer each, 0 for none.
    for (name, set) in [
        (
            "active_req_limit",
            (|s, n| s.active_req_limit = n) as fn(&mut ProxySettings, u64),
        ),
        ("buffer_memory_limit", |s, n| s.buffer_memory_limit_kb = n),
    ] {
        mcp.set(
            name,
            lua.create_function(move |lua, value: Value| {
                let n = match value {
                    Value::Integer(i) if i >= 0 => i as u64,
                    _ => {
                        return Err(mlua::Error::runtime(format!(
                            "mcp.{name}: the limit must be an integer >= 0"
                        )))
                    }
                };
                if let Some(mut settings) = lua.app_data_mut::<ProxySettings>() {
                    set(&mut settings, n);
                }
                Ok(())
            })?,
        )?;
    }
    register_backend_defaults(lua, &mcp)?;
    register_tls(lua, &mcp)?;
    super::cron::register(lua, &mcp)?;
    mcp.set(
        "pool",
        lua.create_function(|_, (list, opts): (Value, Option<Table>)| pool(list, opts))?,
    )?;
    mcp.set(
        "discover",
        lua.create_function(|lua, opts: Table| discover(lua, opts))?,
    )?;
    mcp.set(
        "dynamo_pool",
        lua.create_function(|lua, opts: Table| super::dynamo::dynamo_pool(lua, opts))?,
    )?;
    mcp.set(
        "add_stat",
        lua.create_function(move |lua, (id, name): (i64, String)| {
            let limit = lua
                .app_data_ref::<StatLimit>()
                .map_or(crate::stats::MAX_USER_STATS, |l| l.0);
            if !(1..=limit as i64).contains(&id) {
                return Err(mlua::Error::runtime(format!(
                    "mcp.add_stat: id must be 1..{limit}"
                )));
            }
            if name.contains(char::is_whitespace) {
                return Err(mlua::Error::runtime(
                    "mcp.add_stat: the name must be one word",
                ));
            }
            let mut names = stat_names.borrow_mut();
            // As in memcached, a second registration of an id renames it,
            // and an empty name retires it from `stats proxy`.
            names.retain(|(existing, _)| *existing != id);
            if !name.is_empty() {
                names.push((id, name));
            }
            Ok(())
        })?,
    )?;
    super::ratelim::register_config(lua, &mcp)?;
    vm::forbid(
        lua,
        &mcp,
        &[
            "ratelim_tbf",
            "attach",
            "await",
            "internal",
            "request",
            "stat",
            "warm",
            "funcgen_new",
            "router_new",
            "log_req",
            "log_reqsample",
            "req_inspector_new",
            "res_inspector_new",
            "req_mutator_new",
            "res_mutator_new",
        ],
        "mcp_config_routes (worker VMs)",
    )
}

/// The config VM's TLS state: what `mcp.init_tls` built and the default
/// `mcp.backend_use_tls` set.
#[derive(Default)]
struct TlsState {
    client: Option<ClientTls>,
    use_tls: bool,
}

/// memcached proxy's TLS API: `mcp.init_tls([{ca=, verify=, cert=, key=}])`,
/// `mcp.backend_use_tls(bool)`, and the `tls` and `tls_name` options of
/// `mcp.backend`. The plain `mcp.backend` parser is wrapped: the TLS
/// options are taken out here, where the VM's TLS state is at hand, and the
/// rest goes to it unchanged.
fn register_tls(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    lua.set_app_data(TlsState::default());
    mcp.set(
        "init_tls",
        lua.create_function(|lua, opts: Option<Table>| {
            let client = init_tls(opts)?;
            if let Some(mut state) = lua.app_data_mut::<TlsState>() {
                state.client = Some(client);
            }
            Ok(())
        })?,
    )?;
    mcp.set(
        "backend_use_tls",
        lua.create_function(|lua, on: Value| {
            let Value::Boolean(on) = on else {
                return Err(mlua::Error::runtime(
                    "mcp.backend_use_tls: give true or false",
                ));
            };
            if let Some(mut state) = lua.app_data_mut::<TlsState>() {
                state.use_tls = on;
            }
            Ok(())
        })?,
    )?;
    let plain: mlua::Function = mcp.get("backend")?;
    mcp.set(
        "backend",
        lua.create_function(move |lua, args: mlua::MultiValue| {
            backend_with_tls(lua, &plain, args)
        })?,
    )?;
    Ok(())
}

/// `mcp.init_tls{...}`: backend certificates are verified against the
/// system's roots, or the `ca` file; `verify = false` turns that off.
fn init_tls(opts: Option<Table>) -> mlua::Result<ClientTls> {
    let mut settings = ClientTlsSettings {
        verify: true,
        ..ClientTlsSettings::default()
    };
    if let Some(opts) = opts {
        for pair in opts.pairs::<String, Value>() {
            let (key, value) = pair?;
            let file = |v: &Value| -> mlua::Result<PathBuf> {
                match v {
                    Value::String(s) => Ok(PathBuf::from(s.to_str()?.to_string())),
                    _ => Err(mlua::Error::runtime(format!(
                        "mcp.init_tls: {key} must be a file name"
                    ))),
                }
            };
            match key.as_str() {
                "ca" => settings.ca = Some(file(&value)?),
                "cert" => settings.cert = Some(file(&value)?),
                "key" => settings.key = Some(file(&value)?),
                "verify" => {
                    settings.verify = match value {
                        Value::Boolean(b) => b,
                        _ => {
                            return Err(mlua::Error::runtime(
                                "mcp.init_tls: verify must be true or false",
                            ))
                        }
                    }
                }
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "mcp.init_tls: unknown option '{other}' (ca, verify, cert, key)"
                    )))
                }
            }
        }
    }
    if !settings.verify {
        tracing::warn!(
            "mcp.init_tls{{verify = false}}: backend certificates are not verified; \
             backend connections are encrypted but not authenticated"
        );
    }
    ClientTls::new(settings).map_err(mlua::Error::runtime)
}

/// `mcp.backend(...)` with the TLS options: `tls = true|false` (default:
/// `mcp.backend_use_tls`) and `tls_name` (the name the certificate must
/// carry; default: the host).
fn backend_with_tls(
    lua: &Lua,
    plain: &mlua::Function,
    mut args: mlua::MultiValue,
) -> mlua::Result<BackendHandle> {
    let mut wanted = None;
    let mut name = None;
    if let Some(Value::Table(t)) = args.front().cloned() {
        let rest = lua.create_table()?;
        for pair in t.pairs::<Value, Value>() {
            let (key, value) = pair?;
            let key_name = match &key {
                Value::String(s) => Some(s.to_str()?.to_string()),
                _ => None,
            };
            match (key_name.as_deref(), value) {
                (Some("tls"), Value::Boolean(on)) => wanted = Some(on),
                (Some("tls"), _) => {
                    return Err(mlua::Error::runtime(
                        "mcp.backend: tls must be true or false",
                    ))
                }
                (Some("tls_name"), Value::String(s)) => name = Some(s.to_str()?.to_string()),
                (Some("tls_name"), _) => {
                    return Err(mlua::Error::runtime(
                        "mcp.backend: tls_name must be a string",
                    ))
                }
                (_, value) => rest.set(key, value)?,
            }
        }
        args.pop_front();
        args.push_front(Value::Table(rest));
    }
    let handle = plain.call::<AnyUserData>(args)?;
    let handle = handle.borrow::<BackendHandle>()?.clone();
    let (client, use_tls) = match lua.app_data_ref::<TlsState>() {
        Some(state) => (state.client.clone(), state.use_tls),
        None => (None, false),
    };
    if !wanted.unwrap_or(use_tls) {
        if name.is_some() {
            return Err(mlua::Error::runtime(
                "mcp.backend: tls_name is for a TLS backend (tls = true)",
            ));
        }
        return Ok(handle);
    }
    let client = client.ok_or_else(|| {
        mlua::Error::runtime(
            "mcp.backend: a TLS backend needs mcp.init_tls() first (in mcp_config_pools)",
        )
    })?;
    let mut cfg = (*handle.0).clone();
    let server_name = name.unwrap_or_else(|| cfg.host.clone());
    ClientTls::server_name(&server_name)
        .map_err(|e| mlua::Error::runtime(format!("mcp.backend: {e}")))?;
    cfg.tls = Some(BackendTls {
        client,
        server_name,
    });
    Ok(BackendHandle(Arc::new(cfg)))
}

fn seconds(value: Value, option: &str, who: &str) -> mlua::Result<Duration> {
    let secs = match value {
        Value::Integer(i) => i as f64,
        Value::Number(n) => n,
        _ => {
            return Err(mlua::Error::runtime(format!(
                "{who}: {option} must be a number of seconds"
            )))
        }
    };
    if !(0.0..=86400.0).contains(&secs) {
        return Err(mlua::Error::runtime(format!(
            "{who}: {option} must be between 0 and 86400 seconds"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Sets `option`, one of the backend settings memcached also has as a
/// global default (`mcp.backend_*`), to `value`; false for another name.
/// `who` starts the error messages: the backend option and the global
/// setter share this one check.
fn tunable(cfg: &mut BackendConfig, option: &str, value: Value, who: &str) -> mlua::Result<bool> {
    let integer = |value: Value, min: i64, max: i64| match value {
        Value::Integer(i) if (min..=max).contains(&i) => Ok(i),
        _ => Err(mlua::Error::runtime(format!(
            "{who}: {option} must be an integer from {min} to {max}"
        ))),
    };
    match option {
        "connecttimeout" => cfg.connect_timeout = seconds(value, option, who)?,
        "readtimeout" => cfg.read_timeout = seconds(value, option, who)?,
        "retrywaittime" | "retrytimeout" => cfg.retry_wait = seconds(value, option, who)?,
        "failurelimit" => cfg.failure_limit = integer(value, 1, 1_000_000)? as u32,
        "depthlimit" => cfg.depth_limit = integer(value, 0, i64::MAX)? as usize,
        "tcpkeepalive" => {
            cfg.tcp_keepalive = match value {
                Value::Boolean(b) => b,
                _ => {
                    return Err(mlua::Error::runtime(format!(
                        "{who}: {option} must be true or false"
                    )))
                }
            }
        }
        "flaptime" => cfg.flap_time = seconds(value, option, who)?,
        "flapbackoffmax" => cfg.flap_backoff_max = seconds(value, option, who)?,
        "flapbackofframp" => {
            cfg.flap_backoff_ramp = match value {
                Value::Integer(i) if i >= 1 => i as f64,
                Value::Number(n) if n >= 1.0 => n,
                _ => {
                    return Err(mlua::Error::runtime(format!(
                        "{who}: {option} must be a number >= 1"
                    )))
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// memcached's global backend setters and the backend option each sets
/// the default of.
const BACKEND_SETTERS: &[(&str, &str)] = &[
    ("backend_connect_timeout", "connecttimeout"),
    ("backend_retry_timeout", "retrytimeout"),
    ("backend_retry_waittime", "retrywaittime"),
    ("backend_read_timeout", "readtimeout"),
    ("backend_failure_limit", "failurelimit"),
    ("backend_depth_limit", "depthlimit"),
    ("backend_flap_time", "flaptime"),
    ("backend_flap_backoff_ramp", "flapbackofframp"),
    ("backend_flap_backoff_max", "flapbackoffmax"),
    ("tcp_keepalive", "tcpkeepalive"),
];

/// The settings every `mcp.backend` made after them starts from.
#[derive(Default)]
struct BackendDefaults(BackendConfig);

/// The highest id `mcp.add_stat` takes (`mcp.stat_limit`).
struct StatLimit(usize);

/// memcached's global setters for the config VM: the defaults of later
/// backends ([`BACKEND_SETTERS`]), `mcp.stat_limit`, and the settings that
/// only tune memcached's own threads or its Lua collector.
fn register_backend_defaults(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    lua.set_app_data(BackendDefaults::default());
    lua.set_app_data(StatLimit(crate::stats::MAX_USER_STATS));
    for (setter, option) in BACKEND_SETTERS {
        let who = format!("mcp.{setter}");
        mcp.set(
            *setter,
            lua.create_function(move |lua, value: Value| {
                let mut defaults = lua
                    .app_data_mut::<BackendDefaults>()
                    .ok_or_else(|| mlua::Error::runtime("backend defaults missing"))?;
                tunable(&mut defaults.0, option, value, &who).map(|_| ())
            })?,
        )?;
    }
    mcp.set(
        "stat_limit",
        lua.create_function(|lua, value: Value| {
            let max = crate::stats::MAX_USER_STATS as i64;
            match value {
                Value::Integer(n) if (1..=max).contains(&n) => {
                    lua.set_app_data(StatLimit(n as usize));
                    Ok(())
                }
                _ => Err(mlua::Error::runtime(format!(
                    "mcp.stat_limit: memroute keeps at most {max} user stats; give 1..{max}"
                ))),
            }
        })?,
    )?;
    // memroute has no IO threads: each worker owns its backend connections,
    // which is memcached's behaviour with iothread off.
    mcp.set(
        "backend_use_iothread",
        lua.create_function(|_, value: Value| match value {
            Value::Boolean(_) => Ok(()),
            _ => Err(mlua::Error::runtime(
                "mcp.backend_use_iothread: give true or false",
            )),
        })?,
    )?;
    // memcached's collector ratio tunes its own Lua garbage collection;
    // memroute paces its collector by the reply bytes Lua holds instead, so
    // a ratio would not do what the startfile expects.
    mcp.set(
        "luagc_ratio",
        lua.create_function(|_, _: Value| {
            Err::<(), _>(mlua::Error::runtime(
                "mcp.luagc_ratio is not supported: memroute steps its Lua collector by the \
                 reply bytes Lua holds, not by a ratio",
            ))
        })?,
    )?;
    Ok(())
}

/// The backend `log = {deadline = ms, rate = n, errors = bool, tag = str}`
/// option: which of the backend's requests `watch proxyreqs` readers get
/// (see [`crate::backend::RequestLog`]).
fn request_log_option(value: Value) -> mlua::Result<crate::backend::RequestLog> {
    let Value::Table(t) = value else {
        return Err(mlua::Error::runtime(
            "mcp.backend: log must be a table {deadline =, rate =, errors =, tag =}",
        ));
    };
    let mut log = crate::backend::RequestLog::default();
    for pair in t.pairs::<String, Value>() {
        let (key, value) = pair?;
        match (key.as_str(), &value) {
            ("deadline", Value::Integer(i)) if *i >= 0 => log.deadline_ms = *i as u64,
            ("rate", Value::Integer(i)) if *i >= 0 => log.rate = *i as u64,
            ("errors", Value::Boolean(b)) => log.errors = *b,
            ("tag", Value::String(s)) => log.tag = s.to_str()?.to_string(),
            _ => {
                return Err(mlua::Error::runtime(format!(
                "mcp.backend: log.{key}: expected deadline = ms, rate = n, errors = true|false, \
                     tag = \"text\""
            )))
            }
        }
    }
    Ok(log)
}

fn port_of(value: Value) -> mlua::Result<u16> {
    let port = match &value {
        Value::Integer(i) => Some(*i),
        Value::Number(n) if n.fract() == 0.0 => Some(*n as i64),
        Value::String(s) => s.to_str().ok().and_then(|s| s.parse().ok()),
        _ => None,
    };
    port.and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| mlua::Error::runtime("mcp.backend: port must be 1..65535"))
}

/// `mcp.backend(label, host[, port])` or `mcp.backend{label=, host=, ...}`.
fn backend(lua: &Lua, args: mlua::MultiValue) -> mlua::Result<BackendHandle> {
    // The global setters' values; no default host: a table without one is
    // a mistake, not 127.0.0.1.
    let mut cfg = BackendConfig {
        host: String::new(),
        ..lua
            .app_data_ref::<BackendDefaults>()
            .map(|d| d.0.clone())
            .unwrap_or_default()
    };
    let mut args = args.into_iter();
    match args.next() {
        Some(Value::Table(t)) => {
            for pair in t.pairs::<String, Value>() {
                let (key, value) = pair?;
                let text = |v: &Value| -> mlua::Result<String> {
                    match v {
                        Value::String(s) => Ok(s.to_str()?.to_string()),
                        _ => Err(mlua::Error::runtime(format!(
                            "mcp.backend: {key} must be a string"
                        ))),
                    }
                };
                match key.as_str() {
                    "label" => cfg.label = text(&value)?,
                    "host" => cfg.host = text(&value)?,
                    "port" => cfg.port = port_of(value)?,
                    "connections" => {
                        cfg.connections = match value {
                            Value::Integer(i) if (1..=8).contains(&i) => i as usize,
                            _ => {
                                return Err(mlua::Error::runtime(
                                    "mcp.backend: connections must be 1..8",
                                ))
                            }
                        }
                    }
                    "down" => cfg.down = matches!(value, Value::Boolean(true)),
                    "batchgets" => {
                        cfg.batch_gets = match value {
                            Value::Boolean(b) => b,
                            _ => {
                                return Err(mlua::Error::runtime(
                                    "mcp.backend: batchgets must be true or false",
                                ))
                            }
                        }
                    }
                    "log" => cfg.request_log = Some(request_log_option(value)?),
                    other if tunable(&mut cfg, other, value, "mcp.backend")? => {}
                    other => {
                        return Err(mlua::Error::runtime(format!(
                            "mcp.backend: unknown option '{other}'"
                        )))
                    }
                }
            }
        }
        Some(Value::String(label)) => {
            cfg.label = label.to_str()?.to_string();
            cfg.host = match args.next() {
                Some(Value::String(h)) => h.to_str()?.to_string(),
                _ => return Err(mlua::Error::runtime("mcp.backend: host must be a string")),
            };
            if let Some(p) = args.next() {
                cfg.port = port_of(p)?;
            }
        }
        _ => {
            return Err(mlua::Error::runtime(
                "mcp.backend: expected (label, host, port) or a table",
            ))
        }
    }
    if cfg.label.is_empty() || cfg.host.is_empty() {
        return Err(mlua::Error::runtime(
            "mcp.backend: label and host are required",
        ));
    }
    Ok(BackendHandle(Arc::new(cfg)))
}

fn descriptor(value: &Value, mark: &str, option: &str) -> mlua::Result<Option<String>> {
    match value {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.to_str()?.to_string())),
        Value::Table(t) => match t.get::<Option<String>>(mark)? {
            Some(name) => Ok(Some(name)),
            None => Err(mlua::Error::runtime(format!(
                "mcp.pool: {option} must be a name or one of mcp's {option} constants"
            ))),
        },
        _ => Err(mlua::Error::runtime(format!(
            "mcp.pool: {option} must be a name or one of mcp's {option} constants"
        ))),
    }
}

/// `mcp.discover{ dns = "name:port" | srv = "name" | endpoint = "host:port",
/// nameserver = "ip:port", every = seconds, <backend options> }`: where a
/// pool's members come from, for `mcp.pool(mcp.discover{...}, opts)`.
fn discover(lua: &Lua, opts: Table) -> mlua::Result<DiscoveryHandle> {
    let mut template = lua
        .app_data_ref::<BackendDefaults>()
        .map(|d| d.0.clone())
        .unwrap_or_default();
    let (mut source, mut nameserver, mut every) = (None, None, None);
    for pair in opts.pairs::<String, Value>() {
        let (key, value) = pair?;
        let text = || -> mlua::Result<String> {
            match &value {
                Value::String(s) => Ok(s.to_str()?.to_string()),
                _ => Err(mlua::Error::runtime(format!(
                    "mcp.discover: {key} must be a string"
                ))),
            }
        };
        let new = match key.as_str() {
            "dns" => {
                let spec = text()?;
                let (name, port) = spec.rsplit_once(':').ok_or_else(|| {
                    mlua::Error::runtime("mcp.discover: dns must be \"name:port\"")
                })?;
                let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    mlua::Error::runtime("mcp.discover: dns must be \"name:port\"")
                })?;
                Some(Source::Dns {
                    name: name.to_string(),
                    port,
                })
            }
            "srv" => Some(Source::Srv { name: text()? }),
            "endpoint" => Some(Source::ConfigEndpoint { address: text()? }),
            "nameserver" => {
                nameserver = Some(text()?.parse::<std::net::SocketAddr>().map_err(|_| {
                    mlua::Error::runtime("mcp.discover: nameserver must be \"ip:port\"")
                })?);
                None
            }
            "every" => {
                // Bounded both ways: a huge one once panicked the config
                // thread (no Duration holds it), a tiny one re-read the
                // source in a tight loop.
                let secs = match value {
                    Value::Integer(s) => s as f64,
                    Value::Number(s) => s,
                    _ => f64::NAN,
                };
                if !(0.1..=86400.0).contains(&secs) {
                    return Err(mlua::Error::runtime(
                        "mcp.discover: every must be a number of seconds from 0.1 to 86400",
                    ));
                }
                every = Some(std::time::Duration::from_secs_f64(secs));
                None
            }
            other if tunable(&mut template, other, value.clone(), "mcp.discover")? => None,
            other => {
                return Err(mlua::Error::runtime(format!(
                    "mcp.discover: unknown option '{other}' (dns, srv, endpoint, nameserver, \
                     every, or a backend setting)"
                )))
            }
        };
        if let Some(new) = new {
            if source.replace(new).is_some() {
                return Err(mlua::Error::runtime(
                    "mcp.discover: give one of dns, srv or endpoint",
                ));
            }
        }
    }
    let Some(source) = source else {
        return Err(mlua::Error::runtime(
            "mcp.discover: give one of dns, srv or endpoint",
        ));
    };
    // A configuration endpoint is polled less often than DNS is read.
    let every = every.unwrap_or(match source {
        Source::ConfigEndpoint { .. } => std::time::Duration::from_secs(60),
        _ => std::time::Duration::from_secs(30),
    });
    Ok(DiscoveryHandle(DiscoverySpec {
        source,
        nameserver,
        every,
        template,
    }))
}

/// `mcp.discover{...}` in the config VM.
#[derive(Debug, Clone)]
pub struct DiscoveryHandle(pub DiscoverySpec);
impl UserData for DiscoveryHandle {}

/// `mcp.pool({backends} | mcp.discover{...}, {dist=, hash=, seed=,
/// filter=, filter_conf=, ...})`.
fn pool(list: Value, opts: Option<Table>) -> mlua::Result<PoolHandle> {
    let mut backends = Vec::new();
    let mut discovered = None;
    let list = match list {
        Value::UserData(ud) if ud.is::<DiscoveryHandle>() => {
            discovered = Some(ud.borrow::<DiscoveryHandle>()?.0.clone());
            None
        }
        Value::Table(list) => Some(list),
        _ => {
            return Err(mlua::Error::runtime(
                "mcp.pool: the first argument must be a list of mcp.backend objects or \
                 mcp.discover{...}",
            ))
        }
    };
    for item in list.iter().flat_map(|l| l.sequence_values::<AnyUserData>()) {
        let ud = item.map_err(|_| {
            mlua::Error::runtime(
                "mcp.pool: the first argument must be a list of mcp.backend objects",
            )
        })?;
        let handle = ud.borrow::<BackendHandle>().map_err(|_| {
            mlua::Error::runtime(
                "mcp.pool: the first argument must be a list of mcp.backend objects",
            )
        })?;
        backends.push(handle.0.clone());
    }
    if backends.is_empty() && discovered.is_none() {
        return Err(mlua::Error::runtime(
            "mcp.pool: a pool needs at least one backend",
        ));
    }
    let mut dist = None;
    let mut hash = None;
    let mut seed: Option<u64> = None;
    let mut filter: Option<String> = None;
    let mut filter_conf: Option<String> = None;
    let mut omode: Option<String> = None;
    let mut obuckets: Option<u32> = None;
    let mut table_size: Option<u32> = None;
    let mut name: Option<String> = None;
    let mut beprefix: Option<String> = None;
    if let Some(opts) = opts {
        for pair in opts.pairs::<String, Value>() {
            let (key, value) = pair?;
            match key.as_str() {
                "dist" => dist = descriptor(&value, DIST_MARK, "dist")?,
                "hash" => hash = descriptor(&value, HASH_MARK, "hash")?,
                "seed" => {
                    seed = Some(match value {
                        // memroute's own: the XXH3 seed itself.
                        Value::Integer(i) => i as u64,
                        // memcached's: the seed is the string's XXH3 hash,
                        // so pools over the same backends with different
                        // seeds place keys differently.
                        Value::String(s) => KeyHash::Xxh3 { seed: 0 }.hash(&s.as_bytes()),
                        _ => {
                            return Err(mlua::Error::runtime(
                                "mcp.pool: seed must be a string (or a number)",
                            ))
                        }
                    })
                }
                "beprefix" => beprefix = Some(String::from_lua_value(value, "beprefix")?),
                "filter" => filter = Some(String::from_lua_value(value, "filter")?),
                "filter_conf" => filter_conf = Some(String::from_lua_value(value, "filter_conf")?),
                "omode" => omode = Some(String::from_lua_value(value, "omode")?),
                "obuckets" => obuckets = Some(positive(value, "obuckets")?),
                "table_size" => table_size = Some(positive(value, "table_size")?),
                "name" => name = Some(String::from_lua_value(value, "name")?),
                // Accepted for compatibility; memroute has no IO threads.
                "iothread" => {}
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "mcp.pool: unknown option '{other}'"
                    )))
                }
            }
        }
    }
    if let Some(prefix) = &beprefix {
        // A backend's connections are shared by every backend with the same
        // settings, label included: a prefixed label gives this pool
        // connections of its own, as memcached's beprefix does.
        backends = backends
            .into_iter()
            .map(|b| {
                Arc::new(BackendConfig {
                    label: format!("{prefix}{}", b.label),
                    ..(*b).clone()
                })
            })
            .collect();
    }
    let mut kind_name = dist.unwrap_or_else(|| "jump".to_string());
    if kind_name == "ring_hash" {
        if let Some(o) = &omode {
            kind_name = format!("ring_hash:{o}");
        }
    }
    if let Some(points) = obuckets {
        kind_name = format!("{kind_name}/{points}");
    }
    if let Some(size) = table_size {
        kind_name = format!("{kind_name}:{size}");
    }
    let kind = kind_name
        .parse()
        .map_err(|e| mlua::Error::runtime(format!("mcp.pool: {e}")))?;
    let mut config = DistributionConfig::new(kind);
    let key_hash: Option<KeyHash> = match (hash, seed) {
        (Some(h), Some(s)) if h.starts_with("xx") => Some(
            format!("xxh3:{s}")
                .parse()
                .map_err(|e| mlua::Error::runtime(format!("mcp.pool: {e}")))?,
        ),
        (Some(h), _) => Some(
            h.parse()
                .map_err(|e| mlua::Error::runtime(format!("mcp.pool: {e}")))?,
        ),
        (None, Some(s)) => Some(KeyHash::Xxh3 { seed: s }),
        (None, None) => None,
    };
    if let Some(h) = key_hash {
        config = config.with_hash(h);
    }
    match filter.as_deref() {
        None | Some("none") => {}
        Some("stop") => {
            let conf = filter_conf.unwrap_or_else(|| "|#|".into());
            config = config.with_filter(KeyFilter::stop(conf));
        }
        Some("tags") | Some("tag") => {
            let conf = filter_conf.unwrap_or_else(|| "{}".into());
            let b = conf.as_bytes();
            if b.len() != 2 {
                return Err(mlua::Error::runtime(
                    "mcp.pool: filter_conf for tags must be two characters, e.g. \"{}\"",
                ));
            }
            config = config.with_filter(KeyFilter::tag(b[0], b[1]));
        }
        Some(other) => {
            return Err(mlua::Error::runtime(format!(
                "mcp.pool: unknown filter '{other}' (use \"stop\" or \"tags\")"
            )))
        }
    }
    if let Some(spec) = discovered {
        let name = name.unwrap_or_else(|| spec.source.to_string());
        let discovery = Discovery::start(name.clone(), spec, config, beprefix.unwrap_or_default())
            .map_err(|e| mlua::Error::runtime(format!("mcp.pool {name}: {e}")))?;
        return Ok(PoolHandle(Arc::new(PoolDef {
            name,
            kind: PoolKind::Discovered(discovery),
        })));
    }
    let ids: Vec<HashBackend> = backends
        .iter()
        .map(|b| HashBackend::new(format!("{}:{}", b.host, b.port)))
        .collect();
    let distribution = config
        .build(&ids)
        .map_err(|e| mlua::Error::runtime(format!("mcp.pool: {e}")))?;
    let name = name.unwrap_or_else(|| {
        backends
            .iter()
            .map(|b| b.label.as_str())
            .collect::<Vec<_>>()
            .join(",")
    });
    Ok(PoolHandle(Arc::new(PoolDef {
        name,
        kind: PoolKind::Memcached {
            backends,
            distribution: Arc::new(distribution),
        },
    })))
}

fn positive(value: Value, option: &str) -> mlua::Result<u32> {
    match value {
        Value::Integer(i) if i > 0 && i <= u32::MAX as i64 => Ok(i as u32),
        _ => Err(mlua::Error::runtime(format!(
            "mcp.pool: {option} must be a positive integer"
        ))),
    }
}

trait FromLuaValue: Sized {
    fn from_lua_value(value: Value, option: &str) -> mlua::Result<Self>;
}

impl FromLuaValue for String {
    fn from_lua_value(value: Value, option: &str) -> mlua::Result<Self> {
        match value {
            Value::String(s) => Ok(s.to_str()?.to_string()),
            _ => Err(mlua::Error::runtime(format!(
                "mcp.pool: {option} must be a string"
            ))),
        }
    }
}

fn to_config_value(value: &Value, path: &str, depth: usize) -> Result<ConfigValue, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "mcp_config_pools: {path} is nested deeper than {MAX_DEPTH} levels (a cycle?)"
        ));
    }
    Ok(match value {
        Value::Nil => ConfigValue::Nil,
        Value::Boolean(b) => ConfigValue::Bool(*b),
        Value::Integer(i) => ConfigValue::Integer(*i),
        Value::Number(n) => ConfigValue::Number(*n),
        Value::String(s) => ConfigValue::String(s.as_bytes().to_vec()),
        Value::Table(t) => {
            let mut entries = Vec::new();
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair.map_err(|e| e.to_string())?;
                let key_name = match &k {
                    Value::String(s) => s.to_string_lossy(),
                    Value::Integer(i) => i.to_string(),
                    other => other.type_name().to_string(),
                };
                let child = format!("{path}.{key_name}");
                entries.push((
                    to_config_value(&k, &child, depth + 1)?,
                    to_config_value(&v, &child, depth + 1)?,
                ));
            }
            ConfigValue::Table(entries)
        }
        Value::UserData(ud) if ud.is::<super::ratelim::GlobalBucketHandle>() => {
            let handle = ud
                .borrow::<super::ratelim::GlobalBucketHandle>()
                .map_err(|e| e.to_string())?;
            ConfigValue::RateLimiter(handle.0.clone())
        }
        Value::UserData(ud) => match ud.borrow::<PoolHandle>() {
            Ok(p) => ConfigValue::Pool(p.0.clone()),
            Err(_) => {
                return Err(format!(
                    "mcp_config_pools: {path} is a {} object; only pools, global rate \
                     limiters, tables, strings, numbers and booleans can be passed to workers",
                    if ud.is::<BackendHandle>() {
                        "backend"
                    } else {
                        "userdata"
                    }
                ))
            }
        },
        other => {
            return Err(format!(
                "mcp_config_pools: {path} is a {}; only pools, global rate limiters, tables, \
                 strings, numbers and booleans can be passed to workers",
                other.type_name()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backend lists of `text` loaded as a startfile.
    fn lists(name: &str, text: &str) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!(
            "memroute-backend-lists-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let startfile = dir.join("start.lua");
        std::fs::write(&startfile, text).unwrap();
        let loaded = load_config(
            &ProxyConfig {
                startfile,
                start_arg: None,
                split_start_arg: false,
                lua_path: Vec::new(),
                libraries: &[],
            },
            &Arc::default(),
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        loaded.backend_lists()
    }

    const ROUTES: &str = "function mcp_config_routes(p) end\n";

    #[test]
    fn backend_lists_keep_pool_order_and_sort_pools() {
        let a = lists(
            "a",
            &format!(
                "function mcp_config_pools()
                   local b1 = mcp.backend('b1', '10.0.0.1', 11211)
                   local b2 = mcp.backend('b2', '10.0.0.2', 11212)
                   local p = mcp.pool({{ b1, b2 }}, {{ name = 'main' }})
                   return {{ x = p, y = {{ p, mcp.pool({{ b2 }}, {{ name = 'one' }}) }} }}
                 end
                 {ROUTES}"
            ),
        );
        assert_eq!(
            a,
            [
                "main: b1/10.0.0.1:11211 b2/10.0.0.2:11212",
                "one: b2/10.0.0.2:11212"
            ]
        );
        // The same pools under other keys, in another order: the same lines.
        let b = lists(
            "b",
            &format!(
                "function mcp_config_pools()
                   local b1 = mcp.backend('b1', '10.0.0.1', 11211)
                   local b2 = mcp.backend('b2', '10.0.0.2', 11212)
                   return {{ mcp.pool({{ b2 }}, {{ name = 'one' }}),
                            z = mcp.pool({{ b1, b2 }}, {{ name = 'main' }}) }}
                 end
                 {ROUTES}"
            ),
        );
        assert_eq!(a, b);
        // The order of backends inside a pool counts: it places keys.
        let c = lists(
            "c",
            &format!(
                "function mcp_config_pools()
                   local b1 = mcp.backend('b1', '10.0.0.1', 11211)
                   local b2 = mcp.backend('b2', '10.0.0.2', 11212)
                   return {{ mcp.pool({{ b2, b1 }}, {{ name = 'main' }}) }}
                 end
                 {ROUTES}"
            ),
        );
        assert_eq!(c, ["main: b2/10.0.0.2:11212 b1/10.0.0.1:11211"]);
    }
}
