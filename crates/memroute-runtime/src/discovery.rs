//! Pools whose backends find themselves: from DNS (A/AAAA records of a
//! name, or SRV records) or from an ElastiCache-style configuration
//! endpoint (`config get cluster`), re-read on a period and at every
//! reload.
//!
//! A [`Discovery`] is made on the config VM (`mcp.discover{...}`), resolves
//! once there (a pool with no members does not start), then keeps a thread
//! of its own that re-reads the source every period until the
//! configuration that made it is gone. Each new member list becomes a new
//! [`Membership`] (backend settings and the pool's key distribution over
//! them), published through `arc-swap`: workers read it on every request
//! with one atomic load and rebuild their side of the pool when its
//! generation changed, keeping their connections to the backends that
//! stayed (`route::pool::DiscoveredPool`). A failed read keeps the last
//! good list; a change is logged with the old and new lists.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use memroute_hash::{Backend as HashBackend, Distribution, DistributionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::backend::BackendConfig;

/// Where a pool's members come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Every address (A and AAAA) of `name`, each on `port`.
    Dns { name: String, port: u16 },
    /// The targets and ports of `name`'s SRV records.
    Srv { name: String },
    /// An ElastiCache-style configuration endpoint (`host:port`), asked
    /// `config get cluster`.
    ConfigEndpoint { address: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dns { name, port } => write!(f, "dns {name}:{port}"),
            Source::Srv { name } => write!(f, "srv {name}"),
            Source::ConfigEndpoint { address } => write!(f, "config endpoint {address}"),
        }
    }
}

/// How to discover one pool's members.
#[derive(Debug, Clone)]
pub struct DiscoverySpec {
    pub source: Source,
    /// The DNS server to ask (`host:port`); `None` uses the system's
    /// (`/etc/resolv.conf`).
    pub nameserver: Option<SocketAddr>,
    /// How often the source is read again.
    pub every: Duration,
    /// Settings every member gets (timeouts, limits...); host, port and
    /// label are each member's.
    pub template: BackendConfig,
}

/// One member list and the key distribution over it.
#[derive(Debug)]
pub struct Membership {
    /// Changes with every new list, so workers know to rebuild.
    pub generation: u64,
    pub backends: Vec<Arc<BackendConfig>>,
    pub distribution: Arc<Distribution>,
}

/// A discovered pool's source and its current members.
pub struct Discovery {
    pub pool: String,
    spec: DiscoverySpec,
    distribution: DistributionConfig,
    /// Prefixed to every member's label (the pool's `beprefix`).
    label_prefix: String,
    current: ArcSwap<Membership>,
    generations: AtomicU64,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("pool", &self.pool)
            .field("source", &self.spec.source)
            .finish()
    }
}

/// `host:port` members, sorted (DNS answers in any order; the pool's
/// distribution must not change when only the order did).
type Members = Vec<(String, u16)>;

impl Discovery {
    /// Reads the source once (an error if it cannot be read or gives no
    /// member) and starts re-reading it every `spec.every` on a thread of
    /// its own, for as long as the returned `Arc` lives.
    pub fn start(
        pool: String,
        spec: DiscoverySpec,
        distribution: DistributionConfig,
        label_prefix: String,
    ) -> Result<Arc<Discovery>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("discovery runtime: {e}"))?;
        let members = runtime.block_on(read(&spec))?;
        let first = membership(&spec, &distribution, &label_prefix, &members, 1)?;
        let discovery = Arc::new(Discovery {
            pool,
            spec,
            distribution,
            label_prefix,
            current: ArcSwap::from_pointee(first),
            generations: AtomicU64::new(1),
        });
        info!(
            "pool {}: {} gives {}",
            discovery.pool,
            discovery.spec.source,
            show(&members)
        );
        let weak = Arc::downgrade(&discovery);
        let every = discovery.spec.every;
        std::thread::Builder::new()
            .name(format!("discover-{}", discovery.pool))
            .spawn(move || runtime.block_on(refresh(weak, every, members)))
            .map_err(|e| format!("discovery thread: {e}"))?;
        Ok(discovery)
    }

    /// The members now.
    pub fn current(&self) -> arc_swap::Guard<Arc<Membership>> {
        self.current.load()
    }

    /// The source, for logs, stats and the configuration digest.
    pub fn source(&self) -> &Source {
        &self.spec.source
    }
}

/// Re-reads the source every `every` while the discovery lives.
async fn refresh(discovery: Weak<Discovery>, every: Duration, mut last: Members) {
    loop {
        tokio::time::sleep(every).await;
        let Some(d) = discovery.upgrade() else {
            return; // the configuration that made it was replaced
        };
        match read(&d.spec).await {
            Ok(members) if members == last => {}
            Ok(members) => {
                let generation = d.generations.fetch_add(1, Ordering::Relaxed) + 1;
                match membership(
                    &d.spec,
                    &d.distribution,
                    &d.label_prefix,
                    &members,
                    generation,
                ) {
                    Ok(m) => {
                        // At warn: a membership change moves keys, and an
                        // operator should see it with default logging.
                        warn!(
                            "pool {}: {} changed from {} to {}",
                            d.pool,
                            d.spec.source,
                            show(&last),
                            show(&members)
                        );
                        d.current.store(Arc::new(m));
                        last = members;
                    }
                    Err(e) => warn!("pool {}: {e}; keeping {}", d.pool, show(&last)),
                }
            }
            Err(e) => warn!(
                "pool {}: {}: {e}; keeping {}",
                d.pool,
                d.spec.source,
                show(&last)
            ),
        }
    }
}

