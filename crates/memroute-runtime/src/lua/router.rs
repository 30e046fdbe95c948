//! `mcp.router_new{}`: memcached's key-prefix router for funcgens.
//!
//! A router picks the funcgen that serves a request from a part of its key:
//! in `"prefix"` mode, what comes before the `stop` string (`/` by
//! default); in `"anchor"` mode, what comes between a leading `start` and
//! the next `stop`. That part is looked up in `map`, whose entries are
//! funcgens or command maps (`{[mcp.CMD_GET] = fgen, [mcp.CMD_ANY_STORAGE]
//! = fgen}`). A key with no entry goes to `cmap`'s funcgen for its command,
//! then to `default`; with neither, the client gets `SERVER_ERROR no
//! route`.

use std::collections::HashMap;
use std::rc::Rc;

use memroute_proto::Request;
use mlua::{Table, UserData, Value};

use super::funcgen::{funcgen_of, Funcgen};
use super::objects::{command_id, CMD_ANY_STORAGE, COMMANDS};

/// Longest `start` or `stop` string (memcached's key filter limit).
const MAX_SEPARATOR: usize = 5;

/// How a router takes the part of a key it looks up.
enum Mode {
    /// Up to the first `stop`.
    Prefix { stop: Vec<u8> },
    /// After a leading `start`, up to the next `stop`.
    Anchor { start: Vec<u8>, stop: Vec<u8> },
}

/// A map entry: one funcgen for every command, or one per command.
enum Entry {
    All(Rc<Funcgen>),
    ByCommand(HashMap<i64, Rc<Funcgen>>),
}

/// A router (`mcp.router_new{}`).
pub struct Router {
    mode: Mode,
    map: HashMap<Vec<u8>, Entry>,
    by_command: HashMap<i64, Rc<Funcgen>>,
    default: Option<Rc<Funcgen>>,
}

/// The Lua object of a router.
#[derive(Clone)]
pub struct LuaRouter(pub Rc<Router>);
impl UserData for LuaRouter {}

impl Router {
    /// The funcgen for `request`, if any.
    pub fn pick(&self, request: &Request) -> Option<Rc<Funcgen>> {
        let command = command_id(request.command());
        let entry = request
            .key()
            .and_then(|key| self.lookup_part(key))
            .and_then(|part| self.map.get(part));
        let chosen = match entry {
            Some(Entry::All(fgen)) => Some(fgen),
            Some(Entry::ByCommand(commands)) => commands
                .get(&command)
                .or_else(|| commands.get(&CMD_ANY_STORAGE)),
            None => None,
        };
        chosen
            .or_else(|| self.by_command.get(&command))
            .or(self.default.as_ref())
            .cloned()
    }

    /// The part of `key` the map is searched for; `None` (the default
    /// route) when the separators are not there or the part is empty.
    fn lookup_part<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let (rest, stop) = match &self.mode {
            Mode::Prefix { stop } => (key, stop),
            Mode::Anchor { start, stop } => (key.strip_prefix(&start[..])?, stop),
        };
        let end = rest.windows(stop.len()).position(|w| w == &stop[..])?;
        (end > 0).then(|| &rest[..end])
    }

    /// `mcp.router_new{ map =, cmap =, mode =, start =, stop =, default = }`.
    pub fn from_options(opts: &Table) -> mlua::Result<Router> {
        let mut map = HashMap::new();
        let mut by_command = HashMap::new();
        let mut default = None;
        let mut mode_name = "prefix".to_string();
        let (mut start, mut stop) = (None, None);
        for pair in opts.pairs::<String, Value>() {
            let (option, value) = pair?;
            match option.as_str() {
                "map" => {
                    let Value::Table(t) = value else {
                        return Err(mlua::Error::runtime(
                            "Must pass a table to map argument of router_new",
                        ));
                    };
                    for pair in t.pairs::<Value, Value>() {
                        let (key, value) = pair?;
                        let Value::String(key) = key else {
                            return Err(mlua::Error::runtime(
                                "mcp.router_new: map keys must be strings",
                            ));
                        };
                        let entry = match &value {
                            Value::Table(commands) => Entry::ByCommand(command_map(commands)?),
                            other => Entry::All(ready_funcgen(other, "map")?),
                        };
                        map.insert(key.as_bytes().to_vec(), entry);
                    }
                }
                "cmap" => {
                    let Value::Table(t) = value else {
                        return Err(mlua::Error::runtime(
                            "mcp.router_new: cmap must be a table of commands to funcgens",
                        ));
                    };
                    by_command = command_map(&t)?;
                }
                "mode" => {
                    let Value::String(s) = value else {
                        return Err(mlua::Error::runtime(
                            "unknown type passed to mcp.router_new",
                        ));
                    };
                    mode_name = s.to_str()?.to_string();
                }
                "start" => start = Some(separator(value, "start")?),
                "stop" => stop = Some(separator(value, "stop")?),
                "default" => default = Some(ready_funcgen(&value, "default")?),
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "mcp.router_new: unknown option '{other}' \
                         (map, cmap, mode, start, stop, default)"
                    )))
                }
            }
        }
        let mode = match mode_name.as_str() {
            "prefix" => Mode::Prefix {
                stop: stop.unwrap_or_else(|| b"/".to_vec()),
            },
            "anchor" => match (start, stop) {
                (None, None) => Mode::Anchor {
                    start: b"/".to_vec(),
                    stop: b"/".to_vec(),
                },
                (Some(start), Some(stop)) => Mode::Anchor { start, stop },
                _ => {
                    return Err(mlua::Error::runtime(
                        "must specify start and stop if mode is anchor in mcp.router_new",
                    ))
                }
            },
            _ => {
                return Err(mlua::Error::runtime(
                    "unknown type passed to mcp.router_new",
                ))
            }
        };
        Ok(Router {
            mode,
            map,
            by_command,
            default,
        })
    }
}

