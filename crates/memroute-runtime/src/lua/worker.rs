//! The worker VM: one per worker thread, running `mcp_config_routes` and
//! the routes it attaches.
//!
//! A [`WorkerProxy`] holds the worker's current [`WorkerLua`] (VM + hooks)
//! and, during a reload, a staged one. Requests take an `Rc` of the current
//! VM when they start, so a request in flight finishes on the configuration
//! it started with while new requests use the new one. Backend connections
//! are kept in a registry keyed by the backend's full settings, so a reload
//! that keeps a backend keeps its connections.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use memroute_proto::{
    decode_retrieval_piece, Command, GetCommand, Limits, MetaOp, Request, Response, ResponseCode,
    ResponseDecoder, RetrievalPiece,
};
use mlua::{AnyUserData, Function, Lua, MetaMethod, Table, UserData, UserDataMethods, Value};
use tracing::{info, warn};

use super::config::{lua_error_message, ConfigError, ConfigValue, LoadedConfig, PoolDef, PoolKind};
use super::objects::{
    command_id, LuaRequest, LuaResponse, AWAIT_ANY, AWAIT_BACKGROUND, AWAIT_FASTGOOD, AWAIT_FIRST,
    AWAIT_GOOD, AWAIT_OK, CMD_ANY, CMD_ANY_STORAGE, COMMANDS, COMMAND_SLOTS, STORAGE_IDS,
    UNHOOKABLE_IDS,
};
use super::vm;
use crate::backend::{Backend, BackendConfig, BackendError, BackendRegistry};
use crate::embedded::Embedded;
use crate::stats::ServerStats;
use crate::store::SharedStore;

/// Highest id `mcp.add_stat` accepts.
pub const MAX_USER_STATS: usize = 1024;

/// Process-wide proxy counters: `mcp.add_stat`/`mcp.stat` user counters and
/// memroute's own, shown by `stats proxy`.
#[derive(Debug)]
pub struct ProxyStats {
    names: Mutex<Vec<(i64, String)>>,
    values: Box<[AtomicI64]>,
    pub lua_errors: AtomicU64,
    pub routed_requests: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Every worker's memcached backends, for `stats backends`.
    pub backends: BackendRegistry,
}

impl Default for ProxyStats {
    fn default() -> Self {
        ProxyStats {
            names: Mutex::new(Vec::new()),
            values: (0..=MAX_USER_STATS).map(|_| AtomicI64::new(0)).collect(),
            lua_errors: AtomicU64::new(0),
            routed_requests: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            backends: BackendRegistry::default(),
        }
    }
}

impl ProxyStats {
    /// Installs the names a (re)loaded configuration registered.
    pub fn set_names(&self, names: &[(i64, String)]) {
        if let Ok(mut n) = self.names.lock() {
            *n = names.to_vec();
        }
    }

    fn add(&self, id: i64, delta: i64) {
        if let Some(v) = usize::try_from(id).ok().and_then(|i| self.values.get(i)) {
            v.fetch_add(delta, Relaxed);
        }
    }

    /// `(name, value)` for every registered user stat (`mcp.add_stat`),
    /// for the metrics endpoint.
    pub fn user_stats(&self) -> Vec<(String, i64)> {
        let Ok(names) = self.names.lock() else {
            return Vec::new();
        };
        names
            .iter()
            .map(|(id, name)| {
                let value = self.values.get(*id as usize).map_or(0, |v| v.load(Relaxed));
                (name.clone(), value)
            })
            .collect()
    }

    /// `(name, value)` for every registered user stat, then memroute's own.
    pub fn snapshot(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        if let Ok(names) = self.names.lock() {
            for (id, name) in names.iter() {
                let value = self.values.get(*id as usize).map_or(0, |v| v.load(Relaxed));
                out.push((name.clone(), value));
            }
        }
        out.push(("lua_errors".into(), self.lua_errors.load(Relaxed) as i64));
        out.push((
            "routed_requests".into(),
            self.routed_requests.load(Relaxed) as i64,
        ));
        out.push(("config_reloads".into(), self.reloads.load(Relaxed) as i64));
        out.push((
            "config_reload_fails".into(),
            self.reload_failures.load(Relaxed) as i64,
        ));
        out
    }
}

/// What routes reach on their worker besides backends.
pub struct RouteEnv {
    pub embedded: Embedded,
    pub server_stats: Arc<ServerStats>,
    pub worker: usize,
    pub limits: Limits,
    pub proxy_stats: Arc<ProxyStats>,
}

/// One worker's routing state.
pub struct WorkerProxy {
    env: Rc<RouteEnv>,
    current: RefCell<Rc<WorkerLua>>,
    staged: RefCell<Option<Rc<WorkerLua>>>,
    backends: Rc<RefCell<HashMap<String, Weak<Backend>>>>,
}

