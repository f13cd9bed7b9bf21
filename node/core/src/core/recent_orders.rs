//! Recent orders: every order this region changed since the oldest read still in flight could
//! have been taken, so no answer from the store is ever acted on stale.
//!
//! Past orders live in the store. A read asked when records `..=p` were durable sees at least
//! those; anything written after `p` might be missing from it, so the core keeps its own newest
//! version of each order it changed after `p` and prefers it to the store's. Entries leave once
//! they are durable and older than every read in flight: memory holds what is in flight, not
//! the history.

use std::collections::BTreeMap;

use crate::reads::{HoldNo, OrderNo, RecordIndex, StoredOrder};

#[derive(Default)]
pub(super) struct RecentOrders {
    orders: BTreeMap<OrderNo, StoredOrder>,
    /// Confirmed holds, with the record that confirmed them.
    of_hold: BTreeMap<HoldNo, (RecordIndex, OrderNo)>,
    /// What each record wrote, oldest first, for trimming.
    by_index: BTreeMap<RecordIndex, (OrderNo, Option<HoldNo>)>,
}

impl RecentOrders {
    /// Notes the order as the record at `index` left it.
    pub fn wrote(&mut self, stored: StoredOrder, confirmed: Option<HoldNo>) {
        let (n, index) = (OrderNo(stored.order.n), stored.index);
        if let Some(h) = confirmed {
            self.of_hold.insert(h, (index, n));
        }
        self.by_index.insert(index, (n, confirmed));
        self.orders.insert(n, stored);
    }

    pub fn get(&self, n: OrderNo) -> Option<&StoredOrder> {
        self.orders.get(&n)
    }

    /// The order that confirmed hold `h`, if that is recent.
    pub fn of_hold(&self, h: HoldNo) -> Option<OrderNo> {
        self.of_hold.get(&h).map(|&(_, n)| n)
    }

    /// Forgets what records `..=floor` wrote: durable, and seen by every read in flight.
    pub fn trim(&mut self, floor: RecordIndex) {
        while let Some(entry) = self.by_index.first_entry() {
            let index = *entry.key();
            if index > floor {
                break;
            }
            let (n, hold) = entry.remove();
            if self.orders.get(&n).is_some_and(|o| o.index == index) {
                self.orders.remove(&n);
            }
            if let Some(h) = hold {
                if self.of_hold.get(&h).is_some_and(|&(i, _)| i == index) {
                    self.of_hold.remove(&h);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// Every kept order and confirmed hold is queued for trimming under its own record.
    pub fn check(&self) -> Result<(), String> {
        for (n, o) in &self.orders {
            if self.by_index.get(&o.index).map(|w| w.0) != Some(*n) || OrderNo(o.order.n) != *n {
                return Err(format!(
                    "recent order {} is not queued under its record",
                    n.0
                ));
            }
        }
        for (h, (index, n)) in &self.of_hold {
            if self.by_index.get(index) != Some(&(*n, Some(*h))) {
                return Err(format!("recent confirm of hold {} is not queued", h.0));
            }
        }
        Ok(())
    }
}
