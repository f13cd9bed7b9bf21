//! A model of sale forwarding, checked exhaustively with stateright.
//!
//! An origin region with no quota of its own forwards a buyer's purchase of one unit to one
//! of two targets, each owning one unit. The buyer has one `Idempotency-Key` and sends it to
//! the origin up to three times (a retry after a 503, a crash, a lost reply). Each target
//! also serves its own buyers: it may sell its unit, or hold it and later release the hold,
//! so a target may refuse a forward and have stock again a moment after. Messages — calls and
//! answers — are lost, duplicated and reordered at will (the network is a set, as in
//! handoff_model.rs). Any region may crash at any step, as often as it likes: its memory is
//! rebuilt from its durable state alone, and what it waited on (a call in flight, answers
//! due, the key's claim) is forgotten. A crash that would lose nothing is not offered.
//!
//! What the model keeps mirrors `core/forwards.rs` and the idempotency table: the origin's
//! record under the key (`Outcome::Forwarded { target, refused_by }`) and each target's entry
//! under the caller-scoped key (the order, or a kept `Outcome::Refused`), each as written in
//! memory and as durable; `Persist` makes everything written durable at once.
//! - The origin runs one request per key at a time (it holds the key's claim): a retry
//!   meanwhile is not enabled here (in the core it waits behind the claim, then runs).
//! - A request follows the key's record if there is one; else the origin picks any target
//!   (its view of stock is stale, so every pick must be safe) and writes the record. The call
//!   leaves only once that record is durable (`forward`, `forward_again`,
//!   `send_durable_forwards`). Calls are named uniquely across restarts, as `CallId` is.
//! - A target answers from its key entry if it has one. Else the call's budget may be spent
//!   (`DeadlinePassed`), or it sells its unit, or it refuses out of stock; it keeps the order
//!   or either refusal under the key and answers once that is durable (`refuse`,
//!   `reply_after`, `keeps_refusal`).
//! - The origin moves on from a target only on hearing its kept refusal, to at most
//!   `MAX_TARGETS` per request, recording the next target first (`forward_answered`,
//!   `forward_next`). An order is told to the buyer and the record stays, so a retry goes to
//!   the same target and gets the same order. A silence (`GiveUp`, as `forward_lost`) tells
//!   the buyer to retry and never moves on. A late answer finds no call and changes nothing;
//!   since call ids are never reused, such an answer is dropped from the network at once (as
//!   good as lost), which keeps it from telling states apart.
//!
//! The search runs to completion (no depth or time cut): about 6.6 million states visited,
//! 690,000 unique, in 2–3 s in release on 2 cores (the test prints the exact counts). Each
//! deliberate break — the call sent before its record is durable, an out-of-stock refusal not
//! kept, an order answered before it is durable, moving on after a silence — makes a property
//! fail.

use std::collections::BTreeSet;

mod model_check;

use model_check::{check, check_until};
use stateright::{Checker, Model, Property};

const TARGETS: usize = 2;
/// Each target's own quota, in units.
const QUOTA: u8 = 1;
/// Targets one request may be sent to (`forwards::MAX_TARGETS`).
const MAX_TARGETS: u8 = 2;
/// How often the buyer sends its key to the origin: the first request and two retries.
const BUYER_SENDS: u8 = 3;

type Target = usize;
/// A set of targets, bit `t` for target `t`.
type Targets = u8;
/// A call's id, unique across the origin's restarts (`CallId` carries its incarnation).
type CallId = u8;

/// The origin's record under the buyer's key: where the key goes, and who refused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Forwarded {
    target: Target,
    refused_by: Targets,
}

/// A refusal the target keeps under the key, so that it never sells the key later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Refusal {
    SoldOut,
    DeadlinePassed,
}

/// What a target answers a forwarded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Answer {
    Order,
    Refused(Refusal),
}

/// A target's state: its local sales and holds, and its entry under the buyer's key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Shelf {
    sold_locally: u8,
    held: u8,
    key: Option<Answer>,
}

impl Shelf {
    fn taken(&self) -> u8 {
        self.sold_locally + self.held + u8::from(self.key == Some(Answer::Order))
    }

