//! The `allot` binary's library: CLI drivers around the sans-IO core — the RocksDB store, the
//! core and writer threads, the HTTP API, and the in-process demo.

pub mod admission;
pub mod bench;
pub mod bench_restart;
pub mod central;
pub mod compare;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod driver;
pub mod extract;
#[cfg(feature = "fault-switch")]
pub mod fault_switch;
pub mod http;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod overload_curve;
pub mod problem;
pub mod store;
pub mod tls;
pub mod transport;
pub mod views;
pub mod wan;
pub mod wire;
