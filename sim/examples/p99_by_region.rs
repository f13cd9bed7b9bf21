//! The buyers' p99 under `rebalance` against `central`, seed by seed: the sale-forwarding
//! issue's latency bar (docs/benchmarks.md). Pooled outside central's home region (the
//! population of DESIGN's remote-region bar) and per buyer region; over every answer and over
//! the sales alone (sold-out answers left out, as the WAN bench's bar counts).
//!
//! `cargo run --release -p allot-sim --example p99_by_region -- [scenario] [seeds]`
//! (default: `flash-sale`, seeds 0..24).

use std::collections::BTreeMap;

use allot_sim::report::Latency;
use allot_sim::{Report, Scenario, Strategy};

/// A population's p99 per seed, under rebalance and under central.
#[derive(Default)]
struct PerSeed {
    rebalance: Vec<u64>,
    central: Vec<u64>,
}

impl PerSeed {
    fn push(&mut self, r: &Latency, c: &Latency) {
        self.rebalance.push(r.p99);
        self.central.push(c.p99);
    }

    fn print(self, name: &str) {
        let (mine, central) = (
            median(&mut self.rebalance.clone()),
            median(&mut self.central.clone()),
        );
        let ten_times = self
            .rebalance
            .iter()
            .filter(|&&v| v * 10 <= central)
            .count();
        println!(
            "{name}: p99 median {mine} ms (central {central} ms); seeds at least 10x under \
             central's median: {ten_times} of {}; per seed, in seed order: {:?}",
            self.rebalance.len(),
            self.rebalance
        );
    }
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "flash-sale".into());
    let seeds: u64 = match args.next() {
        Some(s) => s
            .parse()
            .map_err(|_| format!("seeds: a count, not {s:?}"))?,
        None => 24,
    };
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let sc = Scenario::parse(&text).map_err(|e| format!("{path}: {e}"))?;
    let mut populations: BTreeMap<String, PerSeed> = BTreeMap::new();
    let (mut false_sold_outs, mut answers, mut forwarded) = (0, 0, 0);
    let (mut time_ratio, mut messages_per_1000) = (Vec::new(), 0.0);
    for seed in 0..seeds {
        let r = allot_sim::run(&sc, Strategy::Rebalance, seed);
        let c = allot_sim::run(&sc, Strategy::Central, seed);
        if !r.violations.is_empty() {
            return Err(format!("seed {seed}: {:?}", r.violations));
        }
        if let (Some(a), Some(b)) = (r.sold_out_at_ms, c.sold_out_at_ms) {
            time_ratio.push(a as f64 / b as f64);
        }
        false_sold_outs += r.false_sold_outs;
        answers += r.answers;
        forwarded += r.forwarded;
        messages_per_1000 += 1000.0 * r.handoff_messages as f64 / r.orders.max(1) as f64;
        for (population, mine, central) in populations_of(&r, &c) {
            populations
                .entry(population)
                .or_default()
                .push(mine, central);
        }
    }
    let mean_ratio = time_ratio.iter().sum::<f64>() / time_ratio.len().max(1) as f64;
    println!(
        "{name}, seeds 0..{seeds}: {false_sold_outs} false sold-outs in {answers} answers, \
         {forwarded} sales forwarded, time to sell out {mean_ratio:.3}x central's (mean of {} \
         seeds that sold out under both), {:.1} handoff messages per 1,000 sales",
        time_ratio.len(),
        messages_per_1000 / seeds.max(1) as f64
    );
    for (population, per_seed) in populations {
        per_seed.print(&population);
    }
    Ok(())
}

/// Every population measured: (name, rebalance's latency, central's).
fn populations_of<'a>(r: &'a Report, c: &'a Report) -> Vec<(String, &'a Latency, &'a Latency)> {
    let mut out = vec![
        (
            "answers, every buyer".to_string(),
            &r.latency_ms,
            &c.latency_ms,
        ),
        (
            "answers, outside central's home, pooled".to_string(),
            &r.latency_ms_outside_home,
            &c.latency_ms_outside_home,
        ),
        (
            "sales, outside central's home, pooled".to_string(),
            &r.sales_latency_ms_outside_home,
            &c.sales_latency_ms_outside_home,
        ),
    ];
    for (kind, mine, central) in [
        ("answers", &r.latency_ms_by_region, &c.latency_ms_by_region),
        (
            "sales",
            &r.sales_latency_ms_by_region,
            &c.sales_latency_ms_by_region,
        ),
    ] {
        for (region, l) in mine {
            if let Some(lc) = central.get(region) {
                out.push((format!("{kind}, {region}"), l, lc));
            }
        }
    }
    out
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}
