//! The emulated WAN parts of `allot bench compare`: three regions in network namespaces the
//! bench creates, joined only through a delay relay it owns (`relay.rs`; this kernel has no
//! `netem`), with the round-trip times of `regions.toml` and the simulator.
//!
//! - **comparison** (`compare_wan`): buyers in every region, demand 70/20/10, against allot
//!   (one node per region, gossip, rebalancer and forwarding on) and against each central
//!   design (its store and HTTP front in the busiest region; the other regions' buyers reach
//!   it through the relay). Latency per buyer region, forwarded sales apart.
//! - **faults** (`faults.rs`): allot under sustained load while a partition, a SIGKILL and
//!   restart, or a SIGSTOP pause hits a region, then an audit through the API (`audit.rs`).

pub mod audit;
mod cluster;
pub mod faults;
mod load;
mod netns;
mod relay;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

use crate::bench::median;
use crate::bench::BENCH_TOKEN;
use crate::compare::{start_design, Design};
use cluster::Cluster;
use load::{Buyers, LoadSpec, RegionOutcome};
pub use netns::Fabric;
use relay::{Link, Relay};

/// The regions, their distances and where the buyers are.
#[derive(Clone)]
pub struct Regions {
    pub names: Vec<String>,
    rtt_ms: Vec<Vec<u64>>,
    /// Each region's share of the buyers.
    pub demand: Vec<f64>,
    /// Where a central design lives: the busiest region, as its owner would put it.
    pub central: usize,
}

impl Regions {
    /// The three regions of `regions.toml` and the simulator, with 70/20/10 of the buyers.
    pub fn standard() -> Regions {
        Regions {
            names: ["eu-west", "us-east", "ap-south"]
                .map(str::to_owned)
                .to_vec(),
            rtt_ms: vec![vec![0, 80, 239], vec![80, 0, 217], vec![239, 217, 0]],
            demand: vec![0.7, 0.2, 0.1],
            central: 0,
        }
    }

    pub fn rtt(&self, a: usize, b: usize) -> Duration {
        Duration::from_millis(self.rtt_ms[a][b])
    }
}

/// The settings of one WAN comparison.
pub struct WanSettings {
    /// Mean purchases per second per region: the total, three times this, is split by demand.
    pub rate_per_region: f64,
    pub seconds: f64,
    pub runs: usize,
    pub designs: Vec<Design>,
}

