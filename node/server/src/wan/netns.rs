//! The emulated WAN's network: one namespace per region, each joined to the root namespace
//! by a veth pair and to nothing else. A region's node can reach only its own link's root
//! end, where the delay relay listens (`relay.rs`), so every byte between regions crosses the
//! relay and pays its delay. No routing, no `ip_forward`, no `netem`: the kernel here has none.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// A region's namespace and the two ends of its link.
pub struct RegionNet {
    pub netns: String,
    /// The root namespace's end: where the relay listens for this region's traffic.
    pub outside: Ipv4Addr,
    /// The region's own address, inside its namespace.
    pub inside: Ipv4Addr,
    /// The root end's interface name, deleted on drop with the namespace.
    host_if: String,
}

/// The namespaces of one bench run, deleted when dropped (whatever ended the run), and the
/// leftovers of runs killed before they could clean up swept when the next one starts.
pub struct Fabric {
    pub regions: Vec<RegionNet>,
}

/// Namespaces of this program are named `allot-wan-<pid>-<region index>`.
const PREFIX: &str = "allot-wan-";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (Debian's iproute2: scripts/bench-deps.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes the namespaces of earlier runs whose process is gone (a SIGKILLed bench).
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

impl Fabric {
    /// One namespace per region. Fails with a clear message where namespaces are not allowed
    /// (not root, or a container without `CAP_SYS_ADMIN`).
    pub fn create(regions: usize) -> anyhow::Result<Fabric> {
        sweep_stale();
        let pid = std::process::id();
        // Subnets 10.201.x.0/30, x chosen by pid so two concurrent runs rarely meet.
        let base = (pid % 60) * 4;
        let mut fabric = Fabric {
            regions: Vec::new(),
        };
        for i in 0..regions {
            let netns = format!("{PREFIX}{pid}-{i}");
            let octet = u8::try_from(base as usize + i).context("at most 4 regions")?;
            let host_if = format!("aw{pid}h{i}");
            let peer_if = format!("aw{pid}n{i}");
            ip(&["netns", "add", &netns]).context(
                "the emulated WAN needs network namespaces (root, with CAP_SYS_ADMIN); \
                 where they are not allowed, run the other parts (--parts region)",
            )?;
            let region = RegionNet {
                netns: netns.clone(),
                outside: Ipv4Addr::new(10, 201, octet, 1),
                inside: Ipv4Addr::new(10, 201, octet, 2),
                host_if: host_if.clone(),
            };
            fabric.regions.push(region);
            let r = &fabric.regions[i];
            let (outside, inside) = (format!("{}/30", r.outside), format!("{}/30", r.inside));
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
            ])?;
            ip(&["link", "set", &peer_if, "netns", &netns])?;
            ip(&["addr", "add", &outside, "dev", &host_if])?;
            ip(&["link", "set", &host_if, "up"])?;
            for args in [
                vec!["addr", "add", inside.as_str(), "dev", peer_if.as_str()],
                vec!["link", "set", peer_if.as_str(), "up"],
                vec!["link", "set", "lo", "up"],
            ] {
                let mut full = vec!["netns", "exec", netns.as_str(), "ip"];
                full.extend(args);
                ip(&full)?;
            }
        }
        Ok(fabric)
    }

    /// `program` to run inside region `i`'s namespace. `ip netns exec` execs it, so the
    /// child's pid is the program's own (signals reach it, not a wrapper).
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.regions[i].netns])
            .arg(program);
        cmd
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for r in &self.regions {
            let _ = ip(&["netns", "delete", &r.netns]);
            // The veth pair goes with its namespace end; this only hurries it.
            let _ = ip(&["link", "delete", &r.host_if]);
        }
    }
}
