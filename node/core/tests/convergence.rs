//! Replicas under random operations and random delivery: the invariants hold after every
//! step and, once gossip flows, every replica converges.

mod common;

use allot_node::cluster::LocalCluster;
use allot_node::*;
use common::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Purchase { r: usize, q: u64 },
    HoldGa { r: usize, q: u64, customer: u8 },
    HoldSeat { r: usize, seat: usize, customer: u8 },
    Confirm { r: usize, k: usize },
    Release { r: usize, k: usize },
    Refund { r: usize, k: usize },
    Grant { r: usize, to: usize, q: u64 },
    GiveSeat { r: usize, to: usize, seat: usize },
    Advance { ms: u64 },
    Tick { r: usize },
    Persist { r: usize, n: usize },
    Deliver { k: usize },
    Duplicate { k: usize },
    Drop { k: usize },
    Crash { r: usize },
}

const SEATS: usize = 12;

fn op() -> impl Strategy<Value = Op> {
    let r = 0..5usize;
    prop_oneof![
        4 => (r.clone(), 1..4u64).prop_map(|(r, q)| Op::Purchase { r, q }),
        3 => (r.clone(), 1..4u64, 0..4u8).prop_map(|(r, q, customer)| Op::HoldGa { r, q, customer }),
        3 => (r.clone(), 0..SEATS, 0..4u8).prop_map(|(r, seat, customer)| Op::HoldSeat { r, seat, customer }),
        3 => (r.clone(), 0..8usize).prop_map(|(r, k)| Op::Confirm { r, k }),
        1 => (r.clone(), 0..8usize).prop_map(|(r, k)| Op::Release { r, k }),
        1 => (r.clone(), 0..8usize).prop_map(|(r, k)| Op::Refund { r, k }),
        2 => (r.clone(), 0..5usize, 1..6u64).prop_map(|(r, to, q)| Op::Grant { r, to, q }),
        2 => (r.clone(), 0..5usize, 0..SEATS).prop_map(|(r, to, seat)| Op::GiveSeat { r, to, seat }),
        1 => (1..400_000u64).prop_map(|ms| Op::Advance { ms }),
        4 => r.clone().prop_map(|r| Op::Tick { r }),
        4 => (r.clone(), 0..4usize).prop_map(|(r, n)| Op::Persist { r, n }),
        6 => (0..64usize).prop_map(|k| Op::Deliver { k }),
        1 => (0..64usize).prop_map(|k| Op::Duplicate { k }),
        1 => (0..64usize).prop_map(|k| Op::Drop { k }),
        1 => r.prop_map(|r| Op::Crash { r }),
    ]
}

fn run(c: &mut LocalCluster, op: &Op) {
    let n = c.cores.len();
    let name = |c: &LocalCluster, r: usize| c.names[r % n].clone();
    match *op {
        Op::Purchase { r, q } => {
            c.send(r % n, None, buy(q));
        }
        Op::HoldGa { r, q, customer } => {
            c.send(r % n, None, hold_qty(&format!("c-{customer}"), "floor", q));
        }
        Op::HoldSeat { r, seat, customer } => {
            c.send(
                r % n,
                None,
                hold_seats(&format!("c-{customer}"), &[&format!("A-{}", seat + 1)]),
            );
        }
        Op::Confirm { r, k } | Op::Release { r, k } => {
            let mut holds: Vec<HoldNo> = c.cores[r % n].holds().map(|h| h.n).collect();
            holds.sort();
            if let Some(&h) = holds.get(k % holds.len().max(1)) {
                let hold = c.cores[r % n].id_of(IdKind::Hold, h);
                let cmd = if matches!(op, Op::Confirm { .. }) {
                    Command::Confirm {
                        hold,
                        payment_ref: "p".into(),
                    }
                } else {
                    Command::Release { hold }
                };
                c.send(r % n, None, cmd);
            }
        }
        Op::Refund { r, k } => {
            let orders: Vec<OrderNo> = c.stores[r % n]
                .orders_after(None, 0, usize::MAX)
                .iter()
                .map(|o| o.order.n)
                .collect();
            if let Some(&o) = orders.get(k % orders.len().max(1)) {
                c.send(
                    r % n,
                    None,
                    Command::Refund {
                        order: c.cores[r % n].id_of(IdKind::Order, o),
                    },
                );
            }
        }
        Op::Grant { r, to, q } => {
            let to = name(c, to);
            c.send(
                r % n,
                None,
                Command::Grant {
                    event: "rock".into(),
                    pool: "floor".into(),
                    to,
                    amount: GrantAmount::Quantity(q),
                },
            );
        }
        Op::GiveSeat { r, to, seat } => {
            let to = name(c, to);
            let amount = GrantAmount::Seats(vec![format!("A-{}", seat + 1)]);
            c.send(
                r % n,
                None,
                Command::Grant {
                    event: "rock".into(),
                    pool: "stalls".into(),
                    to,
                    amount,
                },
            );
        }
        Op::Advance { ms } => c.advance(ms),
        Op::Tick { r } => c.tick(r % n),
        Op::Persist { r, n: k } => {
            if k == 0 {
                c.persist(r % n)
            } else {
                c.persist_some(r % n, k)
            }
        }
        Op::Deliver { k } => {
            if !c.network.is_empty() {
                c.deliver(k % c.network.len());
            }
        }
        Op::Duplicate { k } => {
            if !c.network.is_empty() {
                let e = &c.network[k % c.network.len()];
                let copy = allot_node::cluster::Envelope {
                    from: e.from,
                    to: e.to,
                    frame: e.frame.clone(),
                };
                c.network.push(copy);
            }
        }
        Op::Drop { k } => {
            if !c.network.is_empty() {
                let k = k % c.network.len();
                c.network.remove(k);
            }
        }
        Op::Crash { r } => c.crash(r % n),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_and_invariants_hold(regions in 3..=5usize, ops in prop::collection::vec(op(), 1..250)) {
        let names = ["eu-west", "us-east", "ap-south", "sa-east", "af-south"];
        let mut c = cluster_with(&names[..regions], 40, SEATS);
        for (i, op) in ops.iter().enumerate() {
            run(&mut c, op);
            if let Err(e) = c.check() {
                prop_assert!(false, "after step {i} ({op:?}): {e}");
            }
        }
        prop_assert!(c.warnings.is_empty(), "honest peers were refused: {:?}", c.warnings);
        // Heal: everything persisted, gossip flows until quiet.
        c.settle(4);
        c.check().map_err(|e| TestCaseError::fail(format!("after healing: {e}")))?;
        c.converged().map_err(|e| TestCaseError::fail(format!("did not converge: {e}")))?;
        // Conservation, exactly, in the converged view.
        let e = c.cores[0].event("rock").unwrap();
        let sold: u64 = c.cores.iter().map(|core| { let v = core.event("rock").unwrap(); v.ledger.consumed(0, v.me) - v.ledger.returned(0, v.me) }).sum();
        let avail: i64 = (0..regions as u16).map(|r| e.ledger.available(0, r)).sum();
        prop_assert_eq!(avail + sold as i64, 40);
    }
}
