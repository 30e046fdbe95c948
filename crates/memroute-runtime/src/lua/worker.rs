//! The worker VM: one per worker thread, running `mcp_config_routes` and
//! the Lua routes it attaches.
//!
//! A [`WorkerProxy`] builds a worker's routes from a loaded configuration:
//! a fresh VM runs `mcp_config_routes(pools)`, where pools are this
//! worker's own (`crate::route::pool`), and `mcp.attach` fills a
//! [`RouteSet`]'s untagged table, or with a tag that tag's table. A Lua
//! function becomes a [`LuaRoute`] node; a pool is attached as itself. The
//! set is staged and committed on the worker's [`WorkerRoutes`], which is
//! free of Lua.
//!
//! The Lua bindings routes call on their worker also live here: `pool(r)`,
//! `mcp.await` and `mcp.await_logerrors`, `mcp.internal`, `mcp.request`,
//! `mcp.stat`, `mcp.warm`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use memroute_proto::{Limits, Request, Response, ResponseCode, ResponseDecoder};
use mlua::{AnyUserData, Function, Lua, MetaMethod, Table, UserData, UserDataMethods, Value};
use tracing::{info, warn};

use super::config::{lua_error_message, ConfigError, ConfigValue, LoadedConfig, PoolDef};
use super::coroutine::{drive, idle_prepared, Coroutines, KeptObject, Parked};
use super::fresh::{self, FreshObjects, Reserved};
use super::funcgen::FuncgenRoute;
use super::objects::{
    LuaRequest, LuaResponse, AWAIT_ANY, AWAIT_BACKGROUND, AWAIT_FASTGOOD, AWAIT_FIRST, AWAIT_GOOD,
    AWAIT_OK, CMD_ANY, CMD_ANY_STORAGE, COMMANDS, COMMAND_SLOTS, STORAGE_IDS, UNHOOKABLE_IDS,
};
use super::raw;
use super::routelib::RoutelibConfig;
use super::userroutes::LuaHandlers;
use super::vm;
use crate::route::plan::BuildContext;
use crate::route::pool::EmbeddedPool;
use crate::route::{
    check_tag, AttachedRoutes, Pool, ReplyFuture, ReplyShape, ResponseFuture, Route, RouteEnv,
    RouteSet, WorkerLimits, WorkerRoutes,
};
use crate::store::SharedStore;

/// Builds one worker's routes, now and at every reload.
pub struct WorkerProxy {
    env: Rc<RouteEnv>,
    routes: Rc<WorkerRoutes>,
}

impl WorkerProxy {
    /// Builds this worker's routes from a loaded configuration and makes
    /// them current.
    pub fn new(env: RouteEnv, loaded: &LoadedConfig) -> Result<WorkerProxy, ConfigError> {
        let proxy = WorkerProxy {
            env: Rc::new(env),
            routes: Rc::new(WorkerRoutes::default()),
        };
        proxy.stage(loaded)?;
        proxy.routes.commit();
        Ok(proxy)
    }

    /// The routes connections read.
    pub fn routes(&self) -> &Rc<WorkerRoutes> {
        &self.routes
    }

    /// Builds the routes of a new configuration without using them yet
    /// (first phase of a reload).
    pub fn stage(&self, loaded: &LoadedConfig) -> Result<(), ConfigError> {
        let set = match &loaded.routelib {
            Some(routelib) => self.build_native(loaded, routelib)?,
            None => WorkerLua::build(&self.env, &self.routes, loaded)?,
        };
        self.routes.stage(set);
        Ok(())
    }

