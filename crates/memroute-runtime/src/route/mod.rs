//! The route tree: what answers a routed request, free of Lua.
//!
//! A [`Route`] takes a request and answers a future of the bytes the client
//! gets. Pools ([`pool`]) are the leaves: a memcached pool, a shared store
//! (DynamoDB) and the embedded cache all implement [`Pool`], which is a
//! route, so a pool attached with `mcp.attach(cmd, pool)` is served with no
//! Lua at all. A Lua route function is one more kind of node, defined in
//! `crate::lua` (the only place that knows mlua); native route handlers
//! (failover, fan-out, tiers) plug in the same way.
//!
//! Each worker owns its routes: a [`RouteSet`] maps command ids
//! ([`commands`]) to routes, and [`WorkerRoutes`] holds the current set and,
//! during a reload, a staged one. Requests take an `Rc` of the current set
//! when they start, so a request in flight finishes on the configuration it
//! started with.
//!
//! The current set is swapped through a `RefCell`, not `arc-swap`: it is
//! read and written only on its own worker thread, so an atomic swap would
//! buy nothing, and an `Rc` clone per request is a plain increment where an
//! `Arc` would be an atomic one. The configuration itself crosses threads
//! once per reload, as plain data (see `crate::lua::LoadedConfig`).
//!
//! # Layout
//! - [`commands`]: command ids (`mcp.CMD_*`).
//! - [`pool`]: pool definitions, the [`Pool`] interface and its memcached
//!   and shared-store implementations, and a worker's backend connections.
//! - [`multiget`]: multi-key gets split into windows and per-backend lines,
//!   and their replies merged back in key order.
//! - [`plan`]: route trees as plain data, built per worker.
//! - [`router`]: the key router (`mcp.router_new`, routelib's `routes{}`).
//! - [`handlers`]: native route handlers (failover, fan-out, zones, TTL,
//!   mcrouter's prefix selector, hash route and routing prefixes...).

pub mod commands;
pub mod handlers;
pub mod multiget;
pub mod plan;
pub mod pool;
pub mod router;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use memroute_proto::{Command, Limits, MetaOp, Request, Response};

pub use pool::{Pool, PoolDef, PoolKind, WorkerBackends};

use crate::embedded::Embedded;
use crate::stats::{ProxyStats, ServerStats};

/// A routed request's reply on its way: the bytes the client gets (empty
/// for `noreply`).
pub type ReplyFuture = Pin<Box<dyn Future<Output = Bytes>>>;

/// A pool's response on its way, for routes that look at it before the
/// client does (Lua's `pool(r)`, `mcp.await`, route handlers).
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response>>>;

/// A node of the route tree.
pub trait Route {
    /// Sends `request` down this route and answers its response, for the
    /// route above (a handler, Lua's `pool(r)`). A failure is the
    /// `SERVER_ERROR` line the client would get. `noreply` and meta `q` are
    /// dropped before anything is sent (every request sent must get a
    /// reply, or replies would fall out of step); the caller hides the
    /// client's own reply.
    fn call(self: Rc<Self>, request: Request) -> ResponseFuture;

    /// Answers `request` with the bytes its client gets, shaped by
    /// [`ReplyShape`] (nothing for `noreply`, nothing for a quiet meta
    /// request's nominal reply).
    ///
    /// The connection keeps one such future per request in flight, boxed.
    /// This default boxes twice (the call, then the shaping); routes on
    /// the hot path build one box, with everything they need to choose (a
    /// backend, say) done before it.
    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        let shape = ReplyShape::of(&request);
        Box::pin(
            self.call(request)
                .map(move |response| shape.apply(response.raw().clone())),
        )
    }

    /// Whether a multi-key get is sent as one line per backend
    /// ([`multi_get`](Self::multi_get)) rather than once per key.
    fn joins_keys(&self) -> bool {
        false
    }

    /// For routes that [join keys](Self::joins_keys): the `VALUE` blocks
    /// (no `END`) of a multi-key get, in its key order; a key whose
    /// backend failed reads as a miss.
    fn multi_get(self: Rc<Self>, _request: Request) -> Option<ReplyFuture> {
        None
    }
}

/// What routes reach on their worker besides backends.
pub struct RouteEnv {
    pub embedded: Embedded,
    pub server_stats: Arc<ServerStats>,
    pub worker: usize,
    pub limits: Limits,
    pub proxy_stats: Arc<ProxyStats>,
}

/// This worker's share of the limits the startfile set
/// (`mcp.active_req_limit`, `mcp.buffer_memory_limit`); `None` for none.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerLimits {
    /// Routed requests in flight at once (`mcp.active_req_limit`).
    pub active_requests: Option<u64>,
    /// Bytes of routed replies held for clients (`mcp.buffer_memory_limit`).
    pub buffer_bytes: Option<u64>,
}

