//! `regions.toml`: the cluster's regions, addresses and hints. Paths are relative to the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: String,
    #[serde(default)]
    pub catalog_region: Option<String>,
    #[serde(default = "default_gossip")]
    pub gossip_interval_ms: u64,
    #[serde(default = "default_reconnect")]
    pub reconnect_max_ms: u64,
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    /// A file holding the operator token, instead of `ALLOT_ADMIN_TOKEN`.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    #[serde(default = "default_hold_cap")]
    pub max_holds_per_customer: u32,
    #[serde(default = "default_max_quantity")]
    pub max_quantity: u64,
    /// Buyers' writes a node takes at once; past it, 503 `overloaded` with `Retry-After`.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long an `Idempotency-Key`'s first answer is kept (default 24 h).
    #[serde(default = "default_key_ttl")]
    pub idempotency_ttl_s: u64,
    /// RocksDB's block cache, shared by every column family (MiB).
    #[serde(default = "default_cache_mib")]
    pub store_block_cache_mib: usize,
    /// RocksDB's memtables, all column families together (MiB).
    #[serde(default = "default_memtable_mib")]
    pub store_memtable_mib: usize,
    /// Whether RocksDB writes its tables around the page cache when the file system takes
    /// direct writes (default false: through it; docs/operations.md).
    #[serde(default)]
    pub store_direct_writes: bool,
    /// Whether regions move unsold quota to where the buyers are by themselves (default
    /// true); off, allotments move only by an operator's transfer.
    #[serde(default = "default_true")]
    pub rebalance: bool,
    /// Whether a region that cannot cover a buyer's request sends it to a region that can
    /// (default true); off, it answers `sold-out` from its own quota alone.
    #[serde(default = "default_true")]
    pub forwarding: bool,
}

fn default_true() -> bool {
    true
}

fn default_key_ttl() -> u64 {
    24 * 3600
}
fn default_cache_mib() -> usize {
    64
}
fn default_memtable_mib() -> usize {
    32
}

fn default_gossip() -> u64 {
    50
}
fn default_reconnect() -> u64 {
    250
}
fn default_hold_cap() -> u32 {
    5
}
fn default_max_in_flight() -> usize {
    crate::admission::DEFAULT_MAX_IN_FLIGHT
}
fn default_max_quantity() -> u64 {
    20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSection {
    pub name: String,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster: ClusterSection,
    #[serde(rename = "region")]
    pub regions: Vec<RegionSection>,
    #[serde(default)]
    pub latency_ms: BTreeMap<String, u64>,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> anyhow::Result<ClusterConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: ClusterConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for r in &mut cfg.regions {
            if r.data_dir.is_relative() {
                r.data_dir = base.join(&r.data_dir);
            }
        }
        if let Some(t) = &mut cfg.cluster.tls_dir {
            if t.is_relative() {
                *t = base.join(&*t);
            }
        }
        if let Some(t) = &mut cfg.cluster.admin_token_file {
            if t.is_relative() {
                *t = base.join(&*t);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.regions.is_empty() {
            bail!("no [[region]] in the config");
        }
        for (i, r) in self.regions.iter().enumerate() {
            if !allot_crdt::valid_id(&r.name) {
                bail!(
                    "region name {:?}: 1-64 characters of A-Z a-z 0-9 - _ .",
                    r.name
                );
            }
            if self.regions[..i].iter().any(|o| o.name == r.name) {
                bail!("region {:?} is listed twice", r.name);
            }
        }
        if let Some(c) = &self.cluster.catalog_region {
            if !self.regions.iter().any(|r| &r.name == c) {
                bail!("catalog_region {c:?} is not a [[region]]");
            }
        }
        Ok(())
    }

    pub fn region_names(&self) -> Vec<String> {
        self.regions.iter().map(|r| r.name.clone()).collect()
    }

    pub fn region(&self, name: &str) -> anyhow::Result<&RegionSection> {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .with_context(|| {
                format!(
                    "region {name:?} is not in the config (regions: {})",
                    self.region_names().join(", ")
                )
            })
    }

    pub fn catalog_region(&self) -> String {
        self.cluster
            .catalog_region
            .clone()
            .unwrap_or_else(|| self.regions[0].name.clone())
    }
}
