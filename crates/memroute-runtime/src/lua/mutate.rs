//! memcached's mutators and the objects they write into, in the worker VM:
//! `mcp.req_mutator_new(...)` and `mcp.res_mutator_new(...)` build an object
//! from a list of step tables; `mut(dst, src1, src2, ...)` writes a new
//! request (or response) into `dst`, one token per step, taking what the
//! `idx` steps copy from the sources after `dst` (`idx = 1` is `src1`).
//! `rctx:request_new()` / `rctx:response_new()` (reserved per slot with
//! `fgen:ready{ u = N }`) make the blank destinations; [`UserObjects`]
//! blanks them again after every request, as memcached cleans them.
//!
//! | step | for | writes |
//! |---|---|---|
//! | `{t="cmdset", cmd=c}` | requests | the command `c` |
//! | `{t="cmdcopy", idx=n}` | requests | the command of a request source, or a string as it is |
//! | `{t="keyset", val=k}` | requests | the key `k` |
//! | `{t="keycopy", idx=n}` | requests | the key of a request source, or a string |
//! | `{t="resnull", idx=n}` | responses | the "nothing happened" code for a request source's command (`EN`, `NS`, `NF`, `END`, `NOT_STORED`, `NOT_FOUND`) |
//! | `{t="rescodeset", val=c}` | responses | the code `c` (`HD`, `VA`, ...) |
//! | `{t="rescodecopy", idx=n}` | responses | the code of a meta response source, or a string |
//! | `{t="reserr", code="error"|"client"|"server", msg=m}` | responses | `ERROR`, `CLIENT_ERROR m` or `SERVER_ERROR m` |
//! | `{t="flagset", flag=f, val=v}` | both | flag `f` with token `v` (optional) |
//! | `{t="flagcopy", flag=f, idx=n}` | both | flag `f` as the source has it (a request's or meta response's flag, a string as the token, `true` for the bare flag); nothing when the source lacks it |
//! | `{t="flagcopyall", idx=n}` | both | every flag of a meta request or response source, or a string as it is |
//! | `{t="valcopy", idx=n}` | both | the length of the source's value (a request's data, a response's value, or a string, its `\r\n` removed), and the value after the line |
//!
//! A call returns `true`, or `false` without touching `dst` when a source
//! is of a kind its step cannot copy from. A line that does not parse as a
//! request (or response) is a Lua error.
//!
//! Steps are compiled once, at creation, into [`MutateStep`]s; a call
//! writes the line into a buffer the mutator keeps, so the only
//! allocations are the new object's own bytes.

use std::cell::RefCell;
use std::io::Write;

use bytes::{Bytes, BytesMut};
use memroute_proto::{
    ArithOp, Command, Limits, MetaOp, Request, Response, ResponseCode, ResponseDecoder,
};
use mlua::{AnyUserData, Lua, MetaMethod, MultiValue, Table, UserData, UserDataMethods, Value};

use super::inspect::{reply_flag, reply_flags, request_flags, wire_key, Kind, StepSpec};
use super::objects::{LuaRequest, LuaResponse, COMMANDS};

/// The longest command name `cmdset` takes (memcached's limit).
const MAX_CMD_LEN: usize = 20;

/// One compiled mutator step.
enum MutateStep {
    /// Bytes fixed at creation: `cmdset`, `keyset`, `rescodeset`, `reserr`
    /// and `flagset`, rendered once.
    Fixed(Box<[u8]>),
    CmdCopy(usize),
    KeyCopy(usize),
    ResNull(usize),
    ResCodeCopy(usize),
    FlagCopy {
        letter: u8,
        idx: usize,
    },
    FlagCopyAll(usize),
    ValCopy(usize),
}

/// What a step did with its source.
enum Piece {
    /// Wrote its token (possibly nothing, for an empty string source).
    Written,
    /// Wrote nothing: `flagcopy` of a flag the source does not have.
    Absent,
    /// The source is of a kind the step cannot copy from.
    Unusable,
}

