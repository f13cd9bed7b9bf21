//! One event as a region holds it: the replicated ledger and metadata, plus what is local to
//! this region (holds, seat states, credits not yet durable, what peers last reported).

use std::collections::HashMap;
use std::sync::Arc;

use allot_crdt::{
    ActorIncarnation, EventMeta, Genesis, Ledger, MetaDoc, PoolIdx, RegionIdx, Row, SeatIdx,
    VersionVector,
};

use crate::api::Millis;
use crate::reads::RecordIndex;

/// A seat's state in the region that owns it (ownership itself is the ledger's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatLocal {
    Free,
    Held(crate::reads::HoldNo),
    Sold(crate::reads::OrderNo),
    /// Received from a peer by the record at this index; not spendable until it is durable.
    Arriving(RecordIndex),
}

/// What a peer last told us about an event.
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    /// `None` until the peer reports the event: we keep sending it the genesis.
    pub vv: Option<VersionVector>,
    pub meta_heads: Vec<[u8; 32]>,
    pub held: Vec<u64>,
    /// What its own row had let go of per pool as it sent its last frame (see
    /// [`crate::gossip::EventGossip::spent`]).
    pub spent: Vec<u64>,
    pub sale_rate_per_min: Vec<u64>,
    /// Its recent demand per pool (units asked for per minute, refused ones included).
    pub demand_per_min: Vec<u64>,
    pub heard_at: Option<Millis>,
    /// Since when this peer has been owed a delta of the event that did not fit a frame:
    /// the longest-owed events go first in the next frame, so catch-up after a reset spreads
    /// over ticks without starving any event.
    pub owed_since: Option<Millis>,
}

/// What a peer tells of one event besides CRDT state (see [`EventState::check_peer_figures`]):
/// its version vector (`None` in a view after the peer reset) and its figures per pool.
#[derive(Clone, Copy, Debug)]
pub struct PeerFigures<'a> {
    pub vv: Option<&'a VersionVector>,
    pub held: &'a [u64],
    pub spent: &'a [u64],
    pub sale_rate_per_min: &'a [u64],
    pub demand_per_min: &'a [u64],
}

/// One region's part of a pool as this region sees it ([`EventState::region_figures`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionFigures {
    /// Places held by live holds (another region's: its last report).
    pub held: u64,
    /// What it can still hold, sell or give away (this region's: `sellable`).
    pub sellable: i64,
    pub sale_rate_per_min: u64,
}

/// This region's recent sale rate of one pool, measured over windows of about a second.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaleRate {
    pub window_start: Millis,
    pub consumed_at_start: u64,
    pub per_min: u64,
}

/// Recent demand for one pool in this region: units buyers asked for (held, bought, or
/// refused for want of stock), smoothed over windows of [`DEMAND_WINDOW_MS`]. It is what the
/// rebalancer sizes asks by: a region that ran dry sells nothing but still has buyers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Demand {
    pub window_start: Millis,
    pub units: u64,
    /// The moving average, not yet corrected for its start at zero.
    average: f64,
    /// How much of the average is made of measured windows (1 − (1 − w)ⁿ after n windows):
    /// dividing by it removes the pull towards zero of a young average, so a region that
    /// opened a second ago does not look half as busy as it is.
    measured: f64,
    pub per_s: f64,
}

/// How often demand is re-estimated, and how much the newest window weighs.
pub const DEMAND_WINDOW_MS: Millis = 500;
const DEMAND_WEIGHT: f64 = 0.2;

impl Demand {
    /// Closes the window once it is old enough.
    pub fn update(&mut self, now: Millis) {
        if self.window_start == 0 {
            self.window_start = now;
            return;
        }
        if self.measured == 0.0 && self.units == 0 {
            // No demand yet: the first window starts at the last tick before its first
            // buyer, not when the event was created. A window mostly from before the sale
            // opened would halve the first estimate, and the young average would carry that
            // low figure for seconds (a quiet region then gives away the stock its own buyers
            // need: measured on the flash sale).
            self.window_start = now;
            return;
        }
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed < DEMAND_WINDOW_MS {
            return;
        }
        let rate = self.units as f64 * 1000.0 / elapsed as f64;
        if self.measured > 0.0 || rate > 0.0 {
            // The average starts with the first window that saw demand.
            self.average = DEMAND_WEIGHT * rate + (1.0 - DEMAND_WEIGHT) * self.average;
            self.measured = DEMAND_WEIGHT + (1.0 - DEMAND_WEIGHT) * self.measured;
        }
        self.per_s = if self.measured > 0.0 {
            self.average / self.measured
        } else {
            0.0
        };
        if self.per_s < 0.01 {
            self.per_s = 0.0;
        }
        self.units = 0;
        self.window_start = now;
    }

