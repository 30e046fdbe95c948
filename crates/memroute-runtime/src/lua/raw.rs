//! The only code of memroute that calls Lua's C API directly: resuming
//! route coroutines, moving values on and off their stacks, and the C
//! functions of the fast waits. Everything here is wrapped in safe
//! functions that the rest of the Lua layer uses; no other module may use
//! `unsafe` (the crate denies it).
//!
//! Why not mlua alone: a Lua-routed request resumes its coroutine at least
//! twice and makes at least one call that waits. Through mlua, each resume
//! converts its arguments and results into references and re-checks the
//! thread, and each call into Rust goes through mlua's callback machinery
//! (argument conversion, userdata type checks, error wrapping). Together
//! that was about a third of a Lua-routed get (docs/benchmarks.md, runs 18
//! and 22). memcached's proxy, written in C, pays none of it; this module
//! pays it only for the uncommon cases, as mlua still serves those.
//!
//! The rules the code here keeps:
//! - Lua raises errors and yields from C functions with `longjmp`: a frame
//!   Lua may leave that way holds no value that needs dropping at that
//!   point (the C functions below end in [`yield_parked`] or an error
//!   after every Rust value is gone), and no Rust panic may cross into Lua
//!   (the fast path runs under `catch_unwind`).
//! - A coroutine's stack is only touched while it is suspended or has
//!   returned, by the driver that owns it.
//! - Raw pointers to Rust state ([`Running`]) are only read during the
//!   resume that set them.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::marker::PhantomData;
use std::ptr;
use std::rc::Rc;

use mlua::{
    ffi, AnyUserData, Function, IntoLuaMulti, LightUserData, Lua, RegistryKey, Thread, Value,
};

use super::coroutine::Coroutines;
use super::funcgen::Rctx;

/// How a resume ended.
pub(super) enum Resumed {
    /// The coroutine returned this many values (left on its stack).
    Returned(c_int),
    /// It yielded this many values (left on its stack).
    Yielded(c_int),
    /// It failed; the error is on its stack (see [`thread_error`]).
    Failed,
}

/// What a route coroutine runs for, as its fast waits check their
/// arguments against it.
pub(super) enum RouteOf<'a> {
    /// A funcgen slot (its rctx holds the slot's request object).
    Slot(&'a Rc<Rctx>),
    /// A classic route function, given the request object of this value,
    /// which Lua holds at `address` (set once the object is made).
    Request {
        object: &'a super::fresh::Shared<super::objects::LuaRequest>,
        address: &'a Cell<*const c_void>,
    },
}

/// The VM's coroutines and what the coroutine running now runs for, set
/// around each of its resumes.
#[derive(Clone, Copy)]
struct Running {
    coroutines: *const Coroutines,
    route: *const c_void,
}

const NOT_RUNNING: Running = Running {
    coroutines: ptr::null(),
    route: ptr::null(),
};

thread_local! {
    static RUNNING: Cell<Running> = const { Cell::new(NOT_RUNNING) };
}

/// Resumes `thread` with the `nargs` values on top of its stack (its
/// function first, for a coroutine not started). While it runs, the fast
/// waits see `coroutines` and `route` (see [`with_running`]).
pub(super) fn resume(
    thread: &Thread,
    nargs: c_int,
    coroutines: &Coroutines,
    route: &RouteOf<'_>,
) -> Resumed {
    let running = Running {
        coroutines,
        route: route as *const RouteOf<'_> as *const c_void,
    };
    let previous = RUNNING.with(|r| r.replace(running));
    let mut nresults: c_int = 0;
    // SAFETY: `thread` is a coroutine of the driver that calls this, with
    // `nargs` values pushed; no other code resumes it. `from` may be null.
    let status = unsafe { ffi::lua_resume(thread.state(), ptr::null_mut(), nargs, &mut nresults) };
    RUNNING.with(|r| r.set(previous));
    match status {
        ffi::LUA_OK => Resumed::Returned(nresults),
        ffi::LUA_YIELD => Resumed::Yielded(nresults),
        _ => Resumed::Failed,
    }
}

