//! What buyers waited for their answers, where they are: over every answer a buyer waited
//! for (sales, sold-outs, `stock-unreachable`; not the 503s of a region that could not
//! answer, which the report counts apart), and over the sales alone (orders, holds and
//! confirms), per buyer region and pooled outside the central strategy's home region.
//! DESIGN's remote-region bar is about the buyers outside that home, forwarded sales included
//! and also reported apart; the WAN bench reports its sales p99 as the bar's figure. The last
//! sold-out answers of a sale wait a round trip by rule (no buyer hears "sold out" while a
//! region that may still have the units has not said so), so they are shown apart.

use hdrhistogram::Histogram;

use crate::report::{Latency, Report};

/// Whether an answer sold something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// An order, a hold or a confirmed hold.
    Sale,
    /// A refusal the buyer waited for (sold out, stock out of reach).
    Refusal,
}

/// One histogram per population; milliseconds of virtual time.
pub(crate) struct Waits {
    /// The region whose buyers are "home": everything is there under `central`.
    home: usize,
    every: Histogram<u64>,
    by_region: Vec<Histogram<u64>>,
    outside_home: Histogram<u64>,
    sales_by_region: Vec<Histogram<u64>>,
    sales_outside_home: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("three significant figures is a valid precision")
}

/// `Histogram::new` resizes itself, so recording cannot fail.
fn record(h: &mut Histogram<u64>, ms: u64) {
    let _ = h.record(ms);
}

impl Waits {
    pub fn new(regions: usize, home: usize) -> Waits {
        Waits {
            home,
            every: histogram(),
            by_region: (0..regions).map(|_| histogram()).collect(),
            outside_home: histogram(),
            sales_by_region: (0..regions).map(|_| histogram()).collect(),
            sales_outside_home: histogram(),
        }
    }

    /// A buyer in region `client` waited `wait_ms` for `answer`.
    pub fn record(&mut self, client: usize, wait_ms: u64, answer: Answer) {
        let outside = client != self.home;
        record(&mut self.every, wait_ms);
        if let Some(h) = self.by_region.get_mut(client) {
            record(h, wait_ms);
        }
        if outside {
            record(&mut self.outside_home, wait_ms);
        }
        if answer == Answer::Sale {
            if let Some(h) = self.sales_by_region.get_mut(client) {
                record(h, wait_ms);
            }
            if outside {
                record(&mut self.sales_outside_home, wait_ms);
            }
        }
    }

    /// Fills the report's latency figures, regions named as `names`.
    pub fn report(&self, names: &[String], report: &mut Report) {
        let named = |hs: &[Histogram<u64>]| {
            names
                .iter()
                .zip(hs)
                .map(|(n, h)| (n.clone(), Latency::of(h)))
                .collect()
        };
        report.latency_ms = Latency::of(&self.every);
        report.latency_ms_by_region = named(&self.by_region);
        report.latency_ms_outside_home = Latency::of(&self.outside_home);
        report.sales_latency_ms_by_region = named(&self.sales_by_region);
        report.sales_latency_ms_outside_home = Latency::of(&self.sales_outside_home);
    }
}