    pub fn per_min(&self) -> u64 {
        (self.per_s * 60.0).round() as u64
    }
}

pub struct EventState {
    pub id: Arc<str>,
    pub ledger: Ledger,
    pub me: RegionIdx,
    pub meta: MetaDoc,
    pub info: EventMeta,
    /// Unit price per pool, from the metadata.
    pub prices: Vec<u64>,
    /// Σ live holds per pool.
    pub held: Vec<u64>,
    /// Quota credited by peer rows whose records are not durable yet, per pool.
    pub pending_credit: Vec<u64>,
    /// Per pool, per seat (assigned pools only).
    pub seats: Vec<Vec<SeatLocal>>,
    pub seat_index: Vec<HashMap<String, SeatIdx>>,
    /// Per assigned pool, per seat: whether it is *not* next to the seat before it in the
    /// seat map ("B-1" after "A-30"), so a block of adjacent seats never spans two rows.
    pub row_starts: Vec<Vec<bool>>,
    /// This region's row as far as it is durable: the only version gossip may publish.
    pub published: Row,
    /// Index of the record that created the event here.
    pub created_at_index: RecordIndex,
    /// Index of the last metadata record; changes are sent only once it is durable.
    pub meta_index: RecordIndex,
    /// Bytes of every metadata change held, as a peer that lacks the event receives them.
    pub meta_bytes: usize,
    /// This region's metadata heads as it last gossiped them: a peer that reports the same
    /// heads sees the same metadata (its sales state included).
    pub gossiped_meta_heads: Vec<[u8; 32]>,
    pub peers: Vec<PeerView>,
    pub rates: Vec<SaleRate>,
    pub demand: Vec<Demand>,
    /// Per pool, the sellable figure the last gossip frame told the peers: a change under one
    /// maximum order is told at once (see `Core::tell_low_stock`), and how many such frames
    /// went since the last tick.
    pub announced: Vec<i64>,
    pub low_frames: u32,
    /// Quota credited on a bare "+k" (the `credit_bare_grant` bug only).
    #[cfg(feature = "inject-bugs")]
    pub bare_credit: Vec<u64>,
}

