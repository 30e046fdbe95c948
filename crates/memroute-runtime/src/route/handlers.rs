//! Native route handlers: the composed routes operators configure
//! (failover, fan-out, zones, TTL rewriting...), as nodes of the route
//! tree. Their children are routes (pools, other handlers, Lua routes), so
//! they nest. They are built per worker from a configuration the config VM
//! checked (`crate::lua::routelib`), and run with no Lua per request.
//!
//! Names and semantics follow memcached's route library (routelib):
//! `route_direct`, `route_allsync`, `route_allasync`, `route_allfastest`,
//! `route_split`, `route_failover`, `route_zfailover`, `route_ttl`,
//! `route_null`, `route_random`, `route_ratelim`. Where routelib leaves a reply open (what
//! `route_null` and `route_allasync` answer), memroute answers as
//! mcrouter's NullRoute does: the command's nominal miss.
//!
//! mcrouter's handles without a routelib counterpart live here too, for
//! its JSON configurations (`crate::mcrouter`): [`PrefixSelector`],
//! [`HashSelect`], [`RoutingPrefix`] and [`KeyShadow`].
//!
//! Requests a handler sends but does not wait for (the rest of a fan-out
//! once it has its answer, `route_split`'s second child) keep running as
//! tasks of the worker, so a write still reaches every child.

use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use memroute_proto::{Command, Limits, MetaOp, Reply, Request, Response, Status, StoreOp};

use super::explain::{with_children, Step};
use super::ratelim::{GlobalTokenBucket, TokenBucket};
use super::{ReplyFuture, ReplyShape, ResponseFuture, Route, Sent};
use crate::stats::ProxyStats;

/// A counter bumped per retry (routelib's `stats = true`).
#[derive(Clone)]
pub struct RetryStat {
    pub stats: Arc<ProxyStats>,
    pub id: i64,
}

impl RetryStat {
    fn bump(stat: &Option<RetryStat>) {
        if let Some(s) = stat {
            s.stats.add(s.id, 1);
        }
    }
}

/// Runs `future` as a task of this worker, its reply dropped.
fn in_background(future: impl std::future::Future<Output = Response> + 'static) {
    tokio::task::spawn_local(future);
}

fn ready(response: Response) -> ResponseFuture {
    Box::pin(std::future::ready(response))
}

/// `request` sent down every one of `children` at once, answers as they
/// come.
fn call_all(children: &[Rc<dyn Route>], request: &Request) -> FuturesUnordered<Sent> {
    children
        .iter()
        .map(|c| c.clone().call_borrowed(request))
        .collect()
}

/// Lets the calls still `pending` finish as worker tasks (a fan-out that
/// has its answer still owes every child its request).
fn finish_in_background(mut pending: FuturesUnordered<Sent>) {
    if !pending.is_empty() {
        in_background(async move {
            while pending.next().await.is_some() {}
            Response::miss()
        });
    }
}

/// Of replies that all came in, the first error, else the one at
/// `otherwise` (`None` for none at all).
pub fn first_error_or(replies: Vec<Response>, otherwise: usize) -> Option<Response> {
    let at = replies.iter().position(|r| !r.is_ok()).unwrap_or(otherwise);
    replies.into_iter().nth(at)
}

/// `route_direct{ child }`: the child's reply.
pub struct Direct {
    pub child: Rc<dyn Route>,
}

impl Route for Direct {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("direct", [&self.child], request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        self.child.clone().call(request)
    }

    fn call_borrowed(self: Rc<Self>, request: &Request) -> Sent {
        self.child.clone().call_borrowed(request)
    }

    // Straight through to the child, so a pool under it keeps its
    // zero-copy reply and its joined multi-key gets.
    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        self.child.clone().serve(request)
    }

    fn serve_unboxed(self: Rc<Self>, request: Request) -> super::Reply {
        self.child.clone().serve_unboxed(request)
    }

    fn joins_keys(&self) -> bool {
        self.child.joins_keys()
    }

    fn multi_get(self: Rc<Self>, request: Request) -> Option<ReplyFuture> {
        self.child.clone().multi_get(request)
    }
}

/// `route_allsync{ children }`: every child at once; once all answered,
/// the first error (in child order), else the last child's reply.
pub struct AllSync {
    pub children: Vec<Rc<dyn Route>>,
}

impl Route for AllSync {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("allsync", &self.children, request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let calls: Vec<Sent> = self
            .children
            .iter()
            .map(|c| c.clone().call_borrowed(&request))
            .collect();
        Box::pin(async move {
            let replies = futures_util::future::join_all(calls).await;
            let last = replies.len().saturating_sub(1);
            first_error_or(replies, last)
                .unwrap_or_else(|| Response::from_line("SERVER_ERROR no children"))
        })
    }
}

/// `route_allfastest{ children }`: every child at once; the first reply
/// that is not an error, as soon as it arrives; if every child fails, the
/// last error. The others finish in the background.
pub struct AllFastest {
    pub children: Vec<Rc<dyn Route>>,
}

impl Route for AllFastest {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("allfastest", &self.children, request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let mut pending = call_all(&self.children, &request);
        Box::pin(async move {
            let mut last = None;
            while let Some(reply) = pending.next().await {
                if reply.is_ok() {
                    finish_in_background(pending);
                    return reply;
                }
                last = Some(reply);
            }
            last.unwrap_or_else(|| Response::from_line("SERVER_ERROR no children"))
        })
    }
}

/// `route_allasync{ children }`: every child in the background; the
/// client gets the command's nominal miss at once.
pub struct AllAsync {
    pub children: Vec<Rc<dyn Route>>,
}

impl Route for AllAsync {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("allasync", &self.children, request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        for child in &self.children {
            in_background(child.clone().call_borrowed(&request));
        }
        ready(nominal_miss(&request))
    }
}

/// `route_split{ child_a, child_b }`: both children; `child_a`'s reply,
/// `child_b`'s dropped.
pub struct Split {
    pub child_a: Rc<dyn Route>,
    pub child_b: Rc<dyn Route>,
}

impl Route for Split {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("split", [&self.child_a, &self.child_b], request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        in_background(self.child_b.clone().call_borrowed(&request));
        self.child_a.clone().call(request)
    }
}

/// `route_failover{ children, failover_count, shuffle, miss }`: the
/// children in order, at most `limit` of them, until one answers a hit or
/// (unless `miss`) any reply that is not an error. With `miss`, a miss
/// counts as a failure, and is what the client gets if no child hits.
pub struct Failover {
    pub children: Vec<Rc<dyn Route>>,
    pub limit: usize,
    pub miss: bool,
    pub retries: Option<RetryStat>,
}

impl Route for Failover {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        let tried = self.children.iter().take(self.limit);
        with_children("failover", tried, request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        Box::pin(FailoverCall::start(self, request))
    }

    /// One box for the client's reply, holding the first child's call
    /// unboxed when it is a memcached pool.
    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        let shape = ReplyShape::of(&request);
        Box::pin(
            FailoverCall::start(self, request)
                .map(move |response| shape.apply(response.into_raw())),
        )
    }
}

