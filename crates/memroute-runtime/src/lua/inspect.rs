//! memcached's inspectors, in the worker VM: `mcp.req_inspector_new(...)`
//! and `mcp.res_inspector_new(...)` build an object from a list of step
//! tables; calling it on a request (or response) returns one or two values
//! per step, as memcached 1.6.45's proxy does:
//!
//! | step | for | returns |
//! |---|---|---|
//! | `{t="sepkey", sep="/", pos=1, map=tbl}` | requests | the `pos`-th part of the key between separators (nil if absent or empty), or `map[part]` with a map |
//! | `{t="keybegin", str=s}` | requests | whether the key starts with `s` and is longer |
//! | `{t="keyis", str=s}` | requests | whether the key is `s` |
//! | `{t="hasflag", flag=f}` | both | whether meta flag `f` is present (an error on a response that is not meta) |
//! | `{t="flagtoken", flag=f}` | both | present, and the flag's token (`""` without one), or `false, nil` |
//! | `{t="flagint", flag=f}` | both | present, and the token as an integer (nil if it is not one), or `false, nil` |
//! | `{t="flagis", flag=f, str=s}` | both | present, and whether the token is `s`, or `false, nil` |
//!
//! The step list is checked and compiled once, at creation, into
//! [`InspectStep`]s; a call walks them over the object with no parsing of
//! the list and no allocation besides the returned values.
//!
//! The step-table reader ([`StepSpec`]) and the flag lookups are shared with
//! the mutators ([`super::mutate`]).

use memroute_proto::{Command, MetaFlags, Request, Response, ResponseCode};
use mlua::{Lua, MetaMethod, MultiValue, Table, UserData, UserDataMethods, Value};

/// What an inspector or a mutator works on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Request,
    Response,
}

impl Kind {
    pub(super) fn object(self) -> &'static str {
        match self {
            Kind::Request => "a request",
            Kind::Response => "a response",
        }
    }
}

/// One step table given to an inspector or mutator constructor, read at
/// creation; every error names the step by its argument position, as
/// memcached's do (`inspector step 2: ...`).
pub(super) struct StepSpec<'a> {
    lua: &'a Lua,
    table: Table,
    /// "inspector" or "mutator".
    what: &'static str,
    index: usize,
}

impl<'a> StepSpec<'a> {
    pub(super) fn new(
        lua: &'a Lua,
        value: Value,
        what: &'static str,
        index: usize,
    ) -> mlua::Result<StepSpec<'a>> {
        match value {
            Value::Table(table) => Ok(StepSpec {
                lua,
                table,
                what,
                index,
            }),
            other => Err(mlua::Error::runtime(format!(
                "{what} step {index}: expected a table, got {}",
                other.type_name()
            ))),
        }
    }

    pub(super) fn error(&self, message: impl std::fmt::Display) -> mlua::Error {
        mlua::Error::runtime(format!("{} step {}: {message}", self.what, self.index))
    }

    /// The step's type, `t`.
    pub(super) fn step_type(&self) -> mlua::Result<String> {
        match self.table.raw_get::<Value>("t")? {
            Value::String(s) => Ok(s.to_string_lossy()),
            Value::Nil => Err(self.error("must provide 't' argument (the step type)")),
            other => Err(self.error(format!("'t' must be a string, got {}", other.type_name()))),
        }
    }

    /// Refuses fields the step does not take, so a misspelt option fails
    /// here instead of being silently left at its default.
    pub(super) fn only(&self, allowed: &[&str]) -> mlua::Result<()> {
        for pair in self.table.pairs::<Value, Value>() {
            let (key, _) = pair?;
            let name = match &key {
                Value::String(s) => s.to_string_lossy(),
                other => return Err(self.error(format!("unknown option {other:?}"))),
            };
            if name != "t" && !allowed.contains(&name.as_str()) {
                return Err(self.error(format!("unknown option '{name}'")));
            }
        }
        Ok(())
    }

    pub(super) fn field(&self, name: &str) -> mlua::Result<Value> {
        self.table.raw_get(name)
    }

    /// A string field (a number is taken as its text, as Lua's
    /// `tostring` gives it); `None` when absent.
    pub(super) fn string(&self, name: &str) -> mlua::Result<Option<Vec<u8>>> {
        match self.field(name)? {
            Value::Nil => Ok(None),
            value @ (Value::String(_) | Value::Integer(_) | Value::Number(_)) => {
                let text = self.lua.coerce_string(value)?;
                Ok(text.map(|s| s.as_bytes().to_vec()))
            }
            other => Err(self.error(format!(
                "'{name}' must be a string, got {}",
                other.type_name()
            ))),
        }
    }

    /// A string field that must be given.
    pub(super) fn required_string(&self, name: &str) -> mlua::Result<Vec<u8>> {
        self.string(name)?
            .ok_or_else(|| self.error(format!("must provide '{name}' argument")))
    }

    /// A string field that must be given and not be empty.
    pub(super) fn nonempty_string(&self, name: &str) -> mlua::Result<Vec<u8>> {
        let value = self.required_string(name)?;
        if value.is_empty() {
            return Err(self.error(format!("'{name}' must have nonzero length")));
        }
        Ok(value)
    }

    /// The `flag` field: one meta flag letter.
    pub(super) fn flag(&self) -> mlua::Result<u8> {
        let flag = self
            .string("flag")?
            .ok_or_else(|| self.error("must provide 'flag' argument"))?;
        match flag.as_slice() {
            [letter] if letter.is_ascii_alphabetic() => Ok(*letter),
            [_] => Err(self.error("'flag' must be a letter (A-Z, a-z)")),
            _ => Err(self.error("'flag' must be a single character")),
        }
    }
}

