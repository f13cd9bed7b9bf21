//! `allot node`: one region's node — the store, the core's drivers and the HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use allot_node::Config;
use anyhow::Context;

use crate::config::ClusterConfig;
use crate::driver::{self, Commit, Durability, Faults, Outbound};
use crate::http::{self, AppState};
use crate::store::{Store, StoreOptions};
use crate::tls::Identity;
use crate::transport::{LinkTiming, NetFaults, PeerAddr, Transport};

/// See [`Durability::window`]; `allot node --commit-window-us` overrides it.
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_micros(0);

/// Another region, as this node reaches it.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    pub http: SocketAddr,
    pub quic: SocketAddr,
}

/// Everything a node needs, whether it came from regions.toml or from a test.
pub struct NodeOptions {
    pub region: String,
    pub regions: Vec<String>,
    pub catalog_region: String,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub tick: Duration,
    pub admin_token: Option<String>,
    pub commit: Commit,
    /// See [`Durability::window`].
    pub commit_window: Duration,
    pub max_holds_per_customer: u32,
    pub max_quantity: u64,
    /// Buyers' writes taken at once; past it, 503 `overloaded` (`admission.rs`).
    pub max_in_flight: usize,
    /// Test-only fault injection; `Faults::default()` everywhere else.
    pub faults: Faults,
    pub quic: SocketAddr,
    /// The QUIC socket, already bound (to `quic`): a caller that must know every region's
    /// address before any node starts binds them first, so no other process can take a port
    /// between choosing it and using it. Bound from `quic` at start when `None`.
    pub quic_socket: Option<std::net::UdpSocket>,
    pub peers: Vec<Peer>,
    /// `ca.pem`, `<region>.pem`, `<region>.key`; without it the node runs alone.
    pub tls_dir: Option<PathBuf>,
    pub reconnect_max: Duration,
    /// The largest round trip of `[latency_ms]`: links stay up through at least 4 of them.
    pub largest_rtt: Duration,
    /// Test-only switch that cuts links to peers.
    pub net_faults: Arc<NetFaults>,
    /// The idempotency TTL and RocksDB's memory bounds.
    pub store: StoreOptions,
    /// Whether this region's rebalancer asks peers for quota and grants their asks.
    pub rebalance: bool,
    /// Whether buyers' requests this region cannot cover go to a region that can.
    pub forwarding: bool,
    /// Round trips to the other regions, from `[latency_ms]`: where to forward first.
    pub peer_rtt_ms: BTreeMap<String, u64>,
}

impl NodeOptions {
    /// A node on loopback with the defaults of `regions.toml` (first region as catalog, group
    /// commit, 50 ms ticks, no peers, no TLS): the demo and tests adjust what they need.
    pub fn local(
        region: &str,
        regions: &[String],
        http: SocketAddr,
        data_dir: PathBuf,
        admin_token: Option<String>,
    ) -> NodeOptions {
        NodeOptions {
            region: region.to_owned(),
            regions: regions.to_vec(),
            catalog_region: regions
                .first()
                .cloned()
                .unwrap_or_else(|| region.to_owned()),
            http,
            data_dir,
            tick: Duration::from_millis(50),
            admin_token,
            commit: Commit::Group,
            commit_window: DEFAULT_COMMIT_WINDOW,
            max_holds_per_customer: 5,
            max_quantity: 20,
            max_in_flight: crate::admission::DEFAULT_MAX_IN_FLIGHT,
            faults: Faults::default(),
            quic: SocketAddr::from(([127, 0, 0, 1], 0)),
            quic_socket: None,
            peers: Vec::new(),
            tls_dir: None,
            reconnect_max: Duration::from_millis(250),
            largest_rtt: Duration::ZERO,
            net_faults: Arc::default(),
            store: StoreOptions::default(),
            rebalance: true,
            forwarding: true,
            peer_rtt_ms: BTreeMap::new(),
        }
    }

    pub fn from_config(path: &Path, region: &str, commit: Commit) -> anyhow::Result<NodeOptions> {
        let cfg = ClusterConfig::load(path)?;
        let r = cfg.region(region)?;
        let admin_token = match &cfg.cluster.admin_token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the operator token file {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("ALLOT_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        Ok(NodeOptions {
            region: region.to_owned(),
            regions: cfg.region_names(),
            catalog_region: cfg.catalog_region(),
            http: r.http,
            data_dir: r.data_dir.clone(),
            tick: Duration::from_millis(cfg.cluster.gossip_interval_ms.max(1)),
            admin_token,
            commit,
            commit_window: DEFAULT_COMMIT_WINDOW,
            max_holds_per_customer: cfg.cluster.max_holds_per_customer,
            max_quantity: cfg.cluster.max_quantity,
            max_in_flight: cfg.cluster.max_in_flight,
            faults: Faults::default(),
            quic: r.quic,
            quic_socket: None,
            peers: cfg
                .regions
                .iter()
                .filter(|p| p.name != region)
                .map(|p| Peer {
                    name: p.name.clone(),
                    http: p.http,
                    quic: p.quic,
                })
                .collect(),
            tls_dir: cfg.cluster.tls_dir.clone(),
            reconnect_max: Duration::from_millis(cfg.cluster.reconnect_max_ms.max(1)),
            largest_rtt: Duration::from_millis(cfg.latency_ms.values().copied().max().unwrap_or(0)),
            net_faults: Arc::default(),
            store: StoreOptions {
                key_ttl_ms: cfg.cluster.idempotency_ttl_s.max(1).saturating_mul(1000),
                block_cache_bytes: cfg.cluster.store_block_cache_mib.max(1) << 20,
                memtable_bytes: cfg.cluster.store_memtable_mib.max(4) << 20,
                direct_writes: cfg.cluster.store_direct_writes,
            },
            rebalance: cfg.cluster.rebalance,
            forwarding: cfg.cluster.forwarding,
            peer_rtt_ms: cfg
                .latency_ms
                .iter()
                .filter_map(|(pair, &ms)| {
                    let (a, b) = pair.split_once('/')?;
                    let peer = if a == region {
                        b
                    } else if b == region {
                        a
                    } else {
                        return None;
                    };
                    Some((peer.to_owned(), ms))
                })
                .collect(),
        })
    }
}

