//! Proof that the fuzz mode finds an oversell: each deliberately broken core is caught within
//! the CI seed budget. Runs only with `cargo test -p allot-sim --features inject-bugs`.
#![cfg(feature = "inject-bugs")]

use std::sync::atomic::Ordering;

use allot_node::bugs;
use allot_sim::{fuzz, Scenario, Strategy};

fn first_caught(
    switch: &std::sync::atomic::AtomicBool,
    strategy: Strategy,
) -> Option<(u64, String)> {
    let path = format!("{}/scenarios/fuzz.toml", env!("CARGO_MANIFEST_DIR"));
    let base = Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    switch.store(true, Ordering::SeqCst);
    let found = (0..1000).find_map(|seed| {
        let r = fuzz::run_seed(&base, strategy, seed);
        r.violations.first().map(|v| (seed, v.clone()))
    });
    switch.store(false, Ordering::SeqCst);
    found
}

// One test, so the switches (process-wide) never overlap.
#[test]
fn the_fuzz_mode_catches_each_injected_bug() {
    let (seed, why) = first_caught(&bugs::SKIP_OWNER_CHECK, Strategy::Static)
        .expect("skipping the owner check went unnoticed");
    eprintln!("skip owner check: caught at seed {seed}: {why}");
    let (seed, why) = first_caught(&bugs::PUBLISH_BEFORE_DURABLE, Strategy::Static)
        .expect("publishing before durable went unnoticed");
    eprintln!("publish before durable: caught at seed {seed}: {why}");
    // The handoff's two deliberate breaks, as the model checker finds them too
    // (node/core/tests/handoff_model.rs).
    let (seed, why) = first_caught(&bugs::GRANT_ANSWERED_BEFORE_DURABLE, Strategy::Rebalance)
        .expect("a grant answered before it was durable went unnoticed");
    eprintln!("grant answered before durable: caught at seed {seed}: {why}");
    let (seed, why) = first_caught(&bugs::CREDIT_BARE_GRANT, Strategy::Rebalance)
        .expect("a grant credited on a bare +k went unnoticed");
    eprintln!("credit on a bare +k: caught at seed {seed}: {why}");
}
