//! Modula: `hash % n`, as libmemcached's `MEMCACHED_DISTRIBUTION_MODULA` and
//! twemproxy's `distribution: modula` compute it (PHP-style clients with
//! `crc32`).  Twemproxy honours weights by repeating a server `weight` times
//! in its continuum, so the index is `hash % total_weight` mapped through
//! that layout; with weight 1 everywhere this is plain `hash % n`.
//!
//! Not consistent: going from 3 to 4 backends moves about 3/4 of the keys.
//! Fallbacks are `hash % remaining_weight` over the backends not yet listed,
//! which is where twemproxy sends a key after ejecting the earlier ones.

use super::nth_remaining;
use crate::Backend;

#[derive(Debug, Clone)]
pub(super) struct Modula {
    /// Slot -> backend, when some weight differs from 1.
    slots: Option<Box<[u32]>>,
    total: u64,
}

impl Modula {
    pub(super) fn new(backends: &[Backend]) -> Self {
        if backends.iter().all(|b| b.weight == 1) {
            return Modula {
                slots: None,
                total: backends.len() as u64,
            };
        }
        let slots: Box<[u32]> = backends
            .iter()
            .enumerate()
            .flat_map(|(i, b)| std::iter::repeat_n(i as u32, b.weight as usize))
            .collect();
        Modula {
            total: slots.len() as u64,
            slots: Some(slots),
        }
    }

    #[inline]
    pub(super) fn pick(&self, hash: u64) -> usize {
        let r = hash % self.total;
        match &self.slots {
            None => r as usize,
            Some(s) => s[r as usize] as usize,
        }
    }

    pub(super) fn candidates(
        &self,
        hash: u64,
        limit: usize,
        weights: &[u32],
        out: &mut Vec<usize>,
    ) {
        out.push(self.pick(hash));
        while out.len() < limit {
            let total = super::remaining_weight(weights, out);
            if total == 0 {
                return;
            }
            match nth_remaining(weights, out, hash % total) {
                Some(i) => out.push(i),
                None => return,
            }
        }
    }

    pub(super) fn shares(&self, weights: &[u32]) -> Vec<f64> {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        weights
            .iter()
            .map(|&w| f64::from(w) / total as f64)
            .collect()
    }
}
