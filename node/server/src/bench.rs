//! `allot bench http`: purchases over HTTP against real `allot node` processes, open loop at a
//! fixed rate, latency measured from each request's *intended* send time (so a stalled server
//! is charged for every request it delayed: no coordinated omission).
//!
//! Each configuration runs against a fresh node in a temp dir, one after the other in the same
//! run, so their figures can be compared as ratios.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
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
    /// The node's group commit window in microseconds (default: the node's own default).
    #[arg(long)]
    pub commit_window_us: Option<u64>,
    /// The pacer wakes at most once per this many microseconds and releases every request due
    /// by then. Each wake-up costs CPU on the machine the node shares: at 20,000/s, waking
    /// every 100 µs gave a worse p99 than every 500 µs, even though a request may now leave up
    /// to 500 µs late (charged to its latency).
    #[arg(long, default_value_t = 500)]
    pub pace_us: u64,
    /// Keep-alive connections the generator spreads the load over.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Print the slowest answer of every 100 ms of the run, to tell steady latency from stalls.
    #[arg(long)]
    pub timeline: bool,
    /// Threads of the load generator's runtime (it shares the machine with the node).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Send an `Idempotency-Key` with every purchase (the node then hashes the request and
    /// stores the key with the order).
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Run this `allot` binary as the node under test instead of this one: measures another
    /// build with the same generator, in the same run, for a before/after ratio.
    #[arg(long)]
    pub node_binary: Option<std::path::PathBuf>,
    /// A `[cluster]` setting of the node's regions.toml, `KEY=VALUE` in TOML (repeatable),
    /// e.g. `--cluster-setting store_direct_writes=true`: measures a variant of the config
    /// against the defaults with the same binary and generator. Checked by this build's
    /// parser: a `--node-binary` that does not know the setting refuses to start.
    #[arg(long = "cluster-setting", value_name = "KEY=VALUE")]
    pub cluster_settings: Vec<ClusterSetting>,
    /// Measure every mode this many times, interleaved, and summarise by the median run: on
    /// a shared machine one run can catch a stall of the host's disk or CPU.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Measure each commit mode with this many operator dashboards open (logged in, each
    /// following the bench event's page over its live stream), e.g. `--dashboards 0 5`.
    #[arg(long, num_args = 1.., default_values_t = [0])]
    pub dashboards: Vec<usize>,
}

pub struct Outcome {
    pub run: usize,
    pub commit: Commit,
    pub dashboards: usize,
    /// Page updates the open dashboards received during the run.
    pub dashboard_updates: u64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Of the failed, answered 503 (`overloaded`: shed before they cost a sync).
    pub shed: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
    pub lag: Histogram<u64>,
}

/// The operator token of every node and central front the benches start.
pub(crate) const BENCH_TOKEN: &str = "bench-token";

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One `KEY = VALUE` line a bench adds to the `[cluster]` table of its node's regions.toml.
/// The value is checked as TOML here; the key, by the node's own config parser when the bench
/// writes the file ([`start_node`]), so a typo fails before any load is sent.
#[derive(Clone, Debug)]
pub struct ClusterSetting {
    key: String,
    value: toml::Value,
}

impl std::str::FromStr for ClusterSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{key:?}: a setting's name is letters, digits and _"
            ));
        }
        if key == "name" {
            return Err("the bench names its own cluster".to_owned());
        }
        let value = value
            .trim()
            .parse::<toml::Value>()
            .map_err(|e| format!("{key}: not one TOML value: {e}"))?;
        Ok(ClusterSetting {
            key: key.to_owned(),
            value,
        })
    }
}

/// Which `allot` runs as the node under test, and the node flags a bench may set.
#[derive(Clone, Copy, Default)]
pub(crate) struct NodeLaunch<'a> {
    pub node_binary: Option<&'a Path>,
    /// Lines added to the `[cluster]` table of the node's config.
    pub cluster_settings: &'a [ClusterSetting],
    pub http_threads: Option<usize>,
    pub commit_window_us: Option<u64>,
    /// Pin the node to this CPU, so a generator pinned elsewhere does not share its core.
    pub cpu: Option<usize>,
}

