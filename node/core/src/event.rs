//! One event as a region holds it: the replicated ledger and metadata, plus what is local to
//! this region (holds, seat states, credits not yet durable, what peers last reported).

use std::collections::HashMap;
use std::sync::Arc;

use allot_crdt::{
    ActorIncarnation, EventMeta, Genesis, Ledger, MetaDoc, PoolIdx, RegionIdx, Row, SeatIdx,
    VersionVector,
};

use crate::api::Millis;

/// A seat's state in the region that owns it (ownership itself is the ledger's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatLocal {
    Free,
    Held(crate::reads::HoldNo),
    Sold(crate::reads::OrderNo),
    /// Received from a peer by the record at this index; not spendable until it is durable.
    Arriving(u64),
}

/// What a peer last told us about an event.
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    /// `None` until the peer reports the event: we keep sending it the genesis.
    pub vv: Option<VersionVector>,
    pub meta_heads: Vec<[u8; 32]>,
    pub held: Vec<u64>,
    pub sale_rate_per_min: Vec<u64>,
    pub heard_at: Option<Millis>,
    /// Since when this peer has been owed a delta of the event that did not fit a frame:
    /// the longest-owed events go first in the next frame, so catch-up after a reset spreads
    /// over ticks without starving any event.
    pub owed_since: Option<Millis>,
}

/// This region's recent sale rate of one pool, measured over windows of about a second.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaleRate {
    pub window_start: Millis,
    pub consumed_at_start: u64,
    pub per_min: u64,
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
    /// This region's row as far as it is durable: the only version gossip may publish.
    pub published: Row,
    /// Index of the record that created the event here.
    pub created_at_index: u64,
    /// Index of the last metadata record; changes are sent only once it is durable.
    pub meta_index: u64,
    /// Bytes of every metadata change held, as a peer that lacks the event receives them.
    pub meta_bytes: usize,
    pub peers: Vec<PeerView>,
    pub rates: Vec<SaleRate>,
}

impl EventState {
    pub fn new(
        genesis: Genesis,
        me: RegionIdx,
        meta: MetaDoc,
        info: EventMeta,
        index: u64,
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
            published: Row::new(me, n, p),
            created_at_index: index,
            meta_index: index,
            meta_bytes: 0,
            peers: vec![PeerView::default(); n],
            rates: vec![SaleRate::default(); p],
        };
        ev.refresh_prices();
        ev
    }

    /// Closes the current rate window of every pool once it is a second old.
    pub fn update_rates(&mut self, now: Millis) {
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

    pub fn genesis(&self) -> &Arc<Genesis> {
        self.ledger.genesis()
    }

    pub fn refresh_prices(&mut self) {
        let g = self.ledger.genesis().clone();
        for (i, pool) in g.pools.iter().enumerate() {
            self.prices[i] = self.info.prices.get(&pool.id).copied().unwrap_or(0);
        }
    }

    /// What this region may still hold, sell or give away: `ledger_available − held`, minus
    /// credits that are not durable yet.
    #[inline]
    pub fn sellable(&self, pool: PoolIdx) -> i64 {
        let p = pool as usize;
        let wide = i128::from(self.ledger.available(pool, self.me))
            - i128::from(self.held[p])
            - i128::from(self.pending_credit[p]);
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

    /// Units of a pool still unsold anywhere, from the merged ledger: every region's
    /// available, minus what is held here and what each peer last said it held.
    pub fn global_available(&self, pool: PoolIdx) -> u64 {
        let p = pool as usize;
        let regions = self.genesis().regions.len() as RegionIdx;
        let available: i128 = (0..regions)
            .map(|r| self.ledger.available_wide(pool, r))
            .sum();
        let peers_held: i128 = self
            .peers
            .iter()
            .map(|v| i128::from(v.held.get(p).copied().unwrap_or(0)))
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
        let g_pools = &self.genesis().pools;
        if g.vv.len() > self.genesis().regions.len() {
            return Err("version vector names more regions than the event has".into());
        }
        if g.held.len() != g_pools.len() || g.sale_rate_per_min.len() != g_pools.len() {
            return Err("held and sale rates must list every pool once".into());
        }
        if let Some((pool, held)) = g_pools
            .iter()
            .zip(&g.held)
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
