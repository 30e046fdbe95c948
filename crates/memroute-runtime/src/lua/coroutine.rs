//! How Lua routes wait: every route runs as a coroutine of its worker's VM,
//! driven from Rust, and every call that waits (`pool(r)`, `mcp.await`,
//! `rctx:enqueue_and_wait`, `rctx:wait_cond`, `rctx:wait_handle`,
//! `rctx:sleep`) suspends it with a plain `coroutine.yield`.
//!
//! Such a call is a small Lua function made by [`Coroutines::suspending`]:
//! it calls a plain Rust function that starts the work and *parks* it here
//! (a [`Parked`]), then yields. The route's driver ([`drive`]) takes what
//! was parked as soon as the coroutine yields, awaits it, and resumes the
//! coroutine with the result, which the Lua function returns. This is what
//! memcached's proxy does with its request slots, and it is much cheaper
//! than mlua's async functions: no boxed future for the call itself in the
//! common cases, no userdata with a finalizer to hold it, no polling
//! wrapper, and the coroutines are reused.
//!
//! Only one coroutine of a worker runs at a time, and the driver takes the
//! parked work before anything else can run, so one place per VM is enough.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use mlua::{AnyUserData, Function, IntoLuaMulti, LightUserData, Lua, Table, Thread, Value};

use super::funcgen::Rctx;
use super::objects::LuaResponse;
use crate::backend::BackendConfig;
use crate::route::ResponseFuture;

/// The two values a waiting call returns (the second is often nil), or the
/// error it raises in the route.
pub(super) type Resumed = mlua::Result<(Value, Value)>;

/// Work a coroutine waits for.
pub(super) enum Parked {
    /// `pool(r)`: resumed with the response object.
    Pool {
        future: ResponseFuture,
        start: Instant,
        /// The backend it goes to, noted only for `watch proxyreqs`.
        backend: Option<Arc<BackendConfig>>,
    },
    /// `rctx:enqueue_and_wait(r, h)` on a pool handle with nothing else to
    /// wait for: resumed with the response object, which also becomes the
    /// handle's result (see [`Rctx::answered`]).
    Handle {
        rctx: Rc<Rctx>,
        handle: usize,
        future: ResponseFuture,
        start: Instant,
        /// As for `Pool`.
        backend: Option<Arc<BackendConfig>>,
    },
    /// Any other wait.
    Wait(Pin<Box<dyn Future<Output = Resumed>>>),
}

/// Coroutines kept for reuse per VM; more finished at once are let go.
///
/// Making a coroutine per request (a Lua thread and its stack, later
/// collected) costs about a tenth of a Lua-routed get; a finished one is
/// reset and kept for the next request instead, up to this many: enough
/// for the requests a worker has in flight at once under ordinary load.
const IDLE_THREADS: usize = 256;

/// A VM's parking place, its idle coroutines and its suspending-call maker.
pub(super) struct Coroutines {
    parked: RefCell<Option<Parked>>,
    idle: RefCell<Vec<Thread>>,
    /// `suspending(start, name)`, see [`SUSPEND`].
    suspend: Function,
}

/// The value a coroutine is resumed with to raise the error that follows
/// it: a light userdata no Lua code can make.
fn failed() -> Value {
    static MARK: u8 = 0;
    Value::LightUserData(LightUserData(&MARK as *const u8 as *mut std::ffi::c_void))
}

/// Makes a waiting Lua function from a Rust `start` function. Checked
/// first: a backend gets a request the moment it is started, so a call
/// that could not wait for its reply must not start.
const SUSPEND: &str = r#"
local yield, yieldable, failed = ...
return function(start, name)
    local refusal = name .. " cannot wait here: Lua cannot suspend this function (a sort comparator, a metamethod called from C)"
    return function(...)
        if not yieldable() then
            error(refusal, 2)
        end
        start(...)
        local a, b = yield()
        if a == failed then
            error(b, 2)
        end
        return a, b
    end
