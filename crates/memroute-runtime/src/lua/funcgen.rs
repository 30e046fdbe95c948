//! memcached's current proxy API, the *function generator* ("funcgen")
//! generation, in the worker VM: `mcp.funcgen_new()`, `fgen:new_handle()`,
//! `fgen:ready{}`, the request context (`rctx`) a generated function works
//! through, and the route that `mcp.attach(cmd, fgen)` installs.
//!
//! A funcgen owns a list of *handles* (pools, other funcgens, or
//! `mcp.internal_handler`) and a generator function `f`. For every request
//! that runs at once, memcached needs one *slot*: a request context plus the
//! function `f(rctx, a)` returned for it. Slots are made on demand and
//! reused once their request, and every request it queued, has finished.
//!
//! A slot function works in steps: `rctx:enqueue(r, h)` only marks a
//! handle; the next wait (`wait_cond`, `wait_handle`, `enqueue_and_wait`)
//! sends everything queued at once and suspends the coroutine until its
//! condition holds (see [`super::coroutine`]). The commonest wait, one
//! request to one pool handle, is served like `pool(r)`: no task, no
//! inbox, the coroutine resumed with the response. Each result is classed *good*
//! (a reply that is not an error or a miss), *ok* (a miss) or *any* (an
//! error), as memcached's `mcp.RES_*`; a handle callback can re-class it and
//! end a wait early. Requests a function does not wait for keep running,
//! so writes still reach every handle.
//!
//! Routers (`mcp.router_new`) are in [`super::router`]; both are attached as
//! a [`FuncgenRoute`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use memroute_proto::{Request, Response, ResponseDecoder};
use mlua::{
    AnyUserData, Function, Lua, MetaMethod, Table, UserData, UserDataMethods, UserDataRef, Value,
};
use tokio::sync::Notify;
use tracing::warn;

use super::config::lua_error_message;
use super::coroutine::{drive, Coroutines, Driving, KeptObject, Parked, Resumed, SlotThread};
use super::mutate::UserObjects;
use super::objects::{LuaRequest, LuaResponse};
use super::raw;
use super::router::{router_new, LuaRouter};
use super::worker::{send_timed, LuaPool, WorkerLua};
use crate::route::pool::EmbeddedPool;
use crate::route::router::{RouterTable, NO_ROUTE};
use crate::route::{
    reply_class, Pool, ReplyFuture, ReplyShape, ResponseFuture, Route, RouteEnv, RES_ANY, RES_GOOD,
    RES_OK,
};

/// `mcp.WAIT_*`: what a `wait_cond` counts (memcached's values).
pub const WAIT_ANY: i64 = 1;
pub const WAIT_OK: i64 = 2;
pub const WAIT_GOOD: i64 = 3;
pub const WAIT_FASTGOOD: i64 = 4;

/// A handle callback asked to end the current wait now (`mcp.WAIT_RESUME`
/// as its second return value).
const RESUME: u8 = 1 << 1;

/// The funcgen constants of the `mcp` table (in both kinds of VM, as the
/// whole startfile runs in both).
pub const CONSTANTS: &[(&str, i64)] = &[
    ("WAIT_ANY", WAIT_ANY),
    ("WAIT_OK", WAIT_OK),
    ("WAIT_GOOD", WAIT_GOOD),
    ("WAIT_FASTGOOD", WAIT_FASTGOOD),
    ("RES_GOOD", RES_GOOD as i64),
    ("RES_OK", RES_OK as i64),
    ("RES_ANY", RES_ANY as i64),
];

/// The class of a response object (`mcp.RES_*`, as `rctx:result()`
/// returns it).
fn class_of(response: &LuaResponse) -> u8 {
    reply_class(response.response.code())
}

/// What a handle sends its requests to: a pool (the embedded cache for
/// `mcp.internal_handler`), or another funcgen.
#[derive(Clone)]
enum Target {
    Pool(Rc<dyn Pool>),
    Funcgen(Rc<Funcgen>),
}

/// `mcp.internal_handler`: a handle target that runs requests against the
/// embedded cache, as `mcp.internal(r)` does.
pub struct InternalHandler;
impl UserData for InternalHandler {}

/// A function generator (`mcp.funcgen_new()`).
pub struct Funcgen {
    name: RefCell<String>,
    targets: RefCell<Rc<[Target]>>,
    /// `f` and `a` of `fgen:ready{}`; `None` until then.
    generator: RefCell<Option<(Function, Value)>>,
    /// Slots not serving a request now; boxed, as leases hold them
    /// (lending one moves a pointer).
    #[allow(clippy::vec_box)]
    free: RefCell<Vec<Box<Slot>>>,
    /// Slots alive, serving or free (also counted for `stats proxyfuncs`).
    slots: crate::stats::FuncgenSlots,
    /// How long many slots have stayed free (see [`Funcgen::keep`]).
    pressure: Cell<u32>,
    /// `u` of `fgen:ready{}`: objects each slot may make with
    /// `rctx:request_new()` / `rctx:response_new()`.
    user_objects: Cell<usize>,
}

/// After this many returns with half the slots or more free, a returned
/// slot is let go instead of kept, and the pressure drops by
/// [`FREE_PRESSURE_DROP`] (memcached's values).
const FREE_PRESSURE_MAX: u32 = 1000;
const FREE_PRESSURE_DROP: u32 = 100;

/// One request context and the function generated for it.
struct Slot {
    rctx: Rc<Rctx>,
    /// The function and the coroutine it runs in.
    coroutine: SlotThread,
    /// The rctx's Lua object, kept alive while the slot is, so that its
    /// address (which the fast waits compare) stays its own.
    _rctx_object: AnyUserData,
}

/// A slot lent to one request. [`Lease::finish`] gives it back when the
/// request is over; a request dropped before that (its client went away)
/// gives it back as it is, or, with requests of it still out, lets it go,
/// since nothing may be spawned while a worker shuts down.
struct Lease {
    fgen: Rc<Funcgen>,
    lua: Lua,
    /// Boxed: a lease lives in every request's future, whose size is
    /// copied and allocated per request.
    slot: Option<Box<Slot>>,
}

impl Lease {
    fn slot(&self) -> &Slot {
        self.slot
            .as_ref()
            .expect("a lease holds its slot until finished")
    }

