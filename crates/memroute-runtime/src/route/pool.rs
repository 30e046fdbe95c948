//! Pools, the leaves of the route tree, behind one interface ([`Pool`]).
//!
//! The config VM builds a [`PoolDef`] (shared by every worker, `Send`);
//! each worker turns it into its own pool with
//! [`PoolDef::instantiate`]: a [`MemcachedPool`] over the worker's own
//! connections (kept across reloads by [`WorkerBackends`]), or a
//! [`StorePool`] over a store shared by every worker (a DynamoDB table).
//! The embedded cache is a pool too ([`EmbeddedPool`], what `mcp.internal`
//! calls).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use memroute_hash::Distribution;
use memroute_proto::{Command, Request, Response, ResponseCode};

use super::explain::Step;
use super::multiget::{get_request, value_blocks, value_blocks_of};
use super::{Reply, ReplyFuture, ReplyShape, ResponseFuture, Route, RouteEnv, Sent};
use crate::backend::{Backend, BackendConfig, BackendError};
use crate::discovery::Discovery;
use crate::stats::PoolCounters;
use crate::store::SharedStore;

/// What every kind of pool is: a route that reaches a backend (a leaf of
/// the route tree). It serves clients directly when attached, and is what
/// route handlers and Lua call ([`Route::call`]) to reach a backend.
pub trait Pool: Route {
    /// A name for logs and `tostring(pool)`.
    fn name(&self) -> &str;

    /// The store behind a pool shared by every worker (a DynamoDB table),
    /// which `mcp.warm` can list.
    fn shared_store(&self) -> Option<&Arc<dyn SharedStore>> {
        None
    }

    /// Sends `request` to every backend of the pool (not to the one a key
    /// picks): how `flush_all` reaches a pool. Answers the first error, else
    /// the first reply.
    fn broadcast(self: Rc<Self>, request: Request) -> ResponseFuture {
        self.call(request)
    }

    /// The memcached backend `request` goes to, when the pool has one for
    /// it (for `be=` in `watch proxyreqs` lines).
    fn backend_of(&self, _request: &Request) -> Option<Arc<BackendConfig>> {
        None
    }

    /// Whether a client's `flush_all` empties this pool when no route is
    /// attached for it. Caches do; a durable store (a DynamoDB table) does
    /// not, and refuses `flush_all` when sent one.
    fn takes_flush_all(&self) -> bool {
        true
    }
}

/// A pool as the config VM built it.
pub struct PoolDef {
    /// A name for logs and stats (the `name` option, else the backends).
    pub name: String,
    pub kind: PoolKind,
}

/// What a pool is made of.
pub enum PoolKind {
    /// memcached servers and the key distribution over them; each worker
    /// connects to them on its own.
    Memcached {
        backends: Vec<Arc<BackendConfig>>,
        distribution: Arc<Distribution>,
    },
    /// A store shared by every worker (a DynamoDB table).
    Shared(Arc<dyn SharedStore>),
    /// memcached servers found by DNS or a configuration endpoint, and the
    /// key distribution over them, both replaced when the members change.
    Discovered(Arc<Discovery>),
}

impl std::fmt::Debug for PoolDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            PoolKind::Memcached { backends, .. } => f
                .debug_struct("PoolDef")
                .field("name", &self.name)
                .field("backends", backends)
                .finish(),
            PoolKind::Shared(store) => f
                .debug_struct("PoolDef")
                .field("name", &self.name)
                .field("store", &store.name())
                .finish(),
            PoolKind::Discovered(discovery) => f
                .debug_struct("PoolDef")
                .field("name", &self.name)
                .field("discovery", discovery)
                .finish(),
        }
    }
}

