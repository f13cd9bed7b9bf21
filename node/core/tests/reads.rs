//! Requests that need the store: past orders and older idempotency answers are read on demand,
//! and whatever races a read, one request wins and nothing is returned twice.

mod common;

use allot_node::cluster::LocalCluster;
use allot_node::*;
use common::*;

/// A cluster whose region 0 sold one order of `quantity` (durable), with reads deferred from
/// now on so tests can race requests against them.
fn sold(quantity: u64) -> (LocalCluster, Order, String) {
    let mut c = cluster_with(&REGIONS, 30, 0);
    let r = c.call(0, buy(quantity));
    let order = order_of(&r).clone();
    let id = c.cores[0].id_of(IdKind::Order, order.n);
    c.settle(2);
    c.defer_reads = true;
    (c, order, id)
}

fn returned(c: &LocalCluster) -> u64 {
    let e = c.cores[0].event("rock").unwrap();
    e.ledger.returned(0, e.me)
}

fn refund(order: &str) -> Command {
    Command::Refund {
        order: order.to_owned(),
    }
}

fn key(k: &str, body: u8) -> Option<IdempotencyKey> {
    Some(IdempotencyKey {
        key: k.into(),
        body_hash: [body; 32],
    })
}

/// Answers every deferred read of region 0, newest first, until none is left; persisting
/// between answers or not (then every answer after the first is read from a store that lacks
/// what the first one's request wrote).
fn answer_all_newest_first(c: &mut LocalCluster, persist_between: bool) {
    while let Some(k) = c.reads[0].len().checked_sub(1) {
        c.answer_read(0, k);
        if persist_between {
            c.persist(0);
        }
    }
    c.persist(0);
}

fn answer_all(c: &mut LocalCluster) {
    answer_all_newest_first(c, true)
}

#[test]
fn two_concurrent_refunds_of_one_order_return_it_once() {
    let (mut c, order, oid) = sold(3);
    let a = c.send(0, None, refund(&oid));
    let b = c.send(0, None, refund(&oid));
    assert_eq!(
        c.reads[0].len(),
        2,
        "each refund reads the order from the store"
    );
    assert_eq!(returned(&c), 0);
    answer_all_newest_first(&mut c, false);
    let (a, b) = (c.take_reply(0, a).unwrap(), c.take_reply(0, b).unwrap());
    assert_eq!(order_of(&a).status, OrderStatus::Refunded);
    assert_eq!(a, b, "both hear the one refund");
    assert_eq!(returned(&c), order.quantity, "returned once");
    c.check().unwrap();
    // And a third, long after, reads the refunded order and changes nothing.
    let again = c.send(0, None, refund(&oid));
    answer_all(&mut c);
    assert_eq!(c.take_reply(0, again).unwrap(), a);
    assert_eq!(returned(&c), order.quantity);
    c.check().unwrap();
}