    fn sellable(&self) -> bool {
        self.taken() < QUOTA
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct TargetState {
    durable: Shelf,
    memory: Shelf,
    /// Calls to answer once the key's entry is durable (bit `call`).
    answers_due: u8,
}

/// The buyer's request the origin is running: it holds the key's claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Request {
    target: Target,
    refused_by: Targets,
    /// Targets this request was sent to (at most `MAX_TARGETS`).
    tries: u8,
    /// The call on its way, or `None` while the record naming `target` is not yet durable.
    call: Option<CallId>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct OriginState {
    durable: Option<Forwarded>,
    memory: Option<Forwarded>,
    request: Option<Request>,
}

/// A message on its way: delivered in any order, any number of times, until lost.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Msg {
    Call {
        call: CallId,
        target: Target,
    },
    Answer {
        call: CallId,
        target: Target,
        answer: Answer,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    origin: OriginState,
    targets: [TargetState; TARGETS],
    network: BTreeSet<Msg>,
    calls_made: u8,
    buyer_sends_left: u8,
    /// Ghost: the targets whose order the buyer was told of.
    acknowledged: Targets,
    /// Ghost: a crash of the origin lost a request on its way.
    origin_lost_a_request: bool,
    /// Ghost: the buyer was told an order after such a crash.
    acknowledged_after_crash: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Region {
    Origin,
    Target(Target),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    /// The buyer sends its key to the origin; `pick` is the origin's choice of target when
    /// the key has no record yet (else the record's target).
    Buy {
        pick: Target,
    },
    /// The origin stops waiting for its call: the buyer is told to retry (503).
    GiveUp,
    SellLocally(Target),
    HoldLocally(Target),
    ReleaseHold(Target),
    Persist(Region),
    /// A crash and restart: memory is rebuilt from durable state only.
    Crash(Region),
    Deliver(Msg),
    /// A call that reaches its target after its budget is spent.
    DeliverLate {
        call: CallId,
        target: Target,
    },
    Lose(Msg),
}

/// A deliberate break of the protocol, which the model must catch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Break {
    /// The origin sends a call before the record naming its target is durable.
    SendBeforeRecordDurable,
    /// A target answers out of stock without keeping the refusal under the key.
    ForgetSoldOut,
    /// A target answers an order before the order is durable.
    AnswerOrderBeforeDurable,
    /// The origin moves on to the next target after a silence, as after a refusal.
    MoveOnAfterSilence,
}

struct ForwardingModel {
    broken: Option<Break>,
}

fn has(set: Targets, t: Target) -> bool {
    set & (1 << t) != 0
}

impl ForwardingModel {
    fn broken(&self, b: Break) -> bool {
        self.broken == Some(b)
    }

    /// The request's call leaves once the record naming its target is durable: now if it is,
    /// else at the origin's next `Persist`.
    fn send_when_durable(&self, w: &mut World) {
        let o = &w.origin;
        let Some(req) = o.request else { return };
        let durable = o.durable == o.memory;
        if req.call.is_none() && (durable || self.broken(Break::SendBeforeRecordDurable)) {
            let call = w.calls_made;
            w.calls_made += 1;
            assert!(w.calls_made <= 8, "call ids are bits of a u8");
            w.origin.request = Some(Request {
                call: Some(call),
                ..req
            });
            w.network.insert(Msg::Call {
                call,
                target: req.target,
            });
        }
    }

    /// The request's target refused it (or, broken, was silent): the next target, once, or
    /// the buyer hears sold-out.
    fn move_on(&self, w: &mut World) {
        let Some(mut req) = w.origin.request.take() else {
            return;
        };
        req.refused_by |= 1 << req.target;
        // Two targets: at most one candidate is left, so the pick is not a choice here.
        let next = (0..TARGETS).find(|&t| !has(req.refused_by, t));
        if let (true, Some(next)) = (req.tries < MAX_TARGETS, next) {
            w.origin.memory = Some(Forwarded {
                target: next,
                refused_by: req.refused_by,
            });
            w.origin.request = Some(Request {
                target: next,
                refused_by: req.refused_by,
                tries: req.tries + 1,
                call: None,
            });
            self.send_when_durable(w);
        }
        // Else the buyer is told sold-out, and the claim is released.
    }

    fn deliver_call(&self, w: &mut World, call: CallId, t: Target, budget_spent: bool) {
        let s = &mut w.targets[t];
        let answer = match s.memory.key {
            // The key's first answer again, once it is durable.
            Some(answer) => answer,
            None if budget_spent => Answer::Refused(Refusal::DeadlinePassed),
            None if s.memory.sellable() => Answer::Order,
            None if self.broken(Break::ForgetSoldOut) => {
                let answer = Answer::Refused(Refusal::SoldOut);
                w.network.insert(Msg::Answer {
                    call,
                    target: t,
                    answer,
                });
                return;
            }
            None => Answer::Refused(Refusal::SoldOut),
        };
        s.memory.key = Some(answer);
        let early = answer == Answer::Order && self.broken(Break::AnswerOrderBeforeDurable);
        if s.durable.key.is_some() || early {
            w.network.insert(Msg::Answer {
                call,
                target: t,
                answer,
            });
        } else {
            s.answers_due |= 1 << call;
        }
    }

    fn deliver_answer(&self, w: &mut World, call: CallId, t: Target, answer: Answer) {
        // A late or duplicated answer finds no call: it changes nothing.
        let Some(req) = w.origin.request else { return };
        if req.call != Some(call) {
            return;
        }
        match answer {
            Answer::Order => {
                w.origin.request = None;
                w.acknowledged |= 1 << t;
                if w.origin_lost_a_request {
                    w.acknowledged_after_crash = true;
                }
            }
            Answer::Refused(_) => self.move_on(w),
        }
    }
}

impl Model for ForwardingModel {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        vec![World {
            origin: OriginState::default(),
            targets: Default::default(),
            network: BTreeSet::new(),
            calls_made: 0,
            buyer_sends_left: BUYER_SENDS,
            acknowledged: 0,
            origin_lost_a_request: false,
            acknowledged_after_crash: false,
        }]
    }

    fn actions(&self, w: &World, actions: &mut Vec<Action>) {
        let o = &w.origin;
        if o.request.is_none() && w.buyer_sends_left > 0 {
            match o.memory {
                Some(record) => actions.push(Action::Buy {
                    pick: record.target,
                }),
                None => actions.extend((0..TARGETS).map(|pick| Action::Buy { pick })),
            }
        }
        if o.request.is_some_and(|r| r.call.is_some()) {
            actions.push(Action::GiveUp);
        }
        if o.memory != o.durable {
            actions.push(Action::Persist(Region::Origin));
        }
        if o.memory != o.durable || o.request.is_some() {
            actions.push(Action::Crash(Region::Origin));
        }
        for (t, s) in w.targets.iter().enumerate() {
            if s.memory.sellable() {
                actions.push(Action::SellLocally(t));
                actions.push(Action::HoldLocally(t));
            }
            if s.memory.held > 0 {
                actions.push(Action::ReleaseHold(t));
            }
            if s.memory != s.durable || s.answers_due != 0 {
                actions.push(Action::Persist(Region::Target(t)));
                // A crash that loses nothing is no new state.
                actions.push(Action::Crash(Region::Target(t)));
            }
        }
        for m in &w.network {
            actions.push(Action::Deliver(m.clone()));
            // Late or not is the same to a target that has an entry under the key already.
            if let &Msg::Call { call, target } = m {
                if w.targets[target].memory.key.is_none() {
                    actions.push(Action::DeliverLate { call, target });
                }
            }
            actions.push(Action::Lose(m.clone()));
        }
    }

    fn next_state(&self, w: &World, action: Action) -> Option<World> {
        let mut w = w.clone();
        match action {
            Action::Buy { pick } => {
                w.buyer_sends_left -= 1;
                let record = *w.origin.memory.get_or_insert(Forwarded {
                    target: pick,
                    refused_by: 0,
                });
                w.origin.request = Some(Request {
                    target: record.target,
                    refused_by: record.refused_by,
                    tries: 1,
                    call: None,
                });
                self.send_when_durable(&mut w);
            }
            Action::GiveUp if self.broken(Break::MoveOnAfterSilence) => self.move_on(&mut w),
            Action::GiveUp => w.origin.request = None,
            Action::SellLocally(t) => w.targets[t].memory.sold_locally += 1,
            Action::HoldLocally(t) => w.targets[t].memory.held += 1,
            Action::ReleaseHold(t) => w.targets[t].memory.held -= 1,
            Action::Persist(Region::Origin) => {
                w.origin.durable = w.origin.memory;
                self.send_when_durable(&mut w);
            }
            Action::Persist(Region::Target(t)) => {
                let s = &mut w.targets[t];
                s.durable = s.memory;
                let due = std::mem::take(&mut s.answers_due);
                for call in (0..8).filter(|c| due & (1 << c) != 0) {
                    let answer = s.durable.key.expect("answers are due only for a key entry");
                    w.network.insert(Msg::Answer {
                        call,
                        target: t,
                        answer,
                    });
                }
            }
            Action::Crash(Region::Origin) => {
                let o = &mut w.origin;
                if o.request.take().is_some() {
                    w.origin_lost_a_request = true;
                }
                o.memory = o.durable;
            }
            Action::Crash(Region::Target(t)) => {
                let s = &mut w.targets[t];
                s.memory = s.durable;
                s.answers_due = 0;
            }
            Action::Deliver(Msg::Call { call, target }) => {
                self.deliver_call(&mut w, call, target, false)
            }
            Action::DeliverLate { call, target } => self.deliver_call(&mut w, call, target, true),
            Action::Deliver(Msg::Answer {
                call,
                target,
                answer,
            }) => self.deliver_answer(&mut w, call, target, answer),
            Action::Lose(m) => {
                w.network.remove(&m);
            }
        }
        // An answer to a call the origin no longer waits for would change nothing if
        // delivered (a call id is never reused): it is as good as lost, and dropped so that
        // it does not tell states apart.
        let awaited = w.origin.request.and_then(|r| r.call);
        w.network
            .retain(|m| !matches!(m, Msg::Answer { call, .. } if Some(*call) != awaited));
        Some(w)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(ONE_ORDER, |_: &Self, w: &World| {
                let holding = w.targets.iter().filter(|s| {
                    s.memory.key == Some(Answer::Order) || s.durable.key == Some(Answer::Order)
                });
                holding.count() <= 1
            }),
            Property::always(WITHIN_QUOTA, |_: &Self, w: &World| {
                w.targets
                    .iter()
                    .all(|s| s.memory.taken() <= QUOTA && s.durable.taken() <= QUOTA)
            }),
            Property::always(NO_LOST_ORDER, |_: &Self, w: &World| {
                (0..TARGETS).all(|t| {
                    !has(w.acknowledged, t) || w.targets[t].durable.key == Some(Answer::Order)
                })
            }),
            Property::always(ONE_ANSWER, |_: &Self, w: &World| {
                w.acknowledged.count_ones() <= 1
            }),
            Property::sometimes(SECOND_TARGET, |_: &Self, w: &World| {
                w.origin
                    .durable
                    .is_some_and(|r| r.refused_by != 0 && has(w.acknowledged, r.target))
            }),
            Property::sometimes(RETRY_AFTER_CRASH, |_: &Self, w: &World| {
                w.acknowledged_after_crash
            }),
        ]
    }
}

