//! How Lua routes wait: every route runs as a coroutine of its worker's VM,
//! driven from Rust, and every call that waits (`pool(r)`, `mcp.await`,
//! `rctx:enqueue_and_wait`, `rctx:wait_cond`, `rctx:wait_handle`,
//! `rctx:sleep`) starts its work in Rust, *parks* it here (a [`Parked`])
//! and yields. The route's driver ([`Driving`], or [`drive`] around it)
//! takes what was parked as soon as the coroutine yields, awaits it, and
//! resumes the coroutine with the result, which the waiting call returns.
//! This is what memcached's proxy does with its request slots: no boxed
//! future for the call itself in the common cases, no userdata with a
//! finalizer to hold it, and the coroutines are reused: a funcgen slot
//! keeps its own ([`SlotThread`]), classic routes take one from the VM's
//! idle ones ([`idle_prepared`]).
//!
//! `pool(r)` and `rctx:enqueue_and_wait` are C functions with a fast path
//! for their common call ([`raw::waiting_function`]); the other waits are
//! small Lua functions made by [`Coroutines::suspending`] that call the
//! Rust function, then `coroutine.yield`. The driver resumes coroutines
//! through Lua's C API ([`raw`]).
//!
//! Only one coroutine of a worker runs at a time, and the driver takes the
//! parked work before anything else can run, so one place per VM is enough;
//! work parked by a wait that yielded elsewhere (inside a coroutine the
//! route made) is dropped when its route ends.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use mlua::{AnyUserData, Function, Lua, Table, Thread, Value};

use super::raw;

use super::funcgen::Rctx;
use super::objects::LuaResponse;
use crate::backend::BackendConfig;
use crate::route::{Pool, Sent};

/// The two values a waiting call returns (the second is often nil), or the
/// error it raises in the route.
pub(super) type Resumed = mlua::Result<(Value, Value)>;

/// Work a coroutine waits for.
pub(super) enum Parked {
    /// `pool(r)`: resumed with the response object.
    Pool {
        future: Sent,
        /// When it was sent, for a response that is not timed by its
        /// pool (see [`Sent::times_itself`]).
        start: Option<Instant>,
        /// The backend it goes to, noted only for `watch proxyreqs`.
        backend: Option<Arc<BackendConfig>>,
    },
    /// `rctx:enqueue_and_wait(r, h)` on a pool handle with nothing else to
    /// wait for: resumed with the response object, which also becomes the
    /// handle's result (see [`Rctx::answered`]).
    Handle {
        rctx: Rc<Rctx>,
        handle: usize,
        future: Sent,
        /// As for `Pool`.
        start: Option<Instant>,
        /// As for `Pool`.
        backend: Option<Arc<BackendConfig>>,
    },
    /// Any other wait.
    Wait(Pin<Box<dyn Future<Output = Resumed>>>),
}

/// A pool object of the VM: its address, its pool, the object itself.
type KnownPool = (*const c_void, Rc<dyn Pool>, AnyUserData);

/// Coroutines kept for reuse per VM; more finished at once are let go.
///
/// Making a coroutine per request (a Lua thread and its stack, later
/// collected) costs about a tenth of a Lua-routed get; a finished one is
/// reset and kept for the next request instead, up to this many: enough
/// for the requests a worker has in flight at once under ordinary load.
/// A classic route's multi-get runs one coroutine per key, so 50 clients'
/// 10-key gets keep 500 in flight (256 made a fifth of those keys pay for
/// a new coroutine and its collection); an idle one holds about 1 KiB.
/// (A funcgen slot keeps a coroutine of its own, [`SlotThread`].)
const IDLE_THREADS: usize = 1024;

