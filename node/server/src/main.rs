//! `allot`: the one binary. CLI parsing and drivers; the logic lives in `allot-node`.

use allot::{bench, demo, driver, node};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the core allocates small objects per sale (orders, deltas); glibc's allocator
/// spent a fifth of the core benchmark in consolidation and chunk unlinking.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "allot",
    version,
    about = "Sell a fixed stock of seats from several regions at once, without overbooking."
)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SimStrategy {
    /// Allotments never move.
    Static,
    /// The regions' rebalancer moves quota by demand (what a node does).
    Rebalance,
    /// An operator moves quota by hand every second.
    Operator,
    /// One home region owns everything; every sale is a round trip to it.
    Central,
}

#[derive(Subcommand)]
enum BenchVerb {
    /// Purchases over HTTP against fresh nodes: group commit against one fsync per request.
    Http(bench::HttpBench),
    /// Memory and SIGKILL-to-ready time of a node after selling N keyed orders.
    Restart(allot::bench_restart::RestartBench),
    /// One region: allot's node against the central designs (Redis, PostgreSQL) behind the
    /// same HTTP API, same generator, same run (scripts/bench-deps.sh installs the stores).
    Compare(allot::compare::CompareBench),
}

#[derive(Subcommand)]
enum Verb {
    /// Three real nodes on loopback, a sample event and a gentle generated load.
    Demo {
        /// Keep certificates and data here instead of in a temp dir.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Purchases per second (0: none, the nodes only serve). The operator token is
        /// `ALLOT_ADMIN_TOKEN` when set, else a throwaway one printed at start.
        #[arg(long, default_value_t = 20)]
        rate: u64,
    },
    /// One region's node.
    Node {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        region: String,
        /// `group`: concurrent writes share one synced write; `per-request`: one each (a baseline).
        #[arg(long, value_enum, default_value_t = driver::Commit::Group)]
        commit: driver::Commit,
        /// Threads serving HTTP (default: one per CPU but one, which the core and the disk
        /// threads use; fewer threads trading work means fewer context switches).
        #[arg(long)]
        http_threads: Option<usize>,
        /// With group commit, at most one synced write per this many microseconds: fewer,
        /// larger writes under load, at the price of up to one window of latency.
        #[arg(long)]
        commit_window_us: Option<u64>,
    },
    /// A cluster CA and one certificate per region.
    Certs {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// The partition simulator.
    Sim {
        /// A scenario file (see sim/scenarios/).
        scenario: PathBuf,
        /// One run with this seed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Fuzz mode: seeds A..B (B excluded), random faults each, invariants after every step.
        #[arg(long)]
        seeds: Option<String>,
        #[arg(long, value_enum, default_value = "rebalance")]
        strategy: SimStrategy,
        /// Write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// An SVG of per-region sellable quota over time.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Fuzz mode: stop after this many seconds even if seeds remain.
        #[arg(long)]
        max_seconds: Option<u64>,
    },
    /// The load and comparison harness.
    #[command(subcommand)]
    Bench(BenchVerb),
    /// A central design's HTTP front (what `bench compare` measures allot against): every
    /// pool's count in one Redis or PostgreSQL.
    Central(allot::central::CentralArgs),
}

fn report(verb: &str, r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allot {verb}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(
    config: &std::path::Path,
    region: &str,
    commit: driver::Commit,
    http_threads: Option<usize>,
    commit_window_us: Option<u64>,
) -> anyhow::Result<()> {
    let mut opts = node::NodeOptions::from_config(config, region, commit)?;
    if let Some(us) = commit_window_us {
        opts.commit_window = std::time::Duration::from_micros(us);
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = http_threads.unwrap_or(cpus.saturating_sub(1)).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(node::run(opts, node::signal()))
}

fn run_demo(data: Option<PathBuf>, seconds: Option<u64>, rate: u64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(demo::run(data, seconds, rate))
}

fn make_certs(config: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let cfg = allot::config::ClusterConfig::load(config)?;
    allot::tls::generate(&cfg.region_names(), out)?;
    println!(
        "wrote ca.pem, ca.key and a certificate and key for {} into {}",
        cfg.region_names().join(", "),
        out.display()
    );
    Ok(())
}

fn run_sim(
    path: &std::path::Path,
    seed: Option<u64>,
    seeds: Option<&str>,
    strategy: SimStrategy,
    json: Option<&std::path::Path>,
    plot: Option<&std::path::Path>,
    max_seconds: Option<u64>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let sc = allot_sim::Scenario::parse(&text)?;
    let strategy = match strategy {
        SimStrategy::Static => allot_sim::Strategy::Static,
        SimStrategy::Rebalance => allot_sim::Strategy::Rebalance,
        SimStrategy::Operator => allot_sim::Strategy::Operator,
        SimStrategy::Central => allot_sim::Strategy::Central,
    };
    if let Some(range) = seeds {
        let (a, b) = range.split_once("..").context("--seeds A..B")?;
        let (a, b): (u64, u64) = (
            a.parse().context("--seeds A..B: A")?,
            b.parse().context("--seeds A..B: B")?,
        );
        let start = std::time::Instant::now();
        let mut done = 0u64;
        for s in a..b {
            if max_seconds.is_some_and(|m| start.elapsed().as_secs() >= m) {
                break;
            }
            let r = allot_sim::fuzz::run_seed(&sc, strategy, s);
            done += 1;
            if !r.violations.is_empty() {
                println!("{}", r.table());
                let strat = format!("{:?}", r.strategy).to_lowercase();
                anyhow::bail!(
                    "seed {s} violates an invariant: {}\nreplay: allot sim {} --seeds {s}..{} --strategy {strat}",
                    r.violations[0],
                    path.display(),
                    s + 1
                );
            }
            if done.is_multiple_of(20) || s + 1 == b {
                let total = (b - a).max(1);
                let filled = (done * 30 / total) as usize;
                eprint!(
                    "\r[{}{}] {done}/{total} seeds, no violation",
                    "#".repeat(filled),
                    " ".repeat(30 - filled.min(30))
                );
            }
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!();
        println!(
            "{done} seeds ({a}..{}), zero violations, {:.0} seeds/minute",
            a + done,
            done as f64 * 60.0 / secs.max(1e-9)
        );
        return Ok(());
    }
    let seed = seed.unwrap_or(1);
    let start = std::time::Instant::now();
    let r = allot_sim::run(&sc, strategy, seed);
    let secs = start.elapsed().as_secs_f64();
    print!("{}", r.table());
    println!(
        "  {:<24} {:.0} simulated sales/s ({} orders in {:.2} s)",
        "speed",
        r.orders as f64 / secs.max(1e-9),
        r.orders,
        secs
    );
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_string_pretty(&r)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = plot {
        let svg = allot_sim::plot::svg(&r).map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
        std::fs::write(p, svg).with_context(|| format!("writing {}", p.display()))?;
    }
    if !r.violations.is_empty() {
        anyhow::bail!("invariant violated: {}", r.violations[0]);
    }
    Ok(())
}

fn run_restart(args: &allot::bench_restart::RestartBench) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(allot::bench_restart::run(args))?;
    let table = allot::bench_restart::table(&results);
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)?;
    }
    Ok(())
}

fn run_compare(args: &allot::compare::CompareBench) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // On Ctrl-C or SIGTERM the run is dropped, and with it every process, namespace and temp
    // dir it made.
    let report = rt.block_on(async {
        tokio::select! {
            r = allot::compare::run_parts(args) => r,
            _ = allot::node::signal() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    println!("{}", report.markdown);
    if let Some(path) = &args.markdown {
        std::fs::write(path, &report.markdown)?;
    }
    if !report.problems.is_empty() {
        anyhow::bail!("{}", report.problems.join("\n"));
    }
    Ok(())
}

fn run_central(args: &allot::central::CentralArgs) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus.saturating_sub(1).max(1))
        .enable_all()
        .build()?;
    rt.block_on(allot::central::serve(args))
}

fn run_bench(args: &bench::HttpBench) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    let results = rt.block_on(bench::run(args))?;
    let table = bench::table(args, &results);
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)?;
    }
    Ok(())
}

