//! What a run reports. Every field is a virtual-time or count figure: no wall clock, no
//! hash-map order, so the same seed gives byte-identical JSON.

use serde::Serialize;

use crate::world::Strategy;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Latency {
    pub(crate) fn of(h: &hdrhistogram::Histogram<u64>) -> Latency {
        Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub strategy: Strategy,
    pub seed: u64,
    pub capacity: u64,
    pub sold: u64,
    pub sold_in_rows: u64,
    pub oversold: u64,
    pub sell_through_pct: f64,
    pub orders: u64,
    pub answers: u64,
    pub sold_out_answers: u64,
    pub false_sold_outs: u64,
    pub false_sold_out_pct: f64,
    pub unavailable: u64,
    /// 503 `stock-unreachable`: only regions out of reach had the stock (not a sold-out).
    pub stock_unreachable: u64,
    pub other_errors: u64,
    /// Answers that another region gave through a call between regions.
    pub remote_answers: u64,
    /// Sales (orders and holds) another region made for a buyer through forwarding, their
    /// share of all sales answered, and their latency (buyer's request to answer).
    pub forwarded: u64,
    pub forwarded_pct: f64,
    pub forward_latency_ms: Option<Latency>,
    /// Forwarded calls the targets refused (their stock had gone) or left unanswered, as the
    /// regions that sent them count (a region that crashed lost its counts).
    pub forwards_refused: u64,
    pub forwards_lost: u64,
    /// Requests no one region could cover, for which the parts were gathered from several
    /// (core/gathers.rs), and of them those that got every part.
    pub gathered: u64,
    pub gathered_whole: u64,
    /// Purchases sent again with the same idempotency key, and refunds answered.
    pub retried: u64,
    pub refunds: u64,
    pub abandoned: u64,
    pub expired: u64,
    pub latency_ms: Latency,
    /// From a handoff ask to spendable credit at the asker (`rebalance`).
    pub ask_to_spendable_ms: Option<Latency>,
    /// Per buyer region, over every answer its buyers waited for (503s of a region that
    /// could not answer are counted apart, not timed).
    pub latency_ms_by_region: std::collections::BTreeMap<String, Latency>,
    /// Over every answer of the buyers outside the central strategy's home region (the
    /// scenario's first), pooled: the population of DESIGN's remote-region p99 bar, as the
    /// WAN bench pools it.
    pub latency_ms_outside_home: Latency,
    /// The same two over the sales alone (orders, holds and confirms answered, forwarded ones
    /// included), sold-out answers left out: the WAN bench's figure for that bar.
    pub sales_latency_ms_by_region: std::collections::BTreeMap<String, Latency>,
    pub sales_latency_ms_outside_home: Latency,
    pub opened_at_ms: u64,
    pub sold_out_at_ms: Option<u64>,
    /// Operator transfers the simulator made (`operator` strategy and fuzz chaos).
    pub handoffs: u64,
    /// Handoff asks and their answers between regions (`rebalance` strategy).
    pub handoff_messages: u64,
    pub crashes: u64,
    pub lost_unacknowledged: u64,
    pub convergence_ms: Vec<u64>,
    /// Heals followed by another cut before the state converged.
    pub interrupted_heals: u64,
    pub gossip_bytes: u64,
    pub violations: Vec<String>,
    /// Region names, and each region's sellable quota (all pools) sampled every tick: the
    /// plot's data. Left out of the JSON to keep it small.
    #[serde(skip)]
    pub regions: Vec<String>,
    #[serde(skip)]
    pub series: Vec<(u64, Vec<i64>)>,
}

impl Report {
    pub fn new(scenario: &str, strategy: Strategy, seed: u64, capacity: u64) -> Report {
        Report {
            scenario: scenario.into(),
            strategy,
            seed,
            capacity,
            sold: 0,
            sold_in_rows: 0,
            oversold: 0,
            sell_through_pct: 0.0,
            orders: 0,
            answers: 0,
            sold_out_answers: 0,
            false_sold_outs: 0,
            false_sold_out_pct: 0.0,
            unavailable: 0,
            stock_unreachable: 0,
            other_errors: 0,
            remote_answers: 0,
            forwarded: 0,
            forwarded_pct: 0.0,
            forward_latency_ms: None,
            forwards_refused: 0,
            forwards_lost: 0,
            gathered: 0,
            gathered_whole: 0,
            retried: 0,
            refunds: 0,
            abandoned: 0,
            expired: 0,
            latency_ms: Latency::default(),
            latency_ms_by_region: Default::default(),
            latency_ms_outside_home: Latency::default(),
            sales_latency_ms_by_region: Default::default(),
            sales_latency_ms_outside_home: Latency::default(),
            ask_to_spendable_ms: None,
            opened_at_ms: 0,
            sold_out_at_ms: None,
            handoffs: 0,
            handoff_messages: 0,
            crashes: 0,
            lost_unacknowledged: 0,
            convergence_ms: vec![],
            interrupted_heals: 0,
            gossip_bytes: 0,
            violations: vec![],
            regions: vec![],
            series: vec![],
        }
    }

    pub(crate) fn finish(&mut self) {
        let round = |x: f64| (x * 100.0).round() / 100.0;
        self.sell_through_pct =
            round(100.0 * self.sold_in_rows as f64 / self.capacity.max(1) as f64);
        self.false_sold_out_pct =
            round(100.0 * self.false_sold_outs as f64 / self.answers.max(1) as f64);
        self.forwarded_pct = round(100.0 * self.forwarded as f64 / self.answers.max(1) as f64);
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let row = |s: &mut String, k: &str, v: String| s.push_str(&format!("  {k:<24} {v}\n"));
        s.push_str(&format!(
            "{} · strategy {:?} · seed {}\n",
            self.scenario, self.strategy, self.seed
        ));
        row(
            &mut s,
            "sold / capacity",
            format!(
                "{} / {} ({}% sell-through)",
                self.sold_in_rows, self.capacity, self.sell_through_pct
            ),
        );
        row(&mut s, "oversold", self.oversold.to_string());
        row(
            &mut s,
            "false sold-outs",
            format!(
                "{} ({}% of {} answers)",
                self.false_sold_outs, self.false_sold_out_pct, self.answers
            ),
        );
        row(
            &mut s,
            "sold-out answers",
            self.sold_out_answers.to_string(),
        );
        row(
            &mut s,
            "stock unreachable",
            self.stock_unreachable.to_string(),
        );
        if let Some(l) = &self.forward_latency_ms {
            row(
                &mut s,
                "forwarded sales",
                format!(
                    "{} ({}% of answers), ms p50/p99 {}/{}; {} refused, {} lost",
                    self.forwarded,
                    self.forwarded_pct,
                    l.p50,
                    l.p99,
                    self.forwards_refused,
                    self.forwards_lost
                ),
            );
        }
        if self.gathered > 0 {
            row(
                &mut s,
                "gathered from several regions",
                format!("{} ({} got every part)", self.gathered, self.gathered_whole),
            );
        }
        row(
            &mut s,
            "latency ms p50/p90/p99/max",
            format!(
                "{}/{}/{}/{}",
                self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99, self.latency_ms.max
            ),
        );
        row(
            &mut s,
            "p99 ms by buyer region",
            self.latency_ms_by_region
                .iter()
                .map(|(r, l)| format!("{r} {}", l.p99))
                .collect::<Vec<_>>()
                .join(" · "),
        );
        row(
            &mut s,
            "p99 ms outside central's home region",
            format!(
                "{} (sales alone {})",
                self.latency_ms_outside_home.p99, self.sales_latency_ms_outside_home.p99
            ),
        );
        row(
            &mut s,
            "time to sell out",
            self.sold_out_at_ms
                .map_or("not sold out".into(), |t| format!("{t} ms")),
        );
        row(&mut s, "operator transfers", self.handoffs.to_string());
        row(
            &mut s,
            "handoff messages",
            format!(
                "{} ({:.1} per 1,000 sales)",
                self.handoff_messages,
                self.handoff_messages as f64 * 1000.0 / self.orders.max(1) as f64
            ),
        );
        if let Some(l) = &self.ask_to_spendable_ms {
            row(
                &mut s,
                "ask → spendable ms",
                format!("p50 {} · max {}", l.p50, l.max),
            );
        }
        if self.retried + self.refunds > 0 {
            row(
                &mut s,
                "retried / refunds",
                format!("{} / {}", self.retried, self.refunds),
            );
        }
        row(
            &mut s,
            "crashes",
            format!(
                "{} ({} requests lost unacknowledged)",
                self.crashes, self.lost_unacknowledged
            ),
        );
        row(
            &mut s,
            "convergence after heal",
            format!(
                "{:?} ms ({} heals cut again before converging)",
                self.convergence_ms, self.interrupted_heals
            ),
        );
        row(&mut s, "gossip bytes", self.gossip_bytes.to_string());
        row(
            &mut s,
            "violations",
            if self.violations.is_empty() {
                "none".into()
            } else {
                self.violations.join("; ")
            },
        );
        s
    }
}
