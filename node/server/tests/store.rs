//! The RocksDB store: live state only on restart, orders and keys read on demand, keys
//! expiring after the configured TTL (in lookups at once, on disk when compaction runs).

use allot::driver::wall_ms;
use allot::store::{Store, StoreOptions};
use allot_crdt::{Allotments, PoolKind};
use allot_node::*;

fn spec() -> EventSpec {
    EventSpec {
        id: "arena".into(),
        name: "Arena".into(),
        description: String::new(),
        venue: "Arena".into(),
        lat: 0.0,
        lon: 0.0,
        starts_at: "2027-06-01T19:00:00Z".into(),
        currency: "EUR".into(),
        hold_ttl_s: 600,
        rebalance: true,
        pools: vec![
            PoolInput {
                id: "floor".into(),
                kind: PoolKind::General { capacity: 10_000 },
                price_cents: 5000,
            },
            PoolInput {
                id: "stalls".into(),
                kind: PoolKind::Assigned {
                    seats: (1..=50).map(|i| format!("A-{i}")).collect(),
                },
                price_cents: 9000,
            },
        ],
        allotments: Allotments::Even,
    }
}

/// A one-region core over a real store: every record is written (synced) before the core
/// hears it is durable, and reads are answered from the store, as the node's drivers do.
struct Node {
    core: Core,
    store: Store,
    replies: Vec<(RequestId, Reply)>,
    next: u64,
}

impl Node {
    fn feed(&mut self, now: Millis, input: Input) {
        self.core.handle(now, input);
        loop {
            let ready = self.core.ready();
            self.replies.extend(ready.replies);
            if let Some(last) = ready.records.last().map(|r| r.index) {
                let mut batch = rocksdb::WriteBatch::default();
                self.store.batch(&mut batch, &ready.records);
                self.store.write(batch).expect("synced write");
                self.core.handle(now, Input::Persisted(last));
                continue;
            }
            if ready.reads.is_empty() {
                break;
            }
            for (id, lookup) in ready.reads {
                let found = self.store.lookup(&lookup, now).map_err(|e| e.to_string());
                self.core.handle(now, Input::Read { id, found });
            }
        }
    }

    fn call(&mut self, now: Millis, key: Option<&str>, command: Command) -> Reply {
        self.next += 1;
        let id = RequestId(self.next);
        let key = key.map(|k| IdempotencyKey {
            key: k.into(),
            body_hash: [1; 32],
        });
        self.feed(now, Input::Request { id, key, command });
        let at = self
            .replies
            .iter()
            .position(|(r, _)| *r == id)
            .expect("answered");
        self.replies.remove(at).1
    }
}

fn open(dir: &std::path::Path, ttl_ms: Millis) -> Store {
    Store::open(
        dir,
        StoreOptions {
            key_ttl_ms: ttl_ms,
            ..StoreOptions::default()
        },
    )
    .expect("open")
}

fn start(store: Store, ttl_ms: Millis) -> Node {
    let regions = vec!["eu-west".to_owned()];
    let mut cfg = Config::new("eu-west", &regions);
    cfg.idempotency_ttl_ms = ttl_ms;
    let loaded = store.load(1).expect("load");
    let core = Core::recover(cfg, loaded.records).expect("recover");
    core.check_invariants().unwrap();
    Node {
        core,
        store,
        replies: Vec::new(),
        next: 0,
    }
}

fn purchase(seats: Option<&str>) -> Command {
    Command::Purchase {
        event: "arena".into(),
        want: match seats {
            Some(s) => Want::Seats {
                pool: None,
                seats: vec![s.into()],
            },
            None => Want::Quantity {
                pool: "floor".into(),
                quantity: 2,
            },
        },
        customer: "c-1".into(),
        payment_ref: "pay".into(),
    }
}

/// A hold of three general-admission places.
fn hold() -> Command {
    Command::Hold {
        event: "arena".into(),
        want: Want::Quantity {
            pool: "floor".into(),
            quantity: 3,
        },
        customer: "c-2".into(),
    }
}

fn refund(node: &Node, n: OrderNo) -> Command {
    Command::Refund {
        order: node.core.id_of(IdKind::Order, n),
    }
}

fn order(r: &Reply) -> &Order {
    match r {
        Ok(Outcome::Order(o)) => o,
        other => panic!("expected an order, got {other:?}"),
    }
}

