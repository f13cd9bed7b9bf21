//! Version vectors: region → highest row `seq` seen.
//!
//! Inside an event the regions are fixed by the genesis, so the vector is dense and indexed by
//! [`RegionIdx`](crate::RegionIdx); a missing region reads as 0.

use serde::{Deserialize, Serialize};

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// `self` has seen strictly less than `other`.
    Before,
    /// `self` has seen strictly more than `other`.
    After,
    Concurrent,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector(Vec<u64>);

impl VersionVector {
    pub fn new(regions: usize) -> Self {
        VersionVector(vec![0; regions])
    }

    pub fn get(&self, region: usize) -> u64 {
        self.0.get(region).copied().unwrap_or(0)
    }

    /// Raises one entry; entries never go down.
    pub fn observe(&mut self, region: usize, seq: u64) {
        if self.0.len() <= region {
            self.0.resize(region + 1, 0);
        }
        if self.0[region] < seq {
            self.0[region] = seq;
        }
    }

    /// Sets one entry, up or down: for reporting a version other than the one held (a region
    /// reports its own row only as far as it is durable).
    pub fn set(&mut self, region: usize, seq: u64) {
        if self.0.len() <= region {
            self.0.resize(region + 1, 0);
        }
        self.0[region] = seq;
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&s| s == 0)
    }

    pub fn as_slice(&self) -> &[u64] {
        &self.0
    }

    pub fn compare(&self, other: &VersionVector) -> Causality {
        let n = self.0.len().max(other.0.len());
        let (mut less, mut more) = (false, false);
        for i in 0..n {
            let (a, b) = (self.get(i), other.get(i));
            less |= a < b;
            more |= a > b;
        }
        match (less, more) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True when `self` has seen everything `other` has.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Causality::Equal | Causality::After)
    }

    pub fn concurrent(&self, other: &VersionVector) -> bool {
        self.compare(other) == Causality::Concurrent
    }

    /// Pointwise max.
    pub fn merge(&mut self, other: &VersionVector) {
        for (i, &s) in other.0.iter().enumerate() {
            self.observe(i, s);
        }
    }

    /// Σ over regions of how far `self` is ahead of `other`: the number of row versions a peer
    /// at `other` has not seen yet.
    pub fn lag_behind(&self, other: &VersionVector) -> u64 {
        (0..self.0.len())
            .map(|i| self.get(i).saturating_sub(other.get(i)))
            .fold(0u64, u64::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(v: &[u64]) -> VersionVector {
        VersionVector(v.to_vec())
    }

    #[test]
    fn compare_covers_all_four_relations() {
        assert_eq!(vv(&[1, 2]).compare(&vv(&[1, 2])), Causality::Equal);
        assert_eq!(vv(&[1, 2]).compare(&vv(&[1, 3])), Causality::Before);
        assert_eq!(vv(&[2, 2]).compare(&vv(&[1, 2])), Causality::After);
        assert_eq!(vv(&[2, 1]).compare(&vv(&[1, 2])), Causality::Concurrent);
        assert!(vv(&[2, 1]).concurrent(&vv(&[1, 2])));
        assert!(vv(&[2, 2]).dominates(&vv(&[1, 2])));
        assert!(!vv(&[2, 1]).dominates(&vv(&[1, 2])));
        // A shorter vector reads as zeros.
        assert_eq!(vv(&[1]).compare(&vv(&[1, 0])), Causality::Equal);
    }

    #[test]
    fn merge_is_pointwise_max() {
        let mut a = vv(&[3, 1, 0]);
        a.merge(&vv(&[1, 4, 2]));
        assert_eq!(a, vv(&[3, 4, 2]));
        assert_eq!(a.lag_behind(&vv(&[3, 0, 0])), 6);
    }
}
