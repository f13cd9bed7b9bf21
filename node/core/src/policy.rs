//! The rebalancer's decisions on figures alone: when a region asks for quota, whom it asks and
//! for how much, and how much a donor spares. No state, no clock, no messages: the core's
//! [`crate::core`] feeds it what it knows (its own figures, its peers' from gossip) and acts
//! on the answer, so every rule here is unit-tested on numbers.
//!
//! The rules follow what published escrow systems teach (DESIGN, "Between regions"): ask by
//! time-to-empty at the current demand, not at a fixed count; ask the region with the most to
//! spare; size by demand share; and near the end pool the last seats where the buyers are
//! instead of splitting them into crumbs no region can sell.

/// What one region has and wants of one pool, as the deciding region knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PoolFigures {
    /// What the region may still sell or give: its available minus its holds.
    pub sellable: u64,
    /// Units buyers asked of it per second, recent (holds and purchases, refused ones too:
    /// a region that has run dry still has demand).
    pub demand_per_s: f64,
}

/// How eager the rebalancer is. Times are in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    /// Ask when the stock left would last less than this at the current demand: a few round
    /// trips to a donor plus a gossip tick, so the grant lands before the last sale.
    pub lead_ms: u64,
    /// An ask covers this much of the asker's demand (at most its demand share of the stock).
    pub horizon_ms: u64,
    /// The endgame starts when the whole stock would last less than this at the cluster's
    /// demand (a few round trips: no ask for a share could land in time) or is no more than
    /// one maximum order per region: from then on only crumbs move, to the busiest region.
    pub endgame_ms: u64,
    /// The largest single order: a region with demand keeps at least this much in the endgame,
    /// and no grant leaves a donor a crumb smaller than it.
    pub max_order: u64,
    /// Whether the endgame pools the last stock in the busiest region. Without forwarding it
    /// must: a unit left in a quiet region is a sold-out for the busy region's buyers. With
    /// forwarding it must not: any buyer reaches the last units wherever they are, and pooled
    /// in one region they would make every other region's last buyers wait a round trip
    /// (measured: the flash sale's ap-south p99 233 ms pooled, 2 ms not; see
    /// docs/benchmarks.md). The core turns it off when it forwards.
    pub pool_endgame: bool,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            lead_ms: 1_500,
            horizon_ms: 10_000,
            endgame_ms: 500,
            max_order: 20,
            pool_endgame: true,
        }
    }
}

/// Why a region asked; kept in the handoff log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Its stock would run out within the lead time.
    RunningDry,
    /// The stock is nearly gone everywhere: pool it in the busiest region.
    Endgame,
    /// An operator moved quota by hand.
    Operator,
    /// A buyer here wants more than any one region has, and the regions together have it:
    /// the asker gathers the rest for that buyer (core/gathers.rs).
    Gather,
}

impl Reason {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RunningDry => "running-dry",
            Reason::Endgame => "endgame",
            Reason::Operator => "operator",
            Reason::Gather => "gather",
        }
    }
}

/// An ask to send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ask {
    pub donor: usize,
    pub want: u64,
    pub reason: Reason,
}

fn total_demand(regions: &[PoolFigures]) -> f64 {
    regions.iter().map(|r| r.demand_per_s.max(0.0)).sum()
}

fn total_stock(regions: &[PoolFigures]) -> u64 {
    regions.iter().map(|r| r.sellable).sum()
}

/// Whether the stock left is in its endgame: it would sell out within `endgame_ms` at the
/// cluster's demand, or it is no more than one maximum order per region. Never, when the
/// endgame is not pooled.
pub fn endgame(regions: &[PoolFigures], t: &Tuning) -> bool {
    if !t.pool_endgame {
        return false;
    }
    let stock = total_stock(regions);
    let demand = total_demand(regions);
    demand > 0.0
        && ((stock as f64) < demand * t.endgame_ms as f64 / 1000.0
            || stock <= t.max_order.saturating_mul(regions.len() as u64))
}

/// How long `r`'s stock lasts at its demand; `None` without demand.
pub fn time_to_empty_ms(r: &PoolFigures) -> Option<u64> {
    (r.demand_per_s > 0.0).then(|| (r.sellable as f64 * 1000.0 / r.demand_per_s) as u64)
}

/// The region every region agrees to pool the endgame's stock in: the most demand, ties to
/// the lowest index (every region computes the same from the same figures).
fn busiest(regions: &[PoolFigures]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, r) in regions.iter().enumerate() {
        if r.demand_per_s > 0.0 && best.is_none_or(|b| r.demand_per_s > regions[b].demand_per_s) {
            best = Some(i);
        }
    }
    best
}

