//! The objects routes work with: requests (`r:key()`, `r:token(n)`...) and
//! responses (`res:hit()`, `res:code()`...), and the constants that name
//! commands, await modes and response codes. Names and semantics follow
//! memcached's proxy.

use std::sync::Arc;

use bytes::Bytes;
use memroute_proto::{Command, Limits, MetaOp, Request, Response, ResponseCode};
use mlua::{Lua, UserData, UserDataMethods, Value};

use crate::backend::BackendConfig;

pub use crate::route::commands::{
    command_id, CMD_ANY, CMD_ANY_STORAGE, CMD_SET, COMMANDS, COMMAND_SLOTS, STORAGE_IDS,
    UNHOOKABLE_IDS,
};

/// `mcp.AWAIT_GOOD`: count results that are not errors and not misses.
pub const AWAIT_GOOD: i64 = 0;
/// `mcp.AWAIT_ANY`: count every result.
pub const AWAIT_ANY: i64 = 1;
/// `mcp.AWAIT_OK`: count results that are not errors (misses count).
pub const AWAIT_OK: i64 = 2;
/// `mcp.AWAIT_FIRST`: wait for, and return, only the first pool's result.
pub const AWAIT_FIRST: i64 = 3;
/// `mcp.AWAIT_FASTGOOD`: return at the first good result, else as OK.
pub const AWAIT_FASTGOOD: i64 = 4;
/// `mcp.AWAIT_BACKGROUND`: return an empty table at once.
pub const AWAIT_BACKGROUND: i64 = 5;

/// `mcp.AWAIT_*` modes of `mcp.await`.
pub const AWAIT_MODES: &[(&str, i64)] = &[
    ("AWAIT_GOOD", AWAIT_GOOD),
    ("AWAIT_ANY", AWAIT_ANY),
    ("AWAIT_OK", AWAIT_OK),
    ("AWAIT_FIRST", AWAIT_FIRST),
    ("AWAIT_FASTGOOD", AWAIT_FASTGOOD),
    ("AWAIT_BACKGROUND", AWAIT_BACKGROUND),
];

/// `mcp.MCMC_CODE_*`, what `res:code()` returns.
pub const RESPONSE_CODES: &[(&str, i64)] = &[
    ("MCMC_CODE_STORED", 0),
    ("MCMC_CODE_EXISTS", 1),
    ("MCMC_CODE_DELETED", 2),
    ("MCMC_CODE_TOUCHED", 3),
    ("MCMC_CODE_VERSION", 4),
    ("MCMC_CODE_NOT_FOUND", 5),
    ("MCMC_CODE_NOT_STORED", 6),
    ("MCMC_CODE_OK", 7),
    ("MCMC_CODE_NOP", 8),
    ("MCMC_CODE_END", 9),
    ("MCMC_CODE_ERROR", 10),
    ("MCMC_CODE_CLIENT_ERROR", 11),
    ("MCMC_CODE_SERVER_ERROR", 12),
];

fn mcmc_code(code: ResponseCode) -> i64 {
    use ResponseCode::*;
    match code {
        Stored => 0,
        Exists | Ex => 1,
        Deleted => 2,
        Touched => 3,
        Version => 4,
        NotFound | Nf => 5,
        NotStored | Ns => 6,
        Value | Ok | Number | Stat | Hd | Va | Me => 7,
        Mn => 8,
        End | En => 9,
        Error => 10,
        ClientError => 11,
        ServerError => 12,
    }
}

/// A request as a route sees it. Rewriting methods (`token`, `ltrimkey`,
/// `flag_token` with a replacement) rebuild and re-parse the line, so the
/// request stays valid whatever the route does.
/// Whether `object` is a request object: a [`LuaRequest`], or one a
/// funcgen slot keeps (over an `Rc<RefCell<LuaRequest>>`, which mlua
/// serves with the same methods and borrows as a `LuaRequest`).
pub fn is_request(object: &mlua::AnyUserData) -> bool {
    object.is::<LuaRequest>() || object.is::<std::rc::Rc<std::cell::RefCell<LuaRequest>>>()
}

/// Whether `object` is a response object (see [`is_request`]).
pub fn is_response(object: &mlua::AnyUserData) -> bool {
    object.is::<LuaResponse>() || object.is::<std::rc::Rc<std::cell::RefCell<LuaResponse>>>()
}

pub struct LuaRequest {
    pub request: Request,
    /// The client certificate's common name, for a request made on a TLS
    /// connection whose client sent one (`r:tls_peer_cn()`).
    peer_cn: Option<std::rc::Rc<[u8]>>,
}