/// A VM's parking place, its idle coroutines and its suspending-call maker.
pub(super) struct Coroutines {
    parked: RefCell<Option<Parked>>,
    /// The VM's pool objects, by the address Lua holds them at, for the
    /// fast `pool(r)` (kept alive here, so no other object takes an
    /// address while it is listed).
    pools: RefCell<Vec<KnownPool>>,
    idle: RefCell<Vec<Thread>>,
    /// `suspending(start, name)`, see [`SUSPEND`].
    suspend: Function,
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
            raw::failure_mark(),
        ))?;
        lua.set_app_data(Rc::new(Coroutines {
            parked: RefCell::new(None),
            pools: RefCell::new(Vec::new()),
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

    /// Lists `object`, the Lua object of `pool`, for [`Coroutines::known_pool`].
    pub(super) fn know_pool(&self, object: &AnyUserData, pool: Rc<dyn Pool>) {
        self.pools
            .borrow_mut()
            .push((raw::address_of(object), pool, object.clone()));
    }

    /// The pool whose Lua object is at `address`, if it is one of this
    /// VM's pool objects.
    pub(super) fn known_pool(&self, address: *const c_void) -> Option<Rc<dyn Pool>> {
        self.pools
            .borrow()
            .iter()
            .find(|(at, _, _)| *at == address)
            .map(|(_, pool, _)| pool.clone())
    }

    /// Drops work parked by a wait that never yielded to a driver (one
    /// called inside a coroutine the route made itself yields to that
    /// coroutine's resumer instead), when the route that made it ends: it
    /// belongs to no one, and must not be taken by the next coroutine that
    /// yields without waiting.
    fn drop_unclaimed(&self) {
        let parked = self.parked.borrow_mut().take();
        // Its request context counted the request as pending: it is not
        // any more, or the slot would wait for it for ever (and a slot,
        // its coroutine and its objects would be lost per request).
        if let Some(Parked::Handle { rctx, handle, .. }) = parked {
            rctx.abandoned(handle);
        }
    }

    /// Parks the work the running coroutine is about to yield for.
    pub(super) fn park(&self, parked: Parked) {
        *self.parked.borrow_mut() = Some(parked);
    }

    /// A coroutine with an empty stack, ready to be given a function:
    /// one that returned earlier, or a new one. (A Lua 5.4 coroutine that
    /// returned can run again once something is pushed onto it; one that
    /// failed or was left waiting is never put back.)
    fn idle_thread(&self, lua: &Lua) -> mlua::Result<Thread> {
        let idle = self.idle.borrow_mut().pop();
        match idle {
            Some(thread) => Ok(thread),
            None => {
                let thread = lua.create_thread(self.suspend.clone())?;
                // Not started: emptied of the placeholder function.
                raw::clear(&thread);
                Ok(thread)
            }
        }
    }

    fn recycle(&self, thread: Thread) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < IDLE_THREADS {
            idle.push(thread);
        }
    }
}

/// An idle coroutine of `lua` with the function and arguments `prepare`
/// pushed onto its empty stack (it returns how many arguments): ready for
/// [`drive`].
///
/// Not an `async fn` around `drive`: each await of a future in a future
/// costs a copy of it and a level of polling, and a route's future is
/// boxed per request.
pub(super) fn idle_prepared(
    lua: &Lua,
    coroutines: &Coroutines,
    prepare: impl FnOnce(&Thread) -> mlua::Result<c_int>,
) -> mlua::Result<(Thread, c_int)> {
    let thread = coroutines.idle_thread(lua)?;
    match prepare(&thread) {
        Ok(nargs) => Ok((thread, nargs)),
        Err(e) => {
            // Nothing ran: the thread is as it was, once emptied.
            raw::clear(&thread);
            coroutines.recycle(thread);
            Err(e)
        }
    }
}

/// A request slot's own coroutine, as memcached gives each slot one: the
/// slot's function and its request object stay at the bottom of its stack
/// (indices 1 and 2) from request to request, so starting a request is
/// two copies on that stack, not two registry reads and a coroutine taken
/// from the VM's idle ones. A coroutine that failed, or whose request was
/// dropped while it waited, is not given back; the next request makes a
/// new one.
pub(super) struct SlotThread {
    function: mlua::RegistryKey,
    thread: std::cell::Cell<Option<Thread>>,
}

/// Values a slot's coroutine keeps below every request's frame.
const SLOT_BASE: c_int = 2;

impl SlotThread {
    pub(super) fn new(lua: &Lua, function: Function) -> mlua::Result<SlotThread> {
        Ok(SlotThread {
            function: lua.create_registry_value(function)?,
            thread: std::cell::Cell::new(None),
        })
    }

    /// The slot's coroutine, made (with `request`, the slot's request
    /// object) if it has none, with the slot function and `argument` (the
    /// slot's request object when `None`) pushed: ready for [`drive`] with
    /// one argument.
    pub(super) fn prepare(
        &self,
        lua: &Lua,
        request: &KeptObject<super::objects::LuaRequest>,
        argument: Option<&AnyUserData>,
    ) -> mlua::Result<Thread> {
        let thread = match self.thread.take() {
            Some(thread) => thread,
            None => {
                let function = lua.registry_value::<Function>(&self.function)?;
                let thread = lua.create_thread(function)?;
                request.push(&thread)?;
                thread
            }
        };
        let pushed = match argument {
            None => raw::push_copies(&thread, 1, 2),
            Some(object) => raw::push_copy(&thread, 1)
                .and_then(|()| raw::push_values(lua, &thread, object.clone()).map(|_| ())),
        };
        match pushed {
            Ok(()) => Ok(thread),
            Err(e) => {
                raw::truncate(&thread, SLOT_BASE);
                self.thread.set(Some(thread));
                Err(e)
            }
        }
    }
}

/// Runs a coroutine, `thread`, which has its function and `nargs`
/// arguments pushed, until it returns, serving the waits it parks. `home`
/// is the slot it belongs to ([`SlotThread::prepare`]), if any, else it is
/// an idle one ([`idle_prepared`]). `route` is what the coroutine runs
/// for, which the fast waits check their arguments against.
///
/// The coroutine is resumed through Lua's C API ([`raw`]), not mlua's
/// `Thread::resume`, and values cross its stack raw: only the uncommon
/// ones are converted by mlua. (A route that can hold its own future polls
/// a [`Driving`] itself instead.)
pub(super) async fn drive<'c>(
    lua: &Lua,
    coroutines: &'c Coroutines,
    route: raw::RouteOf<'_>,
    thread: Thread,
    home: Option<&'c SlotThread>,
    nargs: c_int,
) -> mlua::Result<Finished<'c>> {
    let mut driving = Driving::new(thread, nargs);
    let nresults =
        std::future::poll_fn(|cx| driving.poll_drive(cx, lua, coroutines, &route, home.is_some()))
            .await?;
    Ok(driving.finished(coroutines, home, nresults))
}

