//! Sale forwarding: a buyer's hold or purchase that this region cannot cover from its own
//! quota goes, whole, to a region that can, and the buyer gets that region's answer. The
//! hold or order belongs to the region that made it, and its id names that region, so a
//! later confirm, release or read goes there (DESIGN, "Between regions").
//!
//! Exactly once across regions, whatever crashes or the network does:
//! - A request with an `Idempotency-Key` leaves only once a record naming its target is
//!   durable here ([`Outcome::Forwarded`] under the key). A retry of the key, even after a
//!   crash, goes to that target and only there; it never sells here or elsewhere.
//! - The target keeps the key (scoped by the calling region) with the order, durably, so a
//!   duplicated call or a retry gets the first order. It keeps an out-of-stock refusal the
//!   same way ([`Outcome::Refused`]), so a late duplicate is never sold after the origin moved
//!   on to another candidate.
//! - The origin moves on from a target only after hearing its refusal, or when the call never
//!   left (no link): never after a silence, since a silent target may have sold. It tries at
//!   most [`MAX_TARGETS`] regions per request.
//! - A forwarded call carries a deadline; the target refuses it after that (the origin stops
//!   waiting a little later and tells the buyer to retry).
//! - A request without a key gets a forward id as its key at the target
//!   (`fwd <incarnation>-<n>`), so the network's duplicates are deduplicated there too.
//! - One request per key is on its way at a time (it holds the key's claim; a buyer's retry
//!   meanwhile waits behind it), so only one request ever moves a key to another region,
//!   from the target the key's record names.
//! - A call that could not even leave (no link) moves a request without a key on; a keyed
//!   one is answered like a silence, since an earlier attempt may have reached the target.
//!
//! A forwarded request is never forwarded again: only a local client's request is routed.

use std::collections::{BTreeMap, VecDeque};

use allot_crdt::{PoolIdx, RegionIdx};
use serde::Serialize;

use crate::api::{Command, CoreError, IdempotencyKey, Millis, Outcome, Want};
use crate::exchange::{CallId, Exchange, Waiter};
use crate::reads::RecordIndex;
use crate::record::{IdemRecord, RecordBody};

use super::parked::Request;
use super::rebalancer::PoolKey;
use super::{Caller, Core};

/// Stock that lasts its region this long at its own demand is plenty (the rebalancer refills
/// a region whose stock lasts less than its lead time, 1.5 s by default): a buyer forwarded
/// there costs that region's own buyers nothing, and the nearest such region is chosen. Only
/// shorter figures rank the candidates (measured on the flash sale: capped at 0.3 s, us-east's
/// p99 rose to 222 ms; at 0.6 s and above, as uncapped).
const LASTS_LONG_ENOUGH_MS: u64 = 3_000;

/// Regions one request may be sent to: the best candidate, and one more if it refused.
pub const MAX_TARGETS: usize = 2;

/// Whether a target keeps its refusal of a forwarded sale under the sale's (caller-scoped)
/// key, so that a late duplicate of the call is refused the same way, not sold to a buyer
/// told no or after the origin moved on.
///
/// - A request without a key (its key is a forward id, which holds a space, as no buyer's key
///   may): every decided refusal. Its buyer cannot retry it; only duplicates come again.
/// - A buyer's key: the refusals after which the origin moves on (out of stock, or the
///   budget spent), which must stay refusals; not the others (a hold limit, a seat taken),
///   which would pin the buyer's key to a refusal for a day although the same request may
///   succeed later, here as at home. A late duplicate of those may sell; the buyer's retry
///   of the key then finds that order.
pub(crate) fn keeps_refusal(scoped_key: &str, e: &CoreError) -> bool {
    let forward_id = scoped_key
        .split_once(' ')
        .is_some_and(|(_, own)| own.contains(' '));
    if forward_id {
        e.is_decision()
    } else {
        e.is_out_of_stock() || *e == CoreError::DeadlinePassed
    }
}