impl MutateStep {
    fn compile(spec: &StepSpec, kind: Kind) -> mlua::Result<MutateStep> {
        let name = spec.step_type()?;
        let for_kind = match name.as_str() {
            "cmdset" | "cmdcopy" | "keyset" | "keycopy" => Some(Kind::Request),
            "resnull" | "rescodeset" | "rescodecopy" | "reserr" => Some(Kind::Response),
            "flagset" | "flagcopy" | "flagcopyall" | "valcopy" => None,
            other => return Err(spec.error(format!("unknown step type '{other}'"))),
        };
        if for_kind.is_some_and(|k| k != kind) {
            return Err(spec.error(format!(
                "step incompatible with mutator type ('{name}' writes {}s only)",
                match for_kind {
                    Some(Kind::Request) => "request",
                    _ => "response",
                }
            )));
        }
        let step = match name.as_str() {
            "cmdset" => {
                spec.only(&["cmd"])?;
                let cmd = spec.required_string("cmd")?;
                if cmd.len() > MAX_CMD_LEN {
                    return Err(spec.error("'cmd' too long"));
                }
                // The names of `mcp.CMD_*` in lower case: "CMD_MG" is "mg".
                let known = COMMANDS.iter().any(|(id, _)| {
                    let name = &id.as_bytes()[4..];
                    name.len() == cmd.len()
                        && name
                            .iter()
                            .zip(&cmd)
                            .all(|(n, c)| n.to_ascii_lowercase() == *c)
                });
                if !known {
                    return Err(spec.error(format!(
                        "'cmd' is not a memcached command: '{}'",
                        String::from_utf8_lossy(&cmd)
                    )));
                }
                MutateStep::Fixed(cmd.into())
            }
            "keyset" => {
                spec.only(&["val"])?;
                let key = spec.nonempty_string("val")?;
                if key
                    .iter()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(
                        spec.error("'val' (a key) must not contain spaces or control characters")
                    );
                }
                MutateStep::Fixed(key.into())
            }
            "rescodeset" => {
                spec.only(&["val"])?;
                let code = spec.nonempty_string("val")?;
                if code
                    .iter()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(spec.error("'val' (a response code) must be one word"));
                }
                MutateStep::Fixed(code.into())
            }
            "reserr" => {
                spec.only(&["code", "msg"])?;
                let code = spec.required_string("code")?;
                let mut line: Vec<u8> = match code.as_slice() {
                    b"error" => b"ERROR".to_vec(),
                    b"client" => b"CLIENT_ERROR".to_vec(),
                    b"server" => b"SERVER_ERROR".to_vec(),
                    _ => return Err(spec.error("code must be 'error', 'server', or 'client'")),
                };
                if let Some(msg) = spec.string("msg")? {
                    if msg.is_empty() {
                        return Err(spec.error("'msg' must be a nonzero length string"));
                    }
                    if msg.iter().any(|&b| b == b'\r' || b == b'\n') {
                        return Err(spec.error("'msg' must be one line"));
                    }
                    line.push(b' ');
                    line.extend_from_slice(&msg);
                }
                MutateStep::Fixed(line.into())
            }
            "flagset" => {
                spec.only(&["flag", "val"])?;
                let letter = spec.flag()?;
                let mut token = vec![letter];
                match spec.field("val")? {
                    Value::Nil => {}
                    Value::String(_) | Value::Integer(_) | Value::Number(_) => {
                        let val = spec.required_string("val")?;
                        if val
                            .iter()
                            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                        {
                            return Err(spec.error("'val' must not contain spaces"));
                        }
                        token.extend_from_slice(&val);
                    }
                    _ => return Err(spec.error("unsupported type for 'val'")),
                }
                MutateStep::Fixed(token.into())
            }
            "cmdcopy" | "keycopy" | "resnull" | "rescodecopy" | "flagcopyall" | "valcopy" => {
                spec.only(&["idx"])?;
                let idx = source_index(spec)?;
                match name.as_str() {
                    "cmdcopy" => MutateStep::CmdCopy(idx),
                    "keycopy" => MutateStep::KeyCopy(idx),
                    "resnull" => MutateStep::ResNull(idx),
                    "rescodecopy" => MutateStep::ResCodeCopy(idx),
                    "flagcopyall" => MutateStep::FlagCopyAll(idx),
                    _ => MutateStep::ValCopy(idx),
                }
            }
            // "flagcopy"
            _ => {
                spec.only(&["flag", "idx"])?;
                MutateStep::FlagCopy {
                    letter: spec.flag()?,
                    idx: source_index(spec)?,
                }
            }
        };
        Ok(step)
    }

    /// Writes this step's token at the end of `line` (which holds the
    /// tokens so far, separated by spaces). A `valcopy` also sets `value`.
    fn render(&self, sources: &Sources, line: &mut Vec<u8>, value: &mut Option<Bytes>) -> Piece {
        let mark = line.len();
        if !line.is_empty() {
            line.push(b' ');
        }
        let start = line.len();
        let piece = self.write(sources, line, value);
        // A step that wrote nothing leaves no separator behind.
        if !matches!(piece, Piece::Written) || line.len() == start {
            line.truncate(mark);
        }
        piece
    }

    fn write(&self, sources: &Sources, line: &mut Vec<u8>, value: &mut Option<Bytes>) -> Piece {
        match self {
            MutateStep::Fixed(bytes) => line.extend_from_slice(bytes),
            MutateStep::CmdCopy(idx) => match sources.get(*idx) {
                Source::String(s) => line.extend_from_slice(&s.as_bytes()),
                Source::Request(r) => {
                    let raw = r.request.raw_line();
                    let end = raw.iter().position(|&b| b == b' ').unwrap_or(raw.len());
                    line.extend_from_slice(&raw[..end]);
                }
                _ => return Piece::Unusable,
            },
            MutateStep::KeyCopy(idx) => match sources.get(*idx) {
                Source::String(s) => line.extend_from_slice(&s.as_bytes()),
                Source::Request(r) => match wire_key(&r.request) {
                    Some(key) => line.extend_from_slice(key),
                    None => return Piece::Unusable,
                },
                _ => return Piece::Unusable,
            },
            MutateStep::ResNull(idx) => match sources.get(*idx) {
                Source::Request(r) => match null_code(&r.request) {
                    Some(code) => line.extend_from_slice(code),
                    None => return Piece::Unusable,
                },
                _ => return Piece::Unusable,
            },
            MutateStep::ResCodeCopy(idx) => match sources.get(*idx) {
                Source::String(s) => line.extend_from_slice(&s.as_bytes()),
                // As memcached: only a meta reply's code can be copied.
                Source::Response(r) if reply_flags(&r.response).is_some() => {
                    let first = r.response.line().split(|&b| b == b' ').next();
                    line.extend_from_slice(first.unwrap_or_default());
                }
                _ => return Piece::Unusable,
            },
            MutateStep::FlagCopy { letter, idx } => {
                let source = sources.get(*idx);
                let found: Option<&[u8]> = match &source {
                    Source::Nil | Source::Boolean(false) => None,
                    // `true`: the flag alone.
                    Source::Boolean(true) => Some(b""),
                    Source::String(s) => {
                        line.push(*letter);
                        line.extend_from_slice(&s.as_bytes());
                        return Piece::Written;
                    }
                    Source::Request(r) => match request_flags(&r.request) {
                        Some(flags) => flags.token(*letter),
                        None => return Piece::Unusable,
                    },
                    Source::Response(r) if reply_flags(&r.response).is_some() => {
                        reply_flag(&r.response, *letter)
                    }
                    Source::Response(_) | Source::Other => return Piece::Unusable,
                };
                match found {
                    Some(token) => {
                        line.push(*letter);
                        line.extend_from_slice(token);
                    }
                    None => return Piece::Absent,
                }
            }
            MutateStep::FlagCopyAll(idx) => match sources.get(*idx) {
                Source::String(s) => line.extend_from_slice(&s.as_bytes()),
                Source::Request(r) => match request_flags(&r.request) {
                    Some(flags) => {
                        for (i, flag) in flags.iter().enumerate() {
                            if i > 0 {
                                line.push(b' ');
                            }
                            line.push(flag.letter);
                            line.extend_from_slice(flag.token);
                        }
                    }
                    None => return Piece::Unusable,
                },
                Source::Response(r) => match reply_flags(&r.response) {
                    Some(flags) => {
                        for (i, flag) in flags.enumerate() {
                            if i > 0 {
                                line.push(b' ');
                            }
                            line.extend_from_slice(flag);
                        }
                    }
                    None => return Piece::Unusable,
                },
                _ => return Piece::Unusable,
            },
            MutateStep::ValCopy(idx) => {
                let data = match sources.get(*idx) {
                    // A string is a data block as on the wire: its `\r\n`
                    // is not part of the value (a string without one is
                    // taken whole, as `mcp.request` takes values).
                    Source::String(s) => {
                        let bytes = s.as_bytes();
                        Bytes::copy_from_slice(bytes.strip_suffix(b"\r\n").unwrap_or(&bytes))
                    }
                    Source::Request(r) if r.request.has_data_block() => r.request.value().clone(),
                    Source::Response(r) => match r.response.value() {
                        Some(v) => r.response.raw().slice_ref(v),
                        None => return Piece::Unusable,
                    },
                    _ => return Piece::Unusable,
                };
                // Written into the line's buffer: no string is made.
                let _ = write!(line, "{}", data.len());
                *value = Some(data);
            }
        }
        Piece::Written
    }
}

