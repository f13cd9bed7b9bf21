//! Reads from the region's store: what the core asks for when memory does not have it.
//!
//! The core keeps only what a sale needs (ledger rows, live holds, seat states, idempotency
//! answers still in flight and a bounded cache of recent ones). Past orders and older
//! idempotency answers live in the store. A request that needs one parks in the core and emits
//! a [`Lookup`] in [`Ready::reads`](crate::Ready); the driver answers it with
//! [`Input::Read`](crate::Input) — RocksDB point reads in the server, [`MemStore`] in the
//! simulator and [`LocalCluster`](crate::cluster::LocalCluster) — and the request runs again
//! with the answer. The sans-IO split stays whole: the core never waits on a disk.
//!
//! A read may be answered after later records were written: an order's answer carries the
//! record index that last wrote it, and the core keeps every order changed since the read was
//! asked, so a stale read is never acted on (see `core/recent_orders.rs`).
//!
//! [`MemStore`]: crate::MemStore

use serde::{Deserialize, Serialize};

use crate::api::{Millis, Order, Outcome};

/// Which of the core's reads an answer belongs to; chosen by the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadId(pub u64);

/// The position of a record in emission order. Indices keep growing across restarts (a store
/// remembers the last one it wrote), so a stored index can be compared with a live one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct RecordIndex(pub u64);

impl RecordIndex {
    /// The record after this one.
    pub fn next(self) -> RecordIndex {
        RecordIndex(self.0 + 1)
    }
}

impl std::fmt::Display for RecordIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An order's number in the region that sold it (dense, from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderNo(pub u64);

/// A hold's number in the region that placed it (dense, from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HoldNo(pub u64);

impl OrderNo {
    /// The number after this one.
    pub fn next(self) -> OrderNo {
        OrderNo(self.0 + 1)
    }
}

impl HoldNo {
    /// The number after this one.
    pub fn next(self) -> HoldNo {
        HoldNo(self.0 + 1)
    }
}

impl From<OrderNo> for u64 {
    fn from(n: OrderNo) -> u64 {
        n.0
    }
}

impl From<HoldNo> for u64 {
    fn from(n: HoldNo) -> u64 {
        n.0
    }
}

impl std::fmt::Display for OrderNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for HoldNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What the core asks of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The stored answer to an `Idempotency-Key`.
    Key(String),
    Order(OrderNo),
    /// The order that confirmed a hold.
    OrderOfHold(HoldNo),
}

/// An order as the store holds it, with the record that last wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredOrder {
    pub index: RecordIndex,
    pub order: Order,
}

/// The first answer to an idempotency key, as the store holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredKey {
    /// When the key was first answered; it expires a TTL later.
    pub at: Millis,
    pub index: RecordIndex,
    pub body_hash: [u8; 32],
    pub outcome: Outcome,
}

/// The store's answer to a [`Lookup`].
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    Key(Option<StoredKey>),
    Order(Option<StoredOrder>),
}

/// What the driver hands back: the answer, or why the store could not give one (the request
/// that asked hears 503 and nothing changes).
pub type ReadResult = Result<Found, String>;