/// What a target said it had left when it refused a forward outranks what this region knew
/// of it, until its next gossip frame (sent after the refusal, so newer) or at most this
/// long: a refusal teaches at once what gossip tells a little later, so the buyers behind it
/// are not sent to the same empty region.
const REFUSAL_TRUSTED_MS: Millis = 1_000;

/// One request on its way to another region.
pub(super) struct Forward {
    pub request: Request,
    pub target: String,
    /// The key the target deduplicates on (the buyer's, or a forward id).
    pub key: IdempotencyKey,
    /// Regions that refused its key already, in order (this request's refusals, and those
    /// of earlier attempts of its key, from the key's record).
    pub refused_by: Vec<String>,
    /// Regions this request was sent to: at most [`MAX_TARGETS`].
    pub tries: usize,
    pub started_at: Millis,
    /// The event's position in the core.
    pub event: Option<usize>,
    /// The event position, pool and quantity of a request for a quantity (not named seats):
    /// what a refusal or a sale by the target teaches about its stock.
    pub units: Option<(usize, PoolIdx, u64)>,
}

/// What a target said it had left when it refused a forward.
#[derive(Clone, Copy, Debug)]
struct Refusal {
    available: u64,
    /// Its quota as this region's ledger showed it then: more since means it received some.
    ledger_available: i128,
    at: Millis,
    /// When this region last heard the target's gossip, as of the refusal.
    heard_at: Option<Millis>,
}

/// What this region knows of its forwards to one region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ForwardStats {
    /// Calls sent (a retry or a second candidate is another call).
    pub sent: u64,
    /// Answered with a hold or an order.
    pub served: u64,
    /// Answered with a refusal (its stock had moved, or the buyer's request was refused).
    pub refused: u64,
    /// Not answered in time, or never sent for want of a link.
    pub lost: u64,
    /// Of the answered ones: from the buyer's request here to the answer here.
    pub latency_ms_total: u64,
    pub latency_ms_max: u64,
}

impl ForwardStats {
    pub fn mean_latency_ms(&self) -> Option<u64> {
        let answered = self.served + self.refused;
        (answered > 0).then(|| self.latency_ms_total / answered)
    }
}

/// Forwards waiting for the disk or for an answer, and what became of the others.
#[derive(Default)]
pub(super) struct ForwardBook {
    incarnation: u64,
    next: u64,
    /// Keyed forwards whose target record is not yet durable, in record order.
    awaiting_disk: VecDeque<(RecordIndex, Forward)>,
    in_flight: BTreeMap<CallId, Forward>,
    /// By target region.
    stats: BTreeMap<String, ForwardStats>,
    /// By event (its position in the core) and target region.
    by_event: BTreeMap<(usize, String), ForwardStats>,
    /// Answers heard per target, smoothed: which region answers soonest.
    rtt_ms: BTreeMap<String, Millis>,
    /// By (event position, pool, region): the latest refusal for want of stock.
    refusals: BTreeMap<(usize, PoolIdx, usize), Refusal>,
}

impl ForwardBook {
    pub fn new(incarnation: u64) -> ForwardBook {
        ForwardBook {
            incarnation,
            ..ForwardBook::default()
        }
    }

    /// A forward id for a request without a key: unique across restarts, and with a space,
    /// which no buyer's key may hold, so it never meets one at the target.
    fn next_id(&mut self) -> String {
        self.next += 1;
        format!("fwd {}-{}", self.incarnation, self.next)
    }

    fn after_disk(&mut self, index: RecordIndex, f: Forward) {
        let at = self.awaiting_disk.partition_point(|(i, _)| *i <= index);
        self.awaiting_disk.insert(at, (index, f));
    }

    fn durable(&mut self, persisted: RecordIndex) -> Option<Forward> {
        if self.awaiting_disk.front()?.0 > persisted {
            return None;
        }
        self.awaiting_disk.pop_front().map(|(_, f)| f)
    }