impl LuaRequest {
    /// A request object; made in the task of the client connection it
    /// serves, it carries that connection's TLS identity.
    pub fn new(request: Request) -> Self {
        LuaRequest {
            request,
            peer_cn: crate::tls::current_peer_cn(),
        }
    }

    /// The object now serves `request`, from the client connection whose
    /// task calls this (a funcgen slot's request object, reused).
    pub fn serve(&mut self, request: Request) {
        self.request = request;
        self.peer_cn = crate::tls::current_peer_cn();
    }

    /// A request object of no client connection (`rctx:request_new()`,
    /// which a slot keeps across the requests of many clients).
    pub fn detached(request: Request) -> Self {
        LuaRequest {
            request,
            peer_cn: None,
        }
    }

    fn tokens(&self) -> Vec<&[u8]> {
        self.request
            .raw_line()
            .split(|&b| b == b' ')
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Rebuilds the line from `tokens` and re-parses it.
    fn rebuild(&mut self, lua: &Lua, tokens: &[&[u8]]) -> mlua::Result<()> {
        let line = tokens.join(&b' ');
        let limits = lua
            .app_data_ref::<Limits>()
            .map(|l| l.clone())
            .unwrap_or_default();
        self.request = Request::parse(&line, self.request.value(), &limits).map_err(|e| {
            mlua::Error::runtime(format!(
                "request rewrite produced an invalid request ({e}): {}",
                String::from_utf8_lossy(&line)
            ))
        })?;
        Ok(())
    }

    fn key_index(&self) -> Option<usize> {
        match self.request.command() {
            Command::Get(g) if g.op.touches() => Some(2),
            Command::Get(_) | Command::Store(_) | Command::Arith(_) => Some(1),
            Command::Delete { .. } | Command::Touch { .. } | Command::Meta(_) => Some(1),
            _ => None,
        }
    }
}

fn bytes_arg(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Integer(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

impl UserData for LuaRequest {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("command", |_, this, ()| {
            Ok(command_id(this.request.command()))
        });
        methods.add_method("key", |lua, this, ()| match this.request.key() {
            Some(k) => Ok(Value::String(lua.create_string(k)?)),
            None => Ok(Value::Nil),
        });
        methods.add_method_mut("ltrimkey", |lua, this, n: usize| {
            trim_key(lua, this, n, true)
        });
        methods.add_method_mut("rtrimkey", |lua, this, n: usize| {
            trim_key(lua, this, n, false)
        });
        methods.add_method_mut("token", |lua, this, (n, new): (usize, Option<Value>)| {
            let tokens = this.tokens();
            if n == 0 || n > tokens.len() + usize::from(new.is_some()) {
                return Ok(Value::Nil);
            }
            let old = match tokens.get(n - 1) {
                Some(t) => Value::String(lua.create_string(t)?),
                None => Value::Nil,
            };
            if let Some(new) = new {
                let replacement = bytes_arg(&new).ok_or_else(|| {
                    mlua::Error::runtime("r:token: the new token must be a string")
                })?;
                this.set_token(lua, n - 1, &replacement)?;
            }
            Ok(old)
        });
        methods.add_method("token_int", |_, this, n: usize| {
            let tokens = this.tokens();
            Ok(n.checked_sub(1)
                .and_then(|i| tokens.get(i))
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|s| s.parse::<i64>().ok()))
        });
        methods.add_method("ntokens", |_, this, ()| Ok(this.tokens().len()));
        methods.add_method("has_flag", |_, this, flag: String| {
            let letter = single_flag(&flag)?;
            Ok(match this.request.command() {
                Command::Meta(m) => m.flags.has(letter),
                _ => false,
            })
        });
        methods.add_method_mut(
            "flag_token",
            |lua, this, (flag, replacement): (String, Option<Value>)| {
                let letter = single_flag(&flag)?;
                let Command::Meta(m) = this.request.command() else {
                    return Ok((false, Value::Nil));
                };
                if !m.flags.has(letter) {
                    return Ok((false, Value::Nil));
                }
                let old = match m.flags.token(letter) {
                    Some(t) if !t.is_empty() => Value::String(lua.create_string(t)?),
                    _ => Value::Nil,
                };
                if let Some(replacement) = replacement.as_ref().and_then(bytes_arg) {
                    if let Flag::At(i) = this.flag_index(letter) {
                        this.set_token(lua, i, &replacement)?;
                    }
                }
                Ok((true, old))
            },
        );
        // memcached's r:flag_token_int(flag): false without the flag; true
        // and the flag's token as an integer; only true when the token is
        // not one (or the flag has none).
        methods.add_method("flag_token_int", |_, this, flag: String| {
            let letter = single_flag(&flag)?;
            let Command::Meta(m) = this.request.command() else {
                return Ok((false, None));
            };
            if !m.flags.has(letter) {
                return Ok((false, None));
            }
            let value = m
                .flags
                .token(letter)
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(|t| t.parse::<i64>().ok());
            Ok((true, value))
        });
        // memcached's meta flag editors: each rewrites the line and
        // answers whether it did.
        methods.add_method_mut(
            "flag_add",
            |lua, this, (flag, token): (String, Option<Value>)| {
                let letter = single_flag(&flag)?;
                let token = flag_token_arg(token)?;
                match this.flag_index(letter) {
                    Flag::Absent => this.edit_flag(lua, None, Some((letter, &token))),
                    _ => Ok(false),
                }
            },
        );
        methods.add_method_mut(
            "flag_set",
            |lua, this, (flag, token): (String, Option<Value>)| {
                let letter = single_flag(&flag)?;
                let token = flag_token_arg(token)?;
                match this.flag_index(letter) {
                    Flag::At(i) => this.edit_flag(lua, Some(i), Some((letter, &token))),
                    Flag::Absent => this.edit_flag(lua, None, Some((letter, &token))),
                    Flag::NotMeta => Ok(false),
                }
            },
        );
        methods.add_method_mut(
            "flag_replace",
            |lua, this, (flag, new_flag, token): (String, String, Option<Value>)| {
                let letter = single_flag(&flag)?;
                let new_letter = single_flag(&new_flag)?;
                let token = flag_token_arg(token)?;
                match this.flag_index(letter) {
                    Flag::At(i) => this.edit_flag(lua, Some(i), Some((new_letter, &token))),
                    Flag::Absent => this.edit_flag(lua, None, Some((new_letter, &token))),
                    Flag::NotMeta => Ok(false),
                }
            },
        );
        methods.add_method_mut("flag_del", |lua, this, flag: String| {
            let letter = single_flag(&flag)?;
            match this.flag_index(letter) {
                Flag::At(i) => this.edit_flag(lua, Some(i), None),
                _ => Ok(false),
            }
        });
        methods.add_method("match_res", |lua, this, res: mlua::AnyUserData| {
            let response = super::fresh::with_response(lua, &res, |r| r.response.clone())?;
            match_response(lua, &this.request, &response)
        });
        methods.add_method("raw_line", |lua, this, ()| {
            lua.create_string(this.request.raw_line())
        });
        methods.add_method("raw_value", |lua, this, ()| {
            lua.create_string(this.request.value())
        });
        methods.add_method("vlen", |_, this, ()| Ok(this.request.value().len()));
        // memroute (memcached's proxy has it as rctx:tls_peer_cn()): the
        // common name of the client's TLS certificate; nil without TLS or
        // without a client certificate.
        methods.add_method("tls_peer_cn", |lua, this, ()| match &this.peer_cn {
            Some(cn) => Ok(Value::String(lua.create_string(cn)?)),
            None => Ok(Value::Nil),
        });
    }
}

/// Where a meta flag stands in a request line.
enum Flag {
    /// The request is not a meta command.
    NotMeta,
    Absent,
    /// Its token's index among the line's tokens.
    At(usize),
}

impl LuaRequest {
    fn flag_index(&self, letter: u8) -> Flag {
        let Command::Meta(m) = self.request.command() else {
            return Flag::NotMeta;
        };
        // Flags follow the key (and a set's data length).
        let start = if matches!(m.op, MetaOp::Set) { 3 } else { 2 };
        let tokens = self.tokens();
        (start..tokens.len())
            .find(|&i| tokens[i].first() == Some(&letter))
            .map_or(Flag::Absent, Flag::At)
    }

