//! mcrouter's JSON preprocessor (JSONM) for `--mcrouter-config`: the
//! top-level `macros` section and what it lets the rest of the file say.
//!
//! This module owns expanding a configuration before it is read as routes
//! (`crate::mcrouter`): macro definitions (`"type": "macroDef"` with
//! `params` and `result`, `"type": "constDef"` with `result`), calls in a
//! string (`"@name(arg1,arg2)"`, `"@name"`) and as an object (`{"type":
//! "name", "param": ...}`), `%param%` substitution (the macro's parameters,
//! then the constants), `\` escapes, and the built-in macros that are pure
//! functions of their arguments. mcrouter runs the preprocessor on every
//! configuration, so this does too: a plain configuration without `@` calls
//! or `%` comes out unchanged.
//!
//! The long-form built-ins `define`, `transform`, `process` and `foreach`
//! are here too. Built-ins that memroute cannot honour the way mcrouter
//! does are load errors naming them: `@hash` (folly's hash of the value,
//! which no memroute build reproduces) and `@shuffle` (a random order on
//! each load). `@import` with a literal path is resolved before expansion
//! (`crate::mcrouter`); a path built from parameters is an error.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

/// Deepest nesting of expansions (mcrouter limits it too): a macro or a
/// constant that refers to itself stops here with an error, not a stack
/// overflow.
const MAX_NESTING: usize = 200;

/// The most work one configuration's expansion may take: one unit per
/// value expanded and per element a built-in macro makes (a `range`, a
/// `merge`, a `split`). A real configuration of thousands of servers and
/// routes takes well under a tenth of it; a macro that doubles itself, or
/// a `range` of billions, stops here with an error instead of taking the
/// process's memory or its time (a reload runs this in a live proxy).
const MAX_EXPANSION_WORK: usize = 4_000_000;

/// Built-in macros that take their arguments by position in a string call
/// or by name in an object call, with their parameter names. Parameters
/// after a `?` are optional.
const BUILTINS: &[(&str, &[&str])] = &[
    ("int", &["value"]),
    ("str", &["value"]),
    ("bool", &["value"]),
    ("keys", &["dictionary"]),
    ("values", &["dictionary"]),
    ("merge", &["params"]),
    ("select", &["dictionary", "key", "?default"]),
    ("slice", &["dictionary", "from", "to"]),
    ("split", &["dictionary", "delim"]),
    ("range", &["from", "to"]),
    ("contains", &["dictionary", "key"]),
    ("empty", &["dictionary"]),
    ("equals", &["A", "B"]),
    ("isArray", &["value"]),
    ("isBool", &["value"]),
    ("isInt", &["value"]),
    ("isObject", &["value"]),
    ("isString", &["value"]),
    ("less", &["A", "B"]),
    ("and", &["A", "B"]),
    ("or", &["A", "B"]),
    ("not", &["A"]),
    ("size", &["dictionary"]),
    ("add", &["A", "B"]),
    ("sub", &["A", "B"]),
    ("mul", &["A", "B"]),
    ("div", &["A", "B"]),
    ("mod", &["A", "B"]),
    ("fail", &["msg"]),
    ("sort", &["dictionary"]),
    ("set", &["dictionary", "key", "value"]),
    ("if", &["condition", "is_true", "is_false"]),
];

/// mcrouter built-ins memroute refuses, and why.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "hash",
        "its value is folly's hash, which memroute cannot reproduce",
    ),
    (
        "shuffle",
        "it would order the list differently on every load",
    ),
    (
        "import",
        "@import takes a literal file path here, resolved before macros",
    ),
];

/// Expands `config` (a whole configuration object) as mcrouter's
/// preprocessor does: its `macros` section is read and removed, and every
/// value is expanded.
pub fn expand_config(mut config: Value) -> Result<Value, String> {
    let prep = Preprocessor::default();
    if let Some(map) = config.as_object_mut() {
        if let Some(macros) = map.remove("macros") {
            let macros = prep
                .expand(macros, &Scope::default(), "macros")
                .map_err(|e| format!("macros: {e}"))?;
            prep.define_all(&macros, "macros")?;
        }
    }
    prep.expand(config, &Scope::default(), "")
}

/// A macro a configuration defines.
struct UserMacro {
    params: Vec<Param>,
    result: Value,
}

struct Param {
    name: String,
    /// Used when the call leaves the parameter out.
    default: Option<Value>,
    /// Without a default: an error when left out, unless optional.
    optional: bool,
}

/// A constant: expanded on first use, with no parameters in scope.
enum Const {
    Raw(Value),
    Expanding,
    Done(Value),
}

#[derive(Default)]
struct Preprocessor {
    macros: RefCell<HashMap<String, Rc<UserMacro>>>,
    consts: RefCell<HashMap<String, Const>>,
    depth: Cell<usize>,
    /// Work done so far (see [`MAX_EXPANSION_WORK`]).
    work: Cell<usize>,
}

/// The names a `%name%` can refer to besides constants: a macro's
/// parameters, `define`'s variables.
#[derive(Default)]
struct Scope {
    vars: HashMap<String, Value>,
}

/// An argument as the call wrote it, expanded only when the macro uses it
/// (`@if` and `@select`'s default must not expand the branch they skip).
enum RawArg {
    /// From a string call: expanded as a string.
    Text(String),
    /// From an object call: expanded as JSON.
    Json(Value),
}

/// A built-in's arguments, expanded on demand in the caller's scope.
struct Args<'a> {
    prep: &'a Preprocessor,
    scope: &'a Scope,
    names: &'static [&'static str],
    raw: Vec<Option<RawArg>>,
    path: &'a str,
}

impl Args<'_> {
    fn take(&mut self, name: &str) -> Option<Result<Value, String>> {
        let at = self
            .names
            .iter()
            .position(|n| n.trim_start_matches('?') == name)?;
        let raw = self.raw.get_mut(at)?.take()?;
        Some(match raw {
            RawArg::Text(text) => self.prep.expand_string(&text, self.scope, self.path),
            RawArg::Json(json) => self.prep.expand(json, self.scope, self.path),
        })
    }

    fn get(&mut self, name: &str) -> Result<Value, String> {
        self.take(name)
            .unwrap_or_else(|| Err(format!("'{name}' parameter not given")))
    }

    fn int(&mut self, name: &str) -> Result<i64, String> {
        match self.get(name)? {
            Value::Number(n) if n.is_i64() => Ok(n.as_i64().unwrap_or_default()),
            other => Err(format!("{name} is {}, not an integer", kind(&other))),
        }
    }

    fn bool(&mut self, name: &str) -> Result<bool, String> {
        match self.get(name)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("{name} is {}, not a boolean", kind(&other))),
        }
    }
}

