//! What the config VM and the worker VMs share: creating a VM, the common
//! part of the `mcp` table (constants, logging, clocks, distribution and
//! hash names), module search paths (the disk, then the Lua libraries the
//! binary embeds), and loading the startfile.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mlua::{Lua, Table, Value};

use super::config::{ConfigError, ProxyConfig};
use super::objects::{AWAIT_MODES, COMMANDS, RESPONSE_CODES};

/// Distribution descriptors exposed as `mcp.dist_*`, as memcached's proxy
/// names them (plus memroute's additions), with the name the hashing crate
/// parses.
const DISTRIBUTIONS: &[(&str, &str)] = &[
    ("dist_jump_hash", "jump"),
    ("dist_ring_hash", "ring_hash"),
    ("dist_ketama", "ketama"),
    ("dist_twemproxy", "twemproxy"),
    ("dist_maglev", "maglev"),
    ("dist_modula", "modula"),
    ("dist_rendezvous", "rendezvous"),
];

/// Key hash descriptors exposed as `mcp.hash_*`.
const HASHES: &[(&str, &str)] = &[
    ("hash_xxhash", "xxh3"),
    ("hash_md5", "md5"),
    ("hash_crc32", "crc32"),
    ("hash_crc32a", "crc32a"),
    ("hash_crc16", "crc16"),
    ("hash_fnv1_32", "fnv1_32"),
    ("hash_fnv1a_32", "fnv1a_32"),
    ("hash_fnv1_64", "fnv1_64"),
    ("hash_fnv1a_64", "fnv1a_64"),
    ("hash_one_at_a_time", "one_at_a_time"),
    ("hash_murmur", "murmur"),
    ("hash_jenkins", "jenkins"),
    ("hash_hsieh", "hsieh"),
];

/// The table key that marks a descriptor table, read back by `mcp.pool`.
pub const DIST_MARK: &str = "__memroute_dist";
pub const HASH_MARK: &str = "__memroute_hash";

/// Creates a VM with the common `mcp` table and module paths set up. The
/// caller adds its role's functions, then runs [`load_startfile`].
pub fn new_vm(config: &ProxyConfig) -> Result<Lua, ConfigError> {
    setup_vm(Lua::new(), config)
}

fn setup_vm(lua: Lua, config: &ProxyConfig) -> Result<Lua, ConfigError> {
    setup(&lua, config).map_err(|e| ConfigError::lua(&config.startfile, e))?;
    Ok(lua)
}