    /// Replaces the token at `at` (or appends, with `None`) by `flag`
    /// followed by its token, or removes it (`flag` `None`), and re-parses
    /// the line. False when the line would not parse: it is left as it was.
    fn edit_flag(
        &mut self,
        lua: &Lua,
        at: Option<usize>,
        flag: Option<(u8, &[u8])>,
    ) -> mlua::Result<bool> {
        let rendered = flag.map(|(letter, token)| {
            let mut t = Vec::with_capacity(1 + token.len());
            t.push(letter);
            t.extend_from_slice(token);
            t
        });
        let rewritten = match (at, rendered) {
            (Some(i), Some(t)) => self.set_token(lua, i, &t),
            (Some(i), None) => self.set_token(lua, i, b""),
            (None, Some(t)) => self.set_token(lua, self.tokens().len(), &t),
            (None, None) => return Ok(false),
        };
        Ok(rewritten.is_ok())
    }

    /// Replaces token `at` (0-based) by `new`, removes it when `new` is
    /// empty, or appends `new` when `at` is the token count; then re-parses
    /// the line.
    fn set_token(&mut self, lua: &Lua, at: usize, new: &[u8]) -> mlua::Result<()> {
        let mut owned: Vec<Vec<u8>> = self.tokens().iter().map(|t| t.to_vec()).collect();
        if at == owned.len() {
            owned.push(new.to_vec());
        } else if new.is_empty() {
            owned.remove(at);
        } else {
            owned[at] = new.to_vec();
        }
        let refs: Vec<&[u8]> = owned.iter().map(|t| t.as_slice()).collect();
        self.rebuild(lua, &refs)
    }
}

/// A flag's token argument, as memcached takes it: a string, a whole
/// number, or nothing.
fn flag_token_arg(token: Option<Value>) -> mlua::Result<Vec<u8>> {
    match token {
        None | Some(Value::Nil) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(Value::Integer(i)) => Ok(i.to_string().into_bytes()),
        Some(Value::Number(n)) if n.fract() == 0.0 => Ok((n as i64).to_string().into_bytes()),
        Some(_) => Err(mlua::Error::runtime("request: invalid flag argument")),
    }
}

/// `r:match_res(res)`: whether the response's `k` and `O` flags echo the
/// request's key and opaque, as memcached checks it: `true, nil` when at
/// least one was echoed and all match; `false, token` at the first that
/// does not; `false, nil` when none is there to check, or the response
/// echoes an opaque the request did not send.
fn match_response(
    lua: &Lua,
    request: &Request,
    response: &Response,
) -> mlua::Result<(bool, Value)> {
    let opaque = match request.command() {
        Command::Meta(m) => m.flags.token(b'O'),
        _ => None,
    };
    let mut matched = false;
    for token in response.line().split(|&b| b == b' ').skip(1) {
        let (wanted, echoed) = match token.first() {
            Some(b'k') => (request.key().map(|k| &k[..]), &token[1..]),
            Some(b'O') => (opaque, &token[1..]),
            _ => continue,
        };
        match wanted {
            None => return Ok((false, Value::Nil)),
            Some(w) if w == echoed => matched = true,
            Some(_) => return Ok((false, Value::String(lua.create_string(echoed)?))),
        }
    }
    Ok((matched, Value::Nil))
}

/// Where return flag `letter` (and its token) lies in a meta reply's
/// first line: the first word after the reply code that starts with it.
/// (memcached's scan also tries the code itself, so its `flag_blank("H")`
/// would blank an `HD`; memroute leaves the code alone.)
fn meta_return_flag(response: &Response, letter: u8) -> Option<std::ops::Range<usize>> {
    use ResponseCode as C;
    if !matches!(
        response.code(),
        C::Hd | C::Va | C::Me | C::En | C::Nf | C::Ns | C::Ex | C::Mn
    ) {
        return None;
    }
    let line = response.line();
    let mut start = 0;
    let mut first = true;
    while start < line.len() {
        if line[start] == b' ' {
            start += 1;
            continue;
        }
        let end = line[start..]
            .iter()
            .position(|&b| b == b' ')
            .map_or(line.len(), |n| start + n);
        if !first && line[start] == letter {
            return Some(start..end);
        }
        first = false;
        start = end;
    }
    None
}

fn single_flag(flag: &str) -> mlua::Result<u8> {
    match flag.as_bytes() {
        [b] if b.is_ascii_alphabetic() => Ok(*b),
        _ => Err(mlua::Error::runtime(
            "meta flag must be a single letter A-Z or a-z",
        )),
    }
}

fn trim_key(lua: &Lua, this: &mut LuaRequest, n: usize, left: bool) -> mlua::Result<()> {
    let Some(index) = this.key_index() else {
        return Err(mlua::Error::runtime("this request has no key"));
    };
    let mut tokens: Vec<Vec<u8>> = this.tokens().iter().map(|t| t.to_vec()).collect();
    let key = &tokens[index];
    if n >= key.len() {
        return Err(mlua::Error::runtime("trimming would leave an empty key"));
    }
    let trimmed = if left {
        key[n..].to_vec()
    } else {
        key[..key.len() - n].to_vec()
    };
    tokens[index] = trimmed;
    let refs: Vec<&[u8]> = tokens.iter().map(|t| t.as_slice()).collect();
    this.rebuild(lua, &refs)
}

/// The client flags of a hit: the third token of a `VALUE` line, or a meta
/// reply's `f` flag; 0 when the reply carries none.
fn response_flags(response: &Response) -> u32 {
    let line = response.line();
    let mut tokens = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let parse = |t: &[u8]| std::str::from_utf8(t).ok().and_then(|s| s.parse().ok());
    match response.code() {
        ResponseCode::Value => tokens.nth(2).and_then(parse).unwrap_or(0),
        _ => tokens
            .skip(1)
            .find(|t| t.first() == Some(&b'f'))
            .and_then(|t| parse(&t[1..]))
            .unwrap_or(0),
    }
}

/// A backend's (or the proxy's own) reply as a route sees it.
#[derive(Clone)]
pub struct LuaResponse {
    pub response: Response,
    /// Microseconds from sending the request to its reply.
    pub elapsed_us: u64,
    /// The backend that answered, noted only while someone watches
    /// `proxyreqs` (for `be=` in `mcp.log_req` lines).
    pub backend: Option<Arc<BackendConfig>>,
}

impl LuaResponse {
    pub fn new(response: Response, elapsed_us: u64) -> Self {
        LuaResponse {
            response,
            elapsed_us,
            backend: None,
        }
    }

