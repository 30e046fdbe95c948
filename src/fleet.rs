//! `memroute fleet-check HOST:PORT ...`: asks running proxies over the
//! memcached text protocol (`stats`, `stats backends`) whether they run the
//! same configuration and see the same backends healthy, and says which
//! proxy differs and how.
//!
//! Exit codes (docs/operations.md, "Fleet agreement"): 0 every proxy agrees,
//! 1 configuration digests differ, 3 configurations agree but membership
//! differs, 4 a proxy could not be read (unreachable, timed out, or not a
//! memroute that answers `config_digest`). When several apply, 4 wins over
//! 1, and 1 over 3. (2 is left to command-line errors.)

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Exit code: every proxy agrees.
pub const AGREE: u8 = 0;
/// Exit code: configuration digests differ.
pub const CONFIG_DIFFERS: u8 = 1;
/// Exit code: configurations agree, the healthy backends do not.
pub const MEMBERSHIP_DIFFERS: u8 = 3;
/// Exit code: a proxy could not be read.
pub const UNREACHABLE: u8 = 4;

/// What one proxy reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub config_digest: String,
    pub membership_digest: String,
    /// Every backend as `label/host:port`, with its state (`healthy`,
    /// `bad`, `down`) and how many workers see it bad.
    pub backends: BTreeMap<String, (String, u64)>,
}

impl Report {
    /// The backends this proxy sees healthy on every worker.
    fn healthy(&self) -> BTreeSet<&str> {
        self.backends
            .iter()
            .filter(|(_, (state, bad))| state == "healthy" && *bad == 0)
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// A text-protocol conversation with bounded time: `timeout` for the
/// connect and for each read and write, and twice that for everything.
struct Conn {
    reader: BufReader<TcpStream>,
    deadline: Instant,
}

impl Conn {
    fn open(addr: &str, timeout: Duration) -> Result<Conn, String> {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve: {e}"))?
            .collect();
        let mut last = "resolves to no address".to_string();
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(timeout))
                        .and_then(|()| stream.set_write_timeout(Some(timeout)))
                        .map_err(|e| e.to_string())?;
                    let _ = stream.set_nodelay(true);
                    return Ok(Conn {
                        reader: BufReader::new(stream),
                        deadline: Instant::now() + timeout * 2,
                    });
                }
                Err(e) => last = format!("cannot connect: {e}"),
            }
        }
        Err(last)
    }

    /// `stats [args]` as (name, value) pairs, in order.
    fn stats(&mut self, args: &str) -> Result<Vec<(String, String)>, String> {
        let command = if args.is_empty() {
            "stats\r\n".to_string()
        } else {
            format!("stats {args}\r\n")
        };
        self.reader
            .get_mut()
            .write_all(command.as_bytes())
            .map_err(|e| format!("cannot send `{}`: {e}", command.trim_end()))?;
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            if Instant::now() > self.deadline {
                return Err(format!("`{}` took too long", command.trim_end()));
            }
            line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("reading `{}`: {e}", command.trim_end()))?;
            if n == 0 {
                return Err(format!("closed during `{}`", command.trim_end()));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if text == "END" {
                return Ok(out);
            }
            let mut parts = text.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("STAT"), Some(name), Some(value)) => {
                    out.push((name.to_string(), value.to_string()));
                }
                _ => return Err(format!("`{}` answered {text:?}", command.trim_end())),
            }
        }
    }
}

/// Reads one proxy's digests and backends.
pub fn fetch(addr: &str, timeout: Duration) -> Result<Report, String> {
    let mut conn = Conn::open(addr, timeout)?;
    let general: BTreeMap<String, String> = conn.stats("")?.into_iter().collect();
    let config_digest = general
        .get("config_digest")
        .cloned()
        .ok_or("`stats` has no config_digest: not a memroute with fleet agreement")?;
    let membership_digest = general
        .get("membership_digest")
        .cloned()
        .unwrap_or_else(|| "none".into());
    // `stats backends`: `<name>:<field> value`, where the name (a label, or
    // label@host:port) may itself hold colons; fields do not.
    let mut fields: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (key, value) in conn.stats("backends")? {
        if let Some((name, field)) = key.rsplit_once(':') {
            fields
                .entry(name.to_string())
                .or_default()
                .insert(field.to_string(), value);
        }
    }
    let mut backends = BTreeMap::new();
    for (name, f) in fields {
        let label = name.split_once('@').map_or(name.as_str(), |(l, _)| l);
        let address = f.get("address").cloned().unwrap_or_default();
        let state = f.get("state").cloned().unwrap_or_else(|| "unknown".into());
        let bad = f
            .get("bad_workers")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        backends.insert(format!("{label}/{address}"), (state, bad));
    }
    Ok(Report {
        config_digest,
        membership_digest,
        backends,
    })
}