    /// Counts `f` in its target's figures, overall and for its event.
    fn count(&mut self, f: &Forward, update: impl Fn(&mut ForwardStats)) {
        update(self.stats.entry(f.target.clone()).or_default());
        if let Some(ev) = f.event {
            update(self.by_event.entry((ev, f.target.clone())).or_default());
        }
    }

    fn answered(&mut self, f: &Forward, now: Millis, served: bool) {
        let took = now.saturating_sub(f.started_at);
        self.count(f, |s| {
            if served {
                s.served += 1;
            } else {
                s.refused += 1;
            }
            s.latency_ms_total += took;
            s.latency_ms_max = s.latency_ms_max.max(took);
        });
        let rtt = self.rtt_ms.entry(f.target.clone()).or_insert(took);
        *rtt = (*rtt * 3 + took) / 4;
    }

    pub fn stats(&self) -> &BTreeMap<String, ForwardStats> {
        &self.stats
    }

    /// Forwards of one event (by its position in the core), by target region.
    pub fn event_stats(&self, ev: usize) -> impl Iterator<Item = (&str, &ForwardStats)> {
        self.by_event
            .range((ev, String::new())..)
            .take_while(move |((e, _), _)| *e == ev)
            .map(|((_, region), s)| (region.as_str(), s))
    }

    /// The requests on their way to another region.
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.awaiting_disk
            .iter()
            .map(|(_, f)| &f.request)
            .chain(self.in_flight.values().map(|f| &f.request))
    }

    /// Keyed forwards to `region` waiting for their record to be durable.
    fn waiting_for(&self, region: &str) -> usize {
        self.awaiting_disk
            .iter()
            .filter(|(_, f)| f.target == region)
            .count()
    }

    /// Units of pool `p` of event `ev` forwarded to `region` and not yet answered.
    fn units_on_the_way(&self, ev: usize, p: PoolIdx, region: &str) -> u64 {
        self.awaiting_disk
            .iter()
            .map(|(_, f)| f)
            .chain(self.in_flight.values())
            .filter(|f| f.target == region)
            .filter_map(|f| f.units)
            .filter(|&(e, q, _)| e == ev && q == p)
            .map(|(_, _, n)| n)
            .sum()
    }

    /// Forgets refusals too old to trust.
    pub fn expire(&mut self, now: Millis) {
        self.refusals
            .retain(|_, r| now.saturating_sub(r.at) < REFUSAL_TRUSTED_MS);
    }

    pub fn len(&self) -> usize {
        self.awaiting_disk.len() + self.in_flight.len()
    }

    pub fn check(&self) -> Result<(), String> {
        if self
            .awaiting_disk
            .iter()
            .zip(self.awaiting_disk.iter().skip(1))
            .any(|(a, b)| a.0 > b.0)
        {
            return Err("forwards: the disk queue is out of record order".into());
        }
        for f in self
            .awaiting_disk
            .iter()
            .map(|(_, f)| f)
            .chain(self.in_flight.values())
        {
            if !matches!(f.request.caller, Caller::Client(_)) {
                return Err("forwards: a call from another region forwarded again".into());
            }
            if f.tries > MAX_TARGETS || f.refused_by.contains(&f.target) {
                return Err(format!(
                    "forwards: {} sent to a region that refused it",
                    f.key.key
                ));
            }
            if f.request.key.is_some() && !f.request.holds_claim {
                return Err(format!(
                    "forwards: {} on its way without its claim",
                    f.key.key
                ));
            }
        }
        Ok(())
    }
}

/// What a buyer's request needs from other regions, as this region knows them.
enum Plan {
    Forward(String),
    /// No one region has it all, the regions together do: gather the parts here.
    Gather(PoolKey, Vec<(usize, u64)>),
    /// This region has it now (a retry of a key whose target refused, after this region
    /// received quota): sell it here.
    SellHere,
    Refuse(CoreError),
}

