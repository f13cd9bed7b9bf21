//! Sale forwarding (core/forwards.rs): a region that cannot cover a buyer's request sends it
//! to a region that can; exactly one order per key whatever crashes; `sold-out` only when no
//! region has the stock, `stock-unreachable` when only unreachable ones do.

mod common;

use allot_node::cluster::LocalCluster;
use allot_node::*;
use common::*;

/// Three regions 80/239 ms from eu-west (as in regions.toml), `ga` general-admission places
/// split evenly, `seats` assigned seats in blocks.
fn cluster(ga: u64, seats: usize, tune: impl Fn(&mut Config)) -> LocalCluster {
    let mut c = LocalCluster::configured(&REGIONS, |cfg| {
        let rtt = [
            ("eu-west", "us-east", 80),
            ("us-east", "ap-south", 217),
            ("eu-west", "ap-south", 239),
        ];
        for (a, b, ms) in rtt {
            if cfg.region == a {
                cfg.peer_rtt_ms.insert(b.into(), ms);
            } else if cfg.region == b {
                cfg.peer_rtt_ms.insert(a.into(), ms);
            }
        }
        tune(cfg);
    });
    c.call(0, Command::CreateEvent(spec("rock", ga, seats)))
        .expect("create");
    c.settle(2);
    c.converged().expect("genesis spread");
    c
}

/// eu-west, us-east, ap-south and sa-east, 10 floor places each; eu-west's nearest peers are
/// us-east, then sa-east, then ap-south.
fn four_regions() -> LocalCluster {
    let names = ["eu-west", "us-east", "ap-south", "sa-east"];
    let mut c = LocalCluster::configured(&names, |cfg| {
        if cfg.region == "eu-west" {
            for (peer, ms) in [("us-east", 80), ("sa-east", 150), ("ap-south", 239)] {
                cfg.peer_rtt_ms.insert(peer.into(), ms);
            }
        }
    });
    c.call(0, Command::CreateEvent(spec("rock", 40, 0)))
        .expect("create");
    c.settle(2);
    c
}

fn key(k: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey {
        key: k.into(),
        body_hash: [7; 32],
    })
}

fn remote(r: &Reply) -> &RemoteOutcome {
    match r {
        Ok(Outcome::Remote(o)) => o,
        other => panic!("expected another region's answer, got {other:?}"),
    }
}

/// Units of the floor pool sold by region `seller`, as region `viewer` sees it.
fn sold_by(c: &LocalCluster, viewer: usize, seller: u16) -> u64 {
    c.cores[viewer]
        .event("rock")
        .unwrap()
        .ledger
        .consumed(0, seller)
}

fn sell_out_locally(c: &mut LocalCluster, i: usize) {
    sell_down_to(c, i, 0);
}

#[test]
fn a_region_without_quota_sells_through_the_nearest_peer_that_has_it() {
    let mut c = cluster(30, 0, |_| {});
    sell_out_locally(&mut c, 0);
    let r = c.call(0, buy(2));
    let r = remote(&r);
    // The order belongs to us-east (nearest of those with stock): its id names it, its
    // ledger counts it, and a read through eu-west finds it there.
    assert_eq!(r.region, "us-east");
    let id = r.id.clone().unwrap();
    assert_eq!(GlobalId::parts(IdKind::Order, &id).unwrap().0, "us-east");
    assert_eq!(sold_by(&c, 1, 1), 2);
    assert_eq!(sold_by(&c, 0, 0), 10);
    let read = c.call(0, Command::ReadOrder { order: id.clone() });
    assert_eq!(remote(&read).id.as_deref(), Some(id.as_str()));
    let stats = c.cores[0].forward_stats()["us-east"];
    assert_eq!((stats.sent, stats.served, stats.refused), (1, 1, 0));
    // And for the event alone.
    assert_eq!(
        c.cores[0].event_forward_stats("rock"),
        [("us-east", &stats)]
    );
    assert!(c.cores[0].event_forward_stats("jazz").is_empty());
    c.settle(3);
    c.converged().unwrap();
    c.check().unwrap();
}

#[test]
fn sold_out_only_when_no_region_has_the_stock() {
    let mut c = cluster(3, 0, |_| {});
    for i in 0..3 {
        sell_out_locally(&mut c, i);
    }
    c.settle(2);
    let r = c.call(0, buy(1));
    assert!(matches!(r, Err(CoreError::SoldOut { .. })), "{r:?}");
    assert!(c.calls.is_empty(), "nothing to forward to");
    c.check().unwrap();
}