/// Transparent huge pages off for this process. mimalloc asks for them on its arenas, and a
/// fault on a fresh huge page zeroes 2 MiB in one go: on the benchmark VM that held a request
/// handler for 5-7 ms about every 10,000 sales, which was most of the p99 at 20,000
/// purchases/s (docs/benchmarks.md). With 4 KiB pages the same cost is spread thinly.
fn no_huge_page_stalls() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!("cannot turn transparent huge pages off: {e}");
    }
}

/// RocksDB allocates through the C allocator (the Rust side uses mimalloc). glibc raises its
/// mmap threshold each time a large block is freed, so after the first memtable flush every
/// memtable arena block (2 MiB then, 1 MiB now: `ARENA_BLOCK_BYTES` in store.rs) came from the
/// heap and stayed there once freed: a node that had sold 1,000,000 orders kept ~30 MiB more
/// than RocksDB reported using (docs/benchmarks.md, "Memory and restart"). A fixed threshold
/// keeps large blocks in their own mappings, which go back to the OS when freed.
fn return_large_frees_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn main() -> ExitCode {
    return_large_frees_to_the_os();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    no_huge_page_stalls();
    let cli = Cli::parse();
    match cli.command {
        Verb::Demo {
            data,
            seconds,
            rate,
        } => report("demo", run_demo(data, seconds, rate)),
        Verb::Node {
            config,
            region,
            commit,
            http_threads,
            commit_window_us,
        } => report(
            "node",
            run_node(&config, &region, commit, http_threads, commit_window_us),
        ),
        Verb::Certs { config, out } => report("certs", make_certs(&config, &out)),
        Verb::Sim {
            scenario,
            seed,
            seeds,
            strategy,
            json,
            plot,
            max_seconds,
        } => report(
            "sim",
            run_sim(
                &scenario,
                seed,
                seeds.as_deref(),
                strategy,
                json.as_deref(),
                plot.as_deref(),
                max_seconds,
            ),
        ),
        Verb::Bench(BenchVerb::Http(args)) => report("bench http", run_bench(&args)),
        Verb::Bench(BenchVerb::Restart(args)) => report("bench restart", run_restart(&args)),
        Verb::Bench(BenchVerb::Compare(args)) => report("bench compare", run_compare(&args)),
        Verb::Central(args) => report("central", run_central(&args)),
    }
}
