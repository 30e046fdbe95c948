//! memcached's rate limiters for Lua: `mcp.ratelim_tbf{limit=, fillrate=,
//! tickrate=}` in worker VMs (a bucket of that worker's own) and
//! `mcp.ratelim_global_tbf{...}` in the config VM (one bucket every worker
//! shares). Both are called as `lim(tokens)` and answer whether the tokens
//! were taken. The buckets themselves are `crate::route::ratelim`'s.
//!
//! A global bucket crosses from the config VM to the worker VMs the way a
//! pool does: as a [`ConfigValue`](super::ConfigValue) anywhere in what
//! `mcp_config_pools` returns, given to each worker as an object over the
//! same shared bucket.

use std::sync::Arc;

use mlua::{Lua, MetaMethod, Table, UserData, UserDataMethods, Value};

use crate::route::ratelim::{GlobalTokenBucket, TbfParams, TokenBucket};

/// `mcp.ratelim_tbf{...}` in a worker VM.
pub struct LuaTokenBucket(TokenBucket);

impl UserData for LuaTokenBucket {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Call, |_, this, tokens: Value| {
            Ok(this.0.take(tokens_of(tokens)?))
        });
    }
}

/// `mcp.ratelim_global_tbf{...}` in the config VM: not callable there
/// (as in memcached); it is there to be returned to the workers.
#[derive(Clone)]
pub struct GlobalBucketHandle(pub Arc<GlobalTokenBucket>);

impl UserData for GlobalBucketHandle {}

/// A global bucket as a worker VM sees it.
pub struct LuaGlobalBucket(pub Arc<GlobalTokenBucket>);

impl UserData for LuaGlobalBucket {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Call, |_, this, tokens: Value| {
            Ok(this.0.take(tokens_of(tokens)?))
        });
    }
}

/// The argument of `lim(tokens)`: a whole number (memcached checks for a
/// number and truncates a fraction to 0, which here is an error).
fn tokens_of(value: Value) -> mlua::Result<i64> {
    match value {
        Value::Integer(n) => Ok(n),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(n as i64),
        Value::Number(_) => Err(mlua::Error::runtime(
            "rate limiter: the number of tokens must be a whole number",
        )),
        other => Err(mlua::Error::runtime(format!(
            "rate limiter: expected a number of tokens, got {}",
            other.type_name()
        ))),
    }
}

/// A bucket's settings from `{limit =, fillrate =, tickrate =}`. As in
/// memcached a missing `limit` or `fillrate` is 0 and each must fit an
/// unsigned 32-bit integer (memcached's message, which names
/// `mcp.ratelim_tbf` for both constructors); memroute also refuses an
/// unknown field, a value that is not a whole number (memcached would
/// read 0), and a `tickrate` below 1 (memcached would divide by 0).
fn params(who: &str, opts: Value) -> mlua::Result<TbfParams> {
    let Value::Table(opts) = opts else {
        return Err(mlua::Error::runtime(format!(
            "{who}: expected a table {{limit =, fillrate =, tickrate =}}"
        )));
    };
    let range =
        || mlua::Error::runtime("mcp.ratelim_tbf: arguments must be unsigned 32 bit integer");
    let (mut limit, mut fill, mut tick) = (0, 0, 0);
    for pair in opts.pairs::<Value, Value>() {
        let (key, value) = pair?;
        let name = match &key {
            Value::String(s) => s.to_string_lossy(),
            other => format!("{other:?}"),
        };
        let n = match value {
            Value::Integer(n) => n,
            Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => n as i64,
            Value::String(s) => s.to_str()?.trim().parse::<i64>().map_err(|_| range())?,
            _ => return Err(range()),
        };
        match name.as_str() {
            "limit" => limit = n,
            "fillrate" => fill = n,
            "tickrate" => tick = n,
            other => {
                return Err(mlua::Error::runtime(format!(
                    "{who}: unknown option '{other}' (limit, fillrate, tickrate)"
                )))
            }
        }
    }
    TbfParams::new(limit, fill, tick).map_err(|e| {
        // The range message is memcached's own, naming mcp.ratelim_tbf.
        let who = if e.starts_with("arguments") {
            "mcp.ratelim_tbf"
        } else {
            who
        };
        mlua::Error::runtime(format!("{who}: {e}"))
    })
}

/// `mcp.ratelim_tbf` for a worker VM.
pub fn register_worker(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    mcp.set(
        "ratelim_tbf",
        lua.create_function(|_, opts: Value| {
            Ok(LuaTokenBucket(TokenBucket::new(params(
                "mcp.ratelim_tbf",
                opts,
            )?)))
        })?,
    )
}

/// `mcp.ratelim_global_tbf` for the config VM.
pub fn register_config(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    mcp.set(
        "ratelim_global_tbf",
        lua.create_function(|_, opts: Value| {
            Ok(GlobalBucketHandle(Arc::new(GlobalTokenBucket::new(
                params("mcp.ratelim_global_tbf", opts)?,
            ))))
        })?,
    )
}
