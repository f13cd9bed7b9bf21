//! What goes into the core and what comes out: commands, outcomes and typed errors.

use std::sync::Arc;

use allot_crdt::{Allotments, GenesisError, MetaPatch, PoolIdx, PoolKind, SeatIdx};
use serde::{Deserialize, Serialize};

pub use crate::reads::{HoldNo, OrderNo};

pub type Millis = u64;

/// Identifies a request so its reply can be matched; chosen by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// An `Idempotency-Key` with the hash of the request body it came with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey {
    pub key: String,
    pub body_hash: [u8; 32],
}

/// What a buyer asks for: a quantity of a pool, or specific seats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Want {
    Quantity {
        pool: String,
        quantity: u64,
    },
    Seats {
        pool: Option<String>,
        seats: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolInput {
    pub id: String,
    pub kind: PoolKind,
    pub price_cents: u64,
}

/// An event as an operator creates it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventSpec {
    pub id: String,
    pub name: String,
    pub description: String,
    pub venue: String,
    pub lat: f64,
    pub lon: f64,
    pub starts_at: String,
    pub currency: String,
    pub hold_ttl_s: u64,
    /// Whether the regions' rebalancer may move this event's quota.
    pub rebalance: bool,
    pub pools: Vec<PoolInput>,
    #[serde(with = "allotments_serde")]
    pub allotments: Allotments,
}

mod allotments_serde {
    use std::collections::BTreeMap;

    use allot_crdt::Allotments;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Repr {
        Even,
        Explicit(BTreeMap<String, BTreeMap<String, u64>>),
    }

    pub fn serialize<S: Serializer>(a: &Allotments, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Allotments::Even => Repr::Even,
            Allotments::Explicit(m) => Repr::Explicit(m.clone()),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Allotments, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Even => Allotments::Even,
            Repr::Explicit(m) => Allotments::Explicit(m),
        })
    }
}

/// Quota an owner gives away: a count of a general-admission pool, or seat ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantAmount {
    Quantity(u64),
    Seats(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateEvent(EventSpec),
    PatchEvent {
        event: String,
        patch: MetaPatch,
    },
    Hold {
        event: String,
        want: Want,
        customer: String,
    },
    Confirm {
        hold: String,
        payment_ref: String,
    },
    Release {
        hold: String,
    },
    Purchase {
        event: String,
        want: Want,
        customer: String,
        payment_ref: String,
    },
    Refund {
        order: String,
    },
    Grant {
        event: String,
        pool: String,
        to: String,
        amount: GrantAmount,
    },
    /// A durable order by id (answered by the region that sold it).
    ReadOrder {
        order: String,
    },
    /// Another region's rebalancer asks this one for quota (only ever a call between
    /// regions; the asker is the calling region).
    Ask(crate::handoff::HandoffAsk),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    Confirmed,
    Refunded,
}

/// A live hold: quota set aside for a buyer until `expires_at`, at a locked price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub n: HoldNo,
    pub event: Arc<str>,
    pub pool: PoolIdx,
    pub quantity: u64,
    pub seats: Vec<SeatIdx>,
    pub customer: Arc<str>,
    /// Total for the hold, in minor units, locked at hold time.
    pub price_cents: u64,
    pub created_at: Millis,
    pub expires_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub n: OrderNo,
    pub event: Arc<str>,
    pub pool: PoolIdx,
    pub quantity: u64,
    pub seats: Vec<SeatIdx>,
    /// Shared, not copied: an order is cloned into its record and its reply.
    pub customer: Arc<str>,
    /// Total paid, in minor units.
    pub price_cents: u64,
    pub payment_ref: Arc<str>,
    pub status: OrderStatus,
    pub created_at: Millis,
    /// The hold this order confirmed, if it came from one.
    pub hold: Option<HoldNo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    EventCreated {
        event: String,
    },
    EventPatched {
        event: String,
    },
    Held(Hold),
    Released {
        hold: HoldNo,
    },
    Order(Order),
    Granted {
        event: String,
        pool: PoolIdx,
        to: String,
        quantity: u64,
        seats: Vec<SeatIdx>,
    },
    /// The answer of the region that owns what was asked (see `crate::exchange`).
    Remote(Box<crate::exchange::RemoteOutcome>),
    /// Kept under a buyer's key at the region that forwarded the request (never shown to a
    /// buyer): a retry of the key goes to `target` again, and only there; if it refuses, the
    /// retry does not try the regions in `refused_by` again (they keep their refusals).
    Forwarded {
        target: String,
        refused_by: Vec<String>,
    },
    /// Kept under a forwarded request's key at the region that refused it: a late duplicate
    /// of the request is refused the same way, never sold after the origin moved on.
    Refused(CoreError),
}