/// The `idx` field of a copying step: which source (1 is the first
/// argument after the destination).
fn source_index(spec: &StepSpec) -> mlua::Result<usize> {
    match spec.field("idx")? {
        Value::Nil => Err(spec.error("must provide 'idx' argument")),
        Value::Integer(i) if i >= 1 => Ok(i as usize),
        Value::Number(n) if n >= 1.0 && n.fract() == 0.0 => Ok(n as usize),
        Value::Integer(_) | Value::Number(_) => {
            Err(spec.error("'idx' argument must be an integer greater than 0"))
        }
        _ => Err(spec.error("must provide 'idx' argument as an integer")),
    }
}

/// The code of a reply that says "nothing happened" to `request`, as
/// memcached's `resnull` writes it.
fn null_code(request: &Request) -> Option<&'static [u8]> {
    Some(match request.command() {
        Command::Meta(m) => match m.op {
            MetaOp::Get => b"EN",
            MetaOp::Set => b"NS",
            MetaOp::Delete | MetaOp::Arith => b"NF",
            MetaOp::Debug => return None,
        },
        Command::Get(_) => b"END",
        Command::Store(_) => b"NOT_STORED",
        Command::Arith(a) if matches!(a.op, ArithOp::Incr | ArithOp::Decr) => b"NOT_FOUND",
        Command::Touch { .. } | Command::Delete { .. } => b"NOT_FOUND",
        _ => return None,
    })
}

