//! Gossip at the core's boundary: building each peer's frame within the frame budget (one
//! event's whole unit at a time, longest-owed first) and applying a peer's frame, every part
//! checked before anything of it is believed.

use allot_crdt::{Genesis, PoolIdx, RegionIdx};

use crate::api::Millis;
use crate::event::{EventState, PeerFigures};
use crate::gossip::{EventGossip, GossipFrame};
use crate::reads::RecordIndex;
use crate::record::{Record, RecordBody};

use super::Core;

/// Frames told at once for one event's low stock (see [`Core::tell_low_stock`]) between two
/// ticks, per peer.
pub(super) const LOW_STOCK_FRAMES: u32 = 20;

/// A peer whose last frame is older than this is taken as cut off: not asked for quota, not
/// sent buyers' requests (its stock then counts as unreachable, not sold out).
const PEER_FRESH_MS: Millis = 3_000;

/// One event's entry for one peer, waiting for a place in the frame.
struct Unit {
    owed_since: Option<Millis>,
    /// Encoded bytes.
    size: usize,
    /// The event's position in the core, and the peer's in the event.
    event: usize,
    peer: usize,
    gossip: EventGossip,
}

/// The most one seat's entry in a row delta encodes to in any history an event can have: the
/// stamp (a row version below 2^35: 5 bytes), the entry kind (1), pool (1: at most 64), seat
/// (3: at most 100,000), epoch (3: a seat moved fewer than 2^21 times) and region (1: at most
/// 32), as postcard varints. Used to bound an event's largest gossip unit at creation.
const SEAT_ENTRY_MAX_BYTES: usize = 16;
/// The same for a counter entry (a grant, `consumed`, `returned`: stamp, kind, pool, region,
/// a value below `MAX_COUNTER` in 9 bytes).
const COUNTER_ENTRY_MAX_BYTES: usize = 20;
/// The share of a frame one event's whole unit may use; the rest stays for the other events'
/// digest entries in the same frame.
pub(super) fn unit_room(budget: usize) -> usize {
    budget - budget / 8
}

/// The most one event's gossip unit can grow to: its genesis and first metadata change, and
/// every row with every seat given away and every counter changed.
pub(super) fn largest_gossip_unit(genesis: &Genesis, meta_bytes: usize) -> usize {
    let regions = genesis.regions.len();
    let genesis_bytes = postcard::experimental::serialized_size(genesis).unwrap_or(usize::MAX);
    let rows: usize = genesis
        .pools
        .iter()
        .map(|p| {
            p.seat_count() * regions * SEAT_ENTRY_MAX_BYTES
                + regions * (regions + 2) * COUNTER_ENTRY_MAX_BYTES
        })
        .sum();
    genesis_bytes
        .saturating_add(meta_bytes)
        .saturating_add(rows)
}

impl Core {
    /// The tick's frames: every event, to every peer.
    pub(super) fn gossip(&mut self) {
        for e in &mut self.events {
            e.low_frames = 0;
        }
        self.frames_to_peers(None);
    }

    /// A frame to every peer: every event's unit, or `only` that event's.
    fn frames_to_peers(&mut self, only: Option<usize>) {
        let peers: Vec<String> = self
            .cfg
            .regions
            .iter()
            .filter(|r| **r != self.cfg.region)
            .cloned()
            .collect();
        for peer in peers {
            self.frame_to(&peer, only);
        }
    }

