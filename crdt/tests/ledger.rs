//! The ledger CRDT: merge laws on random states, and refusal of malformed or hostile rows.

use std::sync::Arc;

use allot_crdt::*;
use proptest::prelude::*;

fn genesis() -> Arc<Genesis> {
    let regions: Vec<String> = ["eu-west", "us-east", "ap-south"]
        .map(String::from)
        .to_vec();
    let pools = vec![
        PoolSpec {
            id: "floor".into(),
            kind: PoolKind::General { capacity: 30 },
        },
        PoolSpec {
            id: "stalls".into(),
            kind: PoolKind::Assigned {
                seats: (1..=6).map(|i| format!("A-{i}")).collect(),
            },
        },
    ];
    Arc::new(Genesis::build("rock", "EUR", &regions, pools, &Allotments::Even).unwrap())
}

#[derive(Clone, Debug)]
enum Step {
    Consume(u16, u64),
    Return(u16, u64),
    Grant(u16, u16, u64),
    GiveSeat(u16, u32, u16),
    Sync(u16, u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3u16, 1..5u64).prop_map(|(w, n)| Step::Consume(w, n)),
        (0..3u16, 1..3u64).prop_map(|(w, n)| Step::Return(w, n)),
        (0..3u16, 0..3u16, 1..4u64).prop_map(|(w, t, n)| Step::Grant(w, t, n)),
        (0..3u16, 0..6u32, 0..3u16).prop_map(|(w, s, t)| Step::GiveSeat(w, s, t)),
        (0..3u16, 0..3u16).prop_map(|(w, f)| Step::Sync(w, f)),
    ]
}

/// Runs a coherent history: each writer changes only its own row (when its view allows) and
/// now and then merges another writer's view. Returns every state every writer passed through.
fn history(steps: &[Step]) -> Vec<Ledger> {
    let g = genesis();
    let mut views: Vec<Ledger> = (0..3).map(|_| Ledger::new(g.clone())).collect();
    let mut seen = views.clone();
    for s in steps {
        let (w, change) = match *s {
            Step::Consume(w, n) => (w, Change::Consume { pool: 0, n }),
            Step::Return(w, n) => (w, Change::Return { pool: 0, n }),
            Step::Grant(w, to, n) => (w, Change::Grant { pool: 0, to, n }),
            Step::GiveSeat(w, seat, to) => (w, Change::GiveSeat { pool: 1, seat, to }),
            Step::Sync(w, from) => {
                let other = views[from as usize].clone();
                views[w as usize].merge(&other).expect("honest views merge");
                seen.push(views[w as usize].clone());
                continue;
            }
        };
        if let Ok(d) = views[w as usize].write(w, &[change]) {
            views[w as usize].apply(&d).expect("own delta applies");
            seen.push(views[w as usize].clone());
        }
    }
    for v in &seen {
        v.check()
            .expect("every view satisfies the single-view invariants");
    }
    seen
}

fn merged(a: &Ledger, b: &Ledger) -> Ledger {
    let mut m = a.clone();
    m.merge(b).expect("states of one history merge");
    m
}

proptest! {
    #[test]
    fn merge_is_commutative_associative_idempotent(
        steps in prop::collection::vec(step(), 1..80),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 3),
    ) {
        let states = history(&steps);
        let [a, b, c] = [0, 1, 2].map(|i| picks[i].get(&states).clone());
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&a, &a), a.clone());
        let abc = merged(&merged(&a, &b), &c);
        abc.check().map_err(TestCaseError::fail)?;
        prop_assert!(abc.version_vector().dominates(&a.version_vector()));
    }

    #[test]
    fn deltas_in_any_order_with_duplicates_converge(steps in prop::collection::vec(step(), 1..80), order in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>())) {
        let states = history(&steps);
        let full = states.iter().fold(Ledger::new(genesis()), |acc, s| merged(&acc, s));
        // Every delta each state could send, shuffled and duplicated, applied until quiet.
        let mut deltas: Vec<RowDelta> = Vec::new();
        for s in &states {
            for w in 0..3u16 {
                for since in [0, s.row(w).seq / 2] {
                    deltas.extend(s.delta_since(w, since));
                }
            }
        }
        let mut x = order;
        let mut replica = Ledger::new(genesis());
        for _ in 0..4 {
            for i in (1..deltas.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                deltas.swap(i, (x % (i as u64 + 1)) as usize);
            }
            for d in &deltas {
                replica.apply(d).expect("honest deltas apply");
            }
        }
        prop_assert_eq!(replica, full);
    }
}

fn busy() -> (Ledger, RowDelta) {
    let mut l = Ledger::new(genesis());
    for change in [
        Change::Consume { pool: 0, n: 3 },
        Change::Grant {
            pool: 0,
            to: 1,
            n: 2,
        },
        Change::GiveSeat {
            pool: 1,
            seat: 0,
            to: 2,
        },
    ] {
        let d = l.write(0, &[change]).unwrap();
        l.apply(&d).unwrap();
    }
    let d = l.delta_since(0, 0).unwrap();
    (l, d)
}