/// A coroutine being run by its driver: resumed, then resumed again with
/// the result of each wait it parks, until it returns. A plain struct
/// rather than an `async fn`, so that a route's reply future can hold it
/// by value, with what it borrows (the VM, the slot) passed in at each
/// poll: an `async fn` awaited in another is copied into it and polled
/// through it, and a funcgen's reply future is made per request.
pub(super) struct Driving {
    /// None once it returned (its values were handed to [`Finished`]) or
    /// failed (it is never run again).
    thread: Option<Thread>,
    /// Arguments pushed for the first resume, until it is made.
    first: Option<c_int>,
    /// The wait it yielded for.
    parked: Option<Parked>,
}

impl Driving {
    /// `thread` has its function and `nargs` arguments pushed; it runs at
    /// the first poll.
    pub(super) fn new(thread: Thread, nargs: c_int) -> Driving {
        Driving {
            thread: Some(thread),
            first: Some(nargs),
            parked: None,
        }
    }

    /// Runs the coroutine as far as it goes: ready with the number of
    /// values it returned (those of its own frame: `in_slot` says a
    /// slot's function and request lie below it), or with its error.
    pub(super) fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        lua: &Lua,
        coroutines: &Coroutines,
        route: &raw::RouteOf<'_>,
        in_slot: bool,
    ) -> std::task::Poll<mlua::Result<c_int>> {
        use std::task::Poll;
        let Some(thread) = &self.thread else {
            return Poll::Ready(Err(mlua::Error::runtime(
                "a route was polled after it ended",
            )));
        };
        loop {
            let resumed = match self.first.take() {
                Some(nargs) => raw::resume(thread, nargs, coroutines, route),
                None => {
                    let pushed = std::task::ready!(poll_parked(&mut self.parked, cx, lua, thread));
                    // The parked work goes once its result is pushed.
                    self.parked = None;
                    match pushed {
                        Ok(nargs) => raw::resume(thread, nargs, coroutines, route),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            };
            match resumed {
                raw::Resumed::Returned(nresults) => {
                    coroutines.drop_unclaimed();
                    // A returned coroutine's count includes what lies below
                    // its function's frame: a slot's function and request.
                    let kept = if in_slot { SLOT_BASE } else { 0 };
                    return Poll::Ready(Ok(nresults - kept));
                }
                // What a wait yields is not used: the waits yield nothing.
                raw::Resumed::Yielded(nresults) => raw::pop(thread, nresults),
                raw::Resumed::Failed => {
                    coroutines.drop_unclaimed();
                    let error = raw::thread_error(lua, thread);
                    self.thread = None;
                    return Poll::Ready(Err(error));
                }
            }
            self.parked = coroutines.parked.borrow_mut().take();
        }
    }

    /// The values of a coroutine that returned `nresults` values
    /// ([`Driving::poll_drive`]).
    pub(super) fn finished<'c>(
        &mut self,
        coroutines: &'c Coroutines,
        home: Option<&'c SlotThread>,
        nresults: c_int,
    ) -> Finished<'c> {
        Finished {
            coroutines,
            thread: self.thread.take(),
            home,
            nresults,
        }
    }
}