impl EventState {
    pub fn new(
        genesis: Genesis,
        me: RegionIdx,
        meta: MetaDoc,
        info: EventMeta,
        index: RecordIndex,
    ) -> Self {
        let genesis = Arc::new(genesis);
        let (n, p) = (genesis.regions.len(), genesis.pools.len());
        let seats = genesis
            .pools
            .iter()
            .map(|pool| vec![SeatLocal::Free; pool.seat_count()])
            .collect();
        let seat_index = genesis
            .pools
            .iter()
            .map(|pool| match &pool.kind {
                allot_crdt::PoolKind::General { .. } => HashMap::new(),
                allot_crdt::PoolKind::Assigned { seats } => seats
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.clone(), i as SeatIdx))
                    .collect(),
            })
            .collect();
        let row_starts = genesis
            .pools
            .iter()
            .map(|pool| match &pool.kind {
                allot_crdt::PoolKind::General { .. } => Vec::new(),
                allot_crdt::PoolKind::Assigned { seats } => (0..seats.len())
                    .map(|i| i == 0 || !next_to(&seats[i - 1], &seats[i]))
                    .collect(),
            })
            .collect();
        let mut ev = EventState {
            id: Arc::from(genesis.id.as_str()),
            ledger: Ledger::new(genesis),
            me,
            meta,
            info,
            prices: vec![0; p],
            held: vec![0; p],
            pending_credit: vec![0; p],
            seats,
            seat_index,
            row_starts,
            published: Row::new(me, n, p),
            created_at_index: index,
            meta_index: index,
            meta_bytes: 0,
            gossiped_meta_heads: Vec::new(),
            peers: vec![PeerView::default(); n],
            rates: vec![SaleRate::default(); p],
            demand: vec![Demand::default(); p],
            announced: vec![0; p],
            low_frames: 0,
            #[cfg(feature = "inject-bugs")]
            bare_credit: vec![0; p],
        };
        ev.refresh_prices();
        ev
    }

    /// Closes the current rate window of every pool once it is a second old.
    pub fn update_rates(&mut self, now: Millis) {
        for d in &mut self.demand {
            d.update(now);
        }
        for (p, r) in self.rates.iter_mut().enumerate() {
            let consumed = self.ledger.consumed(p as PoolIdx, self.me);
            if r.window_start == 0 {
                *r = SaleRate {
                    window_start: now,
                    consumed_at_start: consumed,
                    per_min: 0,
                };
            } else if now >= r.window_start + 1000 {
                r.per_min = (consumed - r.consumed_at_start) * 60_000 / (now - r.window_start);
                r.window_start = now;
                r.consumed_at_start = consumed;
            }
        }
    }

    /// Runs of seats this region owns and has free, each within one row, in seat-map order.
    pub fn free_blocks(&self, pool: PoolIdx) -> Vec<std::ops::Range<SeatIdx>> {
        let p = pool as usize;
        let owners = self.ledger.seat_owners(pool);
        let mut blocks = Vec::new();
        let mut start: Option<usize> = None;
        for (s, seat) in owners.iter().enumerate() {
            let free = seat.owner == self.me && self.seats[p][s] == SeatLocal::Free;
            if let Some(b) = start {
                if !free || self.row_starts[p][s] {
                    blocks.push(b as SeatIdx..s as SeatIdx);
                    start = None;
                }
            }
            if free && start.is_none() {
                start = Some(s);
            }
        }
        if let Some(b) = start {
            blocks.push(b as SeatIdx..owners.len() as SeatIdx);
        }
        blocks
    }

    /// `n` free seats of this region for one buyer: side by side in one row where a block
    /// holds them (the smallest such block, so large blocks stay whole for large groups),
    /// else the first free seats. Fewer than `n` if this region has fewer.
    pub fn adjacent_seats(&self, pool: PoolIdx, n: usize) -> Vec<SeatIdx> {
        let blocks = self.free_blocks(pool);
        if let Some(b) = smallest_block(&blocks, n) {
            return (b.start..b.start + n as SeatIdx).collect();
        }
        blocks.into_iter().flatten().take(n).collect()
    }

    /// The assigned pool that has a seat of this id.
    pub fn pool_of_seat(&self, seat: &str) -> Option<PoolIdx> {
        self.seat_index
            .iter()
            .position(|m| m.contains_key(seat))
            .map(|p| p as PoolIdx)
    }

    pub fn genesis(&self) -> &Arc<Genesis> {
        self.ledger.genesis()
    }

    pub fn refresh_prices(&mut self) {
        let g = self.ledger.genesis().clone();
        for (i, pool) in g.pools.iter().enumerate() {
            self.prices[i] = self.info.prices.get(&pool.id).copied().unwrap_or(0);
        }
    }

    /// A frame with this event's unit went out: what it told is what the peers know.
    pub fn note_told(&mut self) {
        for p in 0..self.announced.len() {
            self.announced[p] = self.sellable(p as PoolIdx);
        }
    }

    /// What region `r`'s row, as this region has it, has let go of in pool `pool`: sold and
    /// given away, less returned.
    pub fn spent_in_row(&self, pool: PoolIdx, r: RegionIdx) -> u64 {
        let row = &self.ledger.row(r).pools[pool as usize];
        let out = (row.granted_out.iter()).fold(0u64, |sum, g| sum.saturating_add(g.value));
        (row.consumed.value.saturating_add(out)).saturating_sub(row.returned.value)
    }

    /// What this region tells its peers it has spent, per pool (see
    /// [`crate::gossip::EventGossip::spent`]).
    pub fn spent_to_report(&self) -> Vec<u64> {
        (0..self.held.len() as PoolIdx)
            .map(|p| self.spent_in_row(p, self.me))
            .collect()
    }

    /// What peer `r` cannot sell of `pool` beyond what its row, as this region has it, shows:
    /// its live holds as it last reported them, and what it had spent by then that the row
    /// here does not show yet. Without the second part a sale between its confirm and its
    /// durability would look like stock for a moment, and a buyer would be sent for it; with
    /// it taken from one frame's own row instead of the row here, a row relayed by a third
    /// region would count that sale twice, and a buyer would hear a false sold-out.
    ///
    /// When the row here is newer than the frame, what it shows beyond the frame's `spent` is
    /// taken off the reported holds: right when confirms of those holds made it, an
    /// overstatement of the peer's stock until its next frame when its own buyers bought or
    /// it gave quota away (a forward then refused: a round trip, never a false sold-out or a
    /// sale). Never more than the pool's capacity, whatever a peer reports.
    pub fn peer_held(&self, pool: PoolIdx, r: RegionIdx) -> u64 {
        let p = pool as usize;
        let view = &self.peers[r as usize];
        let held = view.held.get(p).copied().unwrap_or(0);
        let unseen = match view.spent.get(p) {
            Some(&spent) => i128::from(spent) - i128::from(self.spent_in_row(pool, r)),
            None => 0,
        };
        let capacity = self
            .genesis()
            .pools
            .get(p)
            .map_or(0, |pool| pool.capacity());
        u64::try_from((i128::from(held) + unseen).clamp(0, i128::from(capacity))).unwrap_or(0)
    }

    /// What this region may still hold, sell or give away: `ledger_available − held`, minus
    /// credits that are not durable yet.
    #[inline]
    pub fn sellable(&self, pool: PoolIdx) -> i64 {
        let p = pool as usize;
        #[allow(unused_mut)]
        let mut wide = i128::from(self.ledger.available(pool, self.me))
            - i128::from(self.held[p])
            - i128::from(self.pending_credit[p]);
        #[cfg(feature = "inject-bugs")]
        {
            wide += i128::from(self.bare_credit[p]);
        }
        i64::try_from(wide).unwrap_or(if wide < 0 { i64::MIN } else { i64::MAX })
    }

    /// Refuses credits that would give this region more of a pool than the pool holds. This
    /// region's own row is always whole in its own view and the credits it knows are at most
    /// the true ones, so its `ledger_available` can never honestly exceed the capacity: a row
    /// that says otherwise is hostile or corrupt, and must not become quota to sell.
    pub fn check_credits_fit(&self, credits: &[allot_crdt::Credit]) -> Result<(), String> {
        for (p, pool) in self.genesis().pools.iter().enumerate() {
            let incoming: i128 = credits
                .iter()
                .filter(|c| c.to == self.me && c.pool as usize == p)
                .map(|c| i128::from(c.amount))
                .sum();
            if incoming == 0 {
                continue;
            }
            let after = i128::from(self.ledger.available(p as PoolIdx, self.me)) + incoming;
            if after > i128::from(pool.capacity()) {
                return Err(format!(
                    "a peer row credits pool {} with {incoming}, more than it holds",
                    pool.id
                ));
            }
        }
        Ok(())
    }

    /// Region `r`'s part of a pool as this region sees it: this region's own live figures,
    /// another region's as it last reported them (held, sale rate) and as the merged ledger
    /// has them (what it can sell is its ledger available minus what it holds).
    pub fn region_figures(&self, pool: PoolIdx, r: RegionIdx) -> RegionFigures {
        let p = pool as usize;
        if r == self.me {
            return RegionFigures {
                held: self.held[p],
                sellable: self.sellable(pool),
                sale_rate_per_min: self.rates[p].per_min,
            };
        }
        let peer = &self.peers[r as usize];
        let held = self.peer_held(pool, r);
        RegionFigures {
            held,
            sellable: self.ledger.available(pool, r).saturating_sub_unsigned(held),
            sale_rate_per_min: peer.sale_rate_per_min.get(p).copied().unwrap_or(0),
        }
    }

    /// Units of a pool still unsold anywhere, from the merged ledger: every region's
    /// available, minus what is held here and what each peer last said it held.
    pub fn global_available(&self, pool: PoolIdx) -> u64 {
        let p = pool as usize;
        let regions = self.genesis().regions.len() as RegionIdx;
        let available: i128 = (0..regions)
            .map(|r| self.ledger.available_wide(pool, r))
            .sum();
        let peers_held: i128 = (0..regions)
            .filter(|&r| r != self.me)
            .map(|r| i128::from(self.peer_held(pool, r)))
            .sum();
        let wide =
            available - i128::from(self.held[p]) - i128::from(self.pending_credit[p]) - peers_held;
        u64::try_from(wide.max(0)).unwrap_or(u64::MAX)
    }

    /// Checks the O(regions) invariants of one pool; cheap enough for every sale.
    #[inline]
    pub fn assert_pool(&self, pool: PoolIdx) {
        assert!(
            self.sellable(pool) >= 0,
            "sellable < 0 in {} pool {pool}",
            self.id
        );
        let mut total: i128 = 0;
        for r in 0..self.genesis().regions.len() as RegionIdx {
            total += self.ledger.available_wide(pool, r)
                + i128::from(self.ledger.consumed(pool, r) - self.ledger.returned(pool, r));
        }
        assert_eq!(
            total,
            i128::from(self.genesis().pool(pool).capacity()),
            "conservation broken in {} pool {pool}",
            self.id
        );
    }

    /// Checks the parts of a peer's gossip for this event that are not CRDT state (its
    /// version vector and ephemeral figures) before any of it is believed: a frame with the
    /// wrong shape or impossible numbers changes nothing.
    pub fn check_gossip(&self, g: &crate::gossip::EventGossip) -> Result<(), String> {
        self.check_peer_figures(PeerFigures {
            vv: Some(&g.vv),
            held: &g.held,
            spent: &g.spent,
            sale_rate_per_min: &g.sale_rate_per_min,
            demand_per_min: &g.demand_per_min,
        })
    }

    /// What a peer tells of this event besides CRDT state, as a frame brings it and as a
    /// [`PeerView`] keeps it: a version vector within the event's regions, figures for every
    /// pool, spent within a counter, holds within capacity.
    pub fn check_peer_figures(&self, f: PeerFigures<'_>) -> Result<(), String> {
        if f.vv
            .is_some_and(|vv| vv.len() > self.genesis().regions.len())
        {
            return Err("version vector names more regions than the event has".into());
        }
        let g_pools = &self.genesis().pools;
        if f.held.len() != g_pools.len()
            || f.spent.len() != g_pools.len()
            || f.sale_rate_per_min.len() != g_pools.len()
            || f.demand_per_min.len() != g_pools.len()
        {
            return Err("held, spent, sale rates and demand must list every pool once".into());
        }
        if f.spent.iter().any(|&s| s > allot_crdt::MAX_COUNTER) {
            return Err("a spent figure beyond any counter".into());
        }
        if let Some((pool, held)) = g_pools
            .iter()
            .zip(f.held)
            .find(|(pool, &held)| held > pool.capacity())
        {
            return Err(format!(
                "holds {held} of pool {}, more than its capacity",
                pool.id
            ));
        }
        Ok(())
    }

    pub fn actor(region: &str, incarnation: u64) -> ActorIncarnation {
        ActorIncarnation {
            region: region.to_owned(),
            incarnation,
        }
    }
}