/// A failover on its way: the child being waited for, and the request
/// kept (owned, once) for the next. Written out rather than as an `async`
/// block so it stays small: it is moved into its box on every request, and
/// a generator holding the request, the child's call and two replies
/// across its await cost a large copy per request (run 19's addenda).
struct FailoverCall {
    route: Rc<Failover>,
    request: Request,
    /// The child whose reply `pending` is, and how many are tried.
    at: usize,
    tried: usize,
    pending: Option<Sent>,
    /// The reply to give if no child hits: a miss (with `miss`) wins over
    /// an error.
    kept: Option<Response>,
}

impl FailoverCall {
    fn start(route: Rc<Failover>, request: Request) -> FailoverCall {
        let tried = route.children.len().min(route.limit);
        let pending = route
            .children
            .first()
            .filter(|_| tried > 0)
            .map(|child| child.clone().call_borrowed(&request));
        FailoverCall {
            route,
            request,
            at: 0,
            tried,
            pending,
            kept: None,
        }
    }
}

impl std::future::Future for FailoverCall {
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let this = self.get_mut();
        loop {
            let Some(pending) = this.pending.as_mut() else {
                let answer = this.kept.take();
                return Poll::Ready(
                    answer.unwrap_or_else(|| Response::from_line("SERVER_ERROR no children")),
                );
            };
            let reply = match Pin::new(pending).poll(cx) {
                Poll::Ready(reply) => reply,
                Poll::Pending => return Poll::Pending,
            };
            let route = &this.route;
            if reply.is_hit() || (reply.is_ok() && !route.miss) {
                this.pending = None;
                return Poll::Ready(reply);
            }
            // What the client gets if no child hits: the last miss (only
            // reached with `miss`), else the last error.
            if reply.is_ok() || !this.kept.as_ref().is_some_and(Response::is_ok) {
                this.kept = Some(reply);
            }
            this.at += 1;
            this.pending = if this.at < this.tried {
                RetryStat::bump(&route.retries);
                let child = route.children[this.at].clone();
                Some(child.call_borrowed(&this.request))
            } else {
                None
            };
        }
    }
}

/// `route_zfailover{ children = { zone = child... }, local_zone, miss }`:
/// the local zone's child first; if it does not hit (or, without `miss`,
/// answers an error), every other zone at once, and the first hit, else a
/// reply that is not an error, else any reply.
pub struct ZoneFailover {
    pub near: Rc<dyn Route>,
    pub far: Vec<Rc<dyn Route>>,
    pub miss: bool,
    pub retries: Option<RetryStat>,
}

impl Route for ZoneFailover {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        let zones = std::iter::once(&self.near).chain(&self.far);
        with_children("zfailover", zones, request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        Box::pin(async move {
            let near = self.near.clone().call_borrowed(&request).await;
            if near.is_hit() || (!self.miss && near.is_ok()) || self.far.is_empty() {
                return near;
            }
            RetryStat::bump(&self.retries);
            let mut pending = call_all(&self.far, &request);
            let (mut ok, mut any) = (None, None);
            while let Some(reply) = pending.next().await {
                if reply.is_hit() {
                    finish_in_background(pending);
                    return reply;
                }
                if reply.is_ok() {
                    ok.get_or_insert(reply);
                } else {
                    any.get_or_insert(reply);
                }
            }
            ok.or(any).unwrap_or(near)
        })
    }
}

/// `route_ttl{ child, ttl }`: stores (`set`, `add`, `cas`, `ms`) go to the
/// child with their TTL replaced by `ttl`; other commands are refused.
pub struct Ttl {
    pub child: Rc<dyn Route>,
    pub ttl: i64,
    pub limits: Limits,
}

impl Route for Ttl {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("ttl", [&self.child], request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        match with_ttl(&request, self.ttl, &self.limits) {
            Some(rewritten) => self.child.clone().call(rewritten),
            None => ready(Response::from_line(
                "SERVER_ERROR invalid command for route_ttl",
            )),
        }
    }
}

/// `request` with its TTL set to `ttl`: the exptime token of `set`,
/// `add` and `cas`, the `T` flag of `ms`. `None` for other commands.
pub fn with_ttl(request: &Request, ttl: i64, limits: &Limits) -> Option<Request> {
    let line = request.raw_line();
    let mut tokens: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let ttl_text = ttl.to_string();
    let t_flag = format!("T{ttl}");
    match request.command() {
        Command::Store(s) if matches!(s.op, StoreOp::Set | StoreOp::Add | StoreOp::Cas) => {
            *tokens.get_mut(3)? = ttl_text.as_bytes();
        }
        Command::Meta(m) if m.op == MetaOp::Set => {
            // Tokens after `ms <key> <datalen>` are flags.
            let flags_from = 3.min(tokens.len());
            let mut kept: Vec<&[u8]> = tokens[..flags_from].to_vec();
            kept.extend(
                tokens[flags_from..]
                    .iter()
                    .filter(|t| t.first() != Some(&b'T')),
            );
            kept.push(t_flag.as_bytes());
            tokens = kept;
        }
        _ => return None,
    }
    let new_line = tokens.join(&b' ');
    Request::parse(&new_line, request.value(), limits).ok()
}

/// Sends a request to every backend of every one of its pools and answers
/// the first error, else `OK`: what a client's `flush_all` does in routed
/// mode when no route is attached for it (the embedded cache is one of the
/// pools).
pub struct FlushAll {
    pub pools: Vec<Rc<dyn super::Pool>>,
}

impl Route for FlushAll {
    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let sends: Vec<ResponseFuture> = self
            .pools
            .iter()
            .map(|p| p.clone().broadcast(request.clone()))
            .collect();
        Box::pin(async move {
            let replies = futures_util::future::join_all(sends).await;
            first_error_or(replies, 0).unwrap_or_else(|| Response::from_line("OK"))
        })
    }
}

/// `route_error{ message }`: answers every request with
/// `SERVER_ERROR <message>`, sending nothing (to take a prefix out of
/// service loudly).
pub struct ErrorRoute {
    pub line: String,
}

impl ErrorRoute {
    pub fn new(message: &str) -> ErrorRoute {
        ErrorRoute {
            line: format!("SERVER_ERROR {message}"),
        }
    }
}

impl Route for ErrorRoute {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        let _ = request;
        out.push(Step::node(depth, "error"));
    }

    fn call(self: Rc<Self>, _request: Request) -> ResponseFuture {
        ready(Response::from_line(&self.line))
    }
}

/// `route_allmajority{ children }`: every child at once; the first reply
/// of the kind (its reply code) a majority of children answer, as soon as
/// the majority is there; the rest finish in the background. With no
/// majority once all answered: an error if any, else the most common kind.
pub struct AllMajority {
    pub children: Vec<Rc<dyn Route>>,
}

