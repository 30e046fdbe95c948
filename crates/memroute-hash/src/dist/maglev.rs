//! Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4).
//!
//! Each backend gets a permutation of the `M` table slots from two hashes of
//! its name (`offset`, `skip`; `M` prime makes every permutation complete).
//! Backends then take turns claiming their next unclaimed preferred slot
//! until the table is full, so every backend owns `M/n` slots, give or take
//! one: a default table of 65537 slots keeps the most/least loaded ratio
//! under 1.01 for up to ~100 backends.  Weights are turns: per round a
//! backend earns `weight` credits and claims one slot per `max_weight`
//! credits, so equal weights give the paper's algorithm exactly.
//!
//! Lookup is `table[hash % M]`.  Fallbacks walk the table forward from the
//! key's slot; neighbouring slots belong to effectively random backends, so a
//! failed backend's keys spread over all the others.

use crate::{Backend, Error};

/// Default table size: the smallest prime above 2^16, as the paper suggests
/// (`M` should be much larger than 100 times the number of backends for
/// balance within 1%).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Seeds for the two backend-name hashes (arbitrary, fixed forever: changing
/// them would move every key).
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// Marks an unclaimed slot while populating.
const EMPTY: u32 = u32::MAX;

#[derive(Clone)]
pub(super) struct Maglev {
    table: Box<[u32]>,
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

impl Maglev {
    pub(super) fn new(table_size: u32, backends: &[Backend]) -> Result<Self, Error> {
        let live = backends.iter().filter(|b| b.weight > 0).count();
        if !is_prime(table_size) || (table_size as usize) < live || table_size == EMPTY {
            return Err(Error::BadTableSize(table_size, backends.len()));
        }
        let m = u64::from(table_size);
        let mut offset = Vec::with_capacity(backends.len());
        let mut skip = Vec::with_capacity(backends.len());
        for b in backends {
            let name = b.name.as_bytes();
            offset.push(xxhash_rust::xxh3::xxh3_64_with_seed(name, OFFSET_SEED) % m);
            skip.push(xxhash_rust::xxh3::xxh3_64_with_seed(name, SKIP_SEED) % (m - 1) + 1);
        }
        let max_weight = u64::from(backends.iter().map(|b| b.weight).max().unwrap_or(1));
        let mut next = vec![0u64; backends.len()];
        let mut credit = vec![0u64; backends.len()];
        let mut table = vec![EMPTY; table_size as usize];
        let mut filled = 0u64;
        'fill: loop {
            for i in 0..backends.len() {
                credit[i] += u64::from(backends[i].weight);
                while credit[i] >= max_weight {
                    credit[i] -= max_weight;
                    // The permutation visits every slot within m steps, so
                    // an unclaimed one is found while the table is not full.
                    loop {
                        let slot = ((offset[i] + next[i] * skip[i]) % m) as usize;
                        next[i] += 1;
                        if table[slot] == EMPTY {
                            table[slot] = i as u32;
                            break;
                        }
                    }
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Ok(Maglev {
            table: table.into(),
        })
    }

    #[inline]
    pub(super) fn pick(&self, hash: u64) -> usize {
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }

    pub(super) fn candidates(&self, hash: u64, limit: usize, out: &mut Vec<usize>) {
        let m = self.table.len();
        let start = (hash % m as u64) as usize;
        for step in 0..m {
            let owner = self.table[(start + step) % m] as usize;
            if !out.contains(&owner) {
                out.push(owner);
                if out.len() == limit {
                    return;
                }
            }
        }
    }

    pub(super) fn shares(&self, n: usize) -> Vec<f64> {
        let mut count = vec![0u64; n];
        for &o in self.table.iter() {
            count[o as usize] += 1;
        }
        let m = self.table.len() as f64;
        count.into_iter().map(|c| c as f64 / m).collect()
    }
}

// A summary: the derived Debug would print every slot/point.
impl std::fmt::Debug for Maglev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maglev")
            .field("table", &self.table.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65_537));
        assert!(is_prime(251));
        assert!(!is_prime(65_536));
        assert!(!is_prime(1));
    }

    #[test]
    fn table_size_checked() {
        let b = [
            Backend::new("a:1"),
            Backend::new("b:1"),
            Backend::new("c:1"),
        ];
        assert!(Maglev::new(65_536, &b).is_err());
        assert!(Maglev::new(2, &b).is_err());
        assert!(Maglev::new(3, &b).is_ok());
    }

    #[test]
    fn weights_scale_slots() {
        let b = [
            Backend::with_weight("a:1", 1),
            Backend::with_weight("b:1", 3),
        ];
        let m = Maglev::new(DEFAULT_TABLE_SIZE, &b).unwrap();
        let s = m.shares(2);
        assert!((s[0] - 0.25).abs() < 0.001, "{s:?}");
    }
}