impl HttpBench {
    fn launch(&self) -> NodeLaunch<'_> {
        NodeLaunch {
            node_binary: self.node_binary.as_deref(),
            cluster_settings: &self.cluster_settings,
            http_threads: self.http_threads,
            commit_window_us: self.commit_window_us,
            cpu: None,
        }
    }
}

pub(crate) fn start_node(
    dir: &Path,
    commit: Commit,
    token: &str,
    args: &NodeLaunch,
) -> anyhow::Result<(Child, String)> {
    let port = free_port()?;
    let config = write_config(dir, port, args.cluster_settings)?;
    let child = spawn_node(&config, commit, token, args)?;
    Ok((child, format!("http://127.0.0.1:{port}")))
}

/// The one-region regions.toml of a bench node in `dir`, with the caller's `[cluster]`
/// settings; checked by the node's own parser when there are any.
fn write_config(dir: &Path, port: u16, settings: &[ClusterSetting]) -> anyhow::Result<PathBuf> {
    let mut keys = std::collections::BTreeSet::new();
    if let Some(twice) = settings.iter().find(|s| !keys.insert(&s.key)) {
        bail!("--cluster-setting {} given twice", twice.key);
    }
    let config = dir.join("regions.toml");
    let lines: String = settings
        .iter()
        .map(|s| format!("{} = {}\n", s.key, s.value))
        .collect();
    std::fs::write(
        &config,
        format!("[cluster]\nname = \"bench\"\n{lines}\n[[region]]\nname = \"eu-west\"\nhttp = \"127.0.0.1:{port}\"\nquic = \"127.0.0.1:0\"\ndata_dir = \"data\"\n"),
    )?;
    if !settings.is_empty() {
        crate::config::ClusterConfig::load(&config).context("--cluster-setting")?;
    }
    Ok(config)
}

/// Starts `allot node` on a config written by [`start_node`] (again, after a kill).
pub(crate) fn spawn_node(
    config: &Path,
    commit: Commit,
    token: &str,
    args: &NodeLaunch,
) -> anyhow::Result<Child> {
    let exe = match args.node_binary {
        Some(path) => path.to_owned(),
        None => std::env::current_exe().context("locating the allot binary")?,
    };
    // The node's own spelling of the mode, from the same `ValueEnum` that parses it.
    let mode = commit
        .to_possible_value()
        .context("every commit mode has a name")?;
    let mut cmd = Command::new(exe);
    cmd.args(["node", "--config"]).arg(config).args([
        "--region",
        "eu-west",
        "--commit",
        mode.get_name(),
    ]);
    if let Some(n) = args.http_threads {
        cmd.args(["--http-threads", &n.to_string()]);
    }
    if let Some(us) = args.commit_window_us {
        cmd.args(["--commit-window-us", &us.to_string()]);
    }
    if let Some(cpu) = args.cpu {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the closure only calls sched_setaffinity(2), which is
        // async-signal-safe, on stack data.
        unsafe {
            cmd.pre_exec(move || pin_to_cpu(cpu));
        }
    }
    dies_with_bench(&mut cmd)
        .env("ALLOT_ADMIN_TOKEN", token)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .context("starting allot node")
}

/// Makes a child the bench starts die with it (`PR_SET_PDEATHSIG`), so a bench killed with
/// SIGKILL, which runs no cleanup, leaves no node or store running behind it.
pub(crate) fn dies_with_bench(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls prctl(2), async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by sched_getaffinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread (and the threads it starts after) to one CPU.
pub(crate) fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(crate) async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
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
    for run in 1..=args.runs.max(1) {
        for &commit in &args.commit {
            for &dashboards in &args.dashboards {
                let dir = tempfile::tempdir()?;
                let token = BENCH_TOKEN;
                let (mut child, base) = start_node(dir.path(), commit, token, &args.launch())?;
                let mode = Mode { commit, dashboards };
                let result = measure(&base, token, run, mode, args).await;
                let _ = child.kill();
                let _ = child.wait();
                out.push(result?);
            }
        }
    }
    Ok(out)
}

