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
//! ([`commands`]) to routes, one table for untagged listeners and one per
//! listener tag (memcached's `-l tag_NAME_:...` with `mcp.attach(cmd, route,
//! "NAME")`), and [`WorkerRoutes`] holds the current set and, during a
//! reload, a staged one. Requests take an `Rc` of the current set
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
//! - [`explain`]: where a request would go (`__mcrouter__.route`).
//! - [`plan`]: route trees as plain data, built per worker.
//! - [`router`]: the key router (`mcp.router_new`, routelib's `routes{}`).
//! - [`handlers`]: native route handlers (failover, fan-out, zones, TTL,
//!   mcrouter's prefix selector, hash route and routing prefixes...).
//! - [`ratelim`]: token bucket filters, per worker and shared (lock-free).
//! - [`bigvalue`]: values split into chunk items under an index.
//! - [`keysplit`]: hot keys kept as several copies.

pub mod bigvalue;
pub mod commands;
pub mod explain;
pub mod handlers;
pub mod keysplit;
pub mod multiget;
pub mod plan;
pub mod pool;
pub mod ratelim;
pub mod router;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt;
use memroute_proto::{Command, Limits, MetaOp, Request, Response};

pub use pool::{Pool, PoolDef, PoolKind, WorkerBackends};

use crate::embedded::Embedded;
use crate::stats::{ProxyStats, ServerStats, WorkerPoolStats};

/// A routed request's reply on its way: the bytes the client gets (empty
/// for `noreply`).
pub type ReplyFuture = Pin<Box<dyn Future<Output = Bytes>>>;

/// A pool's response on its way, for routes that look at it before the
/// client does (Lua's `pool(r)`, `mcp.await`, route handlers).
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response>>>;

/// A routed request's reply as the connection holds it (see
/// [`Route::serve_unboxed`]): a memcached pool's own future, in place, or
/// any other route's boxed one.
pub enum Reply {
    Pool(pool::PoolReply),
    Boxed(ReplyFuture),
}

impl Future for Reply {
    type Output = Bytes;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Bytes> {
        match self.get_mut() {
            Reply::Pool(reply) => Pin::new(reply).poll(cx),
            Reply::Boxed(reply) => reply.as_mut().poll(cx),
        }
    }
}

/// A response on its way from [`Route::call_borrowed`]: a memcached
/// pool's own future, held in place, or any other route's boxed one.
pub enum Sent {
    Pool(pool::PoolResponse),
    Other(ResponseFuture),
}

impl Sent {
    /// Whether the response will carry its own round trip (a memcached
    /// pool's, timed by the backend's reader); other routes' responses are
    /// timed by their caller.
    pub fn times_itself(&self) -> bool {
        matches!(self, Sent::Pool(_))
    }

    /// The round trip of a memcached pool's request once answered (see
    /// [`Sending::round_trip`](crate::backend::Sending::round_trip)).
    pub fn round_trip(&self) -> Option<std::time::Duration> {
        match self {
            Sent::Pool(response) => Some(response.round_trip()),
            Sent::Other(_) => None,
        }
    }
}

impl Future for Sent {
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        match self.get_mut() {
            Sent::Pool(response) => Pin::new(response).poll(cx),
            Sent::Other(response) => response.as_mut().poll(cx),
        }
    }
}

/// A node of the route tree.
pub trait Route {
    /// Sends `request` down this route and answers its response, for the
    /// route above (a handler, Lua's `pool(r)`). A failure is the
    /// `SERVER_ERROR` line the client would get. `noreply` and meta `q` are
    /// dropped before anything is sent (every request sent must get a
    /// reply, or replies would fall out of step); the caller hides the
    /// client's own reply.
    fn call(self: Rc<Self>, request: Request) -> ResponseFuture;