impl WorkerProxy {
    /// Builds this worker's VM from a loaded configuration.
    pub fn new(env: RouteEnv, loaded: &LoadedConfig) -> Result<Rc<WorkerProxy>, ConfigError> {
        let env = Rc::new(env);
        let backends = Rc::new(RefCell::new(HashMap::new()));
        let lua = WorkerLua::build(&env, &backends, loaded)?;
        Ok(Rc::new(WorkerProxy {
            env,
            current: RefCell::new(lua),
            staged: RefCell::new(None),
            backends,
        }))
    }

    /// The configuration new requests run on.
    pub fn current(&self) -> Rc<WorkerLua> {
        self.current.borrow().clone()
    }

    /// Builds a new VM without using it yet (first phase of a reload).
    pub fn stage(&self, loaded: &LoadedConfig) -> Result<(), ConfigError> {
        let lua = WorkerLua::build(&self.env, &self.backends, loaded)?;
        *self.staged.borrow_mut() = Some(lua);
        Ok(())
    }

    /// Makes the staged VM current (second phase, once every worker staged).
    pub fn commit(&self) {
        if let Some(lua) = self.staged.borrow_mut().take() {
            *self.current.borrow_mut() = lua;
        }
        // Forget backends no configuration uses any more.
        self.backends
            .borrow_mut()
            .retain(|_, b| b.strong_count() > 0);
    }

    /// Drops the staged VM (another worker failed to stage).
    pub fn abort(&self) {
        self.staged.borrow_mut().take();
    }
}

/// A worker VM with its attached routes.
pub struct WorkerLua {
    lua: Lua,
    hooks: Vec<Option<Route>>,
    env: Rc<RouteEnv>,
    limits: WorkerLimits,
    /// Bytes of replies in response objects given to Lua since the last
    /// collector step (see [`WorkerLua::held_by_lua`]).
    lua_held: std::cell::Cell<usize>,
}

/// Bytes of replies held by Lua garbage that warrant one collector step.
const GC_STEP_BYTES: usize = 256 * 1024;

/// This worker's share of the limits the startfile set
/// ([`ProxySettings`](super::config::ProxySettings)); `None` for none.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerLimits {
    /// Routed requests in flight at once (`mcp.active_req_limit`).
    pub active_requests: Option<u64>,
    /// Bytes of routed replies held for clients (`mcp.buffer_memory_limit`).
    pub buffer_bytes: Option<u64>,
}

/// What `mcp.attach` installed for a command.
#[derive(Clone)]
pub enum Route {
    /// A Lua function, run as a coroutine per request (per key for
    /// multi-key gets).
    Lua(Function),
    /// A pool attached directly: the request goes to the pool with no Lua
    /// on the request path. It answers as `function(r) return pool(r) end`
    /// would, at a fraction of the cost.
    Pool(Rc<PoolRuntime>),
}

impl Route {
    /// Whether a multi-key get on this route goes out as one line per
    /// backend (a memcached pool attached directly), so a window of many
    /// keys is one request; a Lua route runs once per key.
    pub fn joins_keys(&self) -> bool {
        matches!(self, Route::Pool(pool) if pool.joins_keys())
    }
}

/// Collects `mcp.attach` calls while `mcp_config_routes` runs.
struct Attached(RefCell<Vec<Option<Route>>>);

impl WorkerLua {
    fn build(
        env: &Rc<RouteEnv>,
        registry: &Rc<RefCell<HashMap<String, Weak<Backend>>>>,
        loaded: &LoadedConfig,
    ) -> Result<Rc<WorkerLua>, ConfigError> {
        let path = &loaded.proxy.startfile;
        let lua = vm::new_vm(&loaded.proxy)?;
        lua.set_app_data(env.limits.clone());
        lua.set_app_data(env.clone());
        lua.set_app_data(Attached(RefCell::new(vec![None; COMMAND_SLOTS])));
        register(&lua).map_err(|e| ConfigError::lua(path, e))?;
        vm::load_startfile(&lua, &loaded.proxy)?;
        let routes: Function = lua.globals().get("mcp_config_routes").map_err(|_| {
            ConfigError::Invalid(format!("{}: no mcp_config_routes function", path.display()))
        })?;
        let mut pools = HashMap::new();
        let arg = to_lua(&lua, &loaded.pools, registry, &mut pools)
            .map_err(|e| ConfigError::lua(path, e))?;
        routes
            .call::<()>(arg)
            .map_err(|e| ConfigError::lua(path, e))?;
        let hooks = lua
            .remove_app_data::<Attached>()
            .map(|a| a.0.into_inner())
            .unwrap_or_default();
        let workers = env.server_stats.worker_count();
        let limits = WorkerLimits {
            active_requests: loaded.settings.active_per_worker(workers),
            buffer_bytes: loaded.settings.buffer_bytes_per_worker(workers),
        };
        Ok(Rc::new(WorkerLua {
            lua,
            hooks,
            env: env.clone(),
            limits,
            lua_held: std::cell::Cell::new(0),
        }))
    }

