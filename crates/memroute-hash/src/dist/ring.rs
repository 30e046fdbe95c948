//! Hash rings (continuums) compatible with libmemcached, twemproxy and
//! memcached's proxy (`mcp.dist_ring_hash`).
//!
//! All modes share the lookup: the key hash is truncated to 32 bits and the
//! owner of the first point `>= hash` wins, wrapping to the first point.  They
//! differ only in which strings are hashed into points and how many points a
//! server gets; see [`RingMode`](super::RingMode).  Equal points are ordered
//! by backend index, which is libmemcached's tie rule (twemproxy and the proxy
//! use an unstable `qsort`, so ties there are unspecified upstream; with 32-bit
//! points they essentially never happen).

use super::RingMode;
use crate::hash::md5_digest;
use crate::{Backend, Error};

/// Points per server: libmemcached's `MEMCACHED_POINTS_PER_SERVER_KETAMA`,
/// twemproxy's `KETAMA_POINTS_PER_SERVER` and the proxy's default `obuckets`.
pub const DEFAULT_POINTS: u32 = 160;

/// Refuse rings that would not fit comfortably in memory.
const MAX_TOTAL_POINTS: u64 = 1 << 26;

/// A backend name split into host and port, as the rings need it.
///
/// [`Backend::name`] is `host:port`, `host` (port 11211 implied), a bracketed
/// IPv6 `[addr]:port`, or (for twemproxy named servers) any name without a
/// colon.  Brackets are removed from the host, as the C libraries store the
/// bare address.  A name with several colons and no brackets is taken as a
/// bare IPv6 address without a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// Host name or address, without brackets.
    pub host: &'a str,
    /// The port text, if the name has one.
    pub port: Option<&'a str>,
}

impl<'a> HostPort<'a> {
    /// Splits a backend name.
    pub fn parse(name: &'a str) -> Self {
        if let Some(rest) = name.strip_prefix('[') {
            if let Some((host, after)) = rest.split_once(']') {
                return HostPort {
                    host,
                    port: after.strip_prefix(':'),
                };
            }
        }
        match name.split_once(':') {
            Some((host, port)) if !port.contains(':') => HostPort {
                host,
                port: Some(port),
            },
            _ => HostPort {
                host: name,
                port: None,
            },
        }
    }

    /// The port, with memcached's default 11211 when absent.
    pub fn port_or_default(&self) -> &'a str {
        self.port.unwrap_or("11211")
    }

    /// The libmemcached/twemproxy ring identity: `host` when the port is
    /// 11211 (or absent), else `host:port`.
    pub fn ketama_identity(&self) -> String {
        match self.port {
            None | Some("11211") => self.host.to_string(),
            Some(port) => format!("{}:{port}", self.host),
        }
    }
}

/// A built continuum: sorted points and, in parallel, their owners.
#[derive(Clone)]
pub(super) struct Ring {
    points: Box<[u32]>,
    owners: Box<[u32]>,
}

impl Ring {
    pub(super) fn new(mode: RingMode, points: u32, backends: &[Backend]) -> Result<Self, Error> {
        if points == 0 {
            return Err(Error::BadPoints(points));
        }
        let mut cont: Vec<(u32, u32)> = Vec::new();
        match mode {
            RingMode::Libmemcached | RingMode::Twemproxy => {
                weighted_ketama(points, backends, &mut cont)?
            }
            _ => proxy_ring(mode, points, backends, &mut cont)?,
        }
        if cont.is_empty() {
            return Err(Error::EmptyRing);
        }
        // (point, index) order: libmemcached breaks ties by server index.
        cont.sort_unstable();
        let (points, owners): (Vec<u32>, Vec<u32>) = cont.into_iter().unzip();
        Ok(Ring {
            points: points.into(),
            owners: owners.into(),
        })
    }

