//! Records: the one place state changes. The live path builds a record, applies it here and
//! emits it; `Core::recover` applies the same records again; "persisted up to n" releases
//! what waited for them.

use allot_crdt::{Applied, MetaDoc, RowDelta};

use crate::api::*;
use crate::event::{EventState, SeatLocal};
use crate::reads::{RecordIndex, StoredOrder};
use crate::record::{IdemRecord, Record, RecordBody};

use super::durability::{PendingCredit, PendingRow};
use super::Core;

impl Core {
    /// Applies a record the live path built (so it cannot fail) and emits it.
    pub(super) fn commit(&mut self, body: RecordBody) -> RecordIndex {
        let index = self.last_index.next();
        let changed = self
            .apply_record(index, self.now, &body)
            .expect("the live path builds only valid records");
        assert!(changed, "a command's record always changes state");
        self.last_index = index;
        self.out.records.push(Record {
            index: index.0,
            at: self.now,
            body,
        });
        index
    }

    /// The one place state changes. Returns whether the record changed anything (a peer row
    /// may turn out to be old news, and then is not recorded).
    pub(super) fn apply_record(
        &mut self,
        index: RecordIndex,
        at: Millis,
        body: &RecordBody,
    ) -> Result<bool, String> {
        match body {
            RecordBody::EventCreated {
                genesis,
                meta,
                idem,
            } => {
                if self.by_id.contains_key(genesis.id.as_str()) {
                    return Err(format!("event {} created twice", genesis.id));
                }
                genesis.validate().map_err(|e| e.to_string())?;
                let me = genesis
                    .region_index(&self.cfg.region)
                    .ok_or("event does not include this region")?;
                let actor = EventState::actor(&self.cfg.region, self.cfg.incarnation);
                let doc = MetaDoc::from_changes(&actor, meta).map_err(|e| e.to_string())?;
                let info = doc.read().map_err(|e| e.to_string())?;
                let mut ev = EventState::new(genesis.clone(), me, doc, info, index);
                ev.meta_bytes = meta.iter().map(Vec::len).sum();
                self.by_id.insert(ev.id.clone(), self.events.len());
                self.events.push(ev);
                self.remember(index, at, idem);
            }
            RecordBody::MetaChanged {
                event,
                changes,
                idem,
            } => {
                let ev = self.event_idx(event).map_err(|e| e.to_string())?;
                let e = &mut self.events[ev];
                // Tried on a fork first: changes that leave the metadata unreadable change
                // nothing.
                let info = e.meta.apply_checked(changes).map_err(|e| e.to_string())?;
                e.info = info;
                e.refresh_prices();
                e.meta_index = index;
                e.meta_bytes += changes.iter().map(Vec::len).sum::<usize>();
                self.remember(index, at, idem);
            }
            RecordBody::HoldPlaced { hold, idem } => {
                let ev = self.event_idx(&hold.event).map_err(|e| e.to_string())?;
                let e = &mut self.events[ev];
                let p = hold.pool as usize;
                e.held[p] += hold.quantity;
                for &s in &hold.seats {
                    assert_eq!(
                        e.seats[p][s as usize],
                        SeatLocal::Free,
                        "held seat must be free"
                    );
                    e.seats[p][s as usize] = SeatLocal::Held(hold.n);
                }
                e.assert_pool(hold.pool);
                self.holds.insert(hold.clone());
                self.remember(index, at, idem);
            }
            RecordBody::HoldsReleased { holds, .. } => {
                for n in holds {
                    let h = self
                        .holds
                        .take(*n)
                        .ok_or_else(|| format!("release of unknown hold {n}"))?;
                    self.drop_hold(&h, SeatLocal::Free);
                }
            }
            RecordBody::OrderPlaced {
                order,
                hold,
                row,
                idem,
            } => {
                let ev = self.event_idx(&order.event).map_err(|e| e.to_string())?;
                if let Some(h) = hold {
                    let h = self.holds.take(*h).ok_or("confirm of an unknown hold")?;
                    self.drop_hold(&h, SeatLocal::Sold(order.n));
                } else {
                    let e = &mut self.events[ev];
                    for &s in &order.seats {
                        assert_eq!(
                            e.seats[order.pool as usize][s as usize],
                            SeatLocal::Free,
                            "sold seat must be free"
                        );
                        e.seats[order.pool as usize][s as usize] = SeatLocal::Sold(order.n);
                    }
                }
                self.apply_own_row(index, ev, row)?;
                self.events[ev].assert_pool(order.pool);
                if order.n != self.next_order {
                    return Err(format!(
                        "order {} out of sequence: {} is next",
                        order.n, self.next_order
                    ));
                }
                self.next_order = order.n.next();
                self.recent.wrote(
                    StoredOrder {
                        index,
                        order: order.clone(),
                    },
                    *hold,
                );
                self.remember(index, at, idem);
            }
            RecordBody::Refunded { order, row, idem } => {
                // The record carries the order as the refund left it: the rest of it is in
                // the store.
                if order.status != OrderStatus::Refunded || order.n >= self.next_order {
                    return Err(format!(
                        "refund record of order {} is not a refund",
                        order.n
                    ));
                }
                let ev = self.event_idx(&order.event).map_err(|e| e.to_string())?;
                for &s in &order.seats {
                    let seat = &mut self.events[ev].seats[order.pool as usize][s as usize];
                    if *seat != SeatLocal::Sold(order.n) {
                        return Err(format!(
                            "refund of order {} frees seat {s}, which it does not hold",
                            order.n
                        ));
                    }
                    *seat = SeatLocal::Free;
                }
                self.apply_own_row(index, ev, row)?;
                self.events[ev].assert_pool(order.pool);
                self.recent.wrote(
                    StoredOrder {
                        index,
                        order: order.clone(),
                    },
                    None,
                );
                self.remember(index, at, idem);
            }
            RecordBody::Granted { event, row, idem } => {
                let ev = self.event_idx(event).map_err(|e| e.to_string())?;
                self.apply_own_row(index, ev, row)?;
                for &(_, entry) in &row.entries {
                    self.events[ev].assert_pool(entry.pool());
                }
                self.remember(index, at, idem);
            }
            RecordBody::KeyAnswered { idem } => {
                self.idem.remember(index, at, Some(idem));
            }
            RecordBody::RowRestored { .. }
            | RecordBody::SeatsRestored { .. }
            | RecordBody::CountersRestored { .. } => {
                self.restore(body)?;
            }
            RecordBody::PeerRow { event, row } => {
                let ev = self.event_idx(event).map_err(|e| e.to_string())?;
                let e = &mut self.events[ev];
                if row.writer == e.me {
                    return Err("a peer row written by this region".into());
                }
                // Every rule is checked on the preview, before anything changes: a refused
                // row leaves no trace (no half-applied ledger, no stray pending credit).
                match e.ledger.preview(row).map_err(|r| r.to_string())? {
                    Applied::Stale | Applied::Gap { .. } => return Ok(false),
                    Applied::Advanced { credits, seats, .. } => {
                        if seats.iter().any(|m| m.from == e.me) {
                            return Err("a peer row moved a seat this region owns".into());
                        }
                        e.check_credits_fit(&credits)?;
                        let writer = row.writer;
                        e.ledger.apply(row).map_err(|r| r.to_string())?;
                        for c in credits.iter().filter(|c| c.to == e.me) {
                            e.pending_credit[c.pool as usize] += c.amount;
                            self.durable.credit(PendingCredit {
                                index,
                                event: ev,
                                pool: c.pool,
                                amount: c.amount,
                                seat: None,
                            });
                        }
                        for m in seats.iter().filter(|m| m.to == e.me) {
                            e.seats[m.pool as usize][m.seat as usize] = SeatLocal::Arriving(index);
                            self.durable.credit(PendingCredit {
                                index,
                                event: ev,
                                pool: m.pool,
                                amount: 0,
                                seat: Some(m.seat),
                            });
                        }
                        // However quota arrives (an answer, gossip healing a lost one, an
                        // operator's transfer), it is not given away again at once.
                        let now = self.now;
                        for c in credits.iter().filter(|c| c.to == e.me && c.amount > 0) {
                            self.rebalancer.note_received((ev, c.pool), writer, now);
                        }
                        for m in seats.iter().filter(|m| m.to == e.me) {
                            self.rebalancer.note_received((ev, m.pool), m.from, now);
                        }
                    }
                }
            }
        }
        Ok(true)
    }