/// The event every bench sells from: one pool too large to sell out.
pub(crate) async fn create_event(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<()> {
    create_floor_event(client, base, token, "bench", 1_000_000_000).await
}

/// An event `id` with one general-admission pool `floor` of `capacity` places.
pub(crate) async fn create_floor_event(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    capacity: u64,
) -> anyhow::Result<()> {
    let event = json!({
        "id": id, "name": "Bench", "venue": "Loopback", "lat": 0.0, "lon": 0.0,
        "starts_at": "2027-06-01T19:00:00Z", "currency": "EUR",
        "pools": [{"id": "floor", "capacity": capacity, "price_cents": 100}],
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
            "creating the event {id}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// One configuration of the node and its surroundings.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mode {
    commit: Commit,
    dashboards: usize,
}

/// Opens `n` operator dashboards on the bench event's page, each its own session following
/// the page's live stream, counting into `updates` the page updates they receive.
async fn open_dashboards(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    n: usize,
    updates: &Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let login = no_redirects
            .post(format!("{base}/dashboard/login"))
            .form(&[("token", token)])
            .send()
            .await?;
        let cookie = login
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
            .context("the dashboard's session cookie")?
            .to_owned();
        let page = client
            .get(format!("{base}/dashboard/events/bench"))
            .header(reqwest::header::COOKIE, &cookie)
            .send()
            .await?;
        if !page.status().is_success() {
            bail!("the dashboard's event page: {}", page.status());
        }
        let mut stream = client
            .get(format!("{base}/dashboard/events/bench/stream"))
            .header(reqwest::header::COOKIE, &cookie)
            .send()
            .await?;
        if !stream.status().is_success() {
            bail!("the dashboard's stream: {}", stream.status());
        }
        let updates = updates.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(chunk)) = stream.chunk().await {
                let views = chunk.windows(11).filter(|w| w == b"event: view").count();
                updates.fetch_add(views as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    Ok(tasks)
}

async fn measure(
    base: &str,
    token: &str,
    run: usize,
    mode: Mode,
    args: &HttpBench,
) -> anyhow::Result<Outcome> {
    let Mode { commit, dashboards } = mode;
    let client = reqwest::Client::new();
    wait_ready(&client, base).await?;
    create_event(&client, base, token).await?;
    let updates = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watching = open_dashboards(&client, base, token, dashboards, &updates).await?;
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .context("the node's address")?;
    let spec = OpenLoop {
        rate: args.rate,
        seconds: args.seconds,
        connections: args.connections,
        pace_us: args.pace_us,
        idempotency_keys: args.idempotency_keys,
    };
    let (total, seconds) = open_loop(addr, &spec).await?;
    let dashboard_updates = updates.load(std::sync::atomic::Ordering::Relaxed);
    watching.iter().for_each(|w| w.abort());
    if args.timeline {
        let worst: Vec<String> = total
            .windows
            .iter()
            .map(|w| format!("{:.1}", *w as f64 / 1000.0))
            .collect();
        eprintln!(
            "{commit:?}: slowest answer (ms) per 100 ms of due time: {}",
            worst.join(" ")
        );
    }
    Ok(Outcome {
        run,
        commit,
        dashboards,
        dashboard_updates,
        sent: total.ok + total.failed,
        ok: total.ok,
        failed: total.failed,
        shed: total.shed,
        seconds,
        latency: total.latency,
        lag: total.lag,
    })
}

/// An open-loop load: `rate` purchases a second for `seconds` (after one second of warm-up),
/// over `connections` keep-alive connections.
pub(crate) struct OpenLoop {
    pub rate: u64,
    pub seconds: u64,
    pub connections: usize,
    pub pace_us: u64,
    pub idempotency_keys: bool,
}

/// Runs an open-loop load against the bench event at `addr`: what it measured, and over how
/// many seconds.
pub(crate) async fn open_loop(addr: SocketAddr, spec: &OpenLoop) -> anyhow::Result<(Tally, f64)> {
    let warmup = Duration::from_secs(1);
    let start = Instant::now() + Duration::from_millis(50);
    let load = Load {
        start,
        measured_from: start + warmup,
        end: start + warmup + Duration::from_secs(spec.seconds),
        interval: Duration::from_secs_f64(1.0 / spec.rate.max(1) as f64),
        tick: Duration::from_micros(spec.pace_us.max(1)),
        idempotency_keys: spec.idempotency_keys,
    };
    let (pacer, slots) = load.spawn_pacer("bench-pacer")?;
    let mut connections = Vec::new();
    for _ in 0..spec.connections.max(1) {
        let sender = connect(addr).await?;
        connections.push(tokio::spawn(purchase_loop(
            addr,
            sender,
            slots.clone(),
            load,
        )));
    }
    let mut total = Tally::new()?;
    for c in connections {
        total.add(&c.await??)?;
    }
    let _ = pacer.join();
    let seconds = start
        .elapsed()
        .saturating_sub(warmup)
        .as_secs_f64()
        .max(spec.seconds as f64);
    Ok((total, seconds))
}

/// A closed-loop load: each of `connections` sends its next purchase as soon as the last is
/// answered, for `seconds` after one second of warm-up. It finds the saturation throughput;
/// latency counts from each request's send.
pub(crate) async fn closed_loop(
    addr: SocketAddr,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<(Tally, f64)> {
    let start = Instant::now();
    let measured_from = start + Duration::from_secs(1);
    let end = measured_from + Duration::from_secs(seconds);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let mut sender = connect(addr).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new()?;
            let host = addr.to_string();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    return anyhow::Ok(tally);
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let request = purchase_request(&host, i, None)?;
                if sender.ready().await.is_err() {
                    sender = connect(addr).await?;
                }
                let good = match sender.send_request(request).await {
                    Ok(r) => {
                        let status = r.status();
                        r.into_body().collect().await.is_ok()
                            && status == hyper::StatusCode::CREATED
                    }
                    Err(_) => false,
                };
                tally.all_ok += u64::from(good);
                if sent >= measured_from {
                    if good {
                        tally.ok += 1;
                    } else {
                        tally.failed += 1;
                    }
                    tally
                        .latency
                        .saturating_record((sent.elapsed().as_micros() as u64).max(1));
                }
            }
        }));
    }
    let mut total = Tally::new()?;
    for t in tasks {
        total.add(&t.await??)?;
    }
    Ok((total, seconds as f64))
}

