//! Fuzz mode: many seeds, each with a random fault schedule drawn swarm-style (each kind of
//! fault on or off, at a random intensity), every invariant checked after every step.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::scenario::{Crash, Partition, Scenario};
use crate::world::{Chaos, Strategy, World};
use crate::Report;

/// The scenario and chaos a seed stands for, derived from the base scenario.
pub fn schedule(base: &Scenario, seed: u64) -> (Scenario, Chaos) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f00d);
    let mut sc = base.clone();
    let n = sc.regions.len();
    let d = sc.duration_ms;
    sc.faults.loss = if rng.random_bool(0.5) {
        rng.random_range(0.0..0.3)
    } else {
        0.0
    };
    sc.faults.duplicate = if rng.random_bool(0.5) {
        rng.random_range(0.0..0.3)
    } else {
        0.0
    };
    sc.jitter_ms = if rng.random_bool(0.5) {
        rng.random_range(0..200)
    } else {
        0
    };
    // Slow disks half the time: a wide window between a change and its sync is where
    // durability bugs (publishing or spending what a crash can lose) show.
    sc.disk_ms = if rng.random_bool(0.5) {
        rng.random_range(1..50)
    } else {
        rng.random_range(100..800)
    };
    sc.faults.partition.clear();
    if rng.random_bool(0.6) {
        for _ in 0..rng.random_range(1..4) {
            let from = rng.random_range(0..d);
            let to = from + rng.random_range(100..d.max(200));
            let k = rng.random_range(1..n);
            let mut names = sc.regions.clone();
            for i in (1..names.len()).rev() {
                names.swap(i, rng.random_range(0..=i));
            }
            sc.faults.partition.push(Partition {
                a: names[..k].to_vec(),
                b: vec![],
                from_ms: from,
                to_ms: to,
            });
        }
    }
    sc.faults.crash.clear();
    if rng.random_bool(0.7) {
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..d);
            sc.faults.crash.push(Crash {
                region: sc.regions[rng.random_range(0..n)].clone(),
                at_ms: at,
                restart_ms: at + rng.random_range(1..3000),
            });
        }
    }
    sc.faults.clock_skew_ms.clear();
    if rng.random_bool(0.3) {
        for r in &sc.regions {
            sc.faults
                .clock_skew_ms
                .insert(r.clone(), rng.random_range(-5000..5000));
        }
    }
    sc.demand.hold_fraction = rng.random_range(0.0..1.0);
    sc.demand.abandon = rng.random_range(0.0..0.5);
    let chaos = Chaos {
        transfers_per_s: if rng.random_bool(0.7) {
            rng.random_range(0.5..10.0)
        } else {
            0.0
        },
    };
    (sc, chaos)
}

/// Runs one fuzz seed with every invariant checked after every step.
pub fn run_seed(base: &Scenario, strategy: Strategy, seed: u64) -> Report {
    let (sc, chaos) = schedule(base, seed);
    let mut w = World::new(sc, strategy, seed, chaos);
    w.check_every_step = true;
    w.run()
}