impl Preprocessor {
    /// Reads the (expanded) `macros` section: an object of definitions,
    /// or a list of such objects (lists nest).
    fn define_all(&self, macros: &Value, path: &str) -> Result<(), String> {
        match macros {
            Value::Object(defs) => {
                for (name, def) in defs {
                    self.define(name, def, &format!("{path}.{name}"))?;
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.define_all(item, &format!("{path}[{i}]"))?;
                }
                Ok(())
            }
            other => Err(format!(
                "{path}: must be an object or a list of objects, not {}",
                kind(other)
            )),
        }
    }

    fn define(&self, name: &str, def: &Value, path: &str) -> Result<(), String> {
        let def = def
            .as_object()
            .ok_or_else(|| format!("{path}: a macro definition must be an object"))?;
        let result = def
            .get("result")
            .cloned()
            .ok_or_else(|| format!("{path}.result: missing"))?;
        match def.get("type").and_then(Value::as_str) {
            Some("macroDef") => {
                let params = match def.get("params") {
                    None => Vec::new(),
                    Some(Value::Array(list)) => params(list, &format!("{path}.params"))?,
                    Some(_) => return Err(format!("{path}.params: must be a list")),
                };
                self.macros
                    .borrow_mut()
                    .insert(name.to_string(), Rc::new(UserMacro { params, result }));
                Ok(())
            }
            Some("constDef") => {
                self.consts
                    .borrow_mut()
                    .insert(name.to_string(), Const::Raw(result));
                Ok(())
            }
            Some(other) => Err(format!(
                "{path}.type: unknown macro definition type {other:?} (macroDef or constDef)"
            )),
            None => Err(format!("{path}.type: missing (macroDef or constDef)")),
        }
    }

    /// Counts `units` of work against [`MAX_EXPANSION_WORK`].
    fn charge(&self, units: usize) -> Result<(), String> {
        self.afford(units)?;
        self.work.set(self.work.get() + units);
        Ok(())
    }

    /// Whether `units` more work stay within [`MAX_EXPANSION_WORK`] (asked
    /// before something that large is made).
    fn afford(&self, units: usize) -> Result<(), String> {
        if self.work.get().saturating_add(units) > MAX_EXPANSION_WORK {
            return Err(format!(
                "the configuration expands to more than {MAX_EXPANSION_WORK} values \
                 (a macro that multiplies itself, or a huge range?)"
            ));
        }
        Ok(())
    }

    /// Counts one level of nesting (and a unit of work) for the duration
    /// of `f`.
    fn nested<T>(&self, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        self.charge(1)?;
        let depth = self.depth.get() + 1;
        if depth > MAX_NESTING {
            return Err("macros nested too deep (does one refer to itself?)".into());
        }
        self.depth.set(depth);
        let out = f();
        self.depth.set(depth - 1);
        out
    }

    fn expand(&self, value: Value, scope: &Scope, path: &str) -> Result<Value, String> {
        self.nested(|| match value {
            Value::String(s) => self.expand_string(&s, scope, path),
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| self.expand(item, scope, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(map) => self.expand_object(map, scope, path),
            other => Ok(other),
        })
    }

    fn expand_object(
        &self,
        mut map: Map<String, Value>,
        scope: &Scope,
        path: &str,
    ) -> Result<Value, String> {
        if let Some(Value::String(kind)) = map.get("type") {
            let kind = match self.expand_string(kind, scope, &join(path, "type"))? {
                Value::String(k) => k,
                _ => String::new(),
            };
            match kind.as_str() {
                // Definitions met inside `macros` are read later, as written.
                "macroDef" | "constDef" => return Ok(Value::Object(map)),
                "define" => return self.define_call(map, scope, path),
                "transform" => return self.transform(map, scope, &format!("{path} (transform)")),
                "process" => return self.process(map, scope, &format!("{path} (process)")),
                "foreach" => return self.foreach(map, scope, &format!("{path} (foreach)")),
                _ => {}
            }
            if let Some(found) = self.lookup(&kind) {
                let at = format!("{path} (macro {kind})");
                return match found {
                    Found::User(m) => {
                        let scope = self.bind_named(&m, &kind, &mut map, scope, &at)?;
                        self.expand(m.result.clone(), &scope, &at)
                    }
                    Found::Builtin(names) => {
                        let raw = names
                            .iter()
                            .map(|n| map.remove(n.trim_start_matches('?')).map(RawArg::Json))
                            .collect();
                        self.builtin(&kind, names, raw, scope, &at)
                    }
                    Found::Unsupported(why) => Err(format!("{at}: {}", unsupported(&kind, why))),
                };
            }
        }
        let mut out = Map::new();
        for (key, value) in map {
            let here = join(path, &key);
            let key = match self.expand_string(&key, scope, &here)? {
                Value::String(k) => k,
                other => {
                    return Err(format!(
                        "{here}: a key must expand to a string, not {}",
                        kind(&other)
                    ))
                }
            };
            out.insert(key, self.expand(value, scope, &here)?);
        }
        Ok(Value::Object(out))
    }

    /// The name a loop built-in gives its key, item or value in scope
    /// (`keyName`, `itemName`...: plain strings, not expanded).
    fn loop_name(
        map: &Map<String, Value>,
        field: &str,
        default: &str,
        path: &str,
    ) -> Result<String, String> {
        match map.get(field) {
            None => Ok(default.to_string()),
            Some(Value::String(name)) => Ok(name.clone()),
            Some(other) => Err(format!("{path}: {field} is {}, not a string", kind(other))),
        }
    }

    /// Field `field` of a built-in's object, expanded; an error naming it
    /// when it is missing.
    fn required(
        &self,
        map: &mut Map<String, Value>,
        field: &str,
        scope: &Scope,
        path: &str,
    ) -> Result<Value, String> {
        let value = map
            .remove(field)
            .ok_or_else(|| format!("{path}: '{field}' missing"))?;
        self.expand(value, scope, path)
    }

    /// `{"type": "transform", "dictionary", "itemTransform", "keyTransform",
    /// "itemName", "keyName"}`: each entry's item (and an object's key)
    /// rewritten with `%key%` and `%item%` in scope. A key may become a
    /// list of keys (each gets the item) or an empty list (the entry is
    /// dropped).
    fn transform(
        &self,
        mut map: Map<String, Value>,
        scope: &Scope,
        path: &str,
    ) -> Result<Value, String> {
        let dict = self.required(&mut map, "dictionary", scope, path)?;
        let item_name = Self::loop_name(&map, "itemName", "item", path)?;
        let key_name = Self::loop_name(&map, "keyName", "key", path)?;
        let item_transform = map.get("itemTransform");
        let mut inner = Scope {
            vars: scope.vars.clone(),
        };
        match dict {
            Value::Object(entries) => {
                let key_transform = map.get("keyTransform");
                let mut out = Map::new();
                for (key, item) in entries {
                    inner
                        .vars
                        .insert(key_name.clone(), Value::String(key.clone()));
                    inner.vars.insert(item_name.clone(), item.clone());
                    let new_key = match key_transform {
                        Some(t) => self.expand(t.clone(), &inner, path)?,
                        None => Value::String(key),
                    };
                    let new_item = match item_transform {
                        Some(t) => self.expand(t.clone(), &inner, path)?,
                        None => item,
                    };
                    match new_key {
                        Value::String(k) => {
                            out.insert(k, new_item);
                        }
                        Value::Array(keys) => {
                            for k in keys {
                                let Value::String(k) = k else {
                                    return Err(format!(
                                        "{path}: a transformed key list holds {}, not strings",
                                        kind(&k)
                                    ));
                                };
                                out.insert(k, new_item.clone());
                            }
                        }
                        other => {
                            return Err(format!(
                                "{path}: a transformed key is {}, not a string or a list",
                                kind(&other)
                            ))
                        }
                    }
                }
                Ok(Value::Object(out))
            }
            Value::Array(items) if items.is_empty() => Ok(Value::Array(items)),
            Value::Array(items) => {
                let transform = item_transform
                    .ok_or_else(|| format!("{path}: a list needs 'itemTransform'"))?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    inner.vars.insert(key_name.clone(), Value::from(i));
                    inner.vars.insert(item_name.clone(), item);
                    out.push(self.expand(transform.clone(), &inner, path)?);
                }
                Ok(Value::Array(out))
            }
            other => Err(format!(
                "{path}: dictionary is {}, not an object or a list",
                kind(&other)
            )),
        }
    }

