//! The classic API's per-request objects: the request object a classic
//! route function is given and the response object each `pool(r)` returns.
//! They are made through Lua's C API without a finalizer (see the section
//! "Objects without finalizers" of [`raw`]): the userdata holds a slot
//! number, the Rust value sits in [`FreshObjects`], and a slot is reused once
//! Lua has collected its object. mlua's own objects of the same types (made
//! by `mcp.request`, `mcp.await`, funcgen slots) are unchanged; the
//! `with_*` functions here read either kind, and every Rust function that
//! takes a request or a response object goes through them.

use std::cell::RefCell;
use std::ffi::c_void;
use std::rc::Rc;

use mlua::{
    AnyUserData, FromLuaMulti, IntoLuaMulti, Lua, MultiValue, Thread, UserData, UserDataMethods,
    Value,
};

use super::objects::{LuaRequest, LuaResponse};
use super::raw::{self, ObjectClass, ObjectId};

/// A fresh object's value, shared by its slot and the Rust code using it
/// for a moment (None once Lua collected the object).
pub(super) type Shared<T> = Rc<RefCell<Option<T>>>;

/// Below this many listed objects a scan is not worth it.
const SCAN_AFTER: usize = 64;

/// Objects given out between two looks for collected ones while free slots
/// remain, so that collected objects' values (a large request value, say)
/// are dropped soon after a collection even when no new slot is needed.
const SCAN_EVERY: u32 = 256;

/// The slots of one kind of fresh object.
pub(super) struct FreshObjects<T> {
    class: ObjectClass,
    slots: RefCell<Slots<T>>,
}

struct Slots<T> {
    entries: Vec<Entry<T>>,
    /// Slots to reuse.
    free: Vec<u32>,
    /// Slots whose object Lua holds (or held until its last collection).
    listed: Vec<u32>,
    /// Scratch list for a scan.
    dead: Vec<u32>,
    /// Objects given out since the last look for collected ones.
    since_scan: u32,
}

struct Entry<T> {
    value: Shared<T>,
    generation: u32,
}

/// A slot given a value whose object is not made yet (a request's, until
/// its route runs); dropped before that, the slot is freed.
pub(super) struct Reserved<T: 'static> {
    objects: Rc<FreshObjects<T>>,
    id: ObjectId,
    value: Shared<T>,
    made: bool,
}

impl<T: 'static> Reserved<T> {
    /// The value (for the route's own fast calls).
    pub(super) fn value(&self) -> &Shared<T> {
        &self.value
    }

    /// Makes the object onto `thread`'s stack; the address Lua holds it at.
    pub(super) fn push(&mut self, thread: &Thread) -> mlua::Result<*const c_void> {
        if self.made {
            return Err(mlua::Error::runtime("a request object is made once"));
        }
        let address = self.objects.class.push_new(thread, self.id)?;
        self.made = true;
        self.objects.slots.borrow_mut().listed.push(self.id.slot);
        Ok(address)
    }
}

impl<T: 'static> Drop for Reserved<T> {
    fn drop(&mut self) {
        if !self.made {
            self.objects.release(self.id.slot);
        }
    }
}

