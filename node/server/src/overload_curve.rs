//! The overload part of `allot bench compare`: one node pinned to one CPU, the generator
//! pinned to another (on this 2-core machine they otherwise share both, and at twice the
//! saturating rate the generator, not the node, is what gets measured). First the node's
//! saturation (closed loop), then open loops at fractions of it, up to twice: what was
//! offered, admitted (201), shed (503 `overloaded`) and the p99 of the admitted. Then the
//! node is SIGKILLed and restarted, and its ledger must hold every order it acknowledged.

use anyhow::{bail, Context};

use crate::bench::BENCH_TOKEN;
use crate::bench::{self, closed_loop, connect, purchase_request, NodeLaunch, OpenLoop, Tally};
use crate::driver::Commit;

/// One step of the curve.
pub struct Step {
    /// Of the saturation rate.
    pub fraction: f64,
    pub offered: u64,
    pub admitted_per_s: f64,
    pub shed_per_s: f64,
    /// Neither 201 nor 503 (none expected).
    pub other_failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The generator's own wait before sending (p99): large means it, not the node, lagged.
    pub send_wait_p99_ms: f64,
    /// 503s that were not a proper `overloaded` with `Retry-After`.
    pub improper_sheds: u64,
    /// Connections the generator had open by the end of the step.
    pub connections: usize,
}

pub struct Curve {
    pub pinned: Option<Pinned>,
    /// At most one synced write per this many µs (0: as fast as the disk syncs).
    pub commit_window_us: u64,
    pub saturation: f64,
    pub steps: Vec<Step>,
    /// 201s over every load (warm-ups included), and the orders the restarted node holds.
    pub acknowledged: u64,
    pub held_after_restart: u64,
}

const FRACTIONS: [f64; 6] = [0.5, 0.8, 1.0, 1.25, 1.5, 2.0];

/// Connections of every load here: more than the node's admission places (256), so the
/// node, not the generator's connections, decides what waits and what is shed; not many
/// more, since each costs the node's one core some work per request.
const CONNECTIONS: usize = 320;

