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
#[command(name = "allot", version, about = "Sell a fixed stock of seats from several regions at once, without overbooking.")]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum BenchVerb {
    /// Purchases over HTTP against fresh nodes: group commit against one fsync per request.
    Http(bench::HttpBench),
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
        /// Purchases per second.
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
        scenario: PathBuf,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        seeds: Option<String>,
        #[arg(long)]
        strategy: Option<String>,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// The load and comparison harness.
    #[command(subcommand)]
    Bench(BenchVerb),
}

fn not_built(verb: &str, issue: &str) -> ExitCode {
    eprintln!("allot {verb}: not built yet (tracked by the issue \"{issue}\"). Nothing was done.");
    ExitCode::from(2)
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

fn run_node(config: &std::path::Path, region: &str, commit: driver::Commit) -> anyhow::Result<()> {
    let opts = node::NodeOptions::from_config(config, region, commit)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(node::run(opts, node::signal()))
}

fn run_demo(data: Option<PathBuf>, seconds: Option<u64>, rate: u64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(demo::run(data, seconds, rate))
}

fn make_certs(config: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let cfg = allot::config::ClusterConfig::load(config)?;
    allot::tls::generate(&cfg.region_names(), out)?;
    println!("wrote ca.pem, ca.key and a certificate and key for {} into {}", cfg.region_names().join(", "), out.display());
    Ok(())
}

fn run_bench(args: &bench::HttpBench) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let results = rt.block_on(bench::run(args))?;
    let table = bench::table(args, &results);
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Verb::Demo { data, seconds, rate } => report("demo", run_demo(data, seconds, rate)),
        Verb::Node { config, region, commit } => report("node", run_node(&config, &region, commit)),
        Verb::Certs { config, out } => report("certs", make_certs(&config, &out)),
        Verb::Sim { .. } => not_built("sim", "The partition simulator"),
        Verb::Bench(BenchVerb::Http(args)) => report("bench http", run_bench(&args)),
    }
}