    /// Entries of an object (keys as strings) or a list (indexes), in
    /// order.
    fn entries(dict: Value, path: &str) -> Result<Vec<(Value, Value)>, String> {
        match dict {
            Value::Object(map) => Ok(map
                .into_iter()
                .map(|(k, v)| (Value::String(k), v))
                .collect()),
            Value::Array(items) => Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::from(i), v))
                .collect()),
            other => Err(format!(
                "{path}: dictionary is {}, not an object or a list",
                kind(&other)
            )),
        }
    }

    /// `{"type": "process", "dictionary", "initialValue", "transform",
    /// "keyName", "itemName", "valueName"}`: a fold; `transform` is
    /// expanded once per entry with `%key%`, `%item%` and the running
    /// `%value%` in scope, and gives the next value.
    fn process(
        &self,
        mut map: Map<String, Value>,
        scope: &Scope,
        path: &str,
    ) -> Result<Value, String> {
        let mut take = |field: &str| {
            map.remove(field)
                .ok_or_else(|| format!("{path}: '{field}' missing"))
        };
        let dict = take("dictionary")?;
        let initial = take("initialValue")?;
        let transform = take("transform")?;
        let dict = self.expand(dict, scope, path)?;
        let mut value = self.expand(initial, scope, path)?;
        let key_name = Self::loop_name(&map, "keyName", "key", path)?;
        let item_name = Self::loop_name(&map, "itemName", "item", path)?;
        let value_name = Self::loop_name(&map, "valueName", "value", path)?;
        let mut inner = Scope {
            vars: scope.vars.clone(),
        };
        for (key, item) in Self::entries(dict, path)? {
            inner.vars.insert(key_name.clone(), key);
            inner.vars.insert(item_name.clone(), item);
            inner.vars.insert(value_name.clone(), value);
            value = self.expand(transform.clone(), &inner, path)?;
        }
        Ok(value)
    }

    /// `{"type": "foreach", "from", "key", "item", "where", "use", "top",
    /// "noMatchResult"}`: the entries of `from` for which `where` holds (at
    /// most `top` of them), each as `use` expands it (merged into one list
    /// or object) or as it is; `noMatchResult` (else an empty `from`) when
    /// none does.
    fn foreach(
        &self,
        mut map: Map<String, Value>,
        scope: &Scope,
        path: &str,
    ) -> Result<Value, String> {
        let from = self.required(&mut map, "from", scope, path)?;
        let from_object = from.is_object();
        let item_name = Self::loop_name(&map, "item", "item", path)?;
        let key_name = Self::loop_name(&map, "key", "key", path)?;
        let entries = Self::entries(from, path)?;
        let mut top = match map.remove("top") {
            None => entries.len(),
            Some(top) => match self.expand(top, scope, path)? {
                Value::Number(n) if n.as_u64().is_some() => n.as_u64().unwrap_or(0) as usize,
                other => {
                    return Err(format!(
                        "{path}: top is {}, not a non-negative integer",
                        kind(&other)
                    ))
                }
            },
        };
        let mut inner = Scope {
            vars: scope.vars.clone(),
        };
        let mut result: Option<Value> = None;
        for (key, item) in entries {
            if top == 0 {
                break;
            }
            inner.vars.insert(key_name.clone(), key.clone());
            inner.vars.insert(item_name.clone(), item.clone());
            if let Some(condition) = map.get("where") {
                match self.expand(condition.clone(), &inner, path)? {
                    Value::Bool(true) => {}
                    Value::Bool(false) => continue,
                    other => {
                        return Err(format!(
                            "{path}: 'where' expanded to {}, not a boolean",
                            kind(&other)
                        ))
                    }
                }
            }
            let piece = match map.get("use") {
                Some(template) => self.expand(template.clone(), &inner, path)?,
                None if from_object => {
                    let mut one = Map::new();
                    one.insert(key.as_str().unwrap_or_default().to_string(), item);
                    Value::Object(one)
                }
                None => Value::Array(vec![item]),
            };
            result = Some(match (result, piece) {
                (None, piece @ (Value::Object(_) | Value::Array(_))) => piece,
                (None, other) => {
                    return Err(format!(
                        "{path}: 'use' expanded to {}, not an object or a list",
                        kind(&other)
                    ))
                }
                (Some(Value::Object(mut acc)), Value::Object(more)) => {
                    acc.extend(more);
                    Value::Object(acc)
                }
                (Some(Value::Array(mut acc)), Value::Array(more)) => {
                    acc.extend(more);
                    Value::Array(acc)
                }
                (Some(acc), other) => {
                    return Err(format!(
                        "{path}: 'use' expanded to {} after {}",
                        kind(&other),
                        kind(&acc)
                    ))
                }
            });
            top -= 1;
        }
        match result {
            Some(v) => Ok(v),
            None => match map.remove("noMatchResult") {
                Some(v) => self.expand(v, scope, path),
                None if from_object => Ok(Value::Object(Map::new())),
                None => Ok(Value::Array(Vec::new())),
            },
        }
    }

    /// `{"type": "define", "vars": {...}, "result": ...}`: `result` with
    /// `vars` in scope.
    fn define_call(
        &self,
        mut map: Map<String, Value>,
        scope: &Scope,
        path: &str,
    ) -> Result<Value, String> {
        let at = format!("{path} (define)");
        let Value::Object(vars) = self.required(&mut map, "vars", scope, &at)? else {
            return Err(format!("{at}: 'vars' must be an object"));
        };
        let result = map
            .remove("result")
            .ok_or_else(|| format!("{at}: 'result' missing"))?;
        let mut inner = Scope {
            vars: scope.vars.clone(),
        };
        inner.vars.extend(vars);
        self.expand(result, &inner, &at)
    }

    /// A string: a macro call if it starts with `@`, else `%name%`
    /// substitution.
    fn expand_string(&self, text: &str, scope: &Scope, path: &str) -> Result<Value, String> {
        self.nested(|| {
            let Some(call) = text.strip_prefix('@') else {
                return self.substitute(text, scope, path);
            };
            let (name, args) = match find_unescaped(call, b'(') {
                Some(open) => {
                    let inner = call[open + 1..]
                        .strip_suffix(')')
                        .ok_or_else(|| format!("{path}: no closing bracket in '{text}'"))?;
                    (&call[..open], split_args(inner))
                }
                None => (call, Vec::new()),
            };
            let name = match self.substitute(name, scope, path)? {
                Value::String(n) => n,
                other => {
                    return Err(format!(
                        "{path}: macro name in '{text}' is {}, not a string",
                        kind(&other)
                    ))
                }
            };
            let at = format!("{path} (@{name})");
            match self.lookup(&name) {
                Some(Found::User(m)) => {
                    let scope = self.bind_positional(&m, &name, args, scope, &at)?;
                    self.expand(m.result.clone(), &scope, &at)
                }
                Some(Found::Builtin(names)) => {
                    check_count(&name, names, args.len(), &at)?;
                    let raw = args.into_iter().map(|a| Some(RawArg::Text(a))).collect();
                    self.builtin(&name, names, raw, scope, &at)
                }
                Some(Found::Unsupported(why)) => Err(format!("{at}: {}", unsupported(&name, why))),
                None => Err(format!("{at}: no macro named '{name}'")),
            }
        })
    }

    fn lookup(&self, name: &str) -> Option<Found> {
        if let Some(m) = self.macros.borrow().get(name) {
            return Some(Found::User(m.clone()));
        }
        if let Some((_, names)) = BUILTINS.iter().find(|(n, _)| *n == name) {
            return Some(Found::Builtin(names));
        }
        UNSUPPORTED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, why)| Found::Unsupported(why))
    }

    /// A string call's arguments bound to `m`'s parameters, each expanded
    /// in the caller's scope; defaults fill the rest.
    fn bind_positional(
        &self,
        m: &UserMacro,
        name: &str,
        args: Vec<String>,
        caller: &Scope,
        path: &str,
    ) -> Result<Scope, String> {
        let required = m
            .params
            .iter()
            .filter(|p| p.default.is_none() && !p.optional)
            .count();
        if args.len() < required || args.len() > m.params.len() {
            return Err(format!(
                "{path}: macro {name} takes {}{} arguments, not {}",
                if required < m.params.len() {
                    format!("{required} to ")
                } else {
                    String::new()
                },
                m.params.len(),
                args.len()
            ));
        }
        let mut scope = Scope::default();
        let given = args.len();
        for (param, arg) in m.params.iter().zip(args) {
            let value = self.expand_string(&arg, caller, path)?;
            scope.vars.insert(param.name.clone(), value);
        }
        for param in &m.params[given..] {
            if let Some(default) = &param.default {
                scope.vars.insert(param.name.clone(), default.clone());
            }
        }
        Ok(scope)
    }

    /// An object call's fields bound to `m`'s parameters by name.
    fn bind_named(
        &self,
        m: &UserMacro,
        name: &str,
        call: &mut Map<String, Value>,
        caller: &Scope,
        path: &str,
    ) -> Result<Scope, String> {
        let mut scope = Scope::default();
        for param in &m.params {
            let value = match call.remove(&param.name) {
                Some(v) => self.expand(v, caller, path)?,
                None => match &param.default {
                    Some(default) => default.clone(),
                    None if param.optional => continue,
                    None => {
                        return Err(format!(
                            "{path}: macro {name}: '{}' parameter not given",
                            param.name
                        ))
                    }
                },
            };
            scope.vars.insert(param.name.clone(), value);
        }
        Ok(scope)
    }

    /// `%name%` in `text`: a string that is one whole `%name%` becomes its
    /// value, of any type; inside a longer string the value must be a
    /// string. `\` escapes the next character.
    fn substitute(&self, text: &str, scope: &Scope, path: &str) -> Result<Value, String> {
        let mut out = String::new();
        let mut rest = text;
        loop {
            let Some(open) = unescape_until(rest, &mut out, '%') else {
                return Ok(Value::String(out));
            };
            rest = &rest[open + 1..];
            let mut name = String::new();
            let close = unescape_until(rest, &mut name, '%').ok_or_else(|| {
                format!("{path}: odd number of '%' in '{text}' (write \\% for a percent sign)")
            })?;
            let value = self.var(&name, scope, path)?;
            if out.is_empty() && close == rest.len() - 1 {
                return Ok(value);
            }
            match value {
                Value::String(s) => out.push_str(&s),
                other => {
                    return Err(format!(
                        "{path}: %{name}% is {} inside a longer string (only strings can be \
                         spliced)",
                        kind(&other)
                    ))
                }
            }
            rest = &rest[close + 1..];
        }
    }

    /// A parameter in scope, else a constant.
    fn var(&self, name: &str, scope: &Scope, path: &str) -> Result<Value, String> {
        if let Some(v) = scope.vars.get(name) {
            return Ok(v.clone());
        }
        let raw = {
            let mut consts = self.consts.borrow_mut();
            match consts.get_mut(name) {
                None => return Err(format!("{path}: %{name}%: no such parameter or constant")),
                Some(Const::Done(v)) => return Ok(v.clone()),
                Some(Const::Expanding) => {
                    return Err(format!("{path}: constant '{name}' refers to itself"))
                }
                Some(c @ Const::Raw(_)) => match std::mem::replace(c, Const::Expanding) {
                    Const::Raw(v) => v,
                    _ => unreachable!("matched as raw"),
                },
            }
        };
        let at = format!("constant {name}");
        let value = self.expand(raw, &Scope::default(), &at);
        let mut consts = self.consts.borrow_mut();
        match value {
            Ok(v) => {
                consts.insert(name.to_string(), Const::Done(v.clone()));
                Ok(v)
            }
            Err(e) => Err(e),
        }
    }

    fn builtin(
        &self,
        name: &str,
        names: &'static [&'static str],
        raw: Vec<Option<RawArg>>,
        scope: &Scope,
        path: &str,
    ) -> Result<Value, String> {
        let mut args = Args {
            prep: self,
            scope,
            names,
            raw,
            path,
        };
        builtin(name, &mut args)
            .and_then(|made| {
                // What a built-in makes counts as work: `merge` of two
                // copies of a list, again and again, doubles it each time.
                self.charge(match &made {
                    Value::Array(items) => items.len(),
                    Value::Object(map) => map.len(),
                    Value::String(text) => text.len() / 64,
                    _ => 0,
                })?;
                Ok(made)
            })
            .map_err(|e| {
                if e.starts_with(path) {
                    e
                } else {
                    format!("{path}: {e}")
                }
            })
    }
}

