//! Jump consistent hash (Lamping & Veach, "A Fast, Minimal Memory, Consistent
//! Hash Algorithm", 2014), the same loop as memcached proxy's
//! `mcp.dist_jump_hash`, so a pool moved from the proxy with the same key hash
//! (XXH3, seed 0) keeps its placement.
//!
//! Jump has no notion of weight.  Weights are honoured by giving a backend
//! `weight / gcd(weights)` consecutive buckets (equal weights therefore give
//! plain jump).  Like plain jump, this is minimally disruptive when backends
//! are appended at the end of the list; removing or reweighting a backend in
//! the middle renumbers the buckets after it.

use super::{mix64, nth_remaining, remaining_weight};
use crate::Backend;

#[derive(Debug, Clone)]
pub(super) struct Jump {
    /// Normalized weights (divided by their gcd).
    weights: Box<[u32]>,
    /// Bucket -> backend, when weights are not all equal.
    slots: Option<Box<[u32]>>,
    buckets: u64,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The jump consistent hash loop: a bucket in `0..buckets` (`buckets >= 1`).
#[inline]
pub(crate) fn jump(mut key: u64, buckets: u64) -> u64 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while (j as u64) < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u64
}

impl Jump {
    pub(super) fn new(backends: &[Backend]) -> Self {
        let g = backends.iter().fold(0, |g, b| gcd(g, b.weight));
        let weights: Box<[u32]> = backends.iter().map(|b| b.weight / g).collect();
        if weights.iter().all(|&w| w == 1) {
            return Jump {
                buckets: weights.len() as u64,
                weights,
                slots: None,
            };
        }
        let slots: Box<[u32]> = weights
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| std::iter::repeat_n(i as u32, w as usize))
            .collect();
        Jump {
            buckets: slots.len() as u64,
            weights,
            slots: Some(slots),
        }
    }

    #[inline]
    pub(super) fn pick(&self, hash: u64) -> usize {
        let b = jump(hash, self.buckets);
        match &self.slots {
            None => b as usize,
            Some(s) => s[b as usize] as usize,
        }
    }

    /// Fallback k jumps over the remaining backends' buckets with a re-mixed
    /// hash: uniform over the others, weighted, no retries, no allocation.
    pub(super) fn candidates(&self, hash: u64, limit: usize, out: &mut Vec<usize>) {
        out.push(self.pick(hash));
        let mut k = 1u64;
        while out.len() < limit {
            let total = remaining_weight(&self.weights, out);
            if total == 0 {
                return;
            }
            let h = mix64(hash ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            match nth_remaining(&self.weights, out, jump(h, total)) {
                Some(i) => out.push(i),
                None => return,
            }
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // Values from the paper's reference implementation (Go / C++ ports).
        assert_eq!(jump(0, 1), 0);
        assert_eq!(jump(1, 2), 0);
        assert_eq!(jump(0xdead_beef, 100), jump(0xdead_beef, 100));
        for n in 1..50 {
            assert!(jump(12_345_678_901, n) < n);
        }
    }

    #[test]
    fn equal_weights_are_plain_jump() {
        let b: Vec<Backend> = (0..5)
            .map(|i| Backend::with_weight(format!("h{i}"), 3))
            .collect();
        let j = Jump::new(&b);
        assert!(j.slots.is_none());
        for h in 0..1000u64 {
            assert_eq!(
                j.pick(h.wrapping_mul(0x9e37_79b9_7f4a_7c15)) as u64,
                jump(h.wrapping_mul(0x9e37_79b9_7f4a_7c15), 5)
            );
        }
    }
}
