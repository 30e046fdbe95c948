//! mcrouter JSON configurations (`--mcrouter-config FILE`), read into the
//! same route plan routelib files become ([`crate::route::plan`]), so
//! workers build them natively with no Lua.
//!
//! This module owns the reading: comments and `@import(file)` are resolved,
//! macros are expanded ([`crate::mcrouter_macros`]), `pools` become [`PoolDef`]s hashed as mcrouter hashes (Ch3 unless the
//! route says otherwise), and every route handle maps onto a
//! [`RoutePlan`] node. What it cannot honour is an error naming the JSON
//! path (`route.children[2].type: BigValueRoute is not supported`), never
//! silently ignored. docs/mcrouter-migration.md lists what maps to what.
//!
//! The command line names the file through the proxy configuration: the
//! JSON file as the startfile and [`START_ARG`] as the start argument, so
//! loading, SIGHUP reloads and the configuration digest (which hashes the
//! startfile's bytes) go through the same paths as a Lua startfile's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memroute_hash::{Backend, Distribution, DistributionConfig, DistributionKind, KeyFilter};
use serde_json::{Map, Value};

use crate::backend::BackendConfig;
use crate::route::commands;
use crate::route::plan::{RoutePlan, RouterPlan};
use crate::route::router::RouterMode;
use crate::route::{PoolDef, PoolKind};

/// The start argument that means "the startfile is an mcrouter JSON file"
/// (what `--mcrouter-config FILE` sets; no Lua runs, so nothing else
/// reads the start argument).
pub const START_ARG: &str = "<mcrouter-config>";

/// What follows [`START_ARG`] when mcrouter's `--big-value-split-threshold`
/// is given: the threshold, in bytes.
const BIG_VALUE_ARG: &str = "big-value-split-threshold=";

/// The start argument for an mcrouter configuration, with mcrouter's
/// `--big-value-split-threshold` when it is not 0.
pub fn start_arg(big_value_split_threshold: usize) -> String {
    match big_value_split_threshold {
        0 => START_ARG.to_string(),
        n => format!("{START_ARG}{BIG_VALUE_ARG}{n}"),
    }
}

/// Whether a start argument means "an mcrouter JSON file", and with
/// which big-value threshold (0: none).
pub fn read_start_arg(arg: &str) -> Option<usize> {
    let rest = arg.strip_prefix(START_ARG)?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix(BIG_VALUE_ARG)?.parse().ok()
}

/// Deepest `@import` nesting (a loop is an error, not a hang).
const MAX_IMPORT_DEPTH: usize = 16;

/// An mcrouter configuration read into a plan.
#[derive(Debug)]
pub struct McrouterConfig {
    /// The root route (routing prefixes included).
    pub root: RoutePlan,
    /// Every pool the file defines, routed to or not, by name.
    pub pools: Vec<(String, Arc<PoolDef>)>,
}

impl McrouterConfig {
    /// The root as the key router routelib configurations have: no map,
    /// the tree as its default.
    pub fn router(&self) -> RouterPlan {
        RouterPlan {
            mode: RouterMode::default(),
            map: Vec::new(),
            cmap: Vec::new(),
            default: Some(self.root.clone()),
        }
    }
}

/// Reads the mcrouter configuration in `path`. With a
/// `big_value_split_threshold` (mcrouter's flag; 0: none), the whole tree
/// sits under a big-value route, as mcrouter puts its BigValueRoute above
/// the configured routes: values over the threshold are stored as chunks
/// of that size plus an index (see [`crate::route::bigvalue`]).
pub fn load(path: &Path, big_value_split_threshold: usize) -> Result<McrouterConfig, String> {
    let value = read_json(path, 0)?;
    let mut config = parse(&value)?;
    if big_value_split_threshold > 0 {
        config.root = RoutePlan::BigValue {
            child: Box::new(config.root),
            threshold: big_value_split_threshold,
            chunk: big_value_split_threshold,
        };
    }
    Ok(config)
}

/// The largest configuration file (or imported file) read: a path that
/// names a device (`@import(/dev/zero)`) or a runaway file is an error,
/// not the process's memory.
const MAX_CONFIG_FILE: u64 = 64 << 20;

/// The text of `path`, at most [`MAX_CONFIG_FILE`] bytes.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(failed)?
        .take(MAX_CONFIG_FILE + 1)
        .read_to_string(&mut text)
        .map_err(failed)?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(format!(
            "{}: larger than {} MiB, too large for a configuration",
            path.display(),
            MAX_CONFIG_FILE >> 20
        ));
    }
    Ok(text)
}

/// The JSON in `path` (comments allowed, `@import` resolved).
fn read_json(path: &Path, depth: usize) -> Result<Value, String> {
    if depth > MAX_IMPORT_DEPTH {
        return Err(format!(
            "{}: @import nested more than {MAX_IMPORT_DEPTH} deep",
            path.display()
        ));
    }
    let text = read_bounded(path)?;
    let mut value: Value = serde_json::from_str(&strip_comments(&text))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    resolve_imports(&mut value, &dir, depth)?;
    Ok(value)
}