fn setup(lua: &Lua, config: &ProxyConfig) -> mlua::Result<()> {
    let globals = lua.globals();
    let package: Table = globals.get("package")?;
    let mut path = String::new();
    // `require` looks next to each startfile (several, after `:`, search
    // their directories in order).
    let parts = startfile_parts(config);
    let mut start_dirs: Vec<&Path> = Vec::new();
    for part in &parts {
        let dir = part
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !start_dirs.contains(&dir) {
            start_dirs.push(dir);
        }
    }
    for dir in config
        .lua_path
        .iter()
        .map(|p| p.as_path())
        .chain(start_dirs)
    {
        path.push_str(&format!("{0}/?.lua;{0}/?/init.lua;", dir.display()));
    }
    let old: String = package.get("path")?;
    package.set("path", format!("{path}{old}"))?;
    // The embedded libraries come last: a file on disk wins.
    let searchers: Table = package.get("searchers")?;
    let libraries = config.libraries;
    let searcher = lua.create_function(move |lua, name: String| {
        match libraries.iter().find(|(n, _)| *n == name) {
            Some((n, source)) => {
                let chunk = lua
                    .load(*source)
                    .set_name(format!("=[memroute]/{n}.lua"))
                    .into_function()?;
                Ok(Value::Function(chunk))
            }
            None => Ok(Value::String(lua.create_string(format!(
                "\n\tno embedded memroute library '{name}'"
            ))?)),
        }
    })?;
    searchers.push(searcher)?;

    let mcp = lua.create_table()?;
    for (name, value) in COMMANDS {
        mcp.set(*name, *value)?;
    }
    mcp.set("CMD_ANY", super::objects::CMD_ANY)?;
    mcp.set("CMD_ANY_STORAGE", super::objects::CMD_ANY_STORAGE)?;
    for (name, value) in AWAIT_MODES {
        mcp.set(*name, *value)?;
    }
    for (name, value) in RESPONSE_CODES {
        mcp.set(*name, *value)?;
    }
    for (name, value) in super::funcgen::CONSTANTS {
        mcp.set(*name, *value)?;
    }
    // A handle callback returns this second to end a wait early; any true
    // value does, as in memcached.
    mcp.set("WAIT_RESUME", true)?;
    for (field, name) in DISTRIBUTIONS {
        let t = lua.create_table()?;
        t.set(DIST_MARK, *name)?;
        if *name == "ring_hash" {
            // memcached's proxy exposes the ring's own md5 key hash here:
            // `hash = mcp.dist_ring_hash.hash`.
            let h = lua.create_table()?;
            h.set(HASH_MARK, "md5")?;
            t.set("hash", h)?;
        }
        mcp.set(*field, t)?;
    }
    for (field, name) in HASHES {
        let t = lua.create_table()?;
        t.set(HASH_MARK, *name)?;
        mcp.set(*field, t)?;
    }
    mcp.set("start_arg", start_arg(lua, config)?)?;
    mcp.set(
        "log",
        lua.create_function(|_, msg: mlua::LuaString| {
            let msg = msg.to_string_lossy();
            // `watch proxyuser` gets it in memcached's format; the log
            // (`-v`) keeps it too.
            if crate::watch::enabled(crate::watch::PROXYUSER) {
                crate::watch::log_text(crate::watch::PROXYUSER, |line| {
                    line.push_str("type=proxy_user msg=");
                    line.push_str(&msg);
                });
            }
            tracing::info!(target: "memroute::lua", "{msg}");
            Ok(())
        })?,
    )?;
    mcp.set(
        "time_real_millis",
        lua.create_function(|_, ()| {
            Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64))
        })?,
    )?;
    let epoch = Instant::now();
    mcp.set(
        "time_mono_millis",
        lua.create_function(move |_, ()| Ok(epoch.elapsed().as_millis() as i64))?,
    )?;
    globals.set("mcp", mcp)?;
    Ok(())
}

/// `mcp.start_arg`: `false` without a start argument, as in memcached.
/// Given with memcached's spelling (`-o proxy_arg=`), an argument holding
/// `:` becomes memcached's table: each `:`-separated part is `name_value`
/// (`a_b:c_d` is `{ a = "b", c = "d" }`) or a lone `name`, which maps to
/// `true`. Runs of `:` or `_` count as one and a value ends at the next
/// `_`, as memcached's `strtok` splitting has it. memroute's own
/// `--config-arg` gives the string unchanged (host lists hold `:`).
fn start_arg(lua: &Lua, config: &ProxyConfig) -> mlua::Result<Value> {
    let Some(arg) = &config.start_arg else {
        return Ok(Value::Boolean(false));
    };
    if !config.split_start_arg || !arg.contains(':') {
        return Ok(Value::String(lua.create_string(arg)?));
    }
    let table = lua.create_table()?;
    for part in arg.split(':').filter(|p| !p.is_empty()) {
        let mut words = part.split('_').filter(|w| !w.is_empty());
        let Some(name) = words.next() else {
            return Err(mlua::Error::runtime(format!(
                "proxy_arg={arg}: the part `{part}` has no name (memcached's form is name_value:name_value)"
            )));
        };
        match words.next() {
            Some(value) => table.set(name, value)?,
            None => table.set(name, true)?,
        }
    }
    Ok(Value::Table(table))
}

/// Runs the startfile's top-level code. Errors name the file and line.
///
/// As in memcached, `proxy_config` may name several files separated by
/// `:` (`-o proxy_config=a.lua:b.lua`): each is run in order in the same
/// VM, the config VM and every worker VM, before `mcp_config_pools` /
/// `mcp_config_routes` are called. A part named like an embedded library,
/// with no file of that name (`routelib` in
/// `-o proxy_config=routelib:handlers.lua`), runs that library.
pub fn load_startfile(lua: &Lua, config: &ProxyConfig) -> Result<(), ConfigError> {
    for path in startfile_parts(config) {
        load_one(lua, config, &path)?;
    }
    Ok(())
}

