//! The replicated model of allot.
//!
//! An event's replicated state has three parts, each a CRDT chosen for its access pattern:
//!
//! * [`Genesis`]: immutable and content-hashed, written once by the catalog region. Everything
//!   else refers to it by hash, so two regions can never disagree about what an event is.
//! * [`Ledger`]: the escrow counters, one single-writer [`Row`] per region, merged by
//!   per-entry max. Cumulative numbers that only grow make every delivery order, duplicate and
//!   repetition converge; the single writer makes "only the owner spends its quota" structural.
//! * [`MetaDoc`]: the editable metadata (name, venue, prices...), an automerge document, because
//!   operators may edit fields concurrently and want both edits kept.
//!
//! Regions and pools are addressed by their index in the genesis inside rows and deltas:
//! the genesis hash every delta carries fixes what the indices mean.

mod genesis;
mod ledger;
mod metadata;
mod row;
mod version_vector;

pub use genesis::{
    Allotments, Genesis, GenesisError, GenesisHash, PoolGenesis, PoolKind, PoolSpec, MAX_ID_LEN,
    MAX_POOLS, MAX_REGIONS, MAX_SEATS_PER_POOL,
};
pub use ledger::{Applied, Change, Credit, Ledger, Refusal, SeatMove, SeatOwner, MAX_COUNTER};
pub use metadata::{ActorIncarnation, EventMeta, MetaDoc, MetaError, MetaPatch, SalesState};
pub use row::{Entries, Entry, PoolRow, Row, RowDelta, SeatStamp, Stamped};
pub use version_vector::{Causality, VersionVector};

/// Index of a region in its event's genesis (`genesis.regions`).
pub type RegionIdx = u16;
/// Index of a pool in its event's genesis (`genesis.pools`).
pub type PoolIdx = u16;
/// Index of a seat in its assigned pool's seat list.
pub type SeatIdx = u32;

/// Checks an id (event, pool, seat, region) is short and made of safe characters, so ids can
/// travel in URLs, logs and keys without escaping.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