impl Command {
    /// A buyer's hold or purchase: what a region forwards when its own quota cannot cover it.
    pub(crate) fn want(&self) -> Option<(&str, &Want)> {
        match self {
            Command::Hold { event, want, .. } | Command::Purchase { event, want, .. } => {
                Some((event, want))
            }
            _ => None,
        }
    }
}

impl Core {
    /// Whether a refusal of this request sends it to another region instead of the buyer.
    pub(super) fn forwards(&self, req: &Request, refusal: &CoreError) -> bool {
        self.cfg.forwarding
            && matches!(req.caller, Caller::Client(_))
            && refusal.is_out_of_stock()
            && req.command.want().is_some()
    }

    /// This region refused `req` for want of stock: it goes to the region that has it, or
    /// the buyer hears why not.
    pub(super) fn forward_refused(&mut self, req: Request, refusal: CoreError) {
        match self.plan(&req.command, refusal.clone(), &[], !req.gathered) {
            Plan::Forward(target) => {
                let key = match &req.key {
                    Some(k) => k.clone(),
                    None => IdempotencyKey {
                        key: self.forwards.next_id(),
                        body_hash: [0; 32],
                    },
                };
                let f = self.first_try(req, target, key, Vec::new());
                self.forward(f);
            }
            Plan::Gather(pool, parts) => self.gather(req, pool, parts),
            // This region has just refused it for want of stock: its own answer stands.
            Plan::SellHere => {
                self.reply_now(req.caller.clone(), Err(refusal));
                self.decided(req);
            }
            Plan::Refuse(e) => {
                self.reply_now(req.caller.clone(), Err(e));
                self.decided(req);
            }
        }
    }

    /// A retry of a key this region forwarded: to the same target, once the record naming
    /// it is durable.
    pub(super) fn forward_again(
        &mut self,
        req: Request,
        target: String,
        refused_by: Vec<String>,
        index: RecordIndex,
    ) {
        let Some(key) = req.key.clone() else {
            unreachable!("only a keyed request finds a forward under its key")
        };
        let f = self.first_try(req, target, key, refused_by);
        if index <= self.durable.persisted() {
            self.send_forward(f);
        } else {
            self.forwards.after_disk(index, f);
        }
    }

    /// Whether forwards to `region` in flight (or waiting for the disk) are at the cap.
    fn forwards_full(&self, region: &str) -> bool {
        self.calls.outstanding_of(region, Waiter::Forward) + self.forwards.waiting_for(region)
            >= self.cfg.max_forwards_per_peer
    }

    /// A request's first try at a region, `key` being what the target deduplicates on.
    fn first_try(
        &self,
        request: Request,
        target: String,
        key: IdempotencyKey,
        refused_by: Vec<String>,
    ) -> Forward {
        Forward {
            units: self.units_of(&request.command),
            event: request
                .command
                .want()
                .and_then(|(event, _)| self.by_id.get(event).copied()),
            request,
            target,
            key,
            refused_by,
            tries: 1,
            started_at: self.now,
        }
    }

    /// Records the target under the buyer's key (if any), then sends once that is durable.
    /// The target was chosen below the cap (see [`Core::plan`]), or is a keyed retry's
    /// recorded target, which is not refused for the cap: only it may hold the order.
    fn forward(&mut self, f: Forward) {
        match f.request.key.clone() {
            Some(key) => {
                let index = self.commit(RecordBody::KeyAnswered {
                    idem: IdemRecord {
                        key,
                        outcome: Outcome::Forwarded {
                            target: f.target.clone(),
                            refused_by: f.refused_by.clone(),
                        },
                    },
                });
                self.forwards.after_disk(index, f);
            }
            None => self.send_forward(f),
        }
    }