/// One configuration's routes on one worker: a route per command id.
pub struct RouteSet {
    routes: Vec<Option<Rc<dyn Route>>>,
    limits: WorkerLimits,
    stats: Arc<ProxyStats>,
}

impl RouteSet {
    /// `routes` is indexed by command id ([`commands::command_id`]).
    /// Unless a route is attached for `flush_all`, it goes to every backend
    /// of every cache among `pools` (the configuration's pools and the
    /// embedded cache), as a client of a drop-in memcached expects.
    pub fn new(
        mut routes: Vec<Option<Rc<dyn Route>>>,
        pools: Vec<Rc<dyn Pool>>,
        limits: WorkerLimits,
        stats: Arc<ProxyStats>,
    ) -> RouteSet {
        let flush = commands::CMD_FLUSH_ALL as usize;
        if routes.len() > flush && routes[flush].is_none() {
            let pools: Vec<Rc<dyn Pool>> =
                pools.into_iter().filter(|p| p.takes_flush_all()).collect();
            routes[flush] = Some(Rc::new(handlers::FlushAll { pools }));
        }
        RouteSet {
            routes,
            limits,
            stats,
        }
    }

    /// The route attached to this request's command, if any.
    pub fn route(&self, command: &Command) -> Option<Rc<dyn Route>> {
        let id = commands::command_id(command) as usize;
        self.routes.get(id).and_then(|r| r.clone())
    }

    /// Whether `set` has a route (so stores do not reach the embedded cache).
    pub fn routes_storage(&self) -> bool {
        self.routes
            .get(commands::CMD_SET as usize)
            .is_some_and(|r| r.is_some())
    }

    /// The limits on this worker's routed requests.
    pub fn limits(&self) -> WorkerLimits {
        self.limits
    }

    /// Counts one client request that took a route (a multi-key get
    /// counts once, however many windows it is sent in).
    pub fn count_routed(&self) {
        self.stats.routed_requests.fetch_add(1, Relaxed);
    }

    /// Serves a request that is not a multi-key get (those go out a
    /// window of keys at a time, see [`multiget::window`]).
    pub fn serve(&self, route: Rc<dyn Route>, request: Request) -> ReplyFuture {
        self.count_routed();
        route.serve(request)
    }
}

/// A worker's routes: the current set, and during a reload a staged one.
/// Reloads stage a new set on every worker first, then commit everywhere
/// (or abort everywhere if one worker failed to build its set).
#[derive(Default)]
pub struct WorkerRoutes {
    current: RefCell<Option<Rc<RouteSet>>>,
    staged: RefCell<Option<Rc<RouteSet>>>,
    /// This worker's backend connections, kept across reloads.
    pub backends: WorkerBackends,
}

impl WorkerRoutes {
    /// The routes new requests run on (none before the first commit).
    pub fn current(&self) -> Option<Rc<RouteSet>> {
        self.current.borrow().clone()
    }

    /// Holds `set` until [`commit`](Self::commit).
    pub fn stage(&self, set: RouteSet) {
        *self.staged.borrow_mut() = Some(Rc::new(set));
    }

    /// Makes the staged set current, and forgets backends no configuration
    /// uses any more.
    pub fn commit(&self) {
        if let Some(set) = self.staged.borrow_mut().take() {
            *self.current.borrow_mut() = Some(set);
        }
        self.backends.forget_unused();
    }

    /// Drops the staged set (another worker failed to stage).
    pub fn abort(&self) {
        self.staged.borrow_mut().take();
    }
}

/// What of a route's reply the client sees: nothing for `noreply`, and
/// for meta `q` nothing when it is the nominal reply, as memcached hides
/// it: `EN` for `mg`, `HD` and `VA` for `ma`, `HD` otherwise.
#[derive(Clone, Copy)]
pub struct ReplyShape {
    noreply: bool,
    quiet: bool,
    meta_op: Option<MetaOp>,
}

impl ReplyShape {
    pub fn of(request: &Request) -> ReplyShape {
        ReplyShape {
            noreply: request.noreply(),
            quiet: request.is_quiet(),
            meta_op: match request.command() {
                Command::Meta(m) => Some(m.op),
                _ => None,
            },
        }
    }

    /// The part of `reply` the client gets.
    pub fn apply(self, reply: Bytes) -> Bytes {
        if self.noreply {
            return Bytes::new();
        }
        if self.quiet {
            let code = reply.get(..2).unwrap_or(b"");
            let hidden = match self.meta_op {
                Some(MetaOp::Get) => code == b"EN",
                Some(MetaOp::Arith) => code == b"HD" || code == b"VA",
                Some(_) => code == b"HD",
                None => false,
            };
            if hidden {
                return Bytes::new();
            }
        }
        reply
    }
}
