//! Route handlers written in Lua inside a routelib tree (routelib's
//! `register_route_handlers`), built on each worker.
//!
//! This module owns turning a planned user handler
//! ([`RoutePlan::User`](crate::route::plan::RoutePlan)) into a node of the
//! native route tree: its children, already built natively, become pool
//! objects (`fgen:new_handle` takes them), its options (as the config VM's
//! `route_<name>_conf` returned them) become a Lua table with each child in
//! its place, and the handler library's `route_<name>_start(args, ctx,
//! fgen)` makes the funcgen, which is attached as a [`FuncgenRoute`]. The
//! VM is one per worker and configuration, made only when the tree has
//! such handlers; a mistake in `_start` fails the load (or the reload)
//! with the handler's name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use mlua::{Function, Lua, Table, Value};

use super::config::{lua_error_message, ConfigValue, PoolDef};
use super::funcgen::{FuncgenRoute, LuaFuncgen};
use super::routelib::USER_CHILD;
use super::worker::{to_lua, LuaPool, WorkerLua};
use crate::route::handlers::ErrorRoute;
use crate::route::plan::{UserArgs, UserHandlers};
use crate::route::pool::RouteAsPool;
use crate::route::{Route, WorkerRoutes};

/// Builds a worker's user handlers in its handler VM; the first failure
/// is kept for the load to report.
pub struct LuaHandlers {
    vm: Rc<WorkerLua>,
    routes: Rc<WorkerRoutes>,
    failure: RefCell<Option<String>>,
}

impl LuaHandlers {
    pub fn new(vm: Rc<WorkerLua>, routes: Rc<WorkerRoutes>) -> LuaHandlers {
        LuaHandlers {
            vm,
            routes,
            failure: RefCell::new(None),
        }
    }

    /// The first handler that could not be built, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    fn try_build(
        &self,
        name: &str,
        label: &str,
        command: i64,
        args: &UserArgs,
        children: Vec<Rc<dyn Route>>,
    ) -> Result<Rc<dyn Route>, String> {
        let lua = self.vm.lua();
        let lua_err = |e: mlua::Error| format!("route_{name}: {}", lua_error_message(&e));
        let Some(args) = args.0.downcast_ref::<ConfigValue>() else {
            return Err(format!("route_{name}: options of an unknown kind"));
        };
        let mut pools: HashMap<*const PoolDef, mlua::AnyUserData> = HashMap::new();
        let env = self.vm_env();
        let table = match to_lua(lua, args, &env, &self.routes, &mut pools).map_err(lua_err)? {
            Value::Table(t) => t,
            _ => lua.create_table().map_err(lua_err)?,
        };
        let handles = children
            .into_iter()
            .enumerate()
            .map(|(i, route)| {
                let pool = RouteAsPool {
                    name: format!("{label}/route_{name}/child{i}"),
                    route,
                };
                LuaPool::object(lua, Rc::new(pool))
            })
            .collect::<mlua::Result<Vec<_>>>()
            .map_err(lua_err)?;
        place_children(&table, &handles).map_err(lua_err)?;
        let start: Function = lua
            .globals()
            .get::<Option<Function>>(format!("route_{name}_start"))
            .map_err(lua_err)?
            .ok_or_else(|| {
                format!(
                    "route_{name}: no function route_{name}_start on the workers (load the \
                     handler library with -o proxy_config=routelib:LIBRARY.lua)"
                )
            })?;
        let ctx = context(lua, label, command).map_err(lua_err)?;
        let mcp: Table = lua.globals().get("mcp").map_err(lua_err)?;
        let funcgen_new: Function = mcp.get("funcgen_new").map_err(lua_err)?;
        let fgen: Value = funcgen_new.call(()).map_err(lua_err)?;
        start
            .call::<()>((table, ctx, fgen.clone()))
            .map_err(|e| format!("route_{name}_start: {}", lua_error_message(&e)))?;
        let ready = match &fgen {
            Value::UserData(ud) => ud.borrow::<LuaFuncgen>().is_ok_and(|f| f.0.is_ready()),
            _ => false,
        };
        if !ready {
            return Err(format!(
                "route_{name}_start: it must call fgen:ready{{ f = ..., a = ... }}"
            ));
        }
        match FuncgenRoute::from_value(&fgen, self.vm.clone()) {
            Ok(Some(route)) => Ok(route),
            Ok(None) => Err(format!("route_{name}_start: no funcgen")),
            Err(e) => Err(format!("route_{name}_start: {}", lua_error_message(&e))),
        }
    }

    fn vm_env(&self) -> Rc<crate::route::RouteEnv> {
        self.vm
            .lua()
            .app_data_ref::<Rc<crate::route::RouteEnv>>()
            .map(|e| e.clone())
            .expect("the handler VM is made with its worker's environment")
    }
}

impl UserHandlers for LuaHandlers {
    fn build(
        &self,
        name: &str,
        label: &str,
        command: i64,
        args: &UserArgs,
        children: Vec<Rc<dyn Route>>,
    ) -> Rc<dyn Route> {
        match self.try_build(name, label, command, args, children) {
            Ok(route) => route,
            Err(message) => {
                self.failure.borrow_mut().get_or_insert(message);
                Rc::new(ErrorRoute::new("route handler failed to build"))
            }
        }
    }
}

/// Puts each child's pool object where the planner left `{ __child = i }`:
/// an option named `child*` itself, or an entry of a table there.
fn place_children(args: &Table, handles: &[mlua::AnyUserData]) -> mlua::Result<()> {
    let slot = |value: &Value| -> mlua::Result<Option<mlua::AnyUserData>> {
        let Value::Table(t) = value else {
            return Ok(None);
        };
        let key = std::str::from_utf8(USER_CHILD).unwrap_or("__child");
        match t.raw_get::<Option<i64>>(key)? {
            Some(i) => Ok(handles.get(i as usize).cloned()),
            None => Ok(None),
        }
    };
    for pair in args.clone().pairs::<Value, Value>() {
        let (key, value) = pair?;
        let is_child = matches!(&key, Value::String(k) if k.as_bytes().starts_with(b"child"));
        if !is_child {
            continue;
        }
        if let Some(handle) = slot(&value)? {
            args.raw_set(key, handle)?;
            continue;
        }
        if let Value::Table(list) = &value {
            for entry in list.clone().pairs::<Value, Value>() {
                let (k, v) = entry?;
                if let Some(handle) = slot(&v)? {
                    list.raw_set(k, handle)?;
                }
            }
        }
    }
    Ok(())
}

/// routelib's worker-side `ctx`: `ctx:label()`, and `ctx:cmd()`, the
/// command the handler's tree is built for (routelib builds a tree per
/// command of a `cmdmap{}` or `cmap`; `CMD_ANY_STORAGE` elsewhere).
fn context(lua: &Lua, label: &str, command: i64) -> mlua::Result<Table> {
    let ctx = lua.create_table()?;
    let label = label.to_string();
    ctx.set(
        "label",
        lua.create_function(move |_, _: Value| Ok(label.clone()))?,
    )?;
    ctx.set("cmd", lua.create_function(move |_, _: Value| Ok(command))?)?;
    Ok(ctx)
}
