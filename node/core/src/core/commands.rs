//! Commands: what buyers and operators ask of this region — create and edit events, hold,
//! confirm, release, purchase, refund, transfer — each checked against this region's view and
//! turned into one record (or refused with a typed error that changes nothing).

use std::collections::BTreeMap;
use std::sync::Arc;

use allot_crdt::{Change, EventMeta, Genesis, MetaDoc, MetaPatch, PoolIdx, PoolSpec, SeatIdx};

use crate::api::*;
use crate::event::{EventState, SeatLocal};
use crate::ids::{GlobalId, IdKind};
use crate::policy::Reason;
use crate::reads::RecordIndex;
use crate::reads::{Found, HoldNo, Lookup, OrderNo, StoredOrder};
use crate::record::{RecordBody, ReleaseReason};

use super::handoffs::Give;
use super::sync::{largest_gossip_unit, unit_room};
use super::{Core, Halt};

const MAX_TEXT: usize = 4000;
const MAX_PRICE: u64 = 1_000_000_000;

/// The store answered a read with another order than the one asked for: asking again would
/// get the same answer, so the request fails (503) and nothing changes.
fn mismatch(asked: &str, got: &StoredOrder) -> Halt {
    Halt::Refused(CoreError::Storage(format!(
        "asked the store for {asked}, it answered order {} (hold {:?})",
        got.order.n, got.order.hold
    )))
}

pub(super) fn invalid<T>(why: impl Into<String>) -> Result<T, CoreError> {
    Err(CoreError::Invalid(why.into()))
}

pub(super) fn check_text(field: &str, s: &str, max: usize) -> Result<(), CoreError> {
    if s.len() > max || s.chars().any(char::is_control) {
        return invalid(format!(
            "{field}: at most {max} bytes, no control characters"
        ));
    }
    Ok(())
}

pub(super) fn check_id(field: &str, s: &str) -> Result<(), CoreError> {
    if allot_crdt::valid_id(s) {
        Ok(())
    } else {
        invalid(format!("{field}: 1-64 characters of A-Z a-z 0-9 - _ ."))
    }
}

impl Core {
    pub(super) fn event_idx(&self, event: &str) -> Result<usize, CoreError> {
        self.by_id
            .get(event)
            .copied()
            .ok_or_else(|| CoreError::UnknownEvent(event.to_owned()))
    }

    pub(super) fn pool_idx(&self, ev: usize, pool: &str) -> Result<PoolIdx, CoreError> {
        self.events[ev]
            .genesis()
            .pool_index(pool)
            .ok_or_else(|| CoreError::UnknownPool(pool.to_owned()))
    }

