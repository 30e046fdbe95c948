//! A route tree as the config VM checked it: plain data, shared by every
//! worker (`Send`), built into route nodes on each worker with
//! [`RouterPlan::build`]. routelib configurations (`crate::lua::routelib`)
//! become a plan, and so do mcrouter JSON configurations (`crate::mcrouter`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::bigvalue::BigValue;
use super::handlers::{
    AllAsync, AllFastest, AllMajority, AllSync, Direct, ErrorRoute, Failover, HashSelect,
    KeyShadow, Limiter, Migrate, Null, PrefixSelector, Random, RateLimit, RetryStat, RoutingPrefix,
    Sampler, Shadow, Split, Ttl, Warmup, ZoneFailover, L1L2,
};
use super::keysplit::KeySplit;
use super::pool::{EmbeddedPool, Pool, PoolDef, WorkerBackends};
use super::ratelim::{GlobalTokenBucket, TbfParams, TokenBucket};
use super::router::{KeyRouter, RouterEntry, RouterMode, RouterTable};
use super::{Route, RouteEnv};

/// One node of a planned route tree. Cloning copies the plan (pools stay
/// shared): a subtree named twice is built twice on a worker.
#[derive(Debug, Clone)]
pub enum RoutePlan {
    Pool(Arc<PoolDef>),
    Direct(Box<RoutePlan>),
    AllSync(Vec<RoutePlan>),
    AllFastest(Vec<RoutePlan>),
    AllAsync(Vec<RoutePlan>),
    Random(Vec<RoutePlan>),
    Split(Box<RoutePlan>, Box<RoutePlan>),
    Failover {
        children: Vec<RoutePlan>,
        /// Children tried at most.
        limit: usize,
        /// A miss counts as a failure.
        miss: bool,
        /// Each worker shuffles the children once, when it builds them.
        shuffle: bool,
        /// `mcp.add_stat` id counting retries.
        stat: Option<i64>,
    },
    ZoneFailover {
        near: Box<RoutePlan>,
        far: Vec<RoutePlan>,
        miss: bool,
        stat: Option<i64>,
    },
    Ttl {
        child: Box<RoutePlan>,
        ttl: i64,
    },
    /// `route_ratelim`: a token bucket in front of `child`.
    RateLimit {
        child: Box<RoutePlan>,
        params: TbfParams,
        /// The bucket every worker shares (`global = true`), made once
        /// per configuration; `None`: each worker builds its own.
        global: Option<Arc<GlobalTokenBucket>>,
        fail_until_limit: bool,
    },
    Null,
    /// The embedded cache (routelib's reserved pool name `internal`).
    Internal,
    Error(String),
    AllMajority(Vec<RoutePlan>),
    Shadow {
        child: Box<RoutePlan>,
        shadows: Vec<RoutePlan>,
        /// Share of requests copied, 0 to 1.
        rate: f64,
    },
    Warmup {
        cold: Box<RoutePlan>,
        warm: Box<RoutePlan>,
        /// Longest TTL a warmed copy gets (0: the warm item's own).
        ttl: i64,
    },
    L1L2 {
        l1: Box<RoutePlan>,
        l2: Box<RoutePlan>,
        ttl: i64,
        /// How long an L2 miss is remembered in L1 (0: not at all).
        negative_ttl: i64,
    },
    /// Values over `threshold` bytes stored as `chunk`-byte items plus an
    /// index (`route_bigvalue`, mcrouter's BigValueRoute).
    BigValue {
        child: Box<RoutePlan>,
        threshold: usize,
        chunk: usize,
    },
    /// Every key kept as `copies` copies (`route_keysplit`, mcrouter's
    /// KeySplitRoute).
    KeySplit {
        child: Box<RoutePlan>,
        copies: usize,
    },
    Migrate {
        from: Box<RoutePlan>,
        to: Box<RoutePlan>,
        start: i64,
        stop: i64,
        stat: Option<i64>,
    },
    /// A key router inside the tree (mcrouter's OperationSelectorRoute is
    /// one with routes per command and a default).
    Router(Box<RouterPlan>),
    /// The route of the longest matching key prefix, else `wildcard`.
    PrefixSelector {
        policies: Vec<(Vec<u8>, RoutePlan)>,
        wildcard: Option<Box<RoutePlan>>,
    },
    /// The child a distribution picks for the (salted) key.
    Hash {
        children: Vec<RoutePlan>,
        distribution: Arc<memroute_hash::Distribution>,
        salt: Vec<u8>,
    },
    /// Shadows the keys whose routing-key hash is in `start..end` (of
    /// 2^32-1), as mcrouter's `key_fraction_range` does.
    KeyShadow {
        child: Box<RoutePlan>,
        shadows: Vec<RoutePlan>,
        start: u32,
        end: u32,
    },
    /// A route handler written in Lua (routelib's `register_route_handlers`):
    /// built on each worker by its [`UserHandlers`], over `children`.
    User {
        /// The handler's name (`route_<name>`).
        name: String,
        /// The map entry it serves (`ctx:label()`).
        label: String,
        /// The command its tree is built for (`ctx:cmd()`): a command
        /// id for a `cmdmap{}` or `cmap` entry, else `CMD_ANY_STORAGE`.
        command: i64,
        /// Its options as the config VM's `_conf` function returned them,
        /// children replaced by their index in `children`; only the Lua
        /// layer reads them.
        args: UserArgs,
        children: Vec<RoutePlan>,
    },
    /// mcrouter's routing prefixes: `/region/cluster/` keys to their
    /// alias's route, prefix stripped; others to `default`.
    RoutingPrefix {
        routes: Vec<(Vec<u8>, RoutePlan)>,
        default: Box<RoutePlan>,
    },
}

