//! The genesis of an event: what never changes, content-hashed.
//!
//! A genesis is written once, by the catalog region, and identified by the SHA-256 of its
//! postcard encoding. Every ledger delta carries that hash, so a row can never be applied to an
//! event it was not written for, and two partitioned regions can never hold two different events
//! under one id without noticing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{valid_id, PoolIdx, RegionIdx, SeatIdx};

pub const MAX_ID_LEN: usize = 64;
pub const MAX_REGIONS: usize = 32;
pub const MAX_POOLS: usize = 64;
pub const MAX_SEATS_PER_POOL: usize = 100_000;
/// A general-admission pool's capacity is bounded so sums over regions never overflow.
pub const MAX_CAPACITY: u64 = 1 << 40;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GenesisHash(pub [u8; 32]);

impl fmt::Debug for GenesisHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GenesisHash({self})")
    }
}

impl fmt::Display for GenesisHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolKind {
    /// General admission: `capacity` interchangeable places.
    General { capacity: u64 },
    /// Assigned seating: the seat ids, in the order blocks are handed out.
    Assigned { seats: Vec<String> },
}

/// A pool as an operator describes it, before allotment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub id: String,
    pub kind: PoolKind,
}

/// How a pool's capacity is split among regions at genesis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allotments {
    /// Floor division; the remainder goes one unit each to the first regions in config order.
    Even,
    /// pool → region → initial quota; every pool and region must be listed.
    Explicit(BTreeMap<String, BTreeMap<String, u64>>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolGenesis {
    pub id: String,
    pub kind: PoolKind,
    /// Initial quota of each region, indexed by [`RegionIdx`]. For assigned pools region `r`
    /// initially owns the contiguous block of seats after those of regions `0..r`.
    pub initial: Vec<u64>,
}

impl PoolGenesis {
    pub fn capacity(&self) -> u64 {
        match &self.kind {
            PoolKind::General { capacity } => *capacity,
            PoolKind::Assigned { seats } => seats.len() as u64,
        }
    }

    pub fn is_assigned(&self) -> bool {
        matches!(self.kind, PoolKind::Assigned { .. })
    }

    pub fn seat_count(&self) -> usize {
        match &self.kind {
            PoolKind::General { .. } => 0,
            PoolKind::Assigned { seats } => seats.len(),
        }
    }

    pub fn seat_id(&self, seat: SeatIdx) -> Option<&str> {
        match &self.kind {
            PoolKind::General { .. } => None,
            PoolKind::Assigned { seats } => seats.get(seat as usize).map(String::as_str),
        }
    }

    /// The region owning `seat` at epoch 0.
    pub fn initial_owner(&self, seat: SeatIdx) -> RegionIdx {
        let mut end = 0u64;
        for (r, &n) in self.initial.iter().enumerate() {
            end += n;
            if (seat as u64) < end {
                return r as RegionIdx;
            }
        }
        unreachable!("Σ initial = capacity is checked at genesis")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub id: String,
    pub currency: String,
    pub regions: Vec<String>,
    pub pools: Vec<PoolGenesis>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    #[error("invalid id {0:?}: 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 - _ .")]
    InvalidId(String),
    #[error("currency must be a three-letter ISO 4217 code, got {0:?}")]
    InvalidCurrency(String),
    #[error("an event needs 1-{MAX_REGIONS} regions")]
    RegionCount,
    #[error("region {0:?} is listed twice")]
    DuplicateRegion(String),
    #[error("an event needs 1-{MAX_POOLS} pools")]
    PoolCount,
    #[error("pool {0:?} is listed twice")]
    DuplicatePool(String),
    #[error("pool {pool:?}: capacity must be 1-{MAX_CAPACITY}")]
    Capacity { pool: String },
    #[error("pool {pool:?}: 1-{MAX_SEATS_PER_POOL} seats")]
    SeatCount { pool: String },
    #[error("pool {pool:?}: seat {seat:?} is listed twice")]
    DuplicateSeat { pool: String, seat: String },
    #[error("allotments name unknown region {0:?}")]
    UnknownRegion(String),
    #[error("allotments name unknown pool {0:?}")]
    UnknownPool(String),
    #[error("allotments miss pool {0:?}")]
    MissingPool(String),
    #[error("pool {pool:?}: allotments sum to {sum}, capacity is {capacity}")]
    WrongSum {
        pool: String,
        sum: u64,
        capacity: u64,
    },
}

fn check_id(id: &str) -> Result<(), GenesisError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(GenesisError::InvalidId(id.to_owned()))
    }
}