    pub(super) fn create_event(
        &mut self,
        spec: EventSpec,
        key: Option<&IdempotencyKey>,
    ) -> Result<(RecordIndex, Outcome), CoreError> {
        if self.cfg.region != self.cfg.catalog_region {
            return Err(CoreError::NotCatalog {
                catalog: self.cfg.catalog_region.clone(),
            });
        }
        check_id("id", &spec.id)?;
        if self.by_id.contains_key(spec.id.as_str()) {
            return Err(CoreError::EventExists(spec.id));
        }
        check_text("name", &spec.name, 200)?;
        check_text("description", &spec.description, MAX_TEXT)?;
        check_text("venue", &spec.venue, 200)?;
        check_text("starts_at", &spec.starts_at, 40)?;
        if !(-90.0..=90.0).contains(&spec.lat) || !(-180.0..=180.0).contains(&spec.lon) {
            return invalid("lat must be within ±90 and lon within ±180");
        }
        if !(1..=86_400).contains(&spec.hold_ttl_s) {
            return invalid("hold_ttl_s must be 1-86400");
        }
        let mut prices = BTreeMap::new();
        for p in &spec.pools {
            if p.price_cents > MAX_PRICE {
                return invalid(format!("pool {}: price_cents at most {MAX_PRICE}", p.id));
            }
            prices.insert(p.id.clone(), p.price_cents);
        }
        let pools = spec
            .pools
            .iter()
            .map(|p| PoolSpec {
                id: p.id.clone(),
                kind: p.kind.clone(),
            })
            .collect();
        let genesis = Genesis::build(
            &spec.id,
            &spec.currency,
            &self.cfg.regions,
            pools,
            &spec.allotments,
        )?;
        let meta = EventMeta {
            name: spec.name,
            description: spec.description,
            venue: spec.venue,
            lat: spec.lat,
            lon: spec.lon,
            starts_at: spec.starts_at,
            hold_ttl_s: spec.hold_ttl_s,
            prices,
            rebalance: spec.rebalance,
            sales: allot_crdt::SalesState::Open,
            on_sale_at_ms: None,
        };
        let actor = EventState::actor(&self.cfg.region, self.cfg.incarnation);
        let (_, change) =
            MetaDoc::create(&actor, &meta).map_err(|e| CoreError::Meta(e.to_string()))?;
        let largest = largest_gossip_unit(&genesis, change.len());
        let room = unit_room(self.cfg.frame_budget_bytes);
        if largest > room {
            return invalid(format!(
                "the event could grow to {largest} bytes of gossip, more than the {room} one \
                 frame carries: split its seats into fewer or smaller pools"
            ));
        }
        let outcome = Outcome::EventCreated { event: spec.id };
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::EventCreated {
            genesis,
            meta: vec![change],
            idem,
        });
        Ok((index, outcome))
    }

    pub(super) fn patch_event(
        &mut self,
        event: &str,
        patch: MetaPatch,
        key: Option<&IdempotencyKey>,
    ) -> Result<(RecordIndex, Outcome), CoreError> {
        let ev = self.event_idx(event)?;
        for (field, v, max) in [
            ("name", &patch.name, 200),
            ("description", &patch.description, MAX_TEXT),
            ("venue", &patch.venue, 200),
            ("starts_at", &patch.starts_at, 40),
        ] {
            if let Some(v) = v {
                check_text(field, v, max)?;
            }
        }
        if patch.lat.is_some_and(|l| !(-90.0..=90.0).contains(&l))
            || patch.lon.is_some_and(|l| !(-180.0..=180.0).contains(&l))
        {
            return invalid("lat must be within ±90 and lon within ±180");
        }
        if patch.hold_ttl_s.is_some_and(|t| !(1..=86_400).contains(&t)) {
            return invalid("hold_ttl_s must be 1-86400");
        }
        if patch.prices.values().any(|&p| p > MAX_PRICE) {
            return invalid(format!("price_cents at most {MAX_PRICE}"));
        }
        // Every edit rides with the genesis to a peer that lacks the event: the history may
        // not grow past what one frame carries.
        let e = &self.events[ev];
        let patch_bytes = [
            &patch.name,
            &patch.description,
            &patch.venue,
            &patch.starts_at,
        ]
        .iter()
        .map(|v| v.as_ref().map_or(0, String::len))
        .sum::<usize>()
            + 64 * (patch.prices.len() + 8);
        let largest = largest_gossip_unit(e.genesis(), e.meta_bytes + patch_bytes);
        if largest > unit_room(self.cfg.frame_budget_bytes) {
            return invalid(
                "this event's metadata has been edited so often that its history would not fit \
                 one gossip frame; no more edits are accepted",
            );
        }
        let change = self.events[ev]
            .meta
            .patch(&patch)
            .map_err(|e| CoreError::Meta(e.to_string()))?;
        let outcome = Outcome::EventPatched {
            event: event.to_owned(),
        };
        let Some(change) = change else {
            return Ok((self.last_index, outcome));
        };
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::MetaChanged {
            event: event.to_owned(),
            changes: vec![change],
            idem,
        });
        Ok((index, outcome))
    }

    /// Turns a want into (pool, quantity, seats), checking this region can cover it now.
    pub(super) fn resolve(
        &self,
        ev: usize,
        want: &Want,
    ) -> Result<(PoolIdx, u64, Vec<SeatIdx>), CoreError> {
        let e = &self.events[ev];
        match want {
            Want::Quantity { pool, quantity } => {
                let p = self.pool_idx(ev, pool)?;
                if *quantity == 0 || *quantity > self.cfg.max_quantity {
                    return invalid(format!("quantity must be 1-{}", self.cfg.max_quantity));
                }
                let sellable = e.sellable(p);
                if i128::from(sellable) < i128::from(*quantity) {
                    return Err(CoreError::SoldOut {
                        available: sellable.max(0) as u64,
                        wanted: *quantity,
                    });
                }
                let seats = if e.genesis().pool(p).is_assigned() {
                    let picked = if crate::bugs::skip_owner_check() {
                        let owners = e.ledger.seat_owners(p);
                        (0..owners.len())
                            .filter(|&s| e.seats[p as usize][s] == SeatLocal::Free)
                            .take(*quantity as usize)
                            .map(|s| s as SeatIdx)
                            .collect()
                    } else {
                        e.adjacent_seats(p, *quantity as usize)
                    };
                    if (picked.len() as u64) < *quantity {
                        return Err(CoreError::SoldOut {
                            available: picked.len() as u64,
                            wanted: *quantity,
                        });
                    }
                    picked
                } else {
                    Vec::new()
                };
                Ok((p, *quantity, seats))
            }
            Want::Seats { pool, seats } => {
                if seats.is_empty() || seats.len() as u64 > self.cfg.max_quantity {
                    return invalid(format!("1-{} seats per request", self.cfg.max_quantity));
                }
                let p = match pool {
                    Some(pool) => self.pool_idx(ev, pool)?,
                    None => e
                        .pool_of_seat(&seats[0])
                        .ok_or_else(|| CoreError::UnknownSeat(seats[0].clone()))?,
                };
                let idx = self.seat_indices(ev, p, seats)?;
                for (&s, id) in idx.iter().zip(seats) {
                    let owner = e.ledger.seat_owner(p, s).owner;
                    if owner != e.me && !crate::bugs::skip_owner_check() {
                        return Err(CoreError::SeatElsewhere {
                            seat: id.clone(),
                            region: e.genesis().regions[owner as usize].clone(),
                        });
                    }
                    if e.seats[p as usize][s as usize] != SeatLocal::Free {
                        return Err(CoreError::SeatTaken(id.clone()));
                    }
                }
                Ok((p, idx.len() as u64, idx))
            }
        }
    }

    pub(super) fn seat_indices(
        &self,
        ev: usize,
        p: PoolIdx,
        seats: &[String],
    ) -> Result<Vec<SeatIdx>, CoreError> {
        let e = &self.events[ev];
        if !e.genesis().pool(p).is_assigned() {
            return invalid(format!("pool {} has no seat map", e.genesis().pool(p).id));
        }
        let mut idx = Vec::with_capacity(seats.len());
        for s in seats {
            let i = *e.seat_index[p as usize]
                .get(s)
                .ok_or_else(|| CoreError::UnknownSeat(s.clone()))?;
            if idx.contains(&i) {
                return invalid(format!("seat {s} listed twice"));
            }
            idx.push(i);
        }
        Ok(idx)
    }

    /// Holds and purchases are taken only while the event's sales are open and its on-sale
    /// time has come, by this region's own clock (no two regions' clocks are compared).
    fn check_on_sale(&self, ev: usize) -> Result<(), CoreError> {
        let info = &self.events[ev].info;
        if info.sales != allot_crdt::SalesState::Open {
            return Err(CoreError::SalesClosed {
                state: info.sales.as_str().into(),
                opens_at_ms: None,
            });
        }
        match info.on_sale_at_ms {
            Some(t) if self.now < t => Err(CoreError::SalesClosed {
                state: "not-yet-open".into(),
                opens_at_ms: Some(t),
            }),
            _ => Ok(()),
        }
    }

    pub(super) fn price(&self, ev: usize, p: PoolIdx, quantity: u64) -> u64 {
        self.events[ev].prices[p as usize].saturating_mul(quantity)
    }

    pub(super) fn hold(
        &mut self,
        event: &str,
        want: &Want,
        customer: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<(RecordIndex, Outcome), CoreError> {
        let ev = self.event_idx(event)?;
        self.check_on_sale(ev)?;
        check_id("customer", customer)?;
        let live = self.holds.live_of(customer);
        if live >= self.cfg.max_holds_per_customer {
            return Err(CoreError::HoldLimit(live));
        }
        self.note_demand(ev, want);
        let (pool, quantity, seats) = self.resolve(ev, want)?;
        let e = &self.events[ev];
        let hold = Hold {
            n: self.holds.next_number(),
            event: e.id.clone(),
            pool,
            quantity,
            seats,
            customer: customer.into(),
            price_cents: self.price(ev, pool, quantity),
            created_at: self.now,
            expires_at: self.now + e.info.hold_ttl_s * 1000,
        };
        let outcome = Outcome::Held(hold.clone());
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::HoldPlaced { hold, idem });
        self.tell_low_stock(ev);
        Ok((index, outcome))
    }

    /// The number of one of this region's holds or orders, from its id. A malformed id, one
    /// that names no region of the cluster, and one whose tag this region did not make are
    /// all simply unknown; another region's id is that region's to answer.
    pub(super) fn local_id(&self, kind: IdKind, id: &str) -> Result<u64, CoreError> {
        let unknown = || match kind {
            IdKind::Hold => CoreError::UnknownHold(id.to_owned()),
            IdKind::Order => CoreError::UnknownOrder(id.to_owned()),
        };
        let (region, n, tag) = GlobalId::parts(kind, id).ok_or_else(unknown)?;
        if region != self.cfg.region {
            if !self.cfg.regions.iter().any(|r| r == region) {
                return Err(unknown());
            }
            return Err(CoreError::Foreign {
                id: id.to_owned(),
                region: region.to_owned(),
            });
        }
        if !self.cfg.id_key.verifies_parts(kind, n, tag) {
            return Err(unknown());
        }
        Ok(n)
    }

    /// The id buyers and operators see for this region's hold or order `n`.
    pub fn id_of(&self, kind: IdKind, n: impl Into<u64>) -> String {
        self.cfg.id_key.format(kind, &self.cfg.region, n.into())
    }

    pub(super) fn confirm(
        &mut self,
        hold_id: &str,
        payment_ref: &str,
        key: Option<&IdempotencyKey>,
        found: Option<&Found>,
    ) -> Result<(RecordIndex, Outcome), Halt> {
        let n = HoldNo(self.local_id(IdKind::Hold, hold_id)?);
        let Some(hold) = self.holds.get(n) else {
            if !self.holds.issued(n) {
                return Err(CoreError::UnknownHold(hold_id.to_owned()).into());
            }
            // Not live: confirmed before (its order is the answer), or expired or released.
            return match self.order_of_hold(n, found)? {
                Some(order) => Ok((self.last_index, Outcome::Order(order))),
                None => Err(CoreError::HoldExpired.into()),
            };
        };
        if self.now >= hold.expires_at {
            let event = hold.event.to_string();
            self.commit(RecordBody::HoldsReleased {
                event,
                holds: vec![n],
                reason: ReleaseReason::Expired,
            });
            return Err(CoreError::HoldExpired.into());
        }
        check_text("payment_ref", payment_ref, 128)?;
        if payment_ref.is_empty() {
            return Err(CoreError::Invalid("payment_ref is required".into()).into());
        }
        let hold = hold.clone();
        let ev = self.by_id[&hold.event];
        let row = self.events[ev]
            .ledger
            .write(
                self.events[ev].me,
                &[Change::Consume {
                    pool: hold.pool,
                    n: hold.quantity,
                }],
            )
            .expect("a live hold is covered by this region's quota");
        let mut order = self.new_order(
            &hold.event,
            hold.pool,
            hold.quantity,
            hold.seats,
            hold.customer,
            hold.price_cents,
            payment_ref,
        );
        order.hold = Some(n);
        let outcome = Outcome::Order(order.clone());
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::OrderPlaced {
            order,
            hold: Some(n),
            row,
            idem,
        });
        Ok((index, outcome))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_order(
        &self,
        event: &Arc<str>,
        pool: PoolIdx,
        quantity: u64,
        seats: Vec<SeatIdx>,
        customer: Arc<str>,
        price_cents: u64,
        payment_ref: &str,
    ) -> Order {
        Order {
            n: self.next_order,
            event: event.clone(),
            pool,
            quantity,
            seats,
            customer,
            price_cents,
            payment_ref: payment_ref.into(),
            status: OrderStatus::Confirmed,
            created_at: self.now,
            hold: None,
        }
    }

    pub(super) fn release(
        &mut self,
        hold_id: &str,
        found: Option<&Found>,
    ) -> Result<(RecordIndex, Outcome), Halt> {
        let n = HoldNo(self.local_id(IdKind::Hold, hold_id)?);
        if let Some(h) = self.holds.get(n) {
            let event = h.event.to_string();
            let ev = self.event_idx(&event).ok();
            let index = self.commit(RecordBody::HoldsReleased {
                event,
                holds: vec![n],
                reason: ReleaseReason::Released,
            });
            if let Some(ev) = ev {
                self.tell_low_stock(ev);
            }
            return Ok((index, Outcome::Released { hold: n }));
        }
        if !self.holds.issued(n) {
            return Err(CoreError::UnknownHold(hold_id.to_owned()).into());
        }
        match self.order_of_hold(n, found)? {
            Some(_) => Err(CoreError::Invalid(
                "the hold is confirmed; refund the order instead".into(),
            )
            .into()),
            // Released or expired before: releasing again changes nothing.
            None => Ok((self.last_index, Outcome::Released { hold: n })),
        }
    }

    /// Order `n` as the rules see it now: the core's own newest version while it keeps one
    /// (newer than any read in flight could be), else the store's answer, else a read.
    pub(super) fn order_now(
        &self,
        n: OrderNo,
        found: Option<&Found>,
    ) -> Result<Option<Order>, Halt> {
        let recent = self.recent.get(n);
        match found {
            Some(Found::Order(stored)) if stored.as_ref().is_none_or(|s| s.order.n == n) => {
                if let (Some(r), Some(s)) = (recent, stored) {
                    // A read reflects what was durable when it was asked; the core keeps
                    // everything written since. A store ahead of the core is a driver bug.
                    if s.index > r.index {
                        return Err(CoreError::Storage(format!(
                            "the store's order {} (record {}) is ahead of the core's (record {})",
                            n.0, s.index.0, r.index.0
                        ))
                        .into());
                    }
                }
                Ok(recent.or(stored.as_ref()).map(|s| s.order.clone()))
            }
            Some(Found::Order(Some(s))) => Err(mismatch(&format!("order {}", n.0), s)),
            _ => match recent {
                Some(r) => Ok(Some(r.order.clone())),
                None => Err(Halt::Need(Lookup::Order(n))),
            },
        }
    }

    /// The order that confirmed hold `h`, if any.
    fn order_of_hold(&self, h: HoldNo, found: Option<&Found>) -> Result<Option<Order>, Halt> {
        if let Some(n) = self.recent.of_hold(h) {
            return self.order_now(n, None);
        }
        match found {
            Some(Found::Order(Some(stored))) if stored.order.hold == Some(h) => {
                let n = stored.order.n;
                self.order_now(n, found)
            }
            Some(Found::Order(None)) => Ok(None),
            Some(Found::Order(Some(s))) => Err(mismatch(&format!("the order of hold {}", h.0), s)),
            _ => Err(Halt::Need(Lookup::OrderOfHold(h))),
        }
    }

    /// A durable order for a reader: the core's newest version once durable, else the store's
    /// (which holds only durable state), so a refund shows only once it survives a crash.
    pub(super) fn read_order(&self, id: &str, found: Option<&Found>) -> Result<Order, Halt> {
        let n = OrderNo(self.local_id(IdKind::Order, id)?);
        let unknown = || Halt::Refused(CoreError::UnknownOrder(id.to_owned()));
        if n >= self.next_order {
            return Err(unknown());
        }
        if let Some(r) = self.recent.get(n) {
            if r.index <= self.durable.persisted() {
                return Ok(r.order.clone());
            }
        }
        match found {
            Some(Found::Order(Some(s))) if s.order.n == n => Ok(s.order.clone()),
            Some(Found::Order(_)) => Err(unknown()),
            _ => Err(Halt::Need(Lookup::Order(n))),
        }
    }

    pub(super) fn purchase(
        &mut self,
        event: &str,
        want: &Want,
        customer: &str,
        payment_ref: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<(RecordIndex, Outcome), CoreError> {
        let ev = self.event_idx(event)?;
        self.check_on_sale(ev)?;
        check_id("customer", customer)?;
        if payment_ref.is_empty() {
            return invalid("payment_ref is required");
        }
        check_text("payment_ref", payment_ref, 128)?;
        self.note_demand(ev, want);
        let (pool, quantity, seats) = self.resolve(ev, want)?;
        let e = &self.events[ev];
        let row = e
            .ledger
            .write(e.me, &[Change::Consume { pool, n: quantity }])
            .expect("resolve checked sellable");
        let order = self.new_order(
            &e.id,
            pool,
            quantity,
            seats,
            customer.into(),
            self.price(ev, pool, quantity),
            payment_ref,
        );
        let outcome = Outcome::Order(order.clone());
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::OrderPlaced {
            order,
            hold: None,
            row,
            idem,
        });
        self.tell_low_stock(ev);
        Ok((index, outcome))
    }

    pub(super) fn refund(
        &mut self,
        order_id: &str,
        key: Option<&IdempotencyKey>,
        found: Option<&Found>,
    ) -> Result<(RecordIndex, Outcome), Halt> {
        let n = OrderNo(self.local_id(IdKind::Order, order_id)?);
        let unknown = || Halt::Refused(CoreError::UnknownOrder(order_id.to_owned()));
        if n >= self.next_order {
            return Err(unknown());
        }
        let order = self.order_now(n, found)?.ok_or_else(unknown)?;
        if order.status == OrderStatus::Refunded {
            // Refunded already (perhaps by a request racing this one): the same answer, and
            // nothing returned twice.
            return Ok((self.last_index, Outcome::Order(order)));
        }
        let ev = self.event_idx(&order.event)?;
        let e = &self.events[ev];
        // The order came from the store: its seats must be the ones this region marks sold to
        // it, or the store and memory disagree and the refund would free someone else's seat.
        let seats = e.seats.get(order.pool as usize);
        if !order
            .seats
            .iter()
            .all(|&s| seats.and_then(|p| p.get(s as usize)) == Some(&SeatLocal::Sold(n)))
        {
            return Err(CoreError::Storage(format!(
                "order {n} as read names seats this region does not mark sold to it"
            ))
            .into());
        }
        let row = e
            .ledger
            .write(
                e.me,
                &[Change::Return {
                    pool: order.pool,
                    n: order.quantity,
                }],
            )
            .map_err(|r| {
                CoreError::Storage(format!(
                    "order {n} as read does not fit this region's counters: {r}"
                ))
            })?;
        let mut refunded = order.clone();
        refunded.status = OrderStatus::Refunded;
        let outcome = Outcome::Order(refunded.clone());
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::Refunded {
            order: refunded,
            row,
            idem,
        });
        self.tell_low_stock(ev);
        Ok((index, outcome))
    }

    pub(super) fn grant(
        &mut self,
        event: &str,
        pool: &str,
        to: &str,
        amount: GrantAmount,
        key: Option<&IdempotencyKey>,
    ) -> Result<(RecordIndex, Outcome), CoreError> {
        let ev = self.event_idx(event)?;
        let p = self.pool_idx(ev, pool)?;
        let e = &self.events[ev];
        let to_idx = e
            .genesis()
            .region_index(to)
            .ok_or_else(|| CoreError::Invalid(format!("unknown region {to:?}")))?;
        if to_idx == e.me {
            return invalid("a region cannot grant to itself");
        }
        let give = match amount {
            GrantAmount::Quantity(q) => {
                if e.genesis().pool(p).is_assigned() {
                    return invalid("assigned seats move by seat id");
                }
                let capacity = e.genesis().pool(p).capacity();
                if q == 0 || q > capacity {
                    return invalid(format!(
                        "quantity must be 1-{capacity}, the capacity of {pool}"
                    ));
                }
                let sellable = e.sellable(p);
                if i128::from(sellable) < i128::from(q) {
                    return Err(CoreError::NotOwner(format!(
                        "{} can spare {} of {pool}, not {q}",
                        self.cfg.region,
                        sellable.max(0)
                    )));
                }
                Give::Quantity(q)
            }
            GrantAmount::Seats(ids) => {
                if ids.is_empty() || ids.len() > 10_000 {
                    return invalid("1-10000 seats per transfer");
                }
                let idx = self.seat_indices(ev, p, &ids)?;
                for (&s, id) in idx.iter().zip(&ids) {
                    let owner = e.ledger.seat_owner(p, s).owner;
                    if owner != e.me {
                        return Err(CoreError::NotOwner(format!(
                            "seat {id} is owned by {}",
                            e.genesis().regions[owner as usize]
                        )));
                    }
                    if e.seats[p as usize][s as usize] != SeatLocal::Free {
                        return Err(CoreError::SeatTaken(id.clone()));
                    }
                }
                Give::Seats(idx)
            }
        };
        self.give(ev, p, to_idx, give, key, Reason::Operator)
    }
}