    /// The limits on this worker's routed requests.
    pub fn limits(&self) -> WorkerLimits {
        self.limits
    }

    /// Whether `set` has a route (so stores do not reach the embedded cache).
    pub fn routes_storage(&self) -> bool {
        self.hooks
            .get(super::objects::CMD_SET as usize)
            .is_some_and(|h| h.is_some())
    }

    /// The route attached to this request's command, if any.
    pub fn hook(&self, command: &Command) -> Option<Route> {
        let id = command_id(command) as usize;
        self.hooks.get(id).and_then(|h| h.clone())
    }

    /// Counts one client request that took a route (a multi-key get
    /// counts once, however many windows it is sent in).
    pub fn count_routed(&self) {
        self.env.proxy_stats.routed_requests.fetch_add(1, Relaxed);
    }

    /// Runs `hook` for a request that is not a multi-key get (the
    /// connection sends those a window of keys at a time, see
    /// [`get_window`](Self::get_window)); the future gives the bytes the
    /// client gets (empty for `noreply`).
    ///
    /// The connection keeps one such future per request in flight, boxed:
    /// keeping it small (a pooled request's fits malloc's fast path) is why
    /// the route's future is wrapped with `map()` and pools pick their
    /// backend before building theirs.
    pub fn serve(self: Rc<Self>, hook: Route, request: Request) -> ReplyFuture {
        self.count_routed();
        let shape = ReplyShape::of(&request);
        match hook {
            // map() holds the inner future once; an async block awaiting
            // it would hold it twice.
            Route::Pool(pool) => Box::pin(
                pool.send_response(request)
                    .map(move |response| shape.apply(response.into_raw())),
            ),
            Route::Lua(function) => Box::pin(
                self.run_lua(function, request)
                    .map(move |reply| shape.apply(reply)),
            ),
        }
    }

    /// The `VALUE` blocks (no `END`) of `keys`, a window of a multi-key
    /// get's keys, in their order. A pool attached directly sends each
    /// backend its keys of the window in one line; a Lua route runs once
    /// per key. A key whose route failed reads as a miss, so the client
    /// still gets one well-formed reply (as mcrouter does).
    pub fn get_window(
        self: &Rc<Self>,
        hook: &Route,
        get: &GetCommand,
        keys: &[Bytes],
    ) -> ReplyFuture {
        if let Route::Pool(pool) = hook {
            if pool.joins_keys() {
                let pool = pool.clone();
                let request = get_request(get, keys);
                return Box::pin(async move { pool.multi_get(&request).await });
            }
        }
        let subs: Vec<Request> = keys
            .iter()
            .map(|key| get_request(get, std::slice::from_ref(key)))
            .collect();
        let this = self.clone();
        let hook = hook.clone();
        Box::pin(async move {
            let replies =
                futures_util::future::join_all(subs.into_iter().map(|r| this.run_route(&hook, r)))
                    .await;
            value_blocks_of(replies.iter().map(|reply| &reply[..]))
        })
    }

    /// Runs one route call; Lua errors become `SERVER_ERROR lua failure`.
    async fn run_route(self: &Rc<Self>, hook: &Route, request: Request) -> Bytes {
        match hook {
            Route::Lua(function) => self.clone().run_lua(function.clone(), request).await,
            Route::Pool(pool) => pool.clone().send_response(request).await.raw().clone(),
        }
    }

    /// Runs a Lua route as a coroutine for one request.
    async fn run_lua(self: Rc<Self>, hook: Function, request: Request) -> Bytes {
        let ud = match self.lua.create_userdata(LuaRequest::new(request)) {
            Ok(ud) => ud,
            Err(e) => return self.lua_failure(&e),
        };
        match hook.call_async::<Value>(ud).await {
            Ok(Value::UserData(ud)) => match ud.borrow::<LuaResponse>() {
                Ok(res) => {
                    let raw = res.raw().clone();
                    self.held_by_lua(raw.len());
                    raw
                }
                Err(_) => self.bad_return("a userdata that is not a response"),
            },
            Ok(Value::String(s)) => {
                let bytes = s.as_bytes();
                if bytes.ends_with(b"\r\n") {
                    Bytes::copy_from_slice(&bytes)
                } else {
                    let mut b = BytesMut::with_capacity(bytes.len() + 2);
                    b.extend_from_slice(&bytes);
                    b.extend_from_slice(b"\r\n");
                    b.freeze()
                }
            }
            Ok(other) => self.bad_return(other.type_name()),
            Err(e) => self.lua_failure(&e),
        }
    }