    /// [`call`](Self::call) for a handler that keeps `request` to send it
    /// again (a failover trying its next child). A memcached pool sends it
    /// from the borrow and answers an unboxed future; other routes get a
    /// copy (the first copy of a request frame allocates, see
    /// `memroute_proto::limits::take_frame`).
    fn call_borrowed(self: Rc<Self>, request: &Request) -> Sent {
        Sent::Other(self.call(request.clone()))
    }

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
                .map(move |response| shape.apply(response.into_raw())),
        )
    }

    /// [`serve`](Self::serve) for the connection, which holds the reply
    /// of every request in flight: a memcached pool's reply is held in
    /// place, without a box (the box cost a pooled get about 125 of its
    /// ~7,200 instructions, docs/benchmarks.md, run 27), and so is one
    /// passed through by a route in front of a pool (a key router); any
    /// other route's is its boxed [`serve`](Self::serve).
    fn serve_unboxed(self: Rc<Self>, request: Request) -> Reply {
        Reply::Boxed(self.serve(request))
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

    /// For routes that do not join keys: the `VALUE` blocks (no `END`) of
    /// `keys`, each served as its own `get` ([`multiget::get_request`]),
    /// in one future; `None` leaves it to the default, a boxed
    /// [`serve`](Self::serve) per key. (A route whose per-key futures are
    /// large saves a box, a copy and an allocator round trip per key.)
    fn serve_keys(
        self: Rc<Self>,
        _get: &memroute_proto::GetCommand,
        _keys: &[Bytes],
    ) -> Option<ReplyFuture> {
        None
    }

    /// What this route would do with `request`, without sending anything:
    /// this node, then (one level deeper) the children it may send it to;
    /// a pool names the backend the key maps to. Answers operators' "where
    /// does this key go" (`get __mcrouter__.route(get,KEY)`, see
    /// [`explain`]).
    fn explain(&self, _request: &Request, depth: usize, out: &mut Vec<explain::Step>) {
        out.push(explain::Step::node(depth, "route"));
    }
}

/// What routes reach on their worker besides backends.
pub struct RouteEnv {
    pub embedded: Embedded,
    pub server_stats: Arc<ServerStats>,
    pub worker: usize,
    pub limits: Limits,
    pub proxy_stats: Arc<ProxyStats>,
    /// The tags the server's listeners carry, in [`ListenerTag`] order
    /// (fixed at start: a reload cannot add listeners).
    pub listener_tags: Arc<[String]>,
    /// This worker's pools' counters, by pool name, kept across reloads.
    pub pool_stats: WorkerPoolStats,
}

/// Longest listener or route tag: memcached packs a tag into 8 bytes.
pub const MAX_TAG_LEN: usize = 8;

/// Checks a listener or route tag as memcached takes it: 1 to
/// [`MAX_TAG_LEN`] bytes. `_`, `:`, `,`, `;` and spaces are refused too:
/// `-l tag_NAME_:HOST` could not carry them (the first `_` ends the name,
/// `,` and `;` separate listeners), so a route with one is never reached.
pub fn check_tag(tag: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(tag);
    if tag.is_empty() || tag.len() > MAX_TAG_LEN {
        return Err(format!(
            "tag {shown:?} must be 1 to {MAX_TAG_LEN} bytes long"
        ));
    }
    if tag
        .iter()
        .any(|b| matches!(b, b'_' | b':' | b',' | b';') || b.is_ascii_whitespace())
    {
        return Err(format!(
            "tag {shown:?} cannot hold '_', ':', ',', ';' or spaces"
        ));
    }
    Ok(())
}

/// Which route table a connection uses: its listener's tag, as an index
/// into [`RouteEnv::listener_tags`] (plus one), resolved once when the
/// connection is accepted so no request looks a tag up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerTag(usize);

impl ListenerTag {
    /// Connections on listeners without a tag.
    pub const UNTAGGED: ListenerTag = ListenerTag(0);

    /// The tag at `index` in [`RouteEnv::listener_tags`].
    pub fn tagged(index: usize) -> ListenerTag {
        ListenerTag(index + 1)
    }

