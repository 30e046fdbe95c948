//! A key router: picks the route that serves a request from a part of its
//! key, as memcached's `mcp.router_new` does. In `prefix` mode the part is
//! what comes before the `stop` string (`/` by default); in `anchor` mode,
//! what comes between a leading `start` and the next `stop`. The part is
//! looked up in a map whose entries are one route for every command or a
//! route per command; a key with no entry goes to the route for its command
//! (`cmap`), then to the default; with neither, the client gets
//! `SERVER_ERROR no route`.

use std::collections::HashMap;
use std::rc::Rc;

use memroute_proto::{Request, Response};

use super::commands::{command_id, CMD_ANY_STORAGE};
use super::{ReplyFuture, ResponseFuture, Route};

/// Longest `start` or `stop` string (memcached's limit).
pub const MAX_SEPARATOR: usize = 5;

/// How a router takes the part of a key it looks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterMode {
    /// Up to the first `stop`.
    Prefix { stop: Vec<u8> },
    /// After a leading `start`, up to the next `stop`.
    Anchor { start: Vec<u8>, stop: Vec<u8> },
}

impl Default for RouterMode {
    fn default() -> Self {
        RouterMode::Prefix {
            stop: b"/".to_vec(),
        }
    }
}

impl RouterMode {
    /// The part of `key` the map is searched for; `None` (no map entry)
    /// when the separators are not there or the part is empty.
    pub fn part<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let (rest, stop) = match self {
            RouterMode::Prefix { stop } => (key, stop),
            RouterMode::Anchor { start, stop } => (key.strip_prefix(&start[..])?, stop),
        };
        // A one-byte separator (the usual `/`) is a plain byte search; a
        // substring search sets up a searcher on every call, which cost
        // more than the rest of the lookup.
        let end = match stop[..] {
            [byte] => memchr::memchr(byte, rest)?,
            _ => memchr::memmem::find(rest, stop)?,
        };
        (end > 0).then(|| &rest[..end])
    }
}

/// A map entry: one route for every command, or one per command id
/// (`CMD_ANY_STORAGE` standing for every command it covers).
pub enum RouterEntry<R: ?Sized> {
    All(Rc<R>),
    ByCommand(HashMap<i64, Rc<R>>),
}

/// The routing table of a [`KeyRouter`], generic over what it routes to
/// (routes here; funcgens in the Lua layer, which share the lookup).
pub struct RouterTable<R: ?Sized> {
    pub mode: RouterMode,
    pub map: HashMap<Vec<u8>, RouterEntry<R>>,
    pub by_command: HashMap<i64, Rc<R>>,
    pub default: Option<Rc<R>>,
}

impl<R: ?Sized> RouterTable<R> {
    /// What serves `request`, if anything.
    pub fn pick(&self, request: &Request) -> Option<&Rc<R>> {
        let command = command_id(request.command());
        let entry = request
            .key()
            .and_then(|key| self.mode.part(key))
            .and_then(|part| self.map.get(part));
        let chosen = match entry {
            Some(RouterEntry::All(target)) => Some(target),
            Some(RouterEntry::ByCommand(commands)) => commands
                .get(&command)
                .or_else(|| commands.get(&CMD_ANY_STORAGE)),
            None => None,
        };
        chosen
            .or_else(|| self.by_command.get(&command))
            .or(self.default.as_ref())
    }
}

/// A key router over routes: a node of the route tree.
pub struct KeyRouter(pub RouterTable<dyn Route>);

/// memcached's reply when a router has no route for a key.
pub const NO_ROUTE: &str = "SERVER_ERROR no route";

impl Route for KeyRouter {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<super::explain::Step>) {
        match self.0.pick(request) {
            Some(route) => super::explain::with_children("router", [route], request, depth, out),
            None => out.push(super::explain::Step::node(depth, "router: no route")),
        }
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        match self.0.pick(&request) {
            Some(route) => route.clone().call(request),
            None => Box::pin(std::future::ready(Response::from_line(NO_ROUTE))),
        }
    }

    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        match self.0.pick(&request) {
            Some(route) => route.clone().serve(request),
            None => no_route(&request),
        }
    }

    fn serve_unboxed(self: Rc<Self>, request: Request) -> super::Reply {
        match self.0.pick(&request) {
            Some(route) => route.clone().serve_unboxed(request),
            None => super::Reply::Boxed(no_route(&request)),
        }
    }
}

/// The client's reply to a request no route of a key router takes.
fn no_route(request: &Request) -> ReplyFuture {
    let shape = super::ReplyShape::of(request);
    let reply = shape.apply(Response::from_line(NO_ROUTE).raw().clone());
    Box::pin(std::future::ready(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_anchor_parts() {
        let prefix = RouterMode::default();
        assert_eq!(prefix.part(b"foo/bar"), Some(&b"foo"[..]));
        assert_eq!(prefix.part(b"/bar"), None);
        assert_eq!(prefix.part(b"foobar"), None);
        let long = RouterMode::Prefix {
            stop: b"-+-".to_vec(),
        };
        assert_eq!(long.part(b"ab-+-cd"), Some(&b"ab"[..]));
        let anchor = RouterMode::Anchor {
            start: b"/".to_vec(),
            stop: b"/".to_vec(),
        };
        assert_eq!(anchor.part(b"/foo/bar"), Some(&b"foo"[..]));
        assert_eq!(anchor.part(b"foo/bar"), None);
    }
}