impl Route for AllMajority {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("allmajority", &self.children, request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let mut pending = call_all(&self.children, &request);
        let majority = self.children.len() / 2 + 1;
        Box::pin(async move {
            // (code, first reply of that code, count), in arrival order.
            let mut kinds: Vec<(memroute_proto::ResponseCode, Response, usize)> = Vec::new();
            while let Some(reply) = pending.next().await {
                let code = reply.code();
                let count = match kinds.iter_mut().find(|(c, _, _)| *c == code) {
                    Some(kind) => {
                        kind.2 += 1;
                        kind.2
                    }
                    None => {
                        kinds.push((code, reply, 1));
                        1
                    }
                };
                if count >= majority {
                    finish_in_background(pending);
                    let at = kinds.iter().position(|(c, _, _)| *c == code).unwrap_or(0);
                    return kinds.swap_remove(at).1;
                }
            }
            if let Some(at) = kinds.iter().position(|(_, r, _)| !r.is_ok()) {
                return kinds.swap_remove(at).1;
            }
            let most = (0..kinds.len()).max_by_key(|&i| (kinds[i].2, usize::MAX - i));
            match most {
                Some(at) => kinds.swap_remove(at).1,
                None => Response::from_line("SERVER_ERROR no children"),
            }
        })
    }
}

/// `route_shadow{ child, child_shadow, rate }`: the child's reply; a
/// `rate` share of requests (0 to 1) is also copied to the shadow
/// children, whose replies are dropped: to try a new cluster with real
/// traffic.
pub struct Shadow {
    pub child: Rc<dyn Route>,
    pub shadows: Vec<Rc<dyn Route>>,
    /// Requests copied per 2^32.
    pub threshold: u64,
    pub sampler: Sampler,
}

impl Route for Shadow {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        let all = std::iter::once(&self.child).chain(&self.shadows);
        with_children("shadow", all, request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        if (self.sampler.next() >> 32) < self.threshold {
            for shadow in &self.shadows {
                in_background(shadow.clone().call_borrowed(&request));
            }
        }
        self.child.clone().call(request)
    }
}

/// mcrouter's ShadowRoute with a `key_fraction_range`: the child's reply;
/// a request is also copied to the shadows when its routing key (the part
/// before `|#|`) hashes into `start..end`, so the same keys are always
/// shadowed. The hash is SpookyHash V2 (32 bits, seed 0) modulo 2^32-2,
/// as mcrouter computes it; the bounds are fractions scaled to 2^32-1.
pub struct KeyShadow {
    pub child: Rc<dyn Route>,
    pub shadows: Vec<Rc<dyn Route>>,
    pub start: u32,
    pub end: u32,
}

impl KeyShadow {
    /// Whether `key` falls in the shadowed range.
    pub fn shadows_key(&self, key: &[u8]) -> bool {
        let routing = memchr::memmem::find(key, b"|#|").map_or(key, |at| &key[..at]);
        let hash = memroute_hash::spooky_v2_hash32(routing, 0) % (u32::MAX - 1);
        hash >= self.start && hash < self.end
    }
}

impl Route for KeyShadow {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        let shadowed = request.key().is_some_and(|k| self.shadows_key(k));
        let shadows = if shadowed { &self.shadows[..] } else { &[] };
        let all = std::iter::once(&self.child).chain(shadows);
        with_children("key shadow", all, request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        if request.key().is_some_and(|k| self.shadows_key(k)) {
            for shadow in &self.shadows {
                in_background(shadow.clone().call_borrowed(&request));
            }
        }
        self.child.clone().call(request)
    }
}

/// A cheap per-route random sequence (xorshift64): the spread is all
/// sampling and random routes need.
pub struct Sampler(std::cell::Cell<u64>);

impl Sampler {
    pub fn new(seed: u64) -> Sampler {
        Sampler(std::cell::Cell::new(seed | 1))
    }

    pub fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.set(x);
        x
    }
}

/// The single key of a one-key retrieval (`get`, `gets`, `gat`, `gats`
/// with one key, `mg`), which warm-up and L1/L2 routes fill from their
/// second child; `None` for anything else.
fn retrieval_key(request: &Request) -> Option<&bytes::Bytes> {
    match request.command() {
        Command::Get(g) if g.keys.len() == 1 => g.keys.first(),
        Command::Meta(m) if m.op == MetaOp::Get => Some(&m.key),
        _ => None,
    }
}

/// Asks `route` for `key`'s value, flags and remaining TTL (a meta get),
/// whatever the client's own request looked like.
async fn fetch_item(route: &Rc<dyn Route>, key: &[u8], limits: &Limits) -> Option<Reply> {
    let mut line = b"mg ".to_vec();
    line.extend_from_slice(key);
    line.extend_from_slice(b" v f t");
    let probe = Request::parse(&line, b"", limits).ok()?;
    let reply = Reply::parse(route.clone().call(probe).await.raw());
    (reply.status == Status::Hit).then_some(reply)
}

/// Stores `item` under `key` on `route` in the background, with `mode`
/// (`S` set, `E` add) and `ttl` seconds (0: no expiry).
fn store_item(
    route: &Rc<dyn Route>,
    key: &[u8],
    item: &Reply,
    ttl: i64,
    mode: u8,
    limits: &Limits,
) {
    let line = format!(
        "ms {} {} F{} T{ttl} M{}",
        String::from_utf8_lossy(key),
        item.value.len(),
        item.flags.unwrap_or(0),
        mode as char
    );
    if let Ok(store) = Request::parse(line.as_bytes(), &item.value, limits) {
        in_background(route.clone().call(store));
    }
}

/// The client's reply to `request` from an item read elsewhere, showing
/// `ttl` as its remaining TTL (meta `t`; -1: none).
fn reply_with(item: &Reply, ttl: i64, request: &Request) -> Response {
    Reply::hit(item.value.clone(), item.flags.unwrap_or(0))
        .with_ttl(ttl)
        .to_response(request)
}

/// `route_warmup{ child_cold, child_warm, ttl }`: fills a new (cold)
/// cluster from the one it replaces (warm). A one-key retrieval reads
/// the cold child; on a miss it reads the warm one and, on a hit there,
/// adds the item to the cold child with the warm item's remaining TTL
/// (capped at `ttl` when that is not 0). Every other command goes to the
/// cold child.
pub struct Warmup {
    pub cold: Rc<dyn Route>,
    pub warm: Rc<dyn Route>,
    pub max_ttl: i64,
    pub limits: Limits,
}

impl Route for Warmup {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("warmup", [&self.cold, &self.warm], request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let Some(key) = retrieval_key(&request).cloned() else {
            return self.cold.clone().call(request);
        };
        Box::pin(async move {
            let cold = self.cold.clone().call_borrowed(&request).await;
            if cold.is_hit() || !cold.is_ok() {
                return cold;
            }
            let Some(item) = fetch_item(&self.warm, &key, &self.limits).await else {
                return cold;
            };
            let mut ttl = item.ttl.filter(|t| *t > 0).unwrap_or(0);
            if self.max_ttl > 0 && (ttl == 0 || ttl > self.max_ttl) {
                ttl = self.max_ttl;
            }
            store_item(&self.cold, &key, &item, ttl, b'E', &self.limits);
            // The TTL the cold copy now has (the warm one's, or the cap).
            reply_with(&item, if ttl > 0 { ttl } else { -1 }, &request)
        })
    }
}

