//! `allot bench restart`: memory and restart time against the number of orders sold.
//!
//! For each order count: a fresh node sells that many purchases (closed loop, each with its
//! own `Idempotency-Key`), then the harness reads the node's RSS and RocksDB's own reported
//! memory, kills it with SIGKILL, starts it again on the same data and times it to ready, and
//! reads its memory again (after retrying a sample of the old keys, which must each answer
//! with the order they got before). What a region keeps in memory and what it reads back at
//! start must follow live state, not the orders it ever sold.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::bench::{
    connect, create_event, purchase_request, spawn_node, start_node, wait_ready, NodeLaunch,
};
use crate::driver::Commit;

#[derive(clap::Args, Debug)]
pub struct RestartBench {
    /// Orders to sell before each restart, one fresh node per count.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 1_000_000])]
    pub orders: Vec<u64>,
    /// Keep-alive connections of the closed-loop load.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Run this `allot` binary as the node under test instead of this one.
    #[arg(long)]
    pub node_binary: Option<std::path::PathBuf>,
    /// A `[cluster]` setting of the node's regions.toml, `KEY=VALUE` in TOML (repeatable).
    #[arg(long = "cluster-setting", value_name = "KEY=VALUE")]
    pub cluster_settings: Vec<crate::bench::ClusterSetting>,
    /// Write a Markdown table here as well as to stdout.
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
}

pub struct Measured {
    pub orders: u64,
    pub load_s: f64,
    pub rss_before: u64,
    pub store_before: u64,
    pub ready_ms: f64,
    pub rss_after: u64,
    pub store_after: u64,
    pub keys_checked: u64,
}

/// The resident set of a process, from /proc.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/PID/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

async fn store_bytes(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<u64> {
    let v: Value = client
        .get(format!("{base}/v1/admin/cluster"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    Ok(v["memory"]["store_bytes"]["total"].as_u64().unwrap_or(0))
}

/// Sends purchase `i` with key `restart-{i}`; returns the order id answered.
async fn purchase(
    addr: SocketAddr,
    sender: &mut crate::bench::Sender,
    i: u64,
) -> anyhow::Result<Option<String>> {
    let request = purchase_request(&addr.to_string(), i, Some(format!("restart-{i}")))?;
    if sender.ready().await.is_err() {
        *sender = connect(addr).await?;
    }
    let r = sender.send_request(request).await?;
    let status = r.status();
    let bytes = r.into_body().collect().await?.to_bytes();
    if status != hyper::StatusCode::CREATED {
        bail!("purchase {i}: {status} {}", String::from_utf8_lossy(&bytes));
    }
    let v: Value = serde_json::from_slice(&bytes)?;
    Ok(v["order_id"].as_str().map(str::to_owned))
}

async fn sell(addr: SocketAddr, orders: u64, connections: usize) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let next = next.clone();
        let mut sender = connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut sample = Vec::new();
            let mut failed = 0u64;
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders {
                    return Ok::<_, anyhow::Error>((sample, failed, first_error));
                }
                match purchase(addr, &mut sender, i).await {
                    // Every 997th order is checked again after the restart.
                    Ok(Some(id)) if i.is_multiple_of(997) => sample.push(format!("{i} {id}")),
                    Ok(Some(_)) => {}
                    Ok(None) => failed += 1,
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
        }));
    }
    let mut sample = Vec::new();
    let mut failed = 0;
    let mut error = None;
    for t in tasks {
        let (s, f, e) = t.await??;
        sample.extend(s);
        failed += f;
        error = error.or(e);
    }
    if failed > 0 {
        bail!(
            "{failed} of {orders} purchases failed, the first with: {}",
            error.unwrap_or_default()
        );
    }
    Ok(sample)
}

pub async fn run(args: &RestartBench) -> anyhow::Result<Vec<Measured>> {
    let launch = NodeLaunch {
        node_binary: args.node_binary.as_deref(),
        cluster_settings: &args.cluster_settings,
        ..NodeLaunch::default()
    };
    let token = crate::bench::BENCH_TOKEN;
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for &orders in &args.orders {
        let dir = tempfile::tempdir()?;
        let (mut child, base) = start_node(dir.path(), Commit::Group, token, &launch)?;
        wait_ready(&client, &base).await?;
        create_event(&client, &base, token).await?;
        let addr: SocketAddr = base.trim_start_matches("http://").parse()?;
        let started = Instant::now();
        let sample = sell(addr, orders, args.connections).await;
        let load_s = started.elapsed().as_secs_f64();
        let sample = match sample {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                return Err(e);
            }
        };
        // Let the last group commit and any memtable flush settle before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_before = rss_bytes(child.id())?;
        let store_before = store_bytes(&client, &base, token).await?;
        child.kill()?; // SIGKILL: no clean shutdown
        child.wait()?;
        let killed = Instant::now();
        let mut child = spawn_node(
            &dir.path().join("regions.toml"),
            Commit::Group,
            token,
            &launch,
        )?;
        let ready = loop {
            if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    break killed.elapsed();
                }
            }
            if killed.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                bail!("the restarted node was not ready within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // Old keys answer with the order they got before the crash, read from the store.
        let mut sender = connect(addr).await?;
        for line in &sample {
            let (i, id) = line.split_once(' ').context("sample line")?;
            let i: u64 = i.parse()?;
            let again = purchase(addr, &mut sender, i).await?;
            if again.as_deref() != Some(id) {
                let _ = child.kill();
                bail!("key restart-{i} answered {again:?} after the restart, {id} before");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_after = rss_bytes(child.id())?;
        let store_after = store_bytes(&client, &base, token).await?;
        let _ = child.kill();
        let _ = child.wait();
        out.push(Measured {
            orders,
            load_s,
            rss_before,
            store_before,
            ready_ms: ready.as_secs_f64() * 1000.0,
            rss_after,
            store_after,
            keys_checked: sample.len() as u64,
        });
    }
    Ok(out)
}

pub fn table(results: &[Measured]) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut s = String::from(
        "| orders (keyed) | sell s | RSS before MiB | RocksDB MiB | RSS − RocksDB MiB | SIGKILL → ready ms | RSS after MiB | RocksDB after MiB | RSS − RocksDB after MiB | old keys re-checked |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in results {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {} |\n",
            m.orders,
            m.load_s,
            mib(m.rss_before),
            mib(m.store_before),
            mib(m.rss_before.saturating_sub(m.store_before)),
            m.ready_ms,
            mib(m.rss_after),
            mib(m.store_after),
            mib(m.rss_after.saturating_sub(m.store_after)),
            m.keys_checked,
        ));
    }
    s
}