    /// The route slot of `command_id` for connections with this tag (see
    /// [`route_slot`]).
    fn slot(self, command_id: usize) -> usize {
        self.0 * commands::COMMAND_SLOTS + command_id
    }
}

/// Route slots for servers whose listeners carry `listener_tags` tags:
/// a slot per command id in the untagged table and in each tag's. Each
/// worker counts requests per slot
/// ([`ServerStats::routes`](crate::stats::ServerStats::routes)).
pub fn route_slot_count(listener_tags: usize) -> usize {
    (listener_tags + 1) * commands::COMMAND_SLOTS
}

/// What route slot `slot` is, for operators: the attached command's name
/// (`get`, `mg`, `set`, ...) and the listener tag (`None`: untagged).
pub fn route_slot(slot: usize, listener_tags: &[String]) -> (&'static str, Option<&str>) {
    let (table, id) = (
        slot / commands::COMMAND_SLOTS,
        slot % commands::COMMAND_SLOTS,
    );
    let tag = table
        .checked_sub(1)
        .and_then(|i| listener_tags.get(i))
        .map(String::as_str);
    (commands::command_name(id as i64).unwrap_or("?"), tag)
}

/// One command-id-indexed route table ([`commands::command_id`]).
pub type RouteTable = Vec<Option<Rc<dyn Route>>>;

/// This worker's share of the limits the startfile set
/// (`mcp.active_req_limit`, `mcp.buffer_memory_limit`); `None` for none.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerLimits {
    /// Routed requests in flight at once (`mcp.active_req_limit`).
    pub active_requests: Option<u64>,
    /// Bytes of routed replies held for clients (`mcp.buffer_memory_limit`).
    pub buffer_bytes: Option<u64>,
}

/// What `mcp.attach` (or routelib's `routes{}`) filled: the untagged
/// table and one per tag named in an attach.
#[derive(Default)]
pub struct AttachedRoutes {
    pub untagged: RouteTable,
    pub tagged: Vec<(String, RouteTable)>,
}

impl AttachedRoutes {
    /// Empty tables of `slots` command ids.
    pub fn new(slots: usize) -> AttachedRoutes {
        AttachedRoutes {
            untagged: vec![None; slots],
            tagged: Vec::new(),
        }
    }

    /// The table for `tag` (`None`: untagged), made on first use.
    pub fn table_mut(&mut self, tag: Option<&str>) -> &mut RouteTable {
        let Some(tag) = tag else {
            return &mut self.untagged;
        };
        let at = match self.tagged.iter().position(|(t, _)| t == tag) {
            Some(at) => at,
            None => {
                let slots = self.untagged.len();
                self.tagged.push((tag.to_owned(), vec![None; slots]));
                self.tagged.len() - 1
            }
        };
        &mut self.tagged[at].1
    }
}

/// One configuration's routes on one worker: a route per command id, for
/// each listener tag.
pub struct RouteSet {
    /// Indexed by [`ListenerTag`]: the untagged table first, then one per
    /// listener tag, in which a command the tag has no route for holds the
    /// untagged route (memcached falls back to it).
    tables: Vec<RouteTable>,
    limits: WorkerLimits,
    /// For the admin keys that name the configuration in force.
    stats: Arc<ProxyStats>,
}