    /// A response object of `bytes` became garbage for Lua to collect.
    /// Lua sees only the small userdata, not the reply it holds, so it
    /// would let large replies pile up between collections; like
    /// memcached's proxy, count them and step the collector once per
    /// [`GC_STEP_BYTES`] of them.
    fn held_by_lua(&self, bytes: usize) {
        let held = self.lua_held.get() + bytes;
        if held < GC_STEP_BYTES {
            self.lua_held.set(held);
            return;
        }
        self.lua_held.set(held % GC_STEP_BYTES);
        for _ in 0..held / GC_STEP_BYTES {
            if let Ok(true) = self.lua.gc_step() {
                break;
            }
        }
    }

    fn bad_return(&self, what: &str) -> Bytes {
        self.env.proxy_stats.lua_errors.fetch_add(1, Relaxed);
        warn!(target: "memroute::lua", "route returned {what}; routes must return a response or a string");
        failure_line()
    }

    fn lua_failure(&self, error: &mlua::Error) -> Bytes {
        self.env.proxy_stats.lua_errors.fetch_add(1, Relaxed);
        warn!(target: "memroute::lua", "route failed: {}", lua_error_message(error));
        failure_line()
    }
}

fn failure_line() -> Bytes {
    Bytes::from_static(b"SERVER_ERROR lua failure\r\n")
}

/// A routed request's reply on its way: what the client gets.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Bytes>>>;

/// What of a route's reply the client sees: nothing for `noreply`, and
/// for meta `q` nothing when it is the nominal reply (`EN` for `mg`, `HD`
/// otherwise).
#[derive(Clone, Copy)]
struct ReplyShape {
    noreply: bool,
    quiet: bool,
    meta_op: Option<MetaOp>,
}

impl ReplyShape {
    fn of(request: &Request) -> ReplyShape {
        ReplyShape {
            noreply: request.noreply(),
            quiet: request.is_quiet(),
            meta_op: match request.command() {
                Command::Meta(m) => Some(m.op),
                _ => None,
            },
        }
    }

    fn apply(self, reply: Bytes) -> Bytes {
        if self.noreply {
            return Bytes::new();
        }
        if self.quiet {
            let code = Response::from_line(
                std::str::from_utf8(reply.get(..2).unwrap_or(b"")).unwrap_or(""),
            )
            .code();
            let hidden = match self.meta_op {
                Some(MetaOp::Get) => code == ResponseCode::En,
                Some(_) => code == ResponseCode::Hd,
                None => false,
            };
            if hidden {
                return Bytes::new();
            }
        }
        reply
    }
}

/// `get`/`gets`/`gat`/`gats` (as `get` has it) for `keys`.
fn get_request(get: &GetCommand, keys: &[Bytes]) -> Request {
    let mut line = BytesMut::with_capacity(keys.iter().map(|k| k.len() + 1).sum::<usize>() + 16);
    line.extend_from_slice(get.op.name().as_bytes());
    if get.op.touches() {
        line.extend_from_slice(b" ");
        memroute_proto::number::write_i64(&mut line, i64::from(get.exptime));
    }
    for key in keys {
        line.extend_from_slice(b" ");
        line.extend_from_slice(key);
    }
    let command = Command::Get(GetCommand {
        op: get.op,
        exptime: get.exptime,
        keys: keys.iter().cloned().collect(),
    });
    Request::new(line.freeze(), Bytes::new(), command)
}

/// The `VALUE` blocks of single-key replies, in order, each without its
/// `END`. A miss or an error for one key gives nothing: it reads as a miss.
fn value_blocks_of<'a>(replies: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::new();
    for reply in replies.filter(|r| r.starts_with(b"VALUE ")) {
        out.extend_from_slice(reply.strip_suffix(b"END\r\n").unwrap_or(reply));
    }
    out.freeze()
}

/// The `VALUE` blocks of a multi-key reply, in order, each with its `END`
/// (as a single-key reply). A failed request or an error line gives no
/// (more) blocks: those keys read as misses.
fn value_blocks(reply: Result<Response, BackendError>) -> VecDeque<Response> {
    let mut blocks = VecDeque::new();
    let Ok(reply) = reply else { return blocks };
    let mut buf = BytesMut::from(&reply.raw()[..]);
    while let Ok(Some(RetrievalPiece::Value(block))) = decode_retrieval_piece(&mut buf) {
        blocks.push_back(block);
    }
    blocks
}

/// A pool on one worker: the shared definition plus this worker's
/// connections to each backend (none for a shared store).
pub struct PoolRuntime {
    pub def: Arc<PoolDef>,
    backends: Vec<Rc<Backend>>,
}