    fn send_forward(&mut self, f: Forward) {
        // The target may take two thirds of the wait from the call's arrival (its own clock),
        // so an answer it sends in time has the rest, less the way there, to travel back.
        let wait = self.cfg.peer_call_timeout_ms;
        let id = self
            .calls
            .open(Waiter::Forward, &f.target, self.now.saturating_add(wait));
        self.forwards.count(&f, |s| s.sent += 1);
        self.out.exchange.push((
            f.target.clone(),
            Exchange::Call {
                id,
                key: Some(f.key.clone()),
                command: Box::new(f.request.command.clone()),
                budget_ms: Some(wait * 2 / 3),
            },
        ));
        self.forwards.in_flight.insert(id, f);
    }

    /// Records up to `persisted` are durable: the forwards waiting on them leave.
    pub(super) fn send_durable_forwards(&mut self) {
        let persisted = self.durable.persisted();
        while let Some(f) = self.forwards.durable(persisted) {
            self.send_forward(f);
        }
    }

    /// The target answered a forwarded request.
    pub(super) fn forward_answered(
        &mut self,
        from: &str,
        id: CallId,
        answer: Result<Box<crate::exchange::RemoteOutcome>, CoreError>,
    ) {
        let Some(mut f) = self.forwards.in_flight.remove(&id) else {
            return;
        };
        let caller = f.request.caller.clone();
        match answer {
            Ok(remote) => {
                self.forwards.answered(&f, self.now, true);
                // The seller's row is not merged from the answer (gossip brings it, with the
                // rows it depends on): alone, a row that spent quota another region granted
                // would show this view more sold than the capacity until that region's row
                // came (found by the fuzz mode, seed 664).
                let reply = self
                    .accept_remote(from, &remote)
                    .map(|()| Outcome::Remote(remote));
                self.reply_now(caller, reply);
                self.decided(f.request);
            }
            Err(e) => {
                self.forwards.answered(&f, self.now, false);
                if let (CoreError::SoldOut { available, .. }, Some((ev, p, _))) = (&e, f.units) {
                    self.note_refusal(ev, p, from, *available);
                }
                // Out of stock, or the budget spent there: the target keeps that refusal under
                // the key, so it will never sell this request, and the next region may.
                if !(e.is_out_of_stock() || e == CoreError::DeadlinePassed) {
                    self.reply_now(caller, Err(e));
                    return self.decided(f.request);
                }
                // Its stock moved since this region last heard: the next candidate, once.
                f.refused_by.push(f.target.clone());
                self.forward_next(f, e);
            }
        }
    }

    /// The call was not answered in time (`sent`), or never left for want of a link.
    pub(super) fn forward_lost(&mut self, id: CallId, sent: bool) {
        let Some(mut f) = self.forwards.in_flight.remove(&id) else {
            return;
        };
        self.forwards.count(&f, |s| s.lost += 1);
        let unreachable = CoreError::StockUnreachable {
            wanted: wanted(&f.request.command),
            regions: vec![f.target.clone()],
        };
        // A call that may have arrived may have sold: the buyer retries (with a key, to the
        // same target). Even one that never left does not move a key on: an earlier attempt
        // of the same key may have reached that target.
        if sent || f.request.key.is_some() {
            self.reply_now(f.request.caller.clone(), Err(unreachable));
            return self.decided(f.request);
        }
        f.refused_by.push(f.target.clone());
        self.forward_next(f, unreachable);
    }

    fn forward_next(&mut self, mut f: Forward, refusal: CoreError) {
        if f.tries >= MAX_TARGETS {
            self.reply_now(f.request.caller.clone(), Err(refusal));
            return self.decided(f.request);
        }
        // Gathered for, if no one region has it all: a target that refused it keeps that
        // refusal under its key, so a sale here is the request's only one (as a sale by the
        // next target would be), and its order replaces the key's forward record.
        let may_gather = !f.request.gathered;
        match self.plan(&f.request.command, refusal, &f.refused_by, may_gather) {
            Plan::Forward(next) => {
                f.target = next;
                f.tries += 1;
                self.forward(f);
            }
            Plan::Gather(pool, parts) => self.gather(f.request, pool, parts),
            Plan::SellHere => {
                let mut req = f.request;
                req.sell_here = true;
                self.run(req);
            }
            Plan::Refuse(e) => {
                self.reply_now(f.request.caller.clone(), Err(e));
                self.decided(f.request);
            }
        }
    }