#[test]
fn stock_only_in_a_cut_off_region_is_unreachable_not_sold_out() {
    let mut c = cluster(30, 0, |_| {});
    sell_out_locally(&mut c, 0);
    // Nothing heard from the peers for longer than a peer stays fresh.
    c.advance(5_000);
    let before = c.cores[0].snapshot();
    let r = c.call(0, buy(1));
    match &r {
        Err(CoreError::StockUnreachable { wanted: 1, regions }) => {
            assert_eq!(regions.len(), 2, "{regions:?}")
        }
        other => panic!("expected stock-unreachable, got {other:?}"),
    }
    assert_eq!(c.cores[0].snapshot(), before, "a refusal changes nothing");
    assert_eq!(sold_by(&c, 1, 1) + sold_by(&c, 2, 2), 0);
}

#[test]
fn a_seat_hold_for_another_regions_seat_goes_to_its_owner() {
    // Six seats in blocks of two: are us-east's.
    let mut c = cluster(30, 6, |_| {});
    let r = c.call(0, hold_seats("c-1", &["A-3", "A-4"]));
    let r = remote(&r).clone();
    assert_eq!(r.region, "us-east");
    let hold = r.id.clone().unwrap();
    assert_eq!(GlobalId::parts(IdKind::Hold, &hold).unwrap().0, "us-east");
    // Confirming through the origin goes to the owner too.
    let confirmed = c.call(
        0,
        Command::Confirm {
            hold,
            payment_ref: "pay".into(),
        },
    );
    assert_eq!(remote(&confirmed).region, "us-east");
    // Seats of two regions at once: neither can sell them whole.
    let r = c.call(0, hold_seats("c-2", &["A-1", "A-5"]));
    assert!(matches!(r, Err(CoreError::SeatElsewhere { .. })), "{r:?}");
    c.settle(3);
    c.converged().unwrap();
    c.check().unwrap();
}

/// The buyer's retry after the origin lost everything not durable, at each point of a
/// forward: before its target record was durable, after it but before the call left, and
/// after the target sold but before the answer came back. By the retry the origin has quota
/// of its own again, so a retry that forgot the forward would sell a second time here.
/// Always exactly one order.
#[test]
fn a_keyed_retry_after_the_origin_crashes_yields_exactly_one_order() {
    for crash_at in ["record not durable", "call lost", "answer lost"] {
        let mut c = cluster(30, 0, |_| {});
        sell_out_locally(&mut c, 0);
        let first = c.send(0, key("k-1"), buy(2));
        match crash_at {
            "record not durable" => {
                assert!(
                    c.calls.is_empty(),
                    "{crash_at}: no call before the record is durable"
                );
            }
            "call lost" => {
                c.persist(0);
                assert_eq!(c.calls.len(), 1, "{crash_at}");
                c.calls.clear();
            }
            _ => {
                c.persist(0);
                c.deliver_call(0);
                c.persist(1);
                assert_eq!(c.calls.len(), 1, "{crash_at}: the answer is on its way");
                c.calls.clear();
            }
        }
        assert!(c.take_reply(0, first).is_none());
        c.crash(0);
        c.call(2, transfer("eu-west", 5)).unwrap();
        c.settle(2); // the restarted region hears its peers (and the grant) again
        assert_eq!(c.cores[0].event("rock").unwrap().sellable(0), 5);
        let again = c.call_keyed(0, key("k-1"), buy(2));
        let seller = match &again {
            Ok(Outcome::Order(_)) => "eu-west",
            other => remote(other).region.as_str(),
        };
        let expected = if crash_at == "record not durable" {
            "eu-west" // the first attempt never left: selling here is its only sale
        } else {
            "us-east"
        };
        assert_eq!(seller, expected, "{crash_at}");
        // And once more, now that everything is durable: the same answer.
        let third = c.call_keyed(0, key("k-1"), buy(2));
        assert_eq!(third, again, "{crash_at}");
        c.settle(3);
        c.converged().unwrap();
        let units = sold_by(&c, 0, 0) - 10 + sold_by(&c, 0, 1) + sold_by(&c, 0, 2);
        assert_eq!(
            units, 2,
            "{crash_at}: one order of two places, in all regions"
        );
        c.check().unwrap();
    }
}