/// A mutator's sources, the call's arguments after the destination,
/// borrowed for the length of one call.
struct Sources<'a> {
    lua: &'a Lua,
    args: &'a MultiValue,
}

/// A request source's request (copied out of its object: the request
/// object may be one `fresh` serves).
struct RequestSource {
    request: Request,
}

/// One source as a step sees it.
enum Source<'a> {
    Nil,
    Boolean(bool),
    String(&'a mlua::LuaString),
    Request(RequestSource),
    Response(LuaResponse),
    Other,
}

impl<'a> Sources<'a> {
    /// Source `idx` (1-based, after the destination).
    fn get(&self, idx: usize) -> Source<'a> {
        match self.args.get(idx) {
            None | Some(Value::Nil) => Source::Nil,
            Some(Value::Boolean(b)) => Source::Boolean(*b),
            Some(Value::String(s)) => Source::String(s),
            Some(Value::UserData(ud)) => {
                if let Ok(request) = super::fresh::with_request(self.lua, ud, |r| r.request.clone())
                {
                    Source::Request(RequestSource { request })
                } else if let Ok(r) = super::fresh::with_response(self.lua, ud, LuaResponse::clone)
                {
                    Source::Response(r)
                } else {
                    Source::Other
                }
            }
            Some(_) => Source::Other,
        }
    }
}

