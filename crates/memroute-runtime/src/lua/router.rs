//! `mcp.router_new{}`: memcached's key router for funcgens, read from Lua.
//!
//! The lookup itself is the route tree's ([`crate::route::router`]): a part
//! of the key (before `stop` in `"prefix"` mode, between a leading `start`
//! and `stop` in `"anchor"` mode) picks a map entry, a funcgen or a command
//! map (`{[mcp.CMD_GET] = fgen, [mcp.CMD_ANY_STORAGE] = fgen}`); a key with
//! no entry goes to `cmap`'s funcgen for its command, then to `default`.
//! This module checks the options and builds that table over funcgens.

use std::collections::HashMap;
use std::rc::Rc;

use mlua::{Table, UserData, Value};

use super::funcgen::{funcgen_of, Funcgen};
use super::objects::{CMD_ANY_STORAGE, COMMANDS};
use crate::route::router::{RouterEntry, RouterMode, RouterTable, MAX_SEPARATOR};

/// The Lua object of a router.
#[derive(Clone)]
pub struct LuaRouter(pub Rc<RouterTable<Funcgen>>);
impl UserData for LuaRouter {}

/// `mcp.router_new{ map =, cmap =, mode =, start =, stop =, default = }`.
pub fn router_new(opts: &Table) -> mlua::Result<LuaRouter> {
    let mut map = HashMap::new();
    let mut by_command = HashMap::new();
    let mut default = None;
    let mut mode_name = "prefix".to_string();
    let (mut start, mut stop) = (None, None);
    for pair in opts.pairs::<String, Value>() {
        let (option, value) = pair?;
        match option.as_str() {
            "map" => {
                let Value::Table(t) = value else {
                    return Err(mlua::Error::runtime(
                        "Must pass a table to map argument of router_new",
                    ));
                };
                for pair in t.pairs::<Value, Value>() {
                    let (key, value) = pair?;
                    let Value::String(key) = key else {
                        return Err(mlua::Error::runtime(
                            "mcp.router_new: map keys must be strings",
                        ));
                    };
                    let entry = match &value {
                        Value::Table(commands) => RouterEntry::ByCommand(command_map(commands)?),
                        other => RouterEntry::All(ready_funcgen(other, "map")?),
                    };
                    map.insert(key.as_bytes().to_vec(), entry);
                }
            }
            "cmap" => {
                let Value::Table(t) = value else {
                    return Err(mlua::Error::runtime(
                        "mcp.router_new: cmap must be a table of commands to funcgens",
                    ));
                };
                by_command = command_map(&t)?;
            }
            "mode" => {
                let Value::String(s) = value else {
                    return Err(mlua::Error::runtime(
                        "unknown type passed to mcp.router_new",
                    ));
                };
                mode_name = s.to_str()?.to_string();
            }
            "start" => start = Some(separator(value, "start")?),
            "stop" => stop = Some(separator(value, "stop")?),
            "default" => default = Some(ready_funcgen(&value, "default")?),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "mcp.router_new: unknown option '{other}' \
                     (map, cmap, mode, start, stop, default)"
                )))
            }
        }
    }
    let mode = match mode_name.as_str() {
        "prefix" => RouterMode::Prefix {
            stop: stop.unwrap_or_else(|| b"/".to_vec()),
        },
        "anchor" => match (start, stop) {
            (None, None) => RouterMode::Anchor {
                start: b"/".to_vec(),
                stop: b"/".to_vec(),
            },
            (Some(start), Some(stop)) => RouterMode::Anchor { start, stop },
            _ => {
                return Err(mlua::Error::runtime(
                    "must specify start and stop if mode is anchor in mcp.router_new",
                ))
            }
        },
        _ => {
            return Err(mlua::Error::runtime(
                "unknown type passed to mcp.router_new",
            ))
        }
    };
    Ok(LuaRouter(Rc::new(RouterTable {
        mode,
        map,
        by_command,
        default,
    })))
}

/// A `start` or `stop` option: 1 to [`MAX_SEPARATOR`] bytes.
fn separator(value: Value, option: &str) -> mlua::Result<Vec<u8>> {
    let Value::String(s) = value else {
        return Err(mlua::Error::runtime(format!(
            "must pass a string to {option} in mcp.router_new"
        )));
    };
    let bytes = s.as_bytes().to_vec();
    if bytes.is_empty() {
        return Err(mlua::Error::runtime(format!(
            "must pass a non-zero length string to {option} in mcp.router_new"
        )));
    }
    if bytes.len() > MAX_SEPARATOR {
        return Err(mlua::Error::runtime(format!(
            "{option} is too long in mcp.router_new"
        )));
    }
    Ok(bytes)
}

/// A funcgen given to a router, which must be ready to make slots.
fn ready_funcgen(value: &Value, option: &str) -> mlua::Result<Rc<Funcgen>> {
    let fgen = funcgen_of(value).ok_or_else(|| {
        mlua::Error::runtime(format!(
            "mcp.router_new: {option} entries must be funcgens (mcp.funcgen_new)"
        ))
    })?;
    if !fgen.is_ready() {
        return Err(mlua::Error::runtime(format!(
            "mcp.router_new: a funcgen in {option} was not made ready (fgen:ready{{}})"
        )));
    }
    Ok(fgen)
}

/// `{[mcp.CMD_*] = fgen, ...}`: a command's funcgen; `mcp.CMD_ANY_STORAGE`
/// serves the commands not listed.
fn command_map(table: &Table) -> mlua::Result<HashMap<i64, Rc<Funcgen>>> {
    let mut commands = HashMap::new();
    for pair in table.pairs::<Value, Value>() {
        let (command, fgen) = pair?;
        let Value::Integer(command) = command else {
            return Err(mlua::Error::runtime(
                "Non integer key in router command map in router_new",
            ));
        };
        if command != CMD_ANY_STORAGE && !COMMANDS.iter().any(|(_, id)| *id == command) {
            return Err(mlua::Error::runtime(
                "Bad command in router command map in router_new",
            ));
        }
        commands.insert(command, ready_funcgen(&fgen, "a command map")?);
    }
    Ok(commands)
}
