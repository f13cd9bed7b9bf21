//! The deterministic partition simulator (a skeleton: the issue "The partition simulator"
//! builds it). It will drive `allot_node::Core` in virtual time from a seed, with the same
//! records, messages and `Core::recover` the server uses, so any failure replays from its seed.
//! Until then `allot sim` says it is not built and exits non-zero.
//!
//! Depends only on the sans-IO crates: CI checks `cargo tree -p allot-sim -e normal` shows no
//! tokio, quinn, rocksdb, axum or hyper.

pub use allot_node::cluster::{check_global, LocalCluster};