/// `route_l1l2{ child_l1, child_l2, ttl, negative_ttl }`: a near cache
/// (L1: the embedded cache or a near pool) in front of a far pool (L2). A
/// one-key retrieval reads L1; on a miss it reads L2 and, on a hit there,
/// sets the item in L1 for at most `ttl` seconds. Every other command goes
/// to L2, after the key is deleted from L1 (so L1 never serves a value L2
/// no longer has, beyond its short TTL for writes made elsewhere).
///
/// With `negative_ttl` (seconds, 0: off) a miss on L2 is remembered in L1
/// for that long, as an empty item with [`NEGATIVE_FLAG`] (mcrouter's
/// negative-cache flag): reads of a key that is not there stop reaching
/// L2. A write or delete through the route drops it with the rest of L1.
pub struct L1L2 {
    pub l1: Rc<dyn Route>,
    pub l2: Rc<dyn Route>,
    pub ttl: i64,
    pub negative_ttl: i64,
    pub limits: Limits,
}

/// The client flags of a negative entry in L1 (mcrouter's
/// `MC_MSG_FLAG_NEGATIVE_CACHE`); its value is empty.
pub const NEGATIVE_FLAG: u32 = 0x10000;

fn is_negative(item: &Reply) -> bool {
    item.flags.is_some_and(|f| f & NEGATIVE_FLAG != 0) && item.value.is_empty()
}

impl L1L2 {
    /// L1's answer when negative entries may be there: a hit to give the
    /// client (`Ok(Some)`), a negative entry (`Err`: the client's miss),
    /// or nothing (`Ok(None)`: ask L2). A text retrieval's reply shows the
    /// flags; an `mg` that did not ask for flags and value is asked again
    /// as a meta get that does.
    async fn near_with_negatives(
        &self,
        request: &Request,
        key: &[u8],
    ) -> Result<Option<Response>, Response> {
        let shows_flags = match request.command() {
            Command::Meta(m) => m.flags.has(b'f') && m.flags.has(b'v'),
            _ => true,
        };
        if shows_flags {
            let near = self.l1.clone().call_borrowed(request).await;
            if !near.is_hit() {
                return Ok(None);
            }
            if is_negative(&Reply::parse(near.raw())) {
                return Err(nominal_miss(request));
            }
            return Ok(Some(near));
        }
        match fetch_item(&self.l1, key, &self.limits).await {
            Some(item) if is_negative(&item) => Err(nominal_miss(request)),
            Some(item) => Ok(Some(reply_with(&item, item.ttl.unwrap_or(-1), request))),
            None => Ok(None),
        }
    }
}

impl Route for L1L2 {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("l1l2", [&self.l1, &self.l2], request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        if let Some(key) = retrieval_key(&request).cloned() {
            return Box::pin(async move {
                if self.negative_ttl > 0 {
                    match self.near_with_negatives(&request, &key).await {
                        Ok(Some(hit)) => return hit,
                        Err(miss) => return miss,
                        Ok(None) => {}
                    }
                } else {
                    let near = self.l1.clone().call_borrowed(&request).await;
                    if near.is_hit() {
                        return near;
                    }
                }
                let Some(item) = fetch_item(&self.l2, &key, &self.limits).await else {
                    // A miss (or an error) on L2 is the answer.
                    let far = self.l2.clone().call(request).await;
                    if self.negative_ttl > 0 && far.is_ok() && !far.is_hit() {
                        let negative = Reply::hit(bytes::Bytes::new(), NEGATIVE_FLAG);
                        store_item(
                            &self.l1,
                            &key,
                            &negative,
                            self.negative_ttl,
                            b'S',
                            &self.limits,
                        );
                    }
                    return far;
                };
                let ttl = match item.ttl.filter(|t| *t > 0) {
                    Some(t) => t.min(self.ttl),
                    None => self.ttl,
                };
                store_item(&self.l1, &key, &item, ttl, b'S', &self.limits);
                reply_with(&item, item.ttl.unwrap_or(-1), &request)
            });
        }
        let key = request.key().cloned();
        Box::pin(async move {
            if let Some(key) = key {
                let mut line = b"md ".to_vec();
                line.extend_from_slice(&key);
                if let Ok(delete) = Request::parse(&line, b"", &self.limits) {
                    self.l1.clone().call(delete).await;
                }
            }
            self.l2.clone().call(request).await
        })
    }
}

/// `route_migrate{ child_from, child_to, start, stop }`: moves keys from
/// one cluster to another over a time window (Unix seconds). Before
/// `start` everything goes to `from`, from `stop` on everything to `to`.
/// In between: writes go to `to`, deletes to both (so no stale copy stays
/// behind), and a retrieval reads `to` and, on a miss, `from` (counted in
/// `fallbacks` once per request).
pub struct Migrate {
    pub from: Rc<dyn Route>,
    pub to: Rc<dyn Route>,
    pub start: i64,
    pub stop: i64,
    pub fallbacks: Option<RetryStat>,
}

impl Route for Migrate {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("migrate", [&self.to, &self.from], request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let now = crate::stats::unix_now() as i64;
        if now < self.start {
            return self.from.clone().call(request);
        }
        if now >= self.stop {
            return self.to.clone().call(request);
        }
        let is_delete = matches!(request.command(), Command::Delete { .. })
            || matches!(request.command(), Command::Meta(m) if m.op == MetaOp::Delete);
        if is_delete {
            let both = Rc::new(AllSync {
                children: vec![self.to.clone(), self.from.clone()],
            });
            return both.call(request);
        }
        if retrieval_key(&request).is_none() {
            return self.to.clone().call(request);
        }
        Box::pin(async move {
            let new = self.to.clone().call_borrowed(&request).await;
            if new.is_hit() || !new.is_ok() {
                return new;
            }
            RetryStat::bump(&self.fallbacks);
            self.from.clone().call(request).await
        })
    }
}

/// `route_null`: answers every request with its command's nominal miss,
/// sending nothing.
pub struct Null;

impl Route for Null {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        let _ = request;
        out.push(Step::node(depth, "null"));
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        ready(nominal_miss(&request))
    }
}

/// The bucket a `route_ratelim` draws from.
pub enum Limiter {
    /// This worker's own bucket.
    Local(TokenBucket),
    /// One bucket shared by every worker (`global = true`).
    Global(Arc<GlobalTokenBucket>),
}

impl Limiter {
    fn take(&self, tokens: i64) -> bool {
        match self {
            Limiter::Local(bucket) => bucket.take(tokens),
            Limiter::Global(bucket) => bucket.take(tokens),
        }
    }
}

/// `route_ratelim{ child, limit, fillrate, tickrate, global,
/// fail_until_limit }`: each request takes one token; with one, the
/// request goes to the child, without, it gets `route_null`'s answer (the
/// command's nominal miss) and nothing is sent. `fail_until_limit` turns
/// this around: requests get the null answer while tokens last and reach
/// the child only once the limit is hit (routelib's way to send overflow
/// elsewhere, e.g. as the first child of a failover).
pub struct RateLimit {
    pub child: Rc<dyn Route>,
    pub limiter: Limiter,
    pub fail_until_limit: bool,
}

impl RateLimit {
    /// Whether this request goes to the child (a token is taken either way).
    fn admits(&self) -> bool {
        self.limiter.take(1) != self.fail_until_limit
    }
}

