//! Ledger rows: the escrow counters one region writes.
//!
//! A row is written by one region only (its `writer`). Every number is cumulative and only
//! grows, and each entry remembers the row `seq` that last changed it. That makes two things
//! cheap: merging is a per-entry max, and "what changed after seq s" is the entries stamped
//! above s, whose size depends on what changed, not on how many sales happened.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::{GenesisHash, PoolIdx, RegionIdx, SeatIdx};

/// A cumulative counter and the row `seq` that last raised it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub value: u64,
    pub seq: u64,
}

/// A seat the writer gave away: to whom, at which ownership epoch, at which row `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatStamp {
    pub epoch: u32,
    pub to: RegionIdx,
    pub seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRow {
    /// Quota given to each region, indexed by region (the writer's own entry stays 0).
    pub granted_out: Vec<Stamped>,
    /// Units sold by the writer.
    pub consumed: Stamped,
    /// Units refunded back into the writer's quota.
    pub returned: Stamped,
    /// Seats the writer gave away, by seat index (assigned pools only).
    pub seats: BTreeMap<SeatIdx, SeatStamp>,
}

impl PoolRow {
    pub fn new(regions: usize) -> Self {
        PoolRow {
            granted_out: vec![Stamped::default(); regions],
            consumed: Stamped::default(),
            returned: Stamped::default(),
            seats: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub writer: RegionIdx,
    /// Grows with every new version of the row; 0 is the empty row of genesis.
    pub seq: u64,
    pub pools: Vec<PoolRow>,
}

impl Row {
    pub fn new(writer: RegionIdx, regions: usize, pools: usize) -> Self {
        Row {
            writer,
            seq: 0,
            pools: (0..pools).map(|_| PoolRow::new(regions)).collect(),
        }
    }

    /// The entries changed after `since`, in canonical (key) order.
    pub fn changed_since(&self, since: u64) -> Entries {
        let mut out = Entries::new();
        for (p, pool) in self.pools.iter().enumerate() {
            let pool_idx = p as PoolIdx;
            for (to, g) in pool.granted_out.iter().enumerate() {
                if g.seq > since {
                    out.push((
                        g.seq,
                        Entry::GrantedOut {
                            pool: pool_idx,
                            to: to as RegionIdx,
                            value: g.value,
                        },
                    ));
                }
            }
            if pool.consumed.seq > since {
                out.push((
                    pool.consumed.seq,
                    Entry::Consumed {
                        pool: pool_idx,
                        value: pool.consumed.value,
                    },
                ));
            }
            if pool.returned.seq > since {
                out.push((
                    pool.returned.seq,
                    Entry::Returned {
                        pool: pool_idx,
                        value: pool.returned.value,
                    },
                ));
            }
            for (&seat, s) in &pool.seats {
                if s.seq > since {
                    out.push((
                        s.seq,
                        Entry::Seat {
                            pool: pool_idx,
                            seat,
                            epoch: s.epoch,
                            to: s.to,
                        },
                    ));
                }
            }
        }
        out
    }
}

/// The entries of a delta: a sale or a grant changes one or two, so they live inline.
pub type Entries = SmallVec<[(u64, Entry); 2]>;

/// One changed entry of a row, carrying its new (cumulative) value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    GrantedOut {
        pool: PoolIdx,
        to: RegionIdx,
        value: u64,
    },
    Consumed {
        pool: PoolIdx,
        value: u64,
    },
    Returned {
        pool: PoolIdx,
        value: u64,
    },
    Seat {
        pool: PoolIdx,
        seat: SeatIdx,
        epoch: u32,
        to: RegionIdx,
    },
}

impl Entry {
    /// The canonical order of entries in a delta: by pool, then kind, then region or seat.
    /// Deltas must list keys strictly increasing, so one delta cannot say two things about
    /// one entry.
    pub fn key(&self) -> (PoolIdx, u8, u32) {
        match *self {
            Entry::GrantedOut { pool, to, .. } => (pool, 0, u32::from(to)),
            Entry::Consumed { pool, .. } => (pool, 1, 0),
            Entry::Returned { pool, .. } => (pool, 2, 0),
            Entry::Seat { pool, seat, .. } => (pool, 3, seat),
        }
    }

    pub fn pool(&self) -> PoolIdx {
        self.key().0
    }
}

/// The entries of row `writer` changed in `(since, seq]`: what a peer at version `since` needs
/// to reach version `seq`. Applying it to a replica at a version below `since` would leave a
/// hole, so such a replica ignores it and waits for a delta from its own version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowDelta {
    pub genesis: GenesisHash,
    pub writer: RegionIdx,
    pub since: u64,
    pub seq: u64,
    pub entries: Entries,
}

impl Row {
    /// Writes a delta's entries into this copy of the writer's row. The caller has validated
    /// the delta against the writer's full history (the server's own ledger); this is how a
    /// region keeps the "published" copy of its own row, advanced only by durable versions.
    pub fn absorb(&mut self, d: &RowDelta) {
        debug_assert_eq!(d.writer, self.writer);
        for &(seq, entry) in &d.entries {
            let p = &mut self.pools[entry.pool() as usize];
            match entry {
                Entry::GrantedOut { to, value, .. } => {
                    p.granted_out[to as usize] = Stamped { value, seq }
                }
                Entry::Consumed { value, .. } => p.consumed = Stamped { value, seq },
                Entry::Returned { value, .. } => p.returned = Stamped { value, seq },
                Entry::Seat {
                    seat, epoch, to, ..
                } => {
                    p.seats.insert(seat, SeatStamp { epoch, to, seq });
                }
            }
        }
        self.seq = self.seq.max(d.seq);
    }

    /// The delta from `since` to this row's version, or `None` when there is nothing new.
    pub fn delta_since(&self, genesis: GenesisHash, since: u64) -> Option<RowDelta> {
        (self.seq > since).then(|| RowDelta {
            genesis,
            writer: self.writer,
            since,
            seq: self.seq,
            entries: self.changed_since(since),
        })
    }
}