/// The reference the others are compared with: the value most proxies
/// hold; on a tie the one with the highest `rank`, then the first proxy's.
fn majority<'a>(values: impl Iterator<Item = (&'a str, usize)>) -> Option<&'a str> {
    let values: Vec<(&str, usize)> = values.collect();
    let mut best: Option<(&str, usize, usize)> = None;
    for &(v, rank) in &values {
        let count = values.iter().filter(|(w, _)| *w == v).count();
        if best.is_none_or(|(_, c, r)| (count, rank) > (c, r)) {
            best = Some((v, count, rank));
        }
    }
    best.map(|(v, _, _)| v)
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "-".into()
    } else {
        names.join(", ")
    }
}

/// The table and diff for `results` (in the order the proxies were given)
/// and the exit code.
pub fn compare(results: &[(String, Result<Report, String>)]) -> (String, u8) {
    let mut out = String::new();
    let width = results
        .iter()
        .map(|(a, _)| a.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let _ = writeln!(
        out,
        "{:<width$}  {:<16}  {:<16}  HEALTHY",
        "PROXY", "CONFIG_DIGEST", "MEMBERSHIP"
    );
    for (addr, result) in results {
        match result {
            Ok(r) => {
                let healthy = r.healthy().len();
                let _ = writeln!(
                    out,
                    "{addr:<width$}  {:<16}  {:<16}  {healthy}/{}",
                    r.config_digest,
                    r.membership_digest,
                    r.backends.len()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "{addr:<width$}  UNREACHABLE: {e}");
            }
        }
    }
    let read: Vec<(&str, &Report)> = results
        .iter()
        .filter_map(|(a, r)| r.as_ref().ok().map(|r| (a.as_str(), r)))
        .collect();
    let unreachable = read.len() < results.len();

    // Configuration: the majority digest is the reference; a proxy that
    // differs is shown with the backends it has that the reference has
    // not, and the other way round.
    let mut config_differs = false;
    if let Some(reference) = majority(read.iter().map(|(_, r)| (r.config_digest.as_str(), 0))) {
        let (ref_addr, ref_report) = read
            .iter()
            .find(|(_, r)| r.config_digest == reference)
            .copied()
            .expect("the majority digest is some proxy's");
        let ref_names: BTreeSet<&str> = ref_report.backends.keys().map(String::as_str).collect();
        for (addr, r) in &read {
            if r.config_digest == reference {
                continue;
            }
            if !config_differs {
                let _ = writeln!(
                    out,
                    "\nconfiguration differs (reference: {ref_addr}, config_digest {reference}):"
                );
                config_differs = true;
            }
            let names: BTreeSet<&str> = r.backends.keys().map(String::as_str).collect();
            let only: Vec<&str> = names.difference(&ref_names).copied().collect();
            let missing: Vec<&str> = ref_names.difference(&names).copied().collect();
            let _ = writeln!(out, "  {addr}: config_digest {}", r.config_digest);
            if only.is_empty() && missing.is_empty() {
                let _ = writeln!(
                    out,
                    "    same backends as {ref_addr}: the startfile or pool layout differs"
                );
            } else {
                let _ = writeln!(out, "    backends only here:     {}", list(&only));
                let _ = writeln!(out, "    backends missing here:  {}", list(&missing));
            }
        }
    }

    // Membership: the same, with the backends seen healthy; on a tie the
    // proxy that sees the most backends healthy is the reference.
    let mut membership_differs = false;
    if let Some(reference) = majority(
        read.iter()
            .map(|(_, r)| (r.membership_digest.as_str(), r.healthy().len())),
    ) {
        let (ref_addr, ref_report) = read
            .iter()
            .find(|(_, r)| r.membership_digest == reference)
            .copied()
            .expect("the majority digest is some proxy's");
        let ref_healthy = ref_report.healthy();
        for (addr, r) in &read {
            if r.membership_digest == reference {
                continue;
            }
            if !membership_differs {
                let _ = writeln!(
                    out,
                    "\nmembership differs (reference: {ref_addr}, membership_digest {reference}):"
                );
                membership_differs = true;
            }
            let healthy = r.healthy();
            let not_healthy: Vec<String> = ref_healthy
                .difference(&healthy)
                .map(|name| match r.backends.get(*name) {
                    Some((state, bad)) if state == "healthy" => {
                        format!("{name} (bad on {bad} workers)")
                    }
                    Some((state, _)) => format!("{name} ({state})"),
                    None => format!("{name} (not configured)"),
                })
                .collect();
            let only: Vec<&str> = healthy.difference(&ref_healthy).copied().collect();
            let _ = writeln!(out, "  {addr}: membership_digest {}", r.membership_digest);
            let names: Vec<&str> = not_healthy.iter().map(String::as_str).collect();
            let _ = writeln!(out, "    not healthy here:       {}", list(&names));
            let _ = writeln!(out, "    healthy only here:      {}", list(&only));
        }
    }

    let code = if unreachable {
        let _ = writeln!(out, "\nresult: a proxy could not be read");
        UNREACHABLE
    } else if config_differs {
        let _ = writeln!(out, "\nresult: configuration differs");
        CONFIG_DIFFERS
    } else if membership_differs {
        let _ = writeln!(out, "\nresult: membership differs");
        MEMBERSHIP_DIFFERS
    } else {
        let _ = writeln!(out, "\nresult: all {} proxies agree", results.len());
        AGREE
    };
    (out, code)
}

/// Runs the check: reads every proxy (one thread each, so an unreachable
/// one costs one timeout, not one per proxy) and compares.
pub fn run(proxies: &[String], timeout: Duration) -> (String, u8) {
    let handles: Vec<_> = proxies
        .iter()
        .map(|addr| {
            let addr = addr.clone();
            std::thread::spawn(move || fetch(&addr, timeout))
        })
        .collect();
    let results: Vec<(String, Result<Report, String>)> = proxies
        .iter()
        .zip(handles)
        .map(|(addr, h)| {
            let result = h
                .join()
                .unwrap_or_else(|_| Err("the check's thread panicked".into()));
            (addr.clone(), result)
        })
        .collect();
    compare(&results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(config: &str, backends: &[(&str, &str, u64)]) -> Report {
        let backends: BTreeMap<String, (String, u64)> = backends
            .iter()
            .map(|(n, s, b)| (n.to_string(), (s.to_string(), *b)))
            .collect();
        let healthy: Vec<&str> = backends
            .iter()
            .filter(|(_, (s, b))| s == "healthy" && *b == 0)
            .map(|(n, _)| n.as_str())
            .collect();
        Report {
            config_digest: config.into(),
            membership_digest: memroute_runtime::metrics::membership_digest(&healthy),
            backends,
        }
    }

    const B1: &str = "b1/127.0.0.1:1";
    const B2: &str = "b2/127.0.0.1:2";
    const B3: &str = "b2/127.0.0.1:3";

    #[test]
    fn agreement_and_each_disagreement() {
        let ok = || report("aaaa", &[(B1, "healthy", 0), (B2, "healthy", 0)]);
        let (text, code) = compare(&[("p1".into(), Ok(ok())), ("p2".into(), Ok(ok()))]);
        assert_eq!(code, AGREE, "{text}");
        assert!(text.contains("all 2 proxies agree"), "{text}");

        let other = report("bbbb", &[(B1, "healthy", 0), (B3, "healthy", 0)]);
        let (text, code) = compare(&[
            ("p1".into(), Ok(ok())),
            ("p2".into(), Ok(ok())),
            ("p3".into(), Ok(other)),
        ]);
        assert_eq!(code, CONFIG_DIFFERS, "{text}");
        assert!(text.contains("p3: config_digest bbbb"), "{text}");
        assert!(
            text.contains(&format!("backends only here:     {B3}")),
            "{text}"
        );
        assert!(
            text.contains(&format!("backends missing here:  {B2}")),
            "{text}"
        );

        let sick = report("aaaa", &[(B1, "healthy", 0), (B2, "bad", 1)]);
        let (text, code) = compare(&[
            ("p1".into(), Ok(ok())),
            ("p2".into(), Ok(sick)),
            ("p3".into(), Ok(ok())),
        ]);
        assert_eq!(code, MEMBERSHIP_DIFFERS, "{text}");
        assert!(text.contains("p2: membership_digest"), "{text}");
        assert!(text.contains(&format!("{B2} (bad)")), "{text}");

        let (text, code) = compare(&[
            ("p1".into(), Ok(ok())),
            ("p2".into(), Err("cannot connect: refused".into())),
        ]);
        assert_eq!(code, UNREACHABLE, "{text}");
        assert!(
            text.contains("p2") && text.contains("UNREACHABLE"),
            "{text}"
        );
    }

    #[test]
    fn the_majority_is_the_reference() {
        assert_eq!(
            majority([("a", 0), ("b", 0), ("b", 0)].into_iter()),
            Some("b")
        );
        assert_eq!(majority([("a", 0), ("b", 0)].into_iter()), Some("a"));
        // On a tie, the higher rank (more backends healthy) wins.
        assert_eq!(majority([("a", 1), ("b", 2)].into_iter()), Some("b"));
        assert_eq!(
            majority([("a", 1), ("b", 2), ("a", 1)].into_iter()),
            Some("a")
        );
        assert_eq!(majority(std::iter::empty()), None);
    }
}