    /// "Good": a non-error reply that is not a miss (memcached's
    /// `res_good`).
    pub fn is_good(&self) -> bool {
        self.response.is_ok()
            && !matches!(
                self.response.code(),
                ResponseCode::End | ResponseCode::En | ResponseCode::NotFound | ResponseCode::Nf
            )
    }

    pub fn raw(&self) -> &Bytes {
        self.response.raw()
    }
}

impl UserData for LuaResponse {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // `local res <close> = ...` works as in memcached; the reply's
        // bytes are freed with the object, so closing has nothing to do.
        methods.add_meta_method(mlua::MetaMethod::Close, |_, _, _: mlua::MultiValue| Ok(()));
        methods.add_method("ok", |_, this, ()| Ok(this.response.is_ok()));
        methods.add_method("hit", |_, this, ()| Ok(this.response.is_hit()));
        methods.add_method("code", |_, this, ()| Ok(mcmc_code(this.response.code())));
        methods.add_method("line", |lua, this, ()| {
            lua.create_string(this.response.line())
        });
        methods.add_method("vlen", |_, this, ()| {
            Ok(this.response.value().map_or(0, |v| v.len()))
        });
        methods.add_method("elapsed", |_, this, ()| Ok(this.elapsed_us));
        methods.add_method("raw_string", |lua, this, ()| {
            lua.create_string(this.response.raw())
        });
        // memroute: what a route needs to copy a hit into another pool
        // (read-through tiers): the value and its client flags.
        methods.add_method("value", |lua, this, ()| match this.response.value() {
            Some(v) => Ok(Value::String(lua.create_string(v)?)),
            None => Ok(Value::Nil),
        });
        methods.add_method("flags", |_, this, ()| Ok(response_flags(&this.response)));
        // memcached's res:flag_blank(flag): overwrites a meta reply's return
        // flag and its token with spaces, so the client does not see it
        // (a flag the route asked the backend for, say); true if it was
        // there.
        methods.add_method_mut("flag_blank", |_, this, flag: String| {
            let letter = single_flag(&flag)?;
            let range = meta_return_flag(&this.response, letter);
            Ok(match range {
                Some(range) => {
                    this.response.blank_in_line(range);
                    true
                }
                None => false,
            })
        });
        // memroute: the token of a meta reply's return flag (`c`, `t`, `f`,
        // `s`, ...), without the letter; nil when absent.
        methods.add_method("flag_token", |lua, this, flag: String| {
            let letter = single_flag(&flag)?;
            let line = this.response.line();
            let token = line
                .split(|&b| b == b' ')
                .skip(1)
                .find(|t| t.first() == Some(&letter));
            match token {
                Some(t) => Ok(Value::String(lua.create_string(&t[1..])?)),
                None => Ok(Value::Nil),
            }
        });
    }
}