/// Replaces every string `"@import(FILE)"` with FILE's JSON (relative to
/// the importing file's directory).
fn resolve_imports(value: &mut Value, dir: &Path, depth: usize) -> Result<(), String> {
    match value {
        Value::String(s) => {
            // A path built from macro parameters (`%name%`) is left for
            // the macro expander, which refuses it by name.
            if let Some(file) = s
                .trim()
                .strip_prefix("@import(")
                .and_then(|r| r.strip_suffix(')'))
                .filter(|file| !file.contains('%'))
            {
                let file = PathBuf::from(file.trim());
                let file = if file.is_absolute() {
                    file
                } else {
                    dir.join(file)
                };
                *value = read_json(&file, depth + 1)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                resolve_imports(item, dir, depth)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                resolve_imports(item, dir, depth)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `text` without `//` and `/* */` comments and without trailing commas
/// before `}` or `]` (outside strings), which mcrouter's JSON parser
/// accepts and configurations carry.
fn strip_comments(text: &str) -> String {
    strip_trailing_commas(&strip_comment_text(text))
}

fn strip_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    // A comma seen outside strings, held until we know what follows it.
    let mut held: Option<String> = None;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if let Some(pending) = held.as_mut() {
            if c.is_whitespace() {
                pending.push(c);
                continue;
            }
            let pending = held.take().expect("held");
            if c == '}' || c == ']' {
                // Drop the comma, keep the whitespace (line numbers).
                out.push_str(&pending[1..]);
            } else {
                out.push_str(&pending);
            }
        }
        match c {
            ',' => held = Some(String::from(",")),
            '"' => {
                in_string = true;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    if let Some(pending) = held {
        out.push_str(&pending);
    }
    out
}

fn strip_comment_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

/// Reads a configuration already parsed as JSON.
pub fn parse(value: &Value) -> Result<McrouterConfig, String> {
    if !value.is_object() {
        return Err("the configuration must be a JSON object".into());
    }
    // mcrouter preprocesses every configuration (macros, constants,
    // `@builtin(...)` calls), with or without a `macros` section.
    let value = crate::mcrouter_macros::expand_config(value.clone())?;
    let top = value
        .as_object()
        .ok_or("the configuration must expand to a JSON object")?;
    for key in top.keys() {
        match key.as_str() {
            "pools" | "route" | "routes" | "named_handles" => {}
            other => return Err(format!("{other}: unknown top-level key")),
        }
    }
    let mut reader = Reader {
        pools: HashMap::new(),
        order: Vec::new(),
        servers: HashMap::new(),
        named: HashMap::new(),
    };
    if let Some(pools) = top.get("pools") {
        let pools = pools.as_object().ok_or("pools: must be an object")?;
        for (name, pool) in pools {
            reader.define_pool(name, pool, &format!("pools.{name}"))?;
        }
    }
    // Named before the routes that use them, each after those it names.
    if let Some(named) = top.get("named_handles") {
        let named = named
            .as_array()
            .ok_or("named_handles: must be a list of routes with a name")?;
        for (i, handle) in named.iter().enumerate() {
            let path = format!("named_handles[{i}]");
            if handle.get("name").and_then(Value::as_str).is_none() {
                return Err(format!("{path}.name: missing"));
            }
            reader.route(handle, &path)?;
        }
    }
    let root = match (top.get("route"), top.get("routes")) {
        (Some(_), Some(_)) => return Err("route and routes: give one of them".into()),
        (Some(route), None) => reader.route(route, "route")?,
        (None, Some(routes)) => reader.routes(routes)?,
        (None, None) => return Err("no route: give route or routes".into()),
    };
    let pools = reader
        .order
        .iter()
        .map(|name| (name.clone(), reader.pools[name].clone()))
        .collect();
    Ok(McrouterConfig { root, pools })
}

struct Reader {
    pools: HashMap<String, Arc<PoolDef>>,
    /// Pool names in definition order.
    order: Vec<String>,
    /// One backend config per server, shared by every pool naming it, so
    /// a worker keeps one set of connections to it.
    servers: HashMap<String, Arc<BackendConfig>>,
    /// Routes given a `name` (in `named_handles` or anywhere in the tree),
    /// which a string elsewhere may name.
    named: HashMap<String, RoutePlan>,
}

impl Reader {
    fn define_pool(&mut self, name: &str, pool: &Value, path: &str) -> Result<(), String> {
        let pool = pool
            .as_object()
            .ok_or_else(|| format!("{path}: a pool must be an object"))?;
        let mut backends = Vec::new();
        // The pool's own hash (mcrouter's older pool properties).
        let mut hashing = Hashing {
            kind: DistributionKind::Ch3,
            salt: Vec::new(),
            weights: Vec::new(),
        };
        for (key, value) in pool {
            match key.as_str() {
                "hash" => {
                    let name = value.as_str().unwrap_or_default().to_ascii_lowercase();
                    hashing.kind = match name.as_str() {
                        "ch3" => DistributionKind::Ch3,
                        "crc32" => DistributionKind::Crc32,
                        "wch3" | "weightedch3" => DistributionKind::WeightedCh3,
                        _ => {
                            return Err(format!(
                                "{path}.hash: {value} is not supported (ch3, crc32 or wch3)"
                            ))
                        }
                    }
                }
                "hash_weights" => {
                    hashing.weights = weight_list(value, &format!("{path}.hash_weights"))?
                }
                "hash_salt" => {
                    return Err(format!(
                        "{path}.hash_salt: not supported on a pool (salt the route: \
                         PoolRoute hash.salt or HashRoute salt)"
                    ))
                }
                "servers" => {
                    let servers = value
                        .as_array()
                        .ok_or_else(|| format!("{path}.servers: must be a list"))?;
                    for (i, server) in servers.iter().enumerate() {
                        let at = format!("{path}.servers[{i}]");
                        backends.push(self.server(server, &at)?);
                    }
                }
                // Settings of mcrouter's transport memroute has no use for.
                "protocol"
                    if value
                        .as_str()
                        .is_some_and(|p| p.eq_ignore_ascii_case("ascii")) => {}
                "name" => {}
                // Stripping the prefix is what memroute does.
                "keep_routing_prefix" if value.as_bool() == Some(false) => {}
                other => return Err(format!("{path}.{other}: not supported")),
            }
        }
        if backends.is_empty() {
            return Err(format!("{path}.servers: a pool needs at least one server"));
        }
        let weighted = hashing.kind == DistributionKind::WeightedCh3;
        if !weighted && !hashing.weights.is_empty() {
            return Err(format!("{path}.hash_weights: only for hash wch3"));
        }
        if weighted && hashing.weights.len() != backends.len() {
            return Err(format!(
                "{path}.hash_weights: {} weights for {} servers",
                hashing.weights.len(),
                backends.len()
            ));
        }
        let dist = distribution(&hashing, backends.len(), path)?;
        let def = memcached_pool(name.to_string(), backends, dist);
        if self.pools.insert(name.to_string(), def).is_none() {
            self.order.push(name.to_string());
        }
        Ok(())
    }

    /// `"host:port"` (or `"host:port:ascii"`).
    fn server(&mut self, server: &Value, path: &str) -> Result<Arc<BackendConfig>, String> {
        let text = server
            .as_str()
            .ok_or_else(|| format!("{path}: a server must be a \"host:port\" string"))?;
        let mut spec = text;
        if let Some((rest, protocol)) = text.rsplit_once(':') {
            if protocol.eq_ignore_ascii_case("ascii") {
                spec = rest;
            } else if protocol.eq_ignore_ascii_case("caret")
                || protocol.eq_ignore_ascii_case("umbrella")
            {
                return Err(format!(
                    "{path}: protocol {protocol} is not supported (ascii only)"
                ));
            }
        }
        let (host, port) = spec
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .filter(|(h, p)| !h.is_empty() && *p > 0)
            .ok_or_else(|| format!("{path}: {text:?} is not host:port"))?;
        Ok(self
            .servers
            .entry(format!("{host}:{port}"))
            .or_insert_with(|| Arc::new(BackendConfig::new(host, port)))
            .clone())
    }

    fn pool(&mut self, value: &Value, path: &str) -> Result<Arc<PoolDef>, String> {
        match value {
            Value::String(name) => self
                .pools
                .get(name)
                .cloned()
                .ok_or_else(|| format!("{path}: no pool named {name:?}")),
            Value::Object(map) => {
                let name = map
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{path}.name: an inline pool needs a name"))?
                    .to_string();
                self.define_pool(&name, value, path)?;
                Ok(self.pools[&name].clone())
            }
            _ => Err(format!("{path}: a pool is a name or an object")),
        }
    }

    /// `routes: [{aliases: [...], route}]`: routing prefixes. Keys without
    /// one go to the first alias's route (mcrouter takes this default from
    /// its `--route-prefix`, which memroute does not have).
    fn routes(&mut self, routes: &Value) -> Result<RoutePlan, String> {
        let routes = routes
            .as_array()
            .ok_or("routes: must be a list of {aliases, route}")?;
        let mut by_alias: Vec<(Vec<u8>, RoutePlan)> = Vec::new();
        for (i, entry) in routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            let entry = entry
                .as_object()
                .ok_or_else(|| format!("{path}: must be an object"))?;
            check_keys(entry, &["aliases", "route"], &path)?;
            let route = self.route(
                entry
                    .get("route")
                    .ok_or_else(|| format!("{path}.route: missing"))?,
                &format!("{path}.route"),
            )?;
            let aliases = entry
                .get("aliases")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("{path}.aliases: must be a list"))?;
            for (j, alias) in aliases.iter().enumerate() {
                let at = format!("{path}.aliases[{j}]");
                let alias = alias
                    .as_str()
                    .ok_or_else(|| format!("{at}: must be a string"))?;
                let valid = crate::route::handlers::RoutingPrefix::prefix_of(alias.as_bytes())
                    .is_some_and(|p| p.len() == alias.len())
                    && !alias.contains('*');
                if !valid {
                    return Err(format!("{at}: {alias:?} is not a /region/cluster/ prefix"));
                }
                if by_alias.iter().any(|(a, _)| a == alias.as_bytes()) {
                    return Err(format!("{at}: {alias:?} is given twice"));
                }
                by_alias.push((alias.as_bytes().to_vec(), route.clone()));
            }
        }
        let default = by_alias
            .first()
            .map(|(_, r)| r.clone())
            .ok_or("routes: no alias given")?;
        Ok(RoutePlan::RoutingPrefix {
            routes: by_alias,
            default: Box::new(default),
        })
    }

    /// One route handle: a string (`"PoolRoute|A"`) or an object.
    fn route(&mut self, value: &Value, path: &str) -> Result<RoutePlan, String> {
        match value {
            Value::String(s) => self.route_string(s, path),
            Value::Object(map) => self.route_object(map, path),
            Value::Array(_) => Err(format!("{path}: one route expected, not a list")),
            _ => Err(format!("{path}: a route is a string or an object")),
        }
    }

    fn route_string(&mut self, s: &str, path: &str) -> Result<RoutePlan, String> {
        let (kind, arg) = match s.split_once('|') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        match (kind, arg) {
            ("PoolRoute" | "Pool", Some(name)) => Ok(RoutePlan::Pool(
                self.pool(&Value::String(name.to_string()), path)?,
            )),
            ("ErrorRoute", message) => Ok(RoutePlan::Error(
                message.unwrap_or("ErrorRoute").to_string(),
            )),
            ("NullRoute", None) => Ok(RoutePlan::Null),
            (name, None) if self.named.contains_key(name) => Ok(self.named[name].clone()),
            (other, None) => Err(format!(
                "{path}: {other} is not supported (nor the name of a named handle)"
            )),
            (other, _) => Err(format!("{path}: {other} is not supported")),
        }
    }

    /// A list of routes; a `"Pool|NAME"` string in it stands for every
    /// server of the pool, one route each (as mcrouter expands it).
    fn children(&mut self, value: Option<&Value>, path: &str) -> Result<Vec<RoutePlan>, String> {
        let value = value.ok_or_else(|| format!("{path}: missing"))?;
        let mut out = Vec::new();
        let mut add = |reader: &mut Reader, item: &Value, at: &str| -> Result<(), String> {
            if let Some(name) = item.as_str().and_then(|s| s.strip_prefix("Pool|")) {
                out.extend(reader.servers_of(name, at)?);
            } else {
                out.push(reader.route(item, at)?);
            }
            Ok(())
        };
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    add(self, item, &format!("{path}[{i}]"))?;
                }
            }
            item => add(self, item, path)?,
        }
        if out.is_empty() {
            return Err(format!("{path}: no routes"));
        }
        Ok(out)
    }

    /// One single-server route per server of pool `name`.
    fn servers_of(&mut self, name: &str, path: &str) -> Result<Vec<RoutePlan>, String> {
        let pool = self.pool(&Value::String(name.to_string()), path)?;
        let PoolKind::Memcached { backends, .. } = &pool.kind else {
            return Err(format!("{path}: {name} is not a memcached pool"));
        };
        backends
            .iter()
            .map(|b| {
                let label = format!("{name}/{}:{}", b.host, b.port);
                Ok(RoutePlan::Pool(memcached_pool(
                    label,
                    vec![b.clone()],
                    ch3(1, path)?,
                )))
            })
            .collect()
    }

    fn one(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<RoutePlan, String> {
        let value = map
            .get(key)
            .ok_or_else(|| format!("{path}.{key}: missing"))?;
        self.route(value, &format!("{path}.{key}"))
    }

    /// `plan` with `shadows` (`[{target, key_fraction_range}]`, as
    /// ShadowRoute and PoolRoute take them) around it, one node each.
    fn shadowed(
        &mut self,
        mut plan: RoutePlan,
        shadows: &Value,
        path: &str,
    ) -> Result<RoutePlan, String> {
        let shadows = shadows
            .as_array()
            .ok_or_else(|| format!("{path}: must be a list"))?;
        for (i, shadow) in shadows.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let shadow = shadow
                .as_object()
                .ok_or_else(|| format!("{at}: must be an object"))?;
            check_keys(shadow, &["target", "key_fraction_range"], &at)?;
            let target = self.one(shadow, "target", &at)?;
            plan = match shadow.get("key_fraction_range") {
                // No range: every request.
                None => RoutePlan::Shadow {
                    child: Box::new(plan),
                    shadows: vec![target],
                    rate: 1.0,
                },
                Some(range) => {
                    let (start, end) = fraction_range(range, &format!("{at}.key_fraction_range"))?;
                    RoutePlan::KeyShadow {
                        child: Box::new(plan),
                        shadows: vec![target],
                        start,
                        end,
                    }
                }
            };
        }
        Ok(plan)
    }

    fn route_object(&mut self, map: &Map<String, Value>, path: &str) -> Result<RoutePlan, String> {
        let Some(name) = map.get("name") else {
            return self.handle(map, path);
        };
        // A named handle: the route without its name, remembered.
        let name = name
            .as_str()
            .ok_or_else(|| format!("{path}.name: must be a string"))?
            .to_string();
        let mut unnamed = map.clone();
        unnamed.remove("name");
        let plan = self.handle(&unnamed, path)?;
        if self.named.insert(name.clone(), plan.clone()).is_some() {
            return Err(format!("{path}.name: {name:?} is named twice"));
        }
        Ok(plan)
    }

    fn handle(&mut self, map: &Map<String, Value>, path: &str) -> Result<RoutePlan, String> {
        let kind = map
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{path}.type: missing"))?;
        let children_of =
            |r: &mut Reader| r.children(map.get("children"), &format!("{path}.children"));
        let plan = match kind {
            "PoolRoute" => {
                check_keys(map, &["type", "pool", "hash", "shadows"], path)?;
                let pool = self.pool(
                    map.get("pool")
                        .ok_or_else(|| format!("{path}.pool: missing"))?,
                    &format!("{path}.pool"),
                )?;
                let routed = match map.get("hash") {
                    None => RoutePlan::Pool(pool),
                    Some(hash) => {
                        let at = format!("{path}.hash");
                        let hashing = hash_spec(hash, &at)?;
                        let name = pool.name.clone();
                        match (&pool.kind, hashing.salt.is_empty()) {
                            // Unsalted: the pool itself, hashed as asked
                            // (multi-key gets still go one line per server).
                            (PoolKind::Memcached { backends, .. }, true) => {
                                let dist = distribution(&hashing, backends.len(), &at)?;
                                RoutePlan::Pool(memcached_pool(name, backends.clone(), dist))
                            }
                            // Salted: a hash route over its servers.
                            _ => {
                                let servers = self.servers_of(&name, &format!("{path}.pool"))?;
                                hash_route(servers, hashing, &at)?
                            }
                        }
                    }
                };
                match map.get("shadows") {
                    Some(shadows) => self.shadowed(routed, shadows, &format!("{path}.shadows"))?,
                    None => routed,
                }
            }
            "HashRoute" => {
                check_keys(
                    map,
                    &["type", "children", "hash_func", "salt", "weights"],
                    path,
                )?;
                let children = children_of(self)?;
                hash_route(children, hashing(map, path)?, path)?
            }
            "FailoverRoute" => {
                check_keys(map, &["type", "children"], path)?;
                let children = children_of(self)?;
                RoutePlan::Failover {
                    limit: children.len(),
                    children,
                    miss: false,
                    shuffle: false,
                    stat: None,
                }
            }
            "MissFailoverRoute" => {
                check_keys(map, &["type", "children"], path)?;
                let children = children_of(self)?;
                // Retrievals go down the list until a hit; anything else
                // goes to the first child only, as in mcrouter.
                let first = children[0].clone();
                let failover = RoutePlan::Failover {
                    limit: children.len(),
                    children,
                    miss: true,
                    shuffle: false,
                    stat: None,
                };
                by_command(
                    RETRIEVALS
                        .iter()
                        .map(|id| (*id, failover.clone()))
                        .collect(),
                    Some(first),
                )
            }
            "AllSyncRoute" => {
                check_keys(map, &["type", "children"], path)?;
                RoutePlan::AllSync(children_of(self)?)
            }
            "AllAsyncRoute" => {
                check_keys(map, &["type", "children"], path)?;
                RoutePlan::AllAsync(children_of(self)?)
            }
            "AllFastestRoute" => {
                check_keys(map, &["type", "children"], path)?;
                RoutePlan::AllFastest(children_of(self)?)
            }
            "AllMajorityRoute" => {
                check_keys(map, &["type", "children"], path)?;
                RoutePlan::AllMajority(children_of(self)?)
            }
            "AllInitialRoute" => {
                check_keys(map, &["type", "children"], path)?;
                // The first child's reply; the rest in the background.
                let mut children = children_of(self)?;
                let first = children.remove(0);
                if children.is_empty() {
                    first
                } else {
                    RoutePlan::Split(Box::new(first), Box::new(RoutePlan::AllAsync(children)))
                }
            }
            "RandomRoute" => {
                check_keys(map, &["type", "children"], path)?;
                RoutePlan::Random(children_of(self)?)
            }
            "PrefixSelectorRoute" => {
                check_keys(map, &["type", "policies", "wildcard"], path)?;
                let mut policies = Vec::new();
                if let Some(p) = map.get("policies") {
                    let p = p
                        .as_object()
                        .ok_or_else(|| format!("{path}.policies: must be an object"))?;
                    for (prefix, route) in p {
                        let route = self.route(route, &format!("{path}.policies.{prefix}"))?;
                        policies.push((prefix.as_bytes().to_vec(), route));
                    }
                }
                let wildcard = match map.get("wildcard") {
                    Some(w) => Some(Box::new(self.route(w, &format!("{path}.wildcard"))?)),
                    None => None,
                };
                RoutePlan::PrefixSelector { policies, wildcard }
            }
            "OperationSelectorRoute" => {
                check_keys(map, &["type", "operation_policies", "default_policy"], path)?;
                let mut routes = Vec::new();
                if let Some(p) = map.get("operation_policies") {
                    let p = p
                        .as_object()
                        .ok_or_else(|| format!("{path}.operation_policies: must be an object"))?;
                    for (op, route) in p {
                        let at = format!("{path}.operation_policies.{op}");
                        let ids = operation_ids(op)
                            .ok_or_else(|| format!("{at}: unknown operation {op:?}"))?;
                        let route = self.route(route, &at)?;
                        routes.extend(ids.iter().map(|id| (*id, route.clone())));
                    }
                }
                let default = match map.get("default_policy") {
                    Some(d) => Some(self.route(d, &format!("{path}.default_policy"))?),
                    None => None,
                };
                by_command(routes, default)
            }
            "WarmUpRoute" => {
                check_keys(map, &["type", "cold", "warm", "exptime"], path)?;
                RoutePlan::Warmup {
                    cold: Box::new(self.one(map, "cold", path)?),
                    warm: Box::new(self.one(map, "warm", path)?),
                    ttl: int_at_least(map, "exptime", 3600, 0, path)?,
                }
            }
            "L1L2CacheRoute" => {
                check_keys(
                    map,
                    &[
                        "type",
                        "l1",
                        "l2",
                        "upgradingL1Exptime",
                        "ncacheExptime",
                        "ncacheUpdatePeriod",
                    ],
                    path,
                )?;
                if int(map, "ncacheUpdatePeriod", 0, path)? != 0 {
                    return Err(format!(
                        "{path}.ncacheUpdatePeriod: only 0 is supported (memroute never \
                         rechecks L2 while a negative entry lives)"
                    ));
                }
                RoutePlan::L1L2 {
                    l1: Box::new(self.one(map, "l1", path)?),
                    l2: Box::new(self.one(map, "l2", path)?),
                    ttl: int_at_least(map, "upgradingL1Exptime", 0, 0, path)?,
                    negative_ttl: int_at_least(map, "ncacheExptime", 0, 0, path)?,
                }
            }
            "MigrateRoute" => {
                check_keys(map, &["type", "from", "to", "start_time", "interval"], path)?;
                if !map.contains_key("start_time") {
                    return Err(format!("{path}.start_time: missing"));
                }
                let start = int_at_least(map, "start_time", 0, 0, path)?;
                let interval = int_at_least(map, "interval", 3600, 1, path)?;
                let from = self.one(map, "from", path)?;
                let to = self.one(map, "to", path)?;
                let migrate = |start: i64, stop: i64| RoutePlan::Migrate {
                    from: Box::new(from.clone()),
                    to: Box::new(to.clone()),
                    start,
                    stop,
                    stat: None,
                };
                // mcrouter's phases: deletes go to both from start_time for
                // two intervals (memroute's migration window sends deletes
                // to both); everything else switches from `from` to `to`
                // after one interval (an empty window: a plain switch).
                let switch = start.saturating_add(interval);
                let deletes = migrate(start, switch.saturating_add(interval));
                by_command(
                    DELETES.iter().map(|id| (*id, deletes.clone())).collect(),
                    Some(migrate(switch, switch)),
                )
            }
            "ShadowRoute" => {
                check_keys(map, &["type", "default_policy", "shadows"], path)?;
                let plan = self.one(map, "default_policy", path)?;
                let shadows = map
                    .get("shadows")
                    .ok_or_else(|| format!("{path}.shadows: missing"))?;
                self.shadowed(plan, shadows, &format!("{path}.shadows"))?
            }
            "ErrorRoute" => {
                check_keys(map, &["type", "response"], path)?;
                let message = match map.get("response") {
                    Some(r) => r
                        .as_str()
                        .ok_or_else(|| format!("{path}.response: must be a string"))?,
                    None => "ErrorRoute",
                };
                RoutePlan::Error(message.to_string())
            }
            "NullRoute" => {
                check_keys(map, &["type"], path)?;
                RoutePlan::Null
            }
            other => return Err(format!("{path}.type: {other} is not supported")),
        };
        Ok(plan)
    }
}