/// `f` of the VM coroutines and what the coroutine running now runs for,
/// if a driver resumed it.
fn with_running<R>(f: impl FnOnce(&Coroutines, &RouteOf<'_>) -> R) -> Option<R> {
    let running = RUNNING.with(Cell::get);
    if running.coroutines.is_null() {
        return None;
    }
    // SAFETY: set by `resume`, whose caller keeps both alive until it
    // returns, and restored when it does; `f` cannot keep the references
    // (its lifetime is its own).
    Some(unsafe {
        f(
            &*running.coroutines,
            &*(running.route as *const RouteOf<'_>),
        )
    })
}

/// Whether the coroutine running now is the one a driver started for the
/// request slot of `rctx` (a wait on any other request context could
/// never be answered: its replies go to that slot's own driver).
pub(super) fn running_slot_is(rctx: &Rctx) -> bool {
    with_running(|_, route| matches!(route, RouteOf::Slot(r) if ptr::eq(Rc::as_ptr(r), rctx)))
        .unwrap_or(false)
}

/// Empties the stack of `thread`, a coroutine that returned (or that was
/// never started), so it can be given a new function.
pub(super) fn clear(thread: &Thread) {
    // SAFETY: the driver only clears coroutines that are not running.
    unsafe { ffi::lua_settop(thread.state(), 0) }
}

/// Cuts the stack of `thread`, a coroutine that returned (or that was
/// never started), to its first `n` values.
pub(super) fn truncate(thread: &Thread, n: c_int) {
    // SAFETY: the driver only cuts coroutines that are not running, to
    // values they hold.
    unsafe { ffi::lua_settop(thread.state(), n) }
}

/// Pushes a copy of the value at `index` of `thread`'s stack onto it.
pub(super) fn push_copy(thread: &Thread, index: c_int) -> mlua::Result<()> {
    let state = thread.state();
    // SAFETY: a coroutine that is not running, `index` one of its values.
    unsafe {
        if ffi::lua_checkstack(state, 1) == 0 {
            return Err(mlua::Error::StackError);
        }
        ffi::lua_pushvalue(state, index);
    }
    Ok(())
}

/// Pushes copies of the values at `first` and `second` of `thread`'s
/// stack onto it (one stack check for both).
pub(super) fn push_copies(thread: &Thread, first: c_int, second: c_int) -> mlua::Result<()> {
    let state = thread.state();
    // SAFETY: as for `push_copy`; both indices are absolute.
    unsafe {
        if ffi::lua_checkstack(state, 2) == 0 {
            return Err(mlua::Error::StackError);
        }
        ffi::lua_pushvalue(state, first);
        ffi::lua_pushvalue(state, second);
    }
    Ok(())
}

/// Drops the top `n` values of a suspended coroutine's stack.
pub(super) fn pop(thread: &Thread, n: c_int) {
    // SAFETY: `n` values were left there by the resume that just ended.
    unsafe { ffi::lua_settop(thread.state(), -n - 1) }
}

/// Pushes the value `key` refers to onto `thread`'s stack.
pub(super) fn push_registry(thread: &Thread, key: &RegistryKey) -> mlua::Result<()> {
    let state = thread.state();
    // SAFETY: a coroutine that is not running; the registry is the VM's.
    unsafe {
        if ffi::lua_checkstack(state, 1) == 0 {
            return Err(mlua::Error::StackError);
        }
        ffi::lua_rawgeti(state, ffi::LUA_REGISTRYINDEX, key.id() as ffi::lua_Integer);
    }
    Ok(())
}

/// Pushes `values` onto `thread`'s stack (converted by mlua on the main
/// state, then moved); how many.
pub(super) fn push_values(
    lua: &Lua,
    thread: &Thread,
    values: impl IntoLuaMulti,
) -> mlua::Result<c_int> {
    let state = thread.state();
    lua.exec_raw_lua(|raw| {
        // SAFETY: the main state is not running Lua now (the driver runs
        // outside any Lua call); what is pushed onto it is moved off.
        unsafe {
            let main = raw.state();
            let base = ffi::lua_gettop(main);
            let pushed = values.push_into_stack_multi(raw);
            let n = ffi::lua_gettop(main) - base;
            if let Err(e) = pushed {
                ffi::lua_settop(main, base);
                return Err(e);
            }
            if ffi::lua_checkstack(state, n) == 0 {
                ffi::lua_settop(main, base);
                return Err(mlua::Error::StackError);
            }
            ffi::lua_xmove(main, state, n);
            Ok(n)
        }
    })
}

/// The address of the userdata at `index` of `thread`'s stack (negative:
/// from the top), if a full userdata is there.
pub(super) fn userdata_at(thread: &Thread, index: c_int) -> Option<*const c_void> {
    let state = thread.state();
    // SAFETY: a coroutine that returned, `index` within its results.
    unsafe {
        (ffi::lua_type(state, index) == ffi::LUA_TUSERDATA)
            .then(|| ffi::lua_touserdata(state, index) as *const c_void)
    }
}

/// The value at `index` of `thread`'s stack, converted by mlua.
pub(super) fn value_at(lua: &Lua, thread: &Thread, index: c_int) -> mlua::Result<Value> {
    let state = thread.state();
    lua.exec_raw_lua(|raw| {
        // SAFETY: as for `push_values`, the other way.
        unsafe {
            let main = raw.state();
            if ffi::lua_checkstack(main, 1) == 0 {
                return Err(mlua::Error::StackError);
            }
            ffi::lua_pushvalue(state, index);
            ffi::lua_xmove(state, main, 1);
            Ok(raw.pop_value())
        }
    })
}

/// The error a coroutine died of (on top of its stack), as mlua reports
/// one: an error raised by Rust as it was, anything else as its string
/// followed by the coroutine's traceback.
pub(super) fn thread_error(lua: &Lua, thread: &Thread) -> mlua::Error {
    let state = thread.state();
    lua.exec_raw_lua(|raw| {
        // SAFETY: as for `push_values`; the failed coroutine is not run
        // again (the driver drops it).
        unsafe {
            let main = raw.state();
            let base = ffi::lua_gettop(main);
            if ffi::lua_checkstack(main, ffi::LUA_TRACEBACK_STACK + 3) == 0 {
                return mlua::Error::StackError;
            }
            ffi::lua_xmove(state, main, 1);
            ffi::lua_pushvalue(main, -1);
            let error = match raw.pop_value() {
                Value::Error(error) => *error,
                _ => {
                    let message = error_text(main);
                    ffi::luaL_traceback(main, state, message, 0);
                    let mut len = 0usize;
                    let text = ffi::lua_tolstring(main, -1, &mut len);
                    let text = std::slice::from_raw_parts(text as *const u8, len);
                    mlua::Error::RuntimeError(String::from_utf8_lossy(text).into_owned())
                }
            };
            ffi::lua_settop(main, base);
            error
        }
    })
}

/// The text of the error value on top of `main`'s stack, pushed above it:
/// a string or a number as it is, anything else as its type, as `lua.c`
/// shows an error object. Its `__tostring` is not called: this runs
/// outside any protected call, and a metamethod that raised an error (or
/// yielded) there would abort the process.
///
/// # Safety
/// `main` has a value on top and room for one more.
unsafe fn error_text(main: *mut ffi::lua_State) -> *const std::ffi::c_char {
    let kind = ffi::lua_type(main, -1);
    if kind == ffi::LUA_TSTRING || kind == ffi::LUA_TNUMBER {
        ffi::lua_pushvalue(main, -1);
    } else {
        let name = std::ffi::CStr::from_ptr(ffi::lua_typename(main, kind)).to_string_lossy();
        let text = format!("(error object is a {name} value)");
        ffi::lua_pushlstring(main, text.as_ptr().cast(), text.len());
    }
    ffi::lua_tolstring(main, -1, ptr::null_mut())
}

/// The value a coroutine is resumed with, ahead of a message, to make the
/// wait it is suspended in raise that message: a light userdata no Lua
/// code can make.
pub(super) fn failure_mark() -> Value {
    Value::LightUserData(LightUserData(failure_address()))
}

fn failure_address() -> *mut c_void {
    static MARK: u8 = 0;
    &MARK as *const u8 as *mut c_void
}

/// The arguments of a call to a fast wait, readable while it runs.
pub(super) struct Args<'call> {
    state: *mut ffi::lua_State,
    _call: PhantomData<&'call ()>,
}

impl Args<'_> {
    pub(super) fn count(&self) -> c_int {
        // SAFETY: the state of the running C function's call.
        unsafe { ffi::lua_gettop(self.state) }
    }

    /// The address of argument `n` (from 1) if it is a full userdata.
    pub(super) fn userdata(&self, n: c_int) -> Option<*const c_void> {
        // SAFETY: as above; `n` is checked by `lua_type`.
        unsafe {
            (ffi::lua_type(self.state, n) == ffi::LUA_TUSERDATA)
                .then(|| ffi::lua_touserdata(self.state, n) as *const c_void)
        }
    }

    /// Argument `n` (from 1) if it is an integer (or a float with an
    /// integer value, as Lua converts them).
    pub(super) fn integer(&self, n: c_int) -> Option<i64> {
        let mut is_integer = 0;
        // SAFETY: as above.
        let value = unsafe { ffi::lua_tointegerx(self.state, n, &mut is_integer) };
        (is_integer != 0).then_some(value)
    }
}

