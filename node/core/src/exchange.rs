//! Requests between regions: a call one region makes of another and its answer, as typed
//! peer messages beside the gossip frame.
//!
//! A buyer's or operator's request about what another region owns (its hold, its order, the
//! catalog's event creation) is not proxied by the HTTP layer: the core emits it as an
//! [`Exchange::Call`] to the owner, waits for the [`Exchange::Answer`], and times the call out
//! from `now` — so the simulator delivers calls with loss, duplication and delay like gossip,
//! and the transport only frames, bounds and carries them. The owner runs the command through
//! its own rules (idempotency key included) and answers once its records are durable. A call
//! is never forwarded again, and an operator's token never leaves the region it was shown to:
//! the owner trusts the calling region's certificate and the command's type, which only the
//! region that authenticated the operator could have sent.

use std::collections::{BTreeMap, BTreeSet};

use allot_crdt::{Genesis, RowDelta};
use serde::{Deserialize, Serialize};

use crate::api::{Command, CoreError, Hold, IdempotencyKey, Millis, Order, Outcome, RequestId};
use crate::gossip::GossipFrame;

/// Names a call within the region that made it: with the caller's region, unique, across
/// restarts too (a restarted region numbers its calls from 1 again, in a new incarnation, so
/// an answer or a remembered call of its previous life never matches a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CallId {
    pub incarnation: u64,
    pub n: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Exchange {
    Call {
        id: CallId,
        key: Option<IdempotencyKey>,
        /// Boxed: a command is large, and every message on its way is the size of the largest.
        command: Box<Command>,
        /// How long the callee may take to run it, from its arrival (a duration, not a time:
        /// two regions' clocks are never compared). The caller waits this long plus the
        /// travel back; a forwarded sale still waiting after it is refused, not sold to a
        /// buyer who was told it failed.
        budget_ms: Option<Millis>,
    },
    Answer {
        id: CallId,
        answer: Result<Box<RemoteOutcome>, CoreError>,
    },
}

/// Everything that travels between two regions, as the transport carries it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMessage {
    Gossip(GossipFrame),
    Exchange(Exchange),
}

/// What a served call did. Its own type, not [`Outcome`] (which holds [`RemoteOutcome`]): a
/// type that nests itself would let a peer's message nest without end and overflow the
/// decoder's stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Answered {
    Held(Hold),
    Order(Order),
    Released,
    EventCreated {
        event: String,
    },
    /// A handoff ask granted: `quantity` of the pool (these seats, for assigned seating) now
    /// belong to the asker, as the donor's row in [`RemoteOutcome::row`] proves.
    Granted {
        event: String,
        pool: allot_crdt::PoolIdx,
        quantity: u64,
        seats: Vec<allot_crdt::SeatIdx>,
    },
}

impl Answered {
    /// The outcomes a served call can have; `None` for any other.
    pub fn from_outcome(o: Outcome) -> Option<Answered> {
        Some(match o {
            Outcome::Held(h) => Answered::Held(h),
            Outcome::Order(o) => Answered::Order(o),
            Outcome::Released { .. } => Answered::Released,
            Outcome::EventCreated { event } => Answered::EventCreated { event },
            Outcome::Granted {
                event,
                pool,
                quantity,
                seats,
                ..
            } => Answered::Granted {
                event,
                pool,
                quantity,
                seats,
            },
            _ => return None,
        })
    }
}

/// An answer from the region that owns it, with what only that region can say: the ids it
/// gives its holds and orders, and for a new event its genesis and metadata (so the caller
/// learns the event at once instead of at the next gossip).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteOutcome {
    pub region: String,
    pub outcome: Answered,
    /// The id of the hold or order in `outcome`.
    pub id: Option<String>,
    /// The hold an order confirmed.
    pub hold_id: Option<String>,
    pub event: Option<(Genesis, Vec<Vec<u8>>)>,
    /// For a grant: the donor's durable row from what the asker last reported, which is the
    /// only way the asker credits it (never the bare quantity).
    pub row: Option<RowDelta>,
}

