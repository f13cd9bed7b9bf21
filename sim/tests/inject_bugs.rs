//! Proof that the fuzz mode finds an oversell: each deliberately broken core is caught within
//! the CI seed budget. Runs only with `cargo test -p allot-sim --features inject-bugs`.
#![cfg(feature = "inject-bugs")]

use std::sync::atomic::Ordering;

use allot_node::bugs;
use allot_sim::{fuzz, Scenario, Strategy};

fn first_caught(switch: &std::sync::atomic::AtomicBool) -> Option<(u64, String)> {
    let path = format!("{}/scenarios/fuzz.toml", env!("CARGO_MANIFEST_DIR"));
    let base = Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    switch.store(true, Ordering::SeqCst);
    let found = (0..1000).find_map(|seed| {
        let r = fuzz::run_seed(&base, Strategy::Static, seed);
        r.violations.first().map(|v| (seed, v.clone()))
    });
    switch.store(false, Ordering::SeqCst);
    found
}

// One test, so the two switches (process-wide) never overlap.
#[test]
fn the_fuzz_mode_catches_each_injected_bug() {
    let (seed, why) =
        first_caught(&bugs::SKIP_OWNER_CHECK).expect("skipping the owner check went unnoticed");
    eprintln!("skip owner check: caught at seed {seed}: {why}");
    let (seed, why) = first_caught(&bugs::PUBLISH_BEFORE_DURABLE)
        .expect("publishing before durable went unnoticed");
    eprintln!("publish before durable: caught at seed {seed}: {why}");
}
