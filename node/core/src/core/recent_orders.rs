//! Recent orders: every order this region changed since the oldest read in flight could
//! have been taken, so no answer from the store is ever acted on stale.
//!
//! Past orders live in the store. A read asked when records `..=p` were durable sees at least
//! those; anything written after `p` might be missing from it, so the core keeps its own newest
//! version of each order it changed after `p` and prefers it to the store's. Entries leave once
//! they are durable and older than every read in flight: memory holds what is in flight, not
//! the history.
//!
//! Records arrive in index order, so the versions form a queue: writing and trimming cost O(1)
//! on the sale path; finding an order scans the queue from its newest end, which only a refund,
//! a repeated confirm or a read does, and the queue holds only what is not yet durable or not
//! yet seen by a read.

use std::collections::VecDeque;

use crate::reads::{HoldNo, OrderNo, RecordIndex, StoredOrder};

/// One record's write of an order.
struct Version {
    stored: StoredOrder,
    /// The hold this record confirmed, if it did.
    confirmed: Option<HoldNo>,
}

#[derive(Default)]
pub(super) struct RecentOrders {
    /// Oldest first, by record index.
    versions: VecDeque<Version>,
}

impl RecentOrders {
    /// Notes the order as the record at `stored.index` left it.
    pub fn wrote(&mut self, stored: StoredOrder, confirmed: Option<HoldNo>) {
        // O(1), so checked in release builds too: out of order, `get` could return a stale
        // version.
        assert!(
            self.versions
                .back()
                .is_none_or(|v| v.stored.index < stored.index),
            "recent order versions arrive in record order"
        );
        self.versions.push_back(Version { stored, confirmed });
    }

    /// The newest version of order `n`, if it is recent.
    pub fn get(&self, n: OrderNo) -> Option<&StoredOrder> {
        self.versions
            .iter()
            .rev()
            .map(|v| &v.stored)
            .find(|s| s.order.n == n)
    }

    /// The order that confirmed hold `h`, if that is recent.
    pub fn of_hold(&self, h: HoldNo) -> Option<OrderNo> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.confirmed == Some(h))
            .map(|v| v.stored.order.n)
    }

    /// Forgets what records `..=floor` wrote: durable, and seen by every read in flight.
    pub fn trim(&mut self, floor: RecordIndex) {
        while self
            .versions
            .front()
            .is_some_and(|v| v.stored.index <= floor)
        {
            self.versions.pop_front();
        }
    }

    /// Versions kept (an order changed twice while a read was in flight counts twice).
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Versions are kept in record order, one per record.
    pub fn check(&self) -> Result<(), String> {
        let mut last = None;
        for v in &self.versions {
            if last.is_some_and(|l| l >= v.stored.index) {
                return Err(format!(
                    "recent order versions out of record order at record {}",
                    v.stored.index.0
                ));
            }
            last = Some(v.stored.index);
        }
        Ok(())
    }
}