/// The key of a request as it is on the wire (for a meta command with `b`,
/// the base64 text), as memcached's inspectors and mutators see it.
pub(super) fn wire_key(request: &Request) -> Option<&[u8]> {
    match request.command() {
        Command::Meta(m) => Some(&m.wire_key),
        _ => request.key().map(|k| &k[..]),
    }
}

/// The meta flags of a request; `None` for a request that is not a meta
/// command (which has no flags).
pub(super) fn request_flags(request: &Request) -> Option<&MetaFlags> {
    match request.command() {
        Command::Meta(m) => Some(&m.flags),
        _ => None,
    }
}

/// The flag tokens of a meta reply (the tokens after its code, and after
/// the size of a `VA`), or `None` for a reply that is not meta protocol.
pub(super) fn reply_flags(response: &Response) -> Option<impl Iterator<Item = &[u8]> + Clone> {
    let skip = match response.code() {
        ResponseCode::Va => 2,
        ResponseCode::Hd
        | ResponseCode::En
        | ResponseCode::Nf
        | ResponseCode::Ns
        | ResponseCode::Ex
        | ResponseCode::Mn => 1,
        _ => return None,
    };
    Some(
        response
            .line()
            .split(|&b| b == b' ')
            .filter(|t| !t.is_empty())
            .skip(skip),
    )
}

/// The token of flag `letter` of a meta reply (empty for a flag without
/// one), if present; the first one if the reply repeats it.
pub(super) fn reply_flag(response: &Response, letter: u8) -> Option<&[u8]> {
    reply_flags(response)?
        .find(|t| t[0] == letter)
        .map(|t| &t[1..])
}

/// One compiled inspector step.
enum InspectStep {
    /// The `pos`-th part (1-based) of the key split at `sep`, leading
    /// separators skipped; looked up in `map` when there is one.
    SepKey {
        sep: u8,
        pos: usize,
        map: Option<Table>,
    },
    KeyBegin(Box<[u8]>),
    KeyIs(Box<[u8]>),
    HasFlag(u8),
    FlagToken(u8),
    FlagInt(u8),
    FlagIs(u8, Box<[u8]>),
}

impl InspectStep {
    /// How many values the step returns.
    fn results(&self) -> usize {
        match self {
            InspectStep::SepKey { .. }
            | InspectStep::KeyBegin(_)
            | InspectStep::KeyIs(_)
            | InspectStep::HasFlag(_) => 1,
            InspectStep::FlagToken(_) | InspectStep::FlagInt(_) | InspectStep::FlagIs(..) => 2,
        }
    }

