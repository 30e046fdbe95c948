//! Where a request would go, without sending it: the answer to mcrouter's
//! admin keys, which operators' tools already ask.
//!
//! - `get __mcrouter__.route(OP,KEY)`: the backends `OP KEY` may reach, one
//!   per line (`host:port`, or what stands for a store);
//! - `get __mcrouter__.route_handles(OP,KEY)`: the route tree it would take,
//!   one node per line, indented by depth;
//! - `get __mcrouter__.config_file` and `get __mcrouter__.config_md5_digest`:
//!   the configuration file in force and the MD5 of its bytes (hex), which
//!   mcrouter's health checks compare with `md5sum` of the file.
//!
//! Every route describes itself ([`super::Route::explain`]); a pool names
//! the backend its distribution picks for the key.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use memroute_proto::{Command, Request};

use super::{ListenerTag, Route, RouteSet};

/// One node of an explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub depth: usize,
    /// What the node is (`failover`, `pool main`...).
    pub node: String,
    /// For a leaf that reaches a backend: where (`host:port`).
    pub backend: Option<String>,
}

impl Step {
    pub fn node(depth: usize, node: impl Into<String>) -> Step {
        Step {
            depth,
            node: node.into(),
            backend: None,
        }
    }

    pub fn backend(depth: usize, node: impl Into<String>, backend: impl Into<String>) -> Step {
        Step {
            depth,
            node: node.into(),
            backend: Some(backend.into()),
        }
    }
}

/// A node named `name` over `children` (each explained a level deeper).
pub fn with_children<'a>(
    name: &str,
    children: impl IntoIterator<Item = &'a Rc<dyn Route>>,
    request: &Request,
    depth: usize,
    out: &mut Vec<Step>,
) {
    out.push(Step::node(depth, name));
    for child in children {
        child.explain(request, depth + 1, out);
    }
}

const PREFIX: &[u8] = b"__mcrouter__.";

/// The reply to an admin key, if `request` is a `get` of one.
pub fn answer(routes: &RouteSet, request: &Request, tag: ListenerTag) -> Option<Bytes> {
    let Command::Get(get) = request.command() else {
        return None;
    };
    let key = get.keys.first()?;
    let query = key.strip_prefix(PREFIX)?;
    if let Some(body) = config_answer(routes, query) {
        return Some(value_reply(key, &body));
    }
    let (handles, args) = if let Some(a) = query.strip_prefix(b"route_handles(") {
        (true, a)
    } else {
        (false, query.strip_prefix(b"route(")?)
    };
    let args = args.strip_suffix(b")")?;
    let comma = args.iter().position(|&b| b == b',')?;
    let (op, asked_key) = (&args[..comma], &args[comma + 1..]);
    let body = match explain(routes, op, asked_key, tag) {
        Ok(steps) => {
            let lines = if handles {
                route_tree(&steps)
            } else {
                backends_tried(&steps)
            };
            lines.join("\r\n").into_bytes()
        }
        Err(why) => why.as_str().as_bytes().to_vec(),
    };
    Some(value_reply(key, &body))
}

/// The answer to `config_file` or `config_md5_digest`; mcrouter fails the
/// digest query when it has none, and so does memroute.
fn config_answer(routes: &RouteSet, query: &[u8]) -> Option<Vec<u8>> {
    let file = routes.stats.config_file();
    match query {
        b"config_file" => Some(file.map_or_else(Vec::new, |f| f.path.clone().into_bytes())),
        b"config_md5_digest" => Some(match file {
            Some(f) if !f.md5.is_empty() => f.md5.clone().into_bytes(),
            _ => b"no config md5 digest found!".to_vec(),
        }),
        _ => None,
    }
}

fn value_reply(key: &[u8], body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    memroute_proto::reply::value(&mut out, key, 0, body, None);
    memroute_proto::reply::end(&mut out);
    out.freeze()
}

/// The request `OP KEY` stands for (its value, if any, empty).
fn asked(op: &[u8], key: &[u8]) -> Option<Request> {
    let limits = memroute_proto::Limits::default();
    let mut line = Vec::with_capacity(op.len() + key.len() + 16);
    line.extend_from_slice(op);
    line.push(b' ');
    line.extend_from_slice(key);
    match op {
        b"set" | b"add" | b"replace" | b"append" | b"prepend" => line.extend_from_slice(b" 0 0 0"),
        b"cas" => line.extend_from_slice(b" 0 0 0 0"),
        b"incr" | b"decr" => line.extend_from_slice(b" 1"),
        b"touch" => line.extend_from_slice(b" 0"),
        b"ms" => line.extend_from_slice(b" 0"),
        _ => {}
    }
    Request::parse(&line, b"", &limits).ok()
}

/// Why a request cannot be explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unexplained {
    /// `OP KEY` is not a request (an unknown operation, or a key the
    /// protocol refuses).
    UnknownOperation,
    /// Nothing is attached for the operation on this listener.
    NoRoute,
}

impl Unexplained {
    /// The admin key's answer for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Unexplained::UnknownOperation => "unknown operation",
            Unexplained::NoRoute => "no route",
        }
    }
}

/// The route tree `OP KEY` would take on a `tag` listener, without
/// sending anything: the steps behind both admin keys (and `memroute
/// route-of`).
pub fn explain(
    routes: &RouteSet,
    op: &[u8],
    key: &[u8],
    tag: ListenerTag,
) -> Result<Vec<Step>, Unexplained> {
    let asked = asked(op, key).ok_or(Unexplained::UnknownOperation)?;
    let route = routes
        .route(asked.command(), tag)
        .ok_or(Unexplained::NoRoute)?;
    let mut steps = Vec::new();
    route.explain(&asked, 0, &mut steps);
    Ok(steps)
}

/// `route(OP,KEY)`: the backends reached, in the order tried, each once.
pub fn backends_tried(steps: &[Step]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for b in steps.iter().filter_map(|s| s.backend.as_ref()) {
        if !seen.contains(b) {
            seen.push(b.clone());
        }
    }
    seen
}

/// `route_handles(OP,KEY)`: one node per line, indented two spaces a
/// level; a leaf that reaches a backend says where.
pub fn route_tree(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| {
            let pad = "  ".repeat(s.depth);
            match &s.backend {
                Some(b) => format!("{pad}{} -> {b}", s.node),
                None => format!("{pad}{}", s.node),
            }
        })
        .collect()
}