impl PoolRuntime {
    /// Sends `request` to the backend its key maps to; the response carries
    /// its round-trip time for `res:elapsed()`.
    pub fn send(self: Rc<Self>, request: Request) -> impl Future<Output = LuaResponse> {
        let start = Instant::now();
        self.send_response(request)
            .map(move |response| LuaResponse::new(response, start.elapsed().as_micros() as u64))
    }

    /// Sends `request` to the backend its key maps to; a backend failure
    /// becomes its `SERVER_ERROR` reply. A memcached backend gets the
    /// request now (see [`Backend::send`]), so the future holds only what
    /// the wait needs.
    pub fn send_response(self: Rc<Self>, request: Request) -> impl Future<Output = Response> {
        // Every request sent to a backend must get a reply, or replies
        // would fall out of step: drop noreply/q here; the client's own
        // reply is suppressed where the route result is written.
        let outbound = request.without_noreply().unwrap_or(request);
        match &self.def.kind {
            PoolKind::Memcached { distribution, .. } => {
                let key = outbound.key().map_or(&b""[..], |k| &k[..]);
                let backend = self.backends[distribution.pick(key)].clone();
                let sending = backend.send(&outbound);
                futures_util::future::Either::Left(sending.map(move |reply| {
                    // The backend is kept until the reply is in: a reload
                    // that drops it must not strand this request.
                    drop(backend);
                    reply.unwrap_or_else(|e| Response::from_line(e.client_reply()))
                }))
            }
            // The store's future borrows the request: boxed, so that a
            // memcached pool's future does not carry a request's room.
            PoolKind::Shared(store) => {
                let store = store.clone();
                futures_util::future::Either::Right(Box::pin(async move {
                    store.execute(&outbound).await
                }))
            }
        }
    }

    /// Whether multi-key gets on this pool go out as one line per backend
    /// ([`multi_get`](Self::multi_get)): a memcached pool.
    pub fn joins_keys(&self) -> bool {
        matches!(self.def.kind, PoolKind::Memcached { .. })
    }

    /// A multi-key get on a memcached pool attached directly, as one
    /// request per backend: each backend gets its keys in one line (in the
    /// client's order), and the `VALUE` blocks (without `END`) come back in
    /// the client's key order. Answers as the per-key route would: a key
    /// whose backend failed reads as a miss.
    pub async fn multi_get(&self, request: &Request) -> Bytes {
        let (PoolKind::Memcached { distribution, .. }, Command::Get(get)) =
            (&self.def.kind, request.command())
        else {
            return Bytes::new();
        };
        // group_of[backend]: its index in `groups`, which hold the keys.
        let mut group_of = vec![usize::MAX; self.backends.len()];
        let mut groups: Vec<(usize, Vec<Bytes>)> = Vec::new();
        let mut key_groups = Vec::with_capacity(get.keys.len());
        for key in &get.keys {
            let backend = distribution.pick(key);
            if group_of[backend] == usize::MAX {
                group_of[backend] = groups.len();
                groups.push((backend, Vec::new()));
            }
            groups[group_of[backend]].1.push(key.clone());
            key_groups.push(group_of[backend]);
        }
        if let [(backend, _)] = &groups[..] {
            // One backend gets the window's own line: its reply, less its
            // END, is the answer.
            let reply = self.backends[*backend].send(request).await;
            if let Ok(reply) = &reply {
                if matches!(reply.code(), ResponseCode::Value | ResponseCode::End) {
                    let raw = reply.raw();
                    return raw.slice(..raw.len().saturating_sub(b"END\r\n".len()));
                }
            }
            // An error, perhaps after some values: those values stand.
            let blocks = value_blocks(reply);
            return value_blocks_of(blocks.iter().map(|b| &b.raw()[..]));
        }
        let replies = futures_util::future::join_all(groups.iter().map(|(backend, keys)| {
            let backend = self.backends[*backend].clone();
            let request = get_request(get, keys);
            async move { backend.send(&request).await }
        }))
        .await;
        let mut blocks: Vec<VecDeque<Response>> = replies.into_iter().map(value_blocks).collect();
        // A backend answers its keys in line order, skipping misses.
        let in_key_order: Vec<Response> = get
            .keys
            .iter()
            .zip(key_groups)
            .filter_map(|(key, group)| {
                let next = &mut blocks[group];
                let hit = next.front().and_then(|b| b.retrieval_key()) == Some(&key[..]);
                if hit {
                    next.pop_front()
                } else {
                    None
                }
            })
            .collect();
        value_blocks_of(in_key_order.iter().map(|b| &b.raw()[..]))
    }
}