    pub(super) fn restore(&mut self, body: &RecordBody) -> Result<(), String> {
        match body {
            RecordBody::RowRestored { event, row } => {
                let ev = self.event_idx(event).map_err(|e| e.to_string())?;
                let e = &mut self.events[ev];
                if row.since != 0 {
                    return Err("a restored row must be whole (since 0)".into());
                }
                match e.ledger.apply(row).map_err(|r| r.to_string())? {
                    Applied::Advanced { .. } => {}
                    other => return Err(format!("restored row did not advance: {other:?}")),
                }
                if row.writer == e.me {
                    e.published.absorb(row);
                }
            }
            RecordBody::SeatsRestored { event, pool, sold } => {
                let ev = self.event_idx(event).map_err(|e| e.to_string())?;
                let e = &mut self.events[ev];
                let seats = e
                    .seats
                    .get_mut(*pool as usize)
                    .ok_or_else(|| format!("event {event} has no pool {pool}"))?;
                for &(s, order) in sold {
                    let seat = seats
                        .get_mut(s as usize)
                        .ok_or_else(|| format!("event {event} pool {pool} has no seat {s}"))?;
                    *seat = SeatLocal::Sold(order);
                }
            }
            RecordBody::CountersRestored {
                next_hold,
                next_order,
            } => {
                self.holds.restore_next(*next_hold);
                self.next_order = self.next_order.max(*next_order);
            }
            _ => unreachable!("restore is called with restore records only"),
        }
        Ok(())
    }