enum Found {
    User(Rc<UserMacro>),
    Builtin(&'static [&'static str]),
    Unsupported(&'static str),
}

fn unsupported(name: &str, why: &str) -> String {
    format!("the built-in macro {name} is not supported by memroute: {why}")
}

fn check_count(name: &str, names: &[&str], given: usize, path: &str) -> Result<(), String> {
    let required = names.iter().filter(|n| !n.starts_with('?')).count();
    if given < required || given > names.len() {
        let want = if required < names.len() {
            format!("{required} to {}", names.len())
        } else {
            required.to_string()
        };
        return Err(format!(
            "{path}: @{name} takes {want} arguments ({}), not {given}",
            names
                .iter()
                .map(|n| n.trim_start_matches('?'))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// A macro's `params`: names, or `{"name": ..., "default": ...}` /
/// `{"name": ..., "optional": true}`; once one has a default (or is
/// optional), the rest must too.
fn params(list: &[Value], path: &str) -> Result<Vec<Param>, String> {
    let mut out: Vec<Param> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let param = match item {
            Value::String(name) => Param {
                name: name.clone(),
                default: None,
                optional: false,
            },
            Value::Object(p) => Param {
                name: p
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{at}.name: missing or not a string"))?
                    .to_string(),
                default: p.get("default").cloned(),
                optional: p.contains_key("optional"),
            },
            other => {
                return Err(format!(
                    "{at}: a parameter is a name or an object, not {}",
                    kind(other)
                ))
            }
        };
        let loose = |p: &Param| p.default.is_some() || p.optional;
        if !loose(&param) && out.last().is_some_and(loose) {
            return Err(format!(
                "{at}: '{}' follows a parameter with a default, so it needs one too",
                param.name
            ));
        }
        out.push(param);
    }
    Ok(out)
}

/// The arguments of a string call, split at the commas outside brackets,
/// each trimmed (an escaped trailing space stays). `@a()` has one empty
/// argument.
fn split_args(inner: &str) -> Vec<String> {
    let bytes = inner.as_bytes();
    let (mut depth, mut start, mut i) = (0i32, 0, 0);
    let mut out = Vec::new();
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => depth -= 1,
            b',' if depth == 0 => {
                out.push(trim(&inner[start..i]).to_string());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(trim(&inner[start.min(inner.len())..]).to_string());
    out
}

/// Whitespace off both ends, except a trailing one escaped with `\`.
fn trim(text: &str) -> &str {
    let text = text.trim_start();
    let mut end = text.len();
    while end > 0 && text.as_bytes()[end - 1].is_ascii_whitespace() {
        let slashes = text.as_bytes()[..end - 1]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if slashes % 2 == 1 {
            break;
        }
        end -= 1;
    }
    &text[..end]
}

/// Where `c` first appears in `text` unescaped.
fn find_unescaped(text: &str, c: u8) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b if b == c => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Copies `from` into `to` with escapes resolved, up to the first
/// unescaped `stop`; answers where that is (`None`: not there).
fn unescape_until(from: &str, to: &mut String, stop: char) -> Option<usize> {
    let mut chars = from.char_indices();
    while let Some((at, c)) = chars.next() {
        if c == '\\' {
            let (_, escaped) = chars.next()?;
            to.push(escaped);
        } else if c == stop {
            return Some(at);
        } else {
            to.push(c);
        }
    }
    None
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn as_int(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or_else(|| format!("{n} is out of range")),
        Value::String(s) => s.parse().map_err(|_| format!("cannot cast \"{s}\" to int")),
        Value::Bool(b) => Ok(i64::from(*b)),
        other => Err(format!("cannot cast {} to int", kind(other))),
    }
}

fn as_string(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("cannot cast {} to string", kind(other))),
    }
}

fn as_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "y" | "t" => Ok(true),
            "false" | "0" | "no" | "off" | "n" | "f" => Ok(false),
            _ => Err(format!("cannot cast \"{s}\" to boolean")),
        },
        other => Err(format!("cannot cast {} to boolean", kind(other))),
    }
}