/// The smallest of `blocks` that holds `n` seats (the first, among equals): taking from it
/// leaves the larger blocks whole.
pub fn smallest_block(
    blocks: &[std::ops::Range<SeatIdx>],
    n: usize,
) -> Option<&std::ops::Range<SeatIdx>> {
    blocks
        .iter()
        .filter(|b| b.len() >= n)
        .min_by_key(|b| (b.len(), b.start))
}

/// Whether seat `b` sits right after seat `a` in one row, by their ids: the same row prefix
/// and consecutive numbers ("A-11", "A-12"). Ids without a number are taken in map order.
fn next_to(a: &str, b: &str) -> bool {
    fn parts(id: &str) -> Option<(&str, u64)> {
        let row = id.trim_end_matches(|c: char| c.is_ascii_digit());
        let number = id[row.len()..].parse().ok()?;
        Some((row, number))
    }
    match (parts(a), parts(b)) {
        (Some((ra, na)), Some((rb, nb))) => ra == rb && na.checked_add(1) == Some(nb),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{next_to, Demand, DEMAND_WINDOW_MS};

    #[test]
    fn demand_is_right_from_the_first_window_and_forgets_a_stop() {
        let mut d = Demand::default();
        d.update(1_000);
        // Nothing asked before the sale opens: no demand, and no pull towards zero later.
        for w in 1..=4 {
            d.update(1_000 + w * DEMAND_WINDOW_MS);
        }
        assert_eq!(d.per_s, 0.0);
        // 30 units every half second is 60 a second, from the very first window.
        for w in 5..=8 {
            d.units = 30;
            d.update(1_000 + w * DEMAND_WINDOW_MS);
            assert!((d.per_s - 60.0).abs() < 1e-9, "window {w}: {}", d.per_s);
        }
        // Buyers stop: the estimate decays to nothing.
        for w in 9..=60 {
            d.update(1_000 + w * DEMAND_WINDOW_MS);
        }
        assert_eq!(d.per_s, 0.0);
    }

    #[test]
    fn the_first_window_starts_with_the_first_buyer_not_at_creation() {
        // Ticks every 50 ms from the event's creation; buyers come from 1,450 ms on at 60
        // units a second (3 a tick). A first window from creation would have seen 3 units in
        // 500 ms (6 a second), and the young average would have carried that for seconds.
        let mut d = Demand::default();
        let mut t = 1_000;
        while t <= 1_450 {
            d.update(t);
            t += 50;
        }
        while t <= 2_000 {
            d.units += 3;
            d.update(t);
            t += 50;
        }
        assert!((d.per_s - 60.0).abs() < 6.0, "{}", d.per_s);
    }

    #[test]
    fn seats_are_next_to_each_other_within_a_row() {
        assert!(next_to("A-11", "A-12"));
        assert!(next_to("S-9", "S-10"));
        assert!(!next_to("A-30", "B-1"));
        assert!(!next_to("A-12", "A-14"));
        assert!(!next_to("A-12", "AA-13"));
        assert!(next_to("stall-left", "stall-right"));
        assert!(!next_to("A-1", "box"));
    }
}