impl Route for RateLimit {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("ratelim", [&self.child], request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        if self.admits() {
            self.child.clone().call(request)
        } else {
            ready(nominal_miss(&request))
        }
    }

    fn serve(self: Rc<Self>, request: Request) -> ReplyFuture {
        // The admitted path is the child's own serve: one box, as if the
        // child were attached directly.
        if self.admits() {
            return self.child.clone().serve(request);
        }
        let shape = ReplyShape::of(&request);
        let reply = shape.apply(nominal_miss(&request).into_raw());
        Box::pin(std::future::ready(reply))
    }
}

/// `route_random{ children }`: one child, picked at random per request.
pub struct Random {
    pub children: Vec<Rc<dyn Route>>,
    sampler: Sampler,
}

impl Random {
    pub fn new(children: Vec<Rc<dyn Route>>, seed: u64) -> Random {
        Random {
            children,
            sampler: Sampler::new(seed),
        }
    }
}

impl Route for Random {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        with_children("random", &self.children, request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        if self.children.is_empty() {
            return ready(Response::from_line("SERVER_ERROR no children"));
        }
        let i = (self.sampler.next() % self.children.len() as u64) as usize;
        self.children[i].clone().call(request)
    }
}

/// mcrouter's PrefixSelectorRoute: the route of the longest key prefix
/// among `policies` (sorted longest first), else `wildcard`; with neither,
/// `SERVER_ERROR no route`.
pub struct PrefixSelector {
    pub policies: Vec<(Vec<u8>, Rc<dyn Route>)>,
    pub wildcard: Option<Rc<dyn Route>>,
}

impl PrefixSelector {
    fn pick(&self, request: &Request) -> Option<&Rc<dyn Route>> {
        let key = request.key().map_or(&b""[..], |k| &k[..]);
        self.policies
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix))
            .map(|(_, route)| route)
            .or(self.wildcard.as_ref())
    }
}

impl Route for PrefixSelector {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        match self.pick(request) {
            Some(route) => with_children("prefix selector", [route], request, depth, out),
            None => out.push(Step::node(depth, "prefix selector: no route")),
        }
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        match self.pick(&request) {
            Some(route) => route.clone().call(request),
            None => ready(Response::from_line(super::router::NO_ROUTE)),
        }
    }
}

/// mcrouter's HashRoute: the child a distribution picks for the key (with
/// `salt` appended before hashing, as mcrouter salts), so a pool hashed
/// over routes rather than servers.
pub struct HashSelect {
    pub children: Vec<Rc<dyn Route>>,
    pub distribution: Arc<memroute_hash::Distribution>,
    pub salt: Vec<u8>,
}

impl HashSelect {
    fn pick(&self, request: &Request) -> Option<&Rc<dyn Route>> {
        let key = request.key().map_or(&b""[..], |k| &k[..]);
        let i = if self.salt.is_empty() {
            self.distribution.pick(key)
        } else {
            // The filter (`|#|`) applies to the key before the salt.
            let mut salted = self.distribution.filter().apply(key).to_vec();
            salted.extend_from_slice(&self.salt);
            self.distribution.pick_filtered(&salted)
        };
        self.children.get(i)
    }
}

impl Route for HashSelect {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        let name = format!("hash {}", self.distribution.kind());
        with_children(&name, self.pick(request), request, depth, out);
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        match self.pick(&request) {
            Some(child) => child.clone().call(request),
            None => ready(Response::from_line("SERVER_ERROR no children")),
        }
    }
}

/// mcrouter's routing prefixes: a key that starts with `/region/cluster/`
/// goes, with that prefix stripped, to the route whose alias it is
/// (`SERVER_ERROR no route` when none is); any other key goes to
/// `default` as it is. A `get` reply names the key the client sent.
pub struct RoutingPrefix {
    pub routes: std::collections::HashMap<Vec<u8>, Rc<dyn Route>>,
    pub default: Rc<dyn Route>,
    pub limits: Limits,
}

impl RoutingPrefix {
    /// The `/region/cluster/` a key starts with, if it has one.
    pub fn prefix_of(key: &[u8]) -> Option<&[u8]> {
        let rest = key.strip_prefix(b"/")?;
        let first = memchr::memchr(b'/', rest)?;
        let second = memchr::memchr(b'/', &rest[first + 1..])?;
        Some(&key[..first + second + 3])
    }
}

impl Route for RoutingPrefix {
    fn explain(&self, request: &Request, depth: usize, out: &mut Vec<Step>) {
        let key = request.key().map_or(&b""[..], |k| &k[..]);
        let Some(prefix) = Self::prefix_of(key) else {
            return with_children(
                "routing prefix: default",
                [&self.default],
                request,
                depth,
                out,
            );
        };
        let name = format!("routing prefix {}", String::from_utf8_lossy(prefix));
        match (
            self.routes.get(prefix),
            with_key(request, &key[prefix.len()..], &self.limits),
        ) {
            (Some(route), Some(inner)) => with_children(&name, [route], &inner, depth, out),
            _ => out.push(Step::node(depth, format!("{name}: no route"))),
        }
    }

    fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
        let Some(key) = request.key().cloned() else {
            return self.default.clone().call(request);
        };
        let Some(prefix) = Self::prefix_of(&key) else {
            return self.default.clone().call(request);
        };
        let Some(route) = self.routes.get(prefix).cloned() else {
            return ready(Response::from_line(super::router::NO_ROUTE));
        };
        let stripped = key.slice(prefix.len()..);
        if stripped.is_empty() {
            return ready(Response::from_line(
                "CLIENT_ERROR key is only a routing prefix",
            ));
        }
        let Some(inner) = with_key(&request, &stripped, &self.limits) else {
            return ready(Response::from_line(
                "SERVER_ERROR cannot strip the routing prefix",
            ));
        };
        let call = route.call(inner);
        Box::pin(async move { renamed_value(call.await, &stripped, &key) })
    }
}

/// `request` with its (single) key replaced by `key`.
pub fn with_key(request: &Request, key: &[u8], limits: &Limits) -> Option<Request> {
    let old = request.key()?;
    let line = request.raw_line();
    let mut tokens: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    // The key is never the command (token 0), which may spell the same.
    let at = 1 + tokens[1..].iter().position(|t| *t == &old[..])?;
    tokens[at] = key;
    Request::parse(&tokens.join(&b' '), request.value(), limits).ok()
}