/// Runs the curve; `seconds` per step.
pub async fn run(seconds: u64, commit_window_us: u64) -> anyhow::Result<Curve> {
    // Two of the CPUs this process may use (a container's cpuset need not include 0 and 1):
    // the generator on the first, the node on the last.
    let cpus = bench::allowed_cpus();
    let pinned = match (cpus.first(), cpus.last()) {
        (Some(&generator), Some(&node)) if node != generator => Some(Pinned { generator, node }),
        _ => None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The generator's own thread and runtime, pinned (threads it starts inherit it).
    std::thread::Builder::new()
        .name("overload-generator".into())
        .spawn(move || {
            let result = (|| {
                if let Some(p) = pinned {
                    bench::pin_to_cpu(p.generator)?;
                }
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(measure(seconds, pinned, commit_window_us))
            })();
            let _ = tx.send(result);
        })?;
    rx.await.context("the generator thread died")?
}

/// Which CPU the generator and the node each have to themselves.
#[derive(Clone, Copy)]
pub struct Pinned {
    pub generator: usize,
    pub node: usize,
}

async fn measure(
    seconds: u64,
    pinned: Option<Pinned>,
    commit_window_us: u64,
) -> anyhow::Result<Curve> {
    let dir = tempfile::tempdir()?;
    let launch = NodeLaunch {
        cpu: pinned.map(|p| p.node),
        commit_window_us: (commit_window_us > 0).then_some(commit_window_us),
        ..NodeLaunch::default()
    };
    let (child, base) = bench::start_node(dir.path(), Commit::Group, BENCH_TOKEN, &launch)?;
    let mut node = crate::compare::Service::new(child);
    let client = reqwest::Client::new();
    bench::wait_ready(&client, &base).await?;
    bench::create_event(&client, &base, BENCH_TOKEN).await?;
    let addr = base.trim_start_matches("http://").parse()?;
    let (closed, closed_s) = closed_loop(addr, CONNECTIONS, seconds).await?;
    let saturation = closed.ok as f64 / closed_s;
    let mut acknowledged = closed.all_ok;
    let mut steps = Vec::new();
    for fraction in FRACTIONS {
        let offered = ((saturation * fraction) as u64).max(1);
        let spec = OpenLoop {
            rate: offered,
            seconds,
            connections: CONNECTIONS,
            pace_us: 500,
            idempotency_keys: false,
        };
        let Arrivals {
            tally: t,
            seconds: s,
            improper_sheds,
            connections,
        } = arrivals(addr, &spec).await?;
        acknowledged += t.all_ok;
        let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let step = Step {
            fraction,
            offered,
            admitted_per_s: t.ok as f64 / s,
            shed_per_s: t.shed as f64 / s,
            other_failed: t.failed - t.shed,
            p50_ms: ms(&t.latency, 0.5),
            p99_ms: ms(&t.latency, 0.99),
            send_wait_p99_ms: ms(&t.lag, 0.99),
            improper_sheds,
            connections,
        };
        eprintln!(
            "overload {:.2}x: offered {offered}/s, admitted {:.0}/s, shed {:.0}/s, p99 {:.2} ms, send wait p99 {:.2} ms",
            fraction, step.admitted_per_s, step.shed_per_s, step.p99_ms, step.send_wait_p99_ms
        );
        steps.push(step);
    }
    // Nothing admitted is lost: kill the node without warning, start it again, count.
    node.kill_now();
    let child = bench::spawn_node(
        &dir.path().join("regions.toml"),
        Commit::Group,
        BENCH_TOKEN,
        &launch,
    )?;
    let _node = crate::compare::Service::new(child);
    bench::wait_ready(&client, &base).await?;
    let ledger: serde_json::Value = client
        .get(format!("{base}/v1/admin/events/bench/ledger"))
        .bearer_auth(BENCH_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let held_after_restart = ledger["pools"][0]["regions"][0]["consumed"]
        .as_u64()
        .context("the ledger's consumed count")?;
    // Every 201 is an order; a request that failed otherwise changed nothing (none expected:
    // the step table's `other errors`), so the counts must be equal.
    if held_after_restart != acknowledged {
        bail!(
            "the restarted node holds {held_after_restart} orders of {acknowledged} acknowledged"
        );
    }
    Ok(Curve {
        pinned,
        commit_window_us,
        saturation,
        steps,
        acknowledged,
        held_after_restart,
    })
}

/// Connections the generator may open at most: four times the node's admission places, so
/// the excess reaches the node (as many buyers' own connections would) instead of waiting in
/// the generator; not more, since a generator that falls behind would otherwise open
/// connections faster than either side can set them up (8,192 did: a storm of handshakes).
const MAX_CONNECTIONS: usize = 1024;

/// What an open loop of arrivals measured.
struct Arrivals {
    tally: Tally,
    seconds: f64,
    /// 503s without `Retry-After` or not of type `overloaded`: the shedding is not as promised.
    improper_sheds: u64,
    connections: usize,
}

/// An open loop of arrivals: every request leaves at its due time, on an idle keep-alive
/// connection or, when every one is busy, on a new one. Past saturation the excess reaches
/// the node, which must shed it; the generator holds nothing back (unlike one schedule per
/// fixed connection, which turns into a closed loop once the node falls behind).
async fn arrivals(addr: std::net::SocketAddr, spec: &OpenLoop) -> anyhow::Result<Arrivals> {
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    let mut idle = Vec::new();
    for _ in 0..spec.connections {
        idle.push(connect(addr).await?);
    }
    let idle = Arc::new(Mutex::new(idle));
    let opened = Arc::new(AtomicUsize::new(spec.connections));
    let improper = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::new()?));
    let warmup = Duration::from_secs(1);
    let interval = Duration::from_secs_f64(1.0 / spec.rate.max(1) as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let measured_from = start + warmup;
    let end = measured_from + Duration::from_secs(spec.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0u64.. {
        let due = start + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due).await;
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
        let (idle, opened, improper, tally) = (
            idle.clone(),
            opened.clone(),
            improper.clone(),
            tally.clone(),
        );
        tasks.spawn(async move {
            let pooled = idle.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
            let mut sender = match pooled {
                Some(s) => Some(s),
                None if opened.fetch_add(1, Ordering::Relaxed) < MAX_CONNECTIONS => {
                    let fresh = connect(addr).await.ok();
                    if fresh.is_none() {
                        opened.fetch_sub(1, Ordering::Relaxed);
                    }
                    fresh
                }
                None => {
                    // Past the generator's own limit: wait for a connection, and say so.
                    loop {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        if let Some(s) = idle.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop()
                        {
                            break Some(s);
                        }
                    }
                }
            };
            if let Some(s) = &mut sender {
                if s.ready().await.is_err() {
                    sender = connect(addr).await.ok();
                }
            }
            let written = tokio::time::Instant::now();
            let mut status = None;
            if let Some(s) = &mut sender {
                if let Ok(r) = s
                    .send_request(purchase_request(&addr.to_string(), i, None)?)
                    .await
                {
                    let code = r.status();
                    let retry_after = r.headers().contains_key(hyper::header::RETRY_AFTER);
                    if let Ok(body) = r.into_body().collect().await {
                        status = Some(code);
                        let overloaded = String::from_utf8_lossy(&body.to_bytes())
                            .contains("urn:allot:problem:overloaded");
                        if code == hyper::StatusCode::SERVICE_UNAVAILABLE
                            && !(retry_after && overloaded)
                        {
                            // Not the promised shedding: a failure, not a shed.
                            improper.fetch_add(1, Ordering::Relaxed);
                            status = None;
                        }
                    }
                }
            }
            tally
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .record(
                    due.into_std(),
                    measured_from.into_std(),
                    written.into_std(),
                    status,
                );
            if let (Some(s), Some(_)) = (sender, status) {
                idle.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(s);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    // Answers to the measured slots may come after their window when the node falls behind:
    // rates are per second of the time they actually took.
    let seconds = measured_from
        .elapsed()
        .as_secs_f64()
        .max(spec.seconds as f64);
    let tally = std::mem::replace(
        &mut *tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        Tally::new()?,
    );
    Ok(Arrivals {
        tally,
        seconds,
        improper_sheds: improper.load(Ordering::Relaxed),
        connections: opened.load(Ordering::Relaxed).min(MAX_CONNECTIONS),
    })
}

impl Curve {
    /// The bar: the admitted p99 at twice the saturating rate within 2x of its value at 80%.
    pub fn p99_ratio(&self) -> Option<f64> {
        let at = |f: f64| {
            self.steps
                .iter()
                .find(|s| s.fraction == f)
                .map(|s| s.p99_ms)
        };
        Some(at(2.0)? / at(0.8)?)
    }

    pub fn table(&self, seconds: u64) -> String {
        let mut s = format!(
            "Overload: one node {}{}, saturation (closed loop, {CONNECTIONS} connections, {seconds} s) {:.0}/s; \
             then an open loop of {seconds} s at each fraction of it: every request leaves at its due \
             time, on an idle connection or a new one (up to {MAX_CONNECTIONS}), so the excess reaches the node. Latency of the admitted (201s) \
             from each request's due time; `send wait`: the generator's own delay before \
             sending.\n\n\
             | offered (× saturation) | offered/s | admitted/s | shed (503)/s | other errors | p50 ms | p99 ms | send wait p99 ms | connections |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            match self.pinned {
                Some(p) => format!(
                    "pinned to CPU {} and the generator to CPU {}",
                    p.node, p.generator
                ),
                None => "sharing its CPU with the generator (fewer than 2 CPUs)".to_owned(),
            },
            if self.commit_window_us > 0 {
                format!(
                    ", at most one synced write per {} ms (`--commit-window-us {}`: the disk, \
                     not the CPU, is its limit)",
                    self.commit_window_us / 1000,
                    self.commit_window_us
                )
            } else {
                String::new()
            },
            self.saturation
        );
        for st in &self.steps {
            s += &format!(
                "| {:.2} | {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {} |\n",
                st.fraction,
                st.offered,
                st.admitted_per_s,
                st.shed_per_s,
                st.other_failed,
                st.p50_ms,
                st.p99_ms,
                st.send_wait_p99_ms,
                st.connections
            );
        }
        s += &format!(
            "\nAdmitted p99 at 2× over its value at 0.8×: {}. Acknowledged over every load: {}; \
             orders the node held after a SIGKILL and restart: {}.\n",
            self.p99_ratio().map_or("–".into(), |r| format!("{r:.2}")),
            self.acknowledged,
            self.held_after_restart
        );
        s
    }

    /// The curve as an SVG: offered against admitted and shed (left), and the admitted p99
    /// (right), both over the offered rate as a multiple of saturation.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (360.0, 220.0, 40.0);
        let max_rate = self
            .steps
            .iter()
            .map(|s| s.offered as f64)
            .fold(1.0, f64::max);
        let max_p99 = self.steps.iter().map(|s| s.p99_ms).fold(1.0, f64::max);
        let x = |f: f64| pad + (w - 2.0 * pad) * f / 2.0;
        let y = |v: f64, max: f64| h - pad - (h - 2.0 * pad) * v / max;
        let line = |pts: Vec<(f64, f64)>, colour: &str, dash: &str| {
            let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            format!(
                r##"<polyline fill="none" stroke="{colour}" stroke-width="2" {dash} points="{}"/>"##,
                d.join(" ")
            )
        };
        let panel = |dx: f64, title: &str, body: String, max_label: String| {
            format!(
                r##"<g transform="translate({dx},0)"><rect x="{pad}" y="{pad}" width="{}" height="{}" fill="none" stroke="#999"/>{body}<text x="{pad}" y="24" font-size="13">{title}</text><text x="{pad}" y="{}" font-size="11">0</text><text x="{}" y="{}" font-size="11">2× saturation</text><text x="4" y="{}" font-size="11">{max_label}</text></g>"##,
                w - 2.0 * pad,
                h - 2.0 * pad,
                h - pad + 14.0,
                w - pad - 70.0,
                h - pad + 14.0,
                pad + 4.0
            )
        };
        let pts = |f: &dyn Fn(&Step) -> f64, max: f64| {
            self.steps
                .iter()
                .map(|s| (x(s.fraction), y(f(s), max)))
                .collect::<Vec<_>>()
        };
        let left = format!(
            "{}{}{}",
            line(
                pts(&|s| s.offered as f64, max_rate),
                "#999",
                r##"stroke-dasharray="4 3""##
            ),
            line(pts(&|s| s.admitted_per_s, max_rate), "#2a7", ""),
            line(pts(&|s| s.shed_per_s, max_rate), "#d62", ""),
        );
        // The p99 spans milliseconds to seconds: a log scale, from 1 ms.
        let log_max = max_p99.max(10.0).log10();
        let right_pts = self
            .steps
            .iter()
            .map(|s| (x(s.fraction), y(s.p99_ms.max(1.0).log10(), log_max)))
            .collect();
        let mut right = line(right_pts, "#36c", "");
        for tick in [1.0f64, 10.0, 100.0, 1000.0, 10000.0] {
            if tick <= max_p99.max(10.0) {
                right += &format!(
                    r##"<text x="{}" y="{:.1}" font-size="10" fill="#666">{tick}</text>"##,
                    w - pad + 4.0,
                    y(tick.log10(), log_max) + 3.0
                );
            }
        }
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif">{}{}<text x="{pad}" y="{}" font-size="11" fill="#2a7">admitted/s</text><text x="120" y="{}" font-size="11" fill="#d62">shed/s</text><text x="180" y="{}" font-size="11" fill="#999">offered/s</text><text x="{}" y="{}" font-size="11" fill="#36c">p99 of admitted (ms)</text></svg>"##,
            2.0 * w,
            h + 20.0,
            panel(
                0.0,
                "Offered, admitted, shed (purchases/s)",
                left,
                format!("{max_rate:.0}")
            ),
            panel(w, "Admitted p99 (ms, log scale)", right, String::new()),
            h + 12.0,
            h + 12.0,
            h + 12.0,
            w + pad,
            h + 12.0,
        )
    }
}
