//! `allot bench compare`: allot's node against the central designs a user would build instead
//! (`central/`: Redis with `appendfsync always`, PostgreSQL with `synchronous_commit=on`),
//! each behind the same HTTP purchase API on the same axum stack, driven by the same
//! generator in the same run, so figures compare as ratios. The bench starts and stops the
//! stores itself (own data dirs in a temp dir, free ports); `scripts/bench-deps.sh` installs
//! them.
//!
//! Each run measures every design fresh: an open-loop load at a fixed rate (latency from each
//! request's due time) and then a closed-loop saturation run (every connection sends again as
//! soon as it is answered). Designs alternate run by run; each is summarised by its median.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::{self, closed_loop, median, open_loop, OpenLoop, BENCH_TOKEN};
use crate::driver::Commit;
use crate::wan::faults::{fault_table, run_faults, Fault, FaultSettings};
use crate::wan::{compare_wan, wan_table, WanSettings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Design {
    /// One allot node (group commit, RocksDB).
    Allot,
    /// The Redis design behind `allot central`.
    Redis,
    /// The PostgreSQL design behind `allot central`.
    Postgres,
}

#[derive(clap::Args, Debug)]
pub struct CompareBench {
    /// Purchases per second of the open-loop part.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Seconds of measured load per part (after one second of warm-up each).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Runs, designs alternating within each; the table's summary is their median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Keep-alive connections of the generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Design::Allot, Design::Redis, Design::Postgres])]
    pub designs: Vec<Design>,
    /// A quick check for CI: one round of every part at small rates (one region: 1,000/s
    /// for 2 s; WAN: 100/s per region for 6 s; one fault run: a SIGKILL and restart).
    #[arg(long)]
    pub smoke: bool,
    /// Which parts to run: one region alone, the emulated WAN comparison, the fault runs.
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Part::Region, Part::Wan, Part::Faults, Part::Overload])]
    pub parts: Vec<Part>,
    /// Overload: write the curve (offered, admitted, shed, p99) as an SVG here.
    #[arg(long)]
    pub overload_svg: Option<PathBuf>,
    /// Overload: the node syncs at most once per this many µs (`allot node
    /// --commit-window-us`), so its disk, not its CPU, is what saturates: the regime admission
    /// control is for, and one the generator's one core can offer twice of. 0: the disk as it
    /// is (then the node's one core saturates, and one generator core cannot offer twice that).
    #[arg(long, default_value_t = 20_000)]
    pub overload_commit_window_us: u64,
    /// WAN: mean purchases per second per region (the total is split 70/20/10).
    #[arg(long, default_value_t = 1_000.0)]
    pub wan_rate: f64,
    /// WAN: seconds of load per run (the pool sells out within it).
    #[arg(long, default_value_t = 20.0)]
    pub wan_seconds: f64,
    /// Fault runs: purchases per second over all regions.
    #[arg(long, default_value_t = 600.0)]
    pub fault_rate: f64,
    /// Fault runs: seconds of load per run.
    #[arg(long, default_value_t = 16.0)]
    pub fault_seconds: f64,
    /// Fault runs: which faults (default: every one this binary can inject; the sync faults
    /// need a build with `--features fault-switch`).
    #[arg(long, value_enum, num_args = 1..)]
    pub faults: Vec<Fault>,
    /// Write the Markdown tables here as well as to stdout.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// One region alone: saturation and an open loop per design, and the stores' own tools.
    Region,
    /// Three regions over the emulated WAN, buyers everywhere, allot against each design.
    Wan,
    /// allot under load while a region is partitioned, killed or paused; audited after.
    Faults,
    /// One node (pinned to a CPU of its own) offered up to twice its saturation.
    Overload,
}