impl PoolDef {
    /// This worker's pool for this definition.
    pub fn instantiate(
        self: &Arc<Self>,
        backends: &Rc<WorkerBackends>,
        env: &Rc<RouteEnv>,
    ) -> Rc<dyn Pool> {
        match &self.kind {
            PoolKind::Memcached {
                backends: configs,
                distribution,
            } => Rc::new(MemcachedPool {
                def: self.clone(),
                distribution: distribution.clone(),
                backends: configs.iter().map(|c| backends.get(c, env)).collect(),
                counters: self.counters(env),
            }),
            PoolKind::Shared(store) => Rc::new(StorePool {
                def: self.clone(),
                store: store.clone(),
                counters: self.counters(env),
            }),
            PoolKind::Discovered(discovery) => {
                let pool = DiscoveredPool {
                    def: self.clone(),
                    discovery: discovery.clone(),
                    backends: backends.clone(),
                    env: env.clone(),
                    members: RefCell::new(None),
                };
                pool.members();
                Rc::new(pool)
            }
        }
    }
}

impl PoolDef {
    /// This worker's counters for pools of this name.
    fn counters(&self, env: &RouteEnv) -> Arc<PoolCounters> {
        env.pool_stats.get(&self.name, &env.proxy_stats.pools)
    }
}

/// Counts a pool's reply: an error reply (`SERVER_ERROR`, `CLIENT_ERROR`,
/// `ERROR`) is an error.
#[inline]
fn count_reply(counters: &PoolCounters, response: &Response) {
    if response.code().is_error() {
        counters.errors.incr();
    }
}

/// Every request sent to a backend must get a reply: drop `noreply`/`q`.
fn outbound(request: Request) -> Request {
    request.without_noreply().unwrap_or(request)
}

/// A pool of memcached servers on one worker: the key picks the backend.
pub struct MemcachedPool {
    def: Arc<PoolDef>,
    distribution: Arc<Distribution>,
    backends: Vec<Rc<Backend>>,
    counters: Arc<PoolCounters>,
}

/// A memcached pool's response on its way, as a named future (see
/// [`MemcachedPool::response_to`]): it holds the pool, which keeps the
/// backend until the reply is in.
pub struct PoolResponse {
    pool: Rc<MemcachedPool>,
    sending: crate::backend::Sending,
}

impl PoolResponse {
    /// The request's round trip, once answered (see
    /// [`Sending::round_trip`](crate::backend::Sending::round_trip)).
    pub fn round_trip(&self) -> std::time::Duration {
        self.sending.round_trip()
    }
}

impl Future for PoolResponse {
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = self.get_mut();
        Pin::new(&mut this.sending)
            .poll(cx)
            .map(|reply| this.pool.settle(reply))
    }
}

/// A memcached pool's reply as its client gets it (see
/// [`MemcachedPool::reply_to`]): a named future, so the connection can
/// hold it without a box.
pub struct PoolReply {
    response: PoolResponse,
    shape: ReplyShape,
}

impl Future for PoolReply {
    type Output = Bytes;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Bytes> {
        let this = self.get_mut();
        let shape = this.shape;
        Pin::new(&mut this.response)
            .poll(cx)
            .map(|response| shape.apply(response.into_raw()))
    }
}

impl MemcachedPool {
    /// The bytes `request`'s client gets from the backend its key maps
    /// to, shaped by [`ReplyShape`] (sent at once, see
    /// [`response_to`](Self::response_to)).
    pub fn reply_to(self: Rc<Self>, request: &Request) -> PoolReply {
        PoolReply {
            shape: ReplyShape::of(request),
            response: self.response_to(request),
        }
    }

    /// The response to `request` from the backend its key maps to. The
    /// backend encodes the request into its output buffer at once (see
    /// [`Backend::send`]), so nothing is copied and the future holds only
    /// what the wait needs: the pool itself, which keeps the backend until
    /// the reply is in (a reload that drops it must not strand this
    /// request). It is a named type a handler can hold without a box.
    pub fn response_to(self: Rc<Self>, request: &Request) -> PoolResponse {
        // Only a quiet request is rewritten (and so copied) to be sent.
        let loud = request.without_noreply();
        let request = loud.as_ref().unwrap_or(request);
        let key = request.key().map_or(&b""[..], |k| &k[..]);
        let sending = self.send(self.distribution.pick(key), request);
        PoolResponse {
            pool: self,
            sending,
        }
    }