/// One design, one run, one buyer region.
pub struct WanMeasured {
    pub run: usize,
    pub design: Design,
    pub region: usize,
    pub rate: f64,
    pub outcome: RegionOutcome,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The pool sells out within the run: about 70% of the units the buyers ask for (1.5 each
/// on average) over the run.
fn wan_capacity(total_rate: f64, seconds: f64) -> u64 {
    ((total_rate * 1.5 * seconds * 0.7) as u64).max(30)
}

async fn allot_run(
    fabric: &Fabric,
    regions: &Regions,
    dir: &Path,
    spec: &LoadSpec,
    total_rate: f64,
) -> anyhow::Result<Vec<RegionOutcome>> {
    let cluster = Cluster::start(fabric, regions, dir, BENCH_TOKEN).await?;
    let client = reqwest::Client::new();
    let capacity = wan_capacity(total_rate, spec.seconds);
    crate::bench::create_floor_event(
        &client,
        &cluster.base(0),
        BENCH_TOKEN,
        &spec.event,
        capacity,
    )
    .await?;
    for i in 0..regions.names.len() {
        cluster.wait_event(i, &spec.event).await?;
    }
    let buyers: Vec<Buyers> = (0..regions.names.len())
        .map(|i| Buyers {
            region: i,
            target: cluster.http[i],
            rate: total_rate * regions.demand[i],
        })
        .collect();
    let outcomes = load::run(&regions.names, &buyers, spec).await?;
    let acked: Vec<_> = outcomes.iter().flat_map(|o| o.acked.clone()).collect();
    let bases: Vec<String> = (0..regions.names.len()).map(|i| cluster.base(i)).collect();
    let audit = audit::audit(
        &bases,
        BENCH_TOKEN,
        &spec.event,
        &acked,
        Duration::from_secs(30),
    )
    .await?;
    if !audit.passed() {
        bail!("allot over the WAN broke a promise: {audit:?}");
    }
    Ok(outcomes)
}

async fn central_run(
    design: Design,
    regions: &Regions,
    dir: &Path,
    spec: &LoadSpec,
    total_rate: f64,
) -> anyhow::Result<Vec<RegionOutcome>> {
    let (services, addr, _) = start_design(design, dir).await?;
    let client = reqwest::Client::new();
    let capacity = wan_capacity(total_rate, spec.seconds);
    crate::bench::create_floor_event(
        &client,
        &format!("http://{addr}"),
        BENCH_TOKEN,
        &spec.event,
        capacity,
    )
    .await?;
    let mut relay = Relay::default();
    let mut buyers = Vec::new();
    for i in 0..regions.names.len() {
        let target = if i == regions.central {
            addr
        } else {
            let link = Link::new(regions.rtt(i, regions.central));
            relay
                .tcp(IpAddr::V4(Ipv4Addr::LOCALHOST), addr, link)
                .await?
        };
        buyers.push(Buyers {
            region: i,
            target,
            rate: total_rate * regions.demand[i],
        });
    }
    let outcomes = load::run(&regions.names, &buyers, spec).await?;
    drop(services);
    let sold: u64 = outcomes
        .iter()
        .flat_map(|o| &o.acked)
        .map(|a| a.quantity)
        .sum();
    if sold > capacity {
        bail!("the {design:?} design sold {sold} of {capacity}");
    }
    Ok(outcomes)
}

/// Runs the WAN comparison: designs alternating run by run, on one set of namespaces.
pub async fn compare_wan(settings: &WanSettings) -> anyhow::Result<Vec<WanMeasured>> {
    let regions = Regions::standard();
    let fabric = Fabric::create(regions.names.len())?;
    let total_rate = settings.rate_per_region * regions.names.len() as f64;
    let mut out = Vec::new();
    for run in 1..=settings.runs.max(1) {
        for &design in &settings.designs {
            let dir = tempfile::tempdir()?;
            let spec = LoadSpec {
                event: "wan".into(),
                pools: vec!["floor".into()],
                seconds: settings.seconds,
                retry: false,
                tag: format!("wan-{run}-{design:?}"),
            };
            let outcomes = match design {
                Design::Allot => allot_run(&fabric, &regions, dir.path(), &spec, total_rate).await,
                _ => central_run(design, &regions, dir.path(), &spec, total_rate).await,
            }
            .with_context(|| format!("the WAN run {run} of the {design:?} design"))?;
            for (region, outcome) in outcomes.into_iter().enumerate() {
                let sales = outcome.sales()?;
                eprintln!(
                    "wan run {run} {design:?} {}: {} sales ({} forwarded) p99 {:.1} ms, {} sold out, {} failed",
                    regions.names[region],
                    sales.len(),
                    outcome.forwarded.len(),
                    ms(&sales, 0.99),
                    outcome.sold_out.len(),
                    outcome.failures()
                );
                out.push(WanMeasured {
                    run,
                    design,
                    region,
                    rate: total_rate * regions.demand[region],
                    outcome,
                });
            }
        }
    }
    Ok(out)
}

/// The buyers outside the central region, all together, for one design and run.
fn outside(
    results: &[WanMeasured],
    design: Design,
    run: usize,
    central: usize,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let mut sales = load::histogram()?;
    let mut answers = sales.clone();
    for m in results
        .iter()
        .filter(|m| m.design == design && m.run == run && m.region != central)
    {
        sales.add(&m.outcome.sales()?)?;
        answers.add(&m.outcome.answers()?)?;
    }
    Ok((sales, answers))
}

pub fn wan_table(settings: &WanSettings, results: &[WanMeasured]) -> anyhow::Result<String> {
    let regions = Regions::standard();
    let total = settings.rate_per_region * regions.names.len() as f64;
    let mut s = format!(
        "Three regions over the emulated WAN (RTT eu-west/us-east 80 ms, us-east/ap-south 217 ms, \
         eu-west/ap-south 239 ms), {total:.0} purchases/s offered in all ({:.0}/s per region on \
         average) split 70/20/10, for {} s, against one pool of {} places split evenly (it sells \
         out within the run). The central designs live in eu-west. Latency from each purchase's \
         due time; `sales` counts 201s, `forwarded` those another region sold; `answers` adds the \
         sold-outs.\n\n\
         | run | design | buyers in | offered/s | sales | forwarded | sold out | failed | sales p50 ms | sales p99 ms | forwarded p99 ms | answers p99 ms |\n\
         |---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        settings.rate_per_region,
        settings.seconds,
        wan_capacity(total, settings.seconds)
    );
    for m in results {
        let sales = m.outcome.sales()?;
        s += &format!(
            "| {} | {:?} | {} | {:.0} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            m.run,
            m.design,
            regions.names[m.region],
            m.rate,
            sales.len(),
            m.outcome.forwarded.len(),
            m.outcome.sold_out.len(),
            m.outcome.failures(),
            ms(&sales, 0.5),
            ms(&sales, 0.99),
            ms(&m.outcome.forwarded, 0.99),
            ms(&m.outcome.answers()?, 0.99),
        );
    }
    s += "\nBuyers outside the central region (us-east and ap-south together), medians over the \
          runs, and the central design's p99 over allot's (the bar: ≥ 10×, stretch 40×):\n\n\
          | design | sales p99 ms | central / allot (sales) | answers p99 ms | central / allot (answers) |\n|---|---:|---:|---:|---:|\n";
    let runs = results.iter().map(|m| m.run).max().unwrap_or(0);
    let p99s = |d: Design| -> anyhow::Result<(f64, f64)> {
        let mut sales = Vec::new();
        let mut answers = Vec::new();
        for run in 1..=runs {
            let (s, a) = outside(results, d, run, regions.central)?;
            sales.push(ms(&s, 0.99));
            answers.push(ms(&a, 0.99));
        }
        Ok((median(sales), median(answers)))
    };
    let (allot_sales, allot_answers) = p99s(Design::Allot)?;
    for &d in &settings.designs {
        let (sales, answers) = p99s(d)?;
        s += &format!(
            "| {d:?} | {sales:.1} | {:.1} | {answers:.1} | {:.1} |\n",
            sales / allot_sales,
            answers / allot_answers
        );
    }
    Ok(s)
}