    /// Index of the first point `>= hash`, wrapping to 0.
    #[inline]
    fn slot(&self, hash: u64) -> usize {
        let h = hash as u32;
        let i = self.points.partition_point(|&p| p < h);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    #[inline]
    pub(super) fn pick(&self, hash: u64) -> usize {
        self.owners[self.slot(hash)] as usize
    }

    /// Distinct owners clockwise from the key's point.  With equal weights
    /// this is exactly where libmemcached/twemproxy send the key after
    /// ejecting the earlier servers (their points vanish, the others stay).
    pub(super) fn candidates(&self, hash: u64, limit: usize, out: &mut Vec<usize>) {
        let start = self.slot(hash);
        let n = self.owners.len();
        for step in 0..n {
            let owner = self.owners[(start + step) % n] as usize;
            if !out.contains(&owner) {
                out.push(owner);
                if out.len() == limit {
                    return;
                }
            }
        }
    }

    /// Fraction of the 32-bit hash space each backend owns.
    pub(super) fn shares(&self, n: usize) -> Vec<f64> {
        let mut owned = vec![0u64; n];
        let len = self.points.len();
        for i in 0..len {
            let p = u64::from(self.points[i]);
            let arc = if i == 0 {
                // (last, 2^32) wraps around into [0, first].
                p + (1u64 << 32) - u64::from(self.points[len - 1])
            } else {
                p - u64::from(self.points[i - 1])
            };
            owned[self.owners[i] as usize] += arc;
        }
        owned
            .into_iter()
            .map(|o| o as f64 / (1u64 << 32) as f64)
            .collect()
    }
}

/// Four points from one md5 digest: bytes 4h..4h+4, little-endian.
fn md5_points(s: &str, owner: u32, cont: &mut Vec<(u32, u32)>) {
    let d = md5_digest(s.as_bytes());
    for h in 0..4 {
        let p = u32::from_le_bytes([d[4 * h], d[4 * h + 1], d[4 * h + 2], d[4 * h + 3]]);
        cont.push((p, owner));
    }
}

/// libmemcached `update_continuum()` in weighted-ketama mode, which twemproxy's
/// `ketama_update()` copies: each live server gets
/// `floor(pct * points / 4 * live + 1e-10) * 4` points, computed in `float`
/// (the rounding matters: it decides how many points a server gets), from md5
/// of `"<identity>-<i>"`, `i` counting from 0.  Weight-0 backends are left out
/// like ejected servers.
fn weighted_ketama(
    points: u32,
    backends: &[Backend],
    cont: &mut Vec<(u32, u32)>,
) -> Result<(), Error> {
    let live = backends.iter().filter(|b| b.weight > 0).count();
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    for (idx, b) in backends.iter().enumerate() {
        if b.weight == 0 {
            continue;
        }
        let pct = b.weight as f32 / total as f32;
        let per_server = ((pct * points as f32 / 4.0 * live as f32 + 0.000_000_000_1_f32).floor()
            as u32)
            .saturating_mul(4);
        check_size(cont.len() as u64 + u64::from(per_server))?;
        let ident = HostPort::parse(&b.name).ketama_identity();
        for i in 0..per_server / 4 {
            md5_points(&format!("{ident}-{i}"), idx as u32, cont);
        }
    }
    Ok(())
}

/// memcached proxy `ketama_new()`: `obuckets` points per server (we scale by
/// weight; weight 1 is upstream's behaviour, which has no weights).
fn proxy_ring(
    mode: RingMode,
    points: u32,
    backends: &[Backend],
    cont: &mut Vec<(u32, u32)>,
) -> Result<(), Error> {
    for (idx, b) in backends.iter().enumerate() {
        let count = u64::from(points) * u64::from(b.weight);
        check_size(cont.len() as u64 + count)?;
        let hp = HostPort::parse(&b.name);
        let (addr, port) = (hp.host, hp.port_or_default());
        let owner = idx as u32;
        match mode {
            RingMode::McproxyDefault => {
                // Upstream forgets to advance its cursor here (every point
                // overwrites one slot); we build the evident intent.
                for k in 0..count {
                    let s = format!("{addr}:{port}-{k}");
                    let p = xxhash_rust::xxh3::xxh3_64(s.as_bytes()) as u32;
                    cont.push((p, owner));
                }
            }
            RingMode::McproxyKetama => {
                for k in 0..count / 4 {
                    md5_points(&format!("{addr}:{port}-{k}"), owner, cont);
                }
            }
            RingMode::McproxyTwemproxy => {
                for k in 0..count / 4 {
                    let s = if port == "11211" {
                        format!("{addr}-{k}")
                    } else {
                        format!("{addr}:{port}-{k}")
                    };
                    md5_points(&s, owner, cont);
                }
            }
            RingMode::McproxyEvcache => {
                for k in 0..count / 4 {
                    md5_points(&format!("{addr}/{addr}:{port}-{k}"), owner, cont);
                }
            }
            RingMode::Libmemcached | RingMode::Twemproxy => {
                unreachable!("handled by weighted_ketama")
            }
        }
    }
    Ok(())
}

fn check_size(total: u64) -> Result<(), Error> {
    if total > MAX_TOTAL_POINTS {
        Err(Error::TooManyPoints(total))
    } else {
        Ok(())
    }
}

// A summary: the derived Debug would print every slot/point.
impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("points", &self.points.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        let hp = HostPort::parse("127.0.0.1:11211");
        assert_eq!((hp.host, hp.port), ("127.0.0.1", Some("11211")));
        assert_eq!(hp.ketama_identity(), "127.0.0.1");
        assert_eq!(
            HostPort::parse("10.0.0.6:22122").ketama_identity(),
            "10.0.0.6:22122"
        );
        assert_eq!(HostPort::parse("alpha").ketama_identity(), "alpha");
        assert_eq!(HostPort::parse("alpha").port_or_default(), "11211");
        let v6 = HostPort::parse("[::1]:11212");
        assert_eq!((v6.host, v6.port), ("::1", Some("11212")));
        assert_eq!(HostPort::parse("::1").port, None);
    }

    #[test]
    fn libmemcached_point_counts() {
        let backends: Vec<Backend> = (0..7)
            .map(|i| Backend::new(format!("10.0.0.{i}:11211")))
            .collect();
        let ring = Ring::new(RingMode::Libmemcached, DEFAULT_POINTS, &backends).unwrap();
        assert_eq!(ring.points.len(), 7 * 160);
        let weighted = [Backend::with_weight("a", 1), Backend::with_weight("b", 3)];
        let ring = Ring::new(RingMode::Libmemcached, DEFAULT_POINTS, &weighted).unwrap();
        // pct 0.25 -> floor(0.25*40*2)*4 = 80, pct 0.75 -> 240.
        assert_eq!(ring.points.len(), 320);
    }

    #[test]
    fn shares_sum_to_one() {
        let backends: Vec<Backend> = (0..5).map(|i| Backend::new(format!("h{i}:1"))).collect();
        let ring = Ring::new(RingMode::McproxyKetama, 40, &backends).unwrap();
        let total: f64 = ring.shares(5).iter().sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