    fn compile(spec: &StepSpec, kind: Kind) -> mlua::Result<InspectStep> {
        let name = spec.step_type()?;
        let request_only = matches!(name.as_str(), "sepkey" | "keybegin" | "keyis");
        if request_only && kind == Kind::Response {
            return Err(spec.error(format!(
                "step incompatible with inspector type ('{name}' inspects requests only)"
            )));
        }
        let step = match name.as_str() {
            "sepkey" => {
                spec.only(&["sep", "pos", "map"])?;
                let sep = match spec.string("sep")? {
                    None => b'/',
                    Some(s) if s.len() == 1 => s[0],
                    Some(_) => return Err(spec.error("separator must be one character")),
                };
                let pos = match spec.field("pos")? {
                    Value::Nil => 1,
                    Value::Integer(n) if n >= 1 => n as usize,
                    Value::Number(n) if n >= 1.0 && n.fract() == 0.0 => n as usize,
                    _ => return Err(spec.error("'pos' must be a positive integer")),
                };
                let map = match spec.field("map")? {
                    Value::Nil => None,
                    Value::Table(t) => Some(t),
                    other => {
                        return Err(
                            spec.error(format!("'map' must be a table, got {}", other.type_name()))
                        )
                    }
                };
                InspectStep::SepKey { sep, pos, map }
            }
            "keybegin" => {
                spec.only(&["str"])?;
                InspectStep::KeyBegin(spec.nonempty_string("str")?.into())
            }
            "keyis" => {
                spec.only(&["str"])?;
                InspectStep::KeyIs(spec.nonempty_string("str")?.into())
            }
            "hasflag" | "flagtoken" | "flagint" => {
                spec.only(&["flag"])?;
                let flag = spec.flag()?;
                match name.as_str() {
                    "hasflag" => InspectStep::HasFlag(flag),
                    "flagtoken" => InspectStep::FlagToken(flag),
                    _ => InspectStep::FlagInt(flag),
                }
            }
            "flagis" => {
                spec.only(&["flag", "str"])?;
                let flag = spec.flag()?;
                InspectStep::FlagIs(flag, spec.nonempty_string("str")?.into())
            }
            other => return Err(spec.error(format!("unknown step type '{other}'"))),
        };
        Ok(step)
    }
}

/// The part of `key` a `sepkey` step picks: leading separators are
/// skipped, then the `pos`-th part between separators; `None` when the key
/// has fewer parts or that part is empty.
fn sep_part(key: &[u8], sep: u8, pos: usize) -> Option<&[u8]> {
    let start = key.iter().position(|&b| b != sep)?;
    key[start..]
        .split(|&b| b == sep)
        .nth(pos - 1)
        .filter(|part| !part.is_empty())
}

/// Where flag steps look: a request's meta flags, or a reply's.
#[derive(Clone, Copy)]
enum FlagSource<'a> {
    Request(Option<&'a MetaFlags>),
    Reply(&'a Response),
}

impl<'a> FlagSource<'a> {
    fn token(self, letter: u8) -> Option<&'a [u8]> {
        match self {
            FlagSource::Request(flags) => flags?.token(letter),
            FlagSource::Reply(response) => reply_flag(response, letter),
        }
    }
}

/// An inspector (`mcp.req_inspector_new` / `mcp.res_inspector_new`).
pub struct Inspector {
    kind: Kind,
    steps: Box<[InspectStep]>,
    results: usize,
}

impl Inspector {
    fn new(lua: &Lua, kind: Kind, args: MultiValue) -> mlua::Result<Inspector> {
        let mut steps = Vec::with_capacity(args.len());
        for (i, arg) in args.into_iter().enumerate() {
            let spec = StepSpec::new(lua, arg, "inspector", i + 1)?;
            steps.push(InspectStep::compile(&spec, kind)?);
        }
        let results = steps.iter().map(InspectStep::results).sum();
        Ok(Inspector {
            kind,
            steps: steps.into(),
            results,
        })
    }

    fn call(&self, lua: &Lua, object: Value) -> mlua::Result<MultiValue> {
        let bad = || {
            mlua::Error::runtime(format!(
                "invalid argument to inspector object: expected {}",
                self.kind.object()
            ))
        };
        let Value::UserData(ud) = object else {
            return Err(bad());
        };
        let mut out = MultiValue::with_capacity(self.results);
        match self.kind {
            Kind::Request => {
                let request = super::fresh::with_request(lua, &ud, |r| r.request.clone())
                    .map_err(|_| bad())?;
                let request = &request;
                let key = wire_key(request).unwrap_or_default();
                self.run(
                    lua,
                    key,
                    FlagSource::Request(request_flags(request)),
                    &mut out,
                )?;
            }
            Kind::Response => {
                let response = super::fresh::with_response(lua, &ud, |r| r.response.clone())
                    .map_err(|_| bad())?;
                self.run(lua, b"", FlagSource::Reply(&response), &mut out)?;
            }
        }
        Ok(out)
    }