/// Who waits for the answer to a call this region made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiter {
    /// A request of this region's driver, proxied to the region that owns what it is about.
    Client(RequestId),
    /// The rebalancer's ask for quota.
    Handoff,
    /// A buyer's hold or purchase forwarded to a region that has the stock (its state is in
    /// the core's forward book).
    Forward,
    /// An ask for the part of a buyer's request no one region has (core/gathers.rs).
    Gather,
}

/// A call this region made and still awaits.
#[derive(Clone, Debug)]
pub(crate) struct Outstanding {
    pub waiter: Waiter,
    pub region: String,
    pub deadline: Millis,
}

/// How long an answer given is kept, so a duplicated call gets it again instead of running
/// the command twice.
const ANSWER_KEPT_MS: Millis = 60_000;

/// What one region owes and is owed in the exchange: its outstanding calls (each with a
/// deadline) and the calls it served recently.
#[derive(Default)]
pub(crate) struct ExchangeBook {
    incarnation: u64,
    next: u64,
    outstanding: BTreeMap<CallId, Outstanding>,
    deadlines: BTreeSet<(Millis, CallId)>,
    /// Calls served: `None` while the command runs, then its answer.
    served: BTreeMap<(String, CallId), (Millis, Option<Exchange>)>,
    served_order: BTreeSet<(Millis, String, CallId)>,
}

/// What to do with a call that arrives.
pub(crate) enum Arrival {
    /// A new call: run it.
    Run,
    /// Already answered: send the same answer again.
    Again(Exchange),
    /// Still running: its answer will come.
    Running,
}

impl ExchangeBook {
    pub fn new(incarnation: u64) -> ExchangeBook {
        ExchangeBook {
            incarnation,
            ..ExchangeBook::default()
        }
    }

    /// Calls to `region` of one kind still awaited.
    pub fn outstanding_of(&self, region: &str, waiter: Waiter) -> usize {
        self.outstanding
            .values()
            .filter(|o| o.region == region && o.waiter == waiter)
            .count()
    }

    /// Whether call `id` is a rebalancer's ask still awaited.
    pub fn awaits_handoff(&self, id: CallId) -> bool {
        self.outstanding
            .get(&id)
            .is_some_and(|o| matches!(o.waiter, Waiter::Handoff))
    }

    pub fn outstanding_to(&self, region: &str) -> usize {
        self.outstanding
            .values()
            .filter(|o| o.region == region)
            .count()
    }

    /// Opens a call for `waiter` to `region`, answered by `deadline`.
    pub fn open(&mut self, waiter: Waiter, region: &str, deadline: Millis) -> CallId {
        self.next += 1;
        let id = CallId {
            incarnation: self.incarnation,
            n: self.next,
        };
        self.outstanding.insert(
            id,
            Outstanding {
                waiter,
                region: region.to_owned(),
                deadline,
            },
        );
        self.deadlines.insert((deadline, id));
        id
    }

    /// Closes call `id` if `from` owes it: the client to answer.
    pub fn close(&mut self, from: &str, id: CallId) -> Option<Outstanding> {
        if self.outstanding.get(&id)?.region != from {
            return None;
        }
        let o = self.outstanding.remove(&id)?;
        self.deadlines.remove(&(o.deadline, id));
        Some(o)
    }