/// Delete command ids (`delete`, `md`).
const DELETES: &[i64] = &[18, 3];

/// Retrieval command ids (MissFailoverRoute fails over on their misses).
const RETRIEVALS: &[i64] = &[1, 7, 8, 12, 13];

/// The command ids an mcrouter operation name covers. Meta commands go
/// with their text counterparts (`mg` with `get`, `ms` with `set`, ...).
fn operation_ids(op: &str) -> Option<&'static [i64]> {
    Some(match op {
        "get" => &[7, 1],
        "gets" => &[12],
        "gat" => &[8],
        "gats" => &[13],
        "set" => &[commands::CMD_SET, 2],
        "add" => &[10],
        "replace" => &[19],
        "append" => &[17],
        "prepend" => &[20],
        "cas" => &[11],
        "delete" => &[18, 3],
        "incr" => &[14, 5],
        "decr" => &[15],
        "touch" => &[16],
        _ => return None,
    })
}

/// A key router with routes per command and a default.
fn by_command(cmap: Vec<(i64, RoutePlan)>, default: Option<RoutePlan>) -> RoutePlan {
    RoutePlan::Router(Box::new(RouterPlan {
        mode: RouterMode::default(),
        map: Vec::new(),
        cmap,
        default,
    }))
}

fn check_keys(map: &Map<String, Value>, known: &[&str], path: &str) -> Result<(), String> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("{path}.{k}: not supported")),
        None => Ok(()),
    }
}

