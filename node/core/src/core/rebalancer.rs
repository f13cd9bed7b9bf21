//! What the rebalancer remembers between ticks: per event and pool, the ask in flight (at most
//! one), when quota last left or arrived (hysteresis), which donors rest after a refusal or a
//! silence, the grants waiting for their credit to be durable, and the handoff log.
//!
//! All of it is volatile: after a restart a region asks again from what its ledger says, and a
//! donor's duplicate protection lives in the idempotency table, which is durable.

use std::collections::{BTreeMap, VecDeque};

use allot_crdt::{PoolIdx, RegionIdx};

use crate::api::Millis;
use crate::exchange::CallId;
use crate::handoff::Handoff;
use crate::policy::{Reason, Tuning};
use crate::reads::RecordIndex;

/// A region that gave quota to a peer does not ask that peer for it back for this long, and
/// one that received quota from a peer does not give that peer any for this long: quota does
/// not ping-pong. Per pair, not per region: a quiet region that gave too much to the busy one
/// may still ask a third region, and the busy one may still serve a region it took nothing
/// from (measured on the flash sale: a region-wide pause left a quiet region dry for the
/// sale's last second).
pub(crate) const HYSTERESIS_MS: Millis = 3_000;
/// A donor that refused or did not answer is not asked again for this long.
pub(crate) const REST_MS: Millis = 2_000;
/// Handoffs kept in the log, newest first.
pub(crate) const LOG_LEN: usize = 64;

/// An event's pool, by its position in the core.
pub(crate) type PoolKey = (usize, PoolIdx);

/// An ask on its way.
#[derive(Clone, Debug)]
pub(crate) struct AskInFlight {
    pub call: CallId,
    pub donor: RegionIdx,
    pub asked_at: Millis,
    pub reason: Reason,
    /// Units asked for: in flight towards this region until answered.
    pub want: u64,
}

/// Where the credit of a granted ask stands when its answer arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The answer's row applied as the record at this index: spendable once it is durable.
    Landing(RecordIndex),
    /// Gossip brought the same row before the answer.
    AlreadyHere,
    /// The row did not apply (a gap in the donor's versions, or refused): gossip brings it
    /// later, and the log does not know when.
    NotYet,
}

/// A received grant whose credit is spendable once the record at `index` is durable.
#[derive(Clone, Copy, Debug)]
struct Landing {
    index: RecordIndex,
    /// The log entry to complete with the time from ask to spendable.
    seq: u64,
    asked_at: Millis,
}

#[derive(Clone, Debug)]
struct LogEntry {
    seq: u64,
    handoff: Handoff,
}

/// A recipient to send gossip to once the transfer at record `index` is durable.
#[derive(Clone, Debug)]
struct Push {
    index: RecordIndex,
    to: String,
}

/// A donor not to be asked again before `until`, after an ask of this reason failed.
#[derive(Clone, Copy, Debug)]
struct Rest {
    until: Millis,
    reason: Reason,
}

/// Counts since the region started, for the operator and the simulator's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandoffCounters {
    pub asks_sent: u64,
    pub asks_granted: u64,
    pub asks_refused: u64,
    /// Asks that timed out or could not be sent.
    pub asks_lost: u64,
    pub asks_served: u64,
    pub units_received: u64,
    pub units_given: u64,
}

#[derive(Debug)]
pub(crate) struct Rebalancer {
    pub tuning: Option<Tuning>,
    asks: BTreeMap<PoolKey, AskInFlight>,
    by_call: BTreeMap<CallId, PoolKey>,
    /// When quota of a pool last went to a region, and last came from one.
    last_gave: BTreeMap<(PoolKey, RegionIdx), Millis>,
    last_received: BTreeMap<(PoolKey, RegionIdx), Millis>,
    resting: BTreeMap<(PoolKey, RegionIdx), Rest>,
    /// Received grants whose credit waits for its record to be durable, in record order.
    landing: VecDeque<Landing>,
    /// Newest first.
    log: VecDeque<LogEntry>,
    next_seq: u64,
    /// Operators' transfers, in record order: once a transfer's record is durable, gossip goes
    /// to its recipient at once instead of at the next tick.
    pushes: VecDeque<Push>,
    pub counters: HandoffCounters,
}

impl Rebalancer {
    pub fn new(tuning: Option<Tuning>) -> Rebalancer {
        Rebalancer {
            tuning,
            asks: BTreeMap::new(),
            by_call: BTreeMap::new(),
            last_gave: BTreeMap::new(),
            last_received: BTreeMap::new(),
            resting: BTreeMap::new(),
            landing: VecDeque::new(),
            log: VecDeque::new(),
            next_seq: 0,
            pushes: VecDeque::new(),
            counters: HandoffCounters::default(),
        }
    }

    pub fn asking(&self, pool: PoolKey) -> bool {
        self.asks.contains_key(&pool)
    }