    /// routelib trees, built with no worker VM: each tree's router serves
    /// every command that carries a key, for its tag (untagged without
    /// one), as routelib attaches it.
    fn build_native(
        &self,
        loaded: &LoadedConfig,
        routelib: &RoutelibConfig,
    ) -> Result<RouteSet, ConfigError> {
        let handlers = match routelib.user_handlers {
            true => Some(LuaHandlers::new(
                WorkerLua::for_handlers(&self.env, loaded)?,
                self.routes.clone(),
            )),
            false => None,
        };
        let mut cx = BuildContext::new(&self.routes.backends, &self.env);
        if let Some(handlers) = &handlers {
            cx = cx.with_user_handlers(handlers);
        }
        let mut attached = AttachedRoutes::new(COMMAND_SLOTS);
        for (tag, router) in &routelib.routers {
            let root = router.build(&cx);
            let table = attached.table_mut(tag.as_deref());
            for id in STORAGE_IDS {
                table[*id as usize] = Some(root.clone());
            }
        }
        for def in &routelib.pools {
            cx.pool(def);
        }
        if let Some(error) = handlers.as_ref().and_then(LuaHandlers::failure) {
            return Err(ConfigError::Invalid(error));
        }
        warn_unused_tags(&attached, &self.env);
        let mut pools = cx.pools();
        pools.push(Rc::new(EmbeddedPool::new(self.env.clone())));
        Ok(RouteSet::new(
            attached,
            &self.env.listener_tags,
            pools,
            worker_limits(loaded, &self.env),
            self.env.proxy_stats.clone(),
        ))
    }

    /// Makes the staged routes current (once every worker staged).
    pub fn commit(&self) {
        self.routes.commit();
    }

    /// Drops the staged routes (another worker failed to stage).
    pub fn abort(&self) {
        self.routes.abort();
    }
}

/// This worker's share of the limits a configuration sets.
fn worker_limits(loaded: &LoadedConfig, env: &RouteEnv) -> WorkerLimits {
    let workers = env.server_stats.worker_count();
    WorkerLimits {
        active_requests: loaded.settings.active_per_worker(workers),
        buffer_bytes: loaded.settings.buffer_bytes_per_worker(workers),
    }
}

/// Logs (once, from the first worker) routes attached for a tag no
/// listener carries (`mcp.attach` or routelib's `routes{ tag = }`):
/// memcached accepts them, but they are never reached, which is most often
/// a typo.
fn warn_unused_tags(routes: &AttachedRoutes, env: &RouteEnv) {
    if env.worker != 0 {
        return;
    }
    for (tag, _) in &routes.tagged {
        if !env.listener_tags.contains(tag) {
            warn!("routes attached for tag {tag:?}, which no listener has (-l tag_{tag}_:...), are never used");
        }
    }
}

/// A worker VM: what its Lua routes run in.
pub struct WorkerLua {
    lua: Lua,
    env: Rc<RouteEnv>,
    /// Bytes of replies in response objects given to Lua since the last
    /// collector step (see [`WorkerLua::held_by_lua`]).
    lua_held: Cell<usize>,
    /// The VM's route coroutines and what they wait for.
    coroutines: Rc<Coroutines>,
    /// The classic API's request objects and `pool(r)`'s response objects.
    requests: Rc<FreshObjects<LuaRequest>>,
    responses: Rc<FreshObjects<LuaResponse>>,
}

/// Bytes of replies held by Lua garbage that warrant one collector step.
const GC_STEP_BYTES: usize = 256 * 1024;

/// Collects `mcp.attach` calls while `mcp_config_routes` runs, and lets
/// them reach the VM their Lua routes run in.
struct Attached {
    routes: RefCell<AttachedRoutes>,
    vm: Weak<WorkerLua>,
}

impl WorkerLua {
    /// A worker VM for route handlers written in Lua in a routelib tree:
    /// the startfile's files are run (routelib and the handler libraries
    /// after it), `mcp_config_routes` is not; the handlers' `_start`
    /// functions are called on it as the native tree is built.
    pub(super) fn for_handlers(
        env: &Rc<RouteEnv>,
        loaded: &LoadedConfig,
    ) -> Result<Rc<WorkerLua>, ConfigError> {
        Self::load(env, loaded)
    }