/// us-east sold out before eu-west heard of it: the forward is refused there, goes to
/// ap-south, and a late duplicate of the refused call, delivered after us-east got quota
/// again, is refused again rather than sold: one order for the key.
#[test]
fn after_a_refusal_the_next_region_sells_and_a_late_duplicate_never_does() {
    let mut c = cluster(30, 0, |_| {});
    sell_out_locally(&mut c, 0);
    sell_out_locally(&mut c, 1);
    // eu-west has not heard: us-east's sales stay unpersisted to gossip.
    c.network.clear();
    let id = c.send(0, key("k-2"), buy(1));
    c.persist(0);
    let call = c.calls[0].clone();
    assert_eq!(
        call.to, 1,
        "us-east is nearest, and eu-west thinks it has stock"
    );
    c.deliver_call(0);
    c.persist(1);
    c.deliver_call(0); // us-east's refusal
    c.persist(0); // the record naming ap-south
    c.deliver_call(0);
    c.persist(2);
    c.deliver_call(0);
    let r = c.take_reply(0, id).unwrap();
    assert_eq!(remote(&r).region, "ap-south");
    assert_eq!(c.cores[0].forward_stats()["us-east"].refused, 1);
    // us-east receives quota again, then the duplicate arrives.
    c.call(2, transfer("us-east", 5)).unwrap();
    c.settle(2);
    assert!(c.cores[1].event("rock").unwrap().sellable(0) > 0);
    let sold_before = sold_by(&c, 1, 1);
    c.calls.push(call);
    c.deliver_call(0);
    c.persist(1);
    let answer = c.calls.remove(0);
    assert!(
        matches!(
            answer.message,
            Exchange::Answer {
                answer: Err(CoreError::SoldOut { .. }),
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(sold_by(&c, 1, 1), sold_before, "the duplicate sold nothing");
    c.settle(3);
    c.converged().unwrap();
    c.check().unwrap();
}

/// The budget a forwarded call carries runs on the target's clock from its arrival: a call
/// still waiting there after it (here, on the store's answer for its key) is refused, not
/// sold to a buyer its origin may have stopped waiting for; the refusal is kept, so a
/// duplicate of the call arriving later (with a budget of its own) is refused too, and the
/// origin, sure the target never sells it, tries the next region.
#[test]
fn a_forward_still_waiting_after_its_budget_is_refused_for_good() {
    let mut c = cluster(30, 0, |_| {});
    sell_out_locally(&mut c, 0);
    let id = c.send(0, None, buy(1));
    assert_eq!(c.calls.len(), 1, "a request without a key leaves at once");
    let call = c.calls[0].clone();
    c.defer_reads = true;
    c.deliver_call(0);
    assert_eq!(c.reads[1].len(), 1, "us-east looks its forward id up");
    c.advance(DEFAULT_PEER_CALL_TIMEOUT_MS);
    c.answer_read(1, 0);
    c.persist(1);
    assert_eq!(sold_by(&c, 1, 1), 0);
    c.defer_reads = false;
    // The refusal reaches eu-west, which tries ap-south.
    c.deliver_call(0);
    c.persist(0);
    assert_eq!(c.calls.len(), 1);
    assert_eq!(c.calls[0].to, 2, "on to ap-south");
    deliver_all(&mut c);
    assert_eq!(remote(&c.take_reply(0, id).unwrap()).region, "ap-south");
    // The duplicate of the first call, late: refused again, nothing sold.
    c.calls.push(call);
    c.deliver_call(0);
    c.persist(1);
    let answer = c.calls.remove(0);
    assert!(
        matches!(
            answer.message,
            Exchange::Answer {
                answer: Err(CoreError::DeadlinePassed),
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(sold_by(&c, 1, 1), 0);
    c.check().unwrap();
}

#[test]
fn a_silent_target_is_not_replaced_and_the_buyer_may_retry() {
    let mut c = cluster(30, 0, |_| {});
    sell_out_locally(&mut c, 0);
    let id = c.send(0, key("k-3"), buy(1));
    c.persist(0);
    c.calls.clear(); // lost on the way
    c.advance(DEFAULT_PEER_CALL_TIMEOUT_MS + 1);
    c.tick(0);
    let r = c.take_reply(0, id).unwrap();
    assert!(
        matches!(&r, Err(CoreError::StockUnreachable { regions, .. }) if regions == &["us-east"]),
        "{r:?}"
    );
    assert!(
        !c.calls
            .iter()
            .any(|m| matches!(m.message, Exchange::Call { .. })),
        "no second region while the first may have sold"
    );
    c.settle(1);
    let again = c.call_keyed(0, key("k-3"), buy(1));
    assert_eq!(remote(&again).region, "us-east");
    assert_eq!(sold_by(&c, 1, 1), 1);
}

#[test]
fn forwards_in_flight_to_one_region_are_capped() {
    let mut c = cluster(30, 0, |cfg| cfg.max_forwards_per_peer = 1);
    sell_out_locally(&mut c, 0);
    // The nearest region first, the next one when it is full, then 503.
    let ids: Vec<_> = (0..3).map(|_| c.send(0, None, buy(1))).collect();
    let third = c.take_reply(0, ids[2]).unwrap();
    assert!(
        matches!(third, Err(CoreError::Unreachable { .. })),
        "{third:?}"
    );
    deliver_all(&mut c);
    let sellers: Vec<String> = ids[..2]
        .iter()
        .map(|&id| remote(&c.take_reply(0, id).unwrap()).region.clone())
        .collect();
    assert_eq!(sellers, ["us-east", "ap-south"]);
    c.check().unwrap();
}

#[test]
fn a_forwarded_request_is_never_forwarded_again() {
    let mut c = cluster(30, 0, |_| {});
    sell_out_locally(&mut c, 1);
    // us-east, out of stock, is asked by eu-west (which has not heard) to sell: it refuses,
    // it does not pass the request on to ap-south.
    c.network.clear();
    c.step(
        1,
        Input::Exchange {
            from: "eu-west".into(),
            message: Exchange::Call {
                id: CallId {
                    incarnation: 1,
                    n: 99,
                },
                key: key("k-4"),
                command: Box::new(buy(1)),
                budget_ms: Some(1_000),
            },
        },
    );
    c.persist(1);
    assert_eq!(c.calls.len(), 1);
    assert_eq!(c.calls[0].to, 0, "only the answer, to the caller");
    assert!(matches!(
        c.calls[0].message,
        Exchange::Answer {
            answer: Err(CoreError::SoldOut { .. }),
            ..
        }
    ));
}

/// Found in review: with four regions, a buyer's retry sent while the first attempt was on
/// its way could, after both were refused by the first target, move the key to a different
/// region than the first attempt did: two orders. Now a retry waits behind the attempt on its
/// way and then follows the key's record.
#[test]
fn a_retry_during_a_forward_waits_for_it_and_follows_the_key() {
    let mut c = four_regions();
    sell_out_locally(&mut c, 0);
    sell_out_locally(&mut c, 1); // eu-west has not heard: no tick since
    let first = c.send(0, key("k-5"), buy(1));
    c.persist(0);
    let second = c.send(0, key("k-5"), buy(1));
    c.persist(0);
    assert_eq!(
        c.calls.len(),
        1,
        "the retry waits behind the attempt on its way"
    );
    while !c.calls.is_empty() {
        c.deliver_call(0);
        for i in 0..4 {
            c.persist(i);
        }
    }
    let (a, b) = (
        c.take_reply(0, first).unwrap(),
        c.take_reply(0, second).unwrap(),
    );
    assert_eq!(
        remote(&a).region,
        "sa-east",
        "us-east refused; sa-east is next"
    );
    assert_eq!(a, b, "the retry gets the same order");
    c.settle(3);
    c.converged().unwrap();
    let sold: Vec<u64> = (0..4).map(|r| sold_by(&c, 0, r)).collect();
    assert_eq!(sold, [10, 10, 0, 1], "one order, in sa-east");
    c.check().unwrap();
}

/// A call that could not leave (no link) moves a request without a key to the next region;
/// a keyed one is answered like a silence, since an earlier attempt of its key may have
/// reached the region it was recorded for.
#[test]
fn an_undeliverable_call_moves_on_only_without_a_key() {
    let mut c = cluster(30, 0, |_| {});
    sell_out_locally(&mut c, 0);
    let undeliverable = |c: &mut LocalCluster| {
        let call = c.calls.remove(0);
        let to = c.names[call.to].clone();
        c.step(
            0,
            Input::Undeliverable {
                to,
                message: call.message,
            },
        );
    };
    let keyless = c.send(0, None, buy(1));
    undeliverable(&mut c);
    assert_eq!(c.calls.len(), 1);
    assert_eq!(c.calls[0].to, 2, "on to ap-south");
    c.calls.clear();
    c.advance(DEFAULT_PEER_CALL_TIMEOUT_MS + 1);
    c.tick(0);
    assert!(c.take_reply(0, keyless).is_some());
    c.settle(1);
    let keyed = c.send(0, key("k-6"), buy(1));
    c.persist(0);
    undeliverable(&mut c);
    let r = c.take_reply(0, keyed).unwrap();
    assert!(
        matches!(&r, Err(CoreError::StockUnreachable { regions, .. }) if regions == &["us-east"]),
        "{r:?}"
    );
    assert!(c.calls.is_empty(), "not moved on");
    c.check().unwrap();
}

/// Found in review: a retry of a key whose first attempt was refused by one region and then
/// lost on its way to a second started with a clean slate, and could spend its one other
/// try on the first region again (which keeps its refusal): `sold-out` while a third region
/// had the stock. The key's record now carries the regions that refused it.
#[test]
fn a_retry_does_not_try_again_a_region_that_refused_its_key() {
    let mut c = four_regions();
    sell_out_locally(&mut c, 0);
    sell_out_locally(&mut c, 1); // eu-west has not heard
    let first = c.send(0, key("k-7"), buy(1));
    c.persist(0);
    c.deliver_call(0); // to us-east
    c.persist(1);
    c.deliver_call(0); // its refusal: on to sa-east
    c.persist(0);
    assert_eq!(c.calls.len(), 1);
    assert_eq!(c.calls[0].to, 3);
    // That call cannot leave: the key stays with sa-east, and the buyer hears 503.
    let call = c.calls.remove(0);
    c.step(
        0,
        Input::Undeliverable {
            to: "sa-east".into(),
            message: call.message,
        },
    );
    assert!(matches!(
        c.take_reply(0, first),
        Some(Err(CoreError::StockUnreachable { .. }))
    ));
    // Past the time us-east's refusal is trusted as a figure; sa-east sells out unheard.
    c.advance(1_500);
    sell_out_locally(&mut c, 3);
    c.network.clear();
    let again = c.call_keyed(0, key("k-7"), buy(1));
    assert_eq!(remote(&again).region, "ap-south", "{again:?}");
    c.settle(3);
    c.converged().unwrap();
    let sold: Vec<u64> = (0..4).map(|r| sold_by(&c, 0, r)).collect();
    assert_eq!(sold, [10, 10, 1, 10]);
    c.check().unwrap();
}

/// Sells region `i` down to `left` places of the floor pool, from its own quota.
fn sell_down_to(c: &mut LocalCluster, i: usize, left: i64) {
    while c.cores[i].event("rock").unwrap().sellable(0) > left {
        c.call(i, buy(1)).expect("local quota");
    }
}

/// `cluster(30, 0, ..)` with `left[i]` places of the floor left in region `i` (its own buyers
/// bought the rest), every region having heard the others.
fn with_left(left: [i64; 3]) -> LocalCluster {
    let mut c = cluster(30, 0, |_| {});
    for (i, &places) in left.iter().enumerate() {
        sell_down_to(&mut c, i, places);
    }
    c.settle(2);
    c
}

/// Delivers every call and answer, persisting every region after each.
fn deliver_all(c: &mut LocalCluster) {
    while !c.calls.is_empty() {
        c.deliver_call(0);
        for i in 0..3 {
            c.persist(i);
        }
    }
}

/// Places of the floor pool sold in all, as region `viewer` sees it.
fn sold_in_all(c: &LocalCluster, viewer: usize) -> u64 {
    (0..3).map(|r| sold_by(c, viewer, r)).sum()
}

#[test]
fn an_order_no_one_region_can_cover_is_gathered_and_sold_here() {
    // Two places left in us-east and two in ap-south, none here; an order for four.
    let mut c = with_left([0, 2, 2]);
    let r = c.call(0, buy(4));
    // This region's own order (not another region's answer), from the parts the others gave.
    assert_eq!(order_of(&r).quantity, 4);
    let g = c.cores[0].gather_stats();
    assert_eq!((g.started, g.complete, g.short), (1, 1, 0));
    assert_eq!((g.units_asked, g.units_received), (4, 4));
    assert!(c.cores[0].forward_stats().is_empty(), "nothing forwarded");
    c.settle(3);
    c.converged().unwrap();
    assert_eq!(sold_in_all(&c, 2), 30, "every place sold, none twice");
    for i in 0..3 {
        assert_eq!(c.cores[i].event("rock").unwrap().sellable(0), 0);
    }
    c.check().unwrap();
}

#[test]
fn quota_in_flight_is_asked_then_landing_then_spendable() {
    // What the dashboard's "in flight" shows: asked, then credited but not yet durable.
    let mut c = with_left([0, 2, 2]);
    let id = c.send(0, None, buy(4));
    c.persist(0);
    assert_eq!(c.calls.len(), 2, "an ask to each");
    let seen = |c: &LocalCluster| c.cores[0].in_flight("rock", 0).unwrap();
    assert_eq!(
        seen(&c),
        InFlight {
            landing: 0,
            asked: 4
        }
    );
    c.deliver_call(0);
    c.deliver_call(0);
    c.persist(1);
    c.persist(2);
    // The two grants' answers reach eu-west: their credits are applied, not yet durable.
    c.deliver_call(0);
    c.deliver_call(0);
    assert_eq!(
        seen(&c),
        InFlight {
            landing: 4,
            asked: 0
        }
    );
    c.persist(0);
    assert_eq!(seen(&c), InFlight::default());
    c.persist(0); // the sale the credits made possible
    assert_eq!(
        order_of(&c.take_reply(0, id).expect("answered")).quantity,
        4
    );
    assert_eq!(c.cores[0].in_flight("rock", 9), None, "no such pool");
    assert_eq!(c.cores[0].in_flight("jazz", 0), None, "no such event");
    c.check().unwrap();
}

#[test]
fn a_gather_that_falls_short_answers_from_what_is_then_known() {
    // Two places here and two in us-east; an order for four. us-east sells its two to its
    // own buyer while the ask is on its way: the order cannot be served anywhere now.
    let mut c = with_left([2, 2, 0]);
    let id = c.send(0, None, buy(4));
    c.persist(0);
    assert_eq!(c.calls.len(), 1, "one ask, to us-east, for the two it has");
    c.call(1, buy(2)).expect("us-east's own buyer");
    deliver_all(&mut c);
    let r = c.take_reply(0, id).expect("answered");
    assert!(matches!(r, Err(CoreError::SoldOut { .. })), "{r:?}");
    let g = c.cores[0].gather_stats();
    assert_eq!((g.started, g.complete, g.short), (1, 0, 1));
    assert_eq!(
        c.cores[0].event("rock").unwrap().sellable(0),
        2,
        "kept its own"
    );
    c.settle(3);
    c.converged().unwrap();
    assert_eq!(sold_in_all(&c, 0), 28);
    c.check().unwrap();
}

#[test]
fn a_keyed_retry_after_the_origin_crashed_mid_gather_sells_from_the_parts_once() {
    let mut c = with_left([0, 2, 2]);
    let first = c.send(0, key("k-9"), buy(4));
    c.persist(0);
    assert_eq!(c.calls.len(), 2, "an ask to each");
    // Both donors grant durably; their answers find a restarted region that forgot asking.
    c.deliver_call(0);
    c.deliver_call(0);
    c.persist(1);
    c.persist(2);
    c.crash(0);
    while !c.calls.is_empty() {
        c.deliver_call(0);
    }
    assert!(c.take_reply(0, first).is_none());
    c.settle(2); // gossip brings the grants' rows
    assert_eq!(c.cores[0].event("rock").unwrap().sellable(0), 4);
    let again = c.call_keyed(0, key("k-9"), buy(4));
    assert_eq!(order_of(&again).quantity, 4);
    let third = c.call_keyed(0, key("k-9"), buy(4));
    assert_eq!(third, again, "the same order for the key");
    c.settle(3);
    c.converged().unwrap();
    assert_eq!(sold_in_all(&c, 1), 30);
    c.check().unwrap();
}

#[test]
fn two_regions_gathering_from_each_other_do_not_swap_their_parts() {
    // Two places in eu-west, two in us-east, none in ap-south; a buyer in each of the first
    // two wants three. Each asks the other for one: eu-west, first in the cluster's order,
    // keeps its own and sells; us-east gives, and then cannot sell three anywhere.
    let mut c = with_left([2, 2, 0]);
    let west = c.send(0, None, buy(3));
    let east = c.send(1, None, buy(3));
    c.persist(0);
    c.persist(1);
    assert_eq!(c.calls.len(), 2, "each asks the other");
    deliver_all(&mut c);
    assert_eq!(order_of(&c.take_reply(0, west).unwrap()).quantity, 3);
    let r = c.take_reply(1, east).unwrap();
    assert!(matches!(r, Err(CoreError::SoldOut { .. })), "{r:?}");
    c.settle(3);
    c.converged().unwrap();
    assert_eq!(sold_in_all(&c, 2), 29, "one place left, in us-east");
    assert_eq!(c.cores[1].event("rock").unwrap().sellable(0), 1);
    c.check().unwrap();
}

#[test]
fn a_forward_refused_for_stock_that_moved_is_gathered_for_instead() {
    // eu-west last heard four places in us-east and two in ap-south; us-east has since sold
    // two. A buyer at eu-west wants four: us-east refuses the forward, and the order is then
    // gathered from both (two and two) and sold at eu-west.
    let mut c = with_left([0, 4, 2]);
    c.network.clear(); // us-east's next sale stays unheard
    c.call(1, buy(2)).expect("us-east's own buyer");
    c.network.clear();
    let r = c.call(0, buy(4));
    assert_eq!(order_of(&r).quantity, 4, "sold here");
    let f = c.cores[0].forward_stats()["us-east"];
    assert_eq!((f.sent, f.refused), (1, 1));
    let g = c.cores[0].gather_stats();
    assert_eq!((g.started, g.complete), (1, 1));
    c.settle(3);
    c.converged().unwrap();
    assert_eq!(sold_in_all(&c, 1), 30);
    c.check().unwrap();
}

/// The same with the buyer's key, whose record names the refusing target: the gathered
/// request is sold here (not sent back to that target), once; and a retry of the key after a
/// crash mid-gather sells here from the parts, once.
#[test]
fn a_keyed_forward_refused_then_gathered_for_sells_here_once() {
    for crash_mid_gather in [false, true] {
        let mut c = with_left([0, 4, 2]);
        c.network.clear();
        c.call(1, buy(2)).expect("us-east's own buyer");
        c.network.clear();
        let reply = if crash_mid_gather {
            let first = c.send(0, key("k-g"), buy(4));
            // The forward's record, the call, us-east's kept refusal, its answer.
            for _ in 0..4 {
                for i in 0..3 {
                    c.persist(i);
                }
                if !c.calls.is_empty() {
                    c.deliver_call(0);
                }
            }
            for i in 0..3 {
                c.persist(i);
            }
            // The gather asks are out, or answered; the origin dies before it sells.
            while !c.calls.is_empty() {
                c.deliver_call(0);
            }
            for i in 1..3 {
                c.persist(i);
            }
            assert!(c.take_reply(0, first).is_none(), "not answered yet");
            c.crash(0);
            c.calls.clear();
            c.settle(2); // the grants' rows arrive by gossip
            c.call_keyed(0, key("k-g"), buy(4))
        } else {
            c.call_keyed(0, key("k-g"), buy(4))
        };
        assert_eq!(
            order_of(&reply).quantity,
            4,
            "crash {crash_mid_gather}: sold here"
        );
        let again = c.call_keyed(0, key("k-g"), buy(4));
        assert_eq!(again, reply, "crash {crash_mid_gather}: the same order");
        c.settle(3);
        c.converged().unwrap();
        assert_eq!(
            sold_in_all(&c, 1),
            30,
            "crash {crash_mid_gather}: one order of 4"
        );
        c.check().unwrap();
    }
}

/// Region `i`'s sellable floor places as region `viewer` sees them.
fn seen_sellable(c: &LocalCluster, viewer: usize, i: u16) -> i64 {
    c.cores[viewer]
        .event("rock")
        .unwrap()
        .region_figures(0, i)
        .sellable
}

/// Delivers the queued gossip frames from `from` to `to`, and only those.
fn deliver_frames(c: &mut LocalCluster, from: usize, to: usize) {
    while let Some(k) = c.network.iter().position(|e| e.from == from && e.to == to) {
        c.deliver(k);
    }
}

/// `ga` places split evenly; eu-west sells all of its own, us-east's buyers 6 places and
/// ap-south's 1 within one demand window: us-east's demand is six times ap-south's.
fn busy_us_east_quiet_ap_south(ga: u64) -> LocalCluster {
    let mut c = cluster(ga, 0, |_| {});
    sell_out_locally(&mut c, 0);
    for _ in 0..6 {
        c.call(1, buy(1)).expect("local quota");
    }
    c.call(2, buy(1)).expect("local quota");
    c.advance(600);
    c.settle(2);
    c
}

#[test]
fn a_buyer_is_sent_where_the_stock_lasts_longest_not_to_the_nearest_region() {
    // us-east (80 ms away) has 4 places left, 0.4 s at its demand; ap-south (239 ms) has 9,
    // 5.4 s at its own. Sent to the nearest, eu-west's buyers would drain us-east, and
    // us-east's own buyers would then wait a round trip each.
    let mut c = busy_us_east_quiet_ap_south(30);
    let r = c.call(0, buy(2));
    assert_eq!(remote(&r).region, "ap-south");
    assert_eq!(sold_by(&c, 2, 2), 3);
    c.settle(2);
    c.check().unwrap();
    // With plenty everywhere (994 and 999 places: minutes at either's demand) the nearest
    // region sells.
    let mut c = busy_us_east_quiet_ap_south(3000);
    let r = c.call(0, buy(2));
    assert_eq!(remote(&r).region, "us-east");
    assert_eq!(sold_by(&c, 1, 1), 8);
    c.check().unwrap();
}

#[test]
fn units_forwarded_and_unanswered_count_against_their_target_when_choosing() {
    // eu-west is dry; us-east and ap-south have 8 places each at the same demand (2.4 s of
    // it): the nearer, us-east, gets the first buyer of 5. While that forward travels,
    // us-east's frame still says 8, but only 3 are not yet claimed: the next buyer of 5 goes
    // to ap-south, instead of a second claim on the same places from the same old frame that
    // us-east would refuse, a round trip lost.
    let mut c = cluster(30, 0, |_| {});
    sell_out_locally(&mut c, 0);
    for i in 1..3 {
        for _ in 0..2 {
            c.call(i, buy(1)).expect("local quota");
        }
    }
    c.advance(600);
    c.settle(2);
    c.calls.clear();
    let first = c.send(0, None, buy(5));
    c.persist(0);
    let targets = |c: &LocalCluster| c.calls.iter().map(|e| e.to).collect::<Vec<_>>();
    assert_eq!(targets(&c), [1], "the nearest of two equals");
    let second = c.send(0, None, buy(5));
    c.persist(0);
    assert_eq!(
        targets(&c),
        [1, 2],
        "us-east's unclaimed places do not cover 5"
    );
    while !c.calls.is_empty() || c.unpersisted.iter().any(|u| !u.is_empty()) {
        while !c.calls.is_empty() {
            c.deliver_call(0);
        }
        for r in 0..3 {
            c.persist(r);
        }
    }
    for (id, seller) in [(first, "us-east"), (second, "ap-south")] {
        let reply = c.take_reply(0, id).expect("answered");
        assert_eq!(remote(&reply).region, seller);
    }
    let refused: u64 = c.cores[0].forward_stats().values().map(|s| s.refused).sum();
    assert_eq!(refused, 0, "no forward was refused");
    c.settle(2);
    assert_eq!(sold_by(&c, 0, 1), 7);
    assert_eq!(sold_by(&c, 0, 2), 7);
    c.check().unwrap();
}

#[test]
fn a_sale_that_leaves_less_than_one_maximum_order_is_told_to_the_peers_at_once() {
    // 300 places, 100 a region; the largest order is 20 places.
    let mut c = cluster(300, 0, |_| {});
    c.network.clear();
    sell_down_to(&mut c, 0, 20);
    assert!(c.network.is_empty(), "plenty left: the next tick tells");
    c.call(0, buy(2)).expect("local quota");
    let told: Vec<usize> = c.network.iter().map(|e| e.to).collect();
    assert_eq!(told, [1, 2], "18 left: every peer hears it now");
    for to in 1..3 {
        deliver_frames(&mut c, 0, to);
        assert_eq!(seen_sellable(&c, to, 0), 18);
    }
    // Each further change under one maximum order is told too, and only a change.
    c.call(0, buy(1)).expect("local quota");
    assert_eq!(c.network.len(), 2);
    c.network.clear();
    c.persist(0);
    assert!(c.network.is_empty(), "durability alone changes no figure");
    c.check().unwrap();
}

#[test]
fn a_row_relayed_by_a_third_region_does_not_count_a_sale_twice() {
    let mut c = cluster(30, 0, |_| {});
    // us-east sells 3 of its 10 places; its frame goes out before the sale is durable, and
    // says so (3 spent that its published row does not show yet).
    c.call(1, buy(3)).expect("local quota");
    c.network.clear();
    c.tick(1);
    deliver_frames(&mut c, 1, 0);
    assert_eq!(seen_sellable(&c, 0, 1), 7);
    // Once durable, the sale's row reaches eu-west through ap-south before us-east's next
    // frame does: eu-west must not count the 3 places both in the row and as still pending.
    c.persist(1);
    c.network.clear();
    c.tick(1);
    deliver_frames(&mut c, 1, 2);
    c.network.clear();
    c.tick(2);
    deliver_frames(&mut c, 2, 0);
    assert_eq!(sold_by(&c, 0, 1), 3, "the row came through ap-south");
    assert_eq!(seen_sellable(&c, 0, 1), 7, "and the sale counts once");
    c.settle(2);
    assert_eq!(seen_sellable(&c, 0, 1), 7);
    c.check().unwrap();
}

#[test]
fn immediate_frames_are_bounded_between_ticks_however_a_low_pool_churns() {
    // 10 places a region: always under one maximum order (20), so every change is low.
    let mut c = cluster(30, 0, |_| {});
    c.network.clear();
    // A buyer holds and releases again and again: each change is told at once, up to the
    // budget, then nothing more until the tick.
    for _ in 0..30 {
        let id = hold_id(&c.call(0, hold_qty("c-1", "floor", 1)), "eu-west");
        c.call(0, Command::Release { hold: id }).expect("release");
    }
    let told = c.network.iter().filter(|e| e.from == 0).count();
    assert_eq!(
        told,
        2 * 20,
        "20 frames per peer between two ticks, not one per change"
    );
    c.network.clear();
    c.tick(0);
    assert_eq!(c.network.len(), 2, "the tick tells the rest");
    c.network.clear();
    c.call(0, buy(1)).expect("local quota");
    assert_eq!(c.network.len(), 2, "and the budget starts again");
    c.check().unwrap();
}
