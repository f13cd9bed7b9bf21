//! `allot demo` for now: three region cores in one process, wired by the in-memory transport
//! of `allot_node::cluster`, selling one sample event under a skewed generated load while
//! gossip spreads the ledger. Real nodes over QUIC replace this with the gossip issue.

use std::path::PathBuf;
use std::time::Duration;

use allot_crdt::{Allotments, PoolKind};
use allot_node::cluster::LocalCluster;
use allot_node::*;
use anyhow::{bail, Context};

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

fn sample_event() -> EventSpec {
    EventSpec {
        id: "rock-2027".into(),
        name: "Rock in the Park".into(),
        description: "A sample event for the demo".into(),
        venue: "Tempelhofer Feld".into(),
        lat: 52.47,
        lon: 13.40,
        starts_at: "2027-06-01T19:00:00Z".into(),
        currency: "EUR".into(),
        hold_ttl_s: 600,
        pools: vec![
            PoolInput { id: "floor".into(), kind: PoolKind::General { capacity: 3000 }, price_cents: 8900 },
            PoolInput {
                id: "stalls".into(),
                kind: PoolKind::Assigned { seats: (1..=60).map(|i| format!("{}-{}", (b'A' + (i - 1) / 10) as char, (i - 1) % 10 + 1)).collect() },
                price_cents: 12900,
            },
        ],
        allotments: Allotments::Even,
    }
}

/// A small deterministic generator, so two demo runs print the same story.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

pub fn run(data: Option<PathBuf>, rounds: u32, pace_ms: u64) -> anyhow::Result<()> {
    if let Some(d) = data {
        eprintln!("note: --data {} is ignored: this demo keeps its three regions in memory until real nodes exist", d.display());
    }
    let mut c = LocalCluster::new(&REGIONS);
    c.call(0, Command::CreateEvent(sample_event())).map_err(|e| anyhow::anyhow!("creating the sample event: {e}"))?;
    c.settle(2);
    println!("allot demo: three regions in one process, event rock-2027 (floor: 3000 GA, stalls: 60 seats), even allotments.");
    println!("Load is skewed 70/20/10 towards eu-west; gossip runs every round and takes one round to arrive.\nEach region prints its own view of the floor pool: a region's view of the others lags by the gossip delay.\n");
    let mut rng = Lcg(7);
    let mut customer = 0u64;
    let weights = [70u64, 20, 10];
    let mut sold_out = [0u64; 3];
    for round in 1..=rounds {
        c.advance(50);
        for _ in 0..30 {
            let roll = rng.next() % 100;
            let r = if roll < weights[0] { 0 } else if roll < weights[0] + weights[1] { 1 } else { 2 };
            customer += 1;
            let want = if rng.next() % 5 == 0 {
                Want::Quantity { pool: "stalls".into(), quantity: 1 + rng.next() % 2 }
            } else {
                Want::Quantity { pool: "floor".into(), quantity: 1 + rng.next() % 4 }
            };
            let cmd = Command::Purchase { event: "rock-2027".into(), want, customer: format!("c-{customer}"), payment_ref: format!("pay-{customer}") };
            let id = c.send(r, None, cmd);
            c.persist(r);
            match c.take_reply(r, id).context("a reply after persisting")? {
                Err(CoreError::SoldOut { .. }) => sold_out[r] += 1,
                Err(e) => bail!("unexpected refusal: {e}"),
                Ok(_) => {}
            }
        }
        // The operator's handoff until the rebalancer exists: the cold region helps the hot one.
        if round % 10 == 0 {
            let spare = c.cores[2].event("rock-2027").map_or(0, |e| e.sellable(0).max(0) as u64 / 2);
            if spare > 0 {
                let grant = Command::Grant { event: "rock-2027".into(), pool: "floor".into(), to: "eu-west".into(), amount: GrantAmount::Quantity(spare) };
                c.call(2, grant).map_err(|e| anyhow::anyhow!("handoff: {e}"))?;
                println!("round {round:>3}: ap-south hands {spare} floor places to eu-west");
            }
        }
        // One round of WAN delay: deliver what was sent last round, then gossip again.
        let in_flight = c.network.len();
        for _ in 0..in_flight {
            c.deliver(0);
        }
        for i in 0..3 {
            c.persist(i);
            c.tick(i);
        }
        c.check().map_err(|e| anyhow::anyhow!("invariant violated: {e}"))?;
        if round % 5 == 0 || round == rounds {
            print_views(&c, round);
        }
        std::thread::sleep(Duration::from_millis(pace_ms));
    }
    c.settle(3);
    println!("\nload stopped; gossip settles:");
    c.check().map_err(|e| anyhow::anyhow!("invariant violated: {e}"))?;
    c.converged().map_err(|e| anyhow::anyhow!("not converged: {e}"))?;
    print_views(&c, rounds);
    let orders: usize = c.cores.iter().map(|x| x.orders().count()).sum();
    println!("\n{orders} orders; sold-out answers per region (no forwarding yet): {sold_out:?}.");
    println!("Converged: every region holds identical rows; invariants checked after every round.");
    Ok(())
}

fn print_views(c: &LocalCluster, round: u32) {
    println!("round {round:>3}          | view of eu-west      | view of us-east      | view of ap-south     | version vector");
    for (i, core) in c.cores.iter().enumerate() {
        let Some(e) = core.event("rock-2027") else { continue };
        let cells: Vec<String> = (0..3u16)
            .map(|r| format!("avail {:>4} sold {:>4}", e.ledger.available(0, r), e.ledger.consumed(0, r) - e.ledger.returned(0, r)))
            .collect();
        let vv = e.ledger.version_vector();
        println!("  {:<8} sees     | {} | {:?}", c.names[i], cells.join(" | "), vv.as_slice());
    }
}