/// The pool object routes call: `pool(r)`.
#[derive(Clone)]
pub struct LuaPool(pub Rc<PoolRuntime>);

impl UserData for LuaPool {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_meta_method(MetaMethod::Call, |_, this, r: AnyUserData| {
            let pool = this.0.clone();
            let request = r.borrow::<LuaRequest>().map(|r| r.request.clone());
            async move {
                let request = request.map_err(|_| {
                    mlua::Error::runtime("a pool must be called with a request object")
                })?;
                Ok(pool.send(request).await)
            }
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("mcp.pool({})", this.0.def.name))
        });
    }
}

fn env_of(lua: &Lua) -> mlua::Result<Rc<RouteEnv>> {
    lua.app_data_ref::<Rc<RouteEnv>>()
        .map(|e| e.clone())
        .ok_or_else(|| mlua::Error::runtime("worker environment missing"))
}

fn register(lua: &Lua) -> mlua::Result<()> {
    let mcp = vm::mcp_table(lua)?;
    mcp.set(
        "attach",
        lua.create_function(|lua, (cmd, func, _tag): (i64, Value, Option<Value>)| {
            let route = match func {
                Value::Function(func) => Route::Lua(func),
                Value::UserData(ud) if ud.is::<LuaPool>() => {
                    Route::Pool(ud.borrow::<LuaPool>()?.0.clone())
                }
                _ => {
                    return Err(mlua::Error::runtime(
                        "mcp.attach: the second argument must be a route function or a pool",
                    ))
                }
            };
            let ids: Vec<i64> = match cmd {
                CMD_ANY => COMMANDS
                    .iter()
                    .map(|(_, id)| *id)
                    .filter(|id| !UNHOOKABLE_IDS.contains(id))
                    .collect(),
                CMD_ANY_STORAGE => STORAGE_IDS.to_vec(),
                id if UNHOOKABLE_IDS.contains(&id) => {
                    return Err(mlua::Error::runtime(format!(
                        "mcp.attach: {} cannot have a route",
                        COMMANDS.iter().find(|(_, i)| *i == id).map_or("?", |c| c.0)
                    )))
                }
                id if COMMANDS.iter().any(|(_, i)| *i == id) => vec![id],
                _ => return Err(mlua::Error::runtime("mcp.attach: unknown command")),
            };
            let attached = lua.app_data_ref::<Attached>().ok_or_else(|| {
                mlua::Error::runtime("mcp.attach is only valid in mcp_config_routes")
            })?;
            let mut hooks = attached.0.borrow_mut();
            for id in ids {
                hooks[id as usize] = Some(route.clone());
            }
            Ok(())
        })?,
    )?;
    mcp.set(
        "request",
        lua.create_function(
            |lua, (line, value): (mlua::LuaString, Option<mlua::LuaString>)| {
                let line = line.as_bytes();
                let line = line.strip_suffix(b"\r\n").unwrap_or(&line);
                let value_bytes = value
                    .as_ref()
                    .map(|v| v.as_bytes().to_vec())
                    .unwrap_or_default();
                let value = value_bytes.strip_suffix(b"\r\n").unwrap_or(&value_bytes);
                let limits = lua
                    .app_data_ref::<Limits>()
                    .map(|l| l.clone())
                    .unwrap_or_default();
                let request = Request::parse(line, value, &limits)
                    .map_err(|e| mlua::Error::runtime(format!("mcp.request: {e}")))?;
                Ok(LuaRequest::new(request))
            },
        )?,
    )?;
    mcp.set(
        "internal",
        lua.create_function(|lua, r: AnyUserData| {
            let request = r
                .borrow::<LuaRequest>()
                .map_err(|_| mlua::Error::runtime("mcp.internal: expected a request"))?
                .request
                .clone();
            let env = env_of(lua)?;
            let request = request.without_noreply().unwrap_or(request);
            let mut out = BytesMut::new();
            let start = Instant::now();
            env.embedded
                .execute(&request, &mut out, env.server_stats.worker(env.worker));
            let response = match ResponseDecoder::for_request(&request).decode(&mut out) {
                Ok(Some(r)) => r,
                _ => Response::from_line("SERVER_ERROR internal cache gave no reply"),
            };
            Ok(LuaResponse::new(
                response,
                start.elapsed().as_micros() as u64,
            ))
        })?,
    )?;
    mcp.set(
        "stat",
        lua.create_function(|lua, (id, delta): (i64, Option<i64>)| {
            env_of(lua)?.proxy_stats.add(id, delta.unwrap_or(1));
            Ok(())
        })?,
    )?;
    mcp.set("await", lua.create_async_function(await_pools)?)?;
    mcp.set(
        "warm",
        lua.create_function(
            |lua, (store, cache, opts): (AnyUserData, AnyUserData, Option<Table>)| {
                let pool = |ud: &AnyUserData, what: &str| {
                    ud.borrow::<LuaPool>().map(|p| p.0.clone()).map_err(|_| {
                        mlua::Error::runtime(format!("mcp.warm: {what} must be a pool"))
                    })
                };
                let (store, cache) = (
                    pool(&store, "the first argument")?,
                    pool(&cache, "the second argument")?,
                );
                let PoolKind::Shared(source) = &store.def.kind else {
                    return Err(mlua::Error::runtime(
                        "mcp.warm: the first pool must be a store pool (mcp.dynamo_pool)",
                    ));
                };
                let max_ttl = match &opts {
                    Some(o) => o.get::<Option<i64>>("ttl")?.unwrap_or(0).max(0),
                    None => 0,
                };
                let env = env_of(lua)?;
                // One warm-up per process and pair of pools, on the first worker:
                // every worker (and every reload) runs mcp_config_routes.
                if env.worker != 0
                    || !first_warm(&format!("{} -> {}", store.def.name, cache.def.name))
                {
                    return Ok(());
                }
                tokio::task::spawn_local(warm_up(
                    source.clone(),
                    cache,
                    max_ttl,
                    env.limits.clone(),
                ));
                Ok(())
            },
        )?,
    )?;
    vm::forbid(
        lua,
        &mcp,
        &["backend", "pool", "dynamo_pool", "add_stat"],
        "mcp_config_pools (the config VM)",
    )
}