    /// Where a request this region cannot cover should go, from what it knows of the other
    /// regions: `refusal` is this region's own answer, given when no other region does better.
    /// With `may_gather`, a quantity no one region has but several together do is gathered.
    fn plan(
        &self,
        command: &Command,
        refusal: CoreError,
        refused_by: &[String],
        may_gather: bool,
    ) -> Plan {
        let Some((event, want)) = command.want() else {
            return Plan::Refuse(refusal);
        };
        let Some(&ev) = self.by_id.get(event) else {
            return Plan::Refuse(refusal);
        };
        let e = &self.events[ev];
        let regions = &e.genesis().regions;
        let tried = |r: usize| refused_by.iter().any(|t| *t == regions[r]);
        let reachable = |r: usize| self.heard_lately(ev, r);
        // `refusal` is only the fallback answer: a request may come back here refused by a
        // target, or undeliverable, as well as refused by this region.
        match want {
            Want::Seats { seats, .. } => {
                // Every seat asked for must be the same other region's.
                match self.seats_owner(ev, want) {
                    Some(r) if tried(r) => Plan::Refuse(refusal),
                    Some(r) if reachable(r) && self.forwards_full(&regions[r]) => {
                        Plan::Refuse(CoreError::Unreachable {
                            region: regions[r].clone(),
                            why: "too many forwarded requests to it are in flight".into(),
                        })
                    }
                    Some(r) if reachable(r) => Plan::Forward(regions[r].clone()),
                    Some(r) => Plan::Refuse(CoreError::StockUnreachable {
                        wanted: seats.len() as u64,
                        regions: vec![regions[r].clone()],
                    }),
                    None => Plan::Refuse(refusal),
                }
            }
            Want::Quantity { pool, quantity } => {
                let Some(p) = e.genesis().pool_index(pool) else {
                    return Plan::Refuse(refusal);
                };
                if e.sellable(p) >= *quantity as i64 {
                    return Plan::SellHere;
                }
                let sellable: Vec<u64> = (0..regions.len())
                    .map(|r| self.expected_sellable(ev, p, r))
                    .collect();
                let others = (0..regions.len()).filter(|&r| r != e.me as usize && !tried(r));
                let (near, far): (Vec<usize>, Vec<usize>) = others
                    .filter(|&r| sellable[r] >= *quantity)
                    .partition(|&r| reachable(r));
                let (open, full): (Vec<usize>, Vec<usize>) = near
                    .into_iter()
                    .partition(|&r| !self.forwards_full(&regions[r]));
                // The region whose stock lasts longest at its own buyers' demand, not the
                // nearest: the nearest would be drained by every other region's buyers and
                // run dry first, and its own buyers would then wait a round trip each
                // (measured on the flash sale: us-east, 80 ms from the busiest region, had a
                // p99 of 223 ms choosing by distance, 2 ms choosing by stock left). Units this
                // region forwarded there and has no answer for are taken off that stock for
                // the choice (not for whether anyone has it: see `expected_sellable`): a
                // region whose unclaimed stock still covers the request first, or every
                // forward of one round trip would go to one region on one old frame, drain
                // it, and be refused there.
                let unclaimed = |r: usize| {
                    sellable[r].saturating_sub(self.forwards.units_on_the_way(ev, p, &regions[r]))
                };
                if let Some((best, _)) =
                    open.into_iter()
                        .map(|r| (r, unclaimed(r)))
                        .max_by_key(|&(r, left)| {
                            (
                                left >= *quantity,
                                self.lasts_ms(ev, p, r, left),
                                std::cmp::Reverse(self.rtt_to(&regions[r])),
                                left,
                            )
                        })
                {
                    return Plan::Forward(regions[best].clone());
                }
                if let Some(&r) = full.first() {
                    return Plan::Refuse(CoreError::Unreachable {
                        region: regions[r].clone(),
                        why: "too many forwarded requests to it are in flight".into(),
                    });
                }
                // No region it can reach has it all: those that have parts give them here.
                if may_gather {
                    if let Some(parts) = self.parts_to_gather(ev, p, *quantity, &sellable) {
                        return Plan::Gather((ev, p), parts);
                    }
                }
                if !far.is_empty() {
                    return Plan::Refuse(CoreError::StockUnreachable {
                        wanted: *quantity,
                        regions: far.into_iter().map(|r| regions[r].clone()).collect(),
                    });
                }
                Plan::Refuse(refusal)
            }
        }
    }