/// Decoders for the responses a mutator writes, by the kind of their
/// first line (a response is framed by the request it answers; these are
/// the decoders of a meta command, a `get` and a one-line command).
struct ReplyDecoders {
    meta: ResponseDecoder,
    retrieval: ResponseDecoder,
    line: ResponseDecoder,
}

impl ReplyDecoders {
    fn new() -> mlua::Result<ReplyDecoders> {
        let limits = Limits::default();
        let decoder = |line: &[u8]| {
            Request::parse(line, b"", &limits)
                .map(|r| ResponseDecoder::for_request(&r))
                .map_err(mlua::Error::runtime)
        };
        Ok(ReplyDecoders {
            meta: decoder(b"mn")?,
            retrieval: decoder(b"get k")?,
            line: decoder(b"delete k")?,
        })
    }

    fn for_line(&self, line: &[u8]) -> &ResponseDecoder {
        let code = line.split(|&b| b == b' ').next().unwrap_or_default();
        match code {
            [a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => &self.meta,
            b"VALUE" | b"END" => &self.retrieval,
            _ => &self.line,
        }
    }
}

/// A mutator (`mcp.req_mutator_new` / `mcp.res_mutator_new`).
pub struct Mutator {
    kind: Kind,
    steps: Box<[MutateStep]>,
    /// The line being written, kept between calls for its capacity.
    line: RefCell<Vec<u8>>,
    decoders: ReplyDecoders,
}

impl Mutator {
    fn new(lua: &Lua, kind: Kind, args: MultiValue) -> mlua::Result<Mutator> {
        let mut steps = Vec::with_capacity(args.len());
        for (i, arg) in args.into_iter().enumerate() {
            let spec = StepSpec::new(lua, arg, "mutator", i + 1)?;
            steps.push(MutateStep::compile(&spec, kind)?);
        }
        if steps.is_empty() {
            return Err(mlua::Error::runtime("mutator: needs at least one step"));
        }
        Ok(Mutator {
            kind,
            steps: steps.into(),
            line: RefCell::new(Vec::with_capacity(64)),
            decoders: ReplyDecoders::new()?,
        })
    }

    fn call(&self, lua: &Lua, args: MultiValue) -> mlua::Result<bool> {
        let dst = match args.front() {
            Some(Value::UserData(ud))
                if (self.kind == Kind::Request && super::fresh::is_request(lua, ud))
                    || (self.kind == Kind::Response && super::fresh::is_response(lua, ud)) =>
            {
                ud.clone()
            }
            _ => {
                return Err(mlua::Error::runtime(format!(
                    "invalid argument to mutator object: expected {} to write into",
                    self.kind.object()
                )))
            }
        };
        let mut line = self
            .line
            .try_borrow_mut()
            .map_err(|_| mlua::Error::runtime("mutator: called again while it is running"))?;
        line.clear();
        let mut value = None;
        {
            let sources = Sources { lua, args: &args };
            for step in self.steps.iter() {
                if let Piece::Unusable = step.render(&sources, &mut line, &mut value) {
                    return Ok(false);
                }
            }
        }
        match self.kind {
            Kind::Request => write_request(lua, &dst, &line, value),
            Kind::Response => self.write_response(lua, &dst, &line, value),
        }?;
        Ok(true)
    }