/// The fast path of a wait: given the running coroutine's VM coroutines,
/// what it runs for and the call's arguments, starts the common call and
/// parks it (true), or does nothing (false) and leaves the call to the
/// full path.
pub(super) type FastWait = fn(&Coroutines, &RouteOf<'_>, &Args<'_>) -> bool;

/// A Lua function that waits: it runs `fast` when a driver runs the
/// coroutine, and (when `fast` declines) calls `full` with
/// its arguments (which starts and parks the wait, or raises an error),
/// then yields until the parked work is done and returns its result.
/// `refusal` is the error where the coroutine cannot yield.
pub(super) fn waiting_function(
    lua: &Lua,
    fast: FastWait,
    full: &Function,
    refusal: &str,
) -> mlua::Result<Function> {
    lua.exec_raw_lua(|raw| {
        // SAFETY: the main state is not running Lua now (this is called
        // while a VM is set up); the closure made is popped as a value.
        unsafe {
            let main = raw.state();
            if ffi::lua_checkstack(main, 3) == 0 {
                return Err(mlua::Error::StackError);
            }
            raw.push(full.clone())?;
            ffi::lua_pushlightuserdata(main, fast as *mut c_void);
            raw.push(refusal)?;
            ffi::lua_pushcclosure(main, call_wait, 3);
            match raw.pop_value() {
                Value::Function(function) => Ok(function),
                _ => Err(mlua::Error::runtime("a waiting function could not be made")),
            }
        }
    })
}