/// A user handler's options, opaque to the route tree (the Lua layer
/// owns their type).
#[derive(Clone)]
pub struct UserArgs(pub Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for UserArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserArgs(..)")
    }
}

/// Builds the nodes of route handlers written in Lua on one worker: the
/// worker's Lua layer implements it (the route tree knows no Lua).
pub trait UserHandlers {
    /// The route of handler `name` for map entry `label` and command id
    /// `command`, over `children` (already built). A failure is remembered
    /// by the implementation and fails the whole build; the node returned
    /// then is never used.
    fn build(
        &self,
        name: &str,
        label: &str,
        command: i64,
        args: &UserArgs,
        children: Vec<Rc<dyn Route>>,
    ) -> Rc<dyn Route>;
}

/// A map entry of a planned router.
#[derive(Debug, Clone)]
pub enum EntryPlan {
    All(RoutePlan),
    ByCommand(Vec<(i64, RoutePlan)>),
}

/// A planned key router: the root of a routelib tree.
#[derive(Debug, Clone)]
pub struct RouterPlan {
    pub mode: RouterMode,
    pub map: Vec<(Vec<u8>, EntryPlan)>,
    pub cmap: Vec<(i64, RoutePlan)>,
    pub default: Option<RoutePlan>,
}

/// What building a plan on one worker needs.
pub struct BuildContext<'a> {
    pub backends: &'a Rc<WorkerBackends>,
    pub env: &'a Rc<RouteEnv>,
    /// One pool per definition, however many times the tree names it.
    pools: RefCell<HashMap<*const PoolDef, Rc<dyn Pool>>>,
    /// Seeds shuffles and random routes, different per worker.
    seed: RefCell<u64>,
    /// Builds handlers written in Lua, when the plan has any.
    user: Option<&'a dyn UserHandlers>,
}

impl<'a> BuildContext<'a> {
    pub fn new(backends: &'a Rc<WorkerBackends>, env: &'a Rc<RouteEnv>) -> Self {
        BuildContext {
            backends,
            env,
            pools: RefCell::new(HashMap::new()),
            seed: RefCell::new(
                0x9e37_79b9_7f4a_7c15 ^ (env.worker as u64 + 1).wrapping_mul(0x2545_f491),
            ),
            user: None,
        }
    }

