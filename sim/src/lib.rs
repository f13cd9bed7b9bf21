//! The deterministic partition simulator.
//!
//! It drives the same region core as the server (`allot_node::Core`, no copy of the logic) in
//! virtual time: a seeded generator decides arrivals, message delays, loss, duplication,
//! partitions and crashes, and a crashed region restarts through `Core::recover` from its
//! durable records only. The same seed replays the same run.
//!
//! Depends only on the sans-IO crates: CI checks `cargo tree -p allot-sim -e normal` shows no
//! tokio, quinn, rocksdb, axum or hyper.

pub mod fuzz;
pub mod plot;
pub mod report;
pub mod scenario;
mod waits;
pub mod world;

pub use allot_node::cluster::{check_global, LocalCluster};
pub use report::Report;
pub use scenario::Scenario;
pub use world::{Chaos, Strategy, World};

/// Runs one scenario with one seed.
pub fn run(sc: &Scenario, strategy: Strategy, seed: u64) -> Report {
    World::new(sc.clone(), strategy, seed, Chaos::default()).run()
}
