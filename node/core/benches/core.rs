//! Benchmarks of the region core alone: no encoding, no disk, invariant assertions on.
//!
//! `cargo bench -p allot-node --bench core` prints throughput and latency percentiles, each as a
//! ratio against a baseline measured in the same run (the machine is shared and noisy).

use std::hint::black_box;
use std::time::Instant;

use allot_crdt::{Allotments, Change, Ledger, PoolKind};
use allot_node::*;
use hdrhistogram::Histogram;

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

fn core_with_event() -> Core {
    let names: Vec<String> = REGIONS.map(String::from).to_vec();
    let mut core = Core::new(Config::new("eu-west", &names));
    let spec = EventSpec {
        id: "rock".into(),
        name: "Rock".into(),
        description: String::new(),
        venue: "Arena".into(),
        lat: 0.0,
        lon: 0.0,
        starts_at: "2027-06-01T19:00:00Z".into(),
        currency: "EUR".into(),
        hold_ttl_s: 600,
        pools: vec![PoolInput { id: "floor".into(), kind: PoolKind::General { capacity: 1 << 39 }, price_cents: 8900 }],
        allotments: Allotments::Even,
    };
    core.handle(1, Input::Request { id: RequestId(0), key: None, command: Command::CreateEvent(spec) });
    let last = core.last_index();
    core.handle(1, Input::Persisted(last));
    core.ready();
    core
}

fn purchase(i: u64) -> Input {
    Input::Request {
        id: RequestId(i),
        key: None,
        command: Command::Purchase {
            event: "rock".into(),
            want: Want::Quantity { pool: "floor".into(), quantity: 1 },
            customer: "c-1".into(),
            payment_ref: "pay".into(),
        },
    }
}

/// One purchase through the core: request, records out, "persisted", reply out.
fn one_purchase(core: &mut Core, ready: &mut Ready, i: u64) {
    core.handle(i, purchase(i));
    let last = core.last_index();
    core.handle(i, Input::Persisted(last));
    core.ready_into(ready);
    assert!(matches!(ready.replies.last(), Some((_, Ok(_)))));
    ready.records.clear();
    ready.replies.clear();
}

fn hold_confirm(core: &mut Core, ready: &mut Ready, i: u64) {
    let hold = Command::Hold { event: "rock".into(), want: Want::Quantity { pool: "floor".into(), quantity: 1 }, customer: "c-1".into() };
    core.handle(i, Input::Request { id: RequestId(i), key: None, command: hold });
    let last = core.last_index();
    core.handle(i, Input::Persisted(last));
    core.ready_into(ready);
    let Some((_, Ok(Outcome::Held(h)))) = ready.replies.pop() else { panic!("hold failed") };
    let confirm = Command::Confirm { hold: format_id(IdKind::Hold, "eu-west", h.n), payment_ref: "pay".into() };
    core.handle(i, Input::Request { id: RequestId(i), key: None, command: confirm });
    let last = core.last_index();
    core.handle(i, Input::Persisted(last));
    core.ready_into(ready);
    assert!(matches!(ready.replies.last(), Some((_, Ok(Outcome::Order(_))))));
    ready.records.clear();
    ready.replies.clear();
}

/// The baseline: what the least a non-replicated in-memory seller does per sale — check and
/// decrement a counter, record an order in a map, allocate the same input strings.
fn baseline(n: u64) -> f64 {
    let mut remaining: u64 = u64::MAX;
    let mut orders = std::collections::BTreeMap::new();
    let t = Instant::now();
    for i in 0..n {
        let (customer, payment_ref): (String, String) = (black_box("c-1").into(), black_box("pay").into());
        assert!(remaining >= 1);
        remaining -= 1;
        orders.insert(i, (customer, payment_ref, remaining));
    }
    black_box(&orders);
    n as f64 / t.elapsed().as_secs_f64()
}

