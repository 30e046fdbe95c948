//! memcached's config-VM timers: `mcp.register_cron(name, {every =,
//! rerun =, func =})` and `mcp.schedule_config_reload([seconds])`.
//!
//! A cron is a function of the config VM run every `every` seconds (the
//! first run `every` seconds after it is registered), or once with
//! `rerun = false`. Runs are counted in `proxy_config_cron_runs` and
//! failed ones also in `proxy_config_cron_fails`; a failure is logged and
//! the cron stays scheduled. The config thread (`super::host`) runs them
//! between loads, never during one.
//!
//! Crons belong to a configuration: a load starts an empty table and the
//! crons its `mcp_config_pools` (or top-level code) registers make the
//! new table, which replaces the old one when the configuration is
//! committed; a cron not registered again is gone. A cron registered
//! again under the same name with the same `every` keeps its schedule,
//! so reloads do not postpone it (memcached's rule). If the reload fails,
//! the old table stays, as the old configuration does. A cron registered
//! outside a load (by a cron) joins the current table.
//!
//! `mcp.schedule_config_reload()` asks for a reload like SIGHUP's once the
//! current cron pass (or load) is over; memroute also takes a delay in
//! seconds.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, Table, Value};

use super::config::lua_error_message;
use crate::stats::ProxyStats;

/// The longest `every` accepted (memcached leaves it unbounded).
const MAX_EVERY_SECS: i64 = 10 * 365 * 24 * 3600;

struct Cron {
    /// Tells a registration from a later one of the same name.
    id: u64,
    name: String,
    every: Duration,
    repeat: bool,
    func: Function,
    next: Instant,
}

/// The config VM's crons: the live table, and the one a load is building.
#[derive(Default)]
pub struct Crons {
    live: RefCell<Vec<Cron>>,
    loading: RefCell<Option<Vec<Cron>>>,
    next_id: Cell<u64>,
}

impl Crons {
    fn register(&self, name: String, every: Duration, repeat: bool, func: Function) {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        let mut loading = self.loading.borrow_mut();
        let mut live = self.live.borrow_mut();
        // An earlier registration of the name, this load's first.
        let earlier = loading
            .iter()
            .flatten()
            .chain(live.iter())
            .find(|c| c.name == name)
            .filter(|c| c.every == every)
            .map(|c| c.next);
        let cron = Cron {
            id,
            next: earlier.unwrap_or_else(|| Instant::now() + every),
            name,
            every,
            repeat,
            func,
        };
        let table = match loading.as_mut() {
            Some(table) => table,
            None => &mut live,
        };
        table.retain(|c| c.name != cron.name);
        table.push(cron);
    }

    /// A load starts: what it registers makes a new table.
    pub fn begin_load(&self) {
        *self.loading.borrow_mut() = Some(Vec::new());
    }

    /// The load's configuration is in use: its crons replace the old ones.
    pub fn commit_load(&self) {
        if let Some(table) = self.loading.borrow_mut().take() {
            *self.live.borrow_mut() = table;
        }
    }

    /// The load failed: the old crons stay.
    pub fn abort_load(&self) {
        self.loading.borrow_mut().take();
    }

    /// When the next cron is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.live.borrow().iter().map(|c| c.next).min()
    }

    /// Names and schedules of the live crons, for tests.
    #[cfg(test)]
    fn names(&self) -> Vec<String> {
        self.live.borrow().iter().map(|c| c.name.clone()).collect()
    }

    /// Runs every cron due at `now`, in registration order. A cron may
    /// register crons or schedule a reload; it runs with no borrow held.
    pub fn run_due(&self, now: Instant, stats: &ProxyStats) {
        let due: Vec<(u64, String, Function)> = self
            .live
            .borrow()
            .iter()
            .filter(|c| c.next <= now)
            .map(|c| (c.id, c.name.clone(), c.func.clone()))
            .collect();
        for (id, name, func) in due {
            stats.cron_runs.fetch_add(1, Relaxed);
            if let Err(e) = func.call::<()>(()) {
                stats.cron_fails.fetch_add(1, Relaxed);
                // As memcached: `watch proxyevents` sees the error.
                super::logging::proxy_error(&e);
                let message = lua_error_message(&e);
                tracing::error!(target: "memroute::lua", "cron {name} failed: {message}");
            }
            let mut live = self.live.borrow_mut();
            if let Some(at) = live.iter().position(|c| c.id == id) {
                if live[at].repeat {
                    live[at].next = now + live[at].every;
                } else {
                    live.remove(at);
                }
            }
        }
    }
}

