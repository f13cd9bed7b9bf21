//! The region's durable state in memory: the stand-in for the server's RocksDB store in the
//! simulator and [`LocalCluster`](crate::cluster::LocalCluster).
//!
//! It keeps the same state under the same rules as the server's store (`node/server/src/
//! store.rs`): records are applied as a whole when they become durable, lookups read what is
//! applied, and [`MemStore::load`] gives back only live state (events, rows, seat states,
//! live holds, counters) as the restore records [`Core::recover`](crate::Core::recover) takes.
//! Orders and idempotency answers stay here and are read on demand, as on disk.

use std::collections::BTreeMap;

use allot_crdt::{Entries, Entry, Genesis, PoolIdx, RegionIdx, RowDelta, SeatIdx};

use crate::api::{Hold, Millis, OrderStatus};
use crate::reads::{Found, HoldNo, Lookup, OrderNo, RecordIndex, StoredKey, StoredOrder};
use crate::record::{IdemRecord, Record, RecordBody};

/// One writer's row as stored: entry by entry (last value wins), with its sequence number.
#[derive(Clone, Default)]
struct StoredRow {
    entries: BTreeMap<(PoolIdx, u8, u32), (u64, Entry)>,
    seq: u64,
}

#[derive(Clone)]
struct StoredEvent {
    genesis: Genesis,
    meta: Vec<Vec<u8>>,
}

#[derive(Clone, Copy, Default)]
struct OrderTotals {
    sold: u64,
    refunded: u64,
}

#[derive(Clone)]
pub struct MemStore {
    region: String,
    /// How long an idempotency answer is found after it was made.
    key_ttl_ms: Millis,
    events: BTreeMap<String, StoredEvent>,
    /// Rows by event, then writer (looked up by `&str`: no allocation per record).
    rows: BTreeMap<String, Vec<StoredRow>>,
    holds: BTreeMap<HoldNo, Hold>,
    orders: BTreeMap<OrderNo, StoredOrder>,
    order_of_hold: BTreeMap<HoldNo, OrderNo>,
    /// Sold seats of assigned pools: (event, pool, seat) → order.
    seats: BTreeMap<(String, PoolIdx, SeatIdx), OrderNo>,
    keys: BTreeMap<String, StoredKey>,
    /// Keys by (time made, record index), oldest first: dropped once past the TTL, as RocksDB's
    /// compaction does.
    keys_by_age: BTreeMap<(Millis, u64), String>,
    /// Per (event, pool): units this region's stored orders sold and refunded, kept as records
    /// apply so [`MemStore::check`] costs nothing per order.
    totals: BTreeMap<String, Vec<OrderTotals>>,
    /// Keep every order (for reads of past orders). A simulation that never reads one (no
    /// refunds, no retried keys) turns it off to stay fast at a million sales.
    keep_orders: bool,
    /// Records that broke a rule the store can see (a refund of an order not confirmed).
    violations: Vec<String>,
    next_hold: HoldNo,
    next_order: OrderNo,
    last_index: u64,
    clock: Millis,
}

impl MemStore {
    pub fn new(region: &str, key_ttl_ms: Millis) -> MemStore {
        MemStore {
            region: region.to_owned(),
            key_ttl_ms,
            events: BTreeMap::new(),
            rows: BTreeMap::new(),
            holds: BTreeMap::new(),
            orders: BTreeMap::new(),
            order_of_hold: BTreeMap::new(),
            seats: BTreeMap::new(),
            keys: BTreeMap::new(),
            keys_by_age: BTreeMap::new(),
            totals: BTreeMap::new(),
            keep_orders: true,
            violations: Vec::new(),
            next_hold: HoldNo(1),
            next_order: OrderNo(1),
            last_index: 0,
            clock: 0,
        }
    }

    /// Stops keeping orders: lookups of past orders then find none (a confirmed hold looks
    /// expired). For simulations that never read one.
    pub fn forget_orders(&mut self) {
        self.keep_orders = false;
        self.orders.clear();
        self.order_of_hold.clear();
    }

    fn totals(&mut self, event: &str, pool: PoolIdx) -> &mut OrderTotals {
        if !self.totals.contains_key(event) {
            self.totals.insert(event.to_owned(), Vec::new());
        }
        let v = self.totals.get_mut(event).expect("inserted above");
        if v.len() <= pool as usize {
            v.resize(pool as usize + 1, OrderTotals::default());
        }
        &mut v[pool as usize]
    }