    /// Calls whose deadline passed, closed.
    pub fn expire(&mut self, now: Millis) -> Vec<(CallId, Outstanding)> {
        let mut out = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            out.extend(self.outstanding.remove(&id).map(|o| (id, o)));
        }
        while let Some((at, region, id)) = self.served_order.first().cloned() {
            if at.saturating_add(ANSWER_KEPT_MS) > now {
                break;
            }
            self.served_order.pop_first();
            self.served.remove(&(region, id));
        }
        out
    }

    /// Notes a call arriving from `from`.
    pub fn arrive(&mut self, from: &str, id: CallId, now: Millis) -> Arrival {
        match self.served.get(&(from.to_owned(), id)) {
            Some((_, Some(answer))) => Arrival::Again(answer.clone()),
            Some((_, None)) => Arrival::Running,
            None => {
                self.served.insert((from.to_owned(), id), (now, None));
                self.served_order.insert((now, from.to_owned(), id));
                Arrival::Run
            }
        }
    }

    /// Keeps the answer to a served call, for duplicates, if the call changed something (a
    /// success); a refused call changed nothing and may simply run again, so it is forgotten
    /// at once and never piles up.
    pub fn answered(&mut self, from: &str, id: CallId, answer: &Exchange) {
        let key = (from.to_owned(), id);
        let kept = matches!(answer, Exchange::Answer { answer: Ok(_), .. });
        match self.served.get_mut(&key) {
            Some(entry) if kept => entry.1 = Some(answer.clone()),
            Some(&mut (at, _)) => {
                self.served.remove(&key);
                self.served_order.remove(&(at, key.0, key.1));
            }
            None => {}
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if self.deadlines.len() != self.outstanding.len()
            || self
                .outstanding
                .iter()
                .any(|(id, o)| !self.deadlines.contains(&(o.deadline, *id)))
        {
            return Err("exchange: deadlines disagree with outstanding calls".into());
        }
        if self.served.len() != self.served_order.len() {
            return Err("exchange: served calls disagree with their expiry order".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_close_once_only_from_their_region_and_expire() {
        let mut b = ExchangeBook::new(1);
        let a = b.open(Waiter::Client(RequestId(1)), "us-east", 100);
        let c = b.open(Waiter::Client(RequestId(2)), "ap-south", 50);
        assert!(
            b.close("ap-south", a).is_none(),
            "another region cannot answer"
        );
        assert_eq!(
            b.close("us-east", a).unwrap().waiter,
            Waiter::Client(RequestId(1))
        );
        assert!(
            b.close("us-east", a).is_none(),
            "a duplicate answer is ignored"
        );
        assert!(b.expire(49).is_empty());
        assert_eq!(b.expire(50)[0].1.waiter, Waiter::Client(RequestId(2)));
        assert!(b.close("ap-south", c).is_none());
        b.check().unwrap();
    }

    #[test]
    fn a_duplicated_call_runs_once_and_gets_the_same_answer() {
        let mut b = ExchangeBook::new(1);
        let c7 = CallId {
            incarnation: 3,
            n: 7,
        };
        assert!(matches!(b.arrive("eu-west", c7, 0), Arrival::Run));
        assert!(matches!(b.arrive("eu-west", c7, 1), Arrival::Running));
        let answer = Exchange::Answer {
            id: c7,
            answer: Ok(Box::new(RemoteOutcome {
                region: "us-east".into(),
                outcome: Answered::Released,
                id: None,
                hold_id: None,
                event: None,
                row: None,
            })),
        };
        b.answered("eu-west", c7, &answer);
        assert!(matches!(b.arrive("eu-west", c7, 2), Arrival::Again(a) if a == answer));
        assert!(matches!(b.arrive("us-east", c7, 2), Arrival::Run));
        // The same number from the caller's next incarnation is another call.
        let next_life = CallId {
            incarnation: 4,
            n: 7,
        };
        assert!(matches!(b.arrive("eu-west", next_life, 2), Arrival::Run));
        b.expire(ANSWER_KEPT_MS + 10);
        assert!(matches!(
            b.arrive("eu-west", c7, ANSWER_KEPT_MS + 10),
            Arrival::Run
        ));
        b.check().unwrap();
    }

    #[test]
    fn a_refused_call_is_not_kept() {
        let mut b = ExchangeBook::new(1);
        let c = CallId {
            incarnation: 1,
            n: 1,
        };
        assert!(matches!(b.arrive("eu-west", c, 0), Arrival::Run));
        let refused = Exchange::Answer {
            id: c,
            answer: Err(CoreError::HoldExpired),
        };
        b.answered("eu-west", c, &refused);
        assert!(matches!(b.arrive("eu-west", c, 1), Arrival::Run));
        b.check().unwrap();
    }
}