fn int(map: &Map<String, Value>, key: &str, default: i64, path: &str) -> Result<i64, String> {
    match map.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("{path}.{key}: must be an integer")),
    }
}

/// [`int`] for a count of seconds or a time: at least `min` (a negative
/// TTL or interval would mean nothing memroute could honour).
fn int_at_least(
    map: &Map<String, Value>,
    key: &str,
    default: i64,
    min: i64,
    path: &str,
) -> Result<i64, String> {
    match int(map, key, default, path)? {
        n if n >= min => Ok(n),
        _ => Err(format!("{path}.{key}: must be {min} or more")),
    }
}

/// `[start, end]` within 0..1, scaled to 2^32-1 as mcrouter scales it.
fn fraction_range(range: &Value, path: &str) -> Result<(u32, u32), String> {
    let pair = range
        .as_array()
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)))
        .ok_or_else(|| format!("{path}: must be [start, end]"))?;
    if !(0.0..=1.0).contains(&pair.0) || !(pair.0..=1.0).contains(&pair.1) {
        return Err(format!("{path}: needs 0 <= start <= end <= 1"));
    }
    let scale = |f: f64| (f * f64::from(u32::MAX)) as u32;
    Ok((scale(pair.0), scale(pair.1)))
}

fn hash_func(value: &Value, path: &str) -> Result<DistributionKind, String> {
    match value.as_str() {
        Some("Ch3") => Ok(DistributionKind::Ch3),
        Some("Crc32") => Ok(DistributionKind::Crc32),
        Some("WeightedCh3") => Ok(DistributionKind::WeightedCh3),
        Some(other) => Err(format!(
            "{path}: {other} is not supported (Ch3, Crc32 or WeightedCh3)"
        )),
        None => Err(format!("{path}: must be a string")),
    }
}