/// Every way a command can fail. Each maps to one stable problem type (see [`CoreError::kind`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CoreError {
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("invalid event: {0}")]
    Genesis(String),
    #[error("event {0:?} exists")]
    EventExists(String),
    #[error("events are created by the catalog region {catalog}")]
    NotCatalog { catalog: String },
    #[error("no event {0:?}")]
    UnknownEvent(String),
    #[error("event has no pool {0:?}")]
    UnknownPool(String),
    #[error("pool has no seat {0:?}")]
    UnknownSeat(String),
    #[error("no hold {0:?}")]
    UnknownHold(String),
    #[error("no order {0:?}")]
    UnknownOrder(String),
    #[error("{id} belongs to region {region}")]
    Foreign { id: String, region: String },
    #[error("sold out: {available} left here, {wanted} wanted")]
    SoldOut { available: u64, wanted: u64 },
    #[error("seat {0} is held or sold")]
    SeatTaken(String),
    #[error("seat {seat} is owned by region {region}")]
    SeatElsewhere { seat: String, region: String },
    #[error("customer has {0} live holds, the most allowed")]
    HoldLimit(u32),
    #[error("hold expired")]
    HoldExpired,
    #[error("only the owner can give away quota: {0}")]
    NotOwner(String),
    #[error("region {region}, which owns this, is unreachable: {why}")]
    Unreachable { region: String, why: String },
    #[error("the region's store could not answer: {0}")]
    Storage(String),
    #[error("Idempotency-Key reused with another body")]
    IdempotencyMismatch,
    #[error("metadata: {0}")]
    Meta(String),
    #[error("nothing to spare: {0}")]
    NothingToSpare(String),
    /// Only regions this one cannot reach have the stock: not a sold-out.
    #[error("{wanted} wanted; only unreachable regions have them ({})", regions.join(", "))]
    StockUnreachable { wanted: u64, regions: Vec<String> },
    /// A forwarded request that reached its target after the origin stopped waiting.
    #[error("the request arrived after its deadline")]
    DeadlinePassed,
    /// Holds and purchases are not taken now: operators paused or closed the sale, or its
    /// on-sale time (Unix ms, by this region's clock) has not come.
    #[error("{}", sales_closed_message(state, *opens_at_ms))]
    SalesClosed {
        state: String,
        opens_at_ms: Option<u64>,
    },
}

fn sales_closed_message(state: &str, opens_at_ms: Option<u64>) -> String {
    match opens_at_ms {
        Some(t) => format!("sales open at {t} (Unix ms, by this region's clock)"),
        None => format!("sales are {state}"),
    }
}

impl CoreError {
    /// The stable problem `type` suffix; the HTTP layer maps it to a status.
    pub fn kind(&self) -> &'static str {
        match self {
            CoreError::Invalid(_) => "invalid-input",
            CoreError::Genesis(_) => "invalid-event",
            CoreError::EventExists(_) => "event-exists",
            CoreError::NotCatalog { .. } => "not-catalog",
            CoreError::UnknownEvent(_) => "unknown-event",
            CoreError::UnknownPool(_) => "unknown-pool",
            CoreError::UnknownSeat(_) => "unknown-seat",
            CoreError::UnknownHold(_) => "unknown-hold",
            CoreError::UnknownOrder(_) => "unknown-order",
            CoreError::Foreign { .. } => "foreign-id",
            CoreError::SoldOut { .. } => "sold-out",
            CoreError::SeatTaken(_) => "seat-taken",
            CoreError::SeatElsewhere { .. } => "seat-elsewhere",
            CoreError::HoldLimit(_) => "hold-limit",
            CoreError::HoldExpired => "hold-expired",
            CoreError::NotOwner(_) => "not-owner",
            CoreError::IdempotencyMismatch => "idempotency-mismatch",
            CoreError::Unreachable { .. } | CoreError::Storage(_) => "unavailable",
            CoreError::Meta(_) => "invalid-metadata",
            CoreError::NothingToSpare(_) => "nothing-to-spare",
            CoreError::StockUnreachable { .. } => "stock-unreachable",
            CoreError::DeadlinePassed => "deadline-passed",
            CoreError::SalesClosed { .. } => "sales-closed",
        }
    }

    /// A refusal that says the region had not the quota or the seats: the origin of a
    /// forwarded request may try another region after it.
    pub fn is_out_of_stock(&self) -> bool {
        matches!(
            self,
            CoreError::SoldOut { .. } | CoreError::SeatElsewhere { .. }
        )
    }

    /// A refusal the request's content and the region's state decided: not one that says
    /// nothing about the request (the store did not answer, the key came with another body,
    /// a third region did not answer).
    pub fn is_decision(&self) -> bool {
        !matches!(
            self,
            CoreError::Storage(_)
                | CoreError::IdempotencyMismatch
                | CoreError::Unreachable { .. }
                | CoreError::StockUnreachable { .. }
        )
    }
}

impl From<GenesisError> for CoreError {
    fn from(e: GenesisError) -> Self {
        CoreError::Genesis(e.to_string())
    }
}

pub type Reply = Result<Outcome, CoreError>;
