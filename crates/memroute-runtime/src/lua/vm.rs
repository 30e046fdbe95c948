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
    let start_dir = config
        .startfile
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for dir in config
        .lua_path
        .iter()
        .map(|p| p.as_path())
        .chain([start_dir])
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
    match &config.start_arg {
        Some(arg) => mcp.set("start_arg", arg.as_str())?,
        None => mcp.set("start_arg", Value::Nil)?,
    }
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

/// Runs the startfile's top-level code. Errors name the file and line.
///
/// A startfile named like an embedded library, with no file of that name
/// (memcached's `-o proxy_config=routelib`), runs that library. As in
/// memcached, an embedded library may be followed by more files after
/// `:` (`-o proxy_config=routelib:handlers.lua`), run in order in the same
/// VM: route handler libraries for routelib.
pub fn load_startfile(lua: &Lua, config: &ProxyConfig) -> Result<(), ConfigError> {
    for path in startfile_parts(config) {
        load_one(lua, config, &path)?;
    }
    Ok(())
}

/// The files a startfile names: itself, or (when it starts with an
/// embedded library's name and a `:`) that library and the files after it.
pub fn startfile_parts(config: &ProxyConfig) -> Vec<std::path::PathBuf> {
    let path = &config.startfile;
    let text = path.to_string_lossy();
    if !path.exists() {
        if let Some((first, rest)) = text.split_once(':') {
            if config.libraries.iter().any(|(name, _)| *name == first) {
                let mut parts = vec![std::path::PathBuf::from(first)];
                parts.extend(rest.split(':').map(std::path::PathBuf::from));
                return parts;
            }
        }
    }
    vec![path.clone()]
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