    /// Builds the frame for one peer within the frame budget: every event's unit, or `only`
    /// that event's. Each event is one unit, never split (a row's entries keep only their last
    /// stamp, so part of a delta would pass for all of it); units the peer has been owed
    /// longest go first, and what does not fit waits.
    pub(super) fn frame_to(&mut self, peer: &str, only: Option<usize>) {
        let now = self.now;
        let mut units: Vec<Unit> = Vec::new();
        for (ev, e) in self.events.iter_mut().enumerate() {
            if only.is_some_and(|o| o != ev) || e.created_at_index > self.durable.persisted() {
                continue;
            }
            let Some(p) = e.genesis().region_index(peer) else {
                continue;
            };
            let Some(unit) = Self::gossip_unit(e, p, self.durable.persisted()) else {
                continue;
            };
            let size = postcard::experimental::serialized_size(&unit).unwrap_or(usize::MAX);
            units.push(Unit {
                owed_since: e.peers[p as usize].owed_since,
                size,
                event: ev,
                peer: p as usize,
                gossip: unit,
            });
        }
        // Owed longest first; never-owed units after them, in event order.
        units.sort_by_key(|u| (u.owed_since.is_none(), u.owed_since, u.event));
        let budget = self.cfg.frame_budget_bytes;
        // The frame's own length prefix is at most a few bytes.
        let mut used = 8usize;
        let mut frame = GossipFrame::default();
        for u in units {
            let view = &mut self.events[u.event].peers[u.peer];
            // Digest-only entries wait their turn too: a peer must hear every event's version
            // vector and figures eventually, however busy the frames are.
            if used.saturating_add(u.size) <= budget {
                used += u.size;
                view.owed_since = None;
                frame.events.push(u.gossip);
                self.events[u.event].note_told();
            } else {
                view.owed_since.get_or_insert(now);
            }
        }
        debug_assert!(
            postcard::experimental::serialized_size(&frame).unwrap_or(usize::MAX) <= budget,
            "a gossip frame over its budget"
        );
        if !frame.events.is_empty() {
            self.out.messages.push((peer.to_owned(), frame));
        }
    }

    /// What one event tells peer `p`: its digest entry (version vector, ephemeral figures),
    /// the row deltas the peer lacks, and the genesis and metadata while it lacks them.
    fn gossip_unit(
        e: &mut EventState,
        p: RegionIdx,
        persisted: RecordIndex,
    ) -> Option<EventGossip> {
        let meta_durable = e.meta_index <= persisted;
        let view = &e.peers[p as usize];
        let genesis = match (&view.vv, meta_durable) {
            (None, true) => Some(((**e.genesis()).clone(), e.meta.all_changes())),
            (None, false) => return None,
            _ => None,
        };
        let theirs = view.vv.clone().unwrap_or_default();
        // Our own entry is the durable version: the one the rows we send can prove.
        let mut vv = e.ledger.version_vector();
        if !crate::bugs::publish_before_durable() {
            vv.set(e.me as usize, e.published.seq);
        }
        let mut rows = Vec::new();
        for w in 0..e.genesis().regions.len() as RegionIdx {
            if w == p {
                continue;
            }
            let have = theirs.get(w as usize);
            let d = if w == e.me && !crate::bugs::publish_before_durable() {
                e.published.delta_since(e.ledger.hash(), have)
            } else {
                e.ledger.delta_since(w, have)
            };
            rows.extend(d);
        }
        let meta_heads = e.meta.heads();
        e.gossiped_meta_heads.clone_from(&meta_heads);
        let view = &e.peers[p as usize];
        let meta_changes = if meta_durable && view.vv.is_some() && view.meta_heads != meta_heads {
            let theirs = view.meta_heads.clone();
            e.meta.changes_since(&theirs)
        } else {
            Vec::new()
        };
        Some(EventGossip {
            event: e.id.to_string(),
            genesis_hash: e.ledger.hash(),
            genesis,
            vv,
            rows,
            meta_heads,
            meta_changes,
            held: e.held.clone(),
            spent: e.spent_to_report(),
            sale_rate_per_min: e.rates.iter().map(|r| r.per_min).collect(),
            demand_per_min: e.demand.iter().map(|d| d.per_min()).collect(),
        })
    }

