//! The core's side of quota handoff (the protocol: [`crate::handoff`]): demand counting, the
//! asker's tick, the donor's grant, and the asker's credit through the donor's row.

use allot_crdt::{Change, PoolIdx, RegionIdx, SeatIdx};

use crate::api::{Command, CoreError, IdempotencyKey, Outcome, Want};
use crate::event::smallest_block;
use crate::exchange::{Answered, CallId, Exchange, RemoteOutcome, Waiter};
use crate::handoff::{Handoff, HandoffAsk};
use crate::policy::{self, PoolFigures, Reason};
use crate::reads::RecordIndex;
use crate::record::RecordBody;

use super::rebalancer::{Arrival, AskInFlight, PoolKey};
use super::Core;

/// What a grant gives: a count of a general-admission pool, or these seats.
pub(crate) enum Give {
    Quantity(u64),
    Seats(Vec<SeatIdx>),
}

/// Quota of one pool on its way to this region (see [`Core::in_flight`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Credited here by a grant or a moved seat, spendable once its record is durable.
    pub landing: u64,
    /// Asked of other regions (rebalancing and gathering), not yet answered.
    pub asked: u64,
}

impl Core {
    /// Counts what a buyer asks for as demand for its pool, whether or not it can be served.
    pub(super) fn note_demand(&mut self, ev: usize, want: &Want) {
        let e = &self.events[ev];
        let (pool, units) = match want {
            Want::Quantity { pool, quantity } => (e.genesis().pool_index(pool), *quantity),
            Want::Seats { pool, seats } => (
                match pool {
                    Some(pool) => e.genesis().pool_index(pool),
                    None => seats.first().and_then(|s| e.pool_of_seat(s)),
                },
                seats.len() as u64,
            ),
        };
        if let Some(p) = pool {
            let d = &mut self.events[ev].demand[p as usize];
            d.units = d.units.saturating_add(units.min(self.cfg.max_quantity));
        }
    }

    /// Every region's figures for one pool, as this region knows them: its own exactly, its
    /// peers' from their rows and their last gossip.
    fn figures(&self, ev: usize, p: PoolIdx) -> Vec<PoolFigures> {
        let e = &self.events[ev];
        (0..e.genesis().regions.len())
            .map(|r| {
                let sellable = self.last_known_sellable(ev, p, r);
                if r == e.me as usize {
                    return PoolFigures {
                        sellable,
                        demand_per_s: e.demand[p as usize].per_s,
                    };
                }
                let view = &e.peers[r];
                let demand_per_s =
                    view.demand_per_min.get(p as usize).copied().unwrap_or(0) as f64 / 60.0;
                // What its last frame said, less what it has likely sold since: a peer's row
                // is always a little old, and an ask on stale stock is refused.
                let age_s = view
                    .heard_at
                    .map_or(0.0, |h| self.now.saturating_sub(h) as f64 / 1000.0);
                let since = (demand_per_s * age_s) as u64;
                PoolFigures {
                    sellable: sellable.saturating_sub(since),
                    demand_per_s,
                }
            })
            .collect()
    }

    /// The asker's tick: for every pool short of stock with no ask in flight, ask the best
    /// donor (see [`policy::plan_ask`]).
    pub(super) fn rebalance(&mut self) {
        let now = self.now;
        self.rebalancer.expire(now);
        let Some(tuning) = self.rebalancer.tuning else {
            return;
        };
        let persisted = self.durable.persisted();
        for ev in 0..self.events.len() {
            let e = &self.events[ev];
            if e.created_at_index > persisted || !e.info.rebalance {
                continue;
            }
            for p in 0..e.genesis().pools.len() as PoolIdx {
                let key = (ev, p);
                if self.rebalancer.asking(key) {
                    continue;
                }
                let figures = self.figures(ev, p);
                let e = &self.events[ev];
                let reason = if policy::endgame(&figures, &tuning) {
                    Reason::Endgame
                } else {
                    Reason::RunningDry
                };
                // A peer not heard from lately is not asked (its figures still count).
                let unavailable = |r: usize| {
                    !self.heard_lately(ev, r)
                        || self.rebalancer.gave_recently(key, r as RegionIdx, now)
                        || self.rebalancer.resting(key, r as RegionIdx, now, reason)
                        || self.calls.outstanding_to(&e.genesis().regions[r])
                            >= self.cfg.max_calls_per_peer
                };
                if let Some(ask) = policy::plan_ask(e.me as usize, &figures, unavailable, &tuning) {
                    self.send_ask(key, ask);
                }
            }
        }
    }