impl Genesis {
    /// Builds and validates a genesis. `regions` is the cluster's region list in config order,
    /// which decides who gets the remainder of an `even` split.
    pub fn build(
        id: &str,
        currency: &str,
        regions: &[String],
        pools: Vec<PoolSpec>,
        allotments: &Allotments,
    ) -> Result<Genesis, GenesisError> {
        let mut out = Vec::with_capacity(pools.len());
        for spec in pools {
            let capacity = match &spec.kind {
                PoolKind::General { capacity } => *capacity,
                PoolKind::Assigned { seats } => seats.len() as u64,
            };
            let initial = match allotments {
                Allotments::Even => {
                    let n = regions.len().max(1) as u64;
                    (0..regions.len() as u64)
                        .map(|i| capacity / n + u64::from(i < capacity % n))
                        .collect()
                }
                Allotments::Explicit(map) => {
                    let per = map
                        .get(&spec.id)
                        .ok_or_else(|| GenesisError::MissingPool(spec.id.clone()))?;
                    if let Some(r) = per.keys().find(|r| !regions.contains(r)) {
                        return Err(GenesisError::UnknownRegion(r.clone()));
                    }
                    regions
                        .iter()
                        .map(|r| per.get(r).copied().unwrap_or(0))
                        .collect()
                }
            };
            out.push(PoolGenesis {
                id: spec.id,
                kind: spec.kind,
                initial,
            });
        }
        if let Allotments::Explicit(map) = allotments {
            if let Some(p) = map.keys().find(|p| !out.iter().any(|g| &g.id == *p)) {
                return Err(GenesisError::UnknownPool(p.clone()));
            }
        }
        let g = Genesis {
            id: id.to_owned(),
            currency: currency.to_owned(),
            regions: regions.to_vec(),
            pools: out,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks every rule a genesis must satisfy; applied to every genesis received from a peer.
    pub fn validate(&self) -> Result<(), GenesisError> {
        check_id(&self.id)?;
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(GenesisError::InvalidCurrency(self.currency.clone()));
        }
        if self.regions.is_empty() || self.regions.len() > MAX_REGIONS {
            return Err(GenesisError::RegionCount);
        }
        let mut seen = BTreeSet::new();
        for r in &self.regions {
            check_id(r)?;
            if !seen.insert(r) {
                return Err(GenesisError::DuplicateRegion(r.clone()));
            }
        }
        if self.pools.is_empty() || self.pools.len() > MAX_POOLS {
            return Err(GenesisError::PoolCount);
        }
        let mut pools = BTreeSet::new();
        for p in &self.pools {
            check_id(&p.id)?;
            if !pools.insert(&p.id) {
                return Err(GenesisError::DuplicatePool(p.id.clone()));
            }
            match &p.kind {
                PoolKind::General { capacity } => {
                    if *capacity == 0 || *capacity > MAX_CAPACITY {
                        return Err(GenesisError::Capacity { pool: p.id.clone() });
                    }
                }
                PoolKind::Assigned { seats } => {
                    if seats.is_empty() || seats.len() > MAX_SEATS_PER_POOL {
                        return Err(GenesisError::SeatCount { pool: p.id.clone() });
                    }
                    let mut ids = BTreeSet::new();
                    for s in seats {
                        check_id(s)?;
                        if !ids.insert(s) {
                            return Err(GenesisError::DuplicateSeat {
                                pool: p.id.clone(),
                                seat: s.clone(),
                            });
                        }
                    }
                }
            }
            let sum = p.initial.iter().try_fold(0u64, |a, &b| a.checked_add(b));
            if p.initial.len() != self.regions.len() || sum != Some(p.capacity()) {
                return Err(GenesisError::WrongSum {
                    pool: p.id.clone(),
                    sum: sum.unwrap_or(u64::MAX),
                    capacity: p.capacity(),
                });
            }
        }
        Ok(())
    }

    /// SHA-256 over the postcard encoding. Every collection in a genesis is a sequence in a
    /// fixed order, so the encoding, hence the hash, is canonical.
    pub fn hash(&self) -> GenesisHash {
        let bytes = postcard::to_stdvec(self).expect("a genesis always encodes");
        GenesisHash(Sha256::digest(&bytes).into())
    }

    pub fn region_index(&self, name: &str) -> Option<RegionIdx> {
        self.regions
            .iter()
            .position(|r| r == name)
            .map(|i| i as RegionIdx)
    }

    pub fn pool_index(&self, id: &str) -> Option<PoolIdx> {
        self.pools
            .iter()
            .position(|p| p.id == id)
            .map(|i| i as PoolIdx)
    }

    pub fn pool(&self, pool: PoolIdx) -> &PoolGenesis {
        &self.pools[pool as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<String> {
        ["eu-west", "us-east", "ap-south"]
            .map(String::from)
            .to_vec()
    }

    fn ga(id: &str, capacity: u64) -> PoolSpec {
        PoolSpec {
            id: id.into(),
            kind: PoolKind::General { capacity },
        }
    }

    fn seats(id: &str, ids: &[&str]) -> PoolSpec {
        PoolSpec {
            id: id.into(),
            kind: PoolKind::Assigned {
                seats: ids.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    #[test]
    fn even_split_gives_the_remainder_in_config_order() {
        let g = Genesis::build(
            "e",
            "EUR",
            &regions(),
            vec![ga("floor", 3001), ga("x", 2)],
            &Allotments::Even,
        )
        .unwrap();
        assert_eq!(g.pools[0].initial, vec![1001, 1000, 1000]);
        assert_eq!(g.pools[1].initial, vec![1, 1, 0]);
    }

    #[test]
    fn seats_go_out_in_contiguous_blocks() {
        let g = Genesis::build(
            "e",
            "EUR",
            &regions(),
            vec![seats("stalls", &["A-1", "A-2", "A-3", "A-4"])],
            &Allotments::Even,
        )
        .unwrap();
        let p = &g.pools[0];
        assert_eq!(p.initial, vec![2, 1, 1]);
        let owners: Vec<_> = (0..4).map(|s| p.initial_owner(s)).collect();
        assert_eq!(owners, vec![0, 0, 1, 2]);
    }

    #[test]
    fn a_seat_listed_twice_is_refused() {
        let err = Genesis::build(
            "e",
            "EUR",
            &regions(),
            vec![seats("s", &["A-1", "A-1"])],
            &Allotments::Even,
        )
        .unwrap_err();
        assert!(matches!(err, GenesisError::DuplicateSeat { .. }));
    }

    #[test]
    fn explicit_allotments_must_sum_and_name_known_things() {
        let mk = |pairs: &[(&str, &str, u64)]| {
            let mut m: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for (p, r, n) in pairs {
                m.entry(p.to_string())
                    .or_default()
                    .insert(r.to_string(), *n);
            }
            Genesis::build(
                "e",
                "EUR",
                &regions(),
                vec![ga("floor", 10)],
                &Allotments::Explicit(m),
            )
        };
        assert_eq!(
            mk(&[("floor", "eu-west", 7), ("floor", "ap-south", 3)])
                .unwrap()
                .pools[0]
                .initial,
            vec![7, 0, 3]
        );
        assert!(matches!(
            mk(&[("floor", "eu-west", 9)]),
            Err(GenesisError::WrongSum { sum: 9, .. })
        ));
        assert!(matches!(
            mk(&[("floor", "mars", 10)]),
            Err(GenesisError::UnknownRegion(_))
        ));
        assert!(matches!(
            mk(&[("floor", "eu-west", 10), ("vip", "eu-west", 0)]),
            Err(GenesisError::UnknownPool(_))
        ));
        assert!(matches!(mk(&[]), Err(GenesisError::MissingPool(_))));
    }

    #[test]
    fn hash_is_content_addressed() {
        let a = Genesis::build(
            "e",
            "EUR",
            &regions(),
            vec![ga("floor", 10)],
            &Allotments::Even,
        )
        .unwrap();
        let mut b = a.clone();
        assert_eq!(a.hash(), b.hash());
        b.pools[0].initial = vec![5, 3, 2];
        assert_eq!(b.validate(), Ok(()));
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn bad_ids_and_currency_are_refused() {
        assert!(matches!(
            Genesis::build(
                "bad id",
                "EUR",
                &regions(),
                vec![ga("f", 1)],
                &Allotments::Even
            ),
            Err(GenesisError::InvalidId(_))
        ));
        assert!(matches!(
            Genesis::build("e", "euro", &regions(), vec![ga("f", 1)], &Allotments::Even),
            Err(GenesisError::InvalidCurrency(_))
        ));
        assert!(matches!(
            Genesis::build("e", "EUR", &regions(), vec![ga("f", 0)], &Allotments::Even),
            Err(GenesisError::Capacity { .. })
        ));
    }
}
