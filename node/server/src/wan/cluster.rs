//! allot over the emulated WAN: one real `allot node` process per region, inside its
//! region's namespace, its QUIC peers reachable only through the delay relay. The bench
//! kills, restarts, pauses and partitions them through this type.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::netns::Fabric;
use super::relay::{Link, Relay};
use super::Regions;

const HTTP_PORT: u16 = 7100;
const QUIC_PORT: u16 = 7200;

pub struct Cluster {
    pub regions: Regions,
    /// Each region's HTTP address, reachable from the root namespace (the buyers').
    pub http: Vec<SocketAddr>,
    nodes: Vec<Option<Child>>,
    commands: Vec<std::process::Command>,
    links: BTreeMap<(usize, usize), Arc<Link>>,
    token: String,
    /// Each node's stderr, for the message when one does not come up.
    logs: Vec<std::path::PathBuf>,
    _relay: Relay,
    client: reqwest::Client,
}

impl Cluster {
    /// Writes each region's config into `dir` (its peers at the relay's addresses), starts
    /// the relays and the nodes, and waits until every node is ready.
    pub async fn start(
        fabric: &Fabric,
        regions: &Regions,
        dir: &Path,
        token: &str,
    ) -> anyhow::Result<Cluster> {
        let n = regions.names.len();
        let names = &regions.names;
        crate::tls::generate(names, &dir.join("certs"))?;
        let mut relay = Relay::default();
        let mut links = BTreeMap::new();
        for i in 0..n {
            for j in i + 1..n {
                links.insert((i, j), Link::new(regions.rtt(i, j)));
            }
        }
        let inside =
            |i: usize, port: u16| SocketAddr::new(IpAddr::V4(fabric.regions[i].inside), port);
        let exe = std::env::current_exe().context("locating the allot binary")?;
        let mut commands = Vec::new();
        let mut logs = Vec::new();
        for i in 0..n {
            let mut toml = format!(
                "[cluster]\nname = \"wan\"\ncatalog_region = \"{}\"\ngossip_interval_ms = 50\n\
                 reconnect_max_ms = 250\ntls_dir = \"certs\"\nrebalance = true\nforwarding = true\n",
                names[0]
            );
            for j in 0..n {
                let quic = if i == j {
                    inside(j, QUIC_PORT)
                } else {
                    let link = links[&(i.min(j), i.max(j))].clone();
                    relay
                        .udp(
                            IpAddr::V4(fabric.regions[i].outside),
                            IpAddr::V4(fabric.regions[j].outside),
                            inside(j, QUIC_PORT),
                            link,
                        )
                        .await?
                };
                toml += &format!(
                    "\n[[region]]\nname = \"{}\"\nhttp = \"{}\"\nquic = \"{quic}\"\ndata_dir = \"data-{}\"\n",
                    names[j],
                    inside(j, HTTP_PORT),
                    names[j]
                );
            }
            toml += "\n[latency_ms]\n";
            for &(a, b) in links.keys() {
                toml += &format!(
                    "\"{}/{}\" = {}\n",
                    names[a],
                    names[b],
                    regions.rtt(a, b).as_millis()
                );
            }
            let config = dir.join(format!("{}.toml", names[i]));
            std::fs::write(&config, toml)?;
            let log_path = dir.join(format!("{}.log", names[i]));
            let log = std::fs::File::create(&log_path)?;
            logs.push(log_path);
            let mut cmd = fabric.command(i, &exe);
            crate::bench::dies_with_bench(&mut cmd)
                .args(["node", "--config"])
                .arg(&config)
                .args(["--region", &names[i]])
                .env("ALLOT_ADMIN_TOKEN", token)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            commands.push(cmd);
        }
        let mut cluster = Cluster {
            regions: regions.clone(),
            http: (0..n).map(|i| inside(i, HTTP_PORT)).collect(),
            nodes: (0..n).map(|_| None).collect(),
            commands,
            links,
            token: token.to_owned(),
            logs,
            _relay: relay,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    pub fn base(&self, i: usize) -> String {
        format!("http://{}", self.http[i])
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self.commands[i]
            .spawn()
            .with_context(|| format!("starting the {} node", self.regions.names[i]))?;
        self.nodes[i] = Some(child);
        Ok(())
    }

    pub async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        crate::bench::wait_ready(&self.client, &self.base(i))
            .await
            .with_context(|| {
                let log = std::fs::read_to_string(&self.logs[i]).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                format!(
                    "the {} node (its last log lines: {})",
                    self.regions.names[i],
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )
            })
    }

    /// Waits until region `i` knows `event` (it arrives there by gossip).
    pub async fn wait_event(&self, i: usize, event: &str) -> anyhow::Result<()> {
        let url = format!("{}/v1/events/{event}", self.base(i));
        for _ in 0..300 {
            if let Ok(r) = self.client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "{} did not learn of {event} within 30 s",
            self.regions.names[i]
        )
    }

    /// Switches region `i`'s sync faults (`POST /v1/admin/faults`, a `fault-switch` build's).
    pub async fn sync_faults(
        &self,
        i: usize,
        delay: Duration,
        failing: bool,
    ) -> anyhow::Result<()> {
        let r = self
            .client
            .post(format!("{}/v1/admin/faults", self.base(i)))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"sync_delay_ms": delay.as_millis() as u64, "fail_syncs": failing}))
            .send()
            .await?;
        if !r.status().is_success() {
            anyhow::bail!(
                "switching sync faults at {}: {}",
                self.regions.names[i],
                r.status()
            );
        }
        Ok(())
    }

    fn signal(&self, i: usize, signal: libc::c_int) -> anyhow::Result<()> {
        let child = self.nodes[i].as_ref().context("the node is not running")?;
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) on our own child's pid, which is not reaped while `child` lives.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("signalling the node");
        }
        Ok(())
    }

    /// SIGKILL: the process dies without a word; only what it synced survives.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, libc::SIGKILL)?;
        if let Some(mut child) = self.nodes[i].take() {
            child.wait()?;
        }
        Ok(())
    }

    /// Starts a killed node again on its data dir and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    /// SIGSTOP / SIGCONT: a pause (a long GC, a stalled VM) with every socket left open.
    pub fn pause(&self, i: usize, paused: bool) -> anyhow::Result<()> {
        self.signal(i, if paused { libc::SIGSTOP } else { libc::SIGCONT })
    }

    /// Cuts or heals the wire between regions `a` and `b`.
    pub fn cut(&self, a: usize, b: usize, cut: bool) {
        if let Some(link) = self.links.get(&(a.min(b), a.max(b))) {
            link.set_cut(cut);
        }
    }

    pub fn heal_all(&self) {
        for link in self.links.values() {
            link.set_cut(false);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
