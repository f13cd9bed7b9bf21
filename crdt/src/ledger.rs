//! The ledger: every region's row of one event, as one region sees them.
//!
//! This is a state-based bounded counter (Balegas et al.; AntidoteDB's `bcounter`) extended
//! with seat ownership. A region may spend only what its own row and the grants it has seen
//! prove it owns; since it is the only writer of the row that records its spending, no two
//! regions can spend the same unit, whatever the network does.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::row::{Entries, Entry, Row, RowDelta, SeatStamp, Stamped};
use crate::{Genesis, GenesisHash, PoolIdx, RegionIdx, SeatIdx, VersionVector};

/// The most any counter or grant sum may reach. Honest histories stay many orders of magnitude
/// below (a pool holds at most 2^40 units); the bound keeps every derived figure, a sum of a
/// few of these, far inside `i64`, whatever a peer claims.
pub const MAX_COUNTER: u64 = 1 << 60;

/// Who owns a seat in this view: the receiver of the give-away with the highest epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeatOwner {
    pub epoch: u32,
    pub owner: RegionIdx,
}

/// Why a delta (or a local write) was refused. A refused delta changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("delta for genesis {got}, this event's genesis is {want}")]
    GenesisMismatch { got: GenesisHash, want: GenesisHash },
    #[error("writer {0} is not a region of this event")]
    UnknownWriter(RegionIdx),
    #[error("malformed delta from writer {writer}: {why}")]
    Malformed {
        writer: RegionIdx,
        why: &'static str,
    },
    #[error("writer {writer} seq {seq}: a known version arrived with other content")]
    Conflict { writer: RegionIdx, seq: u64 },
    #[error("writer {writer} seq {seq}: a number went backwards")]
    Backwards { writer: RegionIdx, seq: u64 },
    #[error("writer {writer} gave away seat {seat} of pool {pool} that region {owner} owns")]
    SeatNotOwned {
        writer: RegionIdx,
        pool: PoolIdx,
        seat: SeatIdx,
        owner: RegionIdx,
    },
    #[error("a single change of {n} in pool {pool} is outside 1..={capacity}, its capacity")]
    ChangeOutOfBounds {
        pool: PoolIdx,
        n: u64,
        capacity: u64,
    },
    #[error("writer {writer}: a counter of pool {pool} would overflow")]
    Overflow { writer: RegionIdx, pool: PoolIdx },
    #[error(
        "writer {writer} claims {outstanding} of pool {pool} sold, its capacity is {capacity}"
    )]
    OverCapacity {
        writer: RegionIdx,
        pool: PoolIdx,
        outstanding: u64,
        capacity: u64,
    },
    #[error("region {writer} has {available} of pool {pool}, not {wanted}")]
    Insufficient {
        writer: RegionIdx,
        pool: PoolIdx,
        available: i64,
        wanted: u64,
    },
}

/// What applying a delta did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The replica already had this version (a duplicate or an old delta); nothing changed.
    Stale,
    /// The delta starts above the replica's version; ignored until a delta from it arrives.
    Gap { have: u64 },
    /// The row moved from version `from` to `to`.
    Advanced {
        from: u64,
        to: u64,
        credits: Vec<Credit>,
        seats: Vec<SeatMove>,
    },
}

/// Quota granted to `to` by the delta's writer, `amount` more than this view knew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credit {
    pub pool: PoolIdx,
    pub to: RegionIdx,
    pub amount: u64,
}

/// A seat whose owner changed in this view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeatMove {
    pub pool: PoolIdx,
    pub seat: SeatIdx,
    pub from: RegionIdx,
    pub to: RegionIdx,
    /// The ownership epoch the seat moves at.
    pub epoch: u32,
}

/// A change a region makes to its own row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Consume {
        pool: PoolIdx,
        n: u64,
    },
    Return {
        pool: PoolIdx,
        n: u64,
    },
    Grant {
        pool: PoolIdx,
        to: RegionIdx,
        n: u64,
    },
    GiveSeat {
        pool: PoolIdx,
        seat: SeatIdx,
        to: RegionIdx,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    genesis: Arc<Genesis>,
    hash: GenesisHash,
    rows: Vec<Row>,
    /// `[pool][r] = Σs granted_out[s][r]`, kept in step with the rows.
    granted_in: Vec<Vec<u64>>,
    /// `[pool][r] = Σt granted_out[r][t]`, kept in step with the rows.
    granted_out: Vec<Vec<u64>>,
    /// `[pool][seat]`, empty for general-admission pools.
    owners: Vec<Vec<SeatOwner>>,
}

