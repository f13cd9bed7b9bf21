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
    // The last two are the handoff's deliberate breaks, as the model checker finds them too
    // (node/core/tests/handoff_model.rs).
    let cases = [
        (
            &bugs::SKIP_OWNER_CHECK,
            Strategy::Static,
            "skipping the owner check",
        ),
        (
            &bugs::PUBLISH_BEFORE_DURABLE,
            Strategy::Static,
            "publishing before durable",
        ),
        (
            &bugs::GRANT_ANSWERED_BEFORE_DURABLE,
            Strategy::Rebalance,
            "a grant answered before it was durable",
        ),
        (
            &bugs::CREDIT_BARE_GRANT,
            Strategy::Rebalance,
            "a grant credited on a bare +k",
        ),
    ];
    for (switch, strategy, what) in cases {
        let (seed, why) =
            first_caught(switch, strategy).unwrap_or_else(|| panic!("{what} went unnoticed"));
        eprintln!("{what}: caught at seed {seed}: {why}");
    }
}
