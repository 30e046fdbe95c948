//! routelib configurations: `-o proxy_config=routelib,proxy_arg=FILE` (or
//! `--routes FILE`).
//!
//! The embedded `lua/routelib.lua` runs the route file on the config VM
//! (settings, pools, route handlers, maps) and returns a description with
//! every child resolved to its pool. This module checks that description and
//! turns it into a [`RouterPlan`] (plain data), which every worker builds
//! into native route handlers: no worker VM runs, no Lua per request. A
//! file may hold one `routes{}` section per listener tag (`tag = "NAME"`)
//! besides the untagged one; each becomes a router attached for its tag. Each
//! mistake names the file and line where the handler or map was written,
//! and the field.

use std::sync::Arc;

use super::config::ConfigValue;
use crate::route::commands::{CMD_ANY_STORAGE, STORAGE_IDS, UNHOOKABLE_IDS};
use crate::route::keysplit::MAX_COPIES;
use crate::route::plan::{EntryPlan, RoutePlan, RouterPlan, UserArgs};
use crate::route::ratelim::{GlobalTokenBucket, TbfParams};
use crate::route::router::{RouterMode, MAX_SEPARATOR};
use crate::route::{check_tag, PoolDef};

/// Largest `route_bigvalue` threshold or chunk: 1 GiB, memcached's
/// largest `-I`.
const MAX_CHUNK_BYTES: i64 = 1 << 30;

/// The key `lua/routelib.lua`'s `mcp_config_pools` returns its tree under.
const MARKER: &[u8] = b"__memroute_routelib";

/// What a routelib configuration adds to a loaded configuration.
#[derive(Debug)]
pub struct RoutelibConfig {
    /// One router per `routes{}` section, with its tag (`None`: untagged).
    pub routers: Vec<(Option<String>, RouterPlan)>,
    /// Every pool the file defines, routed to or not (`flush_all` reaches
    /// them all).
    pub pools: Vec<Arc<PoolDef>>,
    /// `mcp.add_stat` names for handlers with `stats = true`, with ids
    /// after those the startfile registered.
    pub stat_names: Vec<(i64, String)>,
    /// Whether the tree has handlers written in Lua, which workers build
    /// in a Lua VM of their own.
    pub user_handlers: bool,
}

/// The key marking a child's place in a user handler's options.
pub const USER_CHILD: &[u8] = b"__child";

/// The routelib tree in what `mcp_config_pools` returned, if it is one.
/// `first_stat_id` is the first `mcp.add_stat` id free for retry counters.
pub fn plan(value: &ConfigValue, first_stat_id: i64) -> Result<Option<RoutelibConfig>, String> {
    let Some(tree) = field(value, "__memroute_routelib").filter(|_| is_marked(value)) else {
        return Ok(None);
    };
    let mut planner = Planner {
        user_handlers: false,
        stat_names: Vec::new(),
        next_stat: first_stat_id,
        zone: string(field(tree, "zone")),
    };
    let mut routers = Vec::new();
    for (_, section) in entries(field(tree, "trees")) {
        routers.push(plan_section(section, &mut planner)?);
    }
    let mut pools = Vec::new();
    every_pool(field(tree, "pools"), &mut pools);
    Ok(Some(RoutelibConfig {
        pools,
        routers,
        stat_names: planner.stat_names,
        user_handlers: planner.user_handlers,
    }))
}