/// mcrouter orders mixed values by kind first: numbers before strings.
fn order(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            Ok(x.partial_cmp(&y).unwrap_or(Ordering::Equal))
        }
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
        (Value::Number(_), Value::String(_)) => Ok(Ordering::Less),
        (Value::String(_), Value::Number(_)) => Ok(Ordering::Greater),
        _ => Err(format!("cannot compare {} with {}", kind(a), kind(b))),
    }
}

fn builtin(name: &str, args: &mut Args) -> Result<Value, String> {
    let arith = |args: &mut Args, f: fn(i64, i64) -> Option<i64>| -> Result<Value, String> {
        let (a, b) = (args.int("A")?, args.int("B")?);
        f(a, b)
            .map(Value::from)
            .ok_or_else(|| format!("{name} of {a} and {b} has no integer result"))
    };
    let is = |args: &mut Args, f: fn(&Value) -> bool| -> Result<Value, String> {
        Ok(Value::Bool(f(&args.get("value")?)))
    };
    match name {
        "int" => as_int(&args.get("value")?).map(Value::from),
        "str" => as_string(&args.get("value")?).map(Value::String),
        "bool" => as_bool(&args.get("value")?).map(Value::Bool),
        "keys" | "values" => match args.get("dictionary")? {
            Value::Object(map) if name == "keys" => Ok(Value::Array(
                map.into_iter().map(|(k, _)| Value::String(k)).collect(),
            )),
            Value::Object(map) => Ok(Value::Array(map.into_iter().map(|(_, v)| v).collect())),
            other => Err(format!("dictionary is {}, not an object", kind(&other))),
        },
        "merge" => merge(args.get("params")?),
        "select" => select(args),
        "slice" => slice(args),
        "split" => {
            let text = as_text(args.get("dictionary")?, "dictionary")?;
            let delim = as_text(args.get("delim")?, "delim")?;
            if delim.is_empty() {
                return Ok(Value::Array(vec![Value::String(text)]));
            }
            Ok(Value::Array(
                text.split(delim.as_str())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ))
        }
        "range" => {
            let (from, to) = (args.int("from")?, args.int("to")?);
            // Refused before it is made (and counted once made).
            let len = usize::try_from(i128::from(to) - i128::from(from) + 1).unwrap_or(0);
            args.prep.afford(len)?;
            Ok(Value::Array((from..=to).map(Value::from).collect()))
        }
        "contains" => {
            let (dict, key) = (args.get("dictionary")?, args.get("key")?);
            let found = match (&dict, &key) {
                (Value::Object(map), Value::String(k)) => map.contains_key(k),
                (Value::Array(items), _) => items.contains(&key),
                (Value::String(s), Value::String(k)) => s.contains(k.as_str()),
                _ => return Err(format!("cannot look for {} in {}", kind(&key), kind(&dict))),
            };
            Ok(Value::Bool(found))
        }
        "empty" | "size" => {
            let size = match args.get("dictionary")? {
                Value::Object(map) => map.len(),
                Value::Array(items) => items.len(),
                Value::String(s) => s.len(),
                other => {
                    return Err(format!(
                        "dictionary is {}, not an object, list or string",
                        kind(&other)
                    ))
                }
            };
            Ok(if name == "empty" {
                Value::Bool(size == 0)
            } else {
                Value::from(size)
            })
        }
        "equals" => Ok(Value::Bool(args.get("A")? == args.get("B")?)),
        "isArray" => is(args, Value::is_array),
        "isBool" => is(args, Value::is_boolean),
        "isInt" => is(args, Value::is_i64),
        "isObject" => is(args, Value::is_object),
        "isString" => is(args, Value::is_string),
        "less" => {
            let (a, b) = (args.get("A")?, args.get("B")?);
            Ok(Value::Bool(order(&a, &b)? == std::cmp::Ordering::Less))
        }
        "and" => Ok(Value::Bool(args.bool("A")? & args.bool("B")?)),
        "or" => Ok(Value::Bool(args.bool("A")? | args.bool("B")?)),
        "not" => Ok(Value::Bool(!args.bool("A")?)),
        "add" => arith(args, i64::checked_add),
        "sub" => arith(args, i64::checked_sub),
        "mul" => arith(args, i64::checked_mul),
        "div" => arith(args, i64::checked_div),
        "mod" => arith(args, i64::checked_rem),
        "fail" => Err(format!("@fail: {}", as_text(args.get("msg")?, "msg")?)),
        "sort" => match args.get("dictionary")? {
            Value::Array(mut items) => {
                let mut error = None;
                items.sort_by(|a, b| {
                    order(a, b).unwrap_or_else(|e| {
                        error.get_or_insert(e);
                        std::cmp::Ordering::Equal
                    })
                });
                match error {
                    Some(e) => Err(e),
                    None => Ok(Value::Array(items)),
                }
            }
            other => Err(format!("dictionary is {}, not a list", kind(&other))),
        },
        "set" => {
            let key = args.get("key")?;
            let value = args.get("value")?;
            match (args.get("dictionary")?, key) {
                (Value::Object(mut map), Value::String(k)) => {
                    map.insert(k, value);
                    Ok(Value::Object(map))
                }
                (Value::Array(mut items), Value::Number(n)) => {
                    let at = n
                        .as_u64()
                        .map(|i| i as usize)
                        .filter(|&i| i < items.len())
                        .ok_or_else(|| format!("key {n} is out of range"))?;
                    items[at] = value;
                    Ok(Value::Array(items))
                }
                (dict, key) => Err(format!("cannot set {} in {}", kind(&key), kind(&dict))),
            }
        }
        "if" => {
            let condition = args.bool("condition")?;
            args.get(if condition { "is_true" } else { "is_false" })
        }
        other => Err(format!("no built-in macro named '{other}'")),
    }
}