/// Applies `d` to `l` and checks it was refused and changed nothing.
fn refused(l: &mut Ledger, d: &RowDelta) -> Refusal {
    let before = l.clone();
    let r = l.apply(d).expect_err("hostile delta accepted");
    assert_eq!(*l, before, "a refused delta changed the ledger");
    r
}

#[test]
fn hostile_rows_are_refused_and_change_nothing() {
    let (mut l, d) = busy();
    // A known seq with other content.
    let mut x = d.clone();
    x.entries[1].1 = Entry::Consumed { pool: 0, value: 4 };
    assert!(matches!(refused(&mut l, &x), Refusal::Conflict { .. }));
    // A seq regression: an old version claiming more than the newer one.
    let mut x = d.clone();
    x.seq = 1;
    x.entries = [(1, Entry::Consumed { pool: 0, value: 9 })]
        .into_iter()
        .collect();
    assert!(matches!(
        refused(&mut l, &x),
        Refusal::Conflict { .. } | Refusal::Backwards { .. }
    ));
    // A newer version whose number went backwards.
    let mut x = d.clone();
    x.since = 3;
    x.seq = 4;
    x.entries = [(4, Entry::Consumed { pool: 0, value: 1 })]
        .into_iter()
        .collect();
    assert!(matches!(refused(&mut l, &x), Refusal::Backwards { .. }));
    // A writer that is not a region of the event.
    let mut x = d.clone();
    x.writer = 7;
    assert!(matches!(refused(&mut l, &x), Refusal::UnknownWriter(7)));
    // Another genesis.
    let mut x = d.clone();
    x.genesis = GenesisHash([9; 32]);
    assert!(matches!(
        refused(&mut l, &x),
        Refusal::GenesisMismatch { .. }
    ));
    // Refunding more than was sold would mint seats.
    let mut x = d.clone();
    x.since = 3;
    x.seq = 4;
    x.entries = [(4, Entry::Returned { pool: 0, value: 5 })]
        .into_iter()
        .collect();
    assert!(matches!(refused(&mut l, &x), Refusal::Malformed { .. }));
    // Structural garbage.
    for (since, seq, entries) in [
        (3, 3, vec![]),
        (3, 4, vec![(9, Entry::Consumed { pool: 0, value: 9 })]),
        (3, 4, vec![(4, Entry::Consumed { pool: 5, value: 9 })]),
        (
            3,
            4,
            vec![(
                4,
                Entry::GrantedOut {
                    pool: 0,
                    to: 0,
                    value: 9,
                },
            )],
        ),
        (
            3,
            4,
            vec![(
                4,
                Entry::Seat {
                    pool: 0,
                    seat: 0,
                    epoch: 1,
                    to: 1,
                },
            )],
        ),
        (
            3,
            4,
            vec![
                (4, Entry::Consumed { pool: 0, value: 9 }),
                (4, Entry::Consumed { pool: 0, value: 9 }),
            ],
        ),
    ] {
        let x = RowDelta {
            genesis: l.hash(),
            writer: 0,
            since,
            seq,
            entries: entries.into_iter().collect(),
        };
        assert!(
            matches!(refused(&mut l, &x), Refusal::Malformed { .. }),
            "{x:?}"
        );
    }
}

#[test]
fn a_seat_given_away_by_a_region_that_does_not_own_it_is_refused() {
    let (mut l, _) = busy();
    // A-5 (index 4) belongs to ap-south at epoch 0; us-east claims to hand it to eu-west.
    let theft = RowDelta {
        genesis: l.hash(),
        writer: 1,
        since: 0,
        seq: 1,
        entries: [(
            1,
            Entry::Seat {
                pool: 1,
                seat: 4,
                epoch: 1,
                to: 0,
            },
        )]
        .into_iter()
        .collect(),
    };
    assert!(matches!(
        refused(&mut l, &theft),
        Refusal::SeatNotOwned { owner: 2, .. }
    ));
    // A-1 went to ap-south at epoch 1: a second epoch-1 give-away is a conflict.
    let twice = RowDelta {
        genesis: l.hash(),
        writer: 1,
        since: 0,
        seq: 1,
        entries: [(
            1,
            Entry::Seat {
                pool: 1,
                seat: 0,
                epoch: 1,
                to: 1 + 1,
            },
        )]
        .into_iter()
        .collect(),
    };
    assert!(matches!(refused(&mut l, &twice), Refusal::Conflict { .. }));
}

#[test]
fn only_the_owner_can_write_spending() {
    let (l, _) = busy();
    // eu-west no longer owns A-1; us-east never owned A-1; nobody has 100 units.
    assert!(matches!(
        l.write(
            0,
            &[Change::GiveSeat {
                pool: 1,
                seat: 0,
                to: 1
            }]
        ),
        Err(Refusal::SeatNotOwned { .. })
    ));
    assert!(matches!(
        l.write(
            1,
            &[Change::GiveSeat {
                pool: 1,
                seat: 0,
                to: 0
            }]
        ),
        Err(Refusal::SeatNotOwned { .. })
    ));
    assert!(matches!(
        l.write(1, &[Change::Consume { pool: 0, n: 20 }]),
        Err(Refusal::Insufficient { .. })
    ));
    assert!(matches!(
        l.write(1, &[Change::Consume { pool: 0, n: 100 }]),
        Err(Refusal::ChangeOutOfBounds { .. })
    ));
    assert!(matches!(
        l.write(
            0,
            &[Change::Grant {
                pool: 1,
                to: 1,
                n: 1
            }]
        ),
        Err(Refusal::Malformed { .. })
    ));
}