    fn run(
        &self,
        lua: &Lua,
        key: &[u8],
        flags: FlagSource,
        out: &mut MultiValue,
    ) -> mlua::Result<()> {
        for step in self.steps.iter() {
            match step {
                InspectStep::SepKey { sep, pos, map } => {
                    let value = match sep_part(key, *sep, *pos) {
                        None => Value::Nil,
                        Some(part) => {
                            let part = lua.create_string(part)?;
                            match map {
                                Some(map) => map.raw_get(part)?,
                                None => Value::String(part),
                            }
                        }
                    };
                    out.push_back(value);
                }
                InspectStep::KeyBegin(s) => {
                    out.push_back(Value::Boolean(s.len() < key.len() && key.starts_with(s)));
                }
                InspectStep::KeyIs(s) => out.push_back(Value::Boolean(key == &s[..])),
                InspectStep::HasFlag(letter) => {
                    if let FlagSource::Reply(response) = flags {
                        if reply_flags(response).is_none() {
                            return Err(mlua::Error::runtime(
                                "inspector error: response is not meta protocol",
                            ));
                        }
                    }
                    out.push_back(Value::Boolean(flags.token(*letter).is_some()));
                }
                InspectStep::FlagToken(letter) => match flags.token(*letter) {
                    Some(token) => {
                        out.push_back(Value::Boolean(true));
                        out.push_back(Value::String(lua.create_string(token)?));
                    }
                    None => absent(out),
                },
                InspectStep::FlagInt(letter) => match flags.token(*letter) {
                    Some(token) => {
                        out.push_back(Value::Boolean(true));
                        let number = std::str::from_utf8(token)
                            .ok()
                            .and_then(|t| t.parse::<i64>().ok());
                        out.push_back(number.map_or(Value::Nil, Value::Integer));
                    }
                    None => absent(out),
                },
                InspectStep::FlagIs(letter, s) => match flags.token(*letter) {
                    Some(token) => {
                        out.push_back(Value::Boolean(true));
                        out.push_back(Value::Boolean(token == &s[..]));
                    }
                    None => absent(out),
                },
            }
        }
        Ok(())
    }
}

/// A flag step's answer for a flag that is not there: `false, nil`.
fn absent(out: &mut MultiValue) {
    out.push_back(Value::Boolean(false));
    out.push_back(Value::Nil);
}

impl UserData for Inspector {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Call, |lua, this, object: Value| {
            this.call(lua, object)
        });
    }
}

/// Adds `mcp.req_inspector_new` and `mcp.res_inspector_new` to a worker
/// VM's `mcp` table.
pub fn register(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    for (name, kind) in [
        ("req_inspector_new", Kind::Request),
        ("res_inspector_new", Kind::Response),
    ] {
        mcp.set(
            name,
            lua.create_function(move |lua, args: MultiValue| Inspector::new(lua, kind, args))?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sep_part;

    #[test]
    fn sep_part_follows_memcached() {
        assert_eq!(sep_part(b"sepkey/bar/rest", b'/', 2), Some(&b"bar"[..]));
        assert_eq!(sep_part(b"sepkey/one/two", b'/', 1), Some(&b"sepkey"[..]));
        assert_eq!(sep_part(b"sepkey/two/three", b'/', 3), Some(&b"three"[..]));
        // Leading separators are skipped.
        assert_eq!(sep_part(b"//a/b", b'/', 1), Some(&b"a"[..]));
        // No such part, or an empty one.
        assert_eq!(sep_part(b"a/b", b'/', 3), None);
        assert_eq!(sep_part(b"a/b/", b'/', 3), None);
        assert_eq!(sep_part(b"a//b", b'/', 2), None);
        assert_eq!(sep_part(b"a//b", b'/', 3), Some(&b"b"[..]));
        assert_eq!(sep_part(b"////", b'/', 1), None);
        assert_eq!(sep_part(b"", b'/', 1), None);
        assert_eq!(sep_part(b"plain", b'/', 1), Some(&b"plain"[..]));
    }
}