    /// Sends `request` to backend `index`, counted.
    #[inline]
    fn send(&self, index: usize, request: &Request) -> crate::backend::Sending {
        self.counters.requests.incr();
        self.backends[index].send(request)
    }

    /// A backend's reply or failure as the pool's response, counted.
    #[inline]
    fn settle(&self, reply: Result<Response, BackendError>) -> Response {
        match reply {
            Ok(response) => {
                count_reply(&self.counters, &response);
                response
            }
            Err(e) => {
                self.counters.errors.incr();
                Response::from_line(e.client_reply())
            }
        }
    }

    /// Counts a multi-key line's reply (its failure reads as misses).
    fn count_multi(&self, reply: &Result<Response, BackendError>) {
        match reply {
            Ok(response) => count_reply(&self.counters, response),
            Err(_) => self.counters.errors.incr(),
        }
    }

    /// A multi-key get as one request per backend: each backend gets its
    /// keys in one line (in the client's order), and the `VALUE` blocks
    /// (without `END`) come back in the client's key order. Answers as the
    /// per-key route would: a key whose backend failed reads as a miss.
    async fn get_by_backend(&self, request: &Request) -> Bytes {
        let Command::Get(get) = request.command() else {
            return Bytes::new();
        };
        // group_of[backend]: its index in `groups`, which hold the keys.
        let mut group_of = vec![usize::MAX; self.backends.len()];
        let mut groups: Vec<(usize, Vec<Bytes>)> = Vec::new();
        let mut key_groups = Vec::with_capacity(get.keys.len());
        for key in &get.keys {
            let backend = self.distribution.pick(key);
            if group_of[backend] == usize::MAX {
                group_of[backend] = groups.len();
                groups.push((backend, Vec::new()));
            }
            groups[group_of[backend]].1.push(key.clone());
            key_groups.push(group_of[backend]);
        }
        if let [(backend, _)] = &groups[..] {
            // One backend gets the window's own line: its reply, less its
            // END, is the answer.
            let reply = self.send(*backend, request).await;
            self.count_multi(&reply);
            if let Ok(reply) = &reply {
                if matches!(reply.code(), ResponseCode::Value | ResponseCode::End) {
                    let raw = reply.raw();
                    return raw.slice(..raw.len().saturating_sub(b"END\r\n".len()));
                }
            }
            // An error, perhaps after some values: those values stand.
            let blocks = value_blocks(reply);
            return value_blocks_of(blocks.iter().map(|b| &b.raw()[..]));
        }
        let replies = futures_util::future::join_all(
            groups
                .iter()
                .map(|(backend, keys)| self.send(*backend, &get_request(get, keys))),
        )
        .await;
        for reply in &replies {
            self.count_multi(reply);
        }
        let mut blocks: Vec<VecDeque<Response>> = replies.into_iter().map(value_blocks).collect();
        // A backend answers its keys in line order, skipping misses.
        let in_key_order: Vec<Response> = get
            .keys
            .iter()
            .zip(key_groups)
            .filter_map(|(key, group)| {
                let next = &mut blocks[group];
                let hit = next.front().and_then(|b| b.retrieval_key()) == Some(&key[..]);
                if hit {
                    next.pop_front()
                } else {
                    None
                }
            })
            .collect();
        value_blocks_of(in_key_order.iter().map(|b| &b.raw()[..]))
    }
}