/// How a route hashes keys over its children or servers.
struct Hashing {
    kind: DistributionKind,
    salt: Vec<u8>,
    /// WeightedCh3's weights, one per child, each in 0..=1.
    weights: Vec<f64>,
}

/// `hash_func` (Ch3 by default), `salt` and `weights` of `map`.
fn hashing(map: &Map<String, Value>, path: &str) -> Result<Hashing, String> {
    let kind = match map.get("hash_func") {
        Some(f) => hash_func(f, &format!("{path}.hash_func"))?,
        None => DistributionKind::Ch3,
    };
    let salt = match map.get("salt") {
        Some(s) => s
            .as_str()
            .ok_or_else(|| format!("{path}.salt: must be a string"))?
            .as_bytes()
            .to_vec(),
        None => Vec::new(),
    };
    let weights = match (map.get("weights"), kind) {
        (None, DistributionKind::WeightedCh3) => {
            return Err(format!("{path}.weights: WeightedCh3 needs weights"))
        }
        (None, _) => Vec::new(),
        (Some(_), kind) if kind != DistributionKind::WeightedCh3 => {
            return Err(format!("{path}.weights: only WeightedCh3 takes weights"))
        }
        (Some(w), _) => weight_list(w, &format!("{path}.weights"))?,
    };
    Ok(Hashing {
        kind,
        salt,
        weights,
    })
}