    /// The index of the last record applied.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn order_count(&self) -> usize {
        self.orders.len()
    }

    /// Applies durable records, in order.
    pub fn apply(&mut self, records: &[Record]) {
        for r in records {
            assert!(
                r.index > self.last_index,
                "record {} applied after {}",
                r.index,
                self.last_index
            );
            self.record(r);
            self.last_index = r.index;
            self.clock = self.clock.max(r.at);
        }
        while let Some((&(at, index), key)) = self.keys_by_age.first_key_value() {
            if at.saturating_add(self.key_ttl_ms) > self.clock {
                break;
            }
            if self.keys.get(key).is_some_and(|k| k.index.0 == index) {
                self.keys.remove(key);
            }
            self.keys_by_age.pop_first();
        }
    }

    fn key(&mut self, r: &Record, idem: Option<&IdemRecord>) {
        if let Some(i) = idem {
            self.keys_by_age.insert((r.at, r.index), i.key.key.clone());
            self.keys.insert(
                i.key.key.clone(),
                StoredKey {
                    at: r.at,
                    index: RecordIndex(r.index),
                    body_hash: i.key.body_hash,
                    outcome: i.outcome.clone(),
                },
            );
        }
    }

    fn record(&mut self, r: &Record) {
        let index = RecordIndex(r.index);
        match &r.body {
            RecordBody::EventCreated {
                genesis,
                meta,
                idem,
            } => {
                self.events.insert(
                    genesis.id.clone(),
                    StoredEvent {
                        genesis: genesis.clone(),
                        meta: meta.clone(),
                    },
                );
                self.key(r, idem.as_ref());
            }
            RecordBody::MetaChanged {
                event,
                changes,
                idem,
            } => {
                if let Some(e) = self.events.get_mut(event) {
                    for c in changes {
                        if !e.meta.contains(c) {
                            e.meta.push(c.clone());
                        }
                    }
                }
                self.key(r, idem.as_ref());
            }
            RecordBody::HoldPlaced { hold, idem } => {
                self.holds.insert(hold.n, hold.clone());
                self.next_hold = self.next_hold.max(hold.n.next());
                self.key(r, idem.as_ref());
            }
            RecordBody::HoldsReleased { holds, .. } => {
                for n in holds {
                    self.holds.remove(n);
                }
            }
            RecordBody::OrderPlaced {
                order,
                hold,
                row,
                idem,
            } => {
                let n = order.n;
                if let Some(h) = hold {
                    self.holds.remove(h);
                    if self.keep_orders {
                        self.order_of_hold.insert(*h, n);
                    }
                }
                for &s in &order.seats {
                    self.seats
                        .insert((order.event.to_string(), order.pool, s), n);
                }
                if self.keep_orders {
                    self.orders.insert(
                        n,
                        StoredOrder {
                            index,
                            order: order.clone(),
                        },
                    );
                }
                self.next_order = self.next_order.max(order.n.next());
                self.totals(&order.event, order.pool).sold += order.quantity;
                self.row(&order.event, row);
                self.key(r, idem.as_ref());
            }
            RecordBody::Refunded { order, row, idem } => {
                let before = self.orders.get(&order.n).map(|o| &o.order.status);
                // Without orders kept nothing refunds (the simulation sends no refunds): any
                // refund record is then a core's own doing.
                if !self.keep_orders || before != Some(&OrderStatus::Confirmed) {
                    self.violations.push(format!(
                        "record {}: refund of order {} whose stored status is {before:?}",
                        r.index, order.n
                    ));
                }
                for &s in &order.seats {
                    self.seats.remove(&(order.event.to_string(), order.pool, s));
                }
                self.totals(&order.event, order.pool).refunded += order.quantity;
                if self.keep_orders {
                    self.orders.insert(
                        order.n,
                        StoredOrder {
                            index,
                            order: order.clone(),
                        },
                    );
                }
                self.row(&order.event, row);
                self.key(r, idem.as_ref());
            }
            RecordBody::Granted { event, row, idem } => {
                self.row(event, row);
                self.key(r, idem.as_ref());
            }
            RecordBody::PeerRow { event, row } => self.row(event, row),
            RecordBody::KeyAnswered { idem } => self.key(r, Some(idem)),
            RecordBody::RowRestored { .. }
            | RecordBody::SeatsRestored { .. }
            | RecordBody::CountersRestored { .. } => {
                unreachable!("restore records are made by a store, never emitted by a running core")
            }
        }
    }

    fn row(&mut self, event: &str, row: &RowDelta) {
        if !self.rows.contains_key(event) {
            self.rows.insert(event.to_owned(), Vec::new());
        }
        let rows = self.rows.get_mut(event).expect("inserted above");
        if rows.len() <= row.writer as usize {
            rows.resize(row.writer as usize + 1, StoredRow::default());
        }
        let stored = &mut rows[row.writer as usize];
        for &(stamp, entry) in &row.entries {
            stored.entries.insert(entry.key(), (stamp, entry));
        }
        stored.seq = stored.seq.max(row.seq);
    }

    /// Answers a lookup from what is applied.
    pub fn lookup(&self, lookup: &Lookup, now: Millis) -> Found {
        match lookup {
            Lookup::Key(key) => Found::Key(
                self.keys
                    .get(key)
                    .filter(|k| k.at.saturating_add(self.key_ttl_ms) > now)
                    .cloned(),
            ),
            Lookup::Order(n) => Found::Order(self.orders.get(n).cloned()),
            Lookup::OrderOfHold(h) => Found::Order(
                self.order_of_hold
                    .get(h)
                    .and_then(|n| self.orders.get(n))
                    .cloned(),
            ),
        }
    }

    /// Durable orders after number `after`, of one event or all, at most `limit`.
    pub fn orders_after(&self, event: Option<&str>, after: u64, limit: usize) -> Vec<StoredOrder> {
        self.orders
            .range(OrderNo(after.saturating_add(1))..)
            .map(|(_, o)| o)
            .filter(|o| event.is_none_or(|e| &*o.order.event == e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The live state as restore records, numbered on from the last record applied: events,
    /// rows, seat states, live holds, counters. Orders and keys stay in the store.
    pub fn load(&self) -> Vec<Record> {
        let mut bodies = Vec::new();
        for (id, e) in &self.events {
            bodies.push(RecordBody::EventCreated {
                genesis: e.genesis.clone(),
                meta: e.meta.clone(),
                idem: None,
            });
            for writer in 0..e.genesis.regions.len() as RegionIdx {
                let Some(row) = self.rows.get(id).and_then(|r| r.get(writer as usize)) else {
                    continue;
                };
                if row.seq == 0 {
                    continue;
                }
                let mut entries = Entries::new();
                for &(stamp, entry) in row.entries.values() {
                    entries.push((stamp, entry));
                }
                bodies.push(RecordBody::RowRestored {
                    event: id.clone(),
                    row: RowDelta {
                        genesis: e.genesis.hash(),
                        writer,
                        since: 0,
                        seq: row.seq,
                        entries,
                    },
                });
            }
            for pool in 0..e.genesis.pools.len() as PoolIdx {
                let sold: Vec<(SeatIdx, OrderNo)> = self
                    .seats
                    .range((id.clone(), pool, 0)..=(id.clone(), pool, SeatIdx::MAX))
                    .map(|(&(_, _, s), &n)| (s, n))
                    .collect();
                if !sold.is_empty() {
                    bodies.push(RecordBody::SeatsRestored {
                        event: id.clone(),
                        pool,
                        sold,
                    });
                }
            }
        }
        for h in self.holds.values() {
            bodies.push(RecordBody::HoldPlaced {
                hold: h.clone(),
                idem: None,
            });
        }
        bodies.push(RecordBody::CountersRestored {
            next_hold: self.next_hold,
            next_order: self.next_order,
        });
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Record {
                index: self.last_index + 1 + i as u64,
                at: self.clock,
                body,
            })
            .collect()
    }

    /// What only the store can check: this region's orders add up to its own row's counters.
    pub fn check(&self) -> Result<(), String> {
        if let Some(v) = self.violations.first() {
            return Err(format!("{}: {v}", self.region));
        }
        for (id, e) in &self.events {
            let Some(me) = e.genesis.region_index(&self.region) else {
                continue;
            };
            let row = self.rows.get(id).and_then(|r| r.get(me as usize));
            for p in 0..e.genesis.pools.len() as PoolIdx {
                let counter = |kind: u8| {
                    row.and_then(|r| r.entries.get(&(p, kind, 0)))
                        .map_or(0, |&(_, entry)| match entry {
                            Entry::Consumed { value, .. } | Entry::Returned { value, .. } => value,
                            _ => 0,
                        })
                };
                let t = self
                    .totals
                    .get(id)
                    .and_then(|v| v.get(p as usize))
                    .copied()
                    .unwrap_or_default();
                let (sold, refunded) = (t.sold, t.refunded);
                if counter(1) != sold || counter(2) != refunded {
                    return Err(format!(
                        "{}: event {id} pool {p}: stored row says consumed {} returned {}, \
                         stored orders say {sold} and {refunded}",
                        self.region,
                        counter(1),
                        counter(2)
                    ));
                }
            }
        }
        Ok(())
    }
}