impl Route for MemcachedPool {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        let key = request.key().map_or(&b""[..], |k| &k[..]);
        let config = self.backends[self.distribution.pick(key)].config();
        out.push(Step::backend(
            depth,
            format!("pool {}", self.def.name),
            format!("{}:{}", config.host, config.port),
        ));
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        Box::pin(self.response_to(&request))
    }

    fn call_borrowed(self: Rc<Self>, request: &Request) -> Sent {
        Sent::Pool(self.response_to(request))
    }

    // Sent from the borrow: the request is encoded into the backend's
    // output buffer at once, so moving it on (as `outbound` would, a copy
    // of the whole request) buys nothing.
    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        Box::pin(self.reply_to(&request))
    }

    fn serve_unboxed(self: Rc<Self>, request: Request) -> Reply {
        Reply::Pool(self.reply_to(&request))
    }

    fn joins_keys(&self) -> bool {
        true
    }

    fn multi_get(self: Rc<Self>, request: Request) -> Option<ReplyFuture> {
        Some(Box::pin(async move { self.get_by_backend(&request).await }))
    }
}

impl Pool for MemcachedPool {
    fn name(&self) -> &str {
        &self.def.name
    }

    fn backend_of(&self, request: &Request) -> Option<Arc<BackendConfig>> {
        let key = request.key().map_or(&b""[..], |k| &k[..]);
        Some(self.backends[self.distribution.pick(key)].config().clone())
    }

    fn broadcast(self: Rc<Self>, request: Request) -> ResponseFuture {
        let request = outbound(request);
        let sends: Vec<_> = (0..self.backends.len())
            .map(|index| self.send(index, &request))
            .collect();
        Box::pin(async move {
            let replies = futures_util::future::join_all(sends).await;
            let replies: Vec<Response> = replies.into_iter().map(|r| self.settle(r)).collect();
            super::handlers::first_error_or(replies, 0)
                .unwrap_or_else(|| Response::from_line("SERVER_ERROR pool has no backends"))
        })
    }
}

/// A store shared by every worker (a DynamoDB table), as a pool.
pub struct StorePool {
    def: Arc<PoolDef>,
    store: Arc<dyn SharedStore>,
    counters: Arc<PoolCounters>,
}

impl Route for StorePool {
    fn explain(&self, _request: &Request, depth: usize, out: &mut Vec<Step>) {
        let name = &self.def.name;
        out.push(Step::backend(
            depth,
            format!("store {name}"),
            format!("store {name}"),
        ));
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let request = outbound(request);
        self.counters.requests.incr();
        Box::pin(async move {
            let response = self.store.execute(&request).await;
            count_reply(&self.counters, &response);
            response
        })
    }
}

impl Pool for StorePool {
    fn name(&self) -> &str {
        &self.def.name
    }

    fn shared_store(&self) -> Option<&Arc<dyn SharedStore>> {
        Some(&self.store)
    }

    fn takes_flush_all(&self) -> bool {
        false
    }
}

/// A discovered pool on one worker: a [`MemcachedPool`] over the current
/// members, rebuilt when the discovery publishes new ones (connections to
/// members that stayed are kept: they come from [`WorkerBackends`]).
pub struct DiscoveredPool {
    def: Arc<PoolDef>,
    discovery: Arc<Discovery>,
    backends: Rc<WorkerBackends>,
    env: Rc<RouteEnv>,
    /// The generation it was built for, and the pool.
    members: RefCell<Option<(u64, Rc<MemcachedPool>)>>,
}

impl DiscoveredPool {
    /// The pool over the current members (one atomic load when they have
    /// not changed).
    fn members(&self) -> Rc<MemcachedPool> {
        let current = self.discovery.current();
        let mut members = self.members.borrow_mut();
        match &*members {
            Some((generation, pool)) if *generation == current.generation => pool.clone(),
            _ => {
                let pool = Rc::new(MemcachedPool {
                    def: self.def.clone(),
                    distribution: current.distribution.clone(),
                    backends: current
                        .backends
                        .iter()
                        .map(|c| self.backends.get(c, &self.env))
                        .collect(),
                    counters: self.def.counters(&self.env),
                });
                *members = Some((current.generation, pool.clone()));
                pool
            }
        }
    }
}