/// `mcp.await(r, {pools...}[, n][, mode])`: sends `r` to every pool at once
/// and returns a table of responses once the mode's condition holds. The
/// rest keep running in the background, so writes always reach every pool.
async fn await_pools(
    lua: Lua,
    (r, pools, n, mode): (AnyUserData, Table, Option<i64>, Option<i64>),
) -> mlua::Result<Table> {
    let request = r
        .borrow::<LuaRequest>()
        .map_err(|_| mlua::Error::runtime("mcp.await: expected a request"))?
        .request
        .clone();
    let mut targets = Vec::new();
    for value in pools.sequence_values::<AnyUserData>() {
        let ud = value?;
        let pool = ud.borrow::<LuaPool>().map_err(|_| {
            mlua::Error::runtime("mcp.await: the second argument must be a list of pools")
        })?;
        targets.push(pool.0.clone());
    }
    if targets.is_empty() {
        return Err(mlua::Error::runtime(
            "mcp.await: the pool list must have at least one pool",
        ));
    }
    let mode = mode.unwrap_or(AWAIT_GOOD);
    if !(AWAIT_GOOD..=AWAIT_BACKGROUND).contains(&mode) {
        return Err(mlua::Error::runtime(format!(
            "mcp.await: unknown mode {mode} (use one of the mcp.AWAIT_* constants)"
        )));
    }
    let total = targets.len();
    let wanted = match n {
        None | Some(0) => total,
        Some(n) => (n.max(0) as usize).min(total),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (index, pool) in targets.into_iter().enumerate() {
        let tx = tx.clone();
        let request = request.clone();
        tokio::task::spawn_local(async move {
            let response = pool.send(request).await;
            let _ = tx.send((index, response));
        });
    }
    drop(tx);
    let results = lua.create_table()?;
    if mode == AWAIT_BACKGROUND {
        return Ok(results);
    }
    // As memcached's proxy: results are collected in the order they
    // arrive; the mode says which count towards `n`. If the condition can
    // no longer be met, the call returns once every pool has answered.
    let mut counted = 0usize;
    while let Some((index, response)) = rx.recv().await {
        if mode == AWAIT_FIRST {
            // Only the first pool's result is wanted (and returned).
            if index == 0 {
                results.push(response)?;
                break;
            }
            continue;
        }
        let good = response.is_good();
        let counts = match mode {
            AWAIT_ANY => true,
            AWAIT_OK => response.response.is_ok(),
            // A hit ends the wait at once; misses count towards n.
            AWAIT_FASTGOOD => response.response.is_ok(),
            _ => good, // AWAIT_GOOD
        };
        results.push(response)?;
        if counts {
            counted += 1;
        }
        if (mode == AWAIT_FASTGOOD && good) || counted >= wanted {
            break;
        }
    }
    Ok(results)
}

fn first_warm(pair: &str) -> bool {
    static DONE: std::sync::OnceLock<Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    done.lock()
        .map(|mut d| d.insert(pair.to_string()))
        .unwrap_or(false)
}

/// Copies every live item of `source` into the `cache` pool, page by page,
/// logging progress. A cached copy lives as long as the stored item, capped
/// at `max_ttl` seconds when that is not 0.
async fn warm_up(
    source: Arc<dyn SharedStore>,
    cache: Rc<PoolRuntime>,
    max_ttl: i64,
    limits: Limits,
) {
    const PAGE: i32 = 100;
    let started = Instant::now();
    let (mut copied, mut failed, mut cursor) = (0u64, 0u64, None);
    let mut errors_in_a_row = 0;
    info!("warm-up {} -> {}: started", source.name(), cache.def.name);
    loop {
        let (items, next) = match source.scan_page(cursor.clone(), PAGE).await {
            Ok(page) => {
                errors_in_a_row = 0;
                page
            }
            Err(e) => {
                errors_in_a_row += 1;
                warn!("warm-up {}: {e}", source.name());
                if errors_in_a_row >= 5 {
                    warn!(
                        "warm-up {} -> {}: giving up after {copied} items",
                        source.name(),
                        cache.def.name
                    );
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let now = crate::stats::unix_now() as i64;
        for item in items {
            let mut ttl = if item.expires == 0 {
                0
            } else {
                (item.expires - now).max(1)
            };
            if max_ttl > 0 && (ttl == 0 || ttl > max_ttl) {
                ttl = max_ttl;
            }
            let mut line = b"ms ".to_vec();
            line.extend_from_slice(&item.key);
            line.extend_from_slice(
                format!(" {} F{} T{ttl}", item.value.len(), item.flags).as_bytes(),
            );
            let stored = match Request::parse(&line, &item.value, &limits) {
                Ok(request) => {
                    cache.clone().send(request).await.response.code() == ResponseCode::Hd
                }
                Err(_) => false,
            };
            if stored {
                copied += 1;
                if copied % 10_000 == 0 {
                    info!(
                        "warm-up {} -> {}: {copied} items",
                        source.name(),
                        cache.def.name
                    );
                }
            } else {
                failed += 1;
            }
        }
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    info!(
        "warm-up {} -> {}: done, {copied} items copied, {failed} failed, in {:.1} s",
        source.name(),
        cache.def.name,
        started.elapsed().as_secs_f64()
    );
}

/// Copies a [`ConfigValue`] into this VM, turning pool definitions into
/// worker-local pools (one object per definition).
fn to_lua(
    lua: &Lua,
    value: &ConfigValue,
    registry: &Rc<RefCell<HashMap<String, Weak<Backend>>>>,
    pools: &mut HashMap<*const PoolDef, AnyUserData>,
) -> mlua::Result<Value> {
    Ok(match value {
        ConfigValue::Nil => Value::Nil,
        ConfigValue::Bool(b) => Value::Boolean(*b),
        ConfigValue::Integer(i) => Value::Integer(*i),
        ConfigValue::Number(n) => Value::Number(*n),
        ConfigValue::String(s) => Value::String(lua.create_string(s)?),
        ConfigValue::Table(entries) => {
            let t = lua.create_table()?;
            for (k, v) in entries {
                t.raw_set(
                    to_lua(lua, k, registry, pools)?,
                    to_lua(lua, v, registry, pools)?,
                )?;
            }
            Value::Table(t)
        }
        ConfigValue::Pool(def) => {
            let ptr = Arc::as_ptr(def);
            if let Some(ud) = pools.get(&ptr) {
                return Ok(Value::UserData(ud.clone()));
            }
            let backends = match &def.kind {
                PoolKind::Memcached { backends, .. } => backends
                    .iter()
                    .map(|b| backend_for(lua, registry, b))
                    .collect(),
                PoolKind::Shared(_) => Vec::new(),
            };
            let ud = lua.create_userdata(LuaPool(Rc::new(PoolRuntime {
                def: def.clone(),
                backends,
            })))?;
            pools.insert(ptr, ud.clone());
            Value::UserData(ud)
        }
    })
}

/// This worker's connection to a backend with exactly these settings,
/// reusing an existing one across reloads. A new one is listed for `stats
/// backends`.
fn backend_for(
    lua: &Lua,
    registry: &Rc<RefCell<HashMap<String, Weak<Backend>>>>,
    config: &Arc<BackendConfig>,
) -> Rc<Backend> {
    let key = format!("{config:?}");
    let mut map = registry.borrow_mut();
    if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
        return existing;
    }
    let env = lua.app_data_ref::<Rc<RouteEnv>>();
    // Values larger than the item size limit are never buffered.
    let config = match &env {
        Some(env) if env.limits.max_item_size != config.max_value => Arc::new(BackendConfig {
            max_value: env.limits.max_item_size,
            ..(**config).clone()
        }),
        _ => config.clone(),
    };
    let backend = Backend::new(config);
    if let Some(env) = env {
        backend.register(&env.proxy_stats.backends);
    }
    map.insert(key, Rc::downgrade(&backend));
    backend
}
