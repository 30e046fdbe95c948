//! `mcp.log_req` and `mcp.log_reqsample` (worker VMs): a request and the
//! response it got, as a `type=proxy_req` line for `watch proxyreqs`
//! readers (see [`crate::watch`]).
//!
//! As in memcached, both return at once, without looking at their
//! arguments, while nobody watches `proxyreqs`: a route may call them on
//! every request at the cost of one atomic load.

use mlua::{AnyUserData, Lua, Table, Value};

use super::objects::LuaResponse;
use crate::watch::{self, ProxyReq};

/// Adds `mcp.log_req` and `mcp.log_reqsample` to a worker VM's `mcp`.
pub fn register(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    // mcp.log_req(r, res[, detail[, cfd]])
    mcp.set(
        "log_req",
        lua.create_function(|lua, args: mlua::MultiValue| {
            if !watch::enabled(watch::PROXYREQS) {
                return Ok(());
            }
            let args: Vec<Value> = args.into_iter().collect();
            log_request(lua, "mcp.log_req", &args, |_, _| true)
        })?,
    )?;
    // mcp.log_reqsample(ms, rate, allerrors, r, res[, detail[, cfd]])
    mcp.set(
        "log_reqsample",
        lua.create_function(|lua, args: mlua::MultiValue| {
            if !watch::enabled(watch::PROXYREQS) {
                return Ok(());
            }
            let args: Vec<Value> = args.into_iter().collect();
            let name = "mcp.log_reqsample";
            let deadline = integer_arg(name, &args, 0, "milliseconds")?;
            let rate = integer_arg(name, &args, 1, "rate")?;
            let errors = !matches!(
                args.get(2),
                None | Some(Value::Nil) | Some(Value::Boolean(false))
            );
            log_request(
                lua,
                name,
                &args[3.min(args.len())..],
                |response, elapsed| {
                    watch::sampled(
                        deadline.max(0) as u64,
                        rate.max(0) as u64,
                        errors,
                        response,
                        elapsed,
                    )
                },
            )
        })?,
    )?;
    Ok(())
}

/// A Lua error of a route, a callback or a slot generator to `watch
/// proxyevents` (`type=proxy_error msg=...`), as memcached logs it: the
/// error value's text, without mlua's wording or the traceback.
pub(crate) fn proxy_error(error: &mlua::Error) {
    if watch::enabled(watch::PROXYEVENTS) {
        watch::proxy_error(&error_text(error));
    }
}

fn error_text(error: &mlua::Error) -> String {
    match error {
        mlua::Error::CallbackError { cause, .. } => error_text(cause),
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", error_text(cause)),
        mlua::Error::RuntimeError(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Logs `(r, res, detail, cfd)` if `keep(response, elapsed)` says so.
fn log_request(
    lua: &Lua,
    name: &str,
    args: &[Value],
    keep: impl FnOnce(Option<&memroute_proto::Response>, u64) -> bool,
) -> mlua::Result<()> {
    let request = match args.first() {
        Some(Value::UserData(ud)) => {
            super::fresh::with_request(lua, ud, |r| r.request.clone()).ok()
        }
        _ => None,
    }
    .ok_or_else(|| mlua::Error::runtime(format!("{name}: expected a request object")))?;
    let response = match args.get(1) {
        Some(Value::UserData(ud)) => Some(response_of(lua, name, ud)?),
        None | Some(Value::Nil) => None,
        Some(_) => {
            return Err(mlua::Error::runtime(format!(
                "{name}: expected a response object or nil"
            )))
        }
    };
    let detail = match args.get(2) {
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        Some(Value::Integer(i)) => i.to_string().into_bytes(),
        Some(Value::Number(n)) => n.to_string().into_bytes(),
        None | Some(Value::Nil) => Vec::new(),
        Some(_) => {
            return Err(mlua::Error::runtime(format!(
                "{name}: detail must be a string"
            )))
        }
    };
    let cfd = match args.get(3) {
        Some(Value::Integer(i)) => *i,
        Some(Value::Number(n)) if n.fract() == 0.0 => *n as i64,
        None | Some(Value::Nil) => 0,
        Some(_) => {
            return Err(mlua::Error::runtime(format!(
                "{name}: cfd must be an integer"
            )))
        }
    };
    let elapsed = response.as_ref().map_or(0, |r| r.elapsed_us);
    if !keep(response.as_ref().map(|r| &r.response), elapsed) {
        return Ok(());
    }
    let backend = response.as_ref().and_then(|r| r.backend.clone());
    watch::log_proxy_req(&ProxyReq {
        elapsed_us: elapsed,
        response: response.as_ref().map(|r| &r.response),
        backend: backend.as_deref().map(|b| (b.host.as_str(), b.port)),
        cfd,
        detail: &detail,
        request_line: request.raw_line(),
    });
    Ok(())
}

fn response_of(lua: &Lua, name: &str, ud: &AnyUserData) -> mlua::Result<LuaResponse> {
    super::fresh::with_response(lua, ud, LuaResponse::clone)
        .map_err(|_| mlua::Error::runtime(format!("{name}: expected a response object or nil")))
}

fn integer_arg(name: &str, args: &[Value], index: usize, what: &str) -> mlua::Result<i64> {
    match args.get(index) {
        Some(Value::Integer(i)) => Ok(*i),
        Some(Value::Number(n)) if n.fract() == 0.0 => Ok(*n as i64),
        _ => Err(mlua::Error::runtime(format!(
            "{name}: {what} must be an integer"
        ))),
    }
}
