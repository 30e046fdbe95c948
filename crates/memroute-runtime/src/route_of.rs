//! `memroute route-of`: where keys go under a configuration, answered
//! offline.
//!
//! The configuration is loaded as the server loads it (config VM, routelib,
//! mcrouter JSON) and one worker's routes are built as a worker builds
//! them ([`WorkerProxy`]); then each key is explained with the code behind
//! the `__mcrouter__.route` admin keys ([`crate::route::explain`]). Nothing
//! listens and nothing is sent: the routes are built and explained without
//! the worker's runtime ever running a task, so no backend connection is
//! attempted, and everything is dropped before returning.

use std::sync::Arc;

use memroute_cache::{Cache, CacheConfig};
use tokio::task::LocalSet;

use crate::admin::Admin;
use crate::config::ServerConfig;
use crate::embedded::Embedded;
use crate::lua::{ConfigError, WorkerProxy};
use crate::route::explain::{backends_tried, explain, route_tree, Unexplained};
use crate::route::{check_tag, ListenerTag, RouteEnv};
use crate::stats::{ProxyStats, ServerStats};

/// Where one key goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRoute {
    pub key: String,
    /// The backends tried, in order (`__mcrouter__.route`) and the route
    /// tree (`__mcrouter__.route_handles`), or why there is none.
    pub answer: Result<(Vec<String>, Vec<String>), Unexplained>,
}

/// Why `route-of` cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum RouteOfError {
    /// The command line asks something that cannot be answered (no
    /// configuration, a bad tag, an operation that is not a key command).
    #[error("{0}")]
    Usage(String),
    /// The configuration does not load or its routes do not build.
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot start async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Explains `op KEY` for every key under `config`'s routes, for
/// connections on listeners tagged `tag` (untagged without one).
pub fn route_of(
    config: &ServerConfig,
    tag: Option<&str>,
    op: &str,
    keys: &[String],
) -> Result<Vec<KeyRoute>, RouteOfError> {
    let proxy = config.proxy.as_ref().ok_or_else(|| {
        RouteOfError::Usage(
            "route-of needs a configuration: --config STARTFILE, --routes FILE, \
             --mcrouter-config FILE or -o proxy_config=..."
                .into(),
        )
    })?;
    // The tags the server's listeners would carry, plus the one asked
    // about, so a tag can be asked about without repeating its -l.
    let mut listener_tags: Vec<String> = Vec::new();
    for tagged in &config.tagged_listen {
        if !listener_tags.contains(&tagged.tag) {
            listener_tags.push(tagged.tag.clone());
        }
    }
    let listener = match tag {
        Some(tag) => {
            check_tag(tag.as_bytes()).map_err(|e| RouteOfError::Usage(format!("--tag: {e}")))?;
            let index = match listener_tags.iter().position(|t| t == tag) {
                Some(index) => index,
                None => {
                    listener_tags.push(tag.to_string());
                    listener_tags.len() - 1
                }
            };
            ListenerTag::tagged(index)
        }
        None => ListenerTag::UNTAGGED,
    };

    let proxy_stats = Arc::new(ProxyStats::default());
    let stats = Arc::new(ServerStats::new(
        config.threads.max(1),
        crate::route::route_slot_count(listener_tags.len()),
    ));
    let admin = Arc::new(Admin {
        stats: stats.clone(),
        config: config.clone(),
        proxy_stats: proxy_stats.clone(),
        tls: None,
        auth: None,
        digest: Arc::new(crate::metrics::ConfigDigest::new(
            crate::metrics::config_digest(None, &[]),
        )),
    });
    // A store nothing is written to: a small limit is plenty.
    let cache = Arc::new(Cache::new(CacheConfig {
        max_item_size: config.limits.max_item_size,
        ..CacheConfig::with_memory_limit(config.limits.max_item_size as u64 * 2)
    }));
    // A startfile may read mcp.server_stats while loading: it sees this
    // process's (idle) stats, as a server's first load does.
    let loaded = crate::lua::config::load_config_with_stats(
        proxy,
        &proxy_stats.stores,
        crate::lua::server_stats::StatsSource {
            admin: admin.clone(),
            cache: cache.clone(),
        },
    )?;
    proxy_stats.set_names(&loaded.stat_names);
    admin.digest.set(crate::metrics::startfile_digest(
        crate::lua::vm::read_startfiles(proxy).as_deref(),
        &loaded.backend_lists(),
    ));
    let env = RouteEnv {
        embedded: Embedded::new(cache, admin),
        server_stats: stats,
        worker: 0,
        limits: config.limits.clone(),
        proxy_stats,
        listener_tags: listener_tags.into(),
        pool_stats: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RouteOfError::Runtime)?;
    // Pools spawn their connections' tasks on the LocalSet. The block
    // below never awaits, and a LocalSet polls its tasks only while the
    // future it runs is pending: those tasks never run, so nothing
    // connects, and they are dropped with the set.
    let local = LocalSet::new();
    let answers = local.block_on(&runtime, async {
        let worker = WorkerProxy::new(env, &loaded)?;
        let routes = worker
            .routes()
            .current()
            .ok_or_else(|| ConfigError::Invalid("the configuration built no routes".into()))?;
        let mut answers = Vec::with_capacity(keys.len());
        for key in keys {
            let answer = explain(&routes, op.as_bytes(), key.as_bytes(), listener)
                .map(|steps| (backends_tried(&steps), route_tree(&steps)));
            answers.push(KeyRoute {
                key: key.clone(),
                answer,
            });
        }
        Ok::<_, RouteOfError>(answers)
    });
    drop(local);
    // Nothing may hold the exit up: whatever the runtime still has is
    // abandoned, not waited for.
    runtime.shutdown_background();
    answers
}
