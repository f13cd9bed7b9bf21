//! Fault runs: allot's three real node processes over the emulated WAN, under sustained load
//! from buyers who retry as a careful front end does (same `Idempotency-Key`), while one
//! fault hits a region for a while; then the audit, through the API only (`audit.rs`).

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use super::audit::{audit, Audit};
use super::cluster::Cluster;
use super::load::{self, Buyers, LoadSpec, RegionOutcome};
use super::{Fabric, Regions};
use crate::bench::BENCH_TOKEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// eu-west (the busiest region) cut off from both others by the relay: datagrams dropped,
    /// no connection closed.
    Partition,
    /// us-east SIGKILLed, restarted on its data dir.
    Kill,
    /// eu-west stopped with SIGSTOP (sockets open, nothing answered), then SIGCONT.
    Pause,
    /// eu-west's synced writes take 250 ms each (a slow disk), then recover. Needs a build
    /// with the `fault-switch` feature (the switch is an endpoint of the running node).
    SlowSync,
    /// us-east's synced writes fail: it stops acknowledging (fail-stop) until an operator
    /// restarts it, which the bench does, SIGKILL and start, at the end of the hit. Needs
    /// the `fault-switch` feature.
    FailingSync,
}

impl Fault {
    /// Whether this binary can inject it.
    pub fn available(self) -> bool {
        !matches!(self, Fault::SlowSync | Fault::FailingSync) || cfg!(feature = "fault-switch")
    }
}

impl Fault {
    fn describe(self, hit: Duration) -> String {
        let s = hit.as_secs_f64();
        match self {
            Fault::Partition => format!("eu-west cut off from us-east and ap-south for {s:.1} s"),
            Fault::Kill => format!("us-east SIGKILLed, restarted {s:.1} s later"),
            Fault::Pause => format!("eu-west SIGSTOPped for {s:.1} s, then SIGCONT"),
            Fault::SlowSync => format!("eu-west's syncs take 250 ms each for {s:.1} s"),
            Fault::FailingSync => {
                format!("us-east's syncs fail; restarted (SIGKILL, start) {s:.1} s later")
            }
        }
    }
}

pub struct FaultSettings {
    /// Purchases per second over all regions, split by demand.
    pub rate: f64,
    pub seconds: f64,
    pub faults: Vec<Fault>,
}

pub struct FaultRun {
    pub fault: Fault,
    pub what: String,
    pub outcomes: Vec<RegionOutcome>,
    pub audit: Audit,
}