#[test]
fn a_restart_loads_live_state_only_and_reads_orders_and_keys_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = 24 * 3600 * 1000;
    let now = wall_ms();
    let mut node = start(open(dir.path(), ttl), ttl);
    node.call(now, None, Command::CreateEvent(spec())).unwrap();
    let mut firsts = Vec::new();
    for i in 0..2000 {
        let r = node.call(now, Some(&format!("k-{i}")), purchase(None));
        firsts.push(order(&r).clone());
    }
    let seat = node.call(now, Some("seat"), purchase(Some("A-7")));
    let seat_order = order(&seat).clone();
    let refunded = node.call(now, None, refund(&node, firsts[0].n));
    assert_eq!(order(&refunded).status, OrderStatus::Refunded);
    // Answers that are not orders, and an order's answer given after it changed.
    let held = node.call(now, Some("hold"), hold());
    assert!(matches!(held, Ok(Outcome::Held(_))), "{held:?}");
    let keyed_refund = node.call(now, Some("refund"), refund(&node, firsts[1].n));
    assert_eq!(order(&keyed_refund).status, OrderStatus::Refunded);
    let last_index = node.core.last_index();
    let snapshot = node.core.snapshot();
    drop(node);

    let store = open(dir.path(), ttl);
    let loaded = store.load(2).unwrap();
    assert!(
        loaded.records.len() < 10,
        "2,001 orders and keys on disk, yet {} records restored",
        loaded.records.len()
    );
    assert!(
        loaded.records[0].index > last_index,
        "record indices go on across restarts"
    );
    let mut node = start(store, ttl);
    assert_eq!(node.core.snapshot(), snapshot, "the same live state");
    assert_eq!(node.core.footprint().cached_keys, 0);
    // Keys answered before the restart get their first answer, from disk, whole: orders 0
    // and 1 were refunded since, yet their purchases' keys still answer what the buyer heard.
    for i in [0, 1, 1999] {
        let again = node.call(now, Some(&format!("k-{i}")), purchase(None));
        assert_eq!(order(&again), &firsts[i], "key k-{i}");
        assert_eq!(order(&again).status, OrderStatus::Confirmed);
    }
    let refund_again = node.call(now, Some("refund"), refund(&node, firsts[1].n));
    assert_eq!(
        refund_again, keyed_refund,
        "a refund's key answers the refund"
    );
    let hold_again = node.call(now, Some("hold"), hold());
    assert_eq!(hold_again, held, "a hold's key answers the hold");
    // Each of the five replays was a key found on disk (a refund run again would answer the
    // same, but would not cache the key).
    assert_eq!(node.core.footprint().cached_keys, 5);
    // Orders are read from disk: a second refund returns nothing more, a seat stays sold.
    let e = node.core.event("arena").unwrap();
    let (consumed, returned) = (e.ledger.consumed(0, e.me), e.ledger.returned(0, e.me));
    let again = node.call(now, None, refund(&node, firsts[0].n));
    assert_eq!(order(&again).status, OrderStatus::Refunded);
    let e = node.core.event("arena").unwrap();
    assert_eq!(
        (e.ledger.consumed(0, e.me), e.ledger.returned(0, e.me)),
        (consumed, returned)
    );
    assert!(matches!(
        node.call(now, None, purchase(Some("A-7"))),
        Err(CoreError::SeatTaken(_))
    ));
    let read = node.call(
        now,
        None,
        Command::ReadOrder {
            order: node.core.id_of(IdKind::Order, seat_order.n),
        },
    );
    assert_eq!(order(&read), &seat_order);
    // The operator's list pages through the store.
    let page = node.store.orders_after(Some("arena"), 1990, 100).unwrap();
    assert_eq!(
        page.iter().map(|o| o.order.n.0).collect::<Vec<_>>(),
        (1991..=2001).collect::<Vec<_>>()
    );
    assert_eq!(node.store.orders_after(None, 0, 5).unwrap().len(), 5);
    node.core.check_invariants().unwrap();
}

