//! The region core's rules, one at a time, in regions that answer from their own quota (forwarding
//! has its own tests: forwarding.rs).

mod common;

use allot_crdt::{Entry, MetaPatch, SalesState};
use allot_node::*;
use common::*;

#[test]
fn thirty_interleaved_holds_on_one_seat_one_wins() {
    let mut c = cluster_alone(&REGIONS, 30, 6);
    // A-1 belongs to eu-west (blocks of 2). Thirty customers ask before anything is durable.
    let ids: Vec<_> = (0..30)
        .map(|i| c.send(0, None, hold_seats(&format!("c-{i}"), &["A-1"])))
        .collect();
    c.persist(0);
    let replies: Vec<Reply> = ids
        .iter()
        .map(|&id| c.take_reply(0, id).expect("reply"))
        .collect();
    let won = replies
        .iter()
        .filter(|r| matches!(r, Ok(Outcome::Held(_))))
        .count();
    let taken = replies
        .iter()
        .filter(|r| matches!(r, Err(CoreError::SeatTaken(_))))
        .count();
    assert_eq!((won, taken), (1, 29));
    c.check().unwrap();
}

#[test]
fn thirty_holds_for_the_last_general_admission_seat_one_wins() {
    let mut c = cluster_alone(&REGIONS, 3, 0);
    // eu-west owns one of the three: it is the last seat this region can sell.
    let ids: Vec<_> = (0..30)
        .map(|i| c.send(0, None, hold_qty(&format!("c-{i}"), "floor", 1)))
        .collect();
    c.persist(0);
    let replies: Vec<Reply> = ids.iter().map(|&id| c.take_reply(0, id).unwrap()).collect();
    assert_eq!(replies.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(replies.iter().filter(|r| r.is_err()).all(|r| matches!(
        r,
        Err(CoreError::SoldOut {
            available: 0,
            wanted: 1
        })
    )));
    c.check().unwrap();
}

#[test]
fn replies_wait_for_their_records_to_be_durable() {
    let mut c = cluster_alone(&REGIONS, 30, 0);
    let id = c.send(0, None, buy(1));
    assert!(
        c.take_reply(0, id).is_none(),
        "no reply before the record is durable"
    );
    c.persist(0);
    assert!(c.take_reply(0, id).unwrap().is_ok());
}

#[test]
fn only_the_owner_spends_or_grants_and_failures_change_nothing() {
    let mut c = cluster_alone(&REGIONS, 30, 6);
    let before = c.cores[1].snapshot();
    // us-east owns; eu-west owns.
    let give = |seats: &[&str], to: &str| Command::Grant {
        event: "rock".into(),
        pool: "stalls".into(),
        to: to.into(),
        amount: GrantAmount::Seats(seats.iter().map(|s| s.to_string()).collect()),
    };
    assert!(matches!(
        c.call(1, give(&["A-1"], "ap-south")),
        Err(CoreError::NotOwner(_))
    ));
    assert!(matches!(
        c.call(1, give(&["A-3", "A-1"], "ap-south")),
        Err(CoreError::NotOwner(_))
    ));
    let too_much = Command::Grant {
        event: "rock".into(),
        pool: "floor".into(),
        to: "eu-west".into(),
        amount: GrantAmount::Quantity(11),
    };
    assert!(matches!(c.call(1, too_much), Err(CoreError::NotOwner(_))));
    assert!(matches!(
        c.call(1, hold_seats("c-1", &["A-1"])),
        Err(CoreError::SeatElsewhere { .. })
    ));
    assert!(matches!(
        c.call(1, give(&["A-3"], "us-east")),
        Err(CoreError::Invalid(_))
    ));
    assert_eq!(
        c.cores[1].snapshot(),
        before,
        "refused commands change nothing"
    );
    assert!(
        c.unpersisted[1].is_empty() && c.stores[1].last_index() == 1,
        "and write no record"
    );
    c.check().unwrap();
}

#[test]
fn a_seat_give_away_moves_ownership_and_counters_together() {
    let mut c = cluster_alone(&REGIONS, 30, 6);
    let give = Command::Grant {
        event: "rock".into(),
        pool: "stalls".into(),
        to: "ap-south".into(),
        amount: GrantAmount::Seats(vec!["A-1".into()]),
    };
    c.call(0, give).unwrap();
    let row = &c.cores[0].event("rock").unwrap().ledger.row(0).pools[1];
    assert_eq!(row.granted_out[2].value, 1);
    assert_eq!(row.seats[&0].epoch, 1);
    // ap-south cannot sell it until the grant's row arrives and is durable there.
    assert!(matches!(
        c.call(2, hold_seats("c-2", &["A-1"])),
        Err(CoreError::SeatElsewhere { .. })
    ));
    c.settle(2);
    c.converged().unwrap();
    c.check().unwrap();
    assert!(c.call(2, hold_seats("c-2", &["A-1"])).is_ok());
    assert!(matches!(
        c.call(0, hold_seats("c-3", &["A-1"])),
        Err(CoreError::SeatElsewhere { .. })
    ));
    // And ap-south may pass it on: the epoch grows, the new owner is the highest epoch.
    c.call(
        2,
        Command::Grant {
            event: "rock".into(),
            pool: "stalls".into(),
            to: "us-east".into(),
            amount: GrantAmount::Seats(vec!["A-2".into()]),
        },
    )
    .expect_err("A-2 is still eu-west's");
    c.settle(2);
    c.check().unwrap();
}

#[test]
fn a_granted_credit_is_not_spendable_until_durable() {
    let mut c = cluster_alone(&REGIONS, 3, 0);
    c.call(
        0,
        Command::Grant {
            event: "rock".into(),
            pool: "floor".into(),
            to: "us-east".into(),
            amount: GrantAmount::Quantity(1),
        },
    )
    .unwrap();
    c.tick(0);
    while !c.network.is_empty() {
        c.deliver(0);
    }
    // us-east applied eu-west's row but has not persisted it: the credit is pending.
    assert_eq!(c.cores[1].event("rock").unwrap().sellable(0), 1);
    c.persist(1);
    assert_eq!(c.cores[1].event("rock").unwrap().sellable(0), 2);
    c.check().unwrap();
}

#[test]
fn holds_expire_return_quota_and_confirming_late_is_gone() {
    let mut c = cluster_alone(&REGIONS, 3, 0);
    let h = c.call(0, hold_qty("c-1", "floor", 1)).unwrap();
    let Outcome::Held(hold) = &h else { panic!() };
    assert_eq!(hold.price_cents, 8900);
    let id = id(IdKind::Hold, "eu-west", hold.n);
    assert_eq!(c.cores[0].event("rock").unwrap().sellable(0), 0);
    c.advance(600_000);
    // Judged by the owner's clock even before the sweep.
    assert_eq!(
        c.call(
            0,
            Command::Confirm {
                hold: id.clone(),
                payment_ref: "p".into()
            }
        ),
        Err(CoreError::HoldExpired)
    );
    assert_eq!(c.cores[0].event("rock").unwrap().sellable(0), 1);
    assert_eq!(
        c.call(
            0,
            Command::Confirm {
                hold: id,
                payment_ref: "p".into()
            }
        ),
        Err(CoreError::HoldExpired)
    );
    // The sweep releases others.
    c.call(0, hold_qty("c-1", "floor", 1)).unwrap();
    c.advance(600_000);
    c.tick(0);
    c.persist(0);
    assert_eq!(c.cores[0].event("rock").unwrap().sellable(0), 1);
    c.check().unwrap();
}

#[test]
fn confirm_twice_returns_the_same_order_and_release_returns_quota() {
    let mut c = cluster_alone(&REGIONS, 30, 0);
    let id = hold_id(&c.call(0, hold_qty("c-1", "floor", 2)), "eu-west");
    let confirm = Command::Confirm {
        hold: id.clone(),
        payment_ref: "p".into(),
    };
    let a = c.call(0, confirm.clone());
    let b = c.call(0, confirm);
    assert_eq!(order_of(&a), order_of(&b));
    assert_eq!(order_of(&a).price_cents, 2 * 8900);
    let id2 = hold_id(&c.call(0, hold_qty("c-1", "floor", 3)), "eu-west");
    assert_eq!(c.cores[0].event("rock").unwrap().sellable(0), 5);
    assert!(c.call(0, Command::Release { hold: id2.clone() }).is_ok());
    assert_eq!(c.cores[0].event("rock").unwrap().sellable(0), 8);
    assert!(
        c.call(0, Command::Release { hold: id2 }).is_ok(),
        "release is idempotent"
    );
    assert!(matches!(
        c.call(0, Command::Release { hold: id }),
        Err(CoreError::Invalid(_))
    ));
    // Another region's hold is asked of that region, which answers as it would locally.
    assert!(matches!(
        c.call(
            1,
            Command::Release {
                hold: common::id(IdKind::Hold, "eu-west", 1u64)
            }
        ),
        Err(CoreError::Invalid(_))
    ));
    c.check().unwrap();
}

#[test]
fn the_hold_cap_is_per_customer() {
    let mut c = cluster_alone(&REGIONS, 300, 0);
    for _ in 0..5 {
        c.call(0, hold_qty("c-1", "floor", 1)).unwrap();
    }
    assert_eq!(
        c.call(0, hold_qty("c-1", "floor", 1)),
        Err(CoreError::HoldLimit(5))
    );
    assert!(c.call(0, hold_qty("c-2", "floor", 1)).is_ok());
}

#[test]
fn refunds_return_quota_to_the_seller() {
    let mut c = cluster_alone(&REGIONS, 30, 6);
    let r = c.call(0, hold_seats("c-1", &["A-1", "A-2"]));
    let id = hold_id(&r, "eu-west");
    let o = order_of(&c.call(
        0,
        Command::Confirm {
            hold: id,
            payment_ref: "p".into(),
        },
    ))
    .clone();
    assert_eq!(o.seats, vec![0, 1]);
    assert!(matches!(
        c.call(0, hold_seats("c-2", &["A-2"])),
        Err(CoreError::SeatTaken(_))
    ));
    let oid = common::id(IdKind::Order, "eu-west", o.n);
    let refunded = c.call(0, Command::Refund { order: oid.clone() });
    assert_eq!(order_of(&refunded).status, OrderStatus::Refunded);
    assert_eq!(
        order_of(&c.call(0, Command::Refund { order: oid })).status,
        OrderStatus::Refunded
    );
    assert!(c.call(0, hold_seats("c-2", &["A-2"])).is_ok());
    c.settle(2);
    c.converged().unwrap();
    c.check().unwrap();
}

#[test]
fn idempotency_keys_return_the_first_answer() {
    let mut c = cluster_alone(&REGIONS, 30, 0);
    let key = |h: u8| {
        Some(IdempotencyKey {
            key: "k-1".into(),
            body_hash: [h; 32],
        })
    };
    let a = c.call_keyed(0, key(1), buy(1));
    let b = c.call_keyed(0, key(1), buy(1));
    assert_eq!(a, b);
    assert_eq!(c.stores[0].order_count(), 1);
    assert_eq!(
        c.call_keyed(0, key(2), buy(1)),
        Err(CoreError::IdempotencyMismatch)
    );
    // A concurrent duplicate waits for the first request's record.
    let k2 = Some(IdempotencyKey {
        key: "k-2".into(),
        body_hash: [1; 32],
    });
    let r1 = c.send(0, k2.clone(), buy(2));
    let r2 = c.send(0, k2, buy(2));
    assert!(c.take_reply(0, r2).is_none());
    c.persist(0);
    assert_eq!(c.take_reply(0, r1), c.take_reply(0, r2));
    // Keys expire.
    c.advance(24 * 3600 * 1000);
    c.tick(0);
    assert!(c.call_keyed(0, key(2), buy(1)).is_ok());
}

#[test]
fn bad_input_is_refused_with_a_typed_error() {
    let mut c = cluster_alone(&REGIONS, 30, 4);
    let cases = vec![
        (buy(0), "invalid-input"),
        (buy(21), "invalid-input"),
        (
            Command::Purchase {
                event: "nope".into(),
                want: Want::Quantity {
                    pool: "floor".into(),
                    quantity: 1,
                },
                customer: "c".into(),
                payment_ref: "p".into(),
            },
            "unknown-event",
        ),
        (hold_qty("c-1", "vip", 1), "unknown-pool"),
        (hold_seats("c-1", &["Z-9"]), "unknown-seat"),
        (hold_seats("c-1", &["A-1", "A-1"]), "invalid-input"),
        (hold_qty("bad customer", "floor", 1), "invalid-input"),
        (
            Command::Confirm {
                hold: id(IdKind::Hold, "eu-west", 999u64),
                payment_ref: "p".into(),
            },
            "unknown-hold",
        ),
        (
            Command::Confirm {
                hold: "garbage".into(),
                payment_ref: "p".into(),
            },
            "unknown-hold",
        ),
        (
            Command::Refund {
                order: id(IdKind::Order, "eu-west", 7u64),
            },
            "unknown-order",
        ),
        (Command::CreateEvent(spec("rock", 1, 0)), "event-exists"),
        (
            Command::PatchEvent {
                event: "rock".into(),
                patch: MetaPatch {
                    prices: [("vip".to_string(), 1)].into(),
                    ..Default::default()
                },
            },
            "invalid-metadata",
        ),
    ];
    let before = c.cores[0].snapshot();
    for (cmd, kind) in cases {
        let r = c.call(0, cmd.clone());
        assert_eq!(
            r.as_ref().map_err(CoreError::kind).err(),
            Some(kind),
            "{cmd:?} -> {r:?}"
        );
    }
    assert_eq!(c.cores[0].snapshot(), before);
    let mut dup = spec("twice", 0, 0);
    dup.pools.push(dup.pools[0].clone());
    assert!(matches!(
        c.call(0, Command::CreateEvent(dup)),
        Err(CoreError::Genesis(_))
    ));
    // Creation at another region is the catalog's: its refusals come back as they are.
    assert!(matches!(
        c.call(1, Command::CreateEvent(spec("rock", 5, 0))),
        Err(CoreError::EventExists(_))
    ));
}

#[test]
fn recover_rebuilds_the_same_core() {
    let mut c = cluster_alone(&REGIONS, 100, 10);
    c.call(0, buy(3)).unwrap();
    let h = hold_id(&c.call(0, hold_seats("c-1", &["A-1", "A-2"])), "eu-west");
    c.call(0, hold_qty("c-2", "floor", 2)).unwrap();
    c.call(
        0,
        Command::Confirm {
            hold: h,
            payment_ref: "p".into(),
        },
    )
    .unwrap();
    c.call(0, transfer("us-east", 5)).unwrap();
    c.call(
        1,
        Command::Grant {
            event: "rock".into(),
            pool: "stalls".into(),
            to: "eu-west".into(),
            amount: GrantAmount::Seats(vec!["A-5".into()]),
        },
    )
    .unwrap();
    let key = |h: u8| {
        Some(IdempotencyKey {
            key: "k".into(),
            body_hash: [h; 32],
        })
    };
    let refund = || Command::Refund {
        order: id(IdKind::Order, "eu-west", 1u64),
    };
    let refunded = c.call_keyed(0, key(0), refund()).unwrap();
    c.call(
        0,
        Command::PatchEvent {
            event: "rock".into(),
            patch: MetaPatch {
                name: Some("Renamed".into()),
                ..Default::default()
            },
        },
    )
    .unwrap();
    c.settle(3);
    for i in 0..3 {
        let before = c.cores[i].snapshot();
        c.crash(i);
        assert_eq!(c.cores[i].snapshot(), before, "region {i}");
        c.cores[i].check_invariants().unwrap();
    }
    // Keys answered before the crash are answered again from the store, body checked.
    assert_eq!(c.call_keyed(0, key(0), refund()), Ok(refunded));
    assert_eq!(
        c.call_keyed(0, key(1), refund()),
        Err(CoreError::IdempotencyMismatch)
    );
    // A crash loses what was not durable, and never an acknowledged order.
    c.send(0, None, buy(1));
    let acked = c.call(0, buy(2)).unwrap();
    c.send(0, None, buy(4));
    c.crash(0);
    let o = match acked {
        Outcome::Order(o) => o,
        _ => panic!(),
    };
    let read = c.call(
        0,
        Command::ReadOrder {
            order: c.cores[0].id_of(IdKind::Order, o.n),
        },
    );
    assert_eq!(order_of(&read), &o);
    c.settle(2);
    c.converged().unwrap();
    c.check().unwrap();
}

#[test]
fn gossip_bytes_to_catch_up_do_not_grow_with_history() {
    let size_after = |sales: u64| {
        let mut c = cluster_alone(&REGIONS[..2], 1_000_000, 0);
        for _ in 0..sales {
            c.send(0, None, buy(1));
        }
        c.persist(0);
        c.tick(0);
        let frame = &c.network.iter().find(|e| e.from == 0).unwrap().frame;
        let rows = &frame.events[0].rows;
        assert_eq!(rows.len(), 1);
        assert!(matches!(rows[0].entries[..], [(_, Entry::Consumed { .. })]));
        postcard::to_stdvec(frame).unwrap().len() as i64
    };
    let (small, big) = (size_after(10), size_after(100_000));
    assert!(
        (big - small).abs() <= 16,
        "10 sales: {small} bytes, 100,000 sales: {big} bytes"
    );
}

#[test]
fn unpublished_rows_never_leave_the_region() {
    let mut c = cluster_alone(&REGIONS, 30, 0);
    c.send(0, None, buy(2));
    c.tick(0); // the sale's record is not durable yet
    for env in &c.network {
        for e in &env.frame.events {
            assert!(
                e.rows.iter().all(|r| r.writer != 0),
                "a non-durable row version was gossiped"
            );
        }
    }
    c.persist(0);
    c.network.clear();
    c.tick(0);
    assert!(c
        .network
        .iter()
        .all(|env| env.frame.events[0].rows.iter().any(|r| r.writer == 0)));
}

#[test]
fn concurrent_metadata_edits_merge() {
    let mut c = cluster_alone(&REGIONS, 30, 0);
    let patch = |p: MetaPatch| Command::PatchEvent {
        event: "rock".into(),
        patch: p,
    };
    c.call(
        1,
        patch(MetaPatch {
            name: Some("Rock Night".into()),
            ..Default::default()
        }),
    )
    .unwrap();
    c.call(
        2,
        patch(MetaPatch {
            prices: [("floor".to_string(), 9900)].into(),
            ..Default::default()
        }),
    )
    .unwrap();
    c.settle(3);
    c.converged().unwrap();
    let info = &c.cores[0].event("rock").unwrap().info;
    assert_eq!(
        (info.name.as_str(), info.prices["floor"]),
        ("Rock Night", 9900)
    );
    // The new price applies to new holds everywhere.
    let Ok(Outcome::Held(h)) = c.call(0, hold_qty("c-1", "floor", 1)) else {
        panic!()
    };
    assert_eq!(h.price_cents, 9900);
}

/// Operators pause, close and time an on-sale from any region; every region refuses holds
/// and purchases outside it (by its own clock) and changes nothing, and still confirms a hold
/// placed while it was open.
#[test]
fn holds_and_purchases_are_taken_only_while_the_sale_is_open() {
    let mut c = cluster_alone(&REGIONS, 30, 0);
    let patch = |p: MetaPatch| Command::PatchEvent {
        event: "rock".into(),
        patch: p,
    };
    let Ok(Outcome::Held(h)) = c.call(0, hold_qty("c-1", "floor", 1)) else {
        panic!("open by default")
    };
    // Paused in us-east: every region hears it.
    c.call(
        1,
        patch(MetaPatch {
            sales: Some(SalesState::Paused),
            ..Default::default()
        }),
    )
    .unwrap();
    c.settle(2);
    for i in 0..3 {
        let before = c.cores[i].snapshot();
        for cmd in [buy(1), hold_qty("c-2", "floor", 1)] {
            match c.call(i, cmd) {
                Err(e @ CoreError::SalesClosed { .. }) => {
                    assert_eq!(e.kind(), "sales-closed");
                    assert_eq!(e.to_string(), "sales are paused");
                }
                other => panic!("region {i}: {other:?}"),
            }
        }
        assert_eq!(c.cores[i].snapshot(), before, "a refusal changes nothing");
    }
    // The hold placed before the pause is still confirmed.
    let confirm = Command::Confirm {
        hold: id(IdKind::Hold, "eu-west", h.n.0),
        payment_ref: "p-1".into(),
    };
    assert!(matches!(c.call(0, confirm), Ok(Outcome::Order(_))));
    // Open again, with an on-sale time ahead of every region's clock.
    let at = c.now + 60_000;
    c.call(
        2,
        patch(MetaPatch {
            sales: Some(SalesState::Open),
            on_sale_at_ms: Some(Some(at)),
            ..Default::default()
        }),
    )
    .unwrap();
    c.settle(2);
    match c.call(1, buy(1)) {
        Err(CoreError::SalesClosed {
            opens_at_ms: Some(t),
            ..
        }) => assert_eq!(t, at),
        other => panic!("{other:?}"),
    }
    c.advance(60_000);
    assert!(matches!(c.call(1, buy(1)), Ok(Outcome::Order(_))));
    // Closed.
    c.call(
        0,
        patch(MetaPatch {
            sales: Some(SalesState::Closed),
            ..Default::default()
        }),
    )
    .unwrap();
    c.settle(2);
    assert!(matches!(
        c.call(2, buy(1)),
        Err(CoreError::SalesClosed { .. })
    ));
    c.converged().unwrap();
    c.check().unwrap();
}

/// Keys are forgotten after the configured time (24 h by default): with a short TTL, a key
/// repeated while live gets the first answer, and repeated after its expiry runs again.
#[test]
fn an_expired_idempotency_key_runs_again_and_a_live_one_does_not() {
    let mut c = allot_node::cluster::LocalCluster::new(&["eu-west"]);
    let mut cfg = Config::new("eu-west", &["eu-west".to_string()]);
    cfg.idempotency_ttl_ms = 1_000;
    c.cores[0] = Core::new(cfg);
    c.call(0, Command::CreateEvent(spec("rock", 30, 0)))
        .unwrap();
    let key = |h: u8| {
        Some(IdempotencyKey {
            key: "k-1".into(),
            body_hash: [h; 32],
        })
    };
    let first = order_of(&c.call_keyed(0, key(1), buy(1))).clone();
    c.advance(999);
    c.tick(0);
    assert_eq!(
        order_of(&c.call_keyed(0, key(1), buy(1))),
        &first,
        "live: the first answer"
    );
    assert!(matches!(
        c.call_keyed(0, key(2), buy(1)),
        Err(CoreError::IdempotencyMismatch)
    ));
    c.advance(1);
    c.tick(0);
    let again = order_of(&c.call_keyed(0, key(2), buy(1))).clone();
    assert_ne!(again.n, first.n, "expired: the request runs again");
    assert_eq!(c.cores[0].event("rock").unwrap().ledger.consumed(0, 0), 2);
    c.cores[0].check_invariants().unwrap();
}