impl Ledger {
    pub fn new(genesis: Arc<Genesis>) -> Self {
        let (n, p) = (genesis.regions.len(), genesis.pools.len());
        let owners = genesis
            .pools
            .iter()
            .map(|pool| {
                (0..pool.seat_count() as SeatIdx)
                    .map(|s| SeatOwner {
                        epoch: 0,
                        owner: pool.initial_owner(s),
                    })
                    .collect()
            })
            .collect();
        Ledger {
            hash: genesis.hash(),
            rows: (0..n).map(|r| Row::new(r as RegionIdx, n, p)).collect(),
            granted_in: vec![vec![0; n]; p],
            granted_out: vec![vec![0; n]; p],
            owners,
            genesis,
        }
    }

    pub fn genesis(&self) -> &Arc<Genesis> {
        &self.genesis
    }

    pub fn hash(&self) -> GenesisHash {
        self.hash
    }

    pub fn row(&self, writer: RegionIdx) -> &Row {
        &self.rows[writer as usize]
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn version_vector(&self) -> VersionVector {
        let mut vv = VersionVector::new(self.rows.len());
        for r in &self.rows {
            vv.observe(r.writer as usize, r.seq);
        }
        vv
    }

    pub fn initial(&self, pool: PoolIdx, r: RegionIdx) -> u64 {
        self.genesis.pools[pool as usize].initial[r as usize]
    }

    pub fn granted_in(&self, pool: PoolIdx, r: RegionIdx) -> u64 {
        self.granted_in[pool as usize][r as usize]
    }

    pub fn granted_out(&self, pool: PoolIdx, r: RegionIdx) -> u64 {
        self.granted_out[pool as usize][r as usize]
    }

    pub fn consumed(&self, pool: PoolIdx, r: RegionIdx) -> u64 {
        self.rows[r as usize].pools[pool as usize].consumed.value
    }

    pub fn returned(&self, pool: PoolIdx, r: RegionIdx) -> u64 {
        self.rows[r as usize].pools[pool as usize].returned.value
    }

    /// Places of `pool` region `r` has sold and not refunded.
    pub fn sold(&self, pool: PoolIdx, r: RegionIdx) -> u64 {
        self.consumed(pool, r)
            .saturating_sub(self.returned(pool, r))
    }

    /// `initial + Σs granted_out[s][r] − Σs granted_out[r][s] − consumed + returned`.
    /// Negative only in a view that has seen `r` spend a grant whose giver's row it lacks.
    ///
    /// Computed in 128 bits: every counter is a `u64` that only grows, and a sum of them must
    /// never wrap into a quota that does not exist. Counters are bounded where they change
    /// (one change at most a pool's capacity, every counter and grant sum at most
    /// [`MAX_COUNTER`]), so the clamp to `i64` is never reached by any state a ledger accepts.
    pub fn available(&self, pool: PoolIdx, r: RegionIdx) -> i64 {
        let wide = self.available_wide(pool, r);
        i64::try_from(wide).unwrap_or(if wide < 0 { i64::MIN } else { i64::MAX })
    }

    /// [`available`](Self::available) without the clamp, for sums over regions.
    pub fn available_wide(&self, pool: PoolIdx, r: RegionIdx) -> i128 {
        let p = pool as usize;
        let row = &self.rows[r as usize].pools[p];
        i128::from(self.initial(pool, r))
            + i128::from(self.granted_in[p][r as usize])
            + i128::from(row.returned.value)
            - i128::from(self.granted_out[p][r as usize])
            - i128::from(row.consumed.value)
    }

    pub fn seat_owner(&self, pool: PoolIdx, seat: SeatIdx) -> SeatOwner {
        self.owners[pool as usize][seat as usize]
    }

    pub fn seat_owners(&self, pool: PoolIdx) -> &[SeatOwner] {
        &self.owners[pool as usize]
    }

    /// Row `writer`'s entries changed after `since`, up to its current version.
    pub fn delta_since(&self, writer: RegionIdx, since: u64) -> Option<RowDelta> {
        self.rows[writer as usize].delta_since(self.hash, since)
    }

    /// Makes the next version of `writer`'s own row from `changes`, checking that the writer
    /// has the quota and owns the seats. Nothing changes until the delta is applied.
    pub fn write(&self, writer: RegionIdx, changes: &[Change]) -> Result<RowDelta, Refusal> {
        let w = writer as usize;
        let row = &self.rows[w];
        let seq = row.seq + 1;
        let mut entries = Entries::new();
        // Units each pool loses; writes touch one or two pools, so a short list is enough.
        let mut spent: SmallVec<[(usize, u64); 2]> = SmallVec::new();
        let mut spend = |p: usize, n: u64| match spent.iter_mut().find(|(q, _)| *q == p) {
            Some(s) => s.1 = s.1.saturating_add(n),
            None => spent.push((p, n)),
        };
        for change in changes {
            let pool = match *change {
                Change::Consume { pool, .. }
                | Change::Return { pool, .. }
                | Change::Grant { pool, .. }
                | Change::GiveSeat { pool, .. } => pool,
            };
            let p = pool as usize;
            let Some(genesis_pool) = self.genesis.pools.get(p) else {
                return Err(Refusal::Malformed {
                    writer,
                    why: "unknown pool",
                });
            };
            // One change moves at most the whole pool: anything larger is a wrapped or hostile
            // number, never a sale, refund or grant (cumulative counters may still pass the
            // capacity after many of them).
            let capacity = genesis_pool.capacity();
            if let Change::Consume { n, .. } | Change::Return { n, .. } | Change::Grant { n, .. } =
                *change
            {
                if n == 0 || n > capacity {
                    return Err(Refusal::ChangeOutOfBounds { pool, n, capacity });
                }
            }
            let prow = &row.pools[p];
            let overflow = Refusal::Overflow { writer, pool };
            let bump = |entries: &mut Entries,
                        key: (PoolIdx, u8, u32),
                        make: &dyn Fn(u64) -> Entry,
                        base: u64,
                        n: u64|
             -> Result<(), Refusal> {
                let within = |v: Option<u64>| v.filter(|&v| v <= MAX_COUNTER);
                if let Some(e) = entries.iter_mut().find(|(_, e)| e.key() == key) {
                    let v = within(entry_value(&e.1).checked_add(n)).ok_or(overflow.clone())?;
                    e.1 = make(v);
                } else {
                    let v = within(base.checked_add(n)).ok_or(overflow.clone())?;
                    entries.push((seq, make(v)));
                }
                Ok(())
            };
            match *change {
                Change::Consume { n, .. } => {
                    spend(p, n);
                    bump(
                        &mut entries,
                        (pool, 1, 0),
                        &|v| Entry::Consumed { pool, value: v },
                        prow.consumed.value,
                        n,
                    )?;
                }
                Change::Return { n, .. } => {
                    let outstanding = prow.consumed.value.saturating_sub(prow.returned.value);
                    if n > outstanding {
                        return Err(Refusal::Malformed {
                            writer,
                            why: "returning more than was sold",
                        });
                    }
                    bump(
                        &mut entries,
                        (pool, 2, 0),
                        &|v| Entry::Returned { pool, value: v },
                        prow.returned.value,
                        n,
                    )?;
                }
                Change::Grant { to, n, .. } => {
                    if to == writer || to as usize >= self.rows.len() {
                        return Err(Refusal::Malformed {
                            writer,
                            why: "grant to itself or to an unknown region",
                        });
                    }
                    if self.genesis.pools[p].is_assigned() {
                        return Err(Refusal::Malformed {
                            writer,
                            why: "assigned seats move by seat id",
                        });
                    }
                    spend(p, n);
                    self.check_grant_sums(writer, pool, to, n)?;
                    let base = prow.granted_out[to as usize].value;
                    bump(
                        &mut entries,
                        (pool, 0, u32::from(to)),
                        &|v| Entry::GrantedOut { pool, to, value: v },
                        base,
                        n,
                    )?;
                }
                Change::GiveSeat { seat, to, .. } => {
                    if to == writer || to as usize >= self.rows.len() {
                        return Err(Refusal::Malformed {
                            writer,
                            why: "seat to itself or to an unknown region",
                        });
                    }
                    let owner = *self.owners[p]
                        .get(seat as usize)
                        .ok_or(Refusal::Malformed {
                            writer,
                            why: "unknown seat",
                        })?;
                    if owner.owner != writer {
                        return Err(Refusal::SeatNotOwned {
                            writer,
                            pool,
                            seat,
                            owner: owner.owner,
                        });
                    }
                    if entries.iter().any(|(_, e)| e.key() == (pool, 3, seat)) {
                        return Err(Refusal::Malformed {
                            writer,
                            why: "seat listed twice",
                        });
                    }
                    spend(p, 1);
                    self.check_grant_sums(writer, pool, to, 1)?;
                    entries.push((
                        seq,
                        Entry::Seat {
                            pool,
                            seat,
                            epoch: owner.epoch.checked_add(1).ok_or(overflow.clone())?,
                            to,
                        },
                    ));
                    let base = prow.granted_out[to as usize].value;
                    bump(
                        &mut entries,
                        (pool, 0, u32::from(to)),
                        &|v| Entry::GrantedOut { pool, to, value: v },
                        base,
                        1,
                    )?;
                }
            }
        }
        for &(p, n) in &spent {
            let available = self.available(p as PoolIdx, writer);
            if n > 0 && i128::from(available) < i128::from(n) {
                return Err(Refusal::Insufficient {
                    writer,
                    pool: p as PoolIdx,
                    available,
                    wanted: n,
                });
            }
        }
        entries.sort_unstable_by_key(|(_, e)| e.key());
        Ok(RowDelta {
            genesis: self.hash,
            writer,
            since: row.seq,
            seq,
            entries,
        })
    }

    /// A grant of `n` from `writer` to `to` keeps both grant sums within [`MAX_COUNTER`] (a
    /// peer may have pushed `to`'s near it; the write is refused rather than the record).
    fn check_grant_sums(
        &self,
        writer: RegionIdx,
        pool: PoolIdx,
        to: RegionIdx,
        n: u64,
    ) -> Result<(), Refusal> {
        let p = pool as usize;
        let ok = |v: u64| v.checked_add(n).is_some_and(|v| v <= MAX_COUNTER);
        if ok(self.granted_in[p][to as usize]) && ok(self.granted_out[p][writer as usize]) {
            Ok(())
        } else {
            Err(Refusal::Overflow { writer, pool })
        }
    }

    /// What applying `d` would do, without doing it: every check [`apply`](Self::apply) makes,
    /// and the credits and seat moves it would bring. A caller with rules of its own over
    /// those (the region core refuses a peer row that moves a seat it owns, or credits it
    /// more than a pool holds) decides before anything changes.
    pub fn preview(&self, d: &RowDelta) -> Result<Applied, Refusal> {
        self.validate(d)?;
        let w = d.writer as usize;
        let have = self.rows[w].seq;
        if d.seq <= have {
            return Ok(Applied::Stale);
        }
        if d.since > have {
            return Ok(Applied::Gap { have });
        }
        let mut credits = Vec::new();
        let mut seats = Vec::new();
        for &(stamp, entry) in &d.entries {
            let prow = &self.rows[w].pools[entry.pool() as usize];
            match entry {
                Entry::GrantedOut { pool, to, value } => {
                    let held = prow.granted_out[to as usize];
                    if stamp > held.seq && value > held.value {
                        credits.push(Credit {
                            pool,
                            to,
                            amount: value - held.value,
                        });
                    }
                }
                Entry::Seat {
                    pool,
                    seat,
                    epoch,
                    to,
                } => {
                    let newer = prow.seats.get(&seat).is_none_or(|s| stamp > s.seq);
                    let owner = self.owners[pool as usize][seat as usize];
                    if newer && epoch > owner.epoch {
                        seats.push(SeatMove {
                            pool,
                            seat,
                            from: owner.owner,
                            to,
                            epoch,
                        });
                    }
                }
                Entry::Consumed { .. } | Entry::Returned { .. } => {}
            }
        }
        Ok(Applied::Advanced {
            from: have,
            to: d.seq,
            credits,
            seats,
        })
    }

    /// Applies a delta of any writer's row (a peer's, or this region's own on recovery).
    /// All checks run before anything is changed, so a refused delta changes nothing.
    pub fn apply(&mut self, d: &RowDelta) -> Result<Applied, Refusal> {
        let applied = self.preview(d)?;
        let Applied::Advanced { credits, seats, .. } = &applied else {
            return Ok(applied);
        };
        let w = d.writer as usize;
        for &(stamp, entry) in &d.entries {
            let prow = &mut self.rows[w].pools[entry.pool() as usize];
            match entry {
                Entry::GrantedOut { to, value, .. } => {
                    let held = &mut prow.granted_out[to as usize];
                    if stamp > held.seq {
                        *held = Stamped { value, seq: stamp };
                    }
                }
                Entry::Consumed { value, .. } => {
                    if stamp > prow.consumed.seq {
                        prow.consumed = Stamped { value, seq: stamp };
                    }
                }
                Entry::Returned { value, .. } => {
                    if stamp > prow.returned.seq {
                        prow.returned = Stamped { value, seq: stamp };
                    }
                }
                Entry::Seat {
                    seat, epoch, to, ..
                } => {
                    if prow.seats.get(&seat).is_none_or(|s| stamp > s.seq) {
                        prow.seats.insert(
                            seat,
                            SeatStamp {
                                epoch,
                                to,
                                seq: stamp,
                            },
                        );
                    }
                }
            }
        }
        // `validate` checked these sums cannot overflow.
        for c in credits {
            self.granted_in[c.pool as usize][c.to as usize] += c.amount;
            self.granted_out[c.pool as usize][w] += c.amount;
        }
        for m in seats {
            self.owners[m.pool as usize][m.seat as usize] = SeatOwner {
                epoch: m.epoch,
                owner: m.to,
            };
        }
        self.rows[w].seq = d.seq;
        Ok(applied)
    }

    fn validate(&self, d: &RowDelta) -> Result<(), Refusal> {
        let writer = d.writer;
        if d.genesis != self.hash {
            return Err(Refusal::GenesisMismatch {
                got: d.genesis,
                want: self.hash,
            });
        }
        let w = writer as usize;
        if w >= self.rows.len() {
            return Err(Refusal::UnknownWriter(writer));
        }
        let malformed = |why| Err(Refusal::Malformed { writer, why });
        if d.seq <= d.since {
            return malformed("seq must be above since");
        }
        let row = &self.rows[w];
        let have = row.seq;
        let mut last_key = None;
        // Counters this delta would raise, and by how much (bounded below, before any change).
        let mut rises: SmallVec<[(Entry, u64); 2]> = SmallVec::new();
        for &(stamp, entry) in &d.entries {
            if stamp <= d.since || stamp > d.seq {
                return malformed("entry stamped outside (since, seq]");
            }
            let key = entry.key();
            if last_key.is_some_and(|k| k >= key) {
                return malformed("entries not in strictly increasing key order");
            }
            last_key = Some(key);
            let p = key.0 as usize;
            let Some(pool) = self.genesis.pools.get(p) else {
                return malformed("unknown pool");
            };
            let prow = &row.pools[p];
            // (value held, stamp held) for counters; seats are checked on their own.
            let held = match entry {
                Entry::GrantedOut { to, .. } => {
                    if to as usize >= self.rows.len() || to == writer {
                        return malformed("grant to itself or to an unknown region");
                    }
                    prow.granted_out[to as usize]
                }
                Entry::Consumed { .. } => prow.consumed,
                Entry::Returned { .. } => prow.returned,
                Entry::Seat {
                    seat, epoch, to, ..
                } => {
                    if !pool.is_assigned() || seat as usize >= pool.seat_count() {
                        return malformed("unknown seat");
                    }
                    if to as usize >= self.rows.len() || to == writer || epoch == 0 {
                        return malformed("seat to itself, to an unknown region or at epoch 0");
                    }
                    self.check_seat(d, stamp, key.0, seat, epoch, to)?;
                    continue;
                }
            };
            let value = entry_value(&entry);
            if stamp > held.seq && value > held.value {
                rises.push((entry, value - held.value));
            }
            if stamp == held.seq && value != held.value {
                return Err(Refusal::Conflict { writer, seq: stamp });
            }
            if stamp < held.seq && value > held.value {
                return Err(Refusal::Backwards { writer, seq: stamp });
            }
            if stamp > held.seq {
                if stamp <= have {
                    // This replica holds every change up to `have`: this one would be known.
                    return Err(Refusal::Conflict { writer, seq: stamp });
                }
                if value < held.value {
                    return Err(Refusal::Backwards { writer, seq: stamp });
                }
            }
        }
        if d.seq > have && d.since <= have {
            self.check_rises(d, have, &rises)?;
        }
        // A row's consumption can never be refunded beyond what it sold: a hostile row that
        // tries would let the refund mint seats.
        if d.seq > have && d.since <= have {
            for &(_, e) in &d.entries {
                let Entry::Returned { pool, value } = e else {
                    continue;
                };
                let prow = &row.pools[pool as usize];
                let consumed = d
                    .entries
                    .iter()
                    .find_map(|&(_, c)| match c {
                        Entry::Consumed { pool: q, value } if q == pool => Some(value),
                        _ => None,
                    })
                    .unwrap_or(prow.consumed.value)
                    .max(prow.consumed.value);
                if value > consumed {
                    return malformed("returned exceeds consumed");
                }
            }
        }
        Ok(())
    }

    /// Bounds what an advancing delta would raise, so no sum the ledger keeps can wrap: each
    /// version of a row changes an entry by at most its pool's capacity (what
    /// [`write`](Self::write) allows), the grant aggregates must stay within `u64`, and after
    /// the delta the writer may not have more sold and unrefunded than the pool holds.
    fn check_rises(&self, d: &RowDelta, have: u64, rises: &[(Entry, u64)]) -> Result<(), Refusal> {
        let writer = d.writer;
        let w = writer as usize;
        let versions = u128::from(d.seq - have);
        let mut out_by_pool: SmallVec<[(PoolIdx, u64); 2]> = SmallVec::new();
        for &(entry, rise) in rises {
            let pool = entry.pool();
            let capacity = self.genesis.pools[pool as usize].capacity();
            if u128::from(rise) > u128::from(capacity) * versions {
                return Err(Refusal::Malformed {
                    writer,
                    why: "a counter rose by more than its pool's capacity per version",
                });
            }
            let overflow = Refusal::Overflow { writer, pool };
            if entry_value(&entry) > MAX_COUNTER {
                return Err(overflow);
            }
            if let Entry::GrantedOut { to, .. } = entry {
                let gin = self.granted_in[pool as usize][to as usize].checked_add(rise);
                if gin.is_none_or(|v| v > MAX_COUNTER) {
                    return Err(overflow);
                }
                match out_by_pool.iter_mut().find(|(p, _)| *p == pool) {
                    Some(o) => o.1 = o.1.checked_add(rise).ok_or(overflow)?,
                    None => out_by_pool.push((pool, rise)),
                }
            }
        }
        for &(pool, rise) in &out_by_pool {
            let gout = self.granted_out[pool as usize][w].checked_add(rise);
            if gout.is_none_or(|v| v > MAX_COUNTER) {
                return Err(Refusal::Overflow { writer, pool });
            }
        }
        // Only pools whose sales or returns the delta changes can change what is outstanding.
        let mut touched: SmallVec<[usize; 2]> = SmallVec::new();
        for (_, e) in &d.entries {
            if matches!(e, Entry::Consumed { .. } | Entry::Returned { .. })
                && !touched.contains(&(e.pool() as usize))
            {
                touched.push(e.pool() as usize);
            }
        }
        for p in touched {
            let pool = &self.genesis.pools[p];
            let prow = &self.rows[w].pools[p];
            let after = |kind: u8, held: u64| {
                d.entries
                    .iter()
                    .find(|(_, e)| e.key() == (p as PoolIdx, kind, 0))
                    .map_or(held, |&(_, e)| entry_value(&e).max(held))
            };
            let consumed = after(1, prow.consumed.value);
            let returned = after(2, prow.returned.value);
            let outstanding = consumed.saturating_sub(returned);
            if outstanding > pool.capacity() {
                return Err(Refusal::OverCapacity {
                    writer,
                    pool: p as PoolIdx,
                    outstanding,
                    capacity: pool.capacity(),
                });
            }
        }
        Ok(())
    }

    fn check_seat(
        &self,
        d: &RowDelta,
        stamp: u64,
        pool: PoolIdx,
        seat: SeatIdx,
        epoch: u32,
        to: RegionIdx,
    ) -> Result<(), Refusal> {
        let writer = d.writer;
        let row = &self.rows[writer as usize];
        let held = row.pools[pool as usize].seats.get(&seat);
        if let Some(h) = held {
            if stamp == h.seq && (epoch, to) != (h.epoch, h.to) {
                return Err(Refusal::Conflict { writer, seq: stamp });
            }
            if stamp < h.seq && epoch > h.epoch {
                return Err(Refusal::Backwards { writer, seq: stamp });
            }
            if stamp > h.seq && epoch <= h.epoch {
                return Err(Refusal::Backwards { writer, seq: stamp });
            }
            if stamp <= h.seq {
                return Ok(());
            }
        }
        if stamp <= row.seq {
            return Err(Refusal::Conflict { writer, seq: stamp });
        }
        let now = self.owners[pool as usize][seat as usize];
        if now.epoch == epoch {
            // Only one region can hand a seat over at a given epoch: its owner at epoch − 1.
            return Err(Refusal::Conflict { writer, seq: stamp });
        }
        if now.epoch.checked_add(1) == Some(epoch) && now.owner != writer {
            return Err(Refusal::SeatNotOwned {
                writer,
                pool,
                seat,
                owner: now.owner,
            });
        }
        Ok(())
    }

    /// State-based merge: every row takes the newer of the two versions. Rows are single-writer
    /// histories, so the newer version holds the per-entry max of both.
    pub fn merge(&mut self, other: &Ledger) -> Result<(), Refusal> {
        if other.hash != self.hash {
            return Err(Refusal::GenesisMismatch {
                got: other.hash,
                want: self.hash,
            });
        }
        for w in 0..self.rows.len() {
            let have = self.rows[w].seq;
            if let Some(d) = other.delta_since(w as RegionIdx, have) {
                self.apply(&d)?;
            }
        }
        Ok(())
    }

    /// Checks the invariants a single view must satisfy; returns what is wrong.
    ///
    /// Per pool: conservation (`Σ available + Σ (consumed − returned) = capacity`), the
    /// aggregates agree with the rows, no row refunds more than it sold, and every seat has
    /// exactly one owner that some row or the genesis names.
    pub fn check(&self) -> Result<(), String> {
        for (p, pool) in self.genesis.pools.iter().enumerate() {
            let pi = p as PoolIdx;
            let mut total: i128 = 0;
            for r in 0..self.rows.len() {
                let ri = r as RegionIdx;
                let (gin, gout) = self.rows.iter().fold((0u128, 0u128), |(i, o), row| {
                    (
                        i + u128::from(row.pools[p].granted_out[r].value),
                        o + if row.writer == ri {
                            row.pools[p]
                                .granted_out
                                .iter()
                                .map(|g| u128::from(g.value))
                                .sum()
                        } else {
                            0
                        },
                    )
                });
                if gin != u128::from(self.granted_in[p][r])
                    || gout != u128::from(self.granted_out[p][r])
                {
                    return Err(format!(
                        "pool {}: grant aggregates of region {r} disagree with rows",
                        pool.id
                    ));
                }
                if self.returned(pi, ri) > self.consumed(pi, ri) {
                    return Err(format!(
                        "pool {}: region {r} returned more than it consumed",
                        pool.id
                    ));
                }
                total += self.available_wide(pi, ri)
                    + i128::from(self.consumed(pi, ri) - self.returned(pi, ri));
            }
            if total != i128::from(pool.capacity()) {
                return Err(format!(
                    "pool {}: conservation broken, {total} != {}",
                    pool.id,
                    pool.capacity()
                ));
            }
            for (s, o) in self.owners[p].iter().enumerate() {
                let named = if o.epoch == 0 {
                    pool.initial_owner(s as SeatIdx) == o.owner
                } else {
                    self.rows.iter().any(|row| {
                        row.pools[p]
                            .seats
                            .get(&(s as SeatIdx))
                            .is_some_and(|x| x.epoch == o.epoch && x.to == o.owner)
                    })
                };
                let max_epoch = self
                    .rows
                    .iter()
                    .filter_map(|row| row.pools[p].seats.get(&(s as SeatIdx)).map(|x| x.epoch))
                    .max()
                    .unwrap_or(0);
                if !named || max_epoch != o.epoch {
                    return Err(format!(
                        "pool {}: seat {s} owner is not the highest-epoch receiver",
                        pool.id
                    ));
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn entry_value(e: &Entry) -> u64 {
    match *e {
        Entry::GrantedOut { value, .. }
        | Entry::Consumed { value, .. }
        | Entry::Returned { value, .. } => value,
        Entry::Seat { epoch, .. } => u64::from(epoch),
    }
}