/// One `routes{}` section: its tag and its router.
fn plan_section(
    tree: &ConfigValue,
    planner: &mut Planner,
) -> Result<(Option<String>, RouterPlan), String> {
    let at = string(field(tree, "__where")).unwrap_or_else(|| "routes".into());
    let tag = string(field(tree, "tag"));
    if let Some(tag) = &tag {
        check_tag(tag.as_bytes()).map_err(|e| format!("{at}: routes: {e}"))?;
    }
    let mode = router_mode(field(tree, "conf"), &at)?;
    let mut map = Vec::new();
    for (key, entry) in entries(field(tree, "map")) {
        let ConfigValue::String(prefix) = key else {
            return Err(format!("{at}: routes map: keys must be strings"));
        };
        let label = String::from_utf8_lossy(prefix).into_owned();
        let entry = match field(entry, "__cmdmap") {
            Some(commands) => {
                let cmd_at = string(field(entry, "__where")).unwrap_or(at.clone());
                let mut routes = Vec::new();
                for (id, route) in entries(Some(commands)) {
                    let id = command_id(id, &cmd_at)?;
                    routes.push((id, planner.route(route, &label, &cmd_at)?));
                }
                EntryPlan::ByCommand(routes)
            }
            None => EntryPlan::All(planner.route(entry, &label, &at)?),
        };
        map.push((prefix.clone(), entry));
    }
    let mut cmap = Vec::new();
    for (id, route) in entries(field(tree, "cmap")) {
        let id = command_id(id, &at)?;
        cmap.push((id, planner.route(route, "cmdmap", &at)?));
    }
    let default = match field(tree, "default") {
        Some(route) => Some(planner.route(route, "default", &at)?),
        None => None,
    };
    if map.is_empty() && cmap.is_empty() && default.is_none() {
        return Err(format!("{at}: routes: give a map, a cmap or a default"));
    }
    Ok((
        tag,
        RouterPlan {
            mode,
            map,
            cmap,
            default,
        },
    ))
}

/// Every pool in `value`, however deep (pool sets are tables of pools).
fn every_pool(value: Option<&ConfigValue>, out: &mut Vec<Arc<PoolDef>>) {
    match value {
        Some(ConfigValue::Pool(def)) => out.push(def.clone()),
        Some(table @ ConfigValue::Table(_)) => {
            for (_, v) in entries(Some(table)) {
                every_pool(Some(v), out);
            }
        }
        _ => {}
    }
}

fn is_marked(value: &ConfigValue) -> bool {
    matches!(value, ConfigValue::Table(e) if e.len() == 1
        && matches!(&e[0].0, ConfigValue::String(k) if k == MARKER))
}

/// The value of `name` in a table.
fn field<'a>(value: &'a ConfigValue, name: &str) -> Option<&'a ConfigValue> {
    let ConfigValue::Table(entries) = value else {
        return None;
    };
    entries.iter().find_map(|(k, v)| match k {
        ConfigValue::String(s) if s == name.as_bytes() => Some(v),
        _ => None,
    })
}

/// A table's entries (none for anything else), in a stable order: array
/// part by index, then the rest by key, so every worker builds the same
/// tree.
fn entries(value: Option<&ConfigValue>) -> Vec<(&ConfigValue, &ConfigValue)> {
    let Some(ConfigValue::Table(entries)) = value else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries.iter().map(|(k, v)| (k, v)).collect();
    out.sort_by(|a, b| sort_key(a.0).partial_cmp(&sort_key(b.0)).unwrap());
    out
}

fn sort_key(key: &ConfigValue) -> (u8, i64, Vec<u8>) {
    match key {
        ConfigValue::Integer(i) => (0, *i, Vec::new()),
        ConfigValue::String(s) => (1, 0, s.clone()),
        _ => (2, 0, Vec::new()),
    }
}

fn string(value: Option<&ConfigValue>) -> Option<String> {
    match value {
        Some(ConfigValue::String(s)) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    }
}

fn command_id(key: &ConfigValue, at: &str) -> Result<i64, String> {
    match key {
        ConfigValue::Integer(id) if STORAGE_IDS.contains(id) || *id == 1001 => Ok(*id),
        ConfigValue::Integer(id) if UNHOOKABLE_IDS.contains(id) => {
            Err(format!("{at}: cmap: command {id} cannot have a route"))
        }
        _ => Err(format!("{at}: cmap: keys must be key-carrying commands")),
    }
}