/// A reply for key `from` made to name `to`, the key the client asked for:
/// the key of a `VALUE` line, or a meta reply's `k` flag (a base64 key is
/// left as it is). Any other reply as it is.
pub(super) fn renamed_value(reply: Response, from: &[u8], to: &[u8]) -> Response {
    let raw = reply.raw();
    let line = reply.line();
    let mut k_from = Vec::with_capacity(from.len() + 1);
    k_from.push(b'k');
    k_from.extend_from_slice(from);
    let is_meta = line.len() >= 2
        && line[..2].iter().all(u8::is_ascii_uppercase)
        && line.get(2).is_none_or(|b| *b == b' ');
    // Where the old key's bytes start in the line.
    let mut at = None;
    let mut pos = 0;
    for (i, token) in line.split(|&b| b == b' ').enumerate() {
        if i == 1 && line.starts_with(b"VALUE ") && token == from {
            at = Some(pos);
            break;
        }
        if i > 0 && is_meta && token == &k_from[..] {
            at = Some(pos + 1);
            break;
        }
        pos += token.len() + 1;
    }
    let Some(at) = at else {
        return reply;
    };
    let mut out = bytes::BytesMut::with_capacity(raw.len() + to.len());
    out.extend_from_slice(&raw[..at]);
    out.extend_from_slice(to);
    out.extend_from_slice(&raw[at + from.len()..]);
    let grow = to.len() as isize - from.len() as isize;
    let shift = |n: usize| (n as isize + grow) as usize;
    let line_len = shift(line.len());
    let value = reply.value().map(|v| {
        let start = v.as_ptr() as usize - raw.as_ptr() as usize;
        shift(start)..shift(start + v.len())
    });
    Response::encoded(out.freeze(), reply.code(), line_len, value, reply.is_hit())
}

