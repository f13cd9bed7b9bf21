//! Gathering: a buyer here wants more than any one region has left, and the regions together
//! have it (2 + 2 seats in two regions, an order for 4). Forwarding cannot serve that buyer:
//! no single region can sell the whole request. So this region asks each region holding part
//! of it for that part — an ask of the handoff protocol ([`crate::handoff`]) with the reason
//! [`Reason::Gather`], which a donor grants whole or not at all — and once every credit is
//! durable here, sells the request from its own quota.
//!
//! Nothing here needs a protocol of its own to be safe: each part moves by the handoff's
//! rules (only the owner gives, the grant is durable before its answer, the credit comes only
//! from the donor's row, an ask id grants once), and the sale is an ordinary local one. A
//! keyed request holds its key's claim while it gathers, so a retry waits for its answer. A
//! crash forgets the gathering; the grants stay (this region's quota now), and the buyer's
//! retry sells from them.
//!
//! The request runs once more whatever came back, and is not gathered for again: if the
//! stock moved meanwhile, it is forwarded or refused from what this region then knows.

use std::collections::BTreeMap;

use allot_crdt::RegionIdx;
use serde::Serialize;

use crate::api::CoreError;
use crate::exchange::{CallId, RemoteOutcome, Waiter};
use crate::policy::{Ask, Reason};
use crate::reads::RecordIndex;

use super::parked::Request;
use super::rebalancer::{Arrival, AskInFlight, PoolKey};
use super::Core;

/// A gathering's number in this incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct GatherNo(u64);

/// One buyer's request, waiting for the parts other regions give it.
struct Gathering {
    request: Request,
    pool: PoolKey,
    /// Asks not yet answered, by call.
    open: BTreeMap<CallId, AskInFlight>,
    /// The last record holding a credit for it: the request runs once that is durable.
    landing: RecordIndex,
    /// A part was refused, lost, or not yet spendable when answered.
    short: bool,
}

/// What came of this region's gatherings since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GatherStats {
    pub started: u64,
    /// Every part arrived, and the request ran again.
    pub complete: u64,
    /// A part was refused or lost; the request ran again with what had arrived.
    pub short: u64,
    pub units_asked: u64,
    pub units_received: u64,
}

#[derive(Default)]
pub(super) struct GatherBook {
    next: u64,
    gathering: BTreeMap<GatherNo, Gathering>,
    by_call: BTreeMap<CallId, GatherNo>,
    stats: GatherStats,
}

impl GatherBook {
    pub fn stats(&self) -> GatherStats {
        self.stats
    }

    pub fn len(&self) -> usize {
        self.gathering.len()
    }

    /// Units of `pool` asked for by gatherings and not yet answered.
    pub fn asked(&self, pool: PoolKey) -> u64 {
        self.gathering
            .values()
            .filter(|g| g.pool == pool)
            .flat_map(|g| g.open.values())
            .map(|a| a.want)
            .sum()
    }

    /// Whether a request here is gathering quota of `pool`.
    pub fn gathering_for(&self, pool: PoolKey) -> bool {
        self.gathering.values().any(|g| g.pool == pool)
    }

    /// The requests waiting for their parts.
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.gathering.values().map(|g| &g.request)
    }

    /// The answer (or loss) of one ask: its gathering, which keeps going.
    fn close(&mut self, call: CallId) -> Option<(GatherNo, AskInFlight)> {
        let no = self.by_call.remove(&call)?;
        let ask = self.gathering.get_mut(&no)?.open.remove(&call)?;
        Some((no, ask))
    }

    pub fn check(&self) -> Result<(), String> {
        let open: usize = self.gathering.values().map(|g| g.open.len()).sum();
        if open != self.by_call.len()
            || self.by_call.iter().any(|(call, no)| {
                self.gathering
                    .get(no)
                    .is_none_or(|g| !g.open.contains_key(call))
            })
        {
            return Err("gathers: asks in flight disagree with their calls".into());
        }
        if let Some(g) = self.gathering.values().find(|g| g.request.gathered) {
            return Err(format!(
                "gathers: {:?} gathered for twice",
                g.request.command.want()
            ));
        }
        Ok(())
    }
}