/// Half the requests buy general admission, half assigned seats (best available), so the
/// audit can look for a seat sold twice. Both pools sell out near the end of the run.
async fn create_event(
    cluster: &Cluster,
    event: &str,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<()> {
    // Units asked per pool over the run: half the requests, 1.5 units each.
    let per_pool = ((rate * 0.75 * seconds * 0.8) as u64).max(40);
    let rows = per_pool.div_ceil(40);
    let body = json!({
        "id": event, "name": "Fault run", "venue": "Emulated WAN", "lat": 0.0, "lon": 0.0,
        "starts_at": "2027-06-01T19:00:00Z", "currency": "EUR",
        "pools": [
            {"id": "floor", "capacity": per_pool, "price_cents": 100},
            {"id": "stalls", "seat_blocks": [{"rows": {"from": 1, "to": rows}, "from": 1, "to": 40}],
             "price_cents": 200}
        ],
        "allotments": "even"
    });
    let r = reqwest::Client::new()
        .post(format!("{}/v1/admin/events", cluster.base(0)))
        .bearer_auth(BENCH_TOKEN)
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        anyhow::bail!(
            "creating {event}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    for i in 0..cluster.regions.names.len() {
        cluster.wait_event(i, event).await?;
    }
    Ok(())
}

/// Hits the cluster with `fault` `at` into the load, for `hit`, then heals it.
async fn inject(
    cluster: &mut Cluster,
    fault: Fault,
    at: Duration,
    hit: Duration,
) -> anyhow::Result<()> {
    tokio::time::sleep(at).await;
    match fault {
        Fault::Partition => {
            cluster.cut(0, 1, true);
            cluster.cut(0, 2, true);
            tokio::time::sleep(hit).await;
            cluster.heal_all();
        }
        Fault::Kill => {
            cluster.kill(1)?;
            tokio::time::sleep(hit).await;
            cluster.restart(1).await?;
        }
        Fault::Pause => {
            cluster.pause(0, true)?;
            tokio::time::sleep(hit).await;
            cluster.pause(0, false)?;
        }
        Fault::SlowSync => {
            cluster
                .sync_faults(0, Duration::from_millis(250), false)
                .await?;
            tokio::time::sleep(hit).await;
            cluster.sync_faults(0, Duration::ZERO, false).await?;
        }
        Fault::FailingSync => {
            cluster.sync_faults(1, Duration::ZERO, true).await?;
            tokio::time::sleep(hit).await;
            cluster.kill(1)?;
            cluster.restart(1).await?;
        }
    }
    Ok(())
}

pub async fn run_faults(settings: &FaultSettings) -> anyhow::Result<Vec<FaultRun>> {
    if let Some(f) = settings.faults.iter().find(|f| !f.available()) {
        anyhow::bail!(
            "the {f:?} fault needs a node built with the fault-switch feature: \
             cargo build --release -p allot --features fault-switch"
        );
    }
    let regions = Regions::standard();
    let fabric = Fabric::create(regions.names.len())?;
    let mut out = Vec::new();
    for &fault in &settings.faults {
        let dir = tempfile::tempdir()?;
        let mut cluster = Cluster::start(&fabric, &regions, dir.path(), BENCH_TOKEN).await?;
        let event = "faults";
        create_event(&cluster, event, settings.rate, settings.seconds).await?;
        let spec = LoadSpec {
            event: event.into(),
            pools: vec!["floor".into(), "stalls".into()],
            seconds: settings.seconds,
            retry: true,
            tag: format!("fault-{fault:?}"),
        };
        let buyers: Vec<Buyers> = (0..regions.names.len())
            .map(|i| Buyers {
                region: i,
                target: cluster.http[i],
                rate: settings.rate * regions.demand[i],
            })
            .collect();
        let at = Duration::from_secs_f64(settings.seconds * 0.25);
        let hit = Duration::from_secs_f64((settings.seconds * 0.3).max(2.0));
        let (outcomes, injected) = tokio::join!(
            load::run(&regions.names, &buyers, &spec),
            inject(&mut cluster, fault, at, hit)
        );
        injected.with_context(|| format!("injecting {fault:?}"))?;
        let outcomes = outcomes?;
        cluster.heal_all();
        let acked: Vec<_> = outcomes.iter().flat_map(|o| o.acked.clone()).collect();
        let bases: Vec<String> = (0..regions.names.len()).map(|i| cluster.base(i)).collect();
        let audit = audit(&bases, BENCH_TOKEN, event, &acked, Duration::from_secs(60)).await?;
        eprintln!("fault {fault:?}: {} acknowledged, {audit:?}", acked.len());
        out.push(FaultRun {
            fault,
            what: fault.describe(hit),
            outcomes,
            audit,
        });
    }
    Ok(out)
}

pub fn fault_table(settings: &FaultSettings, runs: &[FaultRun]) -> String {
    let mut s = format!(
        "allot's three nodes over the emulated WAN, {:.0} purchases/s (70/20/10) for {:.0} s, \
         half general admission and half assigned seats, both pools selling out near the end; \
         buyers retry 503s, timeouts (5 s) and broken connections with the same Idempotency-Key \
         for up to a minute. The fault starts a quarter into the load. The audit, after the \
         load and the heal, reads every region's ledger and orders through the API.\n\n\
         | fault | acknowledged | of which forwarded | sold out | failed | retries | sold / capacity | oversold | seats sold twice | lost acknowledged | orders per key > 1 | ledger ≠ orders | ledgers converged (audit wait) | verdict |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        settings.rate, settings.seconds
    );
    for r in runs {
        let acked: usize = r.outcomes.iter().map(|o| o.acked.len()).sum();
        let forwarded: u64 = r.outcomes.iter().map(|o| o.forwarded.len()).sum();
        let sold_out: u64 = r.outcomes.iter().map(|o| o.sold_out.len()).sum();
        let failed: u64 = r.outcomes.iter().map(|o| o.failures()).sum();
        let retries: u64 = r.outcomes.iter().map(|o| o.retries).sum();
        let a = &r.audit;
        s += &format!(
            "| {} | {acked} | {forwarded} | {sold_out} | {failed} | {retries} | {} / {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.what,
            a.sold,
            a.capacity,
            a.oversold,
            a.seats_sold_twice,
            a.lost_acknowledged,
            a.duplicate_keys,
            a.ledger_mismatches,
            a.converged_after.map_or("not within 60 s".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            if a.passed() { "pass" } else { "FAIL" },
        );
    }
    s
}