    /// A fresh worker VM with the worker's bindings, the startfile run.
    fn load(env: &Rc<RouteEnv>, loaded: &LoadedConfig) -> Result<Rc<WorkerLua>, ConfigError> {
        let path = &loaded.proxy.startfile;
        let lua = vm::new_vm(&loaded.proxy)?;
        lua.set_app_data(env.limits.clone());
        lua.set_app_data(env.clone());
        lua.set_app_data(Rc::new(EmbeddedPool::new(env.clone())));
        Coroutines::install(&lua).map_err(|e| ConfigError::lua(path, e))?;
        register(&lua).map_err(|e| ConfigError::lua(path, e))?;
        fresh::install(&lua).map_err(|e| ConfigError::lua(path, e))?;
        vm::load_startfile(&lua, &loaded.proxy)?;
        let coroutines = Coroutines::of(&lua).map_err(|e| ConfigError::lua(path, e))?;
        let (requests, responses) = match (
            fresh::objects_of::<LuaRequest>(&lua),
            fresh::objects_of::<LuaResponse>(&lua),
        ) {
            (Some(requests), Some(responses)) => (requests, responses),
            _ => return Err(ConfigError::Invalid("worker environment missing".into())),
        };
        Ok(Rc::new(WorkerLua {
            requests,
            responses,
            lua,
            env: env.clone(),
            lua_held: Cell::new(0),
            coroutines,
        }))
    }

    fn build(
        env: &Rc<RouteEnv>,
        worker_routes: &WorkerRoutes,
        loaded: &LoadedConfig,
    ) -> Result<RouteSet, ConfigError> {
        let path = &loaded.proxy.startfile;
        let vm = Self::load(env, loaded)?;
        let config_routes: Function = vm.lua.globals().get("mcp_config_routes").map_err(|_| {
            ConfigError::Invalid(format!("{}: no mcp_config_routes function", path.display()))
        })?;
        // (The VM refers to itself only weakly: routes hold it, not Lua.)
        vm.lua.set_app_data(Attached {
            routes: RefCell::new(AttachedRoutes::new(COMMAND_SLOTS)),
            vm: Rc::downgrade(&vm),
        });
        let mut pools = HashMap::new();
        let arg = to_lua(&vm.lua, &loaded.pools, env, worker_routes, &mut pools)
            .map_err(|e| ConfigError::lua(path, e))?;
        config_routes
            .call::<()>(arg)
            .map_err(|e| ConfigError::lua(path, e))?;
        let routes = vm
            .lua
            .remove_app_data::<Attached>()
            .map(|a| a.routes.into_inner())
            .unwrap_or_else(|| AttachedRoutes::new(COMMAND_SLOTS));
        warn_unused_tags(&routes, env);
        let mut all_pools = Vec::with_capacity(pools.len() + 1);
        for ud in pools.values() {
            all_pools.push(
                ud.borrow::<LuaPool>()
                    .map_err(|e| ConfigError::lua(path, e))?
                    .0
                    .clone(),
            );
        }
        all_pools.push(Rc::new(EmbeddedPool::new(env.clone())));
        Ok(RouteSet::new(
            routes,
            &env.listener_tags,
            all_pools,
            worker_limits(loaded, env),
            env.proxy_stats.clone(),
        ))
    }

    /// This worker's VM.
    pub(super) fn lua(&self) -> &Lua {
        &self.lua
    }

    /// A request object's slot for `request`, given before the request's
    /// future is made (so the future does not carry the request); the
    /// object itself is made when the route runs.
    fn request_object(&self, request: Request) -> mlua::Result<Reserved<LuaRequest>> {
        Ok(self.requests.reserve(&self.lua, LuaRequest::new(request)))
    }