    fn write_response(
        &self,
        lua: &Lua,
        dst: &AnyUserData,
        line: &[u8],
        value: Option<Bytes>,
    ) -> mlua::Result<()> {
        let retrieval = line.starts_with(b"VALUE ");
        let size = line.len() + 2 + value.as_ref().map_or(0, |v| v.len() + 2) + 5;
        let mut raw = BytesMut::with_capacity(size);
        raw.extend_from_slice(line);
        raw.extend_from_slice(b"\r\n");
        if let Some(value) = &value {
            raw.extend_from_slice(value);
            raw.extend_from_slice(b"\r\n");
        }
        // A classic hit ends with END, as a client reads it.
        if retrieval {
            raw.extend_from_slice(b"END\r\n");
        }
        let decoded = self.decoders.for_line(line).decode(&mut raw);
        let response = match decoded {
            Ok(Some(response)) if raw.is_empty() => response,
            Ok(_) => return Err(failed_result(line, "its value does not match its line")),
            Err(e) => return Err(failed_result(line, e.0)),
        };
        super::fresh::with_response_mut(lua, dst, |dst| {
            dst.response = response;
            dst.elapsed_us = 0;
        })
    }
}

fn failed_result(line: &[u8], why: &str) -> mlua::Error {
    mlua::Error::runtime(format!(
        "mutator: failed to parse new result ({why}): {}",
        String::from_utf8_lossy(line)
    ))
}

fn write_request(
    lua: &Lua,
    dst: &AnyUserData,
    line: &[u8],
    value: Option<Bytes>,
) -> mlua::Result<()> {
    let limits = lua
        .app_data_ref::<Limits>()
        .map(|l| l.clone())
        .unwrap_or_default();
    let request =
        Request::parse(line, value.as_deref().unwrap_or_default(), &limits).map_err(|e| {
            mlua::Error::runtime(format!(
                "mutator: failed to parse new request ({e}): {}",
                String::from_utf8_lossy(line)
            ))
        })?;
    super::fresh::with_request_mut(lua, dst, |dst| dst.request = request)
}

impl UserData for Mutator {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Call, |lua, this, args: MultiValue| {
            this.call(lua, args)
        });
    }
}

/// A request with nothing in it: what `rctx:request_new()` makes and what
/// its objects go back to after each request. It has no key and an empty
/// line, so it cannot be queued before a mutator has written it.
pub(super) fn blank_request() -> Request {
    Request::new(Bytes::new(), Bytes::new(), Command::MetaNoop)
}

/// What a response object made by `rctx:response_new()` holds until a
/// mutator writes it: a route returning it unwritten sends this.
fn blank_response() -> LuaResponse {
    const LINE: &[u8] = b"SERVER_ERROR empty response object\r\n";
    LuaResponse::new(
        Response::encoded(
            Bytes::from_static(LINE),
            ResponseCode::ServerError,
            LINE.len() - 2,
            None,
            false,
        ),
        0,
    )
}

/// The request and response objects a slot made with
/// `rctx:request_new()` / `rctx:response_new()`: at most `limit` in the
/// slot's life (`fgen:ready{ u = N }`), each blanked after every request.
pub struct UserObjects {
    limit: usize,
    made: RefCell<Vec<AnyUserData>>,
}

impl UserObjects {
    pub fn new(limit: usize) -> UserObjects {
        UserObjects {
            limit,
            made: RefCell::new(Vec::new()),
        }
    }

    fn reserve(&self, what: &str) -> mlua::Result<()> {
        if self.made.borrow().len() >= self.limit {
            return Err(mlua::Error::runtime(format!(
                "rctx {what} new: object count limit reached (fgen:ready{{ u = N }} allows N \
                 objects per slot; this funcgen has {})",
                self.limit
            )));
        }
        Ok(())
    }

    /// `rctx:request_new()`.
    pub fn request_new(&self, lua: &Lua) -> mlua::Result<AnyUserData> {
        self.reserve("request")?;
        let ud = lua.create_userdata(LuaRequest::detached(blank_request()))?;
        self.made.borrow_mut().push(ud.clone());
        Ok(ud)
    }