    /// What region `r` can be expected to sell of pool `p` for a request sent to it now: its
    /// last known sellable, or less if it refused a forward lately saying so.
    ///
    /// Units already forwarded to it and not yet answered are not subtracted: they may be
    /// refused or fail, and a buyer told `sold-out` while they were on their way would be a
    /// false sold-out if they did (measured: 0.14% of the flash sale's answers with them
    /// subtracted, 0.001% without). A request too many is refused by the target, which
    /// teaches this region at once (see [`REFUSAL_TRUSTED_MS`]).
    fn expected_sellable(&self, ev: usize, p: PoolIdx, r: usize) -> u64 {
        let e = &self.events[ev];
        let mut s = self.last_known_sellable(ev, p, r);
        if let Some(f) = self.forwards.refusals.get(&(ev, p, r)) {
            let fresh = self.now.saturating_sub(f.at) < REFUSAL_TRUSTED_MS
                && e.peers[r].heard_at == f.heard_at;
            if fresh && e.ledger.available_wide(p, r as RegionIdx) <= f.ledger_available {
                s = s.min(f.available);
            }
        }
        s
    }

    /// How long `sellable` units of pool `p` would last region `r` at its own buyers' demand
    /// (as its last frame said), in whole milliseconds, at most [`LASTS_LONG_ENOUGH_MS`]: stock
    /// that lasts that long is not short, and among such regions the nearest is chosen.
    fn lasts_ms(&self, ev: usize, p: PoolIdx, r: usize, sellable: u64) -> u64 {
        let per_min = self.events[ev].peers[r]
            .demand_per_min
            .get(p as usize)
            .copied()
            .unwrap_or(0);
        if per_min == 0 {
            return LASTS_LONG_ENOUGH_MS;
        }
        (sellable.saturating_mul(60_000) / per_min).min(LASTS_LONG_ENOUGH_MS)
    }

    /// Who gives what so that this region can sell `quantity` of pool `p` itself: the
    /// nearest reachable regions first, each its expected sellable at most. `None` when they
    /// cannot make up the difference together, or when this region may not move quota.
    fn parts_to_gather(
        &self,
        ev: usize,
        p: PoolIdx,
        quantity: u64,
        sellable: &[u64],
    ) -> Option<Vec<(usize, u64)>> {
        let e = &self.events[ev];
        if !e.info.rebalance {
            return None;
        }
        let regions = &e.genesis().regions;
        let mut need = quantity.checked_sub(e.sellable(p).max(0) as u64)?;
        let mut donors: Vec<usize> = (0..regions.len())
            .filter(|&r| r != e.me as usize && sellable[r] > 0 && self.heard_lately(ev, r))
            .filter(|&r| self.calls.outstanding_to(&regions[r]) < self.cfg.max_calls_per_peer)
            .collect();
        donors.sort_by_key(|&r| (self.rtt_to(&regions[r]), std::cmp::Reverse(sellable[r])));
        let mut parts = Vec::new();
        for r in donors {
            if need == 0 {
                break;
            }
            let part = need.min(sellable[r]);
            parts.push((r, part));
            need -= part;
        }
        (need == 0 && !parts.is_empty()).then_some(parts)
    }