/// The C function of [`waiting_function`]. Upvalues: the full path, the
/// fast path (a function pointer), the refusal message.
unsafe extern "C-unwind" fn call_wait(state: *mut ffi::lua_State) -> c_int {
    if ffi::lua_isyieldable(state) == 0 {
        ffi::luaL_where(state, 1);
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(3));
        ffi::lua_concat(state, 2);
        ffi::lua_error(state);
    }
    let fast: FastWait = std::mem::transmute::<*mut c_void, FastWait>(ffi::lua_touserdata(
        state,
        ffi::lua_upvalueindex(2),
    ));
    let args = Args {
        state,
        _call: PhantomData,
    };
    // A panic must not cross into Lua: the full path takes over.
    let started = std::panic::catch_unwind(|| {
        with_running(|coroutines, route| fast(coroutines, route, &args)).unwrap_or(false)
    })
    .unwrap_or(false);
    if !started {
        let n = ffi::lua_gettop(state);
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(1));
        ffi::lua_insert(state, 1);
        // An error leaves through here with a long jump: nothing in this
        // frame needs dropping.
        ffi::lua_call(state, n, 0);
    }
    ffi::lua_settop(state, 0);
    ffi::lua_yieldk(state, 0, 0, Some(after_wait))
}

/// Where a waiting function goes on when its coroutine is resumed: it
/// returns what it was resumed with, or raises the error after a
/// [`failure_mark`].
unsafe extern "C-unwind" fn after_wait(
    state: *mut ffi::lua_State,
    _status: c_int,
    _context: ffi::lua_KContext,
) -> c_int {
    let n = ffi::lua_gettop(state);
    if n >= 2 && ffi::lua_touserdata(state, 1) == failure_address() {
        // Two values are pushed below; without room for them the
        // message is raised as it is, without its position.
        if ffi::lua_checkstack(state, 2) == 0 {
            ffi::lua_settop(state, 2);
            ffi::lua_error(state);
        }
        ffi::luaL_where(state, 1);
        ffi::lua_pushvalue(state, 2);
        ffi::lua_concat(state, 2);
        ffi::lua_error(state);
    }
    n
}