/// The files a startfile names: its `:`-separated parts in order, empty
/// parts skipped (memcached splits `proxy_config` with `strtok`).
pub fn startfile_parts(config: &ProxyConfig) -> Vec<std::path::PathBuf> {
    let text = config.startfile.to_string_lossy();
    let parts: Vec<std::path::PathBuf> = text
        .split(':')
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .collect();
    if parts.is_empty() {
        // Nothing but `:`: read as given, which fails naming it.
        return vec![config.startfile.clone()];
    }
    parts
}

/// The startfile's bytes, for the configuration digest and its MD5: the
/// file, or with several (`a.lua:b.lua`) the files one after the other.
/// `None` when none can be read (an embedded library is no file).
pub fn read_startfiles(config: &ProxyConfig) -> Option<Vec<u8>> {
    let parts = startfile_parts(config);
    if let [only] = parts.as_slice() {
        return std::fs::read(only).ok();
    }
    let mut bytes = None::<Vec<u8>>;
    for part in &parts {
        if let Ok(file) = std::fs::read(part) {
            bytes.get_or_insert_with(Vec::new).extend_from_slice(&file);
        }
    }
    bytes
}

fn load_one(lua: &Lua, config: &ProxyConfig, path: &Path) -> Result<(), ConfigError> {
    let builtin = config
        .libraries
        .iter()
        .find(|(name, _)| path.as_os_str() == *name && !path.exists());
    let (source, chunk_name) = match builtin {
        Some((name, source)) => (
            source.as_bytes().to_vec(),
            format!("=[memroute]/{name}.lua"),
        ),
        None => {
            let source = std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            (source, format!("@{}", path.display()))
        }
    };
    lua.load(source)
        .set_name(chunk_name)
        .exec()
        .map_err(|e| ConfigError::lua(path, e))
}

/// Installs `mcp.<name>` functions that fail with a message saying where
/// they can be used: each VM only offers its own role's functions.
pub fn forbid(lua: &Lua, mcp: &Table, names: &[&str], where_valid: &str) -> mlua::Result<()> {
    for name in names {
        let message = format!("mcp.{name} is only available in {where_valid}");
        mcp.set(
            *name,
            lua.create_function(move |_, _: mlua::MultiValue| {
                Err::<(), _>(mlua::Error::runtime(message.clone()))
            })?,
        )?;
    }
    Ok(())
}

/// The `mcp` table of a VM.
pub fn mcp_table(lua: &Lua) -> mlua::Result<Table> {
    lua.globals().get("mcp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(startfile: &str, arg: Option<&str>, split: bool) -> ProxyConfig {
        ProxyConfig {
            startfile: startfile.into(),
            start_arg: arg.map(str::to_string),
            split_start_arg: split,
            lua_path: Vec::new(),
            libraries: &[],
        }
    }

    #[test]
    fn startfile_parts_split_at_colons_skipping_empty_ones() {
        let parts = |s: &str| startfile_parts(&proxy(s, None, false));
        assert_eq!(parts("a.lua"), vec![std::path::PathBuf::from("a.lua")]);
        assert_eq!(
            parts(":a.lua::dir/b.lua:"),
            vec![
                std::path::PathBuf::from("a.lua"),
                std::path::PathBuf::from("dir/b.lua")
            ]
        );
        assert_eq!(parts("routelib:h.lua").len(), 2);
    }

    #[test]
    fn start_arg_forms() {
        let lua = Lua::new();
        let shown = |arg: Option<&str>, split: bool| -> String {
            match start_arg(&lua, &proxy("s.lua", arg, split)).unwrap() {
                Value::Table(t) => {
                    let mut pairs: Vec<String> = t
                        .pairs::<String, Value>()
                        .map(|p| {
                            let (k, v) = p.unwrap();
                            format!("{k}={}", v.to_string().unwrap())
                        })
                        .collect();
                    pairs.sort();
                    pairs.join(",")
                }
                other => format!("{}:{}", other.type_name(), other.to_string().unwrap()),
            }
        };
        assert_eq!(shown(None, true), "boolean:false");
        assert_eq!(shown(Some("plain"), true), "string:plain");
        assert_eq!(shown(Some("a_b:c_d"), false), "string:a_b:c_d");
        assert_eq!(shown(Some("a_b:c_d"), true), "a=b,c=d");
        assert_eq!(
            shown(Some("solo:x_y_z::__p__q:a_1:a_2"), true),
            "a=2,p=q,solo=true,x=y"
        );
        assert!(start_arg(&lua, &proxy("s.lua", Some("a_b:__"), true)).is_err());
    }
}