/// The rebalancer's tuning for this cluster: it asks while the stock left would last a few
/// of the slowest round trips plus gossip ticks, so a grant lands before the last sale.
fn rebalance_tuning(opts: &NodeOptions) -> allot_node::policy::Tuning {
    let defaults = allot_node::policy::Tuning::default();
    let round_trips = 4 * opts.largest_rtt.as_millis() as u64 + 4 * opts.tick.as_millis() as u64;
    allot_node::policy::Tuning {
        lead_ms: defaults.lead_ms.max(round_trips),
        max_order: opts.max_quantity,
        ..defaults
    }
}

/// Runs a node until `shutdown` resolves, then stops accepting requests, lets in-flight ones
/// finish and their writes land, and returns.
pub async fn run(
    opts: NodeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.http)
        .await
        .with_context(|| format!("binding {}", opts.http))?;
    serve(opts, listener, shutdown).await
}

pub async fn serve(
    mut opts: NodeOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = Store::open(&opts.data_dir, opts.store)?;
    let mut cfg = Config::new(&opts.region, &opts.regions);
    cfg.catalog_region = opts.catalog_region.clone();
    cfg.max_holds_per_customer = opts.max_holds_per_customer;
    cfg.max_quantity = opts.max_quantity;
    cfg.rebalance = opts.rebalance.then(|| rebalance_tuning(&opts));
    cfg.forwarding = opts.forwarding;
    cfg.peer_rtt_ms = opts.peer_rtt_ms.clone();
    let outbound: Outbound = Arc::default();
    let metrics = crate::metrics::Metrics::new();
    if cfg!(feature = "fault-switch") {
        tracing::warn!(
            "built with the fault-switch feature: POST /v1/admin/faults can slow or fail this \
             node's syncs (a test build, never for production)"
        );
    }
    let sync_switch = opts.faults.switch.clone();
    let running = driver::start(
        cfg,
        store,
        opts.store.key_ttl_ms,
        opts.tick,
        Durability {
            commit: opts.commit,
            window: opts.commit_window,
        },
        opts.faults,
        outbound.clone(),
        metrics.commit.clone(),
    )?;
    if opts.admin_token.is_none() {
        tracing::warn!("no operator token (ALLOT_ADMIN_TOKEN): operator endpoints answer 401");
    }
    let transport = match (&opts.tls_dir, opts.peers.is_empty()) {
        (Some(dir), false) => {
            let identity = Identity::load(dir, &opts.region)?;
            let peers = opts
                .peers
                .iter()
                .map(|p| PeerAddr {
                    name: p.name.clone(),
                    quic: p.quic,
                })
                .collect();
            let (h1, h2) = (running.handle.clone(), running.handle.clone());
            let t = Arc::new(Transport::start(
                &opts.region,
                match opts.quic_socket.take() {
                    Some(s) => s,
                    None => std::net::UdpSocket::bind(opts.quic)
                        .with_context(|| format!("binding QUIC on {}", opts.quic))?,
                },
                peers,
                &identity,
                LinkTiming::new(opts.reconnect_max, opts.largest_rtt),
                opts.net_faults.clone(),
                move |from, message| h1.deliver(from, message),
                move |peer| h2.peer_reset(peer),
            )?);
            let sender = t.clone();
            let _ = outbound.set(Box::new(move |peer, message| sender.send(&peer, message)));
            tracing::info!(quic = %t.local_addr()?, "gossip endpoint up");
            Some(t)
        }
        (None, false) => {
            tracing::warn!("no tls_dir in [cluster]: this node runs alone, without gossip");
            None
        }
        _ => None,
    };
    let state = Arc::new(AppState {
        core: running.handle.clone(),
        region: opts.region.clone(),
        admin_token: opts.admin_token,
        transport: transport.as_ref().map(|t| t.status.clone()),
        metrics,
        sessions: crate::dashboard::Sessions::new(&opts.region),
        history: Default::default(),
        admission: crate::admission::Admission::new(opts.max_in_flight),
        sync_switch,
    });
    tokio::spawn(crate::dashboard::sample_history(Arc::downgrade(&state)));
    let app = http::router(state);
    let addr = listener.local_addr()?;
    tracing::info!(region = %opts.region, %addr, commit = ?opts.commit, "serving");
    // Answers are small and go out whole: no reason to let Nagle hold one back.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")?;
    tracing::info!("HTTP stopped; finishing in-flight writes");
    if let Some(t) = &transport {
        t.close();
    }
    tokio::task::spawn_blocking(move || running.shutdown()).await?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