end
"#;

impl Coroutines {
    /// Sets up `lua`'s coroutines; every VM that runs routes needs them
    /// before its first pool or request context is made.
    pub(super) fn install(lua: &Lua) -> mlua::Result<()> {
        let coroutine: Table = lua.globals().get("coroutine")?;
        let suspend = lua.load(SUSPEND).set_name("=wait").call::<Function>((
            coroutine.get::<Function>("yield")?,
            coroutine.get::<Function>("isyieldable")?,
            failed(),
        ))?;
        lua.set_app_data(Rc::new(Coroutines {
            parked: RefCell::new(None),
            idle: RefCell::new(Vec::new()),
            suspend,
        }));
        Ok(())
    }

    /// The coroutines of `lua`.
    pub(super) fn of(lua: &Lua) -> mlua::Result<Rc<Coroutines>> {
        lua.app_data_ref::<Rc<Coroutines>>()
            .map(|c| c.clone())
            .ok_or_else(|| mlua::Error::runtime("worker environment missing"))
    }

    /// A Lua function that calls `start` with its arguments (which parks
    /// work with [`Coroutines::park`]), waits for that work and returns
    /// its result. `name` is the call's name in errors.
    pub(super) fn suspending(&self, start: Function, name: &str) -> mlua::Result<Function> {
        self.suspend.call((start, name))
    }

    /// Parks the work the running coroutine is about to yield for.
    pub(super) fn park(&self, parked: Parked) {
        *self.parked.borrow_mut() = Some(parked);
    }

    fn thread(&self, lua: &Lua, function: &Function) -> mlua::Result<Thread> {
        let idle = self.idle.borrow_mut().pop();
        match idle {
            Some(thread) => {
                thread.reset(function.clone())?;
                Ok(thread)
            }
            None => lua.create_thread(function.clone()),
        }
    }

    fn recycle(&self, thread: Thread) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < IDLE_THREADS {
            idle.push(thread);
        }
    }
}

/// Runs `function(args)` as a coroutine of `lua` until it returns, serving
/// the waits it parks; its first return value.
///
/// A coroutine dropped while it waits (its client went away) is not
/// reused: its work is dropped with it.
pub(super) async fn drive(
    lua: &Lua,
    coroutines: &Coroutines,
    function: &Function,
    args: impl IntoLuaMulti,
) -> mlua::Result<Value> {
    let thread = coroutines.thread(lua, function)?;
    let mut value = thread.resume::<Value>(args)?;
    loop {
        if !thread.is_resumable() {
            coroutines.recycle(thread);
            return Ok(value);
        }
        let parked = coroutines.parked.borrow_mut().take();
        value = match parked {
            Some(Parked::Pool {
                future,
                start,
                backend,
            }) => thread.resume(timed(future, start, backend).await)?,
            Some(Parked::Handle {
                rctx,
                handle,
                future,
                start,
                backend,
            }) => {
                let response = timed(future, start, backend).await;
                let response: AnyUserData = rctx.answered(lua, handle, response)?;
                thread.resume(response)?
            }
            Some(Parked::Wait(wait)) => match wait.await {
                Ok(values) => thread.resume(values)?,
                Err(e) => thread.resume((failed(), super::config::lua_error_message(&e)))?,
            },
            None => {
                return Err(mlua::Error::runtime(
                    "a route yielded without waiting for anything: coroutine.yield cannot \
                     suspend a route (use a pool call or an rctx wait)",
                ))
            }
        };
    }
}

/// A backend call's response as a response object, with its round-trip
/// time (`res:elapsed()`) and, for `watch proxyreqs`, its backend.
async fn timed(
    future: ResponseFuture,
    start: Instant,
    backend: Option<Arc<BackendConfig>>,
) -> LuaResponse {
    let response = future.await;
    LuaResponse {
        backend,
        ..LuaResponse::new(response, start.elapsed().as_micros() as u64)
    }
}