fn as_text(value: Value, name: &str) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(format!("{name} is {}, not a string", kind(&other))),
    }
}

/// `merge`: lists appended, objects merged (later keys win), strings
/// joined; the first parameter decides which.
fn merge(params: Value) -> Result<Value, String> {
    let Value::Array(params) = params else {
        return Err("params must be a list".into());
    };
    let mut params = params.into_iter();
    let mut out = params.next().ok_or("params is empty")?;
    for (i, next) in params.enumerate() {
        match (&mut out, next) {
            (Value::Array(items), Value::Array(more)) => items.extend(more),
            (Value::Object(map), Value::Object(more)) => map.extend(more),
            (Value::String(s), Value::String(more)) => s.push_str(&more),
            (first, other) => {
                return Err(format!(
                    "param {} is {}, but the first is {}",
                    i + 1,
                    kind(&other),
                    kind(first)
                ))
            }
        }
    }
    match out {
        Value::Array(_) | Value::Object(_) | Value::String(_) => Ok(out),
        other => Err(format!(
            "the first param is {}, not a list, object or string",
            kind(&other)
        )),
    }
}

/// `select`: an object's entry by key, a list's by index (negative from
/// the end); the default when it is not there.
fn select(args: &mut Args) -> Result<Value, String> {
    let dict = args.get("dictionary")?;
    let key = args.get("key")?;
    let found = match (dict, &key) {
        (Value::Object(mut map), Value::String(k)) => map.remove(k),
        (Value::Array(mut items), Value::Number(_)) => {
            let n = as_int(&key)?;
            let at = if n < 0 { n + items.len() as i64 } else { n };
            (at >= 0 && (at as usize) < items.len()).then(|| items.swap_remove(at as usize))
        }
        (dict, key) => return Err(format!("cannot select {} from {}", kind(key), kind(&dict))),
    };
    match found {
        Some(v) => Ok(v),
        None => args
            .take("default")
            .unwrap_or_else(|| Err(format!("{key} not found, and no default given"))),
    }
}