fn show(members: &Members) -> String {
    let list: Vec<String> = members.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    format!("[{}]", list.join(" "))
}

/// The membership for `members`.
fn membership(
    spec: &DiscoverySpec,
    distribution: &DistributionConfig,
    label_prefix: &str,
    members: &Members,
    generation: u64,
) -> Result<Membership, String> {
    let backends: Vec<Arc<BackendConfig>> = members
        .iter()
        .map(|(host, port)| {
            Arc::new(BackendConfig {
                label: format!("{label_prefix}{host}:{port}"),
                host: host.clone(),
                port: *port,
                ..spec.template.clone()
            })
        })
        .collect();
    let ids: Vec<HashBackend> = members
        .iter()
        .map(|(host, port)| HashBackend::new(format!("{host}:{port}")))
        .collect();
    let distribution = distribution.build(&ids).map_err(|e| e.to_string())?;
    Ok(Membership {
        generation,
        backends,
        distribution: Arc::new(distribution),
    })
}

/// Reads the source: its members, sorted, or why not (an empty answer is
/// an error: a pool with no member would fail every request).
async fn read(spec: &DiscoverySpec) -> Result<Members, String> {
    let limit = Duration::from_secs(10);
    let mut members = match tokio::time::timeout(limit, read_source(spec)).await {
        Ok(result) => result?,
        Err(_) => return Err(format!("no answer in {} s", limit.as_secs())),
    };
    members.sort();
    members.dedup();
    if members.is_empty() {
        return Err("no members".into());
    }
    Ok(members)
}

async fn read_source(spec: &DiscoverySpec) -> Result<Members, String> {
    match &spec.source {
        Source::Dns { name, port } => {
            let ips = resolver(spec.nameserver)?
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            Ok(ips.iter().map(|ip| (ip.to_string(), *port)).collect())
        }
        Source::Srv { name } => {
            let records = resolver(spec.nameserver)?
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            Ok(records
                .iter()
                .map(|srv| {
                    let target = srv.target().to_utf8();
                    (target.trim_end_matches('.').to_string(), srv.port())
                })
                .collect())
        }
        Source::ConfigEndpoint { address } => cluster_config(address).await,
    }
}

fn resolver(nameserver: Option<SocketAddr>) -> Result<TokioResolver, String> {
    match nameserver {
        Some(addr) => {
            let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            Ok(TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
            .build())
        }
        None => TokioResolver::builder_tokio()
            .map(|b| b.build())
            .map_err(|e| format!("system DNS configuration: {e}")),
    }
}

/// Asks an ElastiCache-style configuration endpoint for the cluster:
/// `config get cluster` answers `CONFIG cluster 0 <bytes>`, then a
/// version line and a line of `host|ip|port` members, then `END`.
async fn cluster_config(address: &str) -> Result<Members, String> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"config get cluster\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(b"END\r\n") {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.len() > 1 << 20 {
            return Err("configuration reply over 1 MB".into());
        }
    }
    parse_cluster_config(&reply)
}

/// The members in a `config get cluster` reply.
pub fn parse_cluster_config(reply: &[u8]) -> Result<Members, String> {
    let text = std::str::from_utf8(reply).map_err(|_| "reply is not text".to_string())?;
    let mut lines = text.split("\r\n");
    let head = lines.next().unwrap_or("");
    if !head.starts_with("CONFIG cluster ") {
        return Err(format!(
            "unexpected reply {:?}",
            head.chars().take(80).collect::<String>()
        ));
    }
    let body = lines.next().unwrap_or("");
    let mut body_lines = body.split('\n');
    let _version = body_lines.next();
    let nodes = body_lines.next().unwrap_or("");
    nodes
        .split_whitespace()
        .map(|node| {
            let mut parts = node.split('|');
            let (host, ip, port) = (parts.next(), parts.next(), parts.next());
            let port: u16 = port
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("bad member {node:?}"))?;
            let host = match (ip, host) {
                (Some(ip), _) if !ip.is_empty() => ip,
                (_, Some(host)) if !host.is_empty() => host,
                _ => return Err(format!("bad member {node:?}")),
            };
            Ok((host.to_string(), port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_config_replies() {
        let reply = b"CONFIG cluster 0 80\r\n12\nmc1.example|10.0.0.1|11211 mc2.example||11212\n\r\nEND\r\n";
        assert_eq!(
            parse_cluster_config(reply).unwrap(),
            vec![
                ("10.0.0.1".to_string(), 11211),
                ("mc2.example".to_string(), 11212)
            ]
        );
        assert!(parse_cluster_config(b"ERROR\r\n").is_err());
        assert!(parse_cluster_config(b"CONFIG cluster 0 9\r\n1\nh|i|x\n\r\nEND\r\n").is_err());
    }
}
