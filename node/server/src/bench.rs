//! `allot bench http`: purchases over HTTP against real `allot node` processes, open loop at a
//! fixed rate, latency measured from each request's *intended* send time (so a stalled server
//! is charged for every request it delayed: no coordinated omission).
//!
//! Each configuration runs against a fresh node in a temp dir, one after the other in the same
//! run, so their figures can be compared as ratios.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::driver::Commit;

#[derive(clap::Args, Debug)]
pub struct HttpBench {
    /// Purchases per second the load generator sends, whatever the answers.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// Seconds of measured load (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Which commit modes to measure, in this order.
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Commit::Group, Commit::PerRequest])]
    pub commit: Vec<Commit>,
    /// Write a Markdown table here as well as to stdout.
    #[arg(long)]
    pub markdown: Option<std::path::PathBuf>,
    /// HTTP threads of the node under test (default: the node's own default).
    #[arg(long)]
    pub http_threads: Option<usize>,
}

pub struct Outcome {
    pub commit: Commit,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_node(
    dir: &Path,
    commit: Commit,
    token: &str,
    http_threads: Option<usize>,
) -> anyhow::Result<(Child, String)> {
    let port = free_port()?;
    let config = dir.join("regions.toml");
    std::fs::write(
        &config,
        format!("[cluster]\nname = \"bench\"\n\n[[region]]\nname = \"eu-west\"\nhttp = \"127.0.0.1:{port}\"\nquic = \"127.0.0.1:0\"\ndata_dir = \"data\"\n"),
    )?;
    let exe = std::env::current_exe().context("locating the allot binary")?;
    let mode = match commit {
        Commit::Group => "group",
        Commit::PerRequest => "per-request",
    };
    let mut cmd = Command::new(exe);
    cmd.args(["node", "--config"])
        .arg(&config)
        .args(["--region", "eu-west", "--commit", mode]);
    if let Some(n) = http_threads {
        cmd.args(["--http-threads", &n.to_string()]);
    }
    let child = cmd
        .env("ALLOT_ADMIN_TOKEN", token)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .context("starting allot node")?;
    Ok((child, format!("http://127.0.0.1:{port}")))
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the node did not become ready")
}

pub async fn run(args: &HttpBench) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    for &commit in &args.commit {
        let dir = tempfile::tempdir()?;
        let token = "bench-token";
        let (mut child, base) = start_node(dir.path(), commit, token, args.http_threads)?;
        let result = measure(&base, token, commit, args).await;
        let _ = child.kill();
        let _ = child.wait();
        out.push(result?);
    }
    Ok(out)
}

async fn measure(
    base: &str,
    token: &str,
    commit: Commit,
    args: &HttpBench,
) -> anyhow::Result<Outcome> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    wait_ready(&client, base).await?;
    let event = json!({
        "id": "bench", "name": "Bench", "venue": "Loopback", "lat": 0.0, "lon": 0.0,
        "starts_at": "2027-06-01T19:00:00Z", "currency": "EUR",
        "pools": [{"id": "floor", "capacity": 1_000_000_000u64, "price_cents": 100}],
        "allotments": "even"
    });
    let r = client
        .post(format!("{base}/v1/admin/events"))
        .bearer_auth(token)
        .json(&event)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "creating the bench event: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let url = Arc::new(format!("{base}/v1/events/bench/purchases"));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let warmup = Duration::from_secs(1);
    let total = warmup + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut i: u64 = 0;
    let mut tasks = Vec::new();
    let mut sent = 0;
    while start.elapsed() < total {
        // Send everything whose intended time has come, then sleep to the next.
        while let Some(intended) =
            Some(start + interval * i as u32).filter(|t| *t <= Instant::now())
        {
            let measured = intended >= start + warmup;
            sent += u64::from(measured);
            let (client, url, hist, ok, failed) = (
                client.clone(),
                url.clone(),
                hist.clone(),
                ok.clone(),
                failed.clone(),
            );
            let body = json!({"pool": "floor", "quantity": 1, "customer": "c-1", "payment_ref": format!("p-{i}")});
            tasks.push(tokio::spawn(async move {
                let r = client.post(url.as_str()).json(&body).send().await;
                let good = matches!(&r, Ok(r) if r.status() == reqwest::StatusCode::CREATED);
                if let Ok(r) = r {
                    let _ = r.bytes().await;
                }
                if measured {
                    let us = intended.elapsed().as_micros() as u64;
                    hist.lock().expect("histogram").saturating_record(us.max(1));
                    if good {
                        ok.fetch_add(1, Ordering::Relaxed)
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed)
                    };
                }
            }));
            i += 1;
        }
        tokio::time::sleep_until((start + interval * i as u32).into()).await;
        tasks.retain(|t| !t.is_finished());
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = start.elapsed().saturating_sub(warmup).as_secs_f64();
    let latency = hist.lock().expect("histogram").clone();
    Ok(Outcome {
        commit,
        sent,
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds,
        latency,
    })
}

pub fn table(args: &HttpBench, results: &[Outcome]) -> String {
    let mut s = format!(
        "Open loop at {} purchases/s for {} s per mode (after 1 s of warm-up); latency from each request's intended send time.\n\n",
        args.rate, args.seconds
    );
    s += "| commit | sent | 201 | errors | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | achieved vs first row |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let first = results
        .first()
        .map(|r| r.ok as f64 / r.seconds)
        .unwrap_or(1.0);
    for r in results {
        let ms = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
        let rate = r.ok as f64 / r.seconds;
        s += &format!(
            "| {:?} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            r.commit,
            r.sent,
            r.ok,
            r.failed,
            rate,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            r.latency.max() as f64 / 1000.0,
            rate / first
        );
    }
    s
}