impl<T: 'static> FreshObjects<T> {
    /// Gives a slot `value`.
    pub(super) fn reserve(self: &Rc<Self>, lua: &Lua, value: T) -> Reserved<T> {
        let mut slots = self.slots.borrow_mut();
        slots.since_scan += 1;
        let look = (slots.free.is_empty() || slots.since_scan >= SCAN_EVERY)
            && slots.listed.len() >= SCAN_AFTER;
        if look {
            slots.since_scan = 0;
        }
        if look && self.class.cycle_passed(lua) {
            let Slots {
                entries,
                free,
                listed,
                dead,
                ..
            } = &mut *slots;
            self.class.collected(lua, listed, dead);
            for slot in dead.drain(..) {
                let entry = &mut entries[slot as usize];
                // Nothing borrows a collected object's value; if something
                // did, the value goes when the slot is next given one.
                if let Ok(mut value) = entry.value.try_borrow_mut() {
                    *value = None;
                }
                entry.generation = entry.generation.wrapping_add(1);
                free.push(slot);
            }
        }
        let slot = match slots.free.pop() {
            Some(slot) => slot,
            None => {
                slots.entries.push(Entry {
                    value: Rc::new(RefCell::new(None)),
                    generation: 0,
                });
                (slots.entries.len() - 1) as u32
            }
        };
        let entry = &slots.entries[slot as usize];
        let shared = entry.value.clone();
        let id = ObjectId {
            slot,
            generation: entry.generation,
        };
        drop(slots);
        match shared.try_borrow_mut() {
            Ok(mut held) => *held = Some(value),
            Err(_) => unreachable_borrow(),
        }
        Reserved {
            objects: self.clone(),
            id,
            value: shared,
            made: false,
        }
    }

    /// Frees a slot whose object was never made.
    fn release(&self, slot: u32) {
        let mut slots = self.slots.borrow_mut();
        let entry = &mut slots.entries[slot as usize];
        if let Ok(mut value) = entry.value.try_borrow_mut() {
            *value = None;
        }
        entry.generation = entry.generation.wrapping_add(1);
        slots.free.push(slot);
    }

    /// Makes an object of `value` onto `thread`'s stack.
    pub(super) fn push(self: &Rc<Self>, lua: &Lua, thread: &Thread, value: T) -> mlua::Result<()> {
        self.reserve(lua, value).push(thread).map(|_| ())
    }

    /// What their objects are recognised by.
    pub(super) fn class(&self) -> &ObjectClass {
        &self.class
    }

    /// The value of the object holding `id`.
    pub(super) fn value_of_id(&self, id: ObjectId) -> Option<Shared<T>> {
        let slots = self.slots.borrow();
        let entry = slots.entries.get(id.slot as usize)?;
        (entry.generation == id.generation).then(|| entry.value.clone())
    }

    /// The value of `object`, if it is one of these objects.
    fn value_of(&self, lua: &Lua, object: &AnyUserData) -> Option<Shared<T>> {
        self.value_of_id(self.class.id_of(lua, object)?)
    }
}

/// A slot just taken from the free list (or made) is not borrowed.
fn unreachable_borrow() {
    tracing::error!("a fresh object's slot was borrowed while being given a value");
}

/// Sets up the fresh request and response objects of a worker VM (before
/// any route runs).
pub(super) fn install(lua: &Lua) -> mlua::Result<()> {
    let requests = class::<LuaRequest>(lua, "LuaRequest")?;
    let responses = class::<LuaResponse>(lua, "LuaResponse")?;
    lua.set_app_data(requests);
    lua.set_app_data(responses);
    Ok(())
}

fn class<T: UserData + 'static>(lua: &Lua, name: &str) -> mlua::Result<Rc<FreshObjects<T>>> {
    let mut methods = Methods::<T> {
        lua,
        methods: lua.create_table()?,
        metatable: lua.create_table()?,
        error: None,
        _type: std::marker::PhantomData,
    };
    T::add_methods(&mut methods);
    if let Some(error) = methods.error {
        return Err(error);
    }
    methods.metatable.raw_set("__index", methods.methods)?;
    methods.metatable.raw_set("__name", name)?;
    methods.metatable.raw_set("__metatable", false)?;
    Ok(Rc::new(FreshObjects {
        class: ObjectClass::new(lua, methods.metatable)?,
        slots: RefCell::new(Slots {
            entries: Vec::new(),
            free: Vec::new(),
            listed: Vec::new(),
            dead: Vec::new(),
            since_scan: 0,
        }),
    }))
}

pub(super) fn objects_of<T: 'static>(lua: &Lua) -> Option<Rc<FreshObjects<T>>> {
    lua.app_data_ref::<Rc<FreshObjects<T>>>().map(|o| o.clone())
}

/// Pushes a fresh response object of `response` onto `thread`'s stack
/// (a coroutine that is not running); how many values (1).
pub(super) fn push_response(
    lua: &Lua,
    thread: &Thread,
    response: LuaResponse,
) -> mlua::Result<std::ffi::c_int> {
    match objects_of::<LuaResponse>(lua) {
        Some(objects) => objects.push(lua, thread, response).map(|()| 1),
        None => raw::push_values(lua, thread, response),
    }
}