/// WeightedCh3 weights: numbers in 0..=1.
fn weight_list(value: &Value, path: &str) -> Result<Vec<f64>, String> {
    value
        .as_array()
        .and_then(|w| w.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
        .filter(|w| w.iter().all(|x| (0.0..=1.0).contains(x)))
        .ok_or_else(|| format!("{path}: must be a list of numbers in 0..=1"))
}

/// A PoolRoute's `hash`: a function name, or `{hash_func, salt, weights}`.
fn hash_spec(value: &Value, path: &str) -> Result<Hashing, String> {
    match value {
        Value::String(_) => {
            let kind = hash_func(value, path)?;
            if kind == DistributionKind::WeightedCh3 {
                return Err(format!("{path}: WeightedCh3 needs an object with weights"));
            }
            Ok(Hashing {
                kind,
                salt: Vec::new(),
                weights: Vec::new(),
            })
        }
        Value::Object(map) => {
            check_keys(map, &["hash_func", "salt", "weights"], path)?;
            hashing(map, path)
        }
        _ => Err(format!("{path}: a hash function name or an object")),
    }
}

/// The distribution over `n` children. mcrouter hashes the part of a key
/// before `|#|`; WeightedCh3's weights travel as backend weights (the
/// threshold `weight * (2^32 - 1)`, as mcrouter computes it).
fn distribution(hashing: &Hashing, n: usize, path: &str) -> Result<Distribution, String> {
    let weighted = hashing.kind == DistributionKind::WeightedCh3;
    if weighted && hashing.weights.len() != n {
        return Err(format!(
            "{path}.weights: {} weights for {n} servers or children",
            hashing.weights.len()
        ));
    }
    let names: Vec<Backend> = (0..n)
        .map(|i| {
            let name = format!("child-{i}");
            match weighted {
                true => {
                    Backend::with_weight(name, (hashing.weights[i] * f64::from(u32::MAX)) as u32)
                }
                false => Backend::new(name),
            }
        })
        .collect();
    DistributionConfig::new(hashing.kind)
        .with_filter(KeyFilter::stop("|#|"))
        .build(&names)
        .map_err(|e| format!("{path}: {e}"))
}

fn ch3(n: usize, path: &str) -> Result<Distribution, String> {
    let hashing = Hashing {
        kind: DistributionKind::Ch3,
        salt: Vec::new(),
        weights: Vec::new(),
    };
    distribution(&hashing, n, path)
}

fn hash_route(children: Vec<RoutePlan>, hashing: Hashing, path: &str) -> Result<RoutePlan, String> {
    let distribution = distribution(&hashing, children.len(), path)?;
    Ok(RoutePlan::Hash {
        children,
        distribution: Arc::new(distribution),
        salt: hashing.salt,
    })
}

fn memcached_pool(
    name: String,
    backends: Vec<Arc<BackendConfig>>,
    distribution: Distribution,
) -> Arc<PoolDef> {
    Arc::new(PoolDef {
        name,
        kind: PoolKind::Memcached {
            backends,
            distribution: Arc::new(distribution),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(config: Value) -> Result<McrouterConfig, String> {
        parse(&config)
    }

    fn root(route: Value) -> RoutePlan {
        read(json!({
            "pools": {
                "A": {"servers": ["127.0.0.1:5000", "127.0.0.1:5001"]},
                "B": {"servers": ["127.0.0.1:5002"]},
            },
            "route": route,
        }))
        .unwrap()
        .root
    }

    fn err(route: Value) -> String {
        read(json!({
            "pools": {"A": {"servers": ["127.0.0.1:5000"]}},
            "route": route,
        }))
        .unwrap_err()
    }

    fn pool_name(plan: &RoutePlan) -> &str {
        match plan {
            RoutePlan::Pool(def) => &def.name,
            other => panic!("not a pool: {other:?}"),
        }
    }

    #[test]
    fn pools_are_ch3_and_share_servers() {
        let config = read(json!({
            "pools": {
                "A": {"servers": ["127.0.0.1:5000", "127.0.0.1:5001:ascii"]},
                "B": {"servers": ["127.0.0.1:5001"]},
            },
            "route": "PoolRoute|A",
        }))
        .unwrap();
        assert_eq!(pool_name(&config.root), "A");
        let backends = |i: usize| match &config.pools[i].1.kind {
            PoolKind::Memcached {
                backends,
                distribution,
            } => {
                assert_eq!(distribution.kind(), DistributionKind::Ch3);
                backends.clone()
            }
            _ => unreachable!(),
        };
        // One config per server: workers keep one connection set for it.
        assert!(Arc::ptr_eq(&backends(0)[1], &backends(1)[0]));
    }

    #[test]
    fn strings_name_pools_errors_and_nulls() {
        assert_eq!(pool_name(&root(json!("Pool|B"))), "B");
        assert!(matches!(root(json!("NullRoute")), RoutePlan::Null));
        assert!(matches!(root(json!("ErrorRoute|down")), RoutePlan::Error(m) if m == "down"));
        assert_eq!(err(json!("PoolRoute|Z")), "route: no pool named \"Z\"");
        assert_eq!(
            err(json!("LatestRoute|A")),
            "route: LatestRoute is not supported"
        );
    }

    #[test]
    fn pool_lists_expand_to_servers() {
        match root(json!({"type": "FailoverRoute", "children": "Pool|A"})) {
            RoutePlan::Failover {
                children,
                miss,
                limit,
                ..
            } => {
                assert_eq!(children.len(), 2);
                assert_eq!(pool_name(&children[1]), "A/127.0.0.1:5001");
                assert!(!miss);
                assert_eq!(limit, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fan_outs_and_selectors() {
        let two = json!(["PoolRoute|A", "PoolRoute|B"]);
        for (kind, check) in [
            (
                "AllSyncRoute",
                (|p: &RoutePlan| matches!(p, RoutePlan::AllSync(c) if c.len() == 2))
                    as fn(&RoutePlan) -> bool,
            ),
            (
                "AllAsyncRoute",
                |p| matches!(p, RoutePlan::AllAsync(c) if c.len() == 2),
            ),
            (
                "AllFastestRoute",
                |p| matches!(p, RoutePlan::AllFastest(c) if c.len() == 2),
            ),
            (
                "AllMajorityRoute",
                |p| matches!(p, RoutePlan::AllMajority(c) if c.len() == 2),
            ),
            (
                "RandomRoute",
                |p| matches!(p, RoutePlan::Random(c) if c.len() == 2),
            ),
            ("AllInitialRoute", |p| {
                matches!(p, RoutePlan::Split(a, b)
                if pool_name(a) == "A" && matches!(&**b, RoutePlan::AllAsync(c) if c.len() == 1))
            }),
            (
                "HashRoute",
                |p| matches!(p, RoutePlan::Hash { children, .. } if children.len() == 2),
            ),
        ] {
            let plan = root(json!({"type": kind, "children": two}));
            assert!(check(&plan), "{kind}: {plan:?}");
        }
        match root(json!({"type": "MissFailoverRoute", "children": two})) {
            RoutePlan::Router(r) => {
                assert!(matches!(
                    r.cmap[0].1,
                    RoutePlan::Failover { miss: true, .. }
                ));
                assert_eq!(pool_name(r.default.as_ref().unwrap()), "A");
            }
            other => panic!("{other:?}"),
        }
        match root(json!({"type": "OperationSelectorRoute",
                          "operation_policies": {"get": "PoolRoute|B"},
                          "default_policy": "PoolRoute|A"}))
        {
            RoutePlan::Router(r) => {
                let ids: Vec<i64> = r.cmap.iter().map(|(id, _)| *id).collect();
                assert_eq!(ids, [7, 1]);
                assert_eq!(pool_name(r.default.as_ref().unwrap()), "A");
            }
            other => panic!("{other:?}"),
        }
        match root(json!({"type": "PrefixSelectorRoute",
                          "policies": {"a": "PoolRoute|A"}, "wildcard": "NullRoute"}))
        {
            RoutePlan::PrefixSelector { policies, wildcard } => {
                assert_eq!(policies[0].0, b"a");
                assert!(matches!(wildcard.as_deref(), Some(RoutePlan::Null)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tiers_migrations_and_shadows() {
        assert!(matches!(
            root(json!({"type": "WarmUpRoute", "cold": "PoolRoute|A", "warm": "PoolRoute|B"})),
            RoutePlan::Warmup { ttl: 3600, .. }
        ));
        assert!(matches!(
            root(
                json!({"type": "L1L2CacheRoute", "l1": "PoolRoute|A", "l2": "PoolRoute|B",
                        "upgradingL1Exptime": 10})
            ),
            RoutePlan::L1L2 { ttl: 10, .. }
        ));
        match root(
            json!({"type": "MigrateRoute", "from": "PoolRoute|A", "to": "PoolRoute|B",
                          "start_time": 1000, "interval": 50}),
        ) {
            RoutePlan::Router(r) => {
                assert_eq!(r.cmap.len(), 2);
                assert!(matches!(
                    r.cmap[0].1,
                    RoutePlan::Migrate {
                        start: 1000,
                        stop: 1100,
                        ..
                    }
                ));
                assert!(matches!(
                    r.default,
                    Some(RoutePlan::Migrate {
                        start: 1050,
                        stop: 1050,
                        ..
                    })
                ));
            }
            other => panic!("{other:?}"),
        }
        match root(
            json!({"type": "ShadowRoute", "default_policy": "PoolRoute|A",
                          "shadows": [{"target": "PoolRoute|B", "key_fraction_range": [0.25, 0.75]}]}),
        ) {
            RoutePlan::KeyShadow {
                child, start, end, ..
            } => {
                assert_eq!(pool_name(&child), "A");
                assert_eq!(
                    (start, end),
                    (u32::MAX / 4, (u32::MAX as f64 * 0.75) as u32)
                );
            }
            other => panic!("{other:?}"),
        }
        match root(json!({"type": "PoolRoute", "pool": "A",
                          "hash": {"hash_func": "Crc32", "salt": "x"}}))
        {
            RoutePlan::Hash {
                distribution,
                salt,
                children,
            } => {
                assert_eq!(distribution.kind(), DistributionKind::Crc32);
                assert_eq!(salt, b"x");
                assert_eq!(children.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pool_level_hash_properties() {
        let config = read(json!({
            "pools": {
                "C": {"servers": ["127.0.0.1:1", "127.0.0.1:2"], "hash": "crc32"},
                "W": {"servers": ["127.0.0.1:1", "127.0.0.1:2"], "hash": "wch3",
                      "hash_weights": [1.0, 0.25]},
            },
            "route": "PoolRoute|C",
        }))
        .unwrap();
        let kinds: Vec<DistributionKind> = config
            .pools
            .iter()
            .map(|(_, def)| match &def.kind {
                PoolKind::Memcached { distribution, .. } => distribution.kind(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            kinds,
            [DistributionKind::Crc32, DistributionKind::WeightedCh3]
        );
        let broken =
            |pool: Value| read(json!({"pools": {"P": pool}, "route": "NullRoute"})).unwrap_err();
        assert_eq!(
            broken(json!({"servers": ["127.0.0.1:1"], "hash": "wch3"})),
            "pools.P.hash_weights: 0 weights for 1 servers"
        );
        assert_eq!(
            broken(json!({"servers": ["127.0.0.1:1"], "hash_salt": "x"})),
            "pools.P.hash_salt: not supported on a pool (salt the route: PoolRoute hash.salt or HashRoute salt)"
        );
    }

    #[test]
    fn pool_route_shadows() {
        match root(json!({"type": "PoolRoute", "pool": "A",
                          "shadows": [{"target": "PoolRoute|B"}]}))
        {
            RoutePlan::Shadow { child, rate, .. } => {
                assert_eq!(pool_name(&child), "A");
                assert_eq!(rate, 1.0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err(json!({"type": "PoolRoute", "pool": "A",
                       "shadows": [{"target": "NullRoute", "index_range": [0, 1]}]})),
            "route.shadows[0].index_range: not supported"
        );
    }

    #[test]
    fn errors_name_the_json_path() {
        assert_eq!(
            err(json!({"type": "AllSyncRoute",
                       "children": ["PoolRoute|A", "NullRoute", {"type": "BigValueRoute"}]})),
            "route.children[2].type: BigValueRoute is not supported"
        );
        assert_eq!(
            err(json!({"type": "FailoverRoute", "children": ["PoolRoute|A"],
                       "failover_errors": ["timeout"]})),
            "route.failover_errors: not supported"
        );
        assert_eq!(
            err(json!({"type": "HashRoute", "children": ["PoolRoute|A"],
                       "hash_func": "WeightedCh3"})),
            "route.weights: WeightedCh3 needs weights"
        );
        assert_eq!(
            err(json!({"type": "WarmUpRoute", "cold": "PoolRoute|A"})),
            "route.warm: missing"
        );
        // Times and TTLs that mean nothing memroute could honour.
        for (route, error) in [
            (
                json!({"type": "WarmUpRoute", "cold": "PoolRoute|A", "warm": "PoolRoute|A",
                       "exptime": -5}),
                "route.exptime: must be 0 or more",
            ),
            (
                json!({"type": "L1L2CacheRoute", "l1": "PoolRoute|A", "l2": "PoolRoute|A",
                       "upgradingL1Exptime": -1}),
                "route.upgradingL1Exptime: must be 0 or more",
            ),
            (
                json!({"type": "MigrateRoute", "from": "PoolRoute|A", "to": "PoolRoute|A",
                       "start_time": -1}),
                "route.start_time: must be 0 or more",
            ),
            (
                json!({"type": "MigrateRoute", "from": "PoolRoute|A", "to": "PoolRoute|A",
                       "start_time": 10, "interval": 0}),
                "route.interval: must be 1 or more",
            ),
        ] {
            assert_eq!(err(route), error);
        }
        assert_eq!(
            read(json!({"pools": {"A": {"servers": ["nohost"]}}, "route": "NullRoute"}))
                .unwrap_err(),
            "pools.A.servers[0]: \"nohost\" is not host:port"
        );
        assert_eq!(
            read(json!({"macros": {}, "route": "@hash(x)"})).unwrap_err(),
            "route (@hash): the built-in macro hash is not supported by memroute: its value \
             is folly's hash, which memroute cannot reproduce"
        );
        assert_eq!(
            read(json!({"named_handles": [{"type": "NullRoute"}], "route": "NullRoute"}))
                .unwrap_err(),
            "named_handles[0].name: missing"
        );
        assert_eq!(
            read(json!({"routes": [{"aliases": ["/a/*/"], "route": "NullRoute"}]})).unwrap_err(),
            "routes[0].aliases[0]: \"/a/*/\" is not a /region/cluster/ prefix"
        );
    }

    #[test]
    fn weighted_ch3_takes_one_weight_per_child() {
        match root(json!({"type": "PoolRoute", "pool": "A",
                          "hash": {"hash_func": "WeightedCh3", "weights": [1.0, 0.5]}}))
        {
            RoutePlan::Pool(def) => match &def.kind {
                PoolKind::Memcached { distribution, .. } => {
                    assert_eq!(distribution.kind(), DistributionKind::WeightedCh3)
                }
                _ => unreachable!(),
            },
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err(
                json!({"type": "HashRoute", "children": ["NullRoute", "NullRoute"],
                       "hash_func": "WeightedCh3", "weights": [1.0]})
            ),
            "route.weights: 1 weights for 2 servers or children"
        );
        assert_eq!(
            err(json!({"type": "HashRoute", "children": ["NullRoute"],
                       "hash_func": "Ch4"})),
            "route.hash_func: Ch4 is not supported (Ch3, Crc32 or WeightedCh3)"
        );
    }

    #[test]
    fn routing_prefixes_default_to_the_first_alias() {
        let config = read(json!({
            "pools": {"A": {"servers": ["127.0.0.1:5000"]}},
            "routes": [
                {"aliases": ["/r/a/"], "route": "PoolRoute|A"},
                {"aliases": ["/r/b/"], "route": "NullRoute"},
            ],
        }))
        .unwrap();
        match config.root {
            RoutePlan::RoutingPrefix { routes, default } => {
                assert_eq!(routes.len(), 2);
                assert_eq!(pool_name(&default), "A");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn named_handles_and_trailing_commas() {
        // As a real mcrouter config has it: trailing commas, a named handle.
        let text = r#"{
          "pools": { "local": { "servers": ["127.0.0.1:11211",],
                                "protocol": "ascii", "keep_routing_prefix": false, }, },
          "named_handles": [ { "name": "local-pool", "type": "PoolRoute", "pool": "local", }, ],
          "route": { "type": "PrefixSelectorRoute",
                     "policies": { "a:": "local-pool", "b:": "local-pool", },
                     "wildcard": { "name": "nothing", "type": "NullRoute" } },
        }"#;
        let value: Value = serde_json::from_str(&strip_comments(text)).unwrap();
        match parse(&value).unwrap().root {
            RoutePlan::PrefixSelector { policies, wildcard } => {
                assert_eq!(pool_name(&policies[0].1), "local");
                assert!(matches!(wildcard.as_deref(), Some(RoutePlan::Null)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            strip_comments(r#"{"a": ",]", "b": [1, 2 , ] }"#),
            r#"{"a": ",]", "b": [1, 2  ] }"#
        );
        assert_eq!(
            err(json!("no-such-handle")),
            "route: no-such-handle is not supported (nor the name of a named handle)"
        );
    }

    #[test]
    fn comments_and_imports() {
        let dir = std::env::temp_dir().join(format!("memroute-mcrouter-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pools.json"),
            r#"{"A": {"servers": ["127.0.0.1:5000"]}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("main.json"),
            "// a comment\n{\"pools\": \"@import(pools.json)\", /* x */ \"route\": \"Pool|A // not a comment\"}",
        )
        .unwrap();
        let result = load(&dir.join("main.json"), 0);
        std::fs::write(dir.join("loop.json"), r#"{"route": "@import(loop.json)"}"#).unwrap();
        let looped = load(&dir.join("loop.json"), 0);
        let _ = std::fs::remove_dir_all(&dir);
        // The string keeps its "//": the pool name is taken as written.
        assert_eq!(
            result.unwrap_err(),
            "route: no pool named \"A // not a comment\""
        );
        assert!(looped.unwrap_err().contains("nested more than 16 deep"));
    }

    #[test]
    fn big_value_threshold_rides_the_start_argument() {
        assert_eq!(read_start_arg(&start_arg(0)), Some(0));
        assert_eq!(read_start_arg(&start_arg(5000)), Some(5000));
        assert_eq!(read_start_arg("config.lua"), None);
        assert_eq!(read_start_arg("<mcrouter-config>bogus"), None);
    }

    #[test]
    fn l1l2_negative_caching_reads_ncache_exptime() {
        let l1l2 = |extra: Value| {
            let mut route = json!({"type": "L1L2CacheRoute", "l1": "PoolRoute|A",
                                   "l2": "PoolRoute|A", "upgradingL1Exptime": 10});
            for (k, v) in extra.as_object().unwrap() {
                route[k] = v.clone();
            }
            route
        };
        assert!(matches!(
            root(l1l2(json!({"ncacheExptime": 3}))),
            RoutePlan::L1L2 {
                negative_ttl: 3,
                ..
            }
        ));
        assert!(err(l1l2(json!({"ncacheExptime": -1}))).contains("ncacheExptime"));
        assert!(err(l1l2(json!({"ncacheUpdatePeriod": 2}))).contains("ncacheUpdatePeriod"));
    }
}