    fn send_ask(&mut self, key: PoolKey, ask: policy::Ask) {
        let call = self.ask_call(key, &ask, Waiter::Handoff);
        self.rebalancer.sent(
            key,
            AskInFlight {
                call,
                donor: ask.donor as RegionIdx,
                asked_at: self.now,
                reason: ask.reason,
                want: ask.want,
            },
        );
    }

    /// Sends an ask for quota of pool `key` as a call awaited by `waiter`.
    pub(super) fn ask_call(&mut self, key: PoolKey, ask: &policy::Ask, waiter: Waiter) -> CallId {
        let (ev, p) = key;
        let e = &self.events[ev];
        let donor = e.genesis().regions[ask.donor].clone();
        let message = HandoffAsk {
            event: e.id.to_string(),
            pool: p,
            want: ask.want,
            demand_per_min: e.demand[p as usize].per_min(),
            sellable: e.sellable(p).max(0) as u64,
            reason: ask.reason,
        };
        let deadline = self.now.saturating_add(self.cfg.handoff_timeout_ms);
        let call = self.calls.open(waiter, &donor, deadline);
        // The ask's id is its idempotency key at the donor (scoped there by this region): a
        // duplicate of it, even after the donor restarted, gets the first answer.
        let idem = IdempotencyKey {
            // A space, as no buyer's key may hold: never the key of a buyer's forwarded sale.
            key: format!("ask {}-{}", call.incarnation, call.n),
            body_hash: [0; 32],
        };
        self.out.exchange.push((
            donor,
            Exchange::Call {
                id: call,
                key: Some(idem),
                command: Box::new(Command::Ask(message)),
                budget_ms: None,
            },
        ));
        call
    }

    /// The donor's side: grants what the policy lets it spare (or, for a buyer waiting at
    /// the asker, all it asks for, if this region has it), durably, before it answers.
    pub(super) fn give_on_ask(
        &mut self,
        asker: &str,
        ask: &HandoffAsk,
        key: Option<&IdempotencyKey>,
    ) -> Result<(RecordIndex, Outcome), CoreError> {
        let for_buyer = ask.reason == Reason::Gather;
        if for_buyer && !self.cfg.forwarding {
            return Err(CoreError::NothingToSpare(format!(
                "{} does not forward, and so gathers for no buyer",
                self.cfg.region
            )));
        }
        let tuning = self.rebalancer.tuning;
        if tuning.is_none() && !for_buyer {
            return Err(CoreError::NothingToSpare(format!(
                "the rebalancer of {} is off",
                self.cfg.region
            )));
        }
        let ev = self.event_idx(&ask.event)?;
        let e = &self.events[ev];
        if !e.info.rebalance {
            return Err(CoreError::NothingToSpare(format!(
                "the rebalancer is paused for {}",
                e.id
            )));
        }
        let p = ask.pool;
        if p as usize >= e.genesis().pools.len() {
            return Err(CoreError::UnknownPool(format!("#{p}")));
        }
        let to = e
            .genesis()
            .region_index(asker)
            .filter(|&r| r != e.me)
            .ok_or_else(|| CoreError::Invalid(format!("{asker} cannot ask for this event")))?;
        if ask.want == 0 || ask.want > e.genesis().pool(p).capacity() {
            return Err(CoreError::Invalid("an ask for more than the pool".into()));
        }
        let n = match tuning {
            _ if for_buyer => {
                // Two regions gathering the same pool from each other would swap their parts
                // and both fall short: the region first in the cluster's order keeps its own.
                if e.me < to && self.gathers.gathering_for((ev, p)) {
                    return Err(CoreError::NothingToSpare(format!(
                        "{} is gathering this pool for a buyer of its own",
                        self.cfg.region
                    )));
                }
                // All or nothing: a part would move quota without selling it.
                let have = e.sellable(p).max(0) as u64;
                if have < ask.want {
                    return Err(CoreError::NothingToSpare(format!(
                        "{} has {have} left, not {}",
                        self.cfg.region, ask.want
                    )));
                }
                ask.want
            }
            Some(tuning) => {
                if self.rebalancer.received_recently((ev, p), to, self.now) {
                    return Err(CoreError::NothingToSpare(format!(
                        "{} received quota of this pool from {asker} moments ago",
                        self.cfg.region
                    )));
                }
                let mut figures = self.figures(ev, p);
                // The asker's own figures, as of its ask, over the older ones gossip brought;
                // its sellable can only be less than what its row (which the donor knows)
                // allows.
                let theirs = &mut figures[to as usize];
                theirs.demand_per_s = ask.demand_per_min as f64 / 60.0;
                theirs.sellable = theirs.sellable.min(ask.sellable);
                ask.want
                    .min(policy::spare(e.me as usize, to as usize, &figures, &tuning))
            }
            None => 0,
        };
        if n == 0 {
            return Err(CoreError::NothingToSpare(format!(
                "{} keeps what it has for its own buyers",
                self.cfg.region
            )));
        }
        let amount = if e.genesis().pool(p).is_assigned() {
            Give::Seats(self.seats_to_give(ev, p, n))
        } else {
            Give::Quantity(n)
        };
        let (index, outcome) = self.give(ev, p, to, amount, key, ask.reason)?;
        if crate::bugs::grant_answered_before_durable() {
            return Ok((RecordIndex(0), outcome));
        }
        Ok((index, outcome))
    }