impl RouteSet {
    /// Builds the tables for `listener_tags` from what was attached; a
    /// route attached for a tag no listener carries is never reached.
    /// Unless a route is attached for `flush_all`, it goes to every backend
    /// of every cache among `pools` (the configuration's pools and the
    /// embedded cache), as a client of a drop-in memcached expects.
    pub fn new(
        attached: AttachedRoutes,
        listener_tags: &[String],
        pools: Vec<Rc<dyn Pool>>,
        limits: WorkerLimits,
        stats: Arc<ProxyStats>,
    ) -> RouteSet {
        let AttachedRoutes {
            untagged: mut routes,
            mut tagged,
        } = attached;
        let flush = commands::CMD_FLUSH_ALL as usize;
        if routes.len() > flush && routes[flush].is_none() {
            let pools: Vec<Rc<dyn Pool>> =
                pools.into_iter().filter(|p| p.takes_flush_all()).collect();
            routes[flush] = Some(Rc::new(handlers::FlushAll { pools }));
        }
        let mut tables = Vec::with_capacity(listener_tags.len() + 1);
        for tag in listener_tags {
            let table = match tagged.iter().position(|(t, _)| t == tag) {
                Some(at) => {
                    let mut own = std::mem::take(&mut tagged[at].1);
                    own.resize(routes.len(), None);
                    for (slot, fallback) in own.iter_mut().zip(&routes) {
                        if slot.is_none() {
                            slot.clone_from(fallback);
                        }
                    }
                    own
                }
                None => routes.clone(),
            };
            tables.push(table);
        }
        tables.insert(0, routes);
        RouteSet {
            tables,
            limits,
            stats,
        }
    }

    /// The route a connection on a `tag` listener takes for `command`, if
    /// any.
    pub fn route(&self, command: &Command, tag: ListenerTag) -> Option<Rc<dyn Route>> {
        self.lookup(command, tag).map(|(route, _)| route)
    }

    /// [`route`](Self::route), with the route slot its requests count in
    /// (see [`route_slot`]).
    pub fn lookup(&self, command: &Command, tag: ListenerTag) -> Option<(Rc<dyn Route>, usize)> {
        let id = commands::command_id(command) as usize;
        let route = self.tables.get(tag.0)?.get(id)?.clone()?;
        Some((route, tag.slot(id)))
    }

    /// Whether a `tag` connection's `set` has a route (so its stores do
    /// not reach the embedded cache).
    pub fn routes_storage(&self, tag: ListenerTag) -> bool {
        self.tables
            .get(tag.0)
            .and_then(|table| table.get(commands::CMD_SET as usize))
            .is_some_and(|r| r.is_some())
    }

    /// The limits on this worker's routed requests.
    pub fn limits(&self) -> WorkerLimits {
        self.limits
    }

    /// Serves a request that is not a multi-key get (those go out a
    /// window of keys at a time, see [`multiget::window`]). A `get` of
    /// `__mcrouter__.route(OP,KEY)` is answered with where `OP KEY` would
    /// go instead.
    pub fn serve(&self, route: Rc<dyn Route>, request: Request, tag: ListenerTag) -> Reply {
        // Admin keys start with `__`: one byte compared on the hot path.
        if request.key().is_some_and(|k| k.first() == Some(&b'_')) {
            if let Some(reply) = explain::answer(self, &request, tag) {
                return Reply::Boxed(Box::pin(std::future::ready(reply)));
            }
        }
        route.serve_unboxed(request)
    }
}

/// A worker's routes: the current set, and during a reload a staged one.
/// Reloads stage a new set on every worker first, then commit everywhere
/// (or abort everywhere if one worker failed to build its set).
#[derive(Default)]
pub struct WorkerRoutes {
    current: RefCell<Option<Rc<RouteSet>>>,
    staged: RefCell<Option<Rc<RouteSet>>>,
    /// This worker's backend connections, kept across reloads (shared with
    /// discovered pools, which add members' connections as they come).
    pub backends: Rc<WorkerBackends>,
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

/// memcached's classes of a reply (`mcp.RES_*`, its flag bits), as funcgen
/// waits count results and `watch proxyreqs` logs them (`res=`).
pub const RES_GOOD: u8 = 1 << 3;
pub const RES_OK: u8 = 1 << 4;
pub const RES_ANY: u8 = 1 << 5;

/// The class of a reply: an error is *any*, a miss (`END`, `EN`) is *ok*,
/// everything else is *good*.
pub fn reply_class(code: memroute_proto::ResponseCode) -> u8 {
    use memroute_proto::ResponseCode::{En, End};
    if code.is_error() {
        RES_ANY
    } else if matches!(code, End | En) {
        RES_OK
    } else {
        RES_GOOD
    }
}

/// What of a route's reply the client sees: nothing for `noreply`, and
/// for meta `q` nothing when it is the nominal reply, as memcached hides
/// it: `EN` for `mg`, `HD` and `VA` for `ma`, `HD` otherwise.
/// `Default` is a reply passed on as it is.
#[derive(Clone, Copy, Default)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A route only told apart by identity: never called.
    struct Marker;