/// What `donor` keeps for itself of what it has.
fn reserve(donor: usize, regions: &[PoolFigures], t: &Tuning) -> u64 {
    let d = &regions[donor];
    if d.demand_per_s <= 0.0 {
        return 0;
    }
    let share = total_stock(regions) as f64 * d.demand_per_s / total_demand(regions);
    if endgame(regions, t) {
        // No ask for a share lands in time any more: a region keeps its share, and at least
        // one maximum order while it has buyers, but never a smaller crumb: a donor holding
        // less than one maximum order keeps nothing, so the last units sit where most buyers
        // are (forwarding, once built, will sell them for the others).
        return if d.sellable >= t.max_order {
            (share.ceil() as u64).max(t.max_order)
        } else {
            0
        };
    }
    // Its demand share of the stock (so that every region would run out at the same moment),
    // at least what it sells within the lead time (what it could not replace by an ask of its
    // own), and one maximum order.
    let near = d.demand_per_s * t.lead_ms as f64 / 1000.0;
    (share.max(near).ceil() as u64).max(t.max_order)
}

/// What `donor` can give `asker` now, by the donor's own figures for itself and the asker's
/// demand as the ask carries it.
pub fn spare(donor: usize, asker: usize, regions: &[PoolFigures], t: &Tuning) -> u64 {
    if donor == asker {
        return 0;
    }
    let end = endgame(regions, t);
    if end {
        // In the endgame the stock flows only towards the busiest region (or to a region
        // busier than the donor while the busiest cannot be told apart).
        let toward_busiest = busiest(regions) == Some(asker)
            || regions[asker].demand_per_s > regions[donor].demand_per_s;
        if !toward_busiest {
            return 0;
        }
    }
    let d = &regions[donor];
    let keep = reserve(donor, regions, t);
    let free = d.sellable.saturating_sub(keep);
    // In the endgame, never leave the donor a crumb it could not sell one maximum order from
    // (its asker is busier: see above). Before it, a small stock stays where it is.
    let left = d.sellable - free;
    if end && left > 0 && left < t.max_order && d.demand_per_s > 0.0 {
        return d.sellable;
    }
    free
}