impl Core {
    /// Asks each of `parts` (region, units) for its part of `req`, whose pool is `pool`.
    pub(super) fn gather(&mut self, req: Request, pool: PoolKey, parts: Vec<(usize, u64)>) {
        let book = &mut self.gathers;
        book.next += 1;
        let no = GatherNo(book.next);
        book.stats.started += 1;
        let mut open = BTreeMap::new();
        for (donor, want) in parts {
            let ask = Ask {
                donor,
                want,
                reason: Reason::Gather,
            };
            let call = self.ask_call(pool, &ask, Waiter::Gather);
            self.rebalancer.counters.asks_sent += 1;
            self.gathers.stats.units_asked += want;
            self.gathers.by_call.insert(call, no);
            let in_flight = AskInFlight {
                call,
                donor: donor as RegionIdx,
                asked_at: self.now,
                reason: Reason::Gather,
                want,
            };
            open.insert(call, in_flight);
        }
        let gathering = Gathering {
            request: req,
            pool,
            open,
            landing: RecordIndex(0),
            short: false,
        };
        self.gathers.gathering.insert(no, gathering);
    }

    /// A donor answered one of a gathering's asks.
    pub(super) fn gather_answered(
        &mut self,
        from: &str,
        call: CallId,
        answer: Result<Box<RemoteOutcome>, CoreError>,
    ) {
        let Some((no, ask)) = self.gathers.close(call) else {
            return;
        };
        let Some(pool) = self.gathers.gathering.get(&no).map(|g| g.pool) else {
            return;
        };
        let arrival = match answer {
            Ok(remote) => self.credit_grant(from, pool, &ask, *remote),
            Err(e) => {
                let c = &mut self.rebalancer.counters;
                if matches!(e, CoreError::NothingToSpare(_)) {
                    c.asks_refused += 1;
                } else {
                    c.asks_lost += 1;
                }
                None
            }
        };
        let Some(g) = self.gathers.gathering.get_mut(&no) else {
            return;
        };
        match arrival {
            Some((Arrival::Landing(index), _)) => g.landing = g.landing.max(index),
            // Gossip merged the row first, in a record that may not be durable yet: the
            // credit is spendable once everything written so far is.
            Some((Arrival::AlreadyHere, _)) => g.landing = g.landing.max(self.last_index),
            // Not spendable when the request runs: it will fall short.
            Some((Arrival::NotYet, _)) | None => g.short = true,
        }
        if let Some((_, units)) = arrival {
            self.gathers.stats.units_received += units;
        }
        self.gathered(no);
    }

    /// One of a gathering's asks timed out or could not be sent.
    pub(super) fn gather_lost(&mut self, call: CallId) {
        let Some((no, _)) = self.gathers.close(call) else {
            return;
        };
        self.rebalancer.counters.asks_lost += 1;
        if let Some(g) = self.gathers.gathering.get_mut(&no) {
            g.short = true;
        }
        self.gathered(no);
    }

    /// Runs a gathering's request once its last ask is answered and every credit it got is
    /// durable.
    fn gathered(&mut self, no: GatherNo) {
        let persisted = self.durable.persisted();
        let ready = self
            .gathers
            .gathering
            .get(&no)
            .is_some_and(|g| g.open.is_empty() && g.landing <= persisted);
        if !ready {
            return;
        }
        let Some(g) = self.gathers.gathering.remove(&no) else {
            return;
        };
        let mut req = g.request;
        if g.short {
            self.gathers.stats.short += 1;
        } else {
            self.gathers.stats.complete += 1;
        }
        req.gathered = true;
        req.sell_here = true;
        self.run(req);
    }

    /// Records up to `persisted` are durable: gatherings whose credits were waiting run.
    pub(super) fn gathers_durable(&mut self, persisted: RecordIndex) {
        let due: Vec<GatherNo> = self
            .gathers
            .gathering
            .iter()
            .filter(|(_, g)| g.open.is_empty() && g.landing <= persisted)
            .map(|(&no, _)| no)
            .collect();
        for no in due {
            self.gathered(no);
        }
    }

    /// What this region's gatherings came to.
    pub fn gather_stats(&self) -> GatherStats {
        self.gathers.stats()
    }
}