/// The address Lua gives `object` on a stack (what [`Args::userdata`] and
/// [`userdata_at`] return for it).
pub(super) fn address_of(object: &AnyUserData) -> *const c_void {
    object.to_pointer()
}

// ---------------------------------------------------------------------------
// Objects without finalizers (the classic API's per-request objects)
// ---------------------------------------------------------------------------
//
// A classic route gets a new request object per request and a new response
// object per pool call; made by mlua, each carried a finalizer that Lua's
// collector ran one by one in a protected call (about half of what the two
// objects cost, docs/benchmarks.md run 28). Here they are userdata made
// through the C API that hold only an [`ObjectId`] (plain data: Lua frees
// the memory with nothing to run); the Rust value lives in a table of slots
// on the Rust side (`objects::RawObjects`). A weak-valued Lua table maps
// each slot to its object: once the collector has found the object
// unreachable it clears that entry, and Rust then drops the value and
// reuses the slot. The id's generation makes a slot reused under an object
// that is somehow still reachable (an object kept only by a table that Lua
// is finalizing is cleared from weak values before that finalizer runs)
// fail its lookup instead of showing another request's value.

/// What the userdata memory of an object holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C)]
pub(super) struct ObjectId {
    pub(super) slot: u32,
    pub(super) generation: u32,
}

/// A kind of object (requests, responses): its metatable and its table of
/// live objects, both referenced from the registry.
pub(super) struct ObjectClass {
    metatable: RegistryKey,
    /// Where the metatable is (how an object of the class is recognised).
    metatable_address: *const c_void,
    /// Slot + 1 -> object, weak values; key 0 holds a marker table that
    /// the collector clears when it completes a cycle.
    live: RegistryKey,
}

impl ObjectClass {
    /// A class whose objects get `metatable` (which must have no `__gc`:
    /// the objects hold nothing to finalize).
    pub(super) fn new(lua: &Lua, metatable: mlua::Table) -> mlua::Result<ObjectClass> {
        let live = lua.create_table()?;
        let mode = lua.create_table()?;
        mode.raw_set("__mode", "v")?;
        live.set_metatable(Some(mode))?;
        live.raw_set(0, lua.create_table()?)?;
        Ok(ObjectClass {
            metatable_address: metatable.to_pointer(),
            metatable: lua.create_registry_value(metatable)?,
            live: lua.create_registry_value(live)?,
        })
    }

    /// Pushes a new object holding `id` onto `thread`'s stack (a coroutine
    /// that is not running) and lists it as slot `id.slot`'s object;
    /// returns the address Lua holds it at.
    pub(super) fn push_new(&self, thread: &Thread, id: ObjectId) -> mlua::Result<*const c_void> {
        let state = thread.state();
        // SAFETY: a coroutine that is not running; the userdata is written
        // whole before anything can read it; 3 slots are checked for. (As
        // mlua does without a memory limit, allocation is unprotected.)
        unsafe {
            if ffi::lua_checkstack(state, 3) == 0 {
                return Err(mlua::Error::StackError);
            }
            let memory = ffi::lua_newuserdatauv(state, std::mem::size_of::<ObjectId>(), 0);
            ptr::write(memory as *mut ObjectId, id);
            ffi::lua_rawgeti(
                state,
                ffi::LUA_REGISTRYINDEX,
                self.metatable.id() as ffi::lua_Integer,
            );
            ffi::lua_setmetatable(state, -2);
            ffi::lua_rawgeti(
                state,
                ffi::LUA_REGISTRYINDEX,
                self.live.id() as ffi::lua_Integer,
            );
            ffi::lua_pushvalue(state, -2);
            ffi::lua_rawseti(state, -2, id.slot as ffi::lua_Integer + 1);
            ffi::lua_settop(state, -2);
            Ok(memory as *const c_void)
        }
    }