    pub(super) fn peer(&mut self, from: &str, frame: GossipFrame) {
        if from == self.cfg.region || !self.cfg.regions.iter().any(|r| r == from) {
            self.out
                .warnings
                .push(format!("gossip from unknown region {from:?} refused"));
            return;
        }
        for mut g in frame.events {
            let ev = match self.by_id.get(g.event.as_str()) {
                Some(&ev) => ev,
                None => {
                    let Some((genesis, meta)) = g.genesis.take() else {
                        continue;
                    };
                    if let Err(why) = self.learn_event(genesis, meta, g.genesis_hash, &g.event) {
                        self.out
                            .warnings
                            .push(format!("event {:?} from {from} refused: {why}", g.event));
                        continue;
                    }
                    self.by_id[g.event.as_str()]
                }
            };
            if self.events[ev].ledger.hash() != g.genesis_hash {
                self.out.warnings.push(format!(
                    "event {:?} from {from}: genesis {} differs from ours; refused",
                    g.event, g.genesis_hash
                ));
                continue;
            }
            let Some(p) = self.events[ev].genesis().region_index(from) else {
                continue;
            };
            if let Err(why) = self.events[ev].check_gossip(&g) {
                self.out
                    .warnings
                    .push(format!("event {:?} from {from}: refused: {why}", g.event));
                continue;
            }
            let me = self.events[ev].me;
            {
                let view = &mut self.events[ev].peers[p as usize];
                view.vv = Some(g.vv);
                view.meta_heads = g.meta_heads;
                view.held = g.held;
                view.spent = g.spent;
                view.sale_rate_per_min = g.sale_rate_per_min;
                view.demand_per_min = g.demand_per_min;
                view.heard_at = Some(self.now);
            }
            for row in g.rows {
                if row.writer == me {
                    continue;
                }
                self.commit_peer(
                    RecordBody::PeerRow {
                        event: g.event.clone(),
                        row,
                    },
                    from,
                );
            }
            if !g.meta_changes.is_empty() && self.events[ev].meta.has_new(&g.meta_changes) {
                self.commit_peer(
                    RecordBody::MetaChanged {
                        event: g.event.clone(),
                        changes: g.meta_changes,
                        idem: None,
                    },
                    from,
                );
            }
        }
    }

    pub(super) fn learn_event(
        &mut self,
        genesis: Genesis,
        meta: Vec<Vec<u8>>,
        hash: allot_crdt::GenesisHash,
        id: &str,
    ) -> Result<(), String> {
        genesis.validate().map_err(|e| e.to_string())?;
        if genesis.hash() != hash || genesis.id != id {
            return Err("genesis does not match its hash or id".into());
        }
        let index = self.last_index.next();
        let body = RecordBody::EventCreated {
            genesis,
            meta,
            idem: None,
        };
        self.apply_record(index, self.now, &body)?;
        self.last_index = index;
        self.out.records.push(Record {
            index: index.0,
            at: self.now,
            body,
        });
        Ok(())
    }

    /// Applies peer input as a record; emits it only if it changed something.
    pub(super) fn commit_peer(&mut self, body: RecordBody, from: &str) {
        let index = self.last_index.next();
        match self.apply_record(index, self.now, &body) {
            Ok(true) => {
                self.last_index = index;
                self.out.records.push(Record {
                    index: index.0,
                    at: self.now,
                    body,
                });
            }
            Ok(false) => {}
            Err(why) => self
                .out
                .warnings
                .push(format!("from {from}: refused: {why}")),
        }
    }
}

impl Core {
    /// What region `r` may still sell of pool `p`, as this region last heard: its merged
    /// row's available quota less what its last frame said it holds.
    pub(super) fn last_known_sellable(&self, ev: usize, p: PoolIdx, r: usize) -> u64 {
        let e = &self.events[ev];
        if r == e.me as usize {
            return e.sellable(p).max(0) as u64;
        }
        let held = e.peer_held(p, r as RegionIdx);
        let available = e.ledger.available_wide(p, r as RegionIdx);
        u64::try_from((available - i128::from(held)).max(0)).unwrap_or(u64::MAX)
    }