/// Whether `me` should ask now, and whom for how much. `excluded(r)` names donors not to ask
/// (one that just refused or did not answer).
pub fn plan_ask(
    me: usize,
    regions: &[PoolFigures],
    excluded: impl Fn(usize) -> bool,
    t: &Tuning,
) -> Option<Ask> {
    let mine = regions.get(me)?;
    if mine.demand_per_s <= 0.0 {
        return None;
    }
    let end = endgame(regions, t);
    let (want, reason) = if end {
        if busiest(regions) != Some(me) {
            return None;
        }
        // Everything the others can spare comes here.
        (u64::MAX, Reason::Endgame)
    } else {
        let tte = time_to_empty_ms(mine)?;
        if tte >= t.lead_ms {
            return None;
        }
        let stock = total_stock(regions) as f64;
        let share = stock * mine.demand_per_s / total_demand(regions);
        let horizon = mine.demand_per_s * t.horizon_ms as f64 / 1000.0;
        let target = share.min(horizon).max(t.max_order as f64).ceil() as u64;
        let want = target.saturating_sub(mine.sellable);
        if want == 0 {
            return None;
        }
        (want, Reason::RunningDry)
    };
    // An ask costs two messages: it is worth them only if it brings at least one maximum
    // order (or a donor's whole crumb, in the endgame), and, outside the endgame, a quarter
    // of what this region sells in the lead time (a trickle would only bring the next ask
    // sooner).
    let worth = if end {
        t.max_order
    } else {
        let lead_demand = mine.demand_per_s * t.lead_ms as f64 / 1000.0;
        t.max_order.max((lead_demand / 4.0) as u64)
    };
    let donor = (0..regions.len())
        .filter(|&r| r != me && !excluded(r))
        .map(|r| (r, spare(r, me, regions, t)))
        .filter(|&(r, s)| s > 0 && s >= worth.min(want).min(regions[r].sellable))
        .max_by_key(|&(r, s)| (s, std::cmp::Reverse(r)))?;
    Some(Ask {
        donor: donor.0,
        want: want.min(donor.1),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(sellable: u64, demand_per_s: f64) -> PoolFigures {
        PoolFigures {
            sellable,
            demand_per_s,
        }
    }

    /// Plays asks and grants on figures until nobody asks: what the regions would end with if
    /// every grant landed at once. Returns the figures and the grants made.
    fn settle(
        mut regions: Vec<PoolFigures>,
        t: &Tuning,
    ) -> (Vec<PoolFigures>, Vec<(usize, usize, u64)>) {
        let mut grants = Vec::new();
        for _round in 0..100 {
            let mut moved = false;
            for me in 0..regions.len() {
                if let Some(a) = plan_ask(me, &regions, |_| false, t) {
                    let given = a.want.min(spare(a.donor, me, &regions, t));
                    if given > 0 {
                        regions[a.donor].sellable -= given;
                        regions[me].sellable += given;
                        grants.push((a.donor, me, given));
                        moved = true;
                    }
                }
            }
            if !moved {
                return (regions, grants);
            }
        }
        panic!("the policy never settles: {grants:?}");
    }

    #[test]
    fn a_region_with_ten_times_the_demand_asks_before_it_runs_dry() {
        let t = Tuning::default();
        // 1,000 each; the hot region sells 100/s, the others 10/s.
        let mut regions = vec![f(1000, 100.0), f(1000, 10.0), f(1000, 10.0)];
        // 10 s of stock: no hurry.
        assert_eq!(plan_ask(0, &regions, |_| false, &t), None);
        // 1.2 s left, under the lead time: it asks, before it is empty.
        regions[0].sellable = 120;
        let a = plan_ask(0, &regions, |_| false, &t).expect("the hot region asks");
        assert_eq!(a.reason, Reason::RunningDry);
        assert!(a.want > 0);
        // Its ask is sized by its demand over the horizon (1,000), capped by its demand share
        // of the stock (2,120 × 100/120) and by what the donor spares.
        assert!(a.want <= 1000, "{a:?}");
        let given = a.want.min(spare(a.donor, 0, &regions, &t));
        assert!(given >= 500, "a useful grant, not a trickle: {given}");
        // The quiet regions never ask.
        assert_eq!(plan_ask(1, &regions, |_| false, &t), None);
        assert_eq!(plan_ask(2, &regions, |_| false, &t), None);
    }

    #[test]
    fn the_donor_with_most_to_spare_is_asked_and_keeps_its_own_share() {
        let t = Tuning::default();
        let regions = vec![f(50, 100.0), f(2000, 10.0), f(900, 10.0)];
        let a = plan_ask(0, &regions, |_| false, &t).unwrap();
        assert_eq!(a.donor, 1);
        // A donor that just refused is skipped for the next best.
        let b = plan_ask(0, &regions, |r| r == 1, &t).unwrap();
        assert_eq!(b.donor, 2);
        // It keeps its demand share of all the stock (2,950 × 10 / 120), which lasts it as
        // long as the others' shares last them.
        let keep = regions[2].sellable - spare(2, 0, &regions, &t);
        assert_eq!(keep, 246, "the donor keeps its demand share");
    }

    #[test]
    fn no_demand_no_ask_and_a_quiet_donor_gives_everything() {
        let t = Tuning::default();
        let regions = vec![f(0, 0.0), f(100, 0.0), f(30, 50.0)];
        assert_eq!(plan_ask(0, &regions, |_| false, &t), None);
        assert_eq!(spare(1, 2, &regions, &t), 100);
    }

    #[test]
    fn alternating_demand_does_not_ping_pong() {
        // Demand swings between two regions every step; with the same total stock, each
        // swing moves quota at most once towards the busy side, never back within a swing,
        // and the amounts shrink as the split matches the demand.
        let t = Tuning::default();
        let mut regions = vec![f(600, 60.0), f(600, 60.0)];
        let mut moves = Vec::new();
        for step in 0..6 {
            let hot = step % 2;
            regions[hot].demand_per_s = 60.0;
            regions[1 - hot].demand_per_s = 40.0;
            let (after, grants) = settle(regions.clone(), &t);
            // Nobody is short (more than lead time of stock each): nothing moves.
            moves.extend(grants);
            regions = after;
        }
        assert!(
            moves.is_empty(),
            "stock that lasts both sides never moves: {moves:?}"
        );
        // Now one side runs low while the other still has plenty: one grant, one way.
        let (after, grants) = settle(vec![f(50, 60.0), f(1100, 40.0)], &t);
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert_eq!(grants[0].0, 1);
        // And the receiver, now flush, is never asked back by the donor at this demand.
        assert_eq!(plan_ask(1, &after, |_| false, &t), None, "{after:?}");
    }

    #[test]
    fn the_endgame_pools_the_stock_without_crumbs() {
        let t = Tuning::default();
        // 45 left over three regions, demand 70/20/10 per second: under 3 s of stock.
        let regions = vec![f(15, 70.0), f(15, 20.0), f(15, 10.0)];
        assert!(endgame(&regions, &t));
        let (after, _) = settle(regions, &t);
        let total: u64 = after.iter().map(|r| r.sellable).sum();
        assert_eq!(total, 45, "nothing created or lost");
        for r in &after {
            assert!(
                r.sellable == 0 || r.sellable >= t.max_order,
                "a crumb smaller than one maximum order remains: {after:?}"
            );
        }
        assert!(
            after[0].sellable >= 25,
            "the busiest region gets the stock: {after:?}"
        );
        // Larger leftovers (260 units, half a second at 1,000 a second): each quiet region
        // keeps its demand share, at least one maximum order, so that every region runs out at
        // about the same moment; what is beyond goes to the busiest.
        let regions = vec![f(40, 700.0), f(120, 200.0), f(100, 100.0)];
        assert!(endgame(&regions, &t));
        let (after, _) = settle(regions, &t);
        assert_eq!(after.iter().map(|r| r.sellable).sum::<u64>(), 260);
        assert_eq!(after[1].sellable, 52, "{after:?}");
        assert_eq!(after[2].sellable, 26, "{after:?}");
        assert_eq!(after[0].sellable, 182, "{after:?}");
        for r in &after {
            assert!(r.sellable == 0 || r.sellable >= t.max_order, "{after:?}");
        }
        // Nobody asks any more.
        for me in 0..3 {
            assert!(plan_ask(me, &after, |_| false, &t).is_none());
        }
    }
}