fn throughput(n: u64, op: fn(&mut Core, &mut Ready, u64)) -> (f64, Histogram<u64>) {
    let mut core = core_with_event();
    let mut ready = Ready::default();
    let t = Instant::now();
    for i in 0..n {
        op(&mut core, &mut ready, i + 2);
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    // Percentiles from a second pass timing each operation.
    let mut h = Histogram::<u64>::new(3).unwrap();
    for i in 0..n / 4 {
        let t = Instant::now();
        op(&mut core, &mut ready, n + i + 2);
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    core.check_invariants().expect("invariants after the run");
    (rate, h)
}

fn ledger_after(sales: u64) -> Ledger {
    let core = core_with_event();
    let mut l = core.event("rock").unwrap().ledger.clone();
    for _ in 0..sales {
        let d = l.write(0, &[Change::Consume { pool: 0, n: 1 }]).unwrap();
        l.apply(&d).unwrap();
    }
    l
}

/// Nanoseconds to record one sale, and to produce, encode, decode and apply the delta that
/// brings a peer 10 sales behind up to date, after `history` sales.
fn row_costs(history: u64) -> (f64, f64, usize) {
    let mut l = ledger_after(history);
    let reps = 200_000;
    let t = Instant::now();
    for _ in 0..reps {
        let d = l.write(0, &[Change::Consume { pool: 0, n: 1 }]).unwrap();
        l.apply(&d).unwrap();
    }
    let sale = t.elapsed().as_nanos() as f64 / reps as f64;
    let peer_at = l.row(0).seq - 10;
    let mut peer = ledger_after(0);
    peer.apply(&l.delta_since(0, 0).unwrap()).unwrap();
    let mut peer_behind = ledger_after(0);
    peer_behind.apply(&ledger_for_seq(&l, peer_at)).unwrap();
    let mut bytes = 0;
    let reps = 100_000;
    let t = Instant::now();
    for _ in 0..reps {
        let d = l.delta_since(0, peer_at).unwrap();
        let wire = postcard::to_stdvec(&d).unwrap();
        bytes = wire.len();
        let back: allot_crdt::RowDelta = postcard::from_bytes(&wire).unwrap();
        let mut p = peer_behind.clone();
        black_box(p.apply(&back).unwrap());
    }
    let sync = t.elapsed().as_nanos() as f64 / reps as f64;
    (sale, sync, bytes)
}

/// A delta from 0 to `seq` of row 0, rebuilt by replaying (test helper for a peer behind).
fn ledger_for_seq(l: &Ledger, seq: u64) -> allot_crdt::RowDelta {
    let mut d = l.delta_since(0, 0).unwrap();
    d.seq = seq;
    for (s, e) in d.entries.iter_mut() {
        if let allot_crdt::Entry::Consumed { value, .. } = e {
            *value = seq;
            *s = seq;
        }
    }
    d
}

fn pct(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

fn main() {
    let n: u64 = std::env::var("ALLOT_BENCH_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    println!("allot-node core benchmark, {n} operations per measurement, one core\n");
    let base = baseline(n);
    let (buy, hb) = throughput(n, one_purchase);
    let (hc, hh) = throughput(n / 2, hold_confirm);
    println!("| operation | ops/s | p50 ns | p99 ns | p99.9 ns | vs baseline | vs 2,000,000/s target |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!("| baseline (counter + order map) | {base:.0} | | | | 1.00 | {:.2} |", base / 2e6);
    for (name, rate, h) in [("purchase", buy, &hb), ("hold + confirm", hc, &hh)] {
        println!(
            "| {name} | {rate:.0} | {} | {} | {} | {:.2} | {:.2} |",
            pct(h, 0.5),
            pct(h, 0.99),
            pct(h, 0.999),
            rate / base,
            rate / 2e6
        );
    }
    println!();
    let (s1, y1, b1) = row_costs(1_000);
    let (s2, y2, b2) = row_costs(100_000);
    println!("| history | record a sale (ns) | sync a peer 10 sales behind (ns) | delta bytes |");
    println!("|---:|---:|---:|---:|");
    println!("| 1,000 sales | {s1:.0} | {y1:.0} | {b1} |");
    println!("| 100,000 sales | {s2:.0} | {y2:.0} | {b2} |");
    println!("| ratio 100k / 1k | {:.2} | {:.2} | {:.2} |", s2 / s1, y2 / y1, b2 as f64 / b1 as f64);
}
