//! Rendezvous (highest random weight) hashing (Thaler & Ravishankar, 1998).
//!
//! Every backend scores every key; the highest score wins, and the backends
//! in descending score order are the natural fallback list (removing a
//! backend moves exactly its own keys, each to its second choice).  Scores
//! are `mix64(key_hash ^ xxh3(name))`.  With unequal weights the score is
//! `weight / -ln(u)` with `u` the score mapped into (0, 1) (Schindelhauer &
//! Schomaker's weighted form), which gives each backend a share
//! proportional to its weight; equal weights skip the floating point.
//! Lookup is O(n) in the number of backends: fine for the tens of backends a
//! memcached pool has, use jump or Maglev for hundreds.

use super::mix64;
use crate::Backend;

/// Seed for the backend-name hash (fixed forever).
const NAME_SEED: u64 = 0x7265_6e64_657a_766f; // "rendezvo"

#[derive(Debug, Clone)]
pub(super) struct Rendezvous {
    names: Box<[u64]>,
    /// `Some` when weights differ: the weight of each backend.
    weights: Option<Box<[f64]>>,
}

impl Rendezvous {
    pub(super) fn new(backends: &[Backend]) -> Self {
        let names = backends
            .iter()
            .map(|b| xxhash_rust::xxh3::xxh3_64_with_seed(b.name.as_bytes(), NAME_SEED))
            .collect();
        let first = backends[0].weight;
        let weights = if backends.iter().all(|b| b.weight == first) {
            None
        } else {
            Some(backends.iter().map(|b| f64::from(b.weight)).collect())
        };
        Rendezvous { names, weights }
    }

    /// Score of backend `i` for `hash`; higher wins.  Weight-0 backends score
    /// below everything.
    #[inline]
    fn score(&self, hash: u64, i: usize) -> f64 {
        let raw = mix64(hash ^ self.names[i]);
        match &self.weights {
            None => raw as f64,
            Some(w) if w[i] == 0.0 => f64::NEG_INFINITY,
            Some(w) => {
                // u in (0, 1): the top 53 bits, centred in their interval.
                let u = ((raw >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                w[i] / -u.ln()
            }
        }
    }

    #[inline]
    pub(super) fn pick(&self, hash: u64) -> usize {
        if self.weights.is_none() {
            // Integer comparison: exact, and ties resolve to the lower index.
            let mut best = 0;
            let mut best_score = mix64(hash ^ self.names[0]);
            for i in 1..self.names.len() {
                let s = mix64(hash ^ self.names[i]);
                if s > best_score {
                    best = i;
                    best_score = s;
                }
            }
            return best;
        }
        let mut best = 0;
        let mut best_score = self.score(hash, 0);
        for i in 1..self.names.len() {
            let s = self.score(hash, i);
            if s > best_score {
                best = i;
                best_score = s;
            }
        }
        best
    }

    pub(super) fn candidates(&self, hash: u64, limit: usize, out: &mut Vec<usize>) {
        out.extend(0..self.names.len());
        if self.weights.is_none() {
            out.sort_unstable_by_key(|&i| (std::cmp::Reverse(mix64(hash ^ self.names[i])), i));
        } else {
            out.sort_unstable_by(|&a, &b| {
                self.score(hash, b)
                    .total_cmp(&self.score(hash, a))
                    .then(a.cmp(&b))
            });
            // Weight-0 backends are appended by the caller in index order.
            while out
                .last()
                .is_some_and(|&i| self.score(hash, i) == f64::NEG_INFINITY)
            {
                out.pop();
            }
        }
        out.truncate(limit);
    }
}
