//! Gossip frames: what one region tells another each tick.
//!
//! Rows travel as deltas from the version the peer last *reported* (never advanced on send, so
//! a lost frame is simply covered by the next one). A frame also lists every event the sender
//! knows with its version vector: that is the catalog digest through which new events spread,
//! and the acknowledgement that lets the other side send only what is missing.

use allot_crdt::{Genesis, GenesisHash, RowDelta, VersionVector};
use serde::{Deserialize, Serialize};

/// Everything one region sends another in one tick.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GossipFrame {
    pub events: Vec<EventGossip>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventGossip {
    pub event: String,
    pub genesis_hash: GenesisHash,
    /// Sent while the peer has not reported this event: the genesis and the metadata changes.
    pub genesis: Option<(Genesis, Vec<Vec<u8>>)>,
    /// The sender's version vector: what the receiver need not send back.
    pub vv: VersionVector,
    /// Row deltas the receiver lacks, by the version vector it last reported.
    pub rows: Vec<RowDelta>,
    /// The sender's metadata heads, and changes the receiver lacks by its last reported heads.
    pub meta_heads: Vec<[u8; 32]>,
    pub meta_changes: Vec<Vec<u8>>,
    /// Ephemeral: the sender's live holds per pool (outside the CRDT).
    pub held: Vec<u64>,
    /// Ephemeral: what the sender's own row has let go of per pool (sold and given away,
    /// less returned), its changes not yet published included. A receiver's copy of that
    /// row may be older (the changes are not durable yet) or newer (a third region relayed
    /// it): either way the difference is what the sender has spent that the copy does not
    /// show yet, and counts against the sender's stock as its holds do.
    pub spent: Vec<u64>,
    /// Ephemeral: the sender's recent sales per minute, per pool (for the rebalancer).
    pub sale_rate_per_min: Vec<u64>,
    /// Ephemeral: the sender's recent demand per minute, per pool (for the rebalancer).
    pub demand_per_min: Vec<u64>,
}