/// The schedule of an open-loop run: request `i` is due at `start + i * interval`, whatever
/// became of the ones before it.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub start: Instant,
    pub measured_from: Instant,
    pub end: Instant,
    pub interval: Duration,
    /// The pacer's shortest sleep.
    pub tick: Duration,
    /// Send an `Idempotency-Key` with every purchase, as a careful front end does.
    pub idempotency_keys: bool,
}

/// A request slot: its number and the instant it was due.
pub(crate) type Slot = (u64, Instant);

/// A pacer's slots, shared by the connections that take them.
pub(crate) type Slots = Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Slot>>>;

impl Load {
    /// Releases every slot when it falls due, from a thread of its own, so that a busy
    /// runtime cannot delay the schedule (tokio's timers tick in whole milliseconds). Sleeps
    /// last at least `tick`, so a slot leaves up to about that late; the lag is measured and
    /// charged to the server, since latency counts from the due time.
    /// Starts [`Load::pace`] on a thread named `name`: its handle, and the slots it releases,
    /// for connections to take in turn.
    pub(crate) fn spawn_pacer(
        self,
        name: &str,
    ) -> std::io::Result<(std::thread::JoinHandle<()>, Slots)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pacer = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || self.pace(tx))?;
        Ok((pacer, Arc::new(tokio::sync::Mutex::new(rx))))
    }

    fn pace(self, tx: tokio::sync::mpsc::UnboundedSender<Slot>) {
        let step = self.interval.as_nanos() as u64;
        for i in 0u64.. {
            let due = self.start + Duration::from_nanos(step.saturating_mul(i));
            if due >= self.end {
                return;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).max(self.tick));
            }
            if tx.send((i, due)).is_err() {
                return;
            }
        }
    }
}

/// What one connection saw.
pub(crate) struct Tally {
    pub ok: u64,
    /// 201s over the whole run, warm-up included: orders the node must still have after.
    pub all_ok: u64,
    pub failed: u64,
    /// Of the failed, those answered 503 (shed by a node past its admission limit).
    pub shed: u64,
    /// From each request's due time to its complete answer.
    pub latency: Histogram<u64>,
    /// From each request's due time to the moment it was written: waiting for the pacer and
    /// for a free connection.
    pub lag: Histogram<u64>,
    /// The slowest answer (µs) of each 100 ms of due time.
    windows: Vec<u64>,
}

