//! The sans-IO region core of allot.
//!
//! A region's whole logic as a state machine: [`Core::handle`] takes an [`Input`] (a request,
//! a peer's gossip frame, a tick, a "persisted up to n" notice) with the current time, and
//! [`Core::ready`] hands back the [`Ready`] outputs — records to persist first, then replies
//! and messages that are safe to release. Sockets, clocks and disks belong to the drivers
//! (`allot` for real, `allot-sim` in virtual time).

pub mod api;
pub mod bugs;
pub mod cluster;
mod core;
pub mod event;
pub mod exchange;
pub mod gossip;
pub mod handoff;
pub mod ids;
mod mem_store;
pub mod policy;
pub mod reads;
pub mod record;

pub use crate::api::*;
pub use crate::core::{
    Config, Core, Footprint, ForwardStats, GatherStats, HandoffCounters, InFlight, Input, Ready,
    DEFAULT_FRAME_BUDGET, DEFAULT_PEER_CALL_TIMEOUT_MS,
};
pub use crate::exchange::{Answered, CallId, Exchange, PeerMessage, RemoteOutcome};
pub use crate::gossip::{EventGossip, GossipFrame};
pub use crate::ids::{GlobalId, IdKey, IdKind, IdTag};
pub use crate::mem_store::MemStore;
pub use crate::reads::{
    Found, HoldNo, Lookup, OrderNo, ReadId, ReadResult, RecordIndex, StoredKey, StoredOrder,
};
pub use crate::record::{IdemRecord, Record, RecordBody, ReleaseReason};