    fn note_refusal(&mut self, ev: usize, p: PoolIdx, region: &str, available: u64) {
        let e = &self.events[ev];
        let Some(r) = e.genesis().region_index(region) else {
            return;
        };
        let refusal = Refusal {
            available,
            ledger_available: e.ledger.available_wide(p, r),
            at: self.now,
            heard_at: e.peers[r as usize].heard_at,
        };
        self.forwards.refusals.insert((ev, p, r as usize), refusal);
    }

    /// The event, pool and quantity of a general-admission (or any quantity) request.
    fn units_of(&self, command: &Command) -> Option<(usize, PoolIdx, u64)> {
        let (event, Want::Quantity { pool, quantity }) = command.want()? else {
            return None;
        };
        let ev = *self.by_id.get(event)?;
        let p = self.events[ev].genesis().pool_index(pool)?;
        Some((ev, p, *quantity))
    }

    /// The one region that owns every seat of `want`, if it is not this one.
    fn seats_owner(&self, ev: usize, want: &Want) -> Option<usize> {
        let Want::Seats { pool, seats } = want else {
            return None;
        };
        let e = &self.events[ev];
        let p = match pool {
            Some(pool) => e.genesis().pool_index(pool)?,
            None => e.pool_of_seat(seats.first()?)?,
        };
        let idx = self.seat_indices(ev, p, seats).ok()?;
        let mut owners = idx.iter().map(|&s| e.ledger.seat_owner(p, s).owner);
        let first = owners.next()?;
        (first != e.me && owners.all(|o| o == first)).then_some(first as usize)
    }

    /// The round trip to `region` this region has seen answers take, else the configured
    /// hint, else unknown (last).
    fn rtt_to(&self, region: &str) -> Millis {
        self.forwards
            .rtt_ms
            .get(region)
            .or_else(|| self.cfg.peer_rtt_ms.get(region))
            .copied()
            .unwrap_or(Millis::MAX)
    }

    /// Forwards this region made, by target region.
    pub fn forward_stats(&self) -> &BTreeMap<String, ForwardStats> {
        self.forwards.stats()
    }

    /// Forwards this region made for one event, by target region.
    pub fn event_forward_stats(&self, event: &str) -> Vec<(&str, &ForwardStats)> {
        match self.by_id.get(event) {
            Some(&ev) => self.forwards.event_stats(ev).collect(),
            None => Vec::new(),
        }
    }
}

/// How many units a buyer's request wants.
fn wanted(command: &Command) -> u64 {
    match command.want() {
        Some((_, Want::Quantity { quantity, .. })) => *quantity,
        Some((_, Want::Seats { seats, .. })) => seats.len() as u64,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buyers_key_keeps_only_the_refusals_the_origin_moves_on_after() {
        let sold_out = CoreError::SoldOut {
            available: 0,
            wanted: 1,
        };
        let limit = CoreError::HoldLimit(5);
        let storage = CoreError::Storage("down".into());
        // A buyer's key, scoped by the calling region.
        assert!(keeps_refusal("eu-west k-1", &sold_out));
        assert!(keeps_refusal("eu-west k-1", &CoreError::DeadlinePassed));
        assert!(!keeps_refusal("eu-west k-1", &limit));
        // A forward id holds a space of its own: every decided refusal.
        assert!(keeps_refusal("eu-west fwd 3-17", &limit));
        assert!(keeps_refusal(
            "eu-west fwd 3-17",
            &CoreError::DeadlinePassed
        ));
        assert!(!keeps_refusal("eu-west fwd 3-17", &storage));
        assert!(!keeps_refusal(
            "eu-west fwd 3-17",
            &CoreError::IdempotencyMismatch
        ));
    }
}