    /// `rctx:response_new()`.
    pub fn response_new(&self, lua: &Lua) -> mlua::Result<AnyUserData> {
        self.reserve("response")?;
        let ud = lua.create_userdata(blank_response())?;
        self.made.borrow_mut().push(ud.clone());
        Ok(ud)
    }

    /// Blanks every object after a request, so the next one starts clean
    /// and a large value is not held by an idle slot.
    pub fn blank(&self) {
        for ud in self.made.borrow().iter() {
            if let Ok(mut r) = ud.borrow_mut::<LuaRequest>() {
                r.request = blank_request();
            } else if let Ok(mut r) = ud.borrow_mut::<LuaResponse>() {
                *r = blank_response();
            }
        }
    }
}

/// Adds `mcp.req_mutator_new` and `mcp.res_mutator_new` to a worker VM's
/// `mcp` table.
pub fn register(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    for (name, kind) in [
        ("req_mutator_new", Kind::Request),
        ("res_mutator_new", Kind::Response),
    ] {
        mcp.set(
            name,
            lua.create_function(move |lua, args: MultiValue| Mutator::new(lua, kind, args))?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(line: &[u8], value: &[u8]) -> Request {
        Request::parse(line, value, &Limits::default()).unwrap()
    }

    #[test]
    fn steps_are_joined_by_single_spaces() {
        let lua = Lua::new();
        let args = MultiValue::new();
        let sources = Sources {
            lua: &lua,
            args: &args,
        };
        let steps = [
            MutateStep::Fixed(b"s".to_vec().into()),
            // An absent flag leaves nothing, not a double space.
            MutateStep::FlagCopy {
                letter: b'O',
                idx: 1,
            },
            MutateStep::Fixed(b"v".to_vec().into()),
        ];
        let (mut line, mut value) = (Vec::new(), None);
        for step in &steps {
            assert!(matches!(
                step.render(&sources, &mut line, &mut value),
                Piece::Written | Piece::Absent
            ));
        }
        assert_eq!(line, b"s v");
    }

    #[test]
    fn null_codes_follow_memcached() {
        assert_eq!(null_code(&request(b"mg k v", b"")), Some(&b"EN"[..]));
        assert_eq!(null_code(&request(b"ms k 1", b"x")), Some(&b"NS"[..]));
        assert_eq!(null_code(&request(b"ma k", b"")), Some(&b"NF"[..]));
        assert_eq!(null_code(&request(b"gat 10 k", b"")), Some(&b"END"[..]));
        assert_eq!(
            null_code(&request(b"cas k 0 0 1 5", b"x")),
            Some(&b"NOT_STORED"[..])
        );
        assert_eq!(
            null_code(&request(b"decr k 1", b"")),
            Some(&b"NOT_FOUND"[..])
        );
        assert_eq!(null_code(&request(b"version", b"")), None);
        assert_eq!(null_code(&blank_request()), None);
    }

    #[test]
    fn written_responses_are_framed_by_their_first_line() {
        let decoders = ReplyDecoders::new().unwrap();
        let decode = |raw: &[u8]| {
            let line = &raw[..raw.iter().position(|&b| b == b'\r').unwrap()];
            let mut buf = BytesMut::from(raw);
            let response = decoders.for_line(line).decode(&mut buf).unwrap().unwrap();
            assert!(buf.is_empty());
            response
        };
        let va = decode(b"VA 2 t5\r\nhi\r\n");
        assert_eq!(va.code(), ResponseCode::Va);
        assert_eq!(va.value(), Some(&b"hi"[..]));
        assert!(va.is_hit());
        let value = decode(b"VALUE k 0 2\r\nhi\r\nEND\r\n");
        assert_eq!(value.code(), ResponseCode::Value);
        assert_eq!(decode(b"NOT_FOUND\r\n").code(), ResponseCode::NotFound);
        assert_eq!(
            decode(b"SERVER_ERROR x\r\n").code(),
            ResponseCode::ServerError
        );
        assert_eq!(decode(b"HD\r\n").code(), ResponseCode::Hd);
    }
}