    pub(super) fn apply_own_row(
        &mut self,
        index: RecordIndex,
        ev: usize,
        row: &RowDelta,
    ) -> Result<(), String> {
        let e = &mut self.events[ev];
        if row.writer != e.me {
            return Err("own-row record written by another region".into());
        }
        match e.ledger.apply(row).map_err(|r| r.to_string())? {
            Applied::Advanced { .. } => {}
            other => return Err(format!("own row did not advance: {other:?}")),
        }
        self.durable.own_row(PendingRow {
            index,
            event: ev,
            row: row.clone(),
        });
        Ok(())
    }

    /// Gives back what a hold that left the book set aside.
    pub(super) fn drop_hold(&mut self, h: &Hold, seat_state: SeatLocal) {
        let ev = self.by_id[&h.event];
        let e = &mut self.events[ev];
        e.held[h.pool as usize] -= h.quantity;
        for &s in &h.seats {
            e.seats[h.pool as usize][s as usize] = seat_state;
        }
    }

    pub(super) fn remember(&mut self, index: RecordIndex, at: Millis, idem: &Option<IdemRecord>) {
        self.idem.remember(index, at, idem.as_ref());
    }

    pub(super) fn persisted(&mut self, upto: RecordIndex) {
        if !self.durable.advance(upto.min(self.last_index)) {
            return;
        }
        while let Some(r) = self.durable.durable_row() {
            self.events[r.event].published.absorb(&r.row);
        }
        let mut landed: Vec<usize> = Vec::new();
        while let Some(c) = self.durable.durable_credit() {
            let e = &mut self.events[c.event];
            let p = c.pool as usize;
            e.pending_credit[p] -= c.amount;
            if !landed.contains(&c.event) {
                landed.push(c.event);
            }
            if let Some(s) = c.seat {
                if matches!(e.seats[p][s as usize], SeatLocal::Arriving(_)) {
                    e.seats[p][s as usize] = SeatLocal::Free;
                }
            }
        }
        while let Some((caller, reply)) = self.durable.durable_reply() {
            self.deliver_reply(caller, reply);
        }
        for ev in landed {
            self.tell_low_stock(ev);
        }
        self.handoffs_durable(self.durable.persisted());
        self.send_durable_forwards();
        self.gathers_durable(self.durable.persisted());
        self.trim_recent();
    }
}
