//! Quota handoff between regions: what an ask carries and what the handoff log keeps.
//!
//! The protocol (DESIGN, "Between regions"): the region short of stock asks one donor at a
//! time, per pool, as a call between regions whose idempotency key is the ask's id. The donor
//! decides what it can spare ([`crate::policy::spare`]), raises `granted_out[donor][asker]` in
//! its own row, and answers only once that record is durable, with its durable row. The asker
//! credits the grant only by merging that row, the way it merges gossip: a lost answer is
//! healed by the next gossip frame, a duplicated one changes nothing, and a retried ask (same
//! key, even after the donor restarted) gets the first answer, never a second grant. Only the
//! owner of quota writes the row that gives it away, so no handoff can create a seat.

use std::sync::Arc;

use allot_crdt::PoolIdx;
use serde::{Deserialize, Serialize};

use crate::api::Millis;
pub use crate::policy::Reason;

/// An ask for quota, as the donor receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandoffAsk {
    pub event: String,
    pub pool: PoolIdx,
    /// At most this much; the donor may grant less.
    pub want: u64,
    /// The asker's recent demand for the pool (its gossip carries the same figure, later).
    pub demand_per_min: u64,
    /// What the asker may still sell of the pool as it asks: with the demand, its time to
    /// empty. The donor's copy from gossip is older, and would make the donor keep more.
    pub sellable: u64,
    pub reason: Reason,
}

/// One handoff as this region saw it: a grant it made, or one it received.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Handoff {
    pub event: Arc<str>,
    pub pool: PoolIdx,
    pub from: String,
    pub to: String,
    pub quantity: u64,
    pub reason: Reason,
    /// When the donor granted it (in the donor's log) or the asker heard so (in the asker's).
    pub at: Millis,
    /// In the asker's log, once the credit is durable here: from the ask to spendable quota.
    pub ask_to_spendable_ms: Option<Millis>,
}