/// When a reload was asked for (`mcp.schedule_config_reload`).
#[derive(Default)]
pub struct ReloadRequest(Cell<Option<Instant>>);

impl ReloadRequest {
    fn ask(&self, at: Instant) {
        let sooner = self.0.get().map_or(at, |earlier| earlier.min(at));
        self.0.set(Some(sooner));
    }

    /// When the asked-for reload is due.
    pub fn due(&self) -> Option<Instant> {
        self.0.get()
    }

    /// Takes the request if it is due at `now`.
    pub fn take_due(&self, now: Instant) -> bool {
        match self.0.get() {
            Some(at) if at <= now => {
                self.0.set(None);
                true
            }
            _ => false,
        }
    }
}

/// The crons and reload request of `lua`, installed on first use.
pub fn state(lua: &Lua) -> (Rc<Crons>, Rc<ReloadRequest>) {
    if lua.app_data_ref::<Rc<Crons>>().is_none() {
        lua.set_app_data(Rc::new(Crons::default()));
    }
    if lua.app_data_ref::<Rc<ReloadRequest>>().is_none() {
        lua.set_app_data(Rc::new(ReloadRequest::default()));
    }
    let crons = lua.app_data_ref::<Rc<Crons>>().map(|c| c.clone());
    let reload = lua.app_data_ref::<Rc<ReloadRequest>>().map(|r| r.clone());
    (crons.unwrap_or_default(), reload.unwrap_or_default())
}

fn cron_error(message: &str) -> mlua::Error {
    mlua::Error::runtime(format!("proxy cron entry {message}"))
}