/// Polls the work a coroutine parked, `parked`; once it is done, pushes
/// its result onto `thread`, from where it is parked: ready with how many
/// values were pushed.
fn poll_parked(
    parked: &mut Option<Parked>,
    cx: &mut std::task::Context<'_>,
    lua: &Lua,
    thread: &Thread,
) -> std::task::Poll<mlua::Result<c_int>> {
    use std::task::{ready, Poll};
    Poll::Ready(match parked {
        Some(Parked::Pool {
            future,
            start,
            backend,
        }) => {
            let response = ready!(poll_timed(future, *start, backend, cx));
            super::fresh::push_response(lua, thread, response)
        }
        Some(Parked::Handle {
            rctx,
            handle,
            future,
            start,
            backend,
        }) => {
            let response = ready!(poll_timed(future, *start, backend, cx));
            rctx.answered(lua, *handle, response, |object| {
                object.push(thread).map(|()| 1)
            })
        }
        Some(Parked::Wait(wait)) => match ready!(wait.as_mut().poll(cx)) {
            Ok(values) => raw::push_values(lua, thread, values),
            Err(e) => raw::push_values(
                lua,
                thread,
                (raw::failure_mark(), super::config::lua_error_message(&e)),
            ),
        },
        None => Err(mlua::Error::runtime(
            "a route yielded without waiting for anything: coroutine.yield cannot \
             suspend a route (use a pool call or an rctx wait)",
        )),
    })
}

/// A coroutine that returned; its return values stay on its stack until
/// this is dropped, which empties it and keeps it for reuse.
pub(super) struct Finished<'c> {
    coroutines: &'c Coroutines,
    thread: Option<Thread>,
    /// The slot whose own coroutine this is (given back to it), if any.
    home: Option<&'c SlotThread>,
    nresults: c_int,
}