    /// The same context, with `user` building handlers written in Lua.
    pub fn with_user_handlers(mut self, user: &'a dyn UserHandlers) -> Self {
        self.user = Some(user);
        self
    }

    fn next_seed(&self) -> u64 {
        let mut s = self.seed.borrow_mut();
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *s
    }

    /// This worker's pool for `def`, made once however often it is named.
    pub fn pool(&self, def: &Arc<PoolDef>) -> Rc<dyn Pool> {
        self.pools
            .borrow_mut()
            .entry(Arc::as_ptr(def))
            .or_insert_with(|| def.instantiate(self.backends, self.env))
            .clone()
    }

    /// Every pool built so far.
    pub fn pools(&self) -> Vec<Rc<dyn Pool>> {
        self.pools.borrow().values().cloned().collect()
    }

    fn stat(&self, id: Option<i64>) -> Option<RetryStat> {
        id.map(|id| RetryStat {
            stats: self.env.proxy_stats.clone(),
            id,
        })
    }
}

impl RoutePlan {
    /// This worker's route for the plan.
    pub fn build(&self, cx: &BuildContext) -> Rc<dyn Route> {
        let all = |children: &[RoutePlan]| children.iter().map(|c| c.build(cx)).collect();
        match self {
            RoutePlan::Pool(def) => cx.pool(def),
            RoutePlan::Direct(child) => Rc::new(Direct {
                child: child.build(cx),
            }),
            RoutePlan::AllSync(children) => Rc::new(AllSync {
                children: all(children),
            }),
            RoutePlan::AllFastest(children) => Rc::new(AllFastest {
                children: all(children),
            }),
            RoutePlan::AllAsync(children) => Rc::new(AllAsync {
                children: all(children),
            }),
            RoutePlan::Random(children) => Rc::new(Random::new(all(children), cx.next_seed())),
            RoutePlan::Split(a, b) => Rc::new(Split {
                child_a: a.build(cx),
                child_b: b.build(cx),
            }),
            RoutePlan::Failover {
                children,
                limit,
                miss,
                shuffle,
                stat,
            } => {
                let mut children: Vec<Rc<dyn Route>> = all(children);
                if *shuffle {
                    // Fisher-Yates with this worker's seed.
                    for i in (1..children.len()).rev() {
                        let j = (cx.next_seed() >> 33) as usize % (i + 1);
                        children.swap(i, j);
                    }
                }
                Rc::new(Failover {
                    children,
                    limit: *limit,
                    miss: *miss,
                    retries: cx.stat(*stat),
                })
            }
            RoutePlan::ZoneFailover {
                near,
                far,
                miss,
                stat,
            } => Rc::new(ZoneFailover {
                near: near.build(cx),
                far: all(far),
                miss: *miss,
                retries: cx.stat(*stat),
            }),
            RoutePlan::Ttl { child, ttl } => Rc::new(Ttl {
                child: child.build(cx),
                ttl: *ttl,
                limits: cx.env.limits.clone(),
            }),
            RoutePlan::RateLimit {
                child,
                params,
                global,
                fail_until_limit,
            } => Rc::new(RateLimit {
                child: child.build(cx),
                limiter: match global {
                    Some(bucket) => Limiter::Global(bucket.clone()),
                    None => Limiter::Local(TokenBucket::new(*params)),
                },
                fail_until_limit: *fail_until_limit,
            }),
            RoutePlan::Null => Rc::new(Null),
            RoutePlan::Internal => Rc::new(EmbeddedPool::new(cx.env.clone())),
            RoutePlan::Error(message) => Rc::new(ErrorRoute::new(message)),
            RoutePlan::AllMajority(children) => Rc::new(AllMajority {
                children: all(children),
            }),
            RoutePlan::Shadow {
                child,
                shadows,
                rate,
            } => Rc::new(Shadow {
                child: child.build(cx),
                shadows: all(shadows),
                threshold: (rate.clamp(0.0, 1.0) * 4_294_967_296.0) as u64,
                sampler: Sampler::new(cx.next_seed()),
            }),
            RoutePlan::Warmup { cold, warm, ttl } => Rc::new(Warmup {
                cold: cold.build(cx),
                warm: warm.build(cx),
                max_ttl: *ttl,
                limits: cx.env.limits.clone(),
            }),
            RoutePlan::L1L2 {
                l1,
                l2,
                ttl,
                negative_ttl,
            } => Rc::new(L1L2 {
                l1: l1.build(cx),
                l2: l2.build(cx),
                ttl: *ttl,
                negative_ttl: *negative_ttl,
                limits: cx.env.limits.clone(),
            }),
            RoutePlan::BigValue {
                child,
                threshold,
                chunk,
            } => Rc::new(BigValue::new(
                child.build(cx),
                *threshold,
                *chunk,
                &cx.env.limits,
                cx.next_seed(),
            )),
            RoutePlan::KeySplit { child, copies } => Rc::new(KeySplit::new(
                child.build(cx),
                *copies,
                &cx.env.limits,
                cx.next_seed(),
            )),
            RoutePlan::Migrate {
                from,
                to,
                start,
                stop,
                stat,
            } => Rc::new(Migrate {
                from: from.build(cx),
                to: to.build(cx),
                start: *start,
                stop: *stop,
                fallbacks: cx.stat(*stat),
            }),
            RoutePlan::Router(router) => router.build(cx),
            RoutePlan::PrefixSelector { policies, wildcard } => {
                let mut policies: Vec<(Vec<u8>, Rc<dyn Route>)> = policies
                    .iter()
                    .map(|(prefix, route)| (prefix.clone(), route.build(cx)))
                    .collect();
                // Longest first, so the first match is the longest.
                policies.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
                Rc::new(PrefixSelector {
                    policies,
                    wildcard: wildcard.as_ref().map(|w| w.build(cx)),
                })
            }
            RoutePlan::Hash {
                children,
                distribution,
                salt,
            } => Rc::new(HashSelect {
                children: all(children),
                distribution: distribution.clone(),
                salt: salt.clone(),
            }),
            RoutePlan::KeyShadow {
                child,
                shadows,
                start,
                end,
            } => Rc::new(KeyShadow {
                child: child.build(cx),
                shadows: all(shadows),
                start: *start,
                end: *end,
            }),
            RoutePlan::User {
                name,
                label,
                command,
                args,
                children,
            } => match cx.user {
                Some(user) => user.build(name, label, *command, args, all(children)),
                None => Rc::new(ErrorRoute::new(
                    "no Lua VM for route handlers written in Lua",
                )),
            },
            RoutePlan::RoutingPrefix { routes, default } => Rc::new(RoutingPrefix {
                routes: routes
                    .iter()
                    .map(|(alias, route)| (alias.clone(), route.build(cx)))
                    .collect(),
                default: default.build(cx),
                limits: cx.env.limits.clone(),
            }),
        }
    }
}

impl RouterPlan {
    /// This worker's router for the plan.
    pub fn build(&self, cx: &BuildContext) -> Rc<dyn Route> {
        let map = self
            .map
            .iter()
            .map(|(prefix, entry)| {
                let entry = match entry {
                    EntryPlan::All(route) => RouterEntry::All(route.build(cx)),
                    EntryPlan::ByCommand(routes) => RouterEntry::ByCommand(
                        routes.iter().map(|(id, r)| (*id, r.build(cx))).collect(),
                    ),
                };
                (prefix.clone(), entry)
            })
            .collect();
        Rc::new(KeyRouter(RouterTable {
            mode: self.mode.clone(),
            map,
            by_command: self.cmap.iter().map(|(id, r)| (*id, r.build(cx))).collect(),
            default: self.default.as_ref().map(|r| r.build(cx)),
        }))
    }
}