/// What a request gets when nothing answers it and that is no error (as
/// mcrouter's NullRoute answers): a miss for retrievals, `NOT_STORED` /
/// `NS` for stores, `NOT_FOUND` / `NF` for deletes, arithmetic and touch.
pub fn nominal_miss(request: &Request) -> Response {
    let line = match request.command() {
        Command::Get(_) => "END",
        Command::Store(_) => "NOT_STORED",
        Command::Delete { .. } | Command::Arith(_) | Command::Touch { .. } => "NOT_FOUND",
        Command::Meta(m) => match m.op {
            MetaOp::Get => "EN",
            MetaOp::Set => "NS",
            MetaOp::Delete | MetaOp::Arith => "NF",
            MetaOp::Debug => "EN",
        },
        _ => "SERVER_ERROR no route",
    };
    Response::from_line(line)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A child that answers a fixed line and records what it was sent.
    struct Scripted {
        reply: &'static str,
        seen: RefCell<Vec<String>>,
    }

    impl Scripted {
        fn new(reply: &'static str) -> Rc<Scripted> {
            Rc::new(Scripted {
                reply,
                seen: RefCell::new(Vec::new()),
            })
        }
        fn calls(&self) -> usize {
            self.seen.borrow().len()
        }
    }

    impl Route for Scripted {
        fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
            let line = String::from_utf8_lossy(request.raw_line()).into_owned();
            self.seen.borrow_mut().push(line);
            ready(Response::from_line(self.reply))
        }
    }

    fn req(line: &str, value: &str) -> Request {
        Request::parse(line.as_bytes(), value.as_bytes(), &Limits::default()).unwrap()
    }

    /// Runs `future` on a LocalSet (handlers spawn background tasks), and
    /// lets those tasks finish.
    fn run(route: Rc<dyn Route>, request: Request) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let reply = local.block_on(&rt, async move { route.call(request).await });
        rt.block_on(local);
        String::from_utf8_lossy(reply.raw()).into_owned()
    }

    fn routes(children: &[&Rc<Scripted>]) -> Vec<Rc<dyn Route>> {
        children
            .iter()
            .map(|c| (*c).clone() as Rc<dyn Route>)
            .collect()
    }

    #[test]
    fn failover_stops_at_the_first_good_reply() {
        let (bad, hit, never) = (
            Scripted::new("SERVER_ERROR down"),
            Scripted::new("HD"),
            Scripted::new("HD"),
        );
        let stats = Arc::new(ProxyStats::default());
        stats.set_names(&[(1, "retries".to_string())]);
        let route = Rc::new(Failover {
            children: routes(&[&bad, &hit, &never]),
            limit: 3,
            miss: false,
            retries: Some(RetryStat {
                stats: stats.clone(),
                id: 1,
            }),
        });
        assert_eq!(run(route, req("md k", "")), "HD\r\n");
        assert_eq!((bad.calls(), hit.calls(), never.calls()), (1, 1, 0));
        assert_eq!(stats.user_stats(), vec![("retries".to_string(), 1)]);
    }

    #[test]
    fn failover_on_miss_returns_the_miss_when_nothing_hits() {
        let (miss, err) = (Scripted::new("EN"), Scripted::new("SERVER_ERROR down"));
        let route = Rc::new(Failover {
            children: routes(&[&miss, &err]),
            limit: 2,
            miss: true,
            retries: None,
        });
        assert_eq!(run(route, req("mg k v", "")), "EN\r\n");
        assert_eq!((miss.calls(), err.calls()), (1, 1));
        // Without `miss`, the miss is an answer.
        let (miss2, err2) = (Scripted::new("EN"), Scripted::new("SERVER_ERROR down"));
        let route = Rc::new(Failover {
            children: routes(&[&miss2, &err2]),
            limit: 2,
            miss: false,
            retries: None,
        });
        assert_eq!(run(route, req("mg k v", "")), "EN\r\n");
        assert_eq!(err2.calls(), 0);
    }

    #[test]
    fn failover_answers_the_last_miss_else_the_last_error() {
        let (e1, m1, e2, m2, e3) = (
            Scripted::new("SERVER_ERROR one"),
            Scripted::new("EN"),
            Scripted::new("SERVER_ERROR two"),
            Scripted::new("END"),
            Scripted::new("SERVER_ERROR three"),
        );
        let route = Rc::new(Failover {
            children: routes(&[&e1, &m1, &e2, &m2, &e3]),
            limit: 5,
            miss: true,
            retries: None,
        });
        assert_eq!(run(route, req("mg k v", "")), "END\r\n");
        // Every child saw the client's request as it was.
        for child in [&e1, &m1, &e2, &m2, &e3] {
            assert_eq!(*child.seen.borrow(), vec!["mg k v".to_string()]);
        }
        let (e1, e2) = (
            Scripted::new("SERVER_ERROR one"),
            Scripted::new("SERVER_ERROR two"),
        );
        let route = Rc::new(Failover {
            children: routes(&[&e1, &e2]),
            limit: 2,
            miss: true,
            retries: None,
        });
        assert_eq!(run(route.clone(), req("get k", "")), "SERVER_ERROR two\r\n");
        // No child at all (a limit of 0 is refused at load, but the node
        // still answers).
        let none = Rc::new(Failover {
            children: Vec::new(),
            limit: 0,
            miss: false,
            retries: None,
        });
        assert_eq!(run(none, req("get k", "")), "SERVER_ERROR no children\r\n");
    }

    #[test]
    fn failover_serves_the_client_shaped_reply() {
        let (bad, good) = (Scripted::new("SERVER_ERROR down"), Scripted::new("HD"));
        let route = Rc::new(Failover {
            children: routes(&[&bad, &good]),
            limit: 2,
            miss: false,
            retries: None,
        });
        let serve = |request: Request| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let route = route.clone();
            String::from_utf8_lossy(&rt.block_on(async move { route.serve(request).await }))
                .into_owned()
        };
        assert_eq!(serve(req("md k", "")), "HD\r\n");
        // A quiet meta request's nominal reply is hidden.
        assert_eq!(serve(req("md k q", "")), "");
        assert_eq!(bad.calls(), 2);
    }

    #[test]
    fn failover_count_limits_the_children_tried() {
        let (a, b) = (Scripted::new("SERVER_ERROR a"), Scripted::new("HD"));
        let stats = Arc::new(ProxyStats::default());
        let route = Rc::new(Failover {
            children: routes(&[&a, &b]),
            limit: 1,
            miss: false,
            retries: Some(RetryStat {
                stats: stats.clone(),
                id: 1,
            }),
        });
        assert_eq!(run(route, req("md k", "")), "SERVER_ERROR a\r\n");
        assert_eq!(b.calls(), 0);
    }

    #[test]
    fn allsync_reaches_everyone_and_reports_the_first_error() {
        let (a, b, c) = (
            Scripted::new("HD"),
            Scripted::new("SERVER_ERROR b"),
            Scripted::new("HD"),
        );
        let route = Rc::new(AllSync {
            children: routes(&[&a, &b, &c]),
        });
        assert_eq!(run(route, req("ms k 1", "x")), "SERVER_ERROR b\r\n");
        assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 1));
    }

    #[test]
    fn allfastest_and_allasync_and_split_still_send_to_every_child() {
        let (a, b) = (Scripted::new("SERVER_ERROR a"), Scripted::new("HD"));
        let route = Rc::new(AllFastest {
            children: routes(&[&a, &b]),
        });
        assert_eq!(run(route, req("ms k 1", "x")), "HD\r\n");
        assert_eq!((a.calls(), b.calls()), (1, 1));

        let (c, d) = (Scripted::new("HD"), Scripted::new("HD"));
        let route = Rc::new(AllAsync {
            children: routes(&[&c, &d]),
        });
        assert_eq!(run(route, req("set k 0 0 1", "x")), "NOT_STORED\r\n");
        assert_eq!((c.calls(), d.calls()), (1, 1));

        let (e, f) = (Scripted::new("STORED"), Scripted::new("SERVER_ERROR f"));
        let route = Rc::new(Split {
            child_a: e.clone(),
            child_b: f.clone(),
        });
        assert_eq!(run(route, req("set k 0 0 1", "x")), "STORED\r\n");
        assert_eq!(f.calls(), 1);
    }

    #[test]
    fn zfailover_tries_the_near_zone_first() {
        let (near, far1, far2) = (
            Scripted::new("EN"),
            Scripted::new("EN"),
            Scripted::new("VA 1\r\nx"),
        );
        let route = Rc::new(ZoneFailover {
            near: near.clone(),
            far: routes(&[&far1, &far2]),
            miss: true,
            retries: None,
        });
        // (Scripted answers a one-line reply; a hit needs a value, so the
        // far zones' replies only count as OK here.)
        let reply = run(route, req("mg k v", ""));
        assert!(
            reply.starts_with("EN") || reply.starts_with("VA"),
            "{reply}"
        );
        assert_eq!((near.calls(), far1.calls(), far2.calls()), (1, 1, 1));
        let near_ok = Scripted::new("HD");
        let far = Scripted::new("HD");
        let route = Rc::new(ZoneFailover {
            near: near_ok.clone(),
            far: routes(&[&far]),
            miss: false,
            retries: None,
        });
        assert_eq!(run(route, req("md k", "")), "HD\r\n");
        assert_eq!(far.calls(), 0);
    }

    #[test]
    fn ttl_rewrites_the_exptime_of_stores() {
        let child = Scripted::new("STORED");
        let route = Rc::new(Ttl {
            child: child.clone(),
            ttl: 30,
            limits: Limits::default(),
        });
        run(route.clone(), req("set k 5 0 1 noreply", "x"));
        run(route.clone(), req("ms k 1 T100 F3", "x"));
        assert_eq!(
            run(route, req("get k", "")),
            "SERVER_ERROR invalid command for route_ttl\r\n"
        );
        assert_eq!(
            *child.seen.borrow(),
            vec![
                "set k 5 30 1 noreply".to_string(),
                "ms k 1 F3 T30".to_string()
            ]
        );
    }

    #[test]
    fn null_answers_the_nominal_miss() {
        for (line, value, want) in [
            ("get k", "", "END\r\n"),
            ("set k 0 0 1", "x", "NOT_STORED\r\n"),
            ("delete k", "", "NOT_FOUND\r\n"),
            ("mg k v", "", "EN\r\n"),
            ("ms k 1", "x", "NS\r\n"),
            ("md k", "", "NF\r\n"),
        ] {
            assert_eq!(run(Rc::new(Null), req(line, value)), want, "{line}");
        }
    }

    #[test]
    fn random_spreads_over_its_children() {
        let (a, b) = (Scripted::new("HD"), Scripted::new("HD"));
        let route = Rc::new(Random::new(routes(&[&a, &b]), 42));
        for _ in 0..200 {
            run(route.clone(), req("md k", ""));
        }
        assert_eq!(a.calls() + b.calls(), 200);
        assert!(
            a.calls() > 50 && b.calls() > 50,
            "{} {}",
            a.calls(),
            b.calls()
        );
    }

    #[test]
    fn allmajority_answers_what_most_children_answer() {
        let (a, b, c) = (
            Scripted::new("SERVER_ERROR a"),
            Scripted::new("NF"),
            Scripted::new("NF"),
        );
        let route = Rc::new(AllMajority {
            children: routes(&[&a, &b, &c]),
        });
        assert_eq!(run(route, req("md k", "")), "NF\r\n");
        assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 1));
        // No majority: an error wins over the rest.
        let (d, e) = (Scripted::new("HD"), Scripted::new("SERVER_ERROR e"));
        let route = Rc::new(AllMajority {
            children: routes(&[&d, &e]),
        });
        assert_eq!(run(route, req("md k", "")), "SERVER_ERROR e\r\n");
    }

    #[test]
    fn shadow_copies_the_sampled_share_and_error_answers_alone() {
        let (main, shadow) = (Scripted::new("HD"), Scripted::new("SERVER_ERROR s"));
        let never = Rc::new(Shadow {
            child: main.clone(),
            shadows: routes(&[&shadow]),
            threshold: 0,
            sampler: Sampler::new(1),
        });
        let always = Rc::new(Shadow {
            child: main.clone(),
            shadows: routes(&[&shadow]),
            threshold: 1 << 32,
            sampler: Sampler::new(1),
        });
        assert_eq!(run(never, req("md k", "")), "HD\r\n");
        assert_eq!(shadow.calls(), 0);
        assert_eq!(run(always, req("md k", "")), "HD\r\n");
        assert_eq!((main.calls(), shadow.calls()), (2, 1));
        let off = Rc::new(ErrorRoute::new("retired"));
        assert_eq!(run(off, req("mg k v", "")), "SERVER_ERROR retired\r\n");
    }

    #[test]
    fn migrate_follows_its_time_window() {
        let now = crate::stats::unix_now() as i64;
        let window = |start: i64, stop: i64, from: &Rc<Scripted>, to: &Rc<Scripted>| {
            Rc::new(Migrate {
                from: from.clone(),
                to: to.clone(),
                start,
                stop,
                fallbacks: None,
            })
        };
        let (from, to) = (Scripted::new("HD"), Scripted::new("HD"));
        run(window(now + 100, now + 200, &from, &to), req("md k", ""));
        assert_eq!((from.calls(), to.calls()), (1, 0));
        run(window(now - 200, now - 100, &from, &to), req("md k", ""));
        assert_eq!((from.calls(), to.calls()), (1, 1));
        // Inside the window a delete reaches both, a store only the new.
        run(window(now - 1, now + 100, &from, &to), req("md k", ""));
        assert_eq!((from.calls(), to.calls()), (2, 2));
        run(window(now - 1, now + 100, &from, &to), req("ms k 1", "x"));
        assert_eq!((from.calls(), to.calls()), (2, 3));
        // A miss on the new side reads the old.
        let (old, new) = (Scripted::new("EN"), Scripted::new("EN"));
        run(window(now - 1, now + 100, &old, &new), req("mg k v", ""));
        assert_eq!((old.calls(), new.calls()), (1, 1));
    }

    /// A child that answers a get with a hit naming the key it was sent.
    struct Echo(RefCell<Vec<String>>);

    impl Route for Echo {
        fn call(self: Rc<Self>, request: Request) -> ResponseFuture {
            let key = String::from_utf8_lossy(request.key().unwrap()).into_owned();
            self.0.borrow_mut().push(key.clone());
            let reply = match request.raw_line().starts_with(b"mg ") {
                true => format!("VA 2 t-1 k{key}\r\nhi\r\n"),
                false => format!("VALUE {key} 0 2\r\nhi\r\nEND\r\n"),
            };
            let mut raw = bytes::BytesMut::from(reply.as_bytes());
            let decoder = memroute_proto::ResponseDecoder::for_request(&request);
            ready(decoder.decode(&mut raw).unwrap().unwrap())
        }
    }

    #[test]
    fn prefix_selector_takes_the_longest_prefix() {
        let (short, long, wild) = (
            Scripted::new("HD"),
            Scripted::new("HD"),
            Scripted::new("HD"),
        );
        let route = || {
            Rc::new(PrefixSelector {
                policies: vec![
                    (b"ab".to_vec(), long.clone() as Rc<dyn Route>),
                    (b"a".to_vec(), short.clone() as Rc<dyn Route>),
                ],
                wildcard: Some(wild.clone()),
            })
        };
        run(route(), req("md abc", ""));
        run(route(), req("md ax", ""));
        run(route(), req("md zz", ""));
        assert_eq!((short.calls(), long.calls(), wild.calls()), (1, 1, 1));
        let none = Rc::new(PrefixSelector {
            policies: Vec::new(),
            wildcard: None,
        });
        assert_eq!(run(none, req("md k", "")), "SERVER_ERROR no route\r\n");
    }

    #[test]
    fn hash_select_is_ch3_over_children_and_salt_moves_keys() {
        let children: Vec<Rc<Scripted>> = (0..4).map(|_| Scripted::new("HD")).collect();
        let dist = |kind| {
            let names: Vec<_> = (0..4)
                .map(|i| memroute_hash::Backend::new(format!("c{i}")))
                .collect();
            Arc::new(
                memroute_hash::DistributionConfig::new(kind)
                    .build(&names)
                    .unwrap(),
            )
        };
        let route = |salt: &[u8]| {
            Rc::new(HashSelect {
                children: children
                    .iter()
                    .map(|c| c.clone() as Rc<dyn Route>)
                    .collect(),
                distribution: dist(memroute_hash::DistributionKind::Ch3),
                salt: salt.to_vec(),
            })
        };
        run(route(b""), req("md sample", ""));
        let picked = children.iter().position(|c| c.calls() == 1).unwrap();
        assert_eq!(
            picked,
            memroute_hash::furc_hash(
                memroute_hash::murmur_hash_64a(b"sample", memroute_hash::FURC_SEED),
                4
            ) as usize
        );
        // With a salt the key is hashed as key + salt.
        run(route(b"s1"), req("md sample", ""));
        let salted = memroute_hash::furc_hash(
            memroute_hash::murmur_hash_64a(b"samples1", memroute_hash::FURC_SEED),
            4,
        ) as usize;
        assert!(children[salted].calls() >= 1);
    }

    #[test]
    fn routing_prefix_strips_and_renames_the_reply() {
        let (east, other) = (
            Rc::new(Echo(RefCell::default())),
            Rc::new(Echo(RefCell::default())),
        );
        let route = Rc::new(RoutingPrefix {
            routes: [(b"/east/web/".to_vec(), east.clone() as Rc<dyn Route>)]
                .into_iter()
                .collect(),
            default: other.clone(),
            limits: Limits::default(),
        });
        assert_eq!(
            run(route.clone(), req("get /east/web/k1", "")),
            "VALUE /east/web/k1 0 2\r\nhi\r\nEND\r\n"
        );
        assert_eq!(
            run(route.clone(), req("get plain", "")),
            "VALUE plain 0 2\r\nhi\r\nEND\r\n"
        );
        assert_eq!(
            run(route.clone(), req("get /west/web/k", "")),
            "SERVER_ERROR no route\r\n"
        );
        assert_eq!(
            run(route.clone(), req("mg /east/web/k2 v t k", "")),
            "VA 2 t-1 k/east/web/k2\r\nhi\r\n"
        );
        assert_eq!(*east.0.borrow(), ["k1", "k2"]);
        assert_eq!(*other.0.borrow(), ["plain"]);
        assert_eq!(RoutingPrefix::prefix_of(b"/a/b/c"), Some(&b"/a/b/"[..]));
        assert_eq!(RoutingPrefix::prefix_of(b"/a/b"), None);
        assert_eq!(RoutingPrefix::prefix_of(b"a/b/c"), None);
    }

    #[test]
    fn key_shadow_copies_the_same_keys_every_time() {
        let (main, copy) = (Scripted::new("HD"), Scripted::new("HD"));
        let half = Rc::new(KeyShadow {
            child: main.clone(),
            shadows: vec![copy.clone()],
            start: 0,
            end: u32::MAX / 2,
        });
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        let shadowed: Vec<bool> = keys
            .iter()
            .map(|k| half.shadows_key(k.as_bytes()))
            .collect();
        for key in &keys {
            run(half.clone(), req(&format!("md {key}"), ""));
        }
        let expected = shadowed.iter().filter(|s| **s).count();
        assert_eq!((main.calls(), copy.calls()), (200, expected));
        assert!((60..140).contains(&expected), "{expected}");
        // The hash stop: the same routing key, the same answer.
        assert_eq!(half.shadows_key(b"k1|#|a"), half.shadows_key(b"k1|#|b"));
    }

    #[test]
    fn with_key_rewrites_only_the_key() {
        let limits = Limits::default();
        let set = with_key(&req("set /a/b/k 5 0 1", "x"), b"k", &limits).unwrap();
        assert_eq!(&set.raw_line()[..], b"set k 5 0 1");
        assert_eq!(&set.value()[..], b"x");
        let mg = with_key(&req("mg /a/b/k v t", ""), b"k", &limits).unwrap();
        assert_eq!(&mg.raw_line()[..], b"mg k v t");
        // A key spelled like the command.
        let get = with_key(&req("get get", ""), b"x", &limits).unwrap();
        assert_eq!(&get.raw_line()[..], b"get x");
    }
}
