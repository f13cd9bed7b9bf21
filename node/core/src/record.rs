//! Records: what the core asks its driver to make durable, in emission order.
//!
//! Replaying records through [`Core::recover`](crate::Core::recover) rebuilds the state that
//! emitted them, because the live path changes state only by applying the record it emits.
//! Every record is one atomic unit for the store (the order, its ledger change and its
//! idempotency entry land in one write batch).

use allot_crdt::{Genesis, PoolIdx, RowDelta, SeatIdx};
use serde::{Deserialize, Serialize};

use crate::api::{Hold, HoldNo, IdempotencyKey, Millis, Order, OrderNo, Outcome};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in emission order, from 1. "Persisted up to n" covers records 1..=n.
    pub index: u64,
    /// The core's `now` when the record was made.
    pub at: Millis,
    pub body: RecordBody,
}

/// The first answer to an idempotent request, kept with the change it caused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdemRecord {
    pub key: IdempotencyKey,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseReason {
    Released,
    Expired,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    /// A new event, made here (catalog region) or learned from a peer.
    EventCreated {
        genesis: Genesis,
        meta: Vec<Vec<u8>>,
        idem: Option<IdemRecord>,
    },
    /// Automerge changes to an event's metadata, local or from a peer.
    MetaChanged {
        event: String,
        changes: Vec<Vec<u8>>,
        idem: Option<IdemRecord>,
    },
    HoldPlaced {
        hold: Hold,
        idem: Option<IdemRecord>,
    },
    HoldsReleased {
        event: String,
        holds: Vec<HoldNo>,
        reason: ReleaseReason,
    },
    /// A confirmed hold or a one-step purchase, with the row version recording the sale.
    OrderPlaced {
        order: Order,
        hold: Option<HoldNo>,
        row: RowDelta,
        idem: Option<IdemRecord>,
    },
    /// The order as it is after the refund.
    Refunded {
        order: Order,
        row: RowDelta,
        idem: Option<IdemRecord>,
    },
    /// Quota this region gave away.
    Granted {
        event: String,
        row: RowDelta,
        idem: Option<IdemRecord>,
    },
    /// A peer's row version this region applied.
    PeerRow { event: String, row: RowDelta },
    /// An idempotency answer with no change of its own: the target a request was forwarded
    /// to (at the origin), or a forwarded request's refusal (at the target).
    KeyAnswered { idem: IdemRecord },
    // ----- Restoring from a state store --------------------------------------------------
    // A store rebuilds a core from these, numbered on from the last record it applied: each
    // event (as `EventCreated`) with its rows and sold seats, then live holds (as
    // `HoldPlaced`), then counters. Orders and idempotency answers are read on demand.
    /// A whole row as stored (a delta from version 0), of any writer, this region's included.
    RowRestored { event: String, row: RowDelta },
    /// The sold seats of one assigned pool, with the order that holds each. Orders themselves
    /// stay in the store: a restart reads live state only.
    SeatsRestored {
        event: String,
        pool: PoolIdx,
        sold: Vec<(SeatIdx, OrderNo)>,
    },
    /// Numbers already given out, so ids are never reused after a restart.
    CountersRestored {
        next_hold: HoldNo,
        next_order: OrderNo,
    },
}