impl Route for DiscoveredPool {
    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        self.members().call(request)
    }

    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        self.members().serve(request)
    }

    fn serve_unboxed(self: Rc<Self>, request: Request) -> Reply {
        self.members().serve_unboxed(request)
    }

    fn joins_keys(&self) -> bool {
        true
    }

    fn multi_get(self: Rc<Self>, request: Request) -> Option<ReplyFuture> {
        self.members().multi_get(request)
    }

    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        self.members().explain(request, depth, out);
    }
}

impl Pool for DiscoveredPool {
    fn name(&self) -> &str {
        &self.def.name
    }

    fn backend_of(&self, request: &Request) -> Option<Arc<BackendConfig>> {
        self.members().backend_of(request)
    }

    fn broadcast(self: Rc<Self>, request: Request) -> ResponseFuture {
        self.members().broadcast(request)
    }
}

/// This worker's connections to memcached backends, one per distinct
/// backend configuration, kept across reloads: a configuration that keeps a
/// backend's settings keeps its connections.
#[derive(Default)]
pub struct WorkerBackends {
    by_config: RefCell<HashMap<String, Weak<Backend>>>,
}

impl WorkerBackends {
    /// This worker's connection to a backend with exactly these settings,
    /// reusing an existing one. A new one is listed for `stats backends`.
    pub fn get(&self, config: &Arc<BackendConfig>, env: &RouteEnv) -> Rc<Backend> {
        let key = format!("{config:?}");
        let mut map = self.by_config.borrow_mut();
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        // Values larger than the item size limit are never buffered.
        let config = if env.limits.max_item_size != config.max_value {
            Arc::new(BackendConfig {
                max_value: env.limits.max_item_size,
                ..(**config).clone()
            })
        } else {
            config.clone()
        };
        let backend = Backend::new(config);
        backend.register(&env.proxy_stats.backends);
        map.insert(key, Rc::downgrade(&backend));
        backend
    }

    /// Forgets backends no configuration uses any more.
    pub fn forget_unused(&self) {
        self.by_config
            .borrow_mut()
            .retain(|_, b| b.strong_count() > 0);
    }
}

/// The embedded cache as a pool: what `mcp.internal(r)` calls. It answers
/// at once, on the worker's own cache shard and counters.
pub struct EmbeddedPool {
    env: Rc<RouteEnv>,
    counters: Arc<PoolCounters>,
}

impl EmbeddedPool {
    pub fn new(env: Rc<RouteEnv>) -> EmbeddedPool {
        let counters = env.pool_stats.get("internal", &env.proxy_stats.pools);
        EmbeddedPool { env, counters }
    }

    fn response(&self, request: Request) -> Response {
        let request = outbound(request);
        let env = &self.env;
        self.counters.requests.incr();
        let response = env
            .embedded
            .respond(&request, env.server_stats.worker(env.worker));
        count_reply(&self.counters, &response);
        response
    }
}

impl Route for EmbeddedPool {
    fn explain(&self, _request: &Request, depth: usize, out: &mut Vec<Step>) {
        out.push(Step::backend(depth, "internal", "internal"));
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        Box::pin(std::future::ready(self.response(request)))
    }

    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        let shape = ReplyShape::of(&request);
        let reply = shape.apply(self.response(request).into_raw());
        Box::pin(std::future::ready(reply))
    }
}

impl Pool for EmbeddedPool {
    fn name(&self) -> &str {
        "internal"
    }
}

/// Any route in the place of a pool: what a route handler written in Lua
/// gets for a child that is a native handler (its `fgen:new_handle` takes
/// pools). Requests go to the route as they are; it is not a cache of its
/// own, so a client's `flush_all` does not count it.
pub struct RouteAsPool {
    pub name: String,
    pub route: Rc<dyn Route>,
}

impl Route for RouteAsPool {
    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        self.route.clone().call(request)
    }

    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        self.route.explain(request, depth, out);
    }
}

impl Pool for RouteAsPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn takes_flush_all(&self) -> bool {
        false
    }
}