/// `mcp.register_cron` and `mcp.schedule_config_reload` for the config VM.
pub fn register(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    let (crons, reload) = state(lua);
    mcp.set(
        "register_cron",
        lua.create_function(move |_, (name, opts): (Value, Value)| {
            let name = match name {
                Value::String(s) => s.to_str()?.to_string(),
                Value::Integer(i) => i.to_string(),
                _ => {
                    return Err(mlua::Error::runtime(
                        "mcp.register_cron: the first argument must be the cron's name",
                    ))
                }
            };
            let Value::Table(opts) = opts else {
                return Err(mlua::Error::runtime(
                    "mcp.register_cron: expected (name, {every =, rerun =, func =})",
                ));
            };
            let (mut every, mut rerun, mut func) = (None, true, None);
            for pair in opts.pairs::<Value, Value>() {
                let (key, value) = pair?;
                let key = match &key {
                    Value::String(s) => s.to_string_lossy(),
                    other => format!("{other:?}"),
                };
                match key.as_str() {
                    "func" => match value {
                        Value::Function(f) => func = Some(f),
                        _ => return Err(cron_error("'func' must be a function")),
                    },
                    "every" => {
                        let secs = match value {
                            Value::Integer(n) => n,
                            Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => n as i64,
                            Value::Number(_) => {
                                return Err(cron_error(
                                    "'every' must be a whole number of seconds > 0",
                                ))
                            }
                            _ => return Err(cron_error("'every' must be a number")),
                        };
                        if secs < 1 {
                            return Err(cron_error("'every' must be > 0"));
                        }
                        if secs > MAX_EVERY_SECS {
                            return Err(cron_error(&format!(
                                "'every' must be at most {MAX_EVERY_SECS} seconds"
                            )));
                        }
                        every = Some(Duration::from_secs(secs as u64));
                    }
                    // Lua truth, as memcached reads it.
                    "rerun" => rerun = !matches!(value, Value::Nil | Value::Boolean(false)),
                    other => {
                        return Err(cron_error(&format!(
                            "has an unknown field '{other}' (every, rerun, func)"
                        )))
                    }
                }
            }
            let func = func.ok_or_else(|| cron_error("missing 'func' field"))?;
            let every = every.ok_or_else(|| cron_error("missing 'every' field"))?;
            crons.register(name, every, rerun, func);
            Ok(())
        })?,
    )?;
    mcp.set(
        "schedule_config_reload",
        lua.create_function(move |_, delay: Value| {
            let delay =
                match delay {
                    Value::Nil => Duration::ZERO,
                    Value::Integer(n) if (0..=MAX_EVERY_SECS).contains(&n) => {
                        Duration::from_secs(n as u64)
                    }
                    Value::Number(n) if (0.0..=MAX_EVERY_SECS as f64).contains(&n) => {
                        Duration::from_secs_f64(n)
                    }
                    _ => return Err(mlua::Error::runtime(
                        "mcp.schedule_config_reload: the delay must be a number of seconds >= 0",
                    )),
                };
            reload.ask(Instant::now() + delay);
            Ok(())
        })?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> (Lua, Rc<Crons>) {
        let lua = Lua::new();
        let mcp = lua.create_table().unwrap();
        register(&lua, &mcp).unwrap();
        lua.globals().set("mcp", mcp).unwrap();
        let (crons, _) = state(&lua);
        (lua, crons)
    }

    fn error_of(lua: &Lua, code: &str) -> String {
        lua.load(code).exec().unwrap_err().to_string()
    }

    #[test]
    fn bad_entries_are_refused_with_memcacheds_messages() {
        let (lua, crons) = vm();
        let f = "function() end";
        for (code, message) in [
            (
                "mcp.register_cron('a', {every = 1})",
                "missing 'func' field",
            ),
            (
                &format!("mcp.register_cron('a', {{func = {f}}})"),
                "missing 'every' field",
            ),
            (
                &format!("mcp.register_cron('a', {{every = 0, func = {f}}})"),
                "'every' must be > 0",
            ),
            (
                &format!("mcp.register_cron('a', {{every = 1.5, func = {f}}})"),
                "whole number",
            ),
            (
                "mcp.register_cron('a', {every = 1, func = 3})",
                "'func' must be a function",
            ),
            (
                &format!("mcp.register_cron('a', {{every = 1, evry = 2, func = {f}}})"),
                "unknown field 'evry'",
            ),
            ("mcp.register_cron('a')", "expected (name,"),
            ("mcp.schedule_config_reload(-1)", "delay"),
        ] {
            let e = error_of(&lua, code);
            assert!(e.contains(message), "{code}: {e}");
        }
        assert!(crons.names().is_empty());
    }

    #[test]
    fn crons_run_when_due_and_once_without_rerun() {
        let (lua, crons) = vm();
        lua.load(
            "runs = { a = 0, b = 0 }
             mcp.register_cron('a', { every = 1, func = function() runs.a = runs.a + 1 end })
             mcp.register_cron('b', { every = 1, rerun = false,
                                      func = function() runs.b = runs.b + 1 end })
             mcp.register_cron('c', { every = 1, func = function() error('boom') end })",
        )
        .exec()
        .unwrap();
        let stats = ProxyStats::default();
        let start = Instant::now();
        crons.run_due(start, &stats);
        assert_eq!(
            stats.cron_runs.load(Relaxed),
            0,
            "nothing is due before every"
        );
        for i in 1..=3 {
            crons.run_due(start + Duration::from_secs(i * 2), &stats);
        }
        let runs: Table = lua.globals().get("runs").unwrap();
        assert_eq!(runs.get::<i64>("a").unwrap(), 3);
        assert_eq!(runs.get::<i64>("b").unwrap(), 1);
        assert_eq!(stats.cron_runs.load(Relaxed), 7);
        assert_eq!(stats.cron_fails.load(Relaxed), 3);
        assert_eq!(crons.names(), ["a", "c"]);
    }

    #[test]
    fn a_reload_keeps_schedules_and_drops_crons_not_registered_again() {
        let (lua, crons) = vm();
        let register = |names: &[(&str, i64)]| {
            for (name, every) in names {
                lua.load(format!(
                    "mcp.register_cron('{name}', {{ every = {every}, func = function() end }})"
                ))
                .exec()
                .unwrap();
            }
        };
        register(&[("keep", 5), ("change", 5), ("drop", 5)]);
        let next = |name: &str| {
            crons
                .live
                .borrow()
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.next)
        };
        let (keep, change) = (next("keep").unwrap(), next("change").unwrap());
        std::thread::sleep(Duration::from_millis(5));
        crons.begin_load();
        register(&[("keep", 5), ("change", 6), ("new", 5)]);
        // A failed load leaves the old table.
        crons.abort_load();
        assert_eq!(crons.names(), ["keep", "change", "drop"]);
        crons.begin_load();
        register(&[("keep", 5), ("change", 6), ("new", 5)]);
        crons.commit_load();
        assert_eq!(crons.names(), ["keep", "change", "new"]);
        assert_eq!(next("keep").unwrap(), keep, "same every: same schedule");
        assert!(
            next("change").unwrap() > change,
            "a new every starts afresh"
        );
    }
}