    /// Event `ev`'s stock here may just have changed: while a pool's stock is under one
    /// maximum order (or was, in the last frame), the peers hear of the change now rather
    /// than at the next tick. They send their buyers here, or answer them `sold-out`, by the
    /// stock they last heard of: a buyer sent for units already gone waits a round trip for a
    /// refusal, and one told `sold-out` while units had just come back here heard a false
    /// sold-out. The frame carries this event alone, and at most [`LOW_STOCK_FRAMES`] go
    /// between two ticks (the tick tells what waits), so gossip grows with ticks, not with the
    /// sale rate, however long a pool stays low. A pool under one maximum order has at most
    /// that many units to sell, so a sale's last units are all told at once.
    pub(super) fn tell_low_stock(&mut self, ev: usize) {
        let e = &self.events[ev];
        // Runs after every sale: the two flags first, the pools only when they allow a frame.
        if !self.cfg.forwarding || e.low_frames >= LOW_STOCK_FRAMES {
            return;
        }
        let low = self.cfg.max_quantity as i64;
        let changed = (0..e.announced.len()).any(|p| {
            let (stock, told) = (e.sellable(p as PoolIdx), e.announced[p]);
            stock != told && (stock < low || told < low)
        });
        if changed {
            self.events[ev].low_frames += 1;
            self.frames_to_peers(Some(ev));
        }
    }

    /// Whether region `r` of event `ev` was heard from lately (see [`PEER_FRESH_MS`]).
    pub(super) fn heard_lately(&self, ev: usize, r: usize) -> bool {
        self.events[ev].peers[r]
            .heard_at
            .is_some_and(|h| self.now.saturating_sub(h) <= PEER_FRESH_MS)
    }
}

impl Core {
    /// Gossip's own state, what each event keeps of each peer: one view per region, none
    /// ever of this region (it does not gossip to itself), figures shaped as the frame check
    /// admitted them, and no time after the core's clock (which only moves forward).
    pub(super) fn check_gossip(&self) -> Result<(), String> {
        for e in &self.events {
            let g = e.genesis();
            let fail = |m: String| Err(format!("{}: gossip: {m}", e.id));
            if e.peers.len() != g.regions.len() {
                return fail(format!(
                    "{} peer views for {} regions",
                    e.peers.len(),
                    g.regions.len()
                ));
            }
            if e.low_frames > LOW_STOCK_FRAMES {
                return fail(format!("{} low-stock frames in one tick", e.low_frames));
            }
            for (r, view) in e.peers.iter().enumerate() {
                let region = &g.regions[r];
                if r == e.me as usize {
                    if view.vv.is_some() || view.heard_at.is_some() || view.owed_since.is_some() {
                        return fail("a view of this region itself".into());
                    }
                    continue;
                }
                if let Some(t) = view
                    .heard_at
                    .into_iter()
                    .chain(view.owed_since)
                    .find(|&t| t > self.now)
                {
                    return fail(format!("{region}: a time {t} after now {}", self.now));
                }
                if view.heard_at.is_none() {
                    // Never heard: nothing believed of it yet.
                    if view.vv.is_some() || !view.held.is_empty() || !view.spent.is_empty() {
                        return fail(format!("{region}: figures of a peer never heard"));
                    }
                    continue;
                }
                // A peer that reset is heard but unknown again (its version vector cleared, so
                // it is sent everything); one that was heard left figures for every pool.
                e.check_peer_figures(PeerFigures {
                    vv: view.vv.as_ref(),
                    held: &view.held,
                    spent: &view.spent,
                    sale_rate_per_min: &view.sale_rate_per_min,
                    demand_per_min: &view.demand_per_min,
                })
                .map_err(|m| format!("{}: gossip: {region}: {m}", e.id))?;
            }
        }
        Ok(())
    }
}
