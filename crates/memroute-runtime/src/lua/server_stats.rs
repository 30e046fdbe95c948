//! `mcp.server_stats([subcommand])` in the config VM (`mcp_config_pools`
//! and crons), as memcached offers it: what `stats [subcommand]` would
//! answer, as a Lua table of strings.
//!
//! It reads memroute's own `stats` replies ([`crate::admin::Admin`]), so
//! the table holds exactly what a client would see: the server hands the
//! config thread a [`StatsSource`] before the first load, which the config
//! VM keeps as app data. As in memcached:
//! - no argument (or nil): the general stats;
//! - `settings`, `proxy`, `proxyfuncs`, `proxybe`, `conns`, `extstore`:
//!   those, with `conns` in sections;
//! - any other `stats` subcommand (`items`, `slabs`, `sizes`, and
//!   memroute's `backends`): its stats, a `N:name` or `items:N:name` stat
//!   filed under `t[N].name`;
//! - anything else, `reset` included (it is no statistic), is the error
//!   `unknown subcommand passed to server_stats`.
//!
//! Worker VMs do not have it (memcached offers it to the config VM only).

use std::sync::Arc;

use bytes::BytesMut;
use memroute_cache::Cache;
use mlua::{Lua, Table, Value};

use crate::admin::Admin;

/// What `mcp.server_stats` reads: the server's `stats` and its embedded
/// cache.
#[derive(Clone)]
pub struct StatsSource {
    pub admin: Arc<Admin>,
    pub cache: Arc<Cache>,
}

/// Subcommands whose stats memcached returns flat (`t.name`); the others
/// are read in sections.
const FLAT: &[&str] = &["settings", "proxy", "proxyfuncs", "proxybe", "extstore"];

/// Installs `mcp.server_stats` in a config VM's `mcp` table.
pub fn register(lua: &Lua, mcp: &Table) -> mlua::Result<()> {
    mcp.set(
        "server_stats",
        lua.create_function(|lua, sub: Option<mlua::LuaString>| {
            let source = lua
                .app_data_ref::<StatsSource>()
                .map(|s| s.clone())
                .ok_or_else(|| {
                    mlua::Error::runtime(
                        "mcp.server_stats: no server statistics here (only a running server has them)",
                    )
                })?;
            let sub = match &sub {
                Some(s) => s.to_str()?.to_string(),
                None => String::new(),
            };
            server_stats(lua, &source, &sub)
        })?,
    )
}

fn server_stats(lua: &Lua, source: &StatsSource, sub: &str) -> mlua::Result<Table> {
    // `reset` is a command, and `stats detail` is not served: memcached's
    // server_stats refuses both the same way as an unknown name.
    if sub == "reset" || sub.contains(' ') {
        return Err(unknown());
    }
    let mut out = BytesMut::new();
    source.admin.stats(sub.as_bytes(), &source.cache, &mut out);
    let stats = parse_stats(&out).ok_or_else(unknown)?;
    let table = lua.create_table()?;
    let sections = !sub.is_empty() && !FLAT.contains(&sub);
    for (name, value) in stats {
        match section_of(name).filter(|_| sections) {
            Some((section, field)) => {
                let sub_table = match table.raw_get::<Value>(section)? {
                    Value::Table(t) => t,
                    _ => {
                        let t = lua.create_table()?;
                        table.raw_set(section, &t)?;
                        t
                    }
                };
                sub_table.raw_set(lua.create_string(field)?, lua.create_string(value)?)?;
            }
            None => table.raw_set(lua.create_string(name)?, lua.create_string(value)?)?,
        }
    }
    Ok(table)
}

fn unknown() -> mlua::Error {
    mlua::Error::runtime("unknown subcommand passed to server_stats")
}

/// The `(name, value)` pairs of a `STAT name value ... END` reply; `None`
/// for any other reply (`ERROR` to an unknown subcommand).
fn parse_stats(reply: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut stats = Vec::new();
    for line in reply.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"END" {
            return Some(stats);
        }
        let rest = line.strip_prefix(b"STAT ")?;
        let (name, value) = match rest.iter().position(|&b| b == b' ') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        stats.push((name, value));
    }
    None
}

/// `items:N:field` or `N:field` as `(N, field)`, the way memcached files
/// sectioned stats.
fn section_of(name: &[u8]) -> Option<(i64, &[u8])> {
    let rest = name.strip_prefix(b"items:").unwrap_or(name);
    let colon = rest.iter().position(|&b| b == b':')?;
    let number = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let field = &rest[colon + 1..];
    (!field.is_empty()).then_some((number, field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_replies_parse_and_errors_do_not() {
        let reply = b"STAT pid 12\r\nSTAT version 1.6.18-memroute x\r\nEND\r\n";
        assert_eq!(
            parse_stats(reply).unwrap(),
            vec![
                (&b"pid"[..], &b"12"[..]),
                (&b"version"[..], &b"1.6.18-memroute x"[..])
            ]
        );
        assert_eq!(parse_stats(b"END\r\n").unwrap(), vec![]);
        assert!(parse_stats(b"ERROR\r\n").is_none());
    }

    #[test]
    fn sections_as_memcached_files_them() {
        assert_eq!(section_of(b"items:1:number"), Some((1, &b"number"[..])));
        assert_eq!(section_of(b"3:chunk_size"), Some((3, &b"chunk_size"[..])));
        assert_eq!(section_of(b"active_slabs"), None);
        assert_eq!(section_of(b"total_malloced"), None);
        assert_eq!(section_of(b"b1:conns"), None);
    }
}