#[test]
fn a_refund_racing_a_repeated_confirm_returns_once_and_the_confirm_sees_it() {
    for (refund_first, persist_between) in
        [(true, true), (true, false), (false, true), (false, false)]
    {
        let mut c = cluster_with(&REGIONS, 30, 0);
        let h = hold_id(&c.call(0, hold_qty("c-1", "floor", 2)), "eu-west");
        let confirm = || Command::Confirm {
            hold: h.clone(),
            payment_ref: "p".into(),
        };
        let order = order_of(&c.call(0, confirm())).clone();
        let oid = c.cores[0].id_of(IdKind::Order, order.n);
        c.defer_reads = true;
        let (first, second) = if refund_first {
            (c.send(0, None, refund(&oid)), c.send(0, None, confirm()))
        } else {
            (c.send(0, None, confirm()), c.send(0, None, refund(&oid)))
        };
        answer_all_newest_first(&mut c, persist_between);
        let (first, second) = (
            c.take_reply(0, first).unwrap(),
            c.take_reply(0, second).unwrap(),
        );
        let (refunded, confirmed) = if refund_first {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(order_of(&refunded).status, OrderStatus::Refunded);
        assert_eq!(
            order_of(&confirmed).n,
            order.n,
            "a repeated confirm names the same order"
        );
        assert_eq!(
            returned(&c),
            2,
            "returned once (refund first: {refund_first})"
        );
        c.check().unwrap();
    }
}

#[test]
fn a_stale_read_is_never_acted_on() {
    let (mut c, order, oid) = sold(2);
    // Two refunds ask for the order; the first is answered and refunds it (durably).
    c.send(0, None, refund(&oid));
    let late = c.send(0, None, refund(&oid));
    let (stale_id, _) = c.reads[0][1].clone();
    let stale = c.stores[0].lookup(&Lookup::Order(order.n), c.now);
    c.answer_read(0, 0);
    c.persist(0);
    assert_eq!(returned(&c), 2);
    // The second gets an answer read before the refund landed: the core still holds the
    // newer version and refunds nothing more.
    c.reads[0].clear();
    c.step(
        0,
        Input::Read {
            id: stale_id,
            found: Ok(stale),
        },
    );
    c.persist(0);
    assert_eq!(
        order_of(&c.take_reply(0, late).unwrap()).status,
        OrderStatus::Refunded
    );
    assert_eq!(returned(&c), 2);
    c.check().unwrap();
}

#[test]
fn concurrent_duplicates_of_a_key_wait_for_the_first_and_get_its_answer() {
    let mut c = cluster_with(&REGIONS, 30, 0);
    c.defer_reads = true;
    let ids: Vec<_> = (0..3).map(|_| c.send(0, key("k-1", 1), buy(2))).collect();
    let other_body = c.send(0, key("k-1", 2), buy(2));
    assert_eq!(
        c.reads[0].len(),
        1,
        "one store read for the key, the rest wait on it"
    );
    answer_all(&mut c);
    let answers: Vec<_> = ids.iter().map(|&id| c.take_reply(0, id).unwrap()).collect();
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(
        c.take_reply(0, other_body).unwrap(),
        Err(CoreError::IdempotencyMismatch)
    );
    assert_eq!(c.stores[0].order_count(), 1, "one order for one key");
    c.check().unwrap();
}

#[test]
fn a_keyed_refund_and_its_duplicate_refund_once() {
    let (mut c, order, oid) = sold(4);
    let a = c.send(0, key("r-1", 1), refund(&oid));
    // The key read is answered (the key is new); the refund then reads the order, and a
    // duplicate arrives meanwhile: it waits behind the first.
    c.answer_read(0, 0);
    let b = c.send(0, key("r-1", 1), refund(&oid));
    assert_eq!(c.reads[0].len(), 1, "only the first request's order read");
    answer_all(&mut c);
    let (a, b) = (c.take_reply(0, a).unwrap(), c.take_reply(0, b).unwrap());
    assert_eq!(a, b);
    assert_eq!(returned(&c), order.quantity);
    c.check().unwrap();
}

#[test]
fn a_failed_read_answers_unavailable_and_changes_nothing() {
    let (mut c, _, oid) = sold(1);
    let before = c.cores[0].snapshot();
    let r = c.send(0, key("f-1", 1), refund(&oid));
    let (id, _) = c.reads[0].remove(0);
    c.step(
        0,
        Input::Read {
            id,
            found: Err("disk on fire".into()),
        },
    );
    assert!(matches!(
        c.take_reply(0, r).unwrap(),
        Err(CoreError::Storage(_))
    ));
    assert_eq!(c.cores[0].snapshot(), before);
    assert!(c.unpersisted[0].is_empty());
    // The key was never answered: a retry runs.
    c.defer_reads = false;
    assert!(c.call_keyed(0, key("f-1", 1), refund(&oid)).is_ok());
    c.check().unwrap();
}

#[test]
fn a_restart_holds_live_state_only_and_reads_the_rest() {
    let mut c = cluster_with(&REGIONS, 3000, 0);
    for i in 0..1000 {
        c.call_keyed(0, key(&format!("k-{i}"), 1), buy(1)).unwrap();
    }
    c.settle(1);
    let held = c.cores[0].footprint();
    assert!(
        held.cached_keys <= 4096 && held.recent_orders == 0,
        "{held:?}"
    );
    c.crash(0);
    let after = c.cores[0].footprint();
    assert_eq!(
        (after.cached_keys, after.recent_orders),
        (0, 0),
        "a restart loads no orders and no keys"
    );
    // Every key answered before is answered the same from the store.
    let first = c.call_keyed(0, key("k-0", 1), buy(1)).unwrap();
    assert_eq!(order_of(&Ok(first)).n, OrderNo(1));
    assert_eq!(c.stores[0].order_count(), 1000);
    c.check().unwrap();
}

#[test]
fn a_key_in_flight_outlives_its_ttl_until_durable() {
    let mut c = LocalCluster::new(&["eu-west"]);
    let mut cfg = Config::new("eu-west", &["eu-west".to_string()]);
    cfg.idempotency_ttl_ms = 10;
    c.cores[0] = Core::new(cfg);
    c.call(0, Command::CreateEvent(spec("rock", 30, 0)))
        .unwrap();
    // The first purchase's record is not durable (a slow sync) when its TTL passes.
    let first = c.send(0, key("slow", 1), buy(1));
    c.advance(1_000);
    c.tick(0);
    let retry = c.send(0, key("slow", 1), buy(1));
    c.persist(0);
    let (first, retry) = (
        c.take_reply(0, first).unwrap(),
        c.take_reply(0, retry).unwrap(),
    );
    assert_eq!(first, retry, "the retry waited for the first answer");
    assert_eq!(c.stores[0].order_count(), 1, "one order for one key");
    c.check().unwrap();
}

#[test]
fn keys_in_calls_from_other_regions_are_scoped_by_the_caller() {
    let mut c = cluster_with(&REGIONS, 30, 0);
    let h = hold_id(&c.call(0, hold_qty("c-1", "floor", 1)), "eu-west");
    let confirm = |hold: &str| Command::Confirm {
        hold: hold.to_owned(),
        payment_ref: "p".into(),
    };
    // A buyer at eu-west uses key "same" for a local purchase; one at us-east uses the same
    // key to confirm an eu-west hold, through a call to eu-west: each gets its own answer.
    let local = c.call_keyed(0, key("same", 1), buy(1));
    let remote = c.call_keyed(1, key("same", 2), confirm(&h));
    assert!(local.is_ok());
    match remote {
        Ok(Outcome::Remote(r)) => assert!(matches!(r.outcome, Answered::Order(_))),
        other => panic!("expected eu-west's order, got {other:?}"),
    }
    // And each key still dedupes within its own scope.
    assert_eq!(c.call_keyed(0, key("same", 1), buy(1)), local);
    assert_eq!(c.stores[0].order_count(), 2);
    c.check().unwrap();
}