    /// Runs a Lua route function (`function`, a registry reference) as a
    /// coroutine for one request, given in its request object; Lua errors
    /// become `SERVER_ERROR lua failure`.
    async fn run_route(
        &self,
        function: &mlua::RegistryKey,
        object: mlua::Result<Reserved<LuaRequest>>,
    ) -> Bytes {
        let mut object = match object {
            Ok(reserved) => reserved,
            Err(e) => return self.lua_failure(&e),
        };
        let address = Cell::new(std::ptr::null());
        let value = object.value().clone();
        let route = raw::RouteOf::Request {
            object: &value,
            address: &address,
        };
        let prepared = idle_prepared(&self.lua, &self.coroutines, |thread| {
            raw::push_registry(thread, function)?;
            address.set(object.push(thread)?);
            Ok(1)
        });
        let (thread, nargs) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => return self.lua_failure(&e),
        };
        let finished = match drive(&self.lua, &self.coroutines, route, thread, None, nargs).await {
            Ok(finished) => finished,
            Err(e) => return self.lua_failure(&e),
        };
        // The common return, a response `pool(r)` made, is read where it
        // is, without converting it.
        let made = finished.first_object(self.responses.class());
        if let Some(response) = made.and_then(|id| self.responses.value_of_id(id)) {
            if let Ok(Some(raw)) = response
                .try_borrow()
                .map(|r| r.as_ref().map(|r| r.raw().clone()))
            {
                self.held_by_lua(raw.len());
                return raw;
            }
        }
        self.reply_of(finished.first(&self.lua))
    }

    /// The reply a route gives by returning `returned`.
    pub(super) fn reply_of(&self, returned: mlua::Result<Value>) -> Bytes {
        match returned {
            Ok(Value::UserData(ud)) => self.reply_of_object(&ud),
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

    /// The reply a route gives by returning the userdata `object`.
    pub(super) fn reply_of_object(&self, object: &AnyUserData) -> Bytes {
        match fresh::with_response(&self.lua, object, |res| res.raw().clone()) {
            Ok(raw) => {
                self.held_by_lua(raw.len());
                raw
            }
            Err(_) => self.bad_return("a userdata that is not a response"),
        }
    }

    /// The reply a slot function gives by returning one of its handles'
    /// response objects (no type check: the slot made it).
    pub(super) fn reply_of_kept(&self, object: &KeptObject<LuaResponse>) -> Bytes {
        match object.get() {
            Ok(res) => res.raw().clone(),
            Err(e) => self.lua_failure(&e),
        }
    }

    /// The VM's route coroutines.
    pub(super) fn coroutines(&self) -> &Coroutines {
        &self.coroutines
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

    pub(super) fn lua_failure(&self, error: &mlua::Error) -> Bytes {
        self.env.proxy_stats.lua_errors.fetch_add(1, Relaxed);
        super::logging::proxy_error(error);
        warn!(target: "memroute::lua", "route failed: {}", lua_error_message(error));
        failure_line()
    }
}

fn failure_line() -> Bytes {
    Bytes::from_static(b"SERVER_ERROR lua failure\r\n")
}

/// A Lua function attached with `mcp.attach`: run as a coroutine per
/// request (per key for multi-key gets).
pub struct LuaRoute {
    vm: Rc<WorkerLua>,
    /// The function, as the driver pushes it.
    function: mlua::RegistryKey,
}

impl Route for LuaRoute {
    fn explain(
        &self,
        _request: &Request,
        depth: usize,
        out: &mut Vec<crate::route::explain::Step>,
    ) {
        // A Lua function decides at run time.
        out.push(crate::route::explain::Step::node(depth, "lua function"));
    }

    /// The route's reply as a response, for a route above it. (What Lua
    /// returns is bytes; they are parsed once here.)
    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let decoder = ResponseDecoder::for_request(&request);
        let object = self.vm.request_object(request);
        Box::pin(async move {
            let reply = self.vm.run_route(&self.function, object).await;
            match decoder.decode(&mut BytesMut::from(&reply[..])) {
                Ok(Some(response)) => response,
                _ => Response::from_line("SERVER_ERROR lua route gave a malformed reply"),
            }
        })
    }

    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        let shape = ReplyShape::of(&request);
        let object = self.vm.request_object(request);
        Box::pin(async move {
            let reply = self.vm.run_route(&self.function, object).await;
            shape.apply(reply)
        })
    }
}