impl Finished<'_> {
    /// The address of the first return value when it is a full userdata
    /// (to recognise an object without converting it).
    pub(super) fn first_userdata(&self) -> Option<*const c_void> {
        self.first_at()
            .and_then(|(thread, index)| raw::userdata_at(thread, index))
    }

    /// The id of the first return value when it is an object of `class`
    /// (to read it without converting it).
    pub(super) fn first_object(&self, class: &raw::ObjectClass) -> Option<raw::ObjectId> {
        self.first_at()
            .and_then(|(thread, index)| class.id_on(thread, index))
    }

    /// The first return value (nil when none).
    pub(super) fn first(&self, lua: &Lua) -> mlua::Result<Value> {
        match self.first_at() {
            Some((thread, index)) => raw::value_at(lua, thread, index),
            None => Ok(Value::Nil),
        }
    }

    /// Where the first return value is: the coroutine and its stack index
    /// (none when nothing was returned).
    fn first_at(&self) -> Option<(&Thread, c_int)> {
        match &self.thread {
            Some(thread) if self.nresults > 0 => Some((thread, -self.nresults)),
            _ => None,
        }
    }
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            match self.home {
                Some(home) => {
                    raw::truncate(&thread, SLOT_BASE);
                    home.thread.set(Some(thread));
                }
                None => {
                    raw::clear(&thread);
                    self.coroutines.recycle(thread);
                }
            }
        }
    }
}

/// An object a request slot keeps from request to request: a Lua userdata
/// over a value Rust shares (`Rc<RefCell<T>>`, which mlua serves with
/// `T`'s methods), so Rust reads and writes it with no type check, with
/// what it takes to push it onto a coroutine's stack without conversion
/// (a registry reference) and to recognise it there (its address).
pub(super) struct KeptObject<T> {
    pub(super) object: AnyUserData,
    data: Rc<RefCell<T>>,
    key: mlua::RegistryKey,
    address: *const c_void,
}

impl<T: mlua::UserData + 'static> KeptObject<T> {
    pub(super) fn new(lua: &Lua, value: T) -> mlua::Result<KeptObject<T>> {
        let data = Rc::new(RefCell::new(value));
        let object = lua.create_userdata(data.clone())?;
        Ok(KeptObject {
            address: raw::address_of(&object),
            key: lua.create_registry_value(object.clone())?,
            object,
            data,
        })
    }

    /// Its value (borrowed as Lua would: an error, not a panic, while a
    /// Lua method holds it).
    pub(super) fn get(&self) -> mlua::Result<std::cell::Ref<'_, T>> {
        self.data
            .try_borrow()
            .map_err(|_| mlua::Error::UserDataBorrowError)
    }

    /// Replaces its value.
    pub(super) fn set(&self, value: T) -> mlua::Result<()> {
        self.update(|kept| *kept = value)
    }

    /// Changes its value in place.
    pub(super) fn update(&self, f: impl FnOnce(&mut T)) -> mlua::Result<()> {
        f(&mut *self
            .data
            .try_borrow_mut()
            .map_err(|_| mlua::Error::UserDataBorrowMutError)?);
        Ok(())
    }

    /// Where Lua holds it (what the stack readers of [`raw`] give for it).
    pub(super) fn address(&self) -> *const c_void {
        self.address
    }

    /// Pushes the object onto the stack of `thread`, a coroutine that is
    /// not running.
    pub(super) fn push(&self, thread: &Thread) -> mlua::Result<()> {
        raw::push_registry(thread, &self.key)
    }
}

/// When a backend call was sent, if its response needs its caller's clock
/// for its round trip (see [`Sent::times_itself`]): a memcached pool's
/// reader times it already, which saves a clock read at each end.
pub(super) fn start_of(sent: &Sent) -> Option<Instant> {
    (!sent.times_itself()).then(Instant::now)
}

/// Polls a backend call, `sent`: once done, its response as a response
/// object, with its round-trip time (`res:elapsed()`: its pool's, else
/// since `start`) and, for `watch proxyreqs`, its backend.
#[inline]
fn poll_timed(
    sent: &mut Sent,
    start: Option<Instant>,
    backend: &mut Option<Arc<BackendConfig>>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<LuaResponse> {
    let response = std::task::ready!(Pin::new(&mut *sent).poll(cx));
    let round_trip = sent
        .round_trip()
        .or_else(|| start.map(|start| start.elapsed()))
        .unwrap_or_default();
    std::task::Poll::Ready(LuaResponse {
        backend: backend.take(),
        ..LuaResponse::new(response, round_trip.as_micros() as u64)
    })
}