#[test]
fn a_seat_give_away_keeps_counters_and_ownership_in_agreement() {
    let (l, d) = busy();
    let row = l.row(0);
    assert_eq!(row.pools[1].granted_out[2].value, 1);
    assert_eq!(l.seat_owner(1, 0), SeatOwner { epoch: 1, owner: 2 });
    // The seat entry and the counter travel in one delta, at one seq.
    let stamps: Vec<u64> = d
        .entries
        .iter()
        .filter(|(_, e)| e.pool() == 1)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(stamps, vec![3, 3]);
    // ap-south, having received it, owns 2 + 1 seats; its available matches.
    let mut m = Ledger::new(l.genesis().clone());
    m.apply(&d).unwrap();
    let owned = m.seat_owners(1).iter().filter(|o| o.owner == 2).count() as i64;
    assert_eq!(owned, m.available(1, 2));
    m.check().unwrap();
}

#[test]
fn a_delta_with_a_gap_is_ignored_until_the_missing_part_arrives() {
    let (l, _) = busy();
    let mut m = Ledger::new(l.genesis().clone());
    let late = l.delta_since(0, 2).unwrap();
    assert_eq!(m.apply(&late), Ok(Applied::Gap { have: 0 }));
    assert_eq!(m, Ledger::new(l.genesis().clone()));
    m.apply(&l.delta_since(0, 0).unwrap()).unwrap();
    assert_eq!(m.apply(&late), Ok(Applied::Stale));
    assert_eq!(m, l);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A single change near the integer limits is refused by `write` and by `apply`, and the
    /// ledger is the same after (before the fix a grant of 2^64 − 10 wrapped into new quota).
    #[test]
    fn single_changes_near_the_limits_are_refused_and_change_nothing(
        n in prop_oneof![
            (u64::MAX - 64)..=u64::MAX,
            (i64::MAX as u64 - 64)..=(i64::MAX as u64 + 64),
            31u64..=u64::MAX,
        ],
        kind in 0u8..3,
    ) {
        let mut l = Ledger::new(genesis());
        l.apply(&l.write(1, &[Change::Consume { pool: 0, n: 3 }]).unwrap()).unwrap();
        let before = l.clone();
        let change = match kind {
            0 => Change::Consume { pool: 0, n },
            1 => Change::Return { pool: 0, n },
            _ => Change::Grant { pool: 0, to: 0, n },
        };
        let refused = matches!(l.write(1, &[change]), Err(Refusal::ChangeOutOfBounds { .. }));
        prop_assert!(refused);
        // The same numbers arriving as a hostile delta of row 1.
        let entry = match kind {
            0 => Entry::Consumed { pool: 0, value: n },
            1 => Entry::Returned { pool: 0, value: n },
            _ => Entry::GrantedOut { pool: 0, to: 0, value: n },
        };
        let d = RowDelta {
            genesis: l.hash(),
            writer: 1,
            since: 1,
            seq: 2,
            entries: [(2, entry)].into_iter().collect(),
        };
        prop_assert!(l.apply(&d).is_err());
        prop_assert_eq!(&l, &before);
        l.check().unwrap();
    }

    /// Sell/refund cycles and quota moved back and forth push cumulative counters far past
    /// the capacity: every write is accepted, and replicas fed in any order converge.
    #[test]
    fn counters_past_capacity_are_accepted_and_converge(rounds in 10usize..60, q in 1u64..=10) {
        let g = genesis();
        let mut a = Ledger::new(g.clone());
        let mut b = Ledger::new(g.clone());
        let mut deltas = Vec::new();
        for _ in 0..rounds {
            for (w, change) in [
                (0, Change::Grant { pool: 0, to: 1, n: q }),
                (1, Change::Grant { pool: 0, to: 0, n: q }),
                (0, Change::Consume { pool: 0, n: 10 }),
                (0, Change::Return { pool: 0, n: 10 }),
            ] {
                // Writer 1 can pass on what writer 0 gave only once it has seen the grant.
                let other = a.clone();
                b.merge(&other).unwrap();
                let view = if w == 0 { &mut a } else { &mut b };
                let d = view.write(w, &[change]).unwrap();
                view.apply(&d).unwrap();
                deltas.push(d);
                let other = b.clone();
                a.merge(&other).unwrap();
            }
        }
        prop_assert!(a.consumed(0, 0) > 30);
        let mut c = Ledger::new(g);
        for d in deltas.iter().rev().chain(deltas.iter()) {
            c.apply(d).unwrap();
        }
        c.merge(&a).unwrap();
        prop_assert_eq!(&c, &a);
        a.check().unwrap();
        prop_assert_eq!(a.available(0, 0), 10);
    }
}
