//! The simulator: deterministic, every scenario clean, and a thousand fuzz seeds clean.

use std::time::{Duration, Instant};

use allot_sim::{fuzz, Scenario, Strategy, World};

fn scenario(name: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn json(sc: &Scenario, strategy: Strategy, seed: u64) -> String {
    serde_json::to_string_pretty(&allot_sim::run(sc, strategy, seed)).unwrap()
}

#[test]
fn the_same_seed_gives_byte_identical_json_and_seeds_differ() {
    let sc = scenario("partition");
    let a = json(&sc, Strategy::Static, 7);
    assert_eq!(a, json(&sc, Strategy::Static, 7));
    assert_ne!(a, json(&sc, Strategy::Static, 8));
    let f = fuzz::schedule(&scenario("fuzz"), 3);
    let g = fuzz::schedule(&scenario("fuzz"), 3);
    assert_eq!(format!("{f:?}"), format!("{g:?}"));
}

#[test]
fn every_scenario_runs_clean_under_every_strategy() {
    let dir = format!("{}/scenarios", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.len() >= 4);
    for file in names {
        let sc =
            Scenario::parse(&std::fs::read_to_string(format!("{dir}/{file}")).unwrap()).unwrap();
        // The high-rate scenario is for speed: its invariants are checked at the end only.
        let every_step = sc.name != "high-rate";
        for strategy in [Strategy::Static, Strategy::Rebalance, Strategy::Central] {
            let mut w = World::new(sc.clone(), strategy, 1, Default::default());
            w.check_every_step = every_step;
            let r = w.run();
            assert!(
                r.violations.is_empty(),
                "{file} {strategy:?}: {:?}",
                r.violations
            );
            assert_eq!(r.oversold, 0);
            assert!(r.sold > 0, "{file} {strategy:?} sold nothing");
            assert!(r.sold_in_rows <= r.capacity);
            if strategy == Strategy::Central {
                assert_eq!(
                    r.false_sold_outs, 0,
                    "{file}: one home region never refuses what it has"
                );
            }
        }
    }
}

#[test]
fn partitions_heal_into_identical_state() {
    let r = allot_sim::run(&scenario("partition"), Strategy::Static, 1);
    assert_eq!(r.convergence_ms.len(), 1, "{r:?}");
    assert!(
        r.convergence_ms[0] <= 2 * 239 + 50 + 250,
        "converged in {} ms",
        r.convergence_ms[0]
    );
}

#[test]
fn a_thousand_fuzz_seeds_with_zero_violations() {
    let base = scenario("fuzz");
    let start = Instant::now();
    let mut done = 0;
    for seed in 0..1000 {
        if start.elapsed() > Duration::from_secs(240) {
            break;
        }
        let r = fuzz::run_seed(&base, Strategy::Static, seed);
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {}\nreplay: allot sim sim/scenarios/fuzz.toml --seeds {seed}..{}",
            r.violations[0],
            seed + 1
        );
        done += 1;
    }
    eprintln!("{done} fuzz seeds in {:?}", start.elapsed());
    assert!(done >= 500, "only {done} seeds ran in the time budget");
}