/// `slice`: list elements or string bytes `from` to `to`, both included,
/// clamped to the range; an object's entries with keys in that range.
fn slice(args: &mut Args) -> Result<Value, String> {
    let (from, to) = (args.get("from")?, args.get("to")?);
    match args.get("dictionary")? {
        Value::Object(map) => {
            let (Value::String(from), Value::String(to)) = (&from, &to) else {
                return Err("an object is sliced by string keys".into());
            };
            Ok(Value::Object(
                map.into_iter()
                    .filter(|(k, _)| from <= k && k <= to)
                    .collect(),
            ))
        }
        dict @ (Value::Array(_) | Value::String(_)) => {
            let len = match &dict {
                Value::Array(items) => items.len(),
                Value::String(s) => s.len(),
                _ => 0,
            } as i64;
            let start = as_int(&from)?.max(0);
            let end = (as_int(&to)?.saturating_add(1)).min(len);
            let range = if start < end {
                start as usize..end as usize
            } else {
                0..0
            };
            Ok(match dict {
                Value::Array(items) => Value::Array(items[range].to_vec()),
                Value::String(s) => {
                    Value::String(String::from_utf8_lossy(&s.as_bytes()[range]).into_owned())
                }
                _ => unreachable!("matched above"),
            })
        }
        other => Err(format!(
            "dictionary is {}, not a list, object or string",
            kind(&other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn expand_with(macros: Value, value: Value) -> Result<Value, String> {
        let mut config = json!({ "macros": macros, "x": value });
        let expanded = expand_config(config.take())?;
        Ok(expanded["x"].clone())
    }

    fn expand(value: Value) -> Value {
        expand_with(json!({}), value).unwrap()
    }

    #[test]
    fn macros_with_params_defaults_and_consts() {
        let macros = json!({
            "s": { "type": "macroDef", "result": "string" },
            "concat": {
                "type": "macroDef",
                "params": ["p1", { "name": "p2", "default": "321" }],
                "result": "%p1%%p2%"
            },
            "subst": { "type": "macroDef", "params": ["inner"], "result": "@%inner%" },
            "pool": {
                "type": "macroDef",
                "params": ["name", { "name": "port", "default": 11211 }],
                // Only a whole string is a call: "h:@str(...)" would not be.
                "result": { "servers": [
                    { "type": "merge", "params": ["%name%:", "@str(%port%)"] }
                ] }
            },
            "opt": {
                "type": "macroDef",
                "params": [{ "name": "a" }, { "name": "b", "optional": true }],
                "result": "@if(%a%, hello, %b%)"
            },
            "region": { "type": "constDef", "result": "west" },
            "greeting": { "type": "constDef", "result": "%region%-@s" }
        });
        let cases = [
            (json!("@concat(@s,123)"), json!("string123")),
            (json!("@concat(@s)"), json!("string321")),
            (json!("@concat(hello,\n    world)"), json!("helloworld")),
            (json!("@subst(s)"), json!("string")),
            (json!("%region%"), json!("west")),
            (json!("a-%region%-b"), json!("a-west-b")),
            (json!("%greeting%"), json!("west-@s")),
            (json!("@opt(@bool(true))"), json!("hello")),
            (json!("@opt(@bool(false), world)"), json!("world")),
            (
                json!("@pool(10.0.0.1)"),
                json!({ "servers": ["10.0.0.1:11211"] }),
            ),
            (
                json!({ "type": "pool", "name": "h", "port": 5 }),
                json!({ "servers": ["h:5"] }),
            ),
            (json!("\\%\\\\"), json!("%\\")),
            (json!("Pool|A"), json!("Pool|A")),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand_with(macros.clone(), input.clone()).unwrap(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn builtins() {
        let cases = [
            (json!("@int( -1 )"), json!(-1)),
            (json!("@str(@int(5))"), json!("5")),
            (json!("@bool(@int(0))"), json!(false)),
            (json!("@add(@int(2),@int(3))"), json!(5)),
            (json!("@sub(@int(2),@int(3))"), json!(-1)),
            (json!("@mul(@int(2),@int(3))"), json!(6)),
            (json!("@div(@int(7),@int(2))"), json!(3)),
            (json!("@mod(@int(7),@int(2))"), json!(1)),
            (json!("@range(@int(-1), @int(2))"), json!([-1, 0, 1, 2])),
            (
                json!("@and(@not(@or(@bool(false),@bool(1))), @not(@bool(false)))"),
                json!(false),
            ),
            (json!("@if(@bool(true), abc, @fail(oops))"), json!("abc")),
            (json!("@equals(a,a)"), json!(true)),
            (json!("@less(@int(1),@int(2))"), json!(true)),
            (json!("@split(abbabbabb, bb)"), json!(["a", "a", "a", ""])),
            (json!("@slice(abcd,@int(2),@int(3))"), json!("cd")),
            (json!("@size(abc)"), json!(3)),
            (json!("@empty(abc)"), json!(false)),
            (json!("@contains(abc,b)"), json!(true)),
            (
                json!({ "type": "merge", "params": [[1], [2, 3]] }),
                json!([1, 2, 3]),
            ),
            (
                json!({ "type": "merge", "params": [{ "a": 1, "b": 1 }, { "b": 2 }] }),
                json!({ "a": 1, "b": 2 }),
            ),
            (
                json!({ "type": "merge", "params": ["ab", "cd"] }),
                json!("abcd"),
            ),
            (
                json!({ "type": "select", "dictionary": ["a", "b", "c"], "key": -1 }),
                json!("c"),
            ),
            (
                json!({ "type": "select", "dictionary": { "a": 1 }, "key": "z", "default": 3 }),
                json!(3),
            ),
            (
                json!({ "type": "select", "dictionary": { "a": 1 }, "key": "a",
                        "default": "@fail(never)" }),
                json!(1),
            ),
            (
                json!({ "type": "if", "condition": false, "is_true": "@fail(oops)",
                        "is_false": "abc" }),
                json!("abc"),
            ),
            (
                json!({ "type": "sort", "dictionary": ["2", "99", 10, 99] }),
                json!([10, 99, "2", "99"]),
            ),
            (
                json!({ "type": "keys", "dictionary": { "a": 1 } }),
                json!(["a"]),
            ),
            (
                json!({ "type": "set", "dictionary": { "a": 1 }, "key": "c", "value": 10 }),
                json!({ "a": 1, "c": 10 }),
            ),
            (
                json!({ "type": "define", "vars": { "A": "B" }, "result": "%A%" }),
                json!("B"),
            ),
            // Route handles are objects with a type too: left alone.
            (
                json!({ "type": "PoolRoute", "pool": "A" }),
                json!({ "type": "PoolRoute", "pool": "A" }),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input.clone()), want, "{input}");
        }
    }

    #[test]
    fn loops() {
        let macros = json!({
            "concat": { "type": "macroDef", "params": ["a", "b"], "result": "%a%%b%" },
            "indexof": {
                "type": "macroDef",
                "params": ["list", "x"],
                "result": {
                    "type": "process",
                    "initialValue": "@int(-1)",
                    "dictionary": "%list%",
                    "transform": {
                        "type": "if",
                        "condition": "@and(@equals(%value%,@int(-1)),@equals(%item%,%x%))",
                        "is_true": "%key%",
                        "is_false": "%value%"
                    }
                }
            }
        });
        let cases = [
            (
                json!({ "type": "transform", "dictionary": ["a", "b"],
                        "itemTransform": "@concat(%item%,1)" }),
                json!(["a1", "b1"]),
            ),
            (
                json!({ "type": "transform", "dictionary": { "a": "1", "b": "2" },
                        "keyTransform": "%key%1", "itemTransform": "@concat(%item%,%key%)" }),
                json!({ "a1": "1a", "b1": "2b" }),
            ),
            (
                json!({ "type": "transform", "keyTransform": "%item%", "itemTransform": "%key%",
                        "dictionary": { "a": ["1", "2"], "b": [] } }),
                json!({ "1": "a", "2": "a" }),
            ),
            (
                json!({ "type": "indexof", "list": ["a", "b", "c", "b"], "x": "b" }),
                json!(1),
            ),
            (
                json!({ "type": "foreach", "from": { "a": 1, "b": 2, "c": 3 },
                        "where": "@less(%item%,@int(3))" }),
                json!({ "a": 1, "b": 2 }),
            ),
            (
                json!({ "type": "foreach", "from": { "a": 1, "b": 2 },
                        "use": ["%key%"], "noMatchResult": [] }),
                json!(["a", "b"]),
            ),
            (
                json!({ "type": "foreach", "from": [5, 6, 7], "top": 2 }),
                json!([5, 6]),
            ),
            (
                json!({ "type": "foreach", "from": [5], "where": "@bool(false)",
                        "noMatchResult": "none" }),
                json!("none"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand_with(macros.clone(), input.clone()).unwrap(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn definitions_may_be_lists_and_merges() {
        let macros = json!([
            { "a": { "type": "constDef", "result": "A" } },
            [{
                "type": "merge",
                "params": [
                    { "b": { "type": "constDef", "result": "%a%b" } },
                    { "m": { "type": "macroDef", "params": ["p"], "result": "%b%%p%" } }
                ]
            }]
        ]);
        assert_eq!(expand_with(macros, json!("@m(c)")).unwrap(), json!("Abc"));
    }

    #[test]
    fn mistakes_name_what_is_wrong() {
        let err = |macros: Value, value: Value| expand_with(macros, value).unwrap_err();
        let m = json!({ "two": { "type": "macroDef", "params": ["a", "b"], "result": "%a%" } });
        assert!(err(m.clone(), json!("@two(x)")).contains("macro two takes 2 arguments, not 1"));
        assert!(err(json!({}), json!("@nope(x)")).contains("no macro named 'nope'"));
        assert!(err(json!({}), json!("%nope%")).contains("%nope%: no such parameter or constant"));
        assert!(err(json!({}), json!("50%")).contains("odd number of '%'"));
        assert!(err(json!({}), json!("@hash(abc)"))
            .contains("the built-in macro hash is not supported"));
        assert!(err(json!({}), json!("@shuffle(abc)")).contains("macro shuffle"));
        assert!(
            err(json!({}), json!({ "type": "transform", "dictionary": [1] }))
                .contains("a list needs 'itemTransform'")
        );
        assert!(err(json!({}), json!("@fail(stop here)")).contains("@fail: stop here"));
        assert!(err(json!({}), json!("@int(x)")).contains("cannot cast \"x\" to int"));
        let looped = json!({ "me": { "type": "macroDef", "result": "@me" } });
        assert!(err(looped, json!("@me")).contains("nested too deep"));
        let cycle = json!({ "c": { "type": "constDef", "result": "%c%" } });
        assert!(err(cycle, json!("%c%")).contains("constant 'c' refers to itself"));
        let bad = json!({ "x": { "type": "macro", "result": 1 } });
        assert!(err(bad, json!(1)).contains("unknown macro definition type \"macro\""));
        let order = json!({ "m": { "type": "macroDef",
            "params": [{ "name": "a", "default": 1 }, "b"], "result": 1 } });
        assert!(err(order, json!(1)).contains("'b' follows a parameter with a default"));
        // The path of the value that failed is named.
        let e = expand_config(json!({ "route": { "children": ["Pool|A", "@nope"] } })).unwrap_err();
        assert!(e.starts_with("route.children[1]"), "{e}");
    }

    #[test]
    fn an_expansion_that_grows_without_bound_is_an_error() {
        // A range of billions is refused before it is made.
        let error = expand_with(json!({}), json!("@range(@int(0), @int(3000000000))")).unwrap_err();
        assert!(error.contains("expands to more than"), "{error}");
        // A macro that doubles its list, nested: refused once the lists
        // made pass the bound, long before memory or time runs out.
        let macros = json!({
            "dup": {
                "type": "macroDef",
                "params": ["list"],
                "result": { "type": "merge", "params": ["%list%", "%list%"] }
            }
        });
        let mut call = json!({ "type": "range", "from": 0, "to": 999 });
        for _ in 0..40 {
            call = json!({ "type": "dup", "list": call });
        }
        let error = expand_with(macros.clone(), call).unwrap_err();
        assert!(error.contains("expands to more than"), "{error}");
        // A few doublings are fine.
        let mut call = json!({ "type": "range", "from": 0, "to": 999 });
        for _ in 0..3 {
            call = json!({ "type": "dup", "list": call });
        }
        assert_eq!(
            expand_with(macros, call).unwrap().as_array().map(Vec::len),
            Some(8000)
        );
    }
}