/// `f` of the value of `object`, a request or response object of either
/// kind; an error for anything else.
fn with_object<T: UserData + 'static, R>(
    lua: &Lua,
    object: &AnyUserData,
    f: impl FnOnce(&T) -> R,
) -> mlua::Result<R> {
    let mlua_error = match object.borrow::<T>() {
        Ok(value) => return Ok(f(&value)),
        Err(e) => e,
    };
    let Some(shared) = objects_of::<T>(lua).and_then(|o| o.value_of(lua, object)) else {
        return Err(mlua_error);
    };
    let held = shared
        .try_borrow()
        .map_err(|_| mlua::Error::UserDataBorrowError)?;
    let value = held.as_ref().ok_or(mlua::Error::UserDataDestructed)?;
    Ok(f(value))
}

fn with_object_mut<T: UserData + 'static, R>(
    lua: &Lua,
    object: &AnyUserData,
    f: impl FnOnce(&mut T) -> R,
) -> mlua::Result<R> {
    let mlua_error = match object.borrow_mut::<T>() {
        Ok(mut value) => return Ok(f(&mut value)),
        Err(e) => e,
    };
    let Some(shared) = objects_of::<T>(lua).and_then(|o| o.value_of(lua, object)) else {
        return Err(mlua_error);
    };
    let mut held = shared
        .try_borrow_mut()
        .map_err(|_| mlua::Error::UserDataBorrowMutError)?;
    let value = held.as_mut().ok_or(mlua::Error::UserDataDestructed)?;
    Ok(f(value))
}

/// `f` of the request `object` holds (any request object).
pub fn with_request<R>(
    lua: &Lua,
    object: &AnyUserData,
    f: impl FnOnce(&LuaRequest) -> R,
) -> mlua::Result<R> {
    with_object(lua, object, f)
}

/// `f` of the request `object` holds, to change it.
pub fn with_request_mut<R>(
    lua: &Lua,
    object: &AnyUserData,
    f: impl FnOnce(&mut LuaRequest) -> R,
) -> mlua::Result<R> {
    with_object_mut(lua, object, f)
}

/// `f` of the response `object` holds (any response object).
pub fn with_response<R>(
    lua: &Lua,
    object: &AnyUserData,
    f: impl FnOnce(&LuaResponse) -> R,
) -> mlua::Result<R> {
    with_object(lua, object, f)
}

/// `f` of the response `object` holds, to change it.
pub fn with_response_mut<R>(
    lua: &Lua,
    object: &AnyUserData,
    f: impl FnOnce(&mut LuaResponse) -> R,
) -> mlua::Result<R> {
    with_object_mut(lua, object, f)
}

/// Whether `object` is a request object (of either kind).
pub fn is_request(lua: &Lua, object: &AnyUserData) -> bool {
    super::objects::is_request(object) || with_request(lua, object, |_| ()).is_ok()
}

/// Whether `object` is a response object (of either kind).
pub fn is_response(lua: &Lua, object: &AnyUserData) -> bool {
    super::objects::is_response(object) || with_response(lua, object, |_| ()).is_ok()
}

/// Collects a type's methods (its `UserData` implementation, as mlua
/// serves its own objects) as Lua functions that find their `self` among
/// the fresh objects.
struct Methods<'a, T> {
    lua: &'a Lua,
    methods: mlua::Table,
    metatable: mlua::Table,
    error: Option<mlua::Error>,
    _type: std::marker::PhantomData<T>,
}

impl<T: 'static> Methods<'_, T> {
    fn keep(&mut self, meta: bool, name: String, function: mlua::Result<mlua::Function>) {
        let table = if meta { &self.metatable } else { &self.methods };
        if let Err(e) = function.and_then(|f| table.raw_set(name, f)) {
            self.error.get_or_insert(e);
        }
    }
}

/// The value of a method's `self`: a fresh object of type `T`.
fn this_of<T: 'static>(lua: &Lua, this: Option<Value>, method: &str) -> mlua::Result<Shared<T>> {
    let found = match this {
        Some(Value::UserData(object)) => {
            objects_of::<T>(lua).and_then(|o| o.value_of(lua, &object))
        }
        _ => None,
    };
    found.ok_or_else(|| {
        mlua::Error::runtime(format!(
            "{method}: called without its object (use obj:{method}(...))"
        ))
    })
}