    /// Gives quota this region owns to region `to`, as one durable record. The recipient
    /// hears it from the ask's answer or, for an operator's transfer, from a gossip frame sent
    /// the moment the record is durable.
    pub(super) fn give(
        &mut self,
        ev: usize,
        p: PoolIdx,
        to: RegionIdx,
        amount: Give,
        key: Option<&IdempotencyKey>,
        reason: Reason,
    ) -> Result<(RecordIndex, Outcome), CoreError> {
        let e = &self.events[ev];
        let (changes, quantity, seats) = match amount {
            Give::Quantity(n) => (vec![Change::Grant { pool: p, to, n }], n, Vec::new()),
            Give::Seats(seats) => (
                seats
                    .iter()
                    .map(|&seat| Change::GiveSeat { pool: p, seat, to })
                    .collect(),
                seats.len() as u64,
                seats,
            ),
        };
        let row = e
            .ledger
            .write(e.me, &changes)
            .map_err(|r| CoreError::NotOwner(r.to_string()))?;
        let to_name = e.genesis().regions[to as usize].clone();
        let entry = Handoff {
            event: e.id.clone(),
            pool: p,
            from: self.cfg.region.clone(),
            to: to_name.clone(),
            quantity,
            reason,
            at: self.now,
            ask_to_spendable_ms: None,
        };
        let outcome = Outcome::Granted {
            event: e.id.to_string(),
            pool: p,
            to: to_name.clone(),
            quantity,
            seats,
        };
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::Granted {
            event: entry.event.to_string(),
            row,
            idem,
        });
        self.rebalancer.gave((ev, p), to, entry);
        self.tell_low_stock(ev);
        if reason == Reason::Operator {
            self.rebalancer.push_after(index, to_name);
        } else {
            self.rebalancer.counters.asks_served += 1;
        }
        Ok((index, outcome))
    }

    /// Seats of a pool this region owns and has free, `n` of them, in whole blocks: the
    /// smallest block that holds them all, else the largest blocks first, each taken from its
    /// end (so what stays here stays in one piece too).
    fn seats_to_give(&self, ev: usize, p: PoolIdx, n: u64) -> Vec<SeatIdx> {
        let mut blocks = self.events[ev].free_blocks(p);
        let n = n as usize;
        if let Some(b) = smallest_block(&blocks, n) {
            return (b.end - n as SeatIdx..b.end).collect();
        }
        blocks.sort_by_key(|b| std::cmp::Reverse(b.len()));
        let mut out = Vec::with_capacity(n);
        for b in blocks {
            let take = (n - out.len()).min(b.len());
            out.extend(b.end - take as SeatIdx..b.end);
            if out.len() == n {
                break;
            }
        }
        out.sort_unstable();
        out
    }

    /// The answer to one of this region's asks.
    pub(super) fn ask_answered(
        &mut self,
        from: &str,
        call: CallId,
        answer: Result<Box<RemoteOutcome>, CoreError>,
    ) {
        let Some((key, ask)) = self.rebalancer.close(call) else {
            return;
        };
        match answer {
            Ok(remote) => {
                if self.credit_grant(from, key, &ask, *remote).is_none() {
                    self.rebalancer.failed(key, &ask, self.now, false);
                }
            }
            Err(e) => {
                let refused = matches!(e, CoreError::NothingToSpare(_));
                self.rebalancer.failed(key, &ask, self.now, refused);
            }
        }
    }

    /// Credits a grant from the donor's answer, only by merging the donor's row (never from
    /// the bare amount), and logs it. Returns where the credit stands and how much it is,
    /// or `None` when the answer is not a grant of this pool by this donor (nothing is
    /// credited then).
    pub(super) fn credit_grant(
        &mut self,
        from: &str,
        key: PoolKey,
        ask: &AskInFlight,
        remote: RemoteOutcome,
    ) -> Option<(Arrival, u64)> {
        let (ev, p) = key;
        let e = &self.events[ev];
        let fits = match &remote.outcome {
            Answered::Granted {
                event,
                pool,
                quantity,
                ..
            } => {
                *event == *e.id
                    && *pool == p
                    && *quantity <= e.genesis().pool(p).capacity()
                    && remote.row.as_ref().is_none_or(|r| r.writer == ask.donor)
            }
            _ => false,
        };
        if !fits || self.check_remote(from, &remote).is_err() {
            self.out
                .warnings
                .push(format!("an answer to a handoff ask from {from} refused"));
            return None;
        }
        let Answered::Granted { quantity, .. } = remote.outcome else {
            return None;
        };
        let event = e.id.clone();
        if crate::bugs::credit_bare_grant() {
            #[cfg(feature = "inject-bugs")]
            {
                self.events[ev].bare_credit[p as usize] += quantity;
            }
        }
        let before = self.last_index;
        let seq = remote.row.as_ref().map(|r| r.seq);
        if let Some(row) = remote.row {
            self.commit_peer(
                RecordBody::PeerRow {
                    event: event.to_string(),
                    row,
                },
                from,
            );
        }
        let merged_upto = self.events[ev]
            .ledger
            .version_vector()
            .get(ask.donor as usize);
        let arrival = if self.last_index > before {
            Arrival::Landing(self.last_index)
        } else if seq.is_some_and(|s| merged_upto >= s) {
            // Gossip brought the same row first.
            Arrival::AlreadyHere
        } else {
            // The row did not apply (a gap, or refused): gossip brings the credit later.
            Arrival::NotYet
        };
        let entry = Handoff {
            event,
            pool: p,
            from: from.to_owned(),
            to: self.cfg.region.clone(),
            quantity,
            reason: ask.reason,
            at: self.now,
            ask_to_spendable_ms: None,
        };
        self.rebalancer
            .received(key, ask.donor, ask.asked_at, entry, arrival);
        Some((arrival, quantity))
    }

    /// One of this region's asks timed out or could not be sent.
    pub(super) fn ask_lost(&mut self, call: CallId) {
        if let Some((key, ask)) = self.rebalancer.close(call) {
            self.rebalancer.failed(key, &ask, self.now, false);
        }
    }

    /// Records up to `persisted` are durable: grants they carried are spendable, and
    /// operators' transfers go to their recipients at once.
    pub(super) fn handoffs_durable(&mut self, persisted: RecordIndex) {
        let now = self.now;
        self.rebalancer.landed(persisted, now);
        for peer in self.rebalancer.pushes_due(persisted) {
            self.frame_to(&peer, None);
        }
    }

    /// The handoffs this region made or received, newest first.
    pub fn handoffs(&self) -> impl Iterator<Item = &Handoff> {
        self.rebalancer.log()
    }

    pub fn handoff_counters(&self) -> super::rebalancer::HandoffCounters {
        self.rebalancer.counters
    }

    /// Quota of one pool on its way to this region, as this region sees it: credits here not
    /// yet durable (not yet spendable), and units asked for and not yet answered. `None` for
    /// an unknown event or pool.
    pub fn in_flight(&self, event: &str, pool: PoolIdx) -> Option<InFlight> {
        let &ev = self.by_id.get(event)?;
        (usize::from(pool) < self.events[ev].genesis().pools.len()).then(|| InFlight {
            landing: self.durable.landing(ev, pool),
            asked: self.rebalancer.asked((ev, pool)) + self.gathers.asked((ev, pool)),
        })
    }
}