    /// The slot's coroutine, ready to run the slot's function with the
    /// slot's own request object, or with `object` (a parent's request,
    /// for a funcgen behind a handle). The caller drives it: a
    /// [`FuncgenReply`] polls a [`Driving`] of it, a funcgen behind a
    /// handle awaits [`drive`].
    fn ready(&self, lua: &Lua, object: Option<&AnyUserData>) -> mlua::Result<mlua::Thread> {
        let slot = self.slot();
        match slot.rctx.request.borrow().as_ref() {
            Some(request) => slot.coroutine.prepare(lua, request, object),
            None => Err(mlua::Error::runtime(
                "request slot without its request object",
            )),
        }
    }

    fn finish(mut self) {
        if let Some(slot) = self.slot.take() {
            self.fgen.release(&self.lua, slot);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if slot.rctx.pending.get() == 0 {
                self.fgen.keep(slot);
            } else {
                self.fgen.slots.set(self.fgen.slots.get().saturating_sub(1));
            }
        }
    }
}

impl Funcgen {
    fn new() -> Rc<Funcgen> {
        Rc::new(Funcgen {
            name: RefCell::new("anonymous".into()),
            targets: RefCell::new(Rc::from(Vec::new())),
            generator: RefCell::new(None),
            free: RefCell::new(Vec::new()),
            slots: Default::default(),
            pressure: Cell::new(0),
            user_objects: Cell::new(0),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.generator.borrow().is_some()
    }

    /// A free slot, or a new one made by calling the generator.
    fn take_slot(self: &Rc<Self>, lua: &Lua) -> mlua::Result<Box<Slot>> {
        if let Some(slot) = self.free.borrow_mut().pop() {
            return Ok(slot);
        }
        let (generator, argument) = self.generator.borrow().clone().ok_or_else(|| {
            mlua::Error::runtime(format!(
                "funcgen {}: fgen:ready was never called",
                self.name.borrow()
            ))
        })?;
        let rctx = Rc::new(Rctx::new(
            self.targets.borrow().clone(),
            self.user_objects.get(),
        ));
        let ud = lua.create_userdata(LuaRctx(rctx.clone()))?;
        rctx.address.set(ud.to_pointer());
        match generator.call::<Value>((ud.clone(), argument))? {
            Value::Function(function) => {
                // A slot had to be made: the slots are not too many now.
                self.pressure.set(0);
                self.slots.set(self.slots.get() + 1);
                // The request object is made now: the slot's coroutine
                // keeps it on its stack (see `SlotThread`).
                rctx.set_request(lua, super::mutate::blank_request())?;
                Ok(Box::new(Slot {
                    rctx,
                    coroutine: SlotThread::new(lua, function)?,
                    _rctx_object: ud,
                }))
            }
            _ => Err(mlua::Error::runtime(
                "function generator didn't return a function",
            )),
        }
    }

    /// Gives `slot` back once every request it queued has answered (the
    /// rest of its results are processed, callbacks included, in the
    /// background first).
    fn release(self: &Rc<Self>, lua: &Lua, slot: Box<Slot>) {
        if slot.rctx.pending.get() == 0 {
            self.keep(slot);
            return;
        }
        let fgen = self.clone();
        let lua = lua.clone();
        // Callbacks run here still see the client (`rctx:cfd()`).
        tokio::task::spawn_local(crate::connection::keep_client_fd(async move {
            while slot.rctx.pending.get() > 0 {
                let done = slot.rctx.inbox.next().await;
                if let Err(e) = slot.rctx.complete(&lua, done) {
                    warn!(target: "memroute::lua", "funcgen result: {}", lua_error_message(&e));
                }
            }
            fgen.keep(slot);
        }));
    }

    /// Keeps a slot whose request is over for the next one, or lets it go
    /// when half the slots or more have stayed free for a long time, as
    /// memcached eases them: a burst's slots go slowly, steady traffic
    /// keeps its own.
    fn keep(&self, slot: Box<Slot>) {
        slot.rctx.reset();
        let free = self.free.borrow().len();
        if free + 1 > self.slots.get() / 2 {
            let pressure = self.pressure.get() + 1;
            if pressure > FREE_PRESSURE_MAX {
                self.pressure.set(pressure - FREE_PRESSURE_DROP);
                self.slots.set(self.slots.get().saturating_sub(1));
                return;
            }
            self.pressure.set(pressure);
        } else {
            self.pressure.set(self.pressure.get().saturating_sub(1));
        }
        self.free.borrow_mut().push(slot);
    }

    /// Lends a slot to one request.
    fn lease(self: &Rc<Self>, lua: &Lua) -> mlua::Result<Lease> {
        Ok(Lease {
            slot: Some(self.take_slot(lua)?),
            fgen: self.clone(),
            lua: lua.clone(),
        })
    }

    /// Runs a request through this funcgen for a parent's handle: the
    /// result as a response object, and its class.
    async fn run_for_handle(self: Rc<Self>, lua: Lua, request: AnyUserData) -> (LuaResponse, u8) {
        let mut leased = None;
        let result = match (self.lease(&lua), Coroutines::of(&lua)) {
            (Ok(lease), Ok(coroutines)) => {
                // In a block: the coroutine's results borrow the lease.
                let result = {
                    let finished = match lease.ready(&lua, Some(&request)) {
                        Ok(thread) => {
                            let slot = lease.slot();
                            let route = raw::RouteOf::Slot(&slot.rctx);
                            drive(&lua, &coroutines, route, thread, Some(&slot.coroutine), 1).await
                        }
                        Err(e) => Err(e),
                    };
                    finished.and_then(|finished| finished.first(&lua))
                };
                leased = Some(lease);
                result
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let answer = match result {
            Ok(Value::UserData(ud)) if super::fresh::is_response(&lua, &ud) => {
                let response = super::fresh::with_response(&lua, &ud, LuaResponse::clone);
                match response {
                    Ok(response) => {
                        let class = class_of(&response);
                        (response, class)
                    }
                    Err(e) => (nested_failure(&lua, &e), RES_ANY),
                }
            }
            // As memcached: a string result is passed on as it is, and
            // counts as "any" whatever it says.
            Ok(Value::String(s)) => (string_response(&lua, &request, &s.as_bytes()), RES_ANY),
            Ok(other) => (
                nested_failure(
                    &lua,
                    &mlua::Error::runtime(format!(
                        "a route returned {}; routes must return a response or a string",
                        other.type_name()
                    )),
                ),
                RES_ANY,
            ),
            Err(e) => (nested_failure(&lua, &e), RES_ANY),
        };
        // The slot goes back only once its result is read: that blanks the
        // slot's rctx:response_new() objects, and the result may be one.
        if let Some(lease) = leased {
            lease.finish();
        }
        answer
    }
}

/// A string a route returned, as a response object: parsed as a reply to
/// `request` when it is one, else its first line.
fn string_response(lua: &Lua, request: &AnyUserData, bytes: &[u8]) -> LuaResponse {
    let mut raw = BytesMut::from(bytes);
    if !raw.ends_with(b"\r\n") {
        raw.extend_from_slice(b"\r\n");
    }
    let line_only = || {
        let line = raw[..].split(|&b| b == b'\r').next().unwrap_or(b"");
        Response::from_line(&String::from_utf8_lossy(line))
    };
    let parsed = super::fresh::with_request(lua, request, |r| {
        let mut buf = raw.clone();
        ResponseDecoder::for_request(&r.request)
            .decode(&mut buf)
            .ok()
            .flatten()
    })
    .ok()
    .flatten();
    LuaResponse::new(parsed.unwrap_or_else(line_only), 0)
}

/// A nested funcgen failed: counted and logged as a route failure, and
/// its parent's handle gets a `SERVER_ERROR`.
fn nested_failure(lua: &Lua, error: &mlua::Error) -> LuaResponse {
    if let Some(env) = lua.app_data_ref::<Rc<RouteEnv>>() {
        env.proxy_stats
            .lua_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    super::logging::proxy_error(error);
    warn!(target: "memroute::lua", "route failed: {}", lua_error_message(error));
    LuaResponse::new(Response::from_line("SERVER_ERROR lua failure"), 0)
}

/// The Lua object of a funcgen.
#[derive(Clone)]
pub struct LuaFuncgen(pub Rc<Funcgen>);

impl UserData for LuaFuncgen {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("new_handle", |lua, this, target: Value| {
            if this.0.is_ready() {
                return Err(mlua::Error::runtime(
                    "cannot modify function generator after calling ready",
                ));
            }
            let target = match &target {
                Value::UserData(ud) if ud.is::<LuaPool>() => {
                    Target::Pool(ud.borrow::<LuaPool>()?.0.clone())
                }
                Value::UserData(ud) if ud.is::<LuaFuncgen>() => {
                    Target::Funcgen(ud.borrow::<LuaFuncgen>()?.0.clone())
                }
                Value::UserData(ud) if ud.is::<InternalHandler>() => {
                    let internal = lua
                        .app_data_ref::<Rc<EmbeddedPool>>()
                        .map(|p| p.clone())
                        .ok_or_else(|| mlua::Error::runtime("worker environment missing"))?;
                    Target::Pool(internal)
                }
                Value::UserData(ud) if ud.is::<LuaRouter>() => {
                    return Err(mlua::Error::runtime(
                        "cannot assign a router to a handle in new_handle",
                    ))
                }
                _ => return Err(mlua::Error::runtime("invalid argument to new_handle")),
            };
            let mut targets = this.0.targets.borrow().to_vec();
            targets.push(target);
            *this.0.targets.borrow_mut() = Rc::from(targets);
            // Handles are numbered from 0, as in memcached.
            Ok(this.0.targets.borrow().len() as i64 - 1)
        });
        methods.add_method("ready", |lua, this, opts: Table| {
            if this.0.is_ready() {
                return Err(mlua::Error::runtime(
                    "cannot modify function generator after calling ready",
                ));
            }
            let Value::Function(generator) = opts.get::<Value>("f")? else {
                return Err(mlua::Error::runtime(
                    "Must specify generator function ('f') to fgen:ready",
                ));
            };
            if let Value::String(name) = opts.get::<Value>("n")? {
                *this.0.name.borrow_mut() = name.to_string_lossy();
            }
            // 'u': request and response objects each slot may make with
            // rctx:request_new() / rctx:response_new().
            match opts.get::<Value>("u")? {
                Value::Nil => {}
                Value::Integer(n) if n >= 1 => this.0.user_objects.set(n as usize),
                _ => {
                    return Err(mlua::Error::runtime(
                        "user obj ('u') in fgen:ready must be a positive integer",
                    ))
                }
            }
            *this.0.generator.borrow_mut() = Some((generator, opts.get::<Value>("a")?));
            // As memcached: the generator is tried now, so a broken one
            // fails the configuration load, and the slot is kept.
            let slot = this.0.take_slot(lua)?;
            this.0.free.borrow_mut().push(slot);
            this.0.slots.register(&this.0.name.borrow());
            Ok(())
        });
    }
}

impl HandleSlot {
    /// The handle's response object, now holding `response`.
    fn response_object(
        &mut self,
        lua: &Lua,
        response: LuaResponse,
    ) -> mlua::Result<&KeptObject<LuaResponse>> {
        match &self.object {
            Some(object) => object.set(response)?,
            None => self.object = Some(KeptObject::new(lua, response)?),
        }
        Ok(self.object.as_ref().expect("made above"))
    }

    /// The response object of the current request's result, if any.
    fn result(&self) -> Option<&AnyUserData> {
        match &self.object {
            Some(object) if self.answered => Some(&object.object),
            _ => None,
        }
    }
}

/// Where a handle stands in the current request.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Idle,
    Queued,
    Active,
    /// Answered, not yet counted by a wait.
    Complete,
    /// Answered and counted by a wait.
    Waited,
}

/// One handle's state in a request context.
#[derive(Default)]
struct HandleSlot {
    state: State,
    request: Option<AnyUserData>,
    /// The current request has a result (in `object`).
    answered: bool,
    /// The handle's response object, reused from request to request as
    /// memcached reuses them (made at its first answer).
    object: Option<KeptObject<LuaResponse>>,
    flags: u8,
    callback: Option<Function>,
}

/// A finished request of a handle.
struct Done {
    handle: usize,
    response: LuaResponse,
    class: u8,
}

/// Results that arrived and the wake-up of whoever waits for them.
#[derive(Default)]
struct Inbox {
    queue: RefCell<VecDeque<Done>>,
    arrived: Notify,
}

impl Inbox {
    fn push(&self, done: Done) {
        self.queue.borrow_mut().push_back(done);
        self.arrived.notify_one();
    }

    fn try_next(&self) -> Option<Done> {
        self.queue.borrow_mut().pop_front()
    }

    async fn next(&self) -> Done {
        loop {
            if let Some(done) = self.try_next() {
                return done;
            }
            self.arrived.notified().await;
        }
    }
}

/// A request context: one slot's view of its funcgen's handles.
pub struct Rctx {
    /// Its Lua object's address (see [`enqueue_and_wait_fast`]).
    address: Cell<*const c_void>,
    /// The slot's request object, made at its first request and reused.
    request: RefCell<Option<KeptObject<LuaRequest>>>,
    targets: Rc<[Target]>,
    handles: RefCell<Vec<HandleSlot>>,
    /// Requests sent and not yet answered.
    pending: Cell<usize>,
    /// In a wait or a sleep (no new waits, no enqueues).
    waiting: Cell<bool>,
    inbox: Rc<Inbox>,
    /// What `rctx:request_new()` / `rctx:response_new()` made.
    user_objects: UserObjects,
}

/// What a wait waits for.
#[derive(Clone, Copy)]
enum WaitFor {
    /// `wait_cond(n, mode)`.
    Count { n: usize, mode: i64 },
    /// `wait_handle(h)`, `enqueue_and_wait(r, h)`.
    Handle(usize),
}

impl Rctx {
    fn new(targets: Rc<[Target]>, user_objects: usize) -> Rctx {
        let handles = targets.iter().map(|_| HandleSlot::default()).collect();
        Rctx {
            address: Cell::new(std::ptr::null()),
            request: RefCell::new(None),
            targets,
            handles: RefCell::new(handles),
            pending: Cell::new(0),
            waiting: Cell::new(false),
            inbox: Rc::new(Inbox::default()),
            user_objects: UserObjects::new(user_objects),
        }
    }

    /// Readies the context for its next request; callbacks stay, as they
    /// belong to the slot, not to one request.
    fn reset(&self) {
        for slot in self.handles.borrow_mut().iter_mut() {
            slot.state = State::Idle;
            slot.request = None;
            slot.answered = false;
            slot.flags = 0;
        }
        self.waiting.set(false);
        self.user_objects.blank();
    }

    /// Refuses a wait made outside this context's own slot function (one
    /// slot's function calling a wait on an rctx another slot's generator
    /// was given, kept in a shared variable, say): nothing would ever
    /// answer it, and the client's request would hang.
    fn own_wait(&self, name: &str) -> mlua::Result<()> {
        if raw::running_slot_is(self) {
            Ok(())
        } else {
            Err(mlua::Error::runtime(format!(
                "{name}: this rctx belongs to another request slot; a slot function can only wait on the rctx its generator was given"
            )))
        }
    }

    fn check_handle(&self, handle: i64) -> mlua::Result<usize> {
        usize::try_from(handle)
            .ok()
            .filter(|h| *h < self.targets.len())
            .ok_or_else(|| mlua::Error::runtime(format!("invalid handle {handle}")))
    }

    fn enqueue(&self, lua: &Lua, request: &AnyUserData, handles: &Value) -> mlua::Result<()> {
        self.queueable(lua, request)?;
        match handles {
            Value::Integer(h) => self.queue(request, self.check_handle(*h)?),
            Value::Number(h) if h.fract() == 0.0 => {
                self.queue(request, self.check_handle(*h as i64)?)
            }
            Value::Table(t) => {
                let list: Vec<i64> = t
                    .sequence_values::<i64>()
                    .collect::<mlua::Result<_>>()
                    .map_err(|_| {
                        mlua::Error::runtime("invalid handle passed to queue via array table")
                    })?;
                for handle in list {
                    self.queue(request, self.check_handle(handle)?);
                }
            }
            _ => {
                return Err(mlua::Error::runtime(
                    "must pass a handle or a table to queue",
                ))
            }
        }
        Ok(())
    }

    /// Checks that `request` may be queued now: a request object (of
    /// either API generation) with a key, outside a wait.
    fn queueable(&self, lua: &Lua, request: &AnyUserData) -> mlua::Result<()> {
        if self.waiting.get() {
            return Err(mlua::Error::runtime(
                "enqueue: cannot enqueue new requests while in a wait",
            ));
        }
        let has_key = super::fresh::with_request(lua, request, |r| r.request.key().is_some())
            .map_err(|_| mlua::Error::runtime("enqueue: expected a request object"))?;
        if !has_key {
            return Err(mlua::Error::runtime("cannot queue requests without a key"));
        }
        Ok(())
    }

    /// Queues `request` on handle `index`, which takes one request per
    /// request context, as in memcached.
    fn queue(&self, request: &AnyUserData, index: usize) {
        let mut handles = self.handles.borrow_mut();
        let slot = &mut handles[index];
        if slot.state == State::Idle {
            slot.state = State::Queued;
            slot.request = Some(request.clone());
        }
    }

    /// Sends every queued request, each to its handle's target.
    fn dispatch(&self, lua: &Lua) -> mlua::Result<()> {
        let queued: Vec<(usize, AnyUserData)> = self
            .handles
            .borrow_mut()
            .iter_mut()
            .enumerate()
            .filter(|(_, slot)| slot.state == State::Queued)
            .filter_map(|(index, slot)| {
                slot.state = State::Active;
                slot.request.clone().map(|r| (index, r))
            })
            .collect();
        for (handle, request_ud) in queued {
            let request = super::fresh::with_request(lua, &request_ud, |r| r.request.clone())?;
            self.pending.set(self.pending.get() + 1);
            let inbox = self.inbox.clone();
            match &self.targets[handle] {
                Target::Pool(pool) => {
                    let sent = send_timed(pool.clone(), request);
                    tokio::task::spawn_local(async move {
                        let response = sent.await;
                        let class = class_of(&response);
                        inbox.push(Done {
                            handle,
                            response,
                            class,
                        });
                    });
                }
                Target::Funcgen(fgen) => {
                    let run = fgen.clone().run_for_handle(lua.clone(), request_ud);
                    tokio::task::spawn_local(crate::connection::keep_client_fd(async move {
                        let (response, class) = run.await;
                        inbox.push(Done {
                            handle,
                            response,
                            class,
                        });
                    }));
                }
            }
        }
        Ok(())
    }

    /// Records a result: its class (after the handle's callback, which may
    /// re-class it), and its response object. Returns the handle's flags.
    fn complete(&self, lua: &Lua, done: Done) -> mlua::Result<u8> {
        self.pending.set(self.pending.get().saturating_sub(1));
        let (response, callback, request) = {
            let mut handles = self.handles.borrow_mut();
            let slot = &mut handles[done.handle];
            (
                slot.response_object(lua, done.response)?.object.clone(),
                slot.callback.clone(),
                slot.request.clone(),
            )
        };
        let mut flags = done.class;
        if let Some(callback) = callback {
            match callback.call::<(Value, Value)>((response, request)) {
                Ok((mode, resume)) => {
                    if let Value::Integer(mode) = mode {
                        flags = match mode {
                            WAIT_GOOD => RES_GOOD,
                            WAIT_OK => RES_OK,
                            _ => RES_ANY,
                        };
                    }
                    if !matches!(resume, Value::Nil | Value::Boolean(false)) {
                        flags |= RESUME;
                    }
                }
                // As memcached: a failing callback is logged and the
                // result keeps its own class.
                Err(e) => {
                    super::logging::proxy_error(&e);
                    warn!(target: "memroute::lua", "handle callback failed: {}",
                          lua_error_message(&e));
                }
            }
        }
        let mut handles = self.handles.borrow_mut();
        let slot = &mut handles[done.handle];
        slot.state = State::Complete;
        slot.answered = true;
        slot.flags |= flags;
        Ok(slot.flags)
    }

    /// Processes the results that have arrived, without waiting.
    fn take_arrived(&self, lua: &Lua) -> mlua::Result<()> {
        while let Some(done) = self.inbox.try_next() {
            self.complete(lua, done)?;
        }
        Ok(())
    }

    /// Whether a wait in `mode` counts a result of `flags`, and whether it
    /// ends the wait at once.
    fn counts(mode: i64, flags: u8) -> (bool, bool) {
        let good = flags & RES_GOOD != 0;
        let ok = flags & (RES_GOOD | RES_OK) != 0;
        let (counted, early) = match mode {
            WAIT_ANY => (true, false),
            WAIT_OK => (ok, false),
            WAIT_GOOD => (good, false),
            // WAIT_FASTGOOD: a good result ends the wait; a miss counts.
            _ => (ok, good),
        };
        (counted, early || flags & RESUME != 0)
    }

    /// Counts a completed handle for a wait; true when the wait is over.
    fn count(&self, what: WaitFor, handle: usize, done: &Cell<usize>) -> bool {
        let mut handles = self.handles.borrow_mut();
        let slot = &mut handles[handle];
        if slot.state != State::Complete {
            return false;
        }
        let (counted, early) = match what {
            WaitFor::Count { mode, .. } => Self::counts(mode, slot.flags),
            WaitFor::Handle(h) => (h == handle, false),
        };
        if counted {
            slot.state = State::Waited;
            done.set(done.get() + 1);
        }
        let target = match what {
            WaitFor::Count { n, .. } => n,
            WaitFor::Handle(_) => 1,
        };
        early || done.get() >= target
    }

    /// Sends what is queued and waits as `what` says, for at most
    /// `timeout`. Returns the number of counted results (or the handle's
    /// response), plus `true` after a timeout, as memcached.
    async fn wait(&self, lua: &Lua, what: WaitFor, timeout: Option<Duration>) -> Resumed {
        if self.waiting.get() {
            return Err(mlua::Error::runtime(
                "wait_cond: cannot call while already in wait mode",
            ));
        }
        self.dispatch(lua)?;
        self.take_arrived(lua)?;
        let done = Cell::new(0usize);
        self.waiting.set(true);
        let waited = async {
            // Results that arrived before this wait count first, in handle
            // order, as memcached counts them when the wait starts.
            for handle in 0..self.targets.len() {
                if self.count(what, handle, &done) {
                    return Ok(());
                }
            }
            while self.pending.get() > 0 {
                let arrived = self.inbox.next().await;
                let handle = arrived.handle;
                self.complete(lua, arrived)?;
                if self.count(what, handle, &done) {
                    return Ok(());
                }
            }
            Ok::<(), mlua::Error>(())
        };
        let outcome = match timeout {
            Some(limit) => tokio::time::timeout(limit, waited).await.ok(),
            None => Some(waited.await),
        };
        // Cleared before an error goes up: Lua may catch it and go on.
        self.waiting.set(false);
        let timed_out = match outcome {
            Some(result) => {
                result?;
                false
            }
            None => true,
        };
        let first = match what {
            WaitFor::Count { .. } => Value::Integer(done.get() as i64),
            WaitFor::Handle(_) if timed_out => Value::Nil,
            WaitFor::Handle(h) => self.handles.borrow()[h]
                .result()
                .map_or(Value::Nil, |r| Value::UserData(r.clone())),
        };
        let second = if timed_out {
            Value::Boolean(true)
        } else {
            Value::Nil
        };
        Ok((first, second))
    }

    /// Starts `rctx:enqueue_and_wait(r, h)`: parks the wait for the
    /// coroutine to yield on (the uncommon cases, see
    /// [`enqueue_and_wait_fast`]).
    fn start_enqueue_and_wait(
        self: &Rc<Self>,
        lua: &Lua,
        coroutines: &Coroutines,
        request: &AnyUserData,
        handle: i64,
        timeout: Option<Value>,
    ) -> mlua::Result<()> {
        self.own_wait("rctx:enqueue_and_wait")?;
        let index = self.check_handle(handle)?;
        let timeout = timeout_arg(timeout)?;
        if timeout.is_none() {
            let started = super::fresh::with_request(lua, request, |object| {
                self.try_start_alone(coroutines, Some(&object.request), index)
            })
            .unwrap_or(false);
            if started {
                return Ok(());
            }
        }
        self.queueable(lua, request)?;
        self.queue(request, index);
        let rctx = self.clone();
        let lua = lua.clone();
        coroutines.park(Parked::Wait(Box::pin(async move {
            rctx.wait(&lua, WaitFor::Handle(index), timeout).await
        })));
        Ok(())
    }

    /// The commonest wait, one request to a pool handle with nothing else
    /// queued, no callback and no timeout, goes straight to the pool like
    /// `pool(r)` (see [`Parked::Handle`]): no task, no inbox. False, with
    /// nothing done, for any other call, which the full wait serves (and
    /// which raises the errors a bad call deserves).
    fn try_start_alone(
        self: &Rc<Self>,
        coroutines: &Coroutines,
        request: Option<&Request>,
        index: usize,
    ) -> bool {
        if self.waiting.get() {
            return false;
        }
        let Target::Pool(pool) = &self.targets[index] else {
            return false;
        };
        let mut handles = self.handles.borrow_mut();
        let alone = handles
            .iter()
            .enumerate()
            .all(|(i, slot)| i == index || slot.state != State::Queued);
        let slot = &mut handles[index];
        if !alone || slot.state != State::Idle || slot.callback.is_some() {
            return false;
        }
        let Some(request) = request.filter(|r| r.key().is_some()) else {
            return false;
        };
        // No callback will read the handle's request: it is not kept, and
        // the pool sends it from the slot's request object (a memcached
        // pool copies nothing, see `Route::call_borrowed`).
        slot.state = State::Active;
        self.pending.set(self.pending.get() + 1);
        let backend = if crate::watch::enabled(crate::watch::PROXYREQS) {
            pool.backend_of(request)
        } else {
            None
        };
        let future = pool.clone().call_borrowed(request);
        coroutines.park(Parked::Handle {
            rctx: self.clone(),
            handle: index,
            start: super::coroutine::start_of(&future),
            future,
            backend,
        });
        true
    }

    /// A request [`Parked::Handle`] sent whose wait no driver will take
    /// (it yielded inside a coroutine the slot function made): no longer
    /// pending; its reply is dropped when it comes.
    pub(super) fn abandoned(&self, handle: usize) {
        self.pending.set(self.pending.get().saturating_sub(1));
        self.handles.borrow_mut()[handle].state = State::Idle;
    }

    /// The answer to a request [`Parked::Handle`] sent: recorded as the
    /// handle's result and counted by the wait; `give` gets the response
    /// object the wait returns.
    pub(super) fn answered<R>(
        &self,
        lua: &Lua,
        handle: usize,
        response: LuaResponse,
        give: impl FnOnce(&KeptObject<LuaResponse>) -> mlua::Result<R>,
    ) -> mlua::Result<R> {
        self.pending.set(self.pending.get().saturating_sub(1));
        let class = class_of(&response);
        let mut handles = self.handles.borrow_mut();
        let slot = &mut handles[handle];
        slot.state = State::Waited;
        slot.flags |= class;
        slot.answered = true;
        give(slot.response_object(lua, response)?)
    }

    /// The slot's request object, now holding `request`.
    fn set_request(&self, lua: &Lua, request: Request) -> mlua::Result<()> {
        let mut kept = self.request.borrow_mut();
        match kept.as_ref() {
            // In place: a request object is bigger than a move copies
            // inline.
            Some(object) => object.update(|kept| kept.serve(request))?,
            None => *kept = Some(KeptObject::new(lua, LuaRequest::new(request))?),
        }
        Ok(())
    }

    /// `f` of `returned` (a coroutine's first return value's address) if
    /// it is one of this context's handle response objects: what a slot
    /// function returns most often, recognised without converting it.
    fn with_returned<R>(
        &self,
        returned: *const c_void,
        f: impl FnOnce(&KeptObject<LuaResponse>) -> R,
    ) -> Option<R> {
        self.handles
            .borrow()
            .iter()
            .filter_map(|slot| slot.object.as_ref())
            .find(|object| object.address() == returned)
            .map(f)
    }

    /// The handle's response if its flags have any of `mask`.
    fn result_with(
        &self,
        lua: &Lua,
        handle: i64,
        mask: u8,
    ) -> mlua::Result<Option<(AnyUserData, u8)>> {
        let index = self.check_handle(handle)?;
        self.take_arrived(lua)?;
        let handles = self.handles.borrow();
        let slot = &handles[index];
        let class = slot.flags & (RES_GOOD | RES_OK | RES_ANY);
        Ok(match slot.result() {
            Some(response) if class & mask != 0 => Some((response.clone(), class)),
            _ => None,
        })
    }

    /// The best (or worst) classed result among `handles`: good before ok
    /// before any, the first in list order on a tie.
    fn ranked_result(&self, lua: &Lua, handles: Table, best: bool) -> mlua::Result<(Value, Value)> {
        let mut chosen: Option<(AnyUserData, u8)> = None;
        for handle in handles.sequence_values::<i64>() {
            let Some((response, class)) =
                self.result_with(lua, handle?, RES_GOOD | RES_OK | RES_ANY)?
            else {
                continue;
            };
            let better = match &chosen {
                None => true,
                // Higher flag bits are worse classes.
                Some((_, c)) if best => class < *c,
                Some((_, c)) => class > *c,
            };
            if better {
                chosen = Some((response, class));
            }
        }
        Ok(match chosen {
            Some((response, class)) => (Value::UserData(response), Value::Integer(class as i64)),
            None => (Value::Nil, Value::Nil),
        })
    }
}

/// Seconds (fractions allowed), as memcached's wait and sleep timeouts.
fn timeout_arg(value: Option<Value>) -> mlua::Result<Option<Duration>> {
    let secs = match value {
        None | Some(Value::Nil) => return Ok(None),
        Some(Value::Integer(i)) => i as f64,
        Some(Value::Number(n)) => n,
        Some(_) => {
            return Err(mlua::Error::runtime(
                "timeout argument to wait or sleep must be a number",
            ))
        }
    };
    if !(0.0..=86400.0).contains(&secs) {
        return Err(mlua::Error::runtime(
            "timeout argument to wait or sleep must be 0 to 86400 seconds",
        ));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

/// The `rctx` object slot functions work through.
#[derive(Clone)]
pub struct LuaRctx(Rc<Rctx>);

impl UserData for LuaRctx {
    /// The waits are Lua functions that yield (see [`super::coroutine`]);
    /// they make the `__index` table, to which mlua adds the methods.
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        fields.add_meta_field_with(MetaMethod::Index, |lua| {
            let coroutines = Coroutines::of(lua)?;
            let waits = lua.create_table()?;
            let parking = coroutines.clone();
            let start = lua.create_function(
                move |lua,
                      (this, request, handle, timeout): (
                    UserDataRef<LuaRctx>,
                    AnyUserData,
                    i64,
                    Option<Value>,
                )| {
                    this.0
                        .start_enqueue_and_wait(lua, &parking, &request, handle, timeout)
                },
            )?;
            waits.set(
                "enqueue_and_wait",
                raw::waiting_function(
                    lua,
                    enqueue_and_wait_fast,
                    &start,
                    "rctx:enqueue_and_wait cannot wait here: Lua cannot suspend this function (a sort comparator, a metamethod called from C)",
                )?,
            )?;

            let parking = coroutines.clone();
            let start = lua.create_function(
                move |lua,
                      (this, n, mode, timeout): (
                    UserDataRef<LuaRctx>,
                    Value,
                    Option<i64>,
                    Option<Value>,
                )| {
                    this.0.own_wait("rctx:wait_cond")?;
                    let n = match n {
                        Value::Integer(n) if n >= 0 => n as usize,
                        Value::Number(n) if n >= 0.0 && n.fract() == 0.0 => n as usize,
                        _ => {
                            return Err(mlua::Error::runtime(
                                "wait count for wait_cond must be a positive integer",
                            ))
                        }
                    };
                    let mode = mode.unwrap_or(WAIT_ANY);
                    if !(WAIT_ANY..=WAIT_FASTGOOD).contains(&mode) {
                        return Err(mlua::Error::runtime("invalid mode sent to wait_cond"));
                    }
                    let timeout = timeout_arg(timeout)?;
                    let rctx = this.0.clone();
                    if n == 0 {
                        // Waiting for none: send what is queued and go on
                        // at the next turn of the event loop.
                        rctx.dispatch(lua)?;
                        parking.park(Parked::Wait(Box::pin(async {
                            tokio::task::yield_now().await;
                            Ok((Value::Integer(0), Value::Nil))
                        })));
                        return Ok(());
                    }
                    let lua = lua.clone();
                    parking.park(Parked::Wait(Box::pin(async move {
                        rctx.wait(&lua, WaitFor::Count { n, mode }, timeout).await
                    })));
                    Ok(())
                },
            )?;
            waits.set("wait_cond", coroutines.suspending(start, "rctx:wait_cond")?)?;

            let parking = coroutines.clone();
            let start = lua.create_function(
                move |lua, (this, handle, timeout): (UserDataRef<LuaRctx>, i64, Option<Value>)| {
                    this.0.own_wait("rctx:wait_handle")?;
                    let index = this.0.check_handle(handle)?;
                    if this.0.handles.borrow()[index].state == State::Idle {
                        return Err(mlua::Error::runtime(
                            "wait_handle called on unqueued handle",
                        ));
                    }
                    let timeout = timeout_arg(timeout)?;
                    let rctx = this.0.clone();
                    let lua = lua.clone();
                    parking.park(Parked::Wait(Box::pin(async move {
                        rctx.wait(&lua, WaitFor::Handle(index), timeout).await
                    })));
                    Ok(())
                },
            )?;
            waits.set(
                "wait_handle",
                coroutines.suspending(start, "rctx:wait_handle")?,
            )?;

            let parking = coroutines.clone();
            let start =
                lua.create_function(move |_, (this, seconds): (UserDataRef<LuaRctx>, Value)| {
                    this.0.own_wait("rctx:sleep")?;
                    if this.0.waiting.get() {
                        return Err(mlua::Error::runtime(
                            "sleep: cannot call while already in wait mode",
                        ));
                    }
                    let pause = timeout_arg(Some(seconds))?.unwrap_or_default();
                    let rctx = this.0.clone();
                    rctx.waiting.set(true);
                    parking.park(Parked::Wait(Box::pin(async move {
                        tokio::time::sleep(pause).await;
                        rctx.waiting.set(false);
                        Ok((Value::Boolean(true), Value::Nil))
                    })));
                    Ok(())
                })?;
            waits.set("sleep", coroutines.suspending(start, "rctx:sleep")?)?;
            Ok(waits)
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method(
            "enqueue",
            |lua, this, (request, handles): (AnyUserData, Value)| {
                this.0.enqueue(lua, &request, &handles)
            },
        );
        for (name, mask) in [
            ("res_good", RES_GOOD),
            ("res_ok", RES_GOOD | RES_OK),
            ("res_any", RES_GOOD | RES_OK | RES_ANY),
        ] {
            methods.add_method(name, move |lua, this, handle: i64| {
                Ok(this
                    .0
                    .result_with(lua, handle, mask)?
                    .map(|(response, _)| response))
            });
        }
        methods.add_method("result", |lua, this, handle: i64| {
            Ok(
                match this
                    .0
                    .result_with(lua, handle, RES_GOOD | RES_OK | RES_ANY)?
                {
                    Some((response, class)) => {
                        (Value::UserData(response), Value::Integer(class as i64))
                    }
                    None => (Value::Nil, Value::Nil),
                },
            )
        });
        methods.add_method("best_result", |lua, this, handles: Table| {
            this.0.ranked_result(lua, handles, true)
        });
        methods.add_method("worst_result", |lua, this, handles: Table| {
            this.0.ranked_result(lua, handles, false)
        });
        methods.add_method(
            "handle_set_cb",
            |_, this, (handle, callback): (i64, Function)| {
                let index = this.0.check_handle(handle)?;
                this.0.handles.borrow_mut()[index].callback = Some(callback);
                Ok(())
            },
        );
        methods.add_method(
            "tls_peer_cn",
            |lua, _, ()| match crate::tls::current_peer_cn() {
                Some(cn) => Ok(Value::String(lua.create_string(&*cn)?)),
                None => Ok(Value::Nil),
            },
        );
        methods.add_method("request_new", |lua, this, ()| {
            this.0.user_objects.request_new(lua)
        });
        methods.add_method("response_new", |lua, this, ()| {
            this.0.user_objects.response_new(lua)
        });
        methods.add_method("cfd", |_, _, ()| Ok(crate::connection::current_client_fd()));
    }
}

/// The fast path of `rctx:enqueue_and_wait(r, h)`, the wait nearly every
/// slot function makes: when `rctx` is the running slot's own, `r` its
/// request object and `h` a handle number (recognised by the objects'
/// addresses, without mlua's argument conversions), the request is
/// started by [`Rctx::try_start_alone`]. False, with nothing done, for any
/// other call.
fn enqueue_and_wait_fast(
    coroutines: &Coroutines,
    route: &raw::RouteOf<'_>,
    args: &raw::Args<'_>,
) -> bool {
    let raw::RouteOf::Slot(rctx) = route else {
        return false;
    };
    if args.count() != 3 || args.userdata(1) != Some(rctx.address.get()) {
        return false;
    }
    let index = match args.integer(3).map(usize::try_from) {
        Some(Ok(index)) if index < rctx.targets.len() => index,
        _ => return false,
    };
    let kept = rctx.request.borrow();
    match kept.as_ref() {
        Some(request) if args.userdata(2) == Some(request.address()) => {
            let object = request.get().ok();
            rctx.try_start_alone(coroutines, object.as_deref().map(|o| &o.request), index)
        }
        _ => false,
    }
}

/// What `mcp.attach` installs for a funcgen or a router: a node of the
/// route tree whose requests run in slots of the funcgen.
pub struct FuncgenRoute {
    vm: Rc<WorkerLua>,
    target: FuncgenTarget,
}

enum FuncgenTarget {
    Funcgen(Rc<Funcgen>),
    Router(Rc<RouterTable<Funcgen>>),
}

impl FuncgenRoute {
    /// The route for `mcp.attach`'s second argument, if it is a funcgen or
    /// a router.
    pub fn from_value(value: &Value, vm: Rc<WorkerLua>) -> mlua::Result<Option<Rc<dyn Route>>> {
        let target = match value {
            Value::UserData(ud) if ud.is::<LuaFuncgen>() => {
                let fgen = ud.borrow::<LuaFuncgen>()?.0.clone();
                if !fgen.is_ready() {
                    return Err(mlua::Error::runtime(
                        "mcp.attach: call fgen:ready{} before attaching a funcgen",
                    ));
                }
                FuncgenTarget::Funcgen(fgen)
            }
            Value::UserData(ud) if ud.is::<LuaRouter>() => {
                FuncgenTarget::Router(ud.borrow::<LuaRouter>()?.0.clone())
            }
            _ => return Ok(None),
        };
        Ok(Some(Rc::new(FuncgenRoute { vm, target })))
    }

    /// Starts serving one request: the router (if any) picks a funcgen,
    /// which lends a slot, whose request object takes the request, and
    /// whose coroutine is made ready to run the slot's function (it runs
    /// when the reply is first polled). The reply at once when no slot can
    /// serve it.
    fn start(self: &Rc<Self>, request: Request, shape: ReplyShape) -> FuncgenReply {
        let fgen = match &self.target {
            FuncgenTarget::Funcgen(fgen) => fgen,
            FuncgenTarget::Router(router) => match router.pick(&request) {
                Some(fgen) => fgen,
                None => {
                    return FuncgenReply::Answered(Some(
                        shape.apply(Response::from_line(NO_ROUTE).raw().clone()),
                    ))
                }
            },
        };
        let lua = self.vm.lua();
        let started = fgen.lease(lua).and_then(|lease| {
            let slot = lease.slot();
            slot.rctx.set_request(lua, request)?;
            let thread = lease.ready(lua, None)?;
            Ok((lease, thread))
        });
        match started {
            Ok((lease, thread)) => FuncgenReply::Running {
                route: self.clone(),
                shape,
                lease,
                driving: Driving::new(thread, 1),
            },
            Err(e) => FuncgenReply::Answered(Some(shape.apply(self.vm.lua_failure(&e)))),
        }
    }

    /// The reply of a slot whose function returned `nresults` values (or
    /// failed), with the classic routes' error handling.
    fn finished_reply(
        &self,
        lease: &Lease,
        driving: &mut Driving,
        ran: mlua::Result<c_int>,
    ) -> Bytes {
        let vm = &self.vm;
        let slot = lease.slot();
        match ran {
            Ok(nresults) => {
                let finished = driving.finished(vm.coroutines(), Some(&slot.coroutine), nresults);
                // Most slot functions return a handle's response object:
                // recognised by its address, it needs no conversion.
                let known = finished
                    .first_userdata()
                    .and_then(|address| slot.rctx.with_returned(address, |o| vm.reply_of_kept(o)));
                match known {
                    Some(reply) => reply,
                    None => vm.reply_of(finished.first(vm.lua())),
                }
            }
            Err(e) => vm.lua_failure(&e),
        }
    }
}

/// A funcgen route's reply to one request: its slot's coroutine, run as
/// far as it goes at each poll, then its return value as the client's
/// bytes (shaped for `noreply` and quiet mode). A named future rather than
/// an `async` block: it is made per request and boxed, and holds only the
/// lease and the driver's state (the VM and the slot are reached through
/// them at each poll).
enum FuncgenReply {
    Running {
        route: Rc<FuncgenRoute>,
        shape: ReplyShape,
        lease: Lease,
        driving: Driving,
    },
    /// Answered without running (no route, no slot), until taken.
    Answered(Option<Bytes>),
}

impl std::future::Future for FuncgenReply {
    type Output = Bytes;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Bytes> {
        use std::task::Poll;
        let this = self.get_mut();
        let reply = match this {
            FuncgenReply::Answered(reply) => return Poll::Ready(reply.take().unwrap_or_default()),
            FuncgenReply::Running {
                route,
                shape,
                lease,
                driving,
            } => {
                let vm = &route.vm;
                let slot = lease.slot();
                let on = raw::RouteOf::Slot(&slot.rctx);
                let ran = match driving.poll_drive(cx, vm.lua(), vm.coroutines(), &on, true) {
                    Poll::Ready(ran) => ran,
                    Poll::Pending => return Poll::Pending,
                };
                shape.apply(route.finished_reply(lease, driving, ran))
            }
        };
        // The slot goes back once its result is read.
        if let FuncgenReply::Running { lease, .. } =
            std::mem::replace(this, FuncgenReply::Answered(None))
        {
            lease.finish();
        }
        Poll::Ready(reply)
    }
}

impl Route for FuncgenRoute {
    /// The reply as a response, for a route above it (parsed once here,
    /// as for Lua route functions).
    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let decoder = ResponseDecoder::for_request(&request);
        let reply = self.start(request, ReplyShape::default());
        Box::pin(async move {
            match decoder.decode(&mut BytesMut::from(&reply.await[..])) {
                Ok(Some(response)) => response,
                _ => Response::from_line("SERVER_ERROR lua route gave a malformed reply"),
            }
        })
    }

    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        let shape = ReplyShape::of(&request);
        Box::pin(self.start(request, shape))
    }

    /// A multi-key get's keys, each run in a slot of its own as `serve`
    /// runs it, joined in one future rather than a box per key (50
    /// clients' 10-key gets keep 500 in flight, which overran the
    /// allocator's per-thread cache for that size).
    fn serve_keys(
        self: Rc<Self>,
        get: &memroute_proto::GetCommand,
        keys: &[Bytes],
    ) -> Option<ReplyFuture> {
        let replies: Vec<FuncgenReply> = keys
            .iter()
            .map(|key| {
                self.start(
                    crate::route::multiget::get_request(get, std::slice::from_ref(key)),
                    ReplyShape::default(),
                )
            })
            .collect();
        Some(Box::pin(async move {
            let replies = futures_util::future::join_all(replies).await;
            crate::route::multiget::value_blocks_of(replies.iter().map(|reply| &reply[..]))
        }))
    }
}

/// Adds the funcgen API to a worker VM's `mcp` table (the constants are
/// set up with the rest, in [`super::vm`]).
pub fn register(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    mcp.set(
        "funcgen_new",
        lua.create_function(|_, ()| Ok(LuaFuncgen(Funcgen::new())))?,
    )?;
    mcp.set("internal_handler", InternalHandler)?;
    mcp.set(
        "router_new",
        lua.create_function(|_, opts: Table| router_new(&opts))?,
    )?;
    Ok(())
}

/// The funcgen of a router's map entry.
pub fn funcgen_of(value: &Value) -> Option<Rc<Funcgen>> {
    match value {
        Value::UserData(ud) => ud.borrow::<LuaFuncgen>().ok().map(|f| f.0.clone()),
        _ => None,
    }
}