impl Tally {
    pub(crate) fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            ok: 0,
            all_ok: 0,
            failed: 0,
            shed: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            lag: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            windows: Vec::new(),
        })
    }

    pub(crate) fn add(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.all_ok += other.all_ok;
        self.failed += other.failed;
        self.shed += other.shed;
        self.latency.add(&other.latency)?;
        self.lag.add(&other.lag)?;
        if self.windows.len() < other.windows.len() {
            self.windows.resize(other.windows.len(), 0);
        }
        for (mine, theirs) in self.windows.iter_mut().zip(&other.windows) {
            *mine = (*mine).max(*theirs);
        }
        Ok(())
    }
}

pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection, straight on hyper: the generator shares the machine
/// with the node, so it spends as little as it can per request.
pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        // A broken connection shows up as failed requests and a reconnect.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Purchase `i` of the bench event (one unit, one of 1,000 customers), with `key` as its
/// `Idempotency-Key` if given.
pub(crate) fn purchase_request(
    host: &str,
    i: u64,
    key: Option<String>,
) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
    let body = format!(
        r#"{{"pool":"floor","quantity":1,"customer":"c-{}","payment_ref":"p-{i}"}}"#,
        i % 1000
    );
    let mut request = hyper::Request::post("/v1/events/bench/purchases")
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    Ok(request.body(Full::new(Bytes::from(body)))?)
}

/// Takes the next due slot whenever this connection is free, like wrk2: with every
/// connection busy, slots wait, and their wait counts in their latency.
async fn purchase_loop(
    addr: SocketAddr,
    mut sender: Sender,
    slots: Slots,
    load: Load,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let host = addr.to_string();
    loop {
        let next = slots.lock().await.recv().await;
        let Some((i, due)) = next else {
            return Ok(tally);
        };
        let key = load.idempotency_keys.then(|| format!("bench-{i}"));
        let request = purchase_request(&host, i, key)?;
        if sender.ready().await.is_err() {
            sender = connect(addr).await?;
        }
        let written = Instant::now();
        let status = match sender.send_request(request).await {
            Ok(r) => {
                let status = r.status();
                r.into_body().collect().await.ok().map(|_| status)
            }
            Err(_) => None,
        };
        tally.record(due, load.measured_from, written, status);
    }
}

