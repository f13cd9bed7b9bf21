//! Scenarios: regions and latencies, the event, the demand and the faults, as TOML.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub regions: Vec<String>,
    /// Round-trip times between regions, `"a/b" = ms`; one way is half.
    #[serde(default)]
    pub latency_ms: BTreeMap<String, u64>,
    /// Uniform extra delay per message, 0..=jitter_ms.
    #[serde(default)]
    pub jitter_ms: u64,
    #[serde(default = "default_tick")]
    pub tick_ms: u64,
    /// Time from a record's emission to its sync (group commit).
    #[serde(default = "default_disk")]
    pub disk_ms: u64,
    /// How long arrivals last; the run continues `settle_ms` after.
    pub duration_ms: u64,
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
    pub event: EventSpec,
    pub demand: Demand,
    #[serde(default)]
    pub faults: Faults,
}

fn default_tick() -> u64 {
    50
}
fn default_disk() -> u64 {
    2
}
fn default_settle() -> u64 {
    3000
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// General-admission places.
    pub capacity: u64,
    /// Assigned seats (0 for none).
    #[serde(default)]
    pub seats: usize,
    /// `"even"`, or region → share of capacity in percent.
    #[serde(default)]
    pub allotments: Option<BTreeMap<String, u64>>,
    #[serde(default = "default_ttl")]
    pub hold_ttl_s: u64,
}

