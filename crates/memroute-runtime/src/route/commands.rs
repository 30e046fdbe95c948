//! The commands a route can be attached to, and their ids: memcached's
//! proxy numbers them (`mcp.CMD_*`), and a worker's route table is indexed
//! by them.

use memroute_proto::{ArithOp, Command, GetOp, MetaOp, StoreOp};

/// `mcp.CMD_*`: every command a route can be attached to.
pub const COMMANDS: &[(&str, i64)] = &[
    ("CMD_MG", 1),
    ("CMD_MS", 2),
    ("CMD_MD", 3),
    ("CMD_MN", 4),
    ("CMD_MA", 5),
    ("CMD_ME", 6),
    ("CMD_GET", 7),
    ("CMD_GAT", 8),
    ("CMD_SET", CMD_SET),
    ("CMD_ADD", 10),
    ("CMD_CAS", 11),
    ("CMD_GETS", 12),
    ("CMD_GATS", 13),
    ("CMD_INCR", 14),
    ("CMD_DECR", 15),
    ("CMD_TOUCH", 16),
    ("CMD_APPEND", 17),
    ("CMD_DELETE", 18),
    ("CMD_REPLACE", 19),
    ("CMD_PREPEND", 20),
    ("CMD_QUIT", 21),
    ("CMD_STATS", 22),
    ("CMD_VERSION", 23),
    ("CMD_FLUSH_ALL", CMD_FLUSH_ALL),
    ("CMD_VERBOSITY", 25),
];
/// Size of a hook table indexed by command id.
pub const COMMAND_SLOTS: usize = 26;
/// `mcp.CMD_FLUSH_ALL`'s id: routed by default to every cache pool.
pub const CMD_FLUSH_ALL: i64 = 24;
/// `mcp.CMD_SET`'s id, which the connection checks to know whether stores
/// bypass the embedded cache.
pub const CMD_SET: i64 = 9;
/// `mcp.CMD_ANY`: every command that can have a route.
pub const CMD_ANY: i64 = 1000;
/// `mcp.CMD_ANY_STORAGE`: every command that carries a key.
pub const CMD_ANY_STORAGE: i64 = 1001;

/// The ids `CMD_ANY_STORAGE` covers.
pub const STORAGE_IDS: &[i64] = &[
    1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
];
/// Commands that cannot be routed: `mn` must flush a client's pipeline in
/// order and `quit` closes the connection.
pub const UNHOOKABLE_IDS: &[i64] = &[4, 21];

/// The name of command `id` as operators know it (`get`, `mg`, `set`,
/// ...: `mcp.CMD_*` in lower case, without `CMD_`).
pub fn command_name(id: i64) -> Option<&'static str> {
    const NAMES: [&str; COMMAND_SLOTS] = [
        "",
        "mg",
        "ms",
        "md",
        "mn",
        "ma",
        "me",
        "get",
        "gat",
        "set",
        "add",
        "cas",
        "gets",
        "gats",
        "incr",
        "decr",
        "touch",
        "append",
        "delete",
        "replace",
        "prepend",
        "quit",
        "stats",
        "version",
        "flush_all",
        "verbosity",
    ];
    let name = *NAMES.get(usize::try_from(id).ok()?)?;
    (!name.is_empty()).then_some(name)
}

/// The id of a parsed command (`r:command()`).
pub fn command_id(command: &Command) -> i64 {
    match command {
        Command::Meta(m) => match m.op {
            MetaOp::Get => 1,
            MetaOp::Set => 2,
            MetaOp::Delete => 3,
            MetaOp::Arith => 5,
            MetaOp::Debug => 6,
        },
        Command::MetaNoop => 4,
        Command::Get(g) => match g.op {
            GetOp::Get => 7,
            GetOp::Gat => 8,
            GetOp::Gets => 12,
            GetOp::Gats => 13,
        },
        Command::Store(s) => match s.op {
            StoreOp::Set => 9,
            StoreOp::Add => 10,
            StoreOp::Cas => 11,
            StoreOp::Append => 17,
            StoreOp::Replace => 19,
            StoreOp::Prepend => 20,
        },
        Command::Arith(a) => match a.op {
            ArithOp::Incr => 14,
            ArithOp::Decr => 15,
        },
        Command::Touch { .. } => 16,
        Command::Delete { .. } => 18,
        Command::Quit => 21,
        Command::Stats { .. } => 22,
        Command::Version => 23,
        Command::FlushAll { .. } => CMD_FLUSH_ALL,
        Command::Verbosity { .. } => 25,
        // Not a command a route can take (memcached's proxy has no
        // `CMD_WATCH`): the connection turns into a log stream.
        Command::Watch { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_cmd_constants_in_lower_case() {
        for (constant, id) in COMMANDS {
            let want = constant.trim_start_matches("CMD_").to_ascii_lowercase();
            assert_eq!(command_name(*id), Some(want.as_str()));
        }
        assert_eq!(command_name(0), None);
        assert_eq!(command_name(COMMAND_SLOTS as i64), None);
    }
}