    /// The id `object` holds, if it is an object of this class.
    pub(super) fn id_of(&self, lua: &Lua, object: &AnyUserData) -> Option<ObjectId> {
        lua.exec_raw_lua(|raw| {
            // SAFETY: the main state has room for the two values pushed
            // (checked), which are popped before returning.
            unsafe {
                let main = raw.state();
                if ffi::lua_checkstack(main, 2) == 0 {
                    return None;
                }
                raw.push(object).ok()?;
                let id = self.id_at(main, -1);
                ffi::lua_settop(main, -2);
                id
            }
        })
    }

    /// The id of the object at `index` of `state`, if one of this class
    /// is there. Uses one stack slot.
    unsafe fn id_at(&self, state: *mut ffi::lua_State, index: c_int) -> Option<ObjectId> {
        if ffi::lua_type(state, index) != ffi::LUA_TUSERDATA
            || ffi::lua_getmetatable(state, index) == 0
        {
            return None;
        }
        let same = ffi::lua_topointer(state, -1) == self.metatable_address;
        ffi::lua_settop(state, -2);
        let memory = ffi::lua_touserdata(state, index) as *const ObjectId;
        (same && !memory.is_null()).then(|| ptr::read(memory))
    }

    /// The id of the object at `index` of `thread`'s stack (a coroutine
    /// that returned), if one of this class is there.
    pub(super) fn id_on(&self, thread: &Thread, index: c_int) -> Option<ObjectId> {
        let state = thread.state();
        // SAFETY: a coroutine that is not running, `index` within its
        // values; one slot is checked for.
        unsafe {
            if ffi::lua_checkstack(state, 1) == 0 {
                return None;
            }
            self.id_at(state, index)
        }
    }

    /// Whether the collector completed a cycle since the last call that
    /// answered true (its marker is gone); a new marker is planted then.
    /// Only after one can [`ObjectClass::collected`] find anything new.
    pub(super) fn cycle_passed(&self, lua: &Lua) -> bool {
        lua.exec_raw_lua(|raw| {
            // SAFETY: the main state, with room checked for the values
            // pushed, which are popped.
            unsafe {
                let main = raw.state();
                if ffi::lua_checkstack(main, 2) == 0 {
                    return false;
                }
                ffi::lua_rawgeti(
                    main,
                    ffi::LUA_REGISTRYINDEX,
                    self.live.id() as ffi::lua_Integer,
                );
                let passed = ffi::lua_rawgeti(main, -1, 0) == ffi::LUA_TNIL;
                ffi::lua_settop(main, -2);
                if passed {
                    ffi::lua_createtable(main, 0, 0);
                    ffi::lua_rawseti(main, -2, 0);
                }
                ffi::lua_settop(main, -2);
                passed
            }
        })
    }

    /// Moves out of `slots` (listed objects) into `dead` those whose object
    /// Lua has collected.
    pub(super) fn collected(&self, lua: &Lua, slots: &mut Vec<u32>, dead: &mut Vec<u32>) {
        lua.exec_raw_lua(|raw| {
            // SAFETY: as above.
            unsafe {
                let main = raw.state();
                if ffi::lua_checkstack(main, 2) == 0 {
                    return;
                }
                ffi::lua_rawgeti(
                    main,
                    ffi::LUA_REGISTRYINDEX,
                    self.live.id() as ffi::lua_Integer,
                );
                slots.retain(|&slot| {
                    let gone =
                        ffi::lua_rawgeti(main, -1, slot as ffi::lua_Integer + 1) == ffi::LUA_TNIL;
                    ffi::lua_settop(main, -2);
                    if gone {
                        dead.push(slot);
                    }
                    !gone
                });
                ffi::lua_settop(main, -2);
            }
        })
    }
}