/// `routes{ conf = { mode =, start =, stop = } }`.
fn router_mode(conf: Option<&ConfigValue>, at: &str) -> Result<RouterMode, String> {
    let Some(conf) = conf else {
        return Ok(RouterMode::default());
    };
    let separator = |name: &str| -> Result<Option<Vec<u8>>, String> {
        match field(conf, name) {
            None => Ok(None),
            Some(ConfigValue::String(s)) if !s.is_empty() && s.len() <= MAX_SEPARATOR => {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(format!(
                "{at}: routes conf: {name} must be a string of 1 to {MAX_SEPARATOR} bytes"
            )),
        }
    };
    let (start, stop) = (separator("start")?, separator("stop")?);
    for (key, _) in entries(Some(conf)) {
        match key {
            ConfigValue::String(k) if [&b"mode"[..], b"start", b"stop"].contains(&&k[..]) => {}
            other => {
                return Err(format!(
                    "{at}: routes conf: unknown option {other:?} (mode, start, stop)"
                ))
            }
        }
    }
    match string(field(conf, "mode")).as_deref().unwrap_or("prefix") {
        "prefix" => Ok(RouterMode::Prefix {
            stop: stop.unwrap_or_else(|| b"/".to_vec()),
        }),
        "anchor" => Ok(RouterMode::Anchor {
            start: start.unwrap_or_else(|| b"/".to_vec()),
            stop: stop.unwrap_or_else(|| b"/".to_vec()),
        }),
        other => Err(format!(
            "{at}: routes conf: mode must be \"prefix\" or \"anchor\", not \"{other}\""
        )),
    }
}

struct Planner {
    /// Whether a handler written in Lua is in the tree.
    user_handlers: bool,
    stat_names: Vec<(i64, String)>,
    next_stat: i64,
    zone: Option<String>,
}

impl Planner {
    /// A child: a pool, or a route handler description.
    fn route(&mut self, value: &ConfigValue, label: &str, at: &str) -> Result<RoutePlan, String> {
        if let ConfigValue::Pool(def) = value {
            return Ok(RoutePlan::Pool(def.clone()));
        }
        let Some(name) = string(field(value, "__route")) else {
            return Err(format!(
                "{at}: expected a pool name or a route handler (route_*{{...}})"
            ));
        };
        let at = string(field(value, "__where")).unwrap_or_else(|| at.to_string());
        if name == "user" {
            return self.user_route(value, label, &at);
        }
        let args = field(value, "args");
        let arg = |key: &str| args.and_then(|a| field(a, key));
        let known: &[&str] = match name.as_str() {
            "direct" => &["child"],
            "ttl" => &["child", "ttl"],
            "ratelim" => &[
                "child",
                "limit",
                "fillrate",
                "tickrate",
                "global",
                "fail_until_limit",
            ],
            "split" => &["child_a", "child_b"],
            "null" | "internal" => &[],
            "error" => &["message"],
            "allsync" | "allasync" | "allfastest" | "allmajority" | "random" => &["children"],
            "shadow" => &["child", "child_shadow", "rate"],
            "warmup" => &["child_cold", "child_warm", "ttl"],
            "l1l2" => &["child_l1", "child_l2", "ttl", "negative_ttl"],
            "bigvalue" => &["child", "threshold", "chunk"],
            "keysplit" => &["child", "copies"],
            "migrate" => &[
                "child_from",
                "child_to",
                "start",
                "stop",
                "stats",
                "stats_name",
            ],
            "failover" => &[
                "children",
                "failover_count",
                "shuffle",
                "miss",
                "stats",
                "stats_name",
            ],
            "zfailover" => &[
                "children",
                "failover_count",
                "local_zone",
                "miss",
                "stats",
                "stats_name",
            ],
            _ => return Err(format!("{at}: unknown route handler route_{name}")),
        };
        for (key, _) in entries(args) {
            let ok = matches!(key, ConfigValue::String(k)
                if known.iter().any(|n| n.as_bytes() == &k[..]));
            if !ok {
                return Err(format!(
                    "{at}: route_{name}: unknown option {} (it takes {})",
                    describe(key),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        let one = |this: &mut Self, key: &str| -> Result<Box<RoutePlan>, String> {
            match arg(key) {
                Some(child) => Ok(Box::new(this.route(child, label, &at)?)),
                None => Err(format!("{at}: route_{name}: {key} is required")),
            }
        };
        let flag = |key: &str| -> Result<bool, String> {
            match arg(key) {
                None | Some(ConfigValue::Nil) => Ok(false),
                Some(ConfigValue::Bool(b)) => Ok(*b),
                Some(_) => Err(format!("{at}: route_{name}: {key} must be true or false")),
            }
        };
        let seconds = |key: &str, default: Option<i64>| -> Result<i64, String> {
            match (arg(key), default) {
                (Some(ConfigValue::Integer(t)), _) if *t >= 0 => Ok(*t),
                (None, Some(d)) => Ok(d),
                _ => Err(format!(
                    "{at}: route_{name}: {key} must be a number of seconds (0 or more)"
                )),
            }
        };
        Ok(match name.as_str() {
            "direct" => RoutePlan::Direct(one(self, "child")?),
            "error" => match string(arg("message")) {
                Some(message) if !message.contains(['\r', '\n']) => RoutePlan::Error(message),
                Some(_) => return Err(format!("{at}: route_error: message must be one line")),
                None => RoutePlan::Error("route_error".into()),
            },
            "shadow" => {
                let rate = match arg("rate") {
                    None => 1.0,
                    Some(ConfigValue::Integer(r)) if (0..=1).contains(r) => *r as f64,
                    Some(ConfigValue::Number(r)) if (0.0..=1.0).contains(r) => *r,
                    Some(_) => {
                        return Err(format!(
                            "{at}: route_shadow: rate must be a share from 0 to 1"
                        ))
                    }
                };
                let shadows = match arg("child_shadow") {
                    Some(ConfigValue::Table(_)) => {
                        self.children(arg("child_shadow"), &name, label, &at)?
                    }
                    Some(_) => vec![*one(self, "child_shadow")?],
                    None => return Err(format!("{at}: route_shadow: child_shadow is required")),
                };
                RoutePlan::Shadow {
                    child: one(self, "child")?,
                    shadows,
                    rate,
                }
            }
            "warmup" => RoutePlan::Warmup {
                cold: one(self, "child_cold")?,
                warm: one(self, "child_warm")?,
                ttl: seconds("ttl", Some(0))?,
            },
            "l1l2" => RoutePlan::L1L2 {
                l1: one(self, "child_l1")?,
                l2: one(self, "child_l2")?,
                ttl: match seconds("ttl", Some(10))? {
                    0 => {
                        return Err(format!(
                            "{at}: route_l1l2: ttl must be more than 0 (L1 copies must expire)"
                        ))
                    }
                    t => t,
                },
                negative_ttl: seconds("negative_ttl", Some(0))?,
            },
            "bigvalue" => {
                let size = |key: &str| -> Result<Option<usize>, String> {
                    match arg(key) {
                        None => Ok(None),
                        Some(ConfigValue::Integer(n)) if (1..=MAX_CHUNK_BYTES).contains(n) => {
                            Ok(Some(*n as usize))
                        }
                        Some(_) => Err(format!(
                            "{at}: route_bigvalue: {key} must be a number of bytes from 1 to {MAX_CHUNK_BYTES}"
                        )),
                    }
                };
                let Some(threshold) = size("threshold")? else {
                    return Err(format!("{at}: route_bigvalue: threshold is required"));
                };
                let chunk = size("chunk")?.unwrap_or(threshold);
                RoutePlan::BigValue {
                    child: one(self, "child")?,
                    threshold,
                    chunk,
                }
            }
            "keysplit" => {
                let copies = match arg("copies") {
                    Some(ConfigValue::Integer(n)) if (2..=MAX_COPIES as i64).contains(n) => {
                        *n as usize
                    }
                    _ => {
                        return Err(format!(
                            "{at}: route_keysplit: copies must be a whole number from 2 to {MAX_COPIES}"
                        ))
                    }
                };
                RoutePlan::KeySplit {
                    child: one(self, "child")?,
                    copies,
                }
            }
            "migrate" => {
                let (start, stop) = (seconds("start", None)?, seconds("stop", None)?);
                if stop < start {
                    return Err(format!("{at}: route_migrate: stop is before start"));
                }
                RoutePlan::Migrate {
                    from: one(self, "child_from")?,
                    to: one(self, "child_to")?,
                    start,
                    stop,
                    stat: self.stat_named(flag("stats")?, arg("stats_name"), label, "fallbacks"),
                }
            }
            "split" => RoutePlan::Split(one(self, "child_a")?, one(self, "child_b")?),
            "ratelim" => {
                // memcached's mcp.ratelim_tbf settings; here each is required
                // (a missing one would be 0: a bucket that never admits, or
                // a tick memcached would divide by).
                let setting = |key: &str| -> Result<i64, String> {
                    match arg(key) {
                        Some(ConfigValue::Integer(n)) => Ok(*n),
                        Some(ConfigValue::Number(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                            Ok(*n as i64)
                        }
                        None => Err(format!("{at}: route_ratelim: {key} is required")),
                        Some(_) => {
                            Err(format!("{at}: route_ratelim: {key} must be a whole number"))
                        }
                    }
                };
                let params = TbfParams::new(
                    setting("limit")?,
                    setting("fillrate")?,
                    setting("tickrate")?,
                )
                .map_err(|e| format!("{at}: route_ratelim: {e}"))?;
                RoutePlan::RateLimit {
                    child: one(self, "child")?,
                    params,
                    global: flag("global")?.then(|| Arc::new(GlobalTokenBucket::new(params))),
                    fail_until_limit: flag("fail_until_limit")?,
                }
            }
            "null" => RoutePlan::Null,
            "internal" => RoutePlan::Internal,
            "ttl" => {
                let ttl = match arg("ttl") {
                    Some(ConfigValue::Integer(t)) if *t >= 0 => *t,
                    _ => {
                        return Err(format!(
                            "{at}: route_ttl: ttl must be a number of seconds (0 or more)"
                        ))
                    }
                };
                RoutePlan::Ttl {
                    child: one(self, "child")?,
                    ttl,
                }
            }
            "allsync" | "allasync" | "allfastest" | "allmajority" | "random" => {
                let children = self.children(arg("children"), &name, label, &at)?;
                match name.as_str() {
                    "allsync" => RoutePlan::AllSync(children),
                    "allasync" => RoutePlan::AllAsync(children),
                    "allfastest" => RoutePlan::AllFastest(children),
                    "allmajority" => RoutePlan::AllMajority(children),
                    _ => RoutePlan::Random(children),
                }
            }
            "failover" => {
                let children = self.children(arg("children"), &name, label, &at)?;
                let limit = self.count(arg("failover_count"), &name, &at)?;
                RoutePlan::Failover {
                    limit: limit.unwrap_or(children.len()).min(children.len()),
                    children,
                    miss: flag("miss")?,
                    shuffle: flag("shuffle")?,
                    stat: self.stat(flag("stats")?, arg("stats_name"), label),
                }
            }
            _ => {
                // zfailover: children is a map of zone -> child.
                let zone = string(arg("local_zone")).or_else(|| self.zone.clone());
                let Some(zone) = zone else {
                    return Err(format!(
                        "{at}: route_zfailover: needs local_zone (or local_zone() in the file)"
                    ));
                };
                let mut near = None;
                let mut far = Vec::new();
                for (key, child) in entries(arg("children")) {
                    let ConfigValue::String(z) = key else {
                        return Err(format!(
                            "{at}: route_zfailover: children must map zone names to children"
                        ));
                    };
                    let built = self.route(child, label, &at)?;
                    if z == zone.as_bytes() {
                        near = Some(Box::new(built));
                    } else {
                        far.push(built);
                    }
                }
                let Some(near) = near else {
                    return Err(format!(
                        "{at}: route_zfailover: no child for the local zone '{zone}'"
                    ));
                };
                RoutePlan::ZoneFailover {
                    near,
                    far,
                    miss: flag("miss")?,
                    stat: self.stat(flag("stats")?, arg("stats_name"), label),
                }
            }
        })
    }

    /// A handler written in Lua: its options with every child (a pool or
    /// handler under an option named `child*`, or in a table there)
    /// replaced by `{ __child = i }`, `i` its index in the plan's children.
    fn user_route(
        &mut self,
        value: &ConfigValue,
        label: &str,
        at: &str,
    ) -> Result<RoutePlan, String> {
        self.user_handlers = true;
        let name = string(field(value, "__handler")).unwrap_or_default();
        let label = string(field(value, "__label")).unwrap_or_else(|| label.to_string());
        let command = match field(value, "__cmd") {
            Some(ConfigValue::Integer(id)) => *id,
            _ => CMD_ANY_STORAGE,
        };
        let mut children = Vec::new();
        let mut args = Vec::new();
        for (key, option) in entries(field(value, "args")) {
            let is_child = matches!(key, ConfigValue::String(k) if k.starts_with(b"child"));
            let option = if is_child {
                self.user_children(option, &mut children, &label, at)?
            } else {
                option.clone()
            };
            args.push((key.clone(), option));
        }
        Ok(RoutePlan::User {
            name,
            label,
            command,
            args: UserArgs(Arc::new(ConfigValue::Table(args))),
            children,
        })
    }

    /// One `child*` option of a user handler: a child, or a table of them
    /// (one level, as routelib walks it); other values stay as they are.
    fn user_children(
        &mut self,
        option: &ConfigValue,
        children: &mut Vec<RoutePlan>,
        label: &str,
        at: &str,
    ) -> Result<ConfigValue, String> {
        let is_route =
            |v: &ConfigValue| matches!(v, ConfigValue::Pool(_)) || field(v, "__route").is_some();
        let mut slot = |this: &mut Self, v: &ConfigValue| -> Result<ConfigValue, String> {
            children.push(this.route(v, label, at)?);
            Ok(ConfigValue::Table(vec![(
                ConfigValue::String(USER_CHILD.to_vec()),
                ConfigValue::Integer(children.len() as i64 - 1),
            )]))
        };
        if is_route(option) {
            return slot(self, option);
        }
        match option {
            ConfigValue::Table(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (k, v) in items {
                    let v = if is_route(v) {
                        slot(self, v)?
                    } else {
                        v.clone()
                    };
                    out.push((k.clone(), v));
                }
                Ok(ConfigValue::Table(out))
            }
            other => Ok(other.clone()),
        }
    }

    fn children(
        &mut self,
        value: Option<&ConfigValue>,
        name: &str,
        label: &str,
        at: &str,
    ) -> Result<Vec<RoutePlan>, String> {
        let list = entries(value);
        if list.is_empty() {
            return Err(format!(
                "{at}: route_{name}: children must list at least one pool or route"
            ));
        }
        list.into_iter()
            .map(|(_, child)| self.route(child, label, at))
            .collect()
    }

    fn count(
        &self,
        value: Option<&ConfigValue>,
        name: &str,
        at: &str,
    ) -> Result<Option<usize>, String> {
        match value {
            None => Ok(None),
            Some(ConfigValue::Integer(n)) if *n > 0 => Ok(Some(*n as usize)),
            Some(_) => Err(format!(
                "{at}: route_{name}: failover_count must be a positive integer"
            )),
        }
    }

    /// A retry counter named `<stats_name or label>_retries`, as routelib
    /// names it.
    fn stat(&mut self, on: bool, name: Option<&ConfigValue>, label: &str) -> Option<i64> {
        self.stat_named(on, name, label, "retries")
    }

    /// A counter named `<stats_name or label>_<what>`.
    fn stat_named(
        &mut self,
        on: bool,
        name: Option<&ConfigValue>,
        label: &str,
        what: &str,
    ) -> Option<i64> {
        if !on {
            return None;
        }
        let base = string(name).unwrap_or_else(|| label.to_string());
        let full = format!("{base}_{what}");
        if let Some((id, _)) = self.stat_names.iter().find(|(_, n)| *n == full) {
            return Some(*id);
        }
        let id = self.next_stat;
        self.next_stat += 1;
        self.stat_names.push((id, full));
        Some(id)
    }
}

fn describe(key: &ConfigValue) -> String {
    match key {
        ConfigValue::String(s) => format!("'{}'", String::from_utf8_lossy(s)),
        other => format!("{other:?}"),
    }
}
