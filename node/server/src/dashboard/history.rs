//! Sales per region over the last minutes, for the rate charts: every few seconds the places
//! each region has sold (as this region's merged ledger says) are sampled and kept for ten
//! minutes. Rates are differences of those totals, so a burst of gossip that brings a
//! region's sales late shows as a late burst, which is what this region saw.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::http::AppState;

pub const STEP_MS: u64 = 5_000;
/// Ten minutes of steps, and the one before them.
const KEPT: usize = 121;
/// Each rate is measured over this many steps (30 s): smooth enough to read, recent enough
/// to show a region running dry.
const WINDOW: usize = 6;

struct Sample {
    at_ms: u64,
    /// Event → places sold by each region, in cluster order (all pools).
    sold: HashMap<Arc<str>, Vec<u64>>,
}

#[derive(Default)]
pub struct SaleHistory(Mutex<VecDeque<Sample>>);

impl SaleHistory {
    fn record(&self, at_ms: u64, sold: HashMap<Arc<str>, Vec<u64>>) {
        if let Ok(mut samples) = self.0.lock() {
            if samples.len() == KEPT {
                samples.pop_front();
            }
            samples.push_back(Sample { at_ms, sold });
        }
    }

    /// Sales per minute of each of `regions` regions of `event`, one figure per step, oldest
    /// first, each over the half minute before it.
    pub fn rates(&self, event: &str, regions: usize) -> Vec<Vec<u64>> {
        let Ok(samples) = self.0.lock() else {
            return vec![Vec::new(); regions];
        };
        let sold = |s: &Sample, r: usize| s.sold.get(event).and_then(|v| v.get(r)).copied();
        (0..regions)
            .map(|r| {
                (1..samples.len())
                    .map(|i| {
                        let (now, then) = (&samples[i], &samples[i.saturating_sub(WINDOW)]);
                        let span = now.at_ms.saturating_sub(then.at_ms).max(1);
                        match (sold(now, r), sold(then, r)) {
                            (Some(a), Some(b)) => a.saturating_sub(b) * 60_000 / span,
                            _ => 0,
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// Places sold by each region of each event, as this region sees them.
fn sold_by_region(core: &allot_node::Core) -> HashMap<Arc<str>, Vec<u64>> {
    core.events()
        .map(|e| {
            let g = e.genesis();
            let sold = (0..g.regions.len() as allot_crdt::RegionIdx)
                .map(|r| {
                    (0..g.pools.len() as allot_crdt::PoolIdx)
                        .map(|p| e.ledger.sold(p, r))
                        .sum()
                })
                .collect();
            (e.id.clone(), sold)
        })
        .collect()
}

/// Samples the node every step for as long as it serves (it holds no strong reference, so
/// the state goes when the server does).
pub async fn sample(state: Weak<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(STEP_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = state.upgrade() else { return };
        let Some(sold) = s.core.read(sold_by_region) else {
            return;
        };
        s.history.record(crate::driver::wall_ms(), sold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_differences_over_half_a_minute() {
        let h = SaleHistory::default();
        let ev: Arc<str> = "rock".into();
        for i in 0..10u64 {
            // Region 0 sells 10 a step (120/min); region 1 nothing.
            h.record(i * STEP_MS, HashMap::from([(ev.clone(), vec![10 * i, 7])]));
        }
        let r = h.rates("rock", 2);
        assert_eq!(r[0].len(), 9);
        assert!(r[0].iter().all(|&x| x == 120), "{:?}", r[0]);
        assert!(r[1].iter().all(|&x| x == 0));
        assert!(h.rates("jazz", 2)[0].iter().all(|&x| x == 0));
        for i in 10..200u64 {
            h.record(i * STEP_MS, HashMap::new());
        }
        assert_eq!(h.rates("rock", 1)[0].len(), KEPT - 1, "ten minutes kept");
    }
}
