//! Benchmarks of the region core alone: no encoding, no disk, invariant assertions on.
//!
//! `cargo bench -p allot-node --bench core` prints throughput and latency percentiles, each as a
//! ratio against a baseline measured in the same run (the machine is shared and noisy).

use std::hint::black_box;
use std::time::Instant;

use allot_crdt::{Allotments, Change, Ledger, PoolKind};
use allot_node::*;
use hdrhistogram::Histogram;

/// The allocator the `allot` binary uses, so the core is measured as it runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// The benchmarks' event: one general-admission pool far larger than any run sells.
fn bench_event() -> EventSpec {
    EventSpec {
        id: "rock".into(),
        name: "Rock".into(),
        description: String::new(),
        venue: "Arena".into(),
        lat: 0.0,
        lon: 0.0,
        starts_at: "2027-06-01T19:00:00Z".into(),
        currency: "EUR".into(),
        hold_ttl_s: 600,
        rebalance: true,
        pools: vec![PoolInput {
            id: "floor".into(),
            kind: PoolKind::General { capacity: 1 << 39 },
            price_cents: 8900,
        }],
        allotments: Allotments::Even,
    }
}

fn core_with_event() -> Core {
    let names: Vec<String> = REGIONS.map(String::from).to_vec();
    let mut core = Core::new(Config::new("eu-west", &names));
    let spec = bench_event();
    core.handle(
        1,
        Input::Request {
            id: RequestId(0),
            key: None,
            command: Command::CreateEvent(spec),
        },
    );
    let last = core.last_index();
    core.handle(1, Input::Persisted(last));
    core.ready();
    core
}

fn purchase(i: u64) -> Vec<Input> {
    vec![Input::Request {
        id: RequestId(i),
        key: None,
        command: Command::Purchase {
            event: "rock".into(),
            want: Want::Quantity {
                pool: "floor".into(),
                quantity: 1,
            },
            customer: "c-1".into(),
            payment_ref: "pay".into(),
        },
    }]
}

/// A purchase with its own `Idempotency-Key`: the core looks the key up in memory, asks the
/// store (answered "absent" in [`run_op`], as a new key's bloom filters answer), and remembers
/// the answer until its record is durable and then among its recent keys.
fn keyed_purchase(i: u64) -> Vec<Input> {
    let mut op = purchase(i);
    if let Some(Input::Request { key, .. }) = op.first_mut() {
        *key = Some(IdempotencyKey {
            key: format!(
                "{i:016x}-5f0c-4b7e-9d1a-{:012x}",
                i.wrapping_mul(0x9e37_79b9)
            ),
            body_hash: [7; 32],
        });
    }
    op
}

/// Hold number `i` (holds are numbered from 1 in a fresh core), then its confirmation.
fn hold_confirm(i: u64) -> Vec<Input> {
    let hold = Command::Hold {
        event: "rock".into(),
        want: Want::Quantity {
            pool: "floor".into(),
            quantity: 1,
        },
        customer: "c-1".into(),
    };
    let confirm = Command::Confirm {
        hold: IdKey::insecure_for_tests("eu-west").format(IdKind::Hold, "eu-west", i),
        payment_ref: "pay".into(),
    };
    vec![
        Input::Request {
            id: RequestId(2 * i),
            key: None,
            command: hold,
        },
        Input::Request {
            id: RequestId(2 * i + 1),
            key: None,
            command: confirm,
        },
    ]
}

/// One operation through the core: each request, its records out, "persisted", its reply out.
/// The inputs are built beforehand: making them is the decoder's work, not the core's.
fn run_op(core: &mut Core, ready: &mut Ready, inputs: Vec<Input>, now: u64) {
    for input in inputs {
        let keyed = matches!(input, Input::Request { key: Some(_), .. });
        core.handle(now, input);
        if keyed {
            // A key memory lacks is asked of the store: a new one, so absent.
            core.ready_into(ready);
            for (id, _) in std::mem::take(&mut ready.reads) {
                core.handle(
                    now,
                    Input::Read {
                        id,
                        found: Ok(Found::Key(None)),
                    },
                );
            }
        }
        let last = core.last_index();
        core.handle(now, Input::Persisted(last));
        core.ready_into(ready);
        assert!(
            matches!(ready.replies.last(), Some((_, Ok(_)))),
            "operation refused: {:?}",
            ready.replies.last()
        );
        ready.records.clear();
        ready.replies.clear();
    }
}