fn default_ttl() -> u64 {
    60
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demand {
    /// Buyers per second over all regions.
    pub rate_per_s: f64,
    /// Region → share of buyers (need not sum to 1; normalised).
    pub share: BTreeMap<String, f64>,
    #[serde(default = "one")]
    pub min_quantity: u64,
    #[serde(default = "four")]
    pub max_quantity: u64,
    /// Fraction of buyers who hold first and confirm after thinking.
    #[serde(default)]
    pub hold_fraction: f64,
    /// Fraction of holders who never confirm (the hold expires).
    #[serde(default)]
    pub abandon: f64,
    #[serde(default = "think")]
    pub think_ms: u64,
    /// Fraction of holders who confirm at another region than the one that gave the hold (a
    /// front end failing over): the confirm becomes a call between regions.
    #[serde(default)]
    pub confirm_elsewhere: f64,
    /// Fraction of buyers who want assigned seats (when the event has some).
    #[serde(default)]
    pub seat_fraction: f64,
    /// Fraction of purchases sent with an `Idempotency-Key` and sent again with the same key
    /// a moment later (a front end retrying after a timeout): both answers must name one order.
    #[serde(default)]
    pub retry: f64,
    /// Fraction of orders refunded after thinking; half of those refunds are sent twice at
    /// once (two operators racing), and the quota must come back once.
    #[serde(default)]
    pub refund: f64,
    /// How the rate changes over time: during `[from_ms, to_ms)` it is multiplied by `factor`
    /// (e.g. a rush in the first seconds of an on-sale).
    #[serde(default)]
    pub phases: Vec<Phase>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub from_ms: u64,
    pub to_ms: u64,
    pub factor: f64,
}

impl Demand {
    /// The rate multiplier at `t` ms after the sale opened.
    pub fn factor(&self, t: u64) -> f64 {
        self.phases
            .iter()
            .filter(|p| p.from_ms <= t && t < p.to_ms)
            .map(|p| p.factor)
            .product()
    }
}

fn one() -> u64 {
    1
}
fn four() -> u64 {
    4
}
fn think() -> u64 {
    3000
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub duplicate: f64,
    #[serde(default)]
    pub partition: Vec<Partition>,
    /// A link that goes down and up: cut for `period_ms`, up for `period_ms`, over the window.
    #[serde(default)]
    pub flap: Vec<Flap>,
    #[serde(default)]
    pub crash: Vec<Crash>,
    /// Per region, ms added to its clock (no decision compares clocks; this proves it).
    #[serde(default)]
    pub clock_skew_ms: BTreeMap<String, i64>,
}

/// `a` and `b` cannot talk during `[from_ms, to_ms)`. A region alone in `a` is isolated.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub a: Vec<String>,
    #[serde(default)]
    pub b: Vec<String>,
    pub from_ms: u64,
    pub to_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flap {
    pub a: Vec<String>,
    #[serde(default)]
    pub b: Vec<String>,
    pub from_ms: u64,
    pub to_ms: u64,
    pub period_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    pub region: String,
    pub at_ms: u64,
    pub restart_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("scenario: {0}")]
    Invalid(String),
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let mut s: Scenario = toml::from_str(text)?;
        s.validate()?;
        s.expand_flaps();
        Ok(s)
    }

    /// Turns each flapping link into the partitions it stands for.
    fn expand_flaps(&mut self) {
        for f in std::mem::take(&mut self.faults.flap) {
            let mut t = f.from_ms;
            while t < f.to_ms {
                let end = (t + f.period_ms).min(f.to_ms);
                self.faults.partition.push(Partition {
                    a: f.a.clone(),
                    b: f.b.clone(),
                    from_ms: t,
                    to_ms: end,
                });
                t += 2 * f.period_ms;
            }
        }
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.regions.len() < 2 || self.regions.len() > 16 {
            return bad("2-16 regions".into());
        }
        let known = |r: &String| self.regions.contains(r);
        for k in self.latency_ms.keys() {
            match k.split_once('/') {
                Some((a, b)) if known(&a.to_owned()) && known(&b.to_owned()) => {}
                _ => {
                    return bad(format!(
                        "latency key {k:?}: \"region/region\" of known regions"
                    ))
                }
            }
        }
        for r in self
            .demand
            .share
            .keys()
            .chain(self.faults.clock_skew_ms.keys())
            .chain(self.faults.crash.iter().map(|c| &c.region))
        {
            if !known(r) {
                return bad(format!("unknown region {r:?}"));
            }
        }
        for p in &self.faults.partition {
            if p.a.iter().chain(&p.b).any(|r| !known(r)) || p.from_ms >= p.to_ms {
                return bad("partition: known regions and from_ms < to_ms".into());
            }
        }
        for f in &self.faults.flap {
            if f.a.iter().chain(&f.b).any(|r| !known(r)) || f.from_ms >= f.to_ms || f.period_ms == 0
            {
                return bad("flap: known regions, from_ms < to_ms and period_ms > 0".into());
            }
        }
        if self
            .demand
            .phases
            .iter()
            .any(|p| p.from_ms >= p.to_ms || !(0.0..=1000.0).contains(&p.factor))
        {
            return bad("demand phases: from_ms < to_ms and a factor in 0..=1000".into());
        }
        if !(0.0..=1.0).contains(&self.faults.loss) || !(0.0..=1.0).contains(&self.faults.duplicate)
        {
            return bad("loss and duplicate are probabilities".into());
        }
        if self.event.capacity == 0 && self.event.seats == 0 {
            return bad("the event needs capacity or seats".into());
        }
        if self.demand.rate_per_s <= 0.0
            || self.demand.min_quantity == 0
            || self.demand.min_quantity > self.demand.max_quantity
            || self.demand.max_quantity > 20
        {
            return bad("demand: rate > 0 and 1 <= min_quantity <= max_quantity <= 20".into());
        }
        if self.tick_ms == 0 || self.duration_ms == 0 {
            return bad("tick_ms and duration_ms must be positive".into());
        }
        Ok(())
    }

    /// One-way delay between two regions, in ms.
    pub fn one_way(&self, a: &str, b: &str) -> u64 {
        if a == b {
            return 0;
        }
        let rtt = self
            .latency_ms
            .get(&format!("{a}/{b}"))
            .or_else(|| self.latency_ms.get(&format!("{b}/{a}")))
            .copied()
            .unwrap_or(0);
        rtt / 2
    }
}