pub struct Measured {
    pub run: usize,
    pub design: Design,
    /// The open loop's rate: the bench's, or 80% of a design's saturation below it.
    pub offered: u64,
    pub open_ok: u64,
    pub open_failed: u64,
    pub open_rate: f64,
    pub open_p50_ms: f64,
    pub open_p99_ms: f64,
    pub closed_rate: f64,
    /// The store alone, by its own tool (`redis-benchmark`, `pgbench`).
    pub raw: Option<f64>,
    pub closed_failed: u64,
    pub closed_p99_ms: f64,
}

/// A child process stopped (and waited for) when dropped.
pub(crate) struct Service {
    child: Child,
    /// Run on drop before the kill, e.g. a clean stop of PostgreSQL.
    stop: Option<Command>,
}

impl Service {
    pub(crate) fn new(child: Child) -> Service {
        Service { child, stop: None }
    }

    /// SIGKILL, no clean stop: what a crash does.
    pub(crate) fn kill_now(&mut self) {
        self.stop = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(stop) = &mut self.stop {
            let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn need(program: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        bail!("`{program}` is not installed: run scripts/bench-deps.sh (Debian's redis-server and postgresql)");
    }
    Ok(())
}

async fn wait_port(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on {addr} within 30 s")
}

fn start_redis(dir: &Path) -> anyhow::Result<(Service, String)> {
    need("redis-server")?;
    let port = bench::free_port()?;
    let child = bench::dies_with_bench(&mut Command::new("redis-server"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(["--protected-mode", "no", "--logfile", "redis.log"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    Ok((
        Service { child, stop: None },
        format!("redis://127.0.0.1:{port}"),
    ))
}

/// The newest PostgreSQL of Debian's layout (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: run scripts/bench-deps.sh")?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .context("no PostgreSQL under /usr/lib/postgresql")
}

/// PostgreSQL in its own data dir, run as the `postgres` user (`initdb` refuses root).
async fn start_postgres(dir: &Path) -> anyhow::Result<(Service, String)> {
    need("runuser")?;
    let bin = postgres_bin()?;
    let data = dir.join("pg");
    std::fs::create_dir_all(&data)?;
    let owned = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()?;
    if !owned.success() {
        bail!("chown of the PostgreSQL data dir to `postgres` failed (the bench needs root)");
    }
    let init = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("initdb"))
        .args(["-D"])
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("initdb")?;
    if !init.success() {
        bail!("initdb failed in {}", data.display());
    }
    let port = bench::free_port()?;
    // Not through runuser, which would fork and leave postgres out of reach of the
    // parent-death signal: exec it as the postgres user ourselves.
    let (uid, gid) = postgres_ids()?;
    let mut server = Command::new(bin.join("postgres"));
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the closure only makes async-signal-safe calls
        // (setgroups, setgid, setuid, prctl) on values copied in.
        unsafe {
            server.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                    // After the change of user: a change of credentials clears it.
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = server
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&data)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "synchronous_commit=on",
        ])
        .args(["-c", "fsync=on", "-c", "max_connections=200"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting postgres")?;
    let mut stop = Command::new("runuser");
    stop.args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["stop", "-m", "immediate", "-w"]);
    let service = Service {
        child,
        stop: Some(stop),
    };
    // Accepting connections is not ready: wait for pg_isready.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("PostgreSQL did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((
        service,
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
    ))
}

/// The `postgres` user's uid and gid (Debian's package creates it).
fn postgres_ids() -> anyhow::Result<(libc::uid_t, libc::gid_t)> {
    let name = std::ffi::CString::new("postgres")?;
    // SAFETY: getpwnam returns null or a pointer to a static record, read at once, before
    // any other call could overwrite it (the bench calls it from one thread).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("no `postgres` user: run scripts/bench-deps.sh");
    }
    // SAFETY: non-null, as checked.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Connections the PostgreSQL design keeps (`allot central --pool-size`'s default), and
/// `pgbench` opens alike.
const PG_POOL: &str = "32";

/// `allot central` over a store at `url`.
async fn start_central(store: &str, url: &str) -> anyhow::Result<(Service, SocketAddr)> {
    let port = bench::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let child = bench::dies_with_bench(&mut Command::new(std::env::current_exe()?))
        .args([
            "central",
            "--store",
            store,
            "--url",
            url,
            "--listen",
            &addr.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting allot central")?;
    let service = Service { child, stop: None };
    wait_port(addr, "allot central").await?;
    Ok((service, addr))
}

/// Starts `design` in `dir`: the processes to stop afterwards and the HTTP address to load.
/// The store under a central design, for its own benchmark tool.
pub(crate) enum StoreAt {
    Nothing,
    Redis { port: u16 },
    Postgres { port: u16, bin: PathBuf },
}

/// Starts `design` in `dir` with the bench event: the processes to stop afterwards, the HTTP
/// address to load and the store behind it.
async fn start(design: Design, dir: &Path) -> anyhow::Result<(Vec<Service>, SocketAddr, StoreAt)> {
    let (services, addr, store) = start_design(design, dir).await?;
    bench::create_event(
        &reqwest::Client::new(),
        &format!("http://{addr}"),
        BENCH_TOKEN,
    )
    .await?;
    Ok((services, addr, store))
}

/// Starts `design` in `dir`, with no event yet.
pub(crate) async fn start_design(
    design: Design,
    dir: &Path,
) -> anyhow::Result<(Vec<Service>, SocketAddr, StoreAt)> {
    let client = reqwest::Client::new();
    let token = BENCH_TOKEN;
    let (services, addr, store) = match design {
        Design::Allot => {
            let (child, base) =
                bench::start_node(dir, Commit::Group, token, &bench::NodeLaunch::default())?;
            let node = Service { child, stop: None };
            bench::wait_ready(&client, &base).await?;
            let addr = base.trim_start_matches("http://").parse()?;
            (vec![node], addr, StoreAt::Nothing)
        }
        Design::Redis => {
            let (redis, url) = start_redis(dir)?;
            let port: SocketAddr = url.trim_start_matches("redis://").parse()?;
            wait_port(port, "redis-server").await?;
            let (central, addr) = start_central("redis", &url).await?;
            (
                vec![central, redis],
                addr,
                StoreAt::Redis { port: port.port() },
            )
        }
        Design::Postgres => {
            let (pg, url) = start_postgres(dir).await?;
            let port = url
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("port="))
                .context("the PostgreSQL port")?
                .parse()?;
            let (central, addr) = start_central("postgres", &url).await?;
            let bin = postgres_bin()?;
            (vec![central, pg], addr, StoreAt::Postgres { port, bin })
        }
    };
    Ok((services, addr, store))
}

/// The store alone, driven by its own tool with as many connections as the HTTP load, the
/// same purchase (script or transaction) on the bench event: what the HTTP front costs.
fn raw_rate(
    store: &StoreAt,
    dir: &Path,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Option<f64>> {
    let conns = connections.to_string();
    match store {
        StoreAt::Nothing => Ok(None),
        StoreAt::Redis { port } => {
            let port = port.to_string();
            let load = Command::new("redis-cli")
                .args([
                    "-p",
                    &port,
                    "SCRIPT",
                    "LOAD",
                    crate::central::redis_store::PURCHASE,
                ])
                .output()
                .context("redis-cli")?;
            let sha = String::from_utf8_lossy(&load.stdout).trim().to_owned();
            if sha.len() != 40 {
                bail!("SCRIPT LOAD answered {sha:?}");
            }
            let requests = (30_000 * seconds).to_string();
            let out = Command::new("redis-benchmark")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-c",
                    &conns,
                    "-n",
                    &requests,
                    "--csv",
                ])
                .args([
                    "EVALSHA",
                    &sha,
                    "2",
                    "pools:bench",
                    "orders:bench",
                    "floor",
                    "1",
                    "bench",
                    "c-raw",
                    "p-raw",
                ])
                .output()
                .context("redis-benchmark")?;
            let text = String::from_utf8_lossy(&out.stdout);
            // CSV: "test","rps",... then one line per test.
            let rps = text
                .lines()
                .filter_map(|l| l.split(',').nth(1))
                .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
                .next_back()
                .with_context(|| format!("redis-benchmark printed {text:?}"))?;
            Ok(Some(rps))
        }
        StoreAt::Postgres { port, bin } => {
            let script = dir.join("purchase.sql");
            std::fs::write(
                &script,
                "\\set c random(1, 1000)\n\
                 WITH taken AS (UPDATE pools SET remaining = remaining - 1 \
                 WHERE event = 'bench' AND pool = 'floor' AND remaining >= 1 RETURNING event, pool) \
                 INSERT INTO orders (event, pool, quantity, customer, payment_ref) \
                 SELECT event, pool, 1, 'c-' || :c, 'p-raw' FROM taken RETURNING id;\n",
            )?;
            let out = Command::new(bin.join("pgbench"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-n",
                ])
                .args(["-c", PG_POOL, "-j", "2", "-T", &seconds.to_string(), "-f"])
                .arg(&script)
                .arg("postgres")
                .output()
                .context("pgbench")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let tps = text
                .lines()
                .find_map(|l| l.strip_prefix("tps = "))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| {
                    format!(
                        "pgbench printed {text:?} {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            Ok(Some(tps))
        }
    }
}

/// Whatever the design, a pool never sells more than it holds: 20 concurrent purchases of a
/// pool of 10 give exactly 10 orders and 10 `sold-out` answers (409).
async fn check_no_oversell(addr: SocketAddr) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    bench::create_floor_event(&client, &base, BENCH_TOKEN, "check", 10).await?;
    let buys = (0..20).map(|i| {
        let client = client.clone();
        let url = format!("{base}/v1/events/check/purchases");
        async move {
            let body = serde_json::json!({"pool": "floor", "quantity": 1, "customer": format!("k-{i}"), "payment_ref": "p"});
            client.post(url).json(&body).send().await.map(|r| r.status().as_u16())
        }
    });
    let statuses = futures_util::future::join_all(buys).await;
    let sold = statuses.iter().filter(|s| matches!(s, Ok(201))).count();
    let refused = statuses.iter().filter(|s| matches!(s, Ok(409))).count();
    if (sold, refused) != (10, 10) {
        bail!("20 purchases of a pool of 10: {sold} sold, {refused} refused ({statuses:?})");
    }
    Ok(())
}

pub async fn run(args: &CompareBench) -> anyhow::Result<Vec<Measured>> {
    let (rate, seconds, runs) = if args.smoke {
        (1_000, 2, 1)
    } else {
        (args.rate, args.seconds, args.runs.max(1))
    };
    let mut out = Vec::new();
    for run in 1..=runs {
        for &design in &args.designs {
            let dir = tempfile::tempdir()?;
            let (services, addr, store) = start(design, dir.path())
                .await
                .with_context(|| format!("starting the {design:?} design"))?;
            check_no_oversell(addr).await?;
            // Saturation first: a design that cannot carry the offered rate is offered 80% of
            // what it carries instead (else its backlog, not its store, is what is timed).
            let (closed, closed_s) = closed_loop(addr, args.connections, seconds).await?;
            let closed_rate = closed.ok as f64 / closed_s;
            let offered = if closed_rate < rate as f64 {
                ((closed_rate * 0.8) as u64).max(1)
            } else {
                rate
            };
            let spec = OpenLoop {
                rate: offered,
                seconds,
                connections: args.connections,
                pace_us: 500,
                idempotency_keys: false,
            };
            let (open, open_s) = open_loop(addr, &spec).await?;
            let raw = raw_rate(&store, dir.path(), args.connections, seconds)?;
            drop(services);
            let ms =
                |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let m = Measured {
                run,
                design,
                offered,
                open_ok: open.ok,
                open_failed: open.failed,
                open_rate: open.ok as f64 / open_s,
                open_p50_ms: ms(&open.latency, 0.5),
                open_p99_ms: ms(&open.latency, 0.99),
                closed_rate,
                raw,
                closed_failed: closed.failed,
                closed_p99_ms: ms(&closed.latency, 0.99),
            };
            eprintln!(
                "run {run} {design:?}: open {:.0}/s p99 {:.2} ms ({} failed); saturation {:.0}/s ({} failed)",
                m.open_rate, m.open_p99_ms, m.open_failed, m.closed_rate, m.closed_failed
            );
            out.push(m);
        }
    }
    Ok(out)
}

pub fn table(args: &CompareBench, results: &[Measured]) -> String {
    let (rate, seconds) = if args.smoke {
        (1_000, 2)
    } else {
        (args.rate, args.seconds)
    };
    let mut s = format!(
        "One region, durable purchases over HTTP, {} connections. Open loop at {rate}/s for {seconds} s \
         (latency from each request's due time), then a closed loop for {seconds} s (saturation).\n\n\
         A design that saturates below {rate}/s is offered 80% of its saturation instead (the \
         `offered/s` column). `store alone/s`: the store under a central design driven by its own \
         tool (`redis-benchmark` of the Lua script with as many connections, `pgbench` of the \
         statement with the design's 32).\n\n\
         | run | design | saturation/s | saturation: errors | saturation: p99 ms | offered/s | open: 201 | open: errors | open: achieved/s | open: p50 ms | open: p99 ms | store alone/s |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        args.connections
    );
    for m in results {
        s += &format!(
            "| {} | {:?} | {:.0} | {} | {:.2} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |\n",
            m.run,
            m.design,
            m.closed_rate,
            m.closed_failed,
            m.closed_p99_ms,
            m.offered,
            m.open_ok,
            m.open_failed,
            m.open_rate,
            m.open_p50_ms,
            m.open_p99_ms,
            m.raw.map_or("–".into(), |r| format!("{r:.0}")),
        );
    }
    let of = |d: Design, f: &dyn Fn(&Measured) -> f64| {
        median(results.iter().filter(|m| m.design == d).map(f).collect())
    };
    let redis_sat = of(Design::Redis, &|m| m.closed_rate);
    let redis_p99 = of(Design::Redis, &|m| m.open_p99_ms);
    s += "\nMedians per design, and ratios to the Redis design (same run, same generator):\n\n\
          | design | saturation/s | saturation vs Redis | offered/s | open-loop p99 ms | p99 vs Redis | store alone/s | saturation vs raw Redis |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
    let raw_redis = of(Design::Redis, &|m| m.raw.unwrap_or(f64::NAN));
    for &d in &args.designs {
        let (sat, p99) = (of(d, &|m| m.closed_rate), of(d, &|m| m.open_p99_ms));
        let raw = of(d, &|m| m.raw.unwrap_or(f64::NAN));
        let offered = of(d, &|m| m.offered as f64);
        // p99s compare only at the same offered rate.
        let p99_ratio = if offered == of(Design::Redis, &|m| m.offered as f64) {
            format!("{:.2}", p99 / redis_p99)
        } else {
            "–".to_owned()
        };
        s += &format!(
            "| {d:?} | {sat:.0} | {:.2} | {offered:.0} | {p99:.2} | {p99_ratio} | {} | {:.2} |\n",
            sat / redis_sat,
            if raw.is_nan() {
                "–".to_owned()
            } else {
                format!("{raw:.0}")
            },
            sat / raw_redis,
        );
    }
    s
}

/// What `bench compare` found: the Markdown report, and the broken bars of safety (failed
/// purchases where none may fail, a fault run's audit that did not pass).
pub struct Report {
    pub markdown: String,
    pub problems: Vec<String>,
}

/// Runs the chosen parts in order; each part's table is in the report.
pub async fn run_parts(args: &CompareBench) -> anyhow::Result<Report> {
    let mut report = Report {
        markdown: String::new(),
        problems: Vec::new(),
    };
    // Before the long parts: a host without namespaces learns it at once, not after them.
    if args.parts.contains(&Part::Wan) || args.parts.contains(&Part::Faults) {
        drop(crate::wan::Fabric::create(1)?);
    }
    if args.parts.contains(&Part::Region) {
        let results = run(args).await?;
        report.markdown += &table(args, &results);
        // Every design must have answered its whole load (a p99 over the 201s alone would
        // flatter a design that fails): a run with errors, or with nothing answered, fails.
        for m in &results {
            if m.open_ok == 0 || m.closed_rate < 1.0 || m.open_failed > 0 || m.closed_failed > 0 {
                report.problems.push(format!(
                    "one region: the {:?} design failed purchases ({} in the open loop, {} at saturation) or answered none",
                    m.design, m.open_failed, m.closed_failed
                ));
            }
        }
    }
    if args.parts.contains(&Part::Wan) {
        let settings = WanSettings {
            rate_per_region: if args.smoke { 100.0 } else { args.wan_rate },
            seconds: if args.smoke { 6.0 } else { args.wan_seconds },
            runs: if args.smoke { 1 } else { args.runs.max(1) },
            designs: args.designs.clone(),
        };
        let results = compare_wan(&settings).await?;
        report.markdown += "\n";
        report.markdown += &wan_table(&settings, &results)?;
        for m in &results {
            if m.outcome.failures() > 0 {
                report.problems.push(format!(
                    "WAN run {}: {} buyers of the {:?} design saw failures: {:?}",
                    m.run,
                    crate::wan::Regions::standard().names[m.region],
                    m.design,
                    m.outcome.failed
                ));
            }
        }
    }
    if args.parts.contains(&Part::Faults) {
        let settings = FaultSettings {
            rate: if args.smoke { 300.0 } else { args.fault_rate },
            seconds: if args.smoke { 8.0 } else { args.fault_seconds },
            faults: if args.smoke {
                vec![Fault::Kill]
            } else if args.faults.is_empty() {
                let all = <Fault as clap::ValueEnum>::value_variants();
                let (can, cannot): (Vec<Fault>, Vec<Fault>) =
                    all.iter().partition(|f| f.available());
                if !cannot.is_empty() {
                    eprintln!("bench compare: skipping {cannot:?}: they need a build with --features fault-switch");
                }
                can
            } else {
                args.faults.clone()
            },
        };
        let runs = run_faults(&settings).await?;
        report.markdown += "\n";
        report.markdown += &fault_table(&settings, &runs);
        for r in &runs {
            let failed: u64 = r.outcomes.iter().map(|o| o.failures()).sum();
            if failed > 0 {
                report.problems.push(format!(
                    "fault run `{}`: {failed} purchases failed for good (a minute of retries)",
                    r.what
                ));
            }
            if !r.audit.passed() {
                report.problems.push(format!(
                    "fault run `{}`: the audit failed: {:?}",
                    r.what, r.audit
                ));
            }
        }
    }
    if args.parts.contains(&Part::Overload) {
        let seconds = if args.smoke { 2 } else { args.seconds };
        let curve = crate::overload_curve::run(seconds, args.overload_commit_window_us).await?;
        report.markdown += "\n";
        report.markdown += &curve.table(seconds);
        if let Some(path) = &args.overload_svg {
            std::fs::write(path, curve.svg())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if curve
            .steps
            .iter()
            .any(|s| s.other_failed > 0 || s.improper_sheds > 0)
        {
            report.problems.push(
                "overload: purchases failed other than by a 503 `overloaded` with Retry-After"
                    .into(),
            );
        }
    }
    Ok(report)
}