fn call_ref<T: 'static, A: FromLuaMulti, R>(
    lua: &Lua,
    mut args: MultiValue,
    name: &str,
    f: impl FnOnce(&Lua, &T, A) -> mlua::Result<R>,
) -> mlua::Result<R> {
    let this = this_of::<T>(lua, args.pop_front(), name)?;
    let args = A::from_lua_multi(args, lua)?;
    let held = this
        .try_borrow()
        .map_err(|_| mlua::Error::UserDataBorrowError)?;
    let value = held.as_ref().ok_or(mlua::Error::UserDataDestructed)?;
    f(lua, value, args)
}

fn call_mut<T: 'static, A: FromLuaMulti, R>(
    lua: &Lua,
    mut args: MultiValue,
    name: &str,
    f: impl FnOnce(&Lua, &mut T, A) -> mlua::Result<R>,
) -> mlua::Result<R> {
    let this = this_of::<T>(lua, args.pop_front(), name)?;
    let args = A::from_lua_multi(args, lua)?;
    let mut held = this
        .try_borrow_mut()
        .map_err(|_| mlua::Error::UserDataBorrowMutError)?;
    let value = held.as_mut().ok_or(mlua::Error::UserDataDestructed)?;
    f(lua, value, args)
}

impl<T: 'static> Methods<'_, T> {
    /// Keeps `method` (of `&T`) as a Lua function named `name`; `meta`
    /// for the metatable.
    fn keep_ref<M, A, R>(&mut self, meta: bool, name: String, method: M)
    where
        M: Fn(&Lua, &T, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let label = name.clone();
        let function = self
            .lua
            .create_function(move |lua, args: MultiValue| call_ref(lua, args, &label, &method));
        self.keep(meta, name, function);
    }

    /// [`keep_ref`](Self::keep_ref) for a method of `&mut T`.
    fn keep_mut<M, A, R>(&mut self, meta: bool, name: String, mut method: M)
    where
        M: FnMut(&Lua, &mut T, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let label = name.clone();
        let function = self.lua.create_function_mut(move |lua, args: MultiValue| {
            call_mut(lua, args, &label, &mut method)
        });
        self.keep(meta, name, function);
    }
}

impl<T: 'static> UserDataMethods<T> for Methods<'_, T> {
    fn add_method<M, A, R>(&mut self, name: impl Into<String>, method: M)
    where
        M: Fn(&Lua, &T, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        self.keep_ref(false, name.into(), method);
    }

    fn add_method_mut<M, A, R>(&mut self, name: impl Into<String>, method: M)
    where
        M: FnMut(&Lua, &mut T, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        self.keep_mut(false, name.into(), method);
    }

    fn add_function<F, A, R>(&mut self, name: impl Into<String>, function: F)
    where
        F: Fn(&Lua, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let function = self.lua.create_function(function);
        self.keep(false, name.into(), function);
    }

    fn add_function_mut<F, A, R>(&mut self, name: impl Into<String>, function: F)
    where
        F: FnMut(&Lua, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let function = self.lua.create_function_mut(function);
        self.keep(false, name.into(), function);
    }

    fn add_meta_method<M, A, R>(&mut self, name: impl Into<String>, method: M)
    where
        M: Fn(&Lua, &T, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        self.keep_ref(true, name.into(), method);
    }

    fn add_meta_method_mut<M, A, R>(&mut self, name: impl Into<String>, method: M)
    where
        M: FnMut(&Lua, &mut T, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        self.keep_mut(true, name.into(), method);
    }

    fn add_meta_function<F, A, R>(&mut self, name: impl Into<String>, function: F)
    where
        F: Fn(&Lua, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let function = self.lua.create_function(function);
        self.keep(true, name.into(), function);
    }

    fn add_meta_function_mut<F, A, R>(&mut self, name: impl Into<String>, function: F)
    where
        F: FnMut(&Lua, A) -> mlua::Result<R> + 'static,
        A: FromLuaMulti,
        R: IntoLuaMulti,
    {
        let function = self.lua.create_function_mut(function);
        self.keep(true, name.into(), function);
    }
}
