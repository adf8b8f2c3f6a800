//! Deterministic randomness from an injected seed.
//!
//! BLAKE2s in counter mode: each draw hashes the seed and a counter. Enough for
//! transaction ids, disco nonces, WireGuard indices and timer jitter, and it
//! makes a simulation replay byte for byte from its seed.

use blake2::{Blake2s256, Digest};

/// A seeded random source.
#[derive(Clone)]
pub(crate) struct Rng {
    seed: [u8; 32],
    counter: u64,
    pool: [u8; 32],
    used: usize,
}

impl Rng {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            counter: 0,
            pool: [0; 32],
            used: 32,
        }
    }

    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == self.pool.len() {
                let mut h = Blake2s256::new();
                h.update(self.seed);
                h.update(self.counter.to_le_bytes());
                self.counter += 1;
                self.pool.copy_from_slice(&h.finalize());
                self.used = 0;
            }
            *b = self.pool[self.used];
            self.used += 1;
        }
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.fill(&mut b);
        b
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }

    /// Uniform-enough value in `[lo, hi)`; `lo` if the range is empty.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.u64() % (hi - lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let mut a = Rng::new([1; 32]);
        let mut b = Rng::new([1; 32]);
        let mut c = Rng::new([2; 32]);
        let (x, y, z): ([u8; 40], [u8; 40], [u8; 40]) = (a.bytes(), b.bytes(), c.bytes());
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert!((10..20).contains(&a.range(10, 20)));
    }
}