const ONE_ORDER: &str = "never two orders for one key";
const WITHIN_QUOTA: &str = "never an order without its quota";
const NO_LOST_ORDER: &str = "never a lost acknowledged order";
const ONE_ANSWER: &str = "the buyer is never told two different orders";
const SECOND_TARGET: &str = "an order through the second target is acknowledged";
const RETRY_AFTER_CRASH: &str = "a retry after an origin crash is acknowledged the order";

#[test]
fn forwarding_keeps_every_invariant_in_every_interleaving() {
    let started = std::time::Instant::now();
    let checker = check(ForwardingModel { broken: None });
    eprintln!(
        "forwarding model: {} states visited, {} unique, searched to the end in {:.1?}",
        checker.state_count(),
        checker.unique_state_count(),
        started.elapsed()
    );
    assert!(checker.is_done());
    checker.assert_properties();
}

#[test]
fn a_call_sent_before_its_record_is_durable_breaks_the_model() {
    // The origin crashes with the record lost but the call gone; the retry picks the other
    // target.
    let checker = check_until(
        ForwardingModel {
            broken: Some(Break::SendBeforeRecordDurable),
        },
        &[ONE_ORDER],
    );
    assert!(
        checker.discovery(ONE_ORDER).is_some(),
        "the model misses a call sent before its record is durable"
    );
}