/// The baseline: the least a non-replicated in-memory seller does per sale — check and
/// decrement a counter, record an order (with the input's strings) in an ordered map.
fn baseline(n: u64) -> f64 {
    let mut remaining: u64 = u64::MAX;
    let mut orders = std::collections::BTreeMap::new();
    let mut elapsed = std::time::Duration::ZERO;
    for chunk in 0..n.div_ceil(BATCH) {
        let inputs: Vec<(String, String)> = (0..BATCH)
            .map(|_| (black_box("c-1").into(), black_box("pay").into()))
            .collect();
        let t = Instant::now();
        for (i, (customer, payment_ref)) in inputs.into_iter().enumerate() {
            assert!(remaining >= 1);
            remaining -= 1;
            orders.insert(chunk * BATCH + i as u64, (customer, payment_ref, remaining));
        }
        elapsed += t.elapsed();
    }
    black_box(&orders);
    (n.div_ceil(BATCH) * BATCH) as f64 / elapsed.as_secs_f64()
}

const BATCH: u64 = 10_000;

/// Builds the inputs of operation number `i`.
type MakeOp = fn(u64) -> Vec<Input>;

fn throughput(n: u64, make: MakeOp) -> (f64, Histogram<u64>) {
    let mut core = core_with_event();
    let mut ready = Ready::default();
    let mut elapsed = std::time::Duration::ZERO;
    let mut next = 1;
    for _ in 0..n.div_ceil(BATCH) {
        let batch: Vec<Vec<Input>> = (next..next + BATCH).map(make).collect();
        next += BATCH;
        let t = Instant::now();
        for op in batch {
            run_op(&mut core, &mut ready, op, 2);
        }
        elapsed += t.elapsed();
    }
    let rate = (next - 1) as f64 / elapsed.as_secs_f64();
    // Percentiles from a second pass timing each operation.
    let mut h = Histogram::<u64>::new(3).unwrap();
    let batch: Vec<Vec<Input>> = (next..next + n / 4).map(make).collect();
    for op in batch {
        let t = Instant::now();
        run_op(&mut core, &mut ready, op, 2);
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

/// Gossip bytes one region sends per second of virtual time, selling `rate` units/s from
/// all three regions, with a tick every 50 ms (frames postcard-encoded as on the wire).
fn gossip_bytes_per_second(rate: u64) -> u64 {
    use allot_node::cluster::LocalCluster;
    let mut c = LocalCluster::new(&REGIONS);
    let spec = bench_event();
    c.call(0, Command::CreateEvent(spec)).unwrap();
    c.settle(3);
    let ticks_per_s = 20;
    let per_tick = rate / ticks_per_s;
    let mut bytes = 0u64;
    let seconds = 3;
    for _ in 0..seconds * ticks_per_s {
        c.advance(50);
        for r in 0..3 {
            for i in 0..per_tick / 3 {
                c.send(
                    r,
                    None,
                    Command::Purchase {
                        event: "rock".into(),
                        want: Want::Quantity {
                            pool: "floor".into(),
                            quantity: 1,
                        },
                        customer: "c-1".into(),
                        payment_ref: format!("p-{i}"),
                    },
                );
            }
            c.persist(r);
            c.tick(r);
        }
        for env in c.network.iter().filter(|e| e.from == 0) {
            bytes += postcard::to_stdvec(&env.frame).unwrap().len() as u64 + 8;
        }
        while !c.network.is_empty() {
            c.deliver(0);
        }
    }
    bytes / seconds
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: u64 = std::env::var("ALLOT_BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let reps: usize = std::env::var("ALLOT_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let only: Option<(&str, MakeOp)> = match std::env::var("ALLOT_BENCH_ONLY").as_deref() {
        Ok("purchase") => Some(("purchase", purchase)),
        Ok("keyed") => Some(("keyed purchase", keyed_purchase)),
        _ => None,
    };
    if let Some((name, make)) = only {
        for _ in 0..reps {
            let b = baseline(n);
            let (rate, h) = throughput(n, make);
            println!(
                "{name} {rate:.0}/s ({:.2}x the baseline's {b:.0}/s) p50 {} p99 {}",
                rate / b,
                pct(&h, 0.5),
                pct(&h, 0.99)
            );
        }
        return;
    }
    println!("allot-node core benchmark: {reps} rounds of {n} operations each, one core.");
    println!("Each round measures the baseline, purchases and hold + confirm pairs back to back;");
    println!(
        "the table gives the median round (and the best) — the machine is shared and noisy.\n"
    );
    let (mut base, mut buy, mut keyed, mut hc) = (vec![], vec![], vec![], vec![]);
    let (mut buy_ratio, mut keyed_ratio, mut hc_ratio) = (vec![], vec![], vec![]);
    let (mut hb, mut hk, mut hh) = (
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    );
    for _ in 0..reps {
        let b = baseline(n);
        let (p, h1) = throughput(n, purchase);
        let (k, h3) = throughput(n, keyed_purchase);
        let (c, h2) = throughput(n / 2, hold_confirm);
        hb.add(&h1).unwrap();
        hk.add(&h3).unwrap();
        hh.add(&h2).unwrap();
        buy_ratio.push(p / b);
        keyed_ratio.push(k / b);
        hc_ratio.push(c / b);
        base.push(b);
        buy.push(p);
        keyed.push(k);
        hc.push(c);
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!("| operation | median ops/s | best ops/s | p50 ns | p99 ns | p99.9 ns | median ratio to baseline | median vs 2,000,000/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| baseline (counter + order map) | {:.0} | {:.0} | | | | 1.00 | {:.2} |",
        median(base.clone()),
        best(&base),
        median(base.clone()) / 2e6
    );
    for (name, rates, ratios, h) in [
        ("purchase", &buy, &buy_ratio, &hb),
        (
            "purchase with an Idempotency-Key",
            &keyed,
            &keyed_ratio,
            &hk,
        ),
        ("hold + confirm (pairs)", &hc, &hc_ratio, &hh),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {} | {} | {} | {:.2} | {:.2} |",
            median(rates.clone()),
            best(rates),
            pct(h, 0.5),
            pct(h, 0.99),
            pct(h, 0.999),
            median(ratios.clone()),
            median(rates.clone()) / 2e6
        );
    }
    println!();
    let (s1, y1, b1) = row_costs(1_000);
    let (s2, y2, b2) = row_costs(100_000);
    println!("| history | record a sale (ns) | sync a peer 10 sales behind (ns) | delta bytes |");
    println!("|---:|---:|---:|---:|");
    println!("| 1,000 sales | {s1:.0} | {y1:.0} | {b1} |");
    println!("| 100,000 sales | {s2:.0} | {y2:.0} | {b2} |");
    println!(
        "| ratio 100k / 1k | {:.2} | {:.2} | {:.2} |",
        s2 / s1,
        y2 / y1,
        b2 as f64 / b1 as f64
    );
    println!();
    let (g1, g10) = (
        gossip_bytes_per_second(1_000),
        gossip_bytes_per_second(10_000),
    );
    println!("| sales/s (3 regions) | gossip bytes/s sent by one region (2 peers, 20 ticks/s) |");
    println!("|---:|---:|");
    println!("| 1,000 | {g1} |");
    println!("| 10,000 | {g10} |");
    println!("| ratio | {:.2} |", g10 as f64 / g1 as f64);
}