/// Sends `request` to `pool`; the response carries its round-trip time for
/// `res:elapsed()`.
pub(super) fn send_timed(
    pool: Rc<dyn Pool>,
    request: Request,
) -> impl std::future::Future<Output = LuaResponse> {
    let start = Instant::now();
    // Which backend answers is noted only for a `watch proxyreqs` reader.
    let backend = if crate::watch::enabled(crate::watch::PROXYREQS) {
        pool.backend_of(&request)
    } else {
        None
    };
    pool.call(request).map(move |response| LuaResponse {
        backend,
        ..LuaResponse::new(response, start.elapsed().as_micros() as u64)
    })
}

/// The pool object routes call: `pool(r)`.
#[derive(Clone)]
pub struct LuaPool(pub Rc<dyn Pool>);

impl LuaPool {
    /// The Lua object of `pool`, known to the VM's fast pool calls.
    pub(super) fn object(lua: &Lua, pool: Rc<dyn Pool>) -> mlua::Result<AnyUserData> {
        let object = lua.create_userdata(LuaPool(pool.clone()))?;
        Coroutines::of(lua)?.know_pool(&object, pool);
        Ok(object)
    }
}

/// The fast path of `pool(r)` in a classic route: `r` is the route's own
/// request object and `pool` a pool object of this VM (both recognised by
/// address, without mlua's argument conversions). False, with nothing
/// done, for anything else, which the full path serves.
fn pool_call_fast(coroutines: &Coroutines, route: &raw::RouteOf<'_>, args: &raw::Args<'_>) -> bool {
    let raw::RouteOf::Request { object, address } = route else {
        return false;
    };
    if args.count() != 2 || args.userdata(2) != Some(address.get()) {
        return false;
    }
    let Some(pool) = args.userdata(1).and_then(|p| coroutines.known_pool(p)) else {
        return false;
    };
    match object.try_borrow() {
        Ok(held) => match held.as_ref() {
            Some(object) => park_pool_call(coroutines, &pool, &object.request),
            None => return false,
        },
        Err(_) => return false,
    }
    true
}

/// `pool(r)`: sends `request` and parks the wait for its reply.
fn park_pool_call(coroutines: &Coroutines, pool: &Rc<dyn Pool>, request: &Request) {
    // Which backend answers is noted only for a `watch proxyreqs` reader
    // (`be=` of `mcp.log_req`).
    let backend = if crate::watch::enabled(crate::watch::PROXYREQS) {
        pool.backend_of(request)
    } else {
        None
    };
    // Sent from the borrow: a memcached pool copies nothing.
    let future = pool.clone().call_borrowed(request);
    coroutines.park(Parked::Pool {
        start: super::coroutine::start_of(&future),
        future,
        backend,
    });
}