#[test]
fn a_refusal_not_kept_breaks_the_model() {
    // A late duplicate of the refused call sells once the target has its unit again (a hold
    // released, or a local sale not yet durable lost in a crash), after the origin moved on.
    let checker = check_until(
        ForwardingModel {
            broken: Some(Break::ForgetSoldOut),
        },
        &[ONE_ORDER],
    );
    assert!(
        checker.discovery(ONE_ORDER).is_some(),
        "the model misses an out-of-stock refusal not kept under the key"
    );
}

#[test]
fn an_order_answered_before_it_is_durable_breaks_the_model() {
    // The buyer is told an order its target has only in memory: a crash there loses it.
    let checker = check_until(
        ForwardingModel {
            broken: Some(Break::AnswerOrderBeforeDurable),
        },
        &[NO_LOST_ORDER],
    );
    assert!(
        checker.discovery(NO_LOST_ORDER).is_some(),
        "the model misses an order answered before it is durable"
    );
}

#[test]
fn moving_on_after_a_silence_breaks_the_model() {
    // The silent target had sold (or will, on a late duplicate); the next one sells too.
    let checker = check_until(
        ForwardingModel {
            broken: Some(Break::MoveOnAfterSilence),
        },
        &[ONE_ORDER],
    );
    assert!(
        checker.discovery(ONE_ORDER).is_some(),
        "the model misses moving on after a silence"
    );
}