/// A `start` or `stop` option: 1 to [`MAX_SEPARATOR`] bytes.
fn separator(value: Value, option: &str) -> mlua::Result<Vec<u8>> {
    let Value::String(s) = value else {
        return Err(mlua::Error::runtime(format!(
            "must pass a string to {option} in mcp.router_new"
        )));
    };
    let bytes = s.as_bytes().to_vec();
    if bytes.is_empty() {
        return Err(mlua::Error::runtime(format!(
            "must pass a non-zero length string to {option} in mcp.router_new"
        )));
    }
    if bytes.len() > MAX_SEPARATOR {
        return Err(mlua::Error::runtime(format!(
            "{option} is too long in mcp.router_new"
        )));
    }
    Ok(bytes)
}

/// A funcgen given to a router, which must be ready to make slots.
fn ready_funcgen(value: &Value, option: &str) -> mlua::Result<Rc<Funcgen>> {
    let fgen = funcgen_of(value).ok_or_else(|| {
        mlua::Error::runtime(format!(
            "mcp.router_new: {option} entries must be funcgens (mcp.funcgen_new)"
        ))
    })?;
    if !fgen.is_ready() {
        return Err(mlua::Error::runtime(format!(
            "mcp.router_new: a funcgen in {option} was not made ready (fgen:ready{{}})"
        )));
    }
    Ok(fgen)
}

/// `{[mcp.CMD_*] = fgen, ...}`: a command's funcgen; `mcp.CMD_ANY_STORAGE`
/// serves the commands not listed.
fn command_map(table: &Table) -> mlua::Result<HashMap<i64, Rc<Funcgen>>> {
    let mut commands = HashMap::new();
    for pair in table.pairs::<Value, Value>() {
        let (command, fgen) = pair?;
        let Value::Integer(command) = command else {
            return Err(mlua::Error::runtime(
                "Non integer key in router command map in router_new",
            ));
        };
        if command != CMD_ANY_STORAGE && !COMMANDS.iter().any(|(_, id)| *id == command) {
            return Err(mlua::Error::runtime(
                "Bad command in router command map in router_new",
            ));
        }
        commands.insert(command, ready_funcgen(&fgen, "a command map")?);
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(mode: Mode) -> Router {
        Router {
            mode,
            map: HashMap::new(),
            by_command: HashMap::new(),
            default: None,
        }
    }

    fn part<'k>(router: &Router, key: &'k str) -> Option<&'k str> {
        router
            .lookup_part(key.as_bytes())
            .map(|p| std::str::from_utf8(p).unwrap())
    }

    #[test]
    fn prefix_takes_what_comes_before_the_stop() {
        let short = router(Mode::Prefix {
            stop: b"/".to_vec(),
        });
        assert_eq!(part(&short, "foo/bar/baz"), Some("foo"));
        assert_eq!(part(&short, "foobar"), None);
        assert_eq!(part(&short, "/bar"), None, "an empty part is no part");
        let long = router(Mode::Prefix {
            stop: b"+#+".to_vec(),
        });
        assert_eq!(part(&long, "one+#+x"), Some("one"));
        assert_eq!(part(&long, "one+#x"), None);
        assert_eq!(part(&long, "+#"), None, "a key shorter than the stop");
    }

    #[test]
    fn anchor_takes_what_comes_between_start_and_stop() {
        let short = router(Mode::Anchor {
            start: b"_".to_vec(),
            stop: b",".to_vec(),
        });
        assert_eq!(part(&short, "_one,x"), Some("one"));
        assert_eq!(part(&short, "one,x"), None, "no anchor");
        assert_eq!(part(&short, "_one"), None, "no stop");
        assert_eq!(part(&short, "_,x"), None);
        assert_eq!(part(&short, "x_one,"), None, "the anchor leads the key");
        let long = router(Mode::Anchor {
            start: b"=?=".to_vec(),
            stop: b"__".to_vec(),
        });
        assert_eq!(part(&long, "=?=one__x"), Some("one"));
        assert_eq!(part(&long, "=?one__x"), None);
    }
}