    impl Route for Marker {
        fn call(self: Rc<Self>, _request: Request) -> ResponseFuture {
            unreachable!("tables are only looked at")
        }
    }

    fn command(line: &[u8], value: &[u8]) -> Command {
        Request::parse(line, value, &Limits::default())
            .unwrap()
            .command()
            .clone()
    }

    fn same(found: Option<Rc<dyn Route>>, want: &Rc<dyn Route>) -> bool {
        found.is_some_and(|r| Rc::ptr_eq(&r, want))
    }

    #[test]
    fn tagged_tables_fall_back_to_untagged_routes() {
        let id = |c: &Command| commands::command_id(c) as usize;
        let (set_k, get_k) = (command(b"set k 0 0 1", b"x"), command(b"get k", b""));
        let (set, get) = (id(&set_k), id(&get_k));
        let untagged: Rc<dyn Route> = Rc::new(Marker);
        let tagged: Rc<dyn Route> = Rc::new(Marker);
        let mut attached = AttachedRoutes::new(commands::COMMAND_SLOTS);
        attached.table_mut(None)[set] = Some(untagged.clone());
        attached.table_mut(None)[get] = Some(untagged.clone());
        attached.table_mut(Some("aa"))[set] = Some(tagged.clone());
        // No listener has this tag: its table is never built.
        attached.table_mut(Some("nobody"))[get] = Some(tagged.clone());
        let tags = ["zz".to_string(), "aa".to_string()];
        let routes = RouteSet::new(
            attached,
            &tags,
            Vec::new(),
            WorkerLimits::default(),
            Arc::default(),
        );
        let (zz, aa) = (ListenerTag::tagged(0), ListenerTag::tagged(1));
        assert!(same(routes.route(&set_k, ListenerTag::UNTAGGED), &untagged));
        assert!(same(routes.route(&set_k, aa), &tagged));
        assert!(same(routes.route(&get_k, aa), &untagged));
        assert!(same(routes.route(&set_k, zz), &untagged));
        assert!(same(routes.route(&get_k, zz), &untagged));
        assert!(routes.routes_storage(aa) && routes.routes_storage(zz));
        // flush_all's default reaches tagged connections too.
        let flush = command(b"flush_all", b"");
        let default_flush = routes.route(&flush, ListenerTag::UNTAGGED).unwrap();
        assert!(same(routes.route(&flush, aa), &default_flush));
        assert!(routes.route(&set_k, ListenerTag(3)).is_none());
        // Each table's commands count in slots of their own.
        let (_, slot) = routes.lookup(&get_k, aa).unwrap();
        assert_eq!(route_slot(slot, &tags), ("get", Some("aa")));
        let (_, slot) = routes.lookup(&set_k, ListenerTag::UNTAGGED).unwrap();
        assert_eq!(route_slot(slot, &tags), ("set", None));
        assert!(slot < route_slot_count(tags.len()));
        assert_eq!(
            route_slot(route_slot_count(tags.len()) - 1, &tags).1,
            Some("aa")
        );
    }

    #[test]
    fn tags_are_what_a_listener_can_carry() {
        assert!(check_tag(b"aa").is_ok() && check_tag(b"12345678").is_ok());
        for bad in [
            &b""[..],
            b"123456789",
            b"a_b",
            b"a:b",
            b"a b",
            b"a,b",
            b"a;b",
        ] {
            assert!(check_tag(bad).is_err(), "{bad:?}");
        }
    }
}
