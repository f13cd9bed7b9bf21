//! Gossip frames stay within their byte budget however far behind a peer is, and a peer that
//! lost everything still converges, the catch-up spread over ticks.

mod common;

use allot_node::cluster::LocalCluster;
use allot_node::*;
use common::*;

const EVENTS: usize = 200;
const SEATS: usize = 8_000;

fn frame_bytes(f: &GossipFrame) -> usize {
    postcard::to_stdvec(f).unwrap().len()
}

/// Ticks, checks every frame on the network against the budget, delivers and persists.
/// Returns the largest frame seen.
fn round(c: &mut LocalCluster, budget: usize) -> usize {
    let mut largest = 0;
    for i in 0..c.cores.len() {
        c.persist(i);
        c.tick(i);
    }
    for env in &c.network {
        let n = frame_bytes(&env.frame);
        assert!(
            n <= budget,
            "a frame of {n} bytes, over the {budget}-byte budget"
        );
        largest = largest.max(n);
    }
    while !c.network.is_empty() {
        c.deliver(0);
    }
    for i in 0..c.cores.len() {
        c.persist(i);
    }
    largest
}

#[test]
fn a_reset_peer_catches_up_on_200_large_events_within_the_frame_budget() {
    let budget = DEFAULT_FRAME_BUDGET;
    let mut c = LocalCluster::new(&REGIONS);
    for i in 0..EVENTS {
        let id = format!("arena-{i}");
        c.call(0, Command::CreateEvent(spec(&id, 100, SEATS)))
            .expect("create");
        // Some seats change hands, so rows carry seat entries too.
        c.call(
            0,
            Command::Grant {
                event: id,
                pool: "stalls".into(),
                to: "us-east".into(),
                amount: GrantAmount::Seats((1..=50).map(|s| format!("A-{s}")).collect()),
            },
        )
        .expect("transfer");
    }
    let mut rounds = 0;
    while c.converged().is_err() {
        round(&mut c, budget);
        rounds += 1;
        assert!(rounds < 50, "no convergence after {rounds} rounds");
    }
    // us-east loses its disk: a fresh core with nothing, and the others start over with it.
    let names: Vec<String> = REGIONS.iter().map(|s| s.to_string()).collect();
    let mut cfg = Config::new("us-east", &names);
    cfg.incarnation = 9;
    c.cores[1] = Core::new(cfg);
    c.stores[1] = MemStore::new("us-east", Config::new("us-east", &names).idempotency_ttl_ms);
    c.unpersisted[1].clear();
    for i in [0, 2] {
        c.step(
            i,
            Input::PeerReset {
                peer: "us-east".into(),
            },
        );
    }
    let mut catch_up = 0;
    let mut largest = 0;
    while c.converged().is_err() {
        largest = largest.max(round(&mut c, budget));
        catch_up += 1;
        assert!(catch_up < 50, "no convergence after {catch_up} rounds");
    }
    // The whole catch-up is more than one frame can carry: it really was spread over ticks.
    assert!(
        catch_up > 1,
        "caught up in one round: the test does not exercise the budget"
    );
    assert!(largest > budget / 2, "frames were not filled: {largest}");
    c.check().unwrap();
    assert_eq!(c.cores[1].events().count(), EVENTS);
    let e = c.cores[1].event("arena-7").unwrap();
    let owner = e.ledger.seat_owner(1, 0).owner;
    assert_eq!(e.genesis().regions[owner as usize], "us-east");
}

#[test]
fn an_event_too_large_for_one_frame_is_refused_at_creation() {
    let mut c = LocalCluster::new(&REGIONS);
    let mut big = spec("stadium", 10, 0);
    big.pools = (0..4)
        .map(|p| PoolInput {
            id: format!("tier-{p}"),
            kind: allot_crdt::PoolKind::Assigned {
                seats: (0..90_000).map(|s| format!("T{p}-{s}")).collect(),
            },
            price_cents: 5000,
        })
        .collect();
    let before = c.cores[0].snapshot();
    let r = c.call(0, Command::CreateEvent(big));
    assert!(
        matches!(r, Err(CoreError::Invalid(ref m)) if m.contains("gossip")),
        "{r:?}"
    );
    assert_eq!(c.cores[0].snapshot(), before);
    // A 60,000-seat stadium fits.
    let mut stadium = spec("stadium", 10, 0);
    stadium.pools[0].kind = allot_crdt::PoolKind::Assigned {
        seats: (0..60_000).map(|s| format!("S-{s}")).collect(),
    };
    c.call(0, Command::CreateEvent(stadium))
        .expect("a 60,000-seat event");
}

#[test]
fn a_100k_seat_pool_fits_and_metadata_edits_stop_before_the_history_outgrows_a_frame() {
    let mut c = LocalCluster::new(&REGIONS);
    let mut bowl = spec("bowl", 10, 0);
    bowl.pools[0].kind = allot_crdt::PoolKind::Assigned {
        seats: (0..100_000).map(|s| format!("B-{s}")).collect(),
    };
    c.call(0, Command::CreateEvent(bowl))
        .expect("the largest pool genesis allows");
    let mut edits = 0;
    loop {
        let before = c.cores[0].snapshot();
        let r = c.call(
            0,
            Command::PatchEvent {
                event: "bowl".into(),
                patch: allot_crdt::MetaPatch {
                    description: Some(format!("{edits:04}{}", "x".repeat(3996))),
                    ..Default::default()
                },
            },
        );
        match r {
            Ok(_) => edits += 1,
            Err(CoreError::Invalid(m)) => {
                assert!(m.contains("gossip frame"), "{m}");
                assert_eq!(c.cores[0].snapshot(), before);
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
        assert!(edits < 5_000, "edits never refused");
    }
    assert!(edits > 100, "only {edits} edits allowed");
    // Whatever was accepted still reaches a peer that lacks the event, in frames within budget.
    let mut rounds = 0;
    while c.converged().is_err() {
        for i in 0..3 {
            c.persist(i);
            c.tick(i);
        }
        for env in &c.network {
            assert!(postcard::to_stdvec(&env.frame).unwrap().len() <= DEFAULT_FRAME_BUDGET);
        }
        while !c.network.is_empty() {
            c.deliver(0);
        }
        rounds += 1;
        assert!(rounds < 20, "no convergence");
    }
}