impl Tally {
    /// One request's answer: `status` (none if the connection broke), due at `due`, written
    /// at `written`; counted only from `measured_from`, but every 201 counts in `all_ok`.
    pub(crate) fn record(
        &mut self,
        due: Instant,
        measured_from: Instant,
        written: Instant,
        status: Option<hyper::StatusCode>,
    ) {
        self.all_ok += u64::from(status == Some(hyper::StatusCode::CREATED));
        if due < measured_from {
            return;
        }
        let good = status == Some(hyper::StatusCode::CREATED);
        if good {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        if status == Some(hyper::StatusCode::SERVICE_UNAVAILABLE) {
            self.shed += 1;
        }
        let us = |d: Duration| (d.as_micros() as u64).max(1);
        let latency = us(due.elapsed());
        // The latency of what the node took: a refusal it sheds at once is counted apart.
        if good {
            self.latency.saturating_record(latency);
        }
        let window = (due - measured_from).as_millis() as usize / 100;
        if self.windows.len() <= window {
            self.windows.resize(window + 1, 0);
        }
        self.windows[window] = self.windows[window].max(latency);
        self.lag
            .saturating_record(us(written.saturating_duration_since(due)));
    }
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn table(args: &HttpBench, results: &[Outcome]) -> String {
    let mut s = format!(
        "Open loop at {} purchases/s for {} s per mode (after 1 s of warm-up), {} connection(s), pacer tick {} µs{}; latency from each request's intended send time.\n\n",
        args.rate,
        args.seconds,
        args.connections,
        args.pace_us,
        if args.idempotency_keys {
            ", an Idempotency-Key on every purchase"
        } else {
            ""
        }
    );
    s += "Latency percentiles are of the purchases answered 201; `503 shed` counts the errors a node past its admission limit refused at once.\n\n";
    s += "| run | commit | dashboards (updates) | sent | 201 | errors | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | wait to send p99 ms | 503 shed |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in results {
        s += &format!(
            "| {} | {:?} | {} ({}) | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            r.run,
            r.commit,
            r.dashboards,
            r.dashboard_updates,
            r.sent,
            r.ok,
            r.failed,
            r.rate(),
            r.ms(0.5),
            r.ms(0.99),
            r.ms(0.999),
            r.latency.max() as f64 / 1000.0,
            r.lag.value_at_quantile(0.99) as f64 / 1000.0,
            r.shed,
        );
    }
    // Medians over runs, and each mode's achieved rate and p99 against the first mode's.
    let modes: Vec<Mode> = args
        .commit
        .iter()
        .flat_map(|&commit| {
            args.dashboards
                .iter()
                .map(move |&dashboards| Mode { commit, dashboards })
        })
        .collect();
    let of = |m: Mode, f: &dyn Fn(&Outcome) -> f64| {
        median(
            results
                .iter()
                .filter(|r| r.commit == m.commit && r.dashboards == m.dashboards)
                .map(f)
                .collect(),
        )
    };
    let Some(&first) = modes.first() else {
        return s;
    };
    let (base_rate, base_p99) = (of(first, &|r| r.rate()), of(first, &|r| r.ms(0.99)));
    s += &format!(
        "\nMedian of {} run(s) per mode:\n\n| commit | dashboards | achieved/s | p50 ms | p99 ms | p99.9 ms | achieved vs first | p99 vs first |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        args.runs.max(1)
    );
    for m in modes {
        let (rate, p99) = (of(m, &|r| r.rate()), of(m, &|r| r.ms(0.99)));
        s += &format!(
            "| {:?} | {} | {rate:.0} | {:.2} | {p99:.2} | {:.2} | {:.2} | {:.2} |\n",
            m.commit,
            m.dashboards,
            of(m, &|r| r.ms(0.5)),
            of(m, &|r| r.ms(0.999)),
            rate / base_rate,
            p99 / base_p99,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(s: &str) -> Result<ClusterSetting, String> {
        s.parse()
    }

    #[test]
    fn a_cluster_setting_reaches_the_nodes_config() {
        let dir = tempfile::tempdir().unwrap();
        let settings = [
            setting("store_direct_writes=true").unwrap(),
            setting(" store_memtable_mib = 48 ").unwrap(),
        ];
        let config = write_config(dir.path(), 4000, &settings).unwrap();
        let cfg = crate::config::ClusterConfig::load(&config).unwrap();
        assert!(cfg.cluster.store_direct_writes);
        assert_eq!(cfg.cluster.store_memtable_mib, 48);
        // Without settings the defaults hold, so the variant differs from them in one line.
        let plain =
            crate::config::ClusterConfig::load(&write_config(dir.path(), 4000, &[]).unwrap())
                .unwrap();
        assert!(!plain.cluster.store_direct_writes);
        assert_eq!(plain.cluster.store_memtable_mib, 32);
    }

    #[test]
    fn a_bad_cluster_setting_is_refused_before_any_node_starts() {
        for bad in [
            "store_direct_writes",
            "=true",
            "store direct=true",
            "store_direct_writes=yes",
            "name=\"x\"",
            // One value only: a second line would otherwise be dropped without a word.
            "store_memtable_mib=48\nstore_direct_writes=true",
        ] {
            assert!(setting(bad).is_err(), "{bad:?} parsed");
        }
        let dir = tempfile::tempdir().unwrap();
        // Valid TOML, but not a setting of `[cluster]`, or the wrong type for one.
        for bad in ["no_such_setting=1", "store_direct_writes=1"] {
            let err = write_config(dir.path(), 4000, &[setting(bad).unwrap()]).unwrap_err();
            assert!(format!("{err:#}").contains("--cluster-setting"), "{err:#}");
        }
        let twice = [
            setting("max_quantity=4").unwrap(),
            setting("max_quantity=5").unwrap(),
        ];
        let err = write_config(dir.path(), 4000, &twice).unwrap_err();
        assert!(format!("{err:#}").contains("given twice"), "{err:#}");
    }
}
