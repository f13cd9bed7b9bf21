//! What buyers waited for their answers, where they are: over every answer, and over the
//! sales alone (orders, holds and confirms), per buyer region and pooled outside the central
//! strategy's home region. DESIGN's remote-region bar is about the pooled sales, as the WAN
//! bench measures it; sold-out answers are reported beside them, since the last ones of a
//! sale wait a round trip by rule (no buyer hears "sold out" while a region that may still
//! have the units has not said so).

use hdrhistogram::Histogram;

use crate::report::{Latency, Report};

/// The region the central strategy keeps everything in: the scenario's first. Its buyers are
/// the "home" ones; the latency bars are about everyone else's.
pub(crate) const CENTRAL_HOME: usize = 0;

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
    every: Histogram<u64>,
    by_region: Vec<Histogram<u64>>,
    outside_home: Histogram<u64>,
    sales_by_region: Vec<Histogram<u64>>,
    sales_outside_home: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("three significant figures is a valid precision")
}

impl Waits {
    pub fn new(regions: usize) -> Waits {
        Waits {
            every: histogram(),
            by_region: (0..regions).map(|_| histogram()).collect(),
            outside_home: histogram(),
            sales_by_region: (0..regions).map(|_| histogram()).collect(),
            sales_outside_home: histogram(),
        }
    }

    /// A buyer in region `client` waited `wait_ms` for `answer`.
    pub fn record(&mut self, client: usize, wait_ms: u64, answer: Answer) {
        let outside = client != CENTRAL_HOME;
        let mut into = vec![&mut self.every];
        into.extend(self.by_region.get_mut(client));
        if outside {
            into.push(&mut self.outside_home);
        }
        if answer == Answer::Sale {
            into.extend(self.sales_by_region.get_mut(client));
            if outside {
                into.push(&mut self.sales_outside_home);
            }
        }
        for h in into {
            // `Histogram::new` resizes itself: any value is taken.
            let _ = h.record(wait_ms);
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