impl UserData for LuaPool {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        fields.add_meta_field_with(MetaMethod::Call, |lua| {
            // `pool(r)` is the hottest call a route makes: a plain Rust
            // function starts the backend call and the coroutine yields
            // until the response is there (see [`super::coroutine`]).
            let coroutines = Coroutines::of(lua)?;
            let parking = coroutines.clone();
            let start = lua.create_function(
                move |lua, (pool, r): (mlua::UserDataRef<LuaPool>, AnyUserData)| {
                    fresh::with_request(lua, &r, |r| park_pool_call(&parking, &pool.0, &r.request))
                        .map_err(|_| {
                            mlua::Error::runtime("a pool must be called with a request object")
                        })?;
                    Ok(())
                },
            )?;
            raw::waiting_function(
                lua,
                pool_call_fast,
                &start,
                "a pool call cannot wait here: Lua cannot suspend this function (a sort comparator, a metamethod called from C)",
            )
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("mcp.pool({})", this.0.name()))
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
        lua.create_function(
            |lua, (cmd, func, tag): (i64, Value, Option<mlua::LuaString>)| {
                // memcached's tag: up to 8 bytes, matched against `-l tag_NAME_:`.
                let tag = match &tag {
                    Some(tag) => {
                        let bytes = tag.as_bytes();
                        check_tag(&bytes)
                            .map_err(|e| mlua::Error::runtime(format!("mcp.attach: {e}")))?;
                        Some(String::from_utf8_lossy(&bytes).into_owned())
                    }
                    None => None,
                };
                let attached = lua.app_data_ref::<Attached>().ok_or_else(|| {
                    mlua::Error::runtime("mcp.attach is only valid in mcp_config_routes")
                })?;
                let route: Rc<dyn Route> = match func {
                    Value::Function(function) => {
                        let vm = attached
                            .vm
                            .upgrade()
                            .ok_or_else(|| mlua::Error::runtime("worker VM is gone"))?;
                        Rc::new(LuaRoute {
                            vm,
                            function: lua.create_registry_value(function)?,
                        })
                    }
                    // A pool attached directly is served with no Lua per
                    // request, as `function(r) return pool(r) end` would be.
                    Value::UserData(ud) if ud.is::<LuaPool>() => ud.borrow::<LuaPool>()?.0.clone(),
                    other => {
                        let vm = attached
                            .vm
                            .upgrade()
                            .ok_or_else(|| mlua::Error::runtime("worker VM is gone"))?;
                        FuncgenRoute::from_value(&other, vm)?.ok_or_else(|| {
                            mlua::Error::runtime(
                            "mcp.attach: the second argument must be a route function, a pool, \
                             a funcgen or a router",
                        )
                        })?
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
                let mut routes = attached.routes.borrow_mut();
                let table = routes.table_mut(tag.as_deref());
                for id in ids {
                    table[id as usize] = Some(route.clone());
                }
                Ok(())
            },
        )?,
    )?;
    mcp.set(
        "request",
        lua.create_function(|lua, (line, value): (mlua::LuaString, Value)| {
            let line = line.as_bytes();
            let line = line.strip_suffix(b"\r\n").unwrap_or(&line);
            // As memcached: the value is a string, or the value of a
            // response (a read-through fill) or of a request. A
            // string's trailing "\r\n" is not part of the value; an
            // object's value has none.
            let value: Bytes = match &value {
                Value::Nil => Bytes::new(),
                Value::String(v) => {
                    let v = v.as_bytes();
                    Bytes::copy_from_slice(v.strip_suffix(b"\r\n").unwrap_or(&v))
                }
                Value::UserData(ud) if fresh::is_response(lua, ud) => {
                    fresh::with_response(lua, ud, |res| {
                        res.response
                            .value()
                            .map(Bytes::copy_from_slice)
                            .unwrap_or_default()
                    })?
                }
                Value::UserData(ud) if fresh::is_request(lua, ud) => {
                    fresh::with_request(lua, ud, |r| r.request.value().clone())?
                }
                _ => {
                    return Err(mlua::Error::runtime(
                        "mcp.request: the value must be a string, a response or a request",
                    ))
                }
            };
            let limits = lua
                .app_data_ref::<Limits>()
                .map(|l| l.clone())
                .unwrap_or_default();
            let request = Request::parse(line, &value, &limits)
                .map_err(|e| mlua::Error::runtime(format!("mcp.request: {e}")))?;
            Ok(LuaRequest::new(request))
        })?,
    )?;
    mcp.set(
        "internal",
        lua.create_function(|lua, r: AnyUserData| {
            let request = fresh::with_request(lua, &r, |r| r.request.clone())
                .map_err(|_| mlua::Error::runtime("mcp.internal: expected a request"))?;
            let internal = lua
                .app_data_ref::<Rc<EmbeddedPool>>()
                .map(|p| p.clone())
                .ok_or_else(|| mlua::Error::runtime("worker environment missing"))?;
            // The embedded cache answers at once: the future is ready.
            Ok(send_timed(internal, request)
                .now_or_never()
                .expect("the embedded cache answers at once"))
        })?,
    )?;
    mcp.set(
        "stat",
        lua.create_function(|lua, (id, delta): (i64, Option<i64>)| {
            env_of(lua)?.proxy_stats.add(id, delta.unwrap_or(1));
            Ok(())
        })?,
    )?;
    let coroutines = Coroutines::of(lua)?;
    // mcp.await_logerrors is mcp.await that also logs, to `watch
    // proxyreqs`, the error replies that arrive after it returned.
    for (name, log_late_errors) in [("await", false), ("await_logerrors", true)] {
        let parking = coroutines.clone();
        let start_await = lua.create_function(move |lua, args: AwaitArgs| {
            let wait = await_pools(lua, name, args, log_late_errors)?;
            parking.park(Parked::Wait(Box::pin(async move {
                Ok((Value::Table(wait.await?), Value::Nil))
            })));
            Ok(())
        })?;
        mcp.set(
            name,
            coroutines.suspending(start_await, &format!("mcp.{name}"))?,
        )?;
    }
    super::funcgen::register(lua, &mcp)?;
    super::logging::register(lua, &mcp)?;
    super::inspect::register(lua, &mcp)?;
    super::mutate::register(lua, &mcp)?;
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
                let Some(source) = store.shared_store() else {
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
                    || !env.proxy_stats.stores.first_warm(&format!(
                        "{} -> {}",
                        store.name(),
                        cache.name()
                    ))
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
    super::ratelim::register_worker(lua, &mcp)?;
    vm::forbid(
        lua,
        &mcp,
        &[
            "backend",
            "pool",
            "dynamo_pool",
            "add_stat",
            "ratelim_global_tbf",
            "register_cron",
            "schedule_config_reload",
            "server_stats",
        ],
        "mcp_config_pools (the config VM)",
    )
}

/// `mcp.await`'s arguments: request, pools, n, mode, detail.
type AwaitArgs = (AnyUserData, Table, Option<i64>, Option<i64>, Option<Value>);

/// `mcp.await(r, {pools...}[, n][, mode][, detail])`: sends `r` to every
/// pool at once and returns a table of responses once the mode's condition
/// holds. The rest keep running in the background, so writes always reach
/// every pool. Bad arguments fail before anything is sent.
///
/// With `log_late_errors` (`mcp.await_logerrors`), each of those later
/// replies that is an error is logged as a `proxy_req` line with `detail`,
/// as memcached logs them: a route has the replies it got back to log
/// itself, the ones after are out of its reach.
fn await_pools(
    lua: &Lua,
    name: &'static str,
    (r, pools, n, mode, detail): AwaitArgs,
    log_late_errors: bool,
) -> mlua::Result<impl std::future::Future<Output = mlua::Result<Table>>> {
    let request = fresh::with_request(lua, &r, |r| r.request.clone())
        .map_err(|_| mlua::Error::runtime(format!("mcp.{name}: expected a request")))?;
    let mut targets = Vec::new();
    for value in pools.sequence_values::<AnyUserData>() {
        let ud = value?;
        let pool = ud.borrow::<LuaPool>().map_err(|_| {
            mlua::Error::runtime(format!(
                "mcp.{name}: the second argument must be a list of pools"
            ))
        })?;
        targets.push(pool.0.clone());
    }
    if targets.is_empty() {
        return Err(mlua::Error::runtime(format!(
            "mcp.{name}: the pool list must have at least one pool"
        )));
    }
    let mode = mode.unwrap_or(AWAIT_GOOD);
    if !(AWAIT_GOOD..=AWAIT_BACKGROUND).contains(&mode) {
        return Err(mlua::Error::runtime(format!(
            "mcp.{name}: unknown mode {mode} (use one of the mcp.AWAIT_* constants)"
        )));
    }
    // As memcached: a string (or number) detail is kept, anything else
    // ignored; only mcp.await_logerrors uses it.
    let late_errors = log_late_errors.then(|| LateErrors {
        detail: match &detail {
            Some(Value::String(s)) => s.as_bytes().to_vec(),
            Some(Value::Integer(i)) => i.to_string().into_bytes(),
            Some(Value::Number(n)) => n.to_string().into_bytes(),
            _ => Vec::new(),
        },
        cfd: crate::watch::client_fd().into(),
        request: request.clone(),
    });
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
            let response = send_timed(pool, request).await;
            let _ = tx.send((index, response));
        });
    }
    drop(tx);
    let results = lua.create_table()?;
    Ok(async move {
        if mode == AWAIT_BACKGROUND {
            if let Some(late) = late_errors {
                late.follow(rx);
            }
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
        if let Some(late) = late_errors {
            late.follow(rx);
        }
        Ok(results)
    })
}

/// What `mcp.await_logerrors` logs its late error replies with.
struct LateErrors {
    request: Request,
    detail: Vec<u8>,
    cfd: i64,
}

impl LateErrors {
    /// Logs each error reply still to come on `rx` (none if every pool has
    /// answered), while someone watches `proxyreqs`.
    fn follow(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<(usize, LuaResponse)>) {
        tokio::task::spawn_local(async move {
            while let Some((_, reply)) = rx.recv().await {
                if !reply.response.code().is_error()
                    || !crate::watch::enabled(crate::watch::PROXYREQS)
                {
                    continue;
                }
                crate::watch::log_proxy_req(&crate::watch::ProxyReq {
                    elapsed_us: reply.elapsed_us,
                    response: Some(&reply.response),
                    backend: reply.backend.as_deref().map(|b| (b.host.as_str(), b.port)),
                    cfd: self.cfd,
                    detail: &self.detail,
                    request_line: self.request.raw_line(),
                });
            }
        });
    }
}

/// Copies every live item of `source` into the `cache` pool, page by page,
/// logging progress. A cached copy lives as long as the stored item, capped
/// at `max_ttl` seconds when that is not 0.
async fn warm_up(source: Arc<dyn SharedStore>, cache: Rc<dyn Pool>, max_ttl: i64, limits: Limits) {
    const PAGE: i32 = 100;
    let started = Instant::now();
    let (mut copied, mut failed, mut cursor) = (0u64, 0u64, None);
    let mut errors_in_a_row = 0;
    info!("warm-up {} -> {}: started", source.name(), cache.name());
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
                        cache.name()
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
                Ok(request) => cache.clone().call(request).await.code() == ResponseCode::Hd,
                Err(_) => false,
            };
            if stored {
                copied += 1;
                if copied % 10_000 == 0 {
                    info!(
                        "warm-up {} -> {}: {copied} items",
                        source.name(),
                        cache.name()
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
        cache.name(),
        started.elapsed().as_secs_f64()
    );
}

/// Copies a [`ConfigValue`] into this VM, turning pool definitions into
/// worker-local pools (one object per definition).
pub(super) fn to_lua(
    lua: &Lua,
    value: &ConfigValue,
    env: &Rc<RouteEnv>,
    worker_routes: &WorkerRoutes,
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
                    to_lua(lua, k, env, worker_routes, pools)?,
                    to_lua(lua, v, env, worker_routes, pools)?,
                )?;
            }
            Value::Table(t)
        }
        ConfigValue::Pool(def) => {
            let ptr = Arc::as_ptr(def);
            if let Some(ud) = pools.get(&ptr) {
                return Ok(Value::UserData(ud.clone()));
            }
            let pool = def.instantiate(&worker_routes.backends, env);
            let ud = LuaPool::object(lua, pool)?;
            pools.insert(ptr, ud.clone());
            Value::UserData(ud)
        }
        // The same bucket, seen from this worker.
        ConfigValue::RateLimiter(bucket) => {
            Value::UserData(lua.create_userdata(super::ratelim::LuaGlobalBucket(bucket.clone()))?)
        }
    })
}