    /// Units of `pool` asked for and not yet answered.
    pub fn asked(&self, pool: PoolKey) -> u64 {
        self.asks.get(&pool).map_or(0, |a| a.want)
    }

    /// Whether this region gave `to` quota of `pool` lately: it does not ask `to` for any.
    pub fn gave_recently(&self, pool: PoolKey, to: RegionIdx, now: Millis) -> bool {
        self.last_gave
            .get(&(pool, to))
            .is_some_and(|&t| now < t.saturating_add(HYSTERESIS_MS))
    }

    /// Whether quota of `pool` came from `from` lately: this region gives `from` none.
    pub fn received_recently(&self, pool: PoolKey, from: RegionIdx, now: Millis) -> bool {
        self.last_received
            .get(&(pool, from))
            .is_some_and(|&t| now < t.saturating_add(HYSTERESIS_MS))
    }

    /// Whether `donor` is not to be asked now, for an ask of this reason. A refusal of a
    /// running-dry ask does not hold back an endgame ask: the donor's figures for itself
    /// change at the endgame (it keeps less), and the last units must not wait out a rest.
    pub fn resting(&self, pool: PoolKey, donor: RegionIdx, now: Millis, reason: Reason) -> bool {
        self.resting.get(&(pool, donor)).is_some_and(|rest| {
            now < rest.until && (reason != Reason::Endgame || rest.reason == Reason::Endgame)
        })
    }

    pub fn sent(&mut self, pool: PoolKey, ask: AskInFlight) {
        debug_assert!(!self.asks.contains_key(&pool), "one ask per pool at a time");
        self.counters.asks_sent += 1;
        self.by_call.insert(ask.call, pool);
        self.asks.insert(pool, ask);
    }

    /// The ask a call was, closed.
    pub fn close(&mut self, call: CallId) -> Option<(PoolKey, AskInFlight)> {
        let pool = self.by_call.remove(&call)?;
        let ask = self.asks.remove(&pool)?;
        Some((pool, ask))
    }

    /// An ask refused, timed out or undeliverable: that donor rests.
    pub fn failed(&mut self, pool: PoolKey, ask: &AskInFlight, now: Millis, refused: bool) {
        if refused {
            self.counters.asks_refused += 1;
        } else {
            self.counters.asks_lost += 1;
        }
        let rest = Rest {
            until: now.saturating_add(REST_MS),
            reason: ask.reason,
        };
        self.resting.insert((pool, ask.donor), rest);
    }

    /// A grant this region made to region `to`.
    pub fn gave(&mut self, pool: PoolKey, to: RegionIdx, entry: Handoff) {
        self.counters.units_given = self.counters.units_given.saturating_add(entry.quantity);
        self.last_gave.insert((pool, to), entry.at);
        self.log_entry(entry);
    }

    /// A grant this region received from region `from`, and where its credit stands.
    pub fn received(
        &mut self,
        pool: PoolKey,
        from: RegionIdx,
        asked_at: Millis,
        mut entry: Handoff,
        arrival: Arrival,
    ) {
        self.counters.asks_granted += 1;
        self.counters.units_received = self.counters.units_received.saturating_add(entry.quantity);
        self.last_received.insert((pool, from), entry.at);
        if arrival == Arrival::AlreadyHere {
            entry.ask_to_spendable_ms = Some(entry.at.saturating_sub(asked_at));
        }
        let seq = self.log_entry(entry);
        if let Arrival::Landing(index) = arrival {
            self.landing.push_back(Landing {
                index,
                seq,
                asked_at,
            });
        }
    }

    /// Quota of `pool` arrived here from `from` at `at`, by whatever path.
    pub fn note_received(&mut self, pool: PoolKey, from: RegionIdx, at: Millis) {
        self.last_received.insert((pool, from), at);
    }

    /// Records up to `persisted` are durable at `now`: grants they carried are spendable.
    pub fn landed(&mut self, persisted: RecordIndex, now: Millis) {
        while let Some(&landing) = self.landing.front() {
            if landing.index > persisted {
                break;
            }
            self.landing.pop_front();
            if let Some(e) = self.log.iter_mut().find(|e| e.seq == landing.seq) {
                e.handoff.ask_to_spendable_ms = Some(now.saturating_sub(landing.asked_at));
            }
        }
    }

    pub fn push_after(&mut self, index: RecordIndex, to: String) {
        debug_assert!(self.pushes.back().is_none_or(|p| p.index <= index));
        self.pushes.push_back(Push { index, to });
    }

    /// Recipients whose transfers are durable up to `persisted`, each once.
    pub fn pushes_due(&mut self, persisted: RecordIndex) -> Vec<String> {
        let mut due: Vec<String> = Vec::new();
        while self.pushes.front().is_some_and(|p| p.index <= persisted) {
            if let Some(Push { to, .. }) = self.pushes.pop_front() {
                if !due.contains(&to) {
                    due.push(to);
                }
            }
        }
        due
    }

