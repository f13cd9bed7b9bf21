//! Per buyer region, the p99 of every answer under `rebalance` against `central`, seed by
//! seed: the sale-forwarding issue's latency bar (docs/benchmarks.md).
//!
//! `cargo run --release -p allot-sim --example p99_by_region -- [scenario] [seeds]`
//! (default: `flash-sale`, seeds 0..24).

use std::collections::BTreeMap;

use allot_sim::{Scenario, Strategy};

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
    // Region → (rebalance's p99 per seed, central's p99 per seed).
    let mut p99: BTreeMap<String, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    let (mut false_sold_outs, mut answers, mut forwarded) = (0, 0, 0);
    let mut time_ratio = Vec::new();
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
        for (region, l) in &r.latency_ms_by_region {
            p99.entry(region.clone()).or_default().0.push(l.p99);
        }
        for (region, l) in &c.latency_ms_by_region {
            p99.entry(region.clone()).or_default().1.push(l.p99);
        }
    }
    let mean_ratio = time_ratio.iter().sum::<f64>() / time_ratio.len().max(1) as f64;
    println!(
        "{name}, seeds 0..{seeds}: {false_sold_outs} false sold-outs in {answers} answers, \
         {forwarded} sales forwarded, time to sell out {mean_ratio:.3}x central's (mean of {} \
         seeds that sold out under both)",
        time_ratio.len()
    );
    for (region, (mut r, mut c)) in p99 {
        let (rm, cm) = (median(&mut r), median(&mut c));
        let ten_times = r.iter().filter(|&&v| v * 10 <= cm).count();
        println!(
            "{region}: p99 median {rm} ms (central {cm} ms); seeds at least 10x under central's \
             median: {ten_times} of {seeds}; per seed, sorted: {r:?}"
        );
    }
    Ok(())
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}