#[test]
fn idempotency_keys_expire_after_the_configured_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = 1_000;
    let mut node = start(open(dir.path(), ttl), ttl);
    let t0 = wall_ms() - 5_000;
    node.call(t0, None, Command::CreateEvent(spec())).unwrap();
    let old = node.call(t0, Some("old"), purchase(None));
    let now = wall_ms();
    let live = node.call(now, Some("live"), purchase(None));
    // Within the TTL the first answer comes back; past it the request runs again.
    assert_eq!(
        order(&node.call(now, Some("live"), purchase(None))).n,
        order(&live).n
    );
    let rerun = node.call(now, Some("old"), purchase(None));
    assert_ne!(order(&rerun).n, order(&old).n, "an expired key runs again");
    // After a restart too: lookups judge the age, not only memory.
    drop(node);
    let store = open(dir.path(), ttl);
    assert!(store.holds_key("live").unwrap());
    let mut node = start(store, ttl);
    let rerun_again = node.call(now, Some("old"), purchase(None));
    assert_eq!(
        order(&rerun_again).n,
        order(&rerun).n,
        "the rerun's answer is the key's now"
    );
    // On disk, compaction drops what is past the TTL.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    node.store.compact_keys();
    assert!(
        !node.store.holds_key("live").unwrap(),
        "compaction dropped the expired key"
    );
}

/// Flushes and compactions write their tables around the page cache where the file system
/// takes direct writes, and through it where it does not or the operator said so: tables
/// written either way read back either way. The default temp dir and, where there is one, a
/// tmpfs (which takes direct writes only since Linux 6.6).
#[test]
fn tables_written_directly_or_through_the_page_cache_read_back() {
    let mut dirs = vec![tempfile::tempdir().unwrap()];
    if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
        dirs.push(shm);
    }
    let ttl = 24 * 3600 * 1000;
    let open_with = |dir: &std::path::Path, direct_writes: bool| {
        Store::open(
            dir,
            StoreOptions {
                key_ttl_ms: ttl,
                direct_writes,
                ..StoreOptions::default()
            },
        )
        .expect("open")
    };
    for dir in dirs {
        let now = wall_ms();
        let mut node = start(open_with(dir.path(), true), ttl);
        eprintln!(
            "{}: direct writes {}",
            dir.path().display(),
            node.store.direct_writes()
        );
        node.call(now, None, Command::CreateEvent(spec())).unwrap();
        let mut firsts: Vec<Order> = Vec::new();
        // Each pass writes 300 keys and flushes them into a table (compacted with the
        // tables before it), then reopens the store the other way.
        for (pass, direct_writes) in [false, true, false].into_iter().enumerate() {
            for i in 0..300 {
                let key = format!("k-{pass}-{i}");
                firsts.push(order(&node.call(now, Some(&key), purchase(None))).clone());
            }
            node.store.compact_keys();
            drop(node);
            node = start(open_with(dir.path(), direct_writes), ttl);
            if !direct_writes {
                assert!(!node.store.direct_writes(), "the operator turned them off");
            }
            assert!(
                !dir.path().join("DIRECT-WRITE-PROBE").exists(),
                "the probe leaves no file behind"
            );
        }
        for pass in 0..3 {
            for i in [0, 150, 299] {
                let again = node.call(now, Some(&format!("k-{pass}-{i}")), purchase(None));
                assert_eq!(
                    order(&again).n,
                    firsts[pass * 300 + i].n,
                    "key k-{pass}-{i} in {}",
                    dir.path().display()
                );
            }
        }
        node.core.check_invariants().unwrap();
    }
}

/// A key read taken before an answer was recorded must not be used once that answer has left
/// the core's memory (the store has it, the read does not); one taken after may be.
#[test]
fn a_key_read_from_before_an_answer_that_left_memory_does_not_stand() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = 24 * 3600 * 1000;
    let now = wall_ms();
    let mut node = start(open(dir.path(), ttl), ttl);
    node.call(now, None, Command::CreateEvent(spec())).unwrap();
    let before = RecordIndex(node.core.persisted_index());
    assert!(node.core.key_read_stands(before));
    node.call(now, Some("first"), purchase(None)).unwrap();
    assert!(
        node.core.key_read_stands(before),
        "its answer is still in memory"
    );
    for i in 0..4_200 {
        node.call(now, Some(&format!("k-{i}")), purchase(None))
            .unwrap();
    }
    assert!(
        !node.core.key_read_stands(before),
        "\"first\" left memory after a read that missed it"
    );
    assert!(node
        .core
        .key_read_stands(RecordIndex(node.core.persisted_index())));
}