    fn log_entry(&mut self, entry: Handoff) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.log.push_front(LogEntry {
            seq,
            handoff: entry,
        });
        self.log.truncate(LOG_LEN);
        seq
    }

    /// Forgets rests that are over; called every tick so the map stays small.
    pub fn expire(&mut self, now: Millis) {
        self.resting.retain(|_, rest| now < rest.until);
        let fresh = |t: &Millis| now < t.saturating_add(HYSTERESIS_MS);
        self.last_gave.retain(|_, t| fresh(t));
        self.last_received.retain(|_, t| fresh(t));
    }

    /// The calls of the asks in flight.
    pub fn calls(&self) -> impl Iterator<Item = CallId> + '_ {
        self.by_call.keys().copied()
    }

    /// Newest first.
    pub fn log(&self) -> impl Iterator<Item = &Handoff> {
        self.log.iter().map(|e| &e.handoff)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.asks.len() != self.by_call.len()
            || self
                .by_call
                .iter()
                .any(|(call, pool)| self.asks.get(pool).is_none_or(|a| a.call != *call))
        {
            return Err("rebalancer: asks in flight disagree with their calls".into());
        }
        if self.log.len() > LOG_LEN {
            return Err("rebalancer: the handoff log outgrew its bound".into());
        }
        if self
            .landing
            .iter()
            .zip(self.landing.iter().skip(1))
            .any(|(a, b)| a.index > b.index)
            || self
                .pushes
                .iter()
                .zip(self.pushes.iter().skip(1))
                .any(|(a, b)| a.index > b.index)
        {
            return Err("rebalancer: landing grants or pushes out of record order".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: Millis, quantity: u64) -> Handoff {
        Handoff {
            event: "e".into(),
            pool: 0,
            from: "us-east".into(),
            to: "eu-west".into(),
            quantity,
            reason: Reason::RunningDry,
            at,
            ask_to_spendable_ms: None,
        }
    }

    #[test]
    fn one_ask_per_pool_and_hysteresis_both_ways() {
        let mut r = Rebalancer::new(Some(Tuning::default()));
        let call = CallId {
            incarnation: 1,
            n: 1,
        };
        r.sent(
            (0, 0),
            AskInFlight {
                call,
                donor: 1,
                asked_at: 100,
                reason: Reason::RunningDry,
                want: 1,
            },
        );
        assert!(r.asking((0, 0)));
        assert!(!r.asking((0, 1)));
        let (pool, ask) = r.close(call).unwrap();
        assert_eq!((pool, ask.donor), ((0, 0), 1));
        assert!(r.close(call).is_none(), "a duplicate answer finds no ask");
        r.received(
            (0, 0),
            1,
            100,
            entry(350, 40),
            Arrival::Landing(RecordIndex(7)),
        );
        assert!(r.received_recently((0, 0), 1, 350 + HYSTERESIS_MS - 1));
        assert!(!r.received_recently((0, 0), 1, 350 + HYSTERESIS_MS));
        // Per pair: a region it took nothing from may still be served.
        assert!(!r.received_recently((0, 0), 2, 350));
        r.landed(RecordIndex(6), 400);
        assert_eq!(r.log().next().unwrap().ask_to_spendable_ms, None);
        r.landed(RecordIndex(7), 420);
        assert_eq!(r.log().next().unwrap().ask_to_spendable_ms, Some(320));
        r.gave((0, 0), 2, entry(1_000, 5));
        assert!(r.gave_recently((0, 0), 2, 1_000 + HYSTERESIS_MS - 1));
        assert!(!r.gave_recently((0, 0), 2, 1_000 + HYSTERESIS_MS));
        assert!(
            !r.gave_recently((0, 0), 1, 1_000),
            "only the recipient is not asked"
        );
        let refused = AskInFlight {
            call,
            donor: 2,
            asked_at: 900,
            reason: Reason::RunningDry,
            want: 3,
        };
        r.failed((0, 0), &refused, 1_000, true);
        let dry = Reason::RunningDry;
        assert!(r.resting((0, 0), 2, 1_000 + REST_MS - 1, dry));
        assert!(!r.resting((0, 0), 2, 1_000 + REST_MS, dry));
        // The endgame does not wait out a rest earned before it.
        assert!(!r.resting((0, 0), 2, 1_000, Reason::Endgame));
        let endgame = AskInFlight {
            reason: Reason::Endgame,
            ..refused
        };
        r.failed((0, 0), &endgame, 1_000, true);
        assert!(r.resting((0, 0), 2, 1_000, Reason::Endgame));
        r.check().unwrap();
    }

    #[test]
    fn the_log_is_bounded_and_newest_first() {
        let mut r = Rebalancer::new(None);
        for i in 0..(LOG_LEN as u64 + 10) {
            r.gave((0, 0), 1, entry(i, 1));
        }
        assert_eq!(r.log().count(), LOG_LEN);
        assert_eq!(r.log().next().unwrap().at, LOG_LEN as u64 + 9);
        r.check().unwrap();
    }
}
