//! A model of the quota handoff, checked exhaustively with stateright.
//!
//! Three regions share one general-admission pool. Any region may sell from what it owns, ask
//! another for quota (at most two asks in all, so two can be in flight at once), and an
//! operator may move one unit by hand once, racing them. Messages — asks, answers, gossip of a
//! donor's row — are lost, duplicated and reordered at will (the network is a set: a message
//! stays deliverable, any number of times and in any order, until it is lost). A region may
//! crash at any step, as often as it likes (a superset of "once"); stateright never restarts
//! an actor, so a crash here is explicit: the region's volatile state is rebuilt from its
//! durable state alone, as `Core::recover` does. A crash that would lose nothing is not
//! offered: it leads back to the same state.
//!
//! What the model keeps of a region mirrors the core: its own row (`granted_out` per
//! recipient, `consumed`), what it has merged of each donor's row (`known_in`), and the asks
//! it has served (the idempotency table); each exists as written in memory (`v`) and as
//! durable (`d`), and `Persist` makes everything written durable at once. A region sells from
//! `initial + Σ durable credits − Σ its own grants − its sales` (a credit not yet durable is
//! pending, as in `EventState::sellable`). A donor grants by raising its own row and answers
//! once that is durable, with its durable row; the asker credits only by merging that row.
//!
//! The search runs to completion (no depth or time cut) and prints its state count. Each
//! deliberate break — the grant answered before it is durable, the credit taken from a bare
//! "+k" in the answer — makes a property fail, and is also an `inject-bugs` switch of the
//! real core that the simulator's fuzz mode catches (sim/tests/inject_bugs.rs).

use std::collections::BTreeSet;

mod model_check;

use model_check::{check, check_until};
use stateright::{Checker, Model, Property};

const REGIONS: usize = 3;
const MAX_ASKS: u8 = 2;

type Region = usize;
type AskId = u8;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Stored {
    /// This region's row: what it gave each region (cumulative), what it sold.
    granted_out: [u8; REGIONS],
    consumed: u8,
    /// Its copy of each donor's `granted_out[donor][me]`.
    known_in: [u8; REGIONS],
    /// Asks served, by id (bit `id`): the idempotency table's entries for asks.
    served: u8,
    /// Extra quota taken from answers' bare amounts (the `bare_credit` break only).
    bare: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RegionState {
    durable: Stored,
    memory: Stored,
    /// Answers waiting for the record that granted them to be durable (bit `id`).
    answers_due: u8,
    /// The ask this region waits on, if any (it forgets it when it times out or crashes).
    asking: Option<AskId>,
    /// Ghost: grants written for each ask id since the last persist.
    granting: [u8; MAX_ASKS as usize],
}

/// A message on its way. Gossip is not one: a frame carries a row's durable, monotone
/// entries, so a late or repeated frame is a no-op merge and a lost one is a frame not sent;
/// `Action::Gossip` delivers one at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Msg {
    Ask {
        id: AskId,
    },
    /// The donor's row entry for the asker, and the amount this ask granted.
    Answer {
        id: AskId,
        row: u8,
        amount: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    regions: [RegionState; REGIONS],
    /// Delivered in any order, any number of times, until lost.
    network: BTreeSet<Msg>,
    /// Who made each ask, and of whom.
    asks: [(Region, Region); MAX_ASKS as usize],
    asks_made: u8,
    transfers_left: u8,
    /// Ghost: how many times each ask id's grant became durable.
    durable_grants: [u8; MAX_ASKS as usize],
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Sell(Region),
    Ask {
        asker: Region,
        donor: Region,
    },
    /// The asker stops waiting (its call timed out); a late answer then finds no call.
    GiveUp(Region),
    Transfer {
        from: Region,
        to: Region,
    },
    /// A gossip frame from `from` reaches `to`.
    Gossip {
        from: Region,
        to: Region,
    },
    Persist(Region),
    /// A crash and restart: memory is rebuilt from durable state only.
    Crash(Region),
    Deliver(Msg),
    Lose(Msg),
}

/// A deliberate break of the protocol, which the model must catch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Break {
    /// A donor answers an ask with its row as in memory, before the grant is durable.
    AnswerBeforeDurable,
    /// An asker credits the bare amount of an answer besides the donor's row.
    BareCredit,
    /// A donor does not look its asks up in its idempotency table.
    ForgetAsks,
}

struct HandoffModel {
    initial: [u8; REGIONS],
    broken: Option<Break>,
}

impl HandoffModel {
    fn broken(&self, b: Break) -> bool {
        self.broken == Some(b)
    }

    fn capacity(&self) -> u8 {
        self.initial.iter().sum()
    }

    /// What region `r` may still sell or give, as the core computes it.
    fn sellable(&self, w: &World, r: Region) -> i16 {
        let s = &w.regions[r];
        let credits: i16 = s.durable.known_in.iter().map(|&k| i16::from(k)).sum();
        let given: i16 = s.memory.granted_out.iter().map(|&g| i16::from(g)).sum();
        i16::from(self.initial[r]) + credits + i16::from(s.memory.bare)
            - given
            - i16::from(s.memory.consumed)
    }

    fn send(w: &mut World, msg: Msg) {
        w.network.insert(msg);
    }

    /// The donor's answer to ask `id`, from its durable row (or, broken, from memory).
    fn answer(&self, w: &mut World, id: AskId) {
        let (asker, donor) = w.asks[id as usize];
        let s = &w.regions[donor];
        let row = if self.broken(Break::AnswerBeforeDurable) {
            s.memory.granted_out[asker]
        } else {
            s.durable.granted_out[asker]
        };
        Self::send(w, Msg::Answer { id, row, amount: 1 });
    }

    fn deliver(&self, w: &mut World, msg: Msg) {
        match msg {
            Msg::Ask { id } => {
                let (asker, donor) = w.asks[id as usize];
                let s = &w.regions[donor];
                if s.memory.served & (1 << id) != 0 && !self.broken(Break::ForgetAsks) {
                    // A duplicate: the first answer again, once its grant is durable.
                    if s.durable.served & (1 << id) != 0 {
                        self.answer(w, id);
                    } else {
                        w.regions[donor].answers_due |= 1 << id;
                    }
                } else if self.sellable(w, donor) >= 1 {
                    // One unit per ask: enough to overspend a pool this small.
                    let s = &mut w.regions[donor];
                    s.memory.granted_out[asker] += 1;
                    s.memory.served |= 1 << id;
                    s.granting[id as usize] += 1;
                    if self.broken(Break::AnswerBeforeDurable) {
                        self.answer(w, id);
                    } else {
                        w.regions[donor].answers_due |= 1 << id;
                    }
                }
                // Nothing to spare: refused (the asker gives up, as on a timeout).
            }
            Msg::Answer { id, row, amount } => {
                let (asker, donor) = w.asks[id as usize];
                let s = &mut w.regions[asker];
                // A late or duplicated answer finds no call: only gossip credits then.
                if s.asking == Some(id) {
                    s.asking = None;
                    if self.broken(Break::BareCredit) {
                        s.memory.bare += amount;
                    }
                    let k = &mut s.memory.known_in[donor];
                    *k = (*k).max(row);
                }
            }
        }
    }
}

impl Model for HandoffModel {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        let region = RegionState {
            durable: Stored::default(),
            memory: Stored::default(),
            answers_due: 0,
            asking: None,
            granting: [0; MAX_ASKS as usize],
        };
        vec![World {
            regions: [region.clone(), region.clone(), region],
            network: BTreeSet::new(),
            asks: [(0, 0); MAX_ASKS as usize],
            asks_made: 0,
            transfers_left: 1,
            durable_grants: [0; MAX_ASKS as usize],
        }]
    }

    fn actions(&self, w: &World, actions: &mut Vec<Action>) {
        for r in 0..REGIONS {
            let s = &w.regions[r];
            let sellable = self.sellable(w, r);
            if sellable > 0 {
                actions.push(Action::Sell(r));
            }
            for o in (0..REGIONS).filter(|&o| o != r) {
                if s.asking.is_none() && w.asks_made < MAX_ASKS {
                    actions.push(Action::Ask { asker: r, donor: o });
                }
                if w.transfers_left > 0 && sellable > 0 {
                    actions.push(Action::Transfer { from: r, to: o });
                }
                // Gossip only what the peer lacks: a frame that changes nothing is no state.
                if s.durable.granted_out[o] > w.regions[o].memory.known_in[r] {
                    actions.push(Action::Gossip { from: r, to: o });
                }
            }
            if s.asking.is_some() {
                actions.push(Action::GiveUp(r));
            }
            if s.memory != s.durable || s.answers_due != 0 {
                actions.push(Action::Persist(r));
            }
            // A crash that loses nothing is no new state.
            if s.memory != s.durable || s.answers_due != 0 || s.asking.is_some() {
                actions.push(Action::Crash(r));
            }
        }
        for m in &w.network {
            actions.push(Action::Deliver(m.clone()));
            actions.push(Action::Lose(m.clone()));
        }
    }

    fn next_state(&self, w: &World, action: Action) -> Option<World> {
        let mut w = w.clone();
        match action {
            Action::Sell(r) => w.regions[r].memory.consumed += 1,
            Action::Ask { asker, donor } => {
                let id = w.asks_made;
                w.asks_made += 1;
                w.asks[id as usize] = (asker, donor);
                w.regions[asker].asking = Some(id);
                Self::send(&mut w, Msg::Ask { id });
            }
            Action::GiveUp(r) => w.regions[r].asking = None,
            Action::Transfer { from, to } => {
                w.transfers_left -= 1;
                w.regions[from].memory.granted_out[to] += 1;
            }
            Action::Gossip { from, to } => {
                let value = w.regions[from].durable.granted_out[to];
                let k = &mut w.regions[to].memory.known_in[from];
                *k = (*k).max(value);
            }
            Action::Persist(r) => {
                let s = &mut w.regions[r];
                s.durable = s.memory;
                let due = std::mem::take(&mut s.answers_due);
                let granted = std::mem::take(&mut s.granting);
                for id in 0..MAX_ASKS {
                    w.durable_grants[id as usize] += granted[id as usize];
                    if due & (1 << id) != 0 {
                        self.answer(&mut w, id);
                    }
                }
            }
            Action::Crash(r) => {
                let s = &mut w.regions[r];
                s.memory = s.durable;
                s.answers_due = 0;
                s.asking = None;
                s.granting = [0; MAX_ASKS as usize];
            }
            Action::Lose(m) => {
                w.network.remove(&m);
            }
            Action::Deliver(m) => self.deliver(&mut w, m),
        }
        Some(w)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(NO_OVERSPEND, |m: &Self, w: &World| {
                (0..REGIONS).all(|r| {
                    // Owned in truth: what donors' durable rows granted it.
                    let granted: i16 = (0..REGIONS)
                        .map(|d| i16::from(w.regions[d].durable.granted_out[r]))
                        .sum();
                    let s = &w.regions[r].memory;
                    let spent: i16 = s.granted_out.iter().map(|&g| i16::from(g)).sum::<i16>()
                        + i16::from(s.consumed);
                    spent <= i16::from(m.initial[r]) + granted
                })
            }),
            Property::always(CONSERVED, |m: &Self, w: &World| {
                // Every unit is sellable somewhere, sold, or a grant on its way (given by its
                // donor, not yet credited); nothing else. A credit beyond what its donor still
                // gives is not netted against anything: it is a unit counted twice.
                let mut total: i16 = 0;
                for r in 0..REGIONS {
                    total += m.sellable(w, r) + i16::from(w.regions[r].memory.consumed);
                    for t in 0..REGIONS {
                        let on_its_way = i16::from(w.regions[r].memory.granted_out[t])
                            - i16::from(w.regions[t].durable.known_in[r]);
                        total += on_its_way.max(0);
                    }
                }
                total == i16::from(m.capacity())
            }),
            Property::always(ONE_OWNER, |_: &Self, w: &World| {
                // A credit is never more than the durable grant behind it: no unit is
                // counted both by a donor that would take it back in a crash and by its
                // recipient.
                (0..REGIONS).all(|r| {
                    (0..REGIONS).all(|t| {
                        w.regions[t].memory.known_in[r] <= w.regions[r].durable.granted_out[t]
                    })
                })
            }),
            Property::always(ONCE, |_: &Self, w: &World| {
                w.durable_grants.iter().all(|&n| n <= 1)
            }),
            Property::always("nothing oversold", |m: &Self, w: &World| {
                w.regions.iter().map(|s| s.durable.consumed).sum::<u8>() <= m.capacity()
            }),
            Property::sometimes("a granted unit is sold", |m: &Self, w: &World| {
                (0..REGIONS).any(|r| {
                    w.regions[r].durable.consumed > m.initial[r]
                        && w.regions[r].durable.known_in.iter().any(|&k| k > 0)
                })
            }),
        ]
    }
}

/// Four units split 2/1/1: small enough to search to the end, large enough that a region
/// can sell past its allotment only with a grant.
const INITIAL: [u8; REGIONS] = [2, 1, 1];

const ONE_OWNER: &str = "every unit has exactly one owner";
const NO_OVERSPEND: &str = "no region spends more than it owns";
const CONSERVED: &str = "quota is conserved";
const ONCE: &str = "an ask id never grants twice";

#[test]
fn the_handoff_keeps_every_invariant_in_every_interleaving() {
    let checker = check(HandoffModel {
        initial: INITIAL,
        broken: None,
    });
    eprintln!(
        "handoff model: {} states visited, {} unique, searched to the end",
        checker.state_count(),
        checker.unique_state_count()
    );
    assert!(checker.is_done());
    checker.assert_properties();
}

#[test]
fn a_grant_answered_before_it_is_durable_breaks_the_model() {
    let checker = check_until(
        HandoffModel {
            initial: INITIAL,
            broken: Some(Break::AnswerBeforeDurable),
        },
        &[ONE_OWNER, NO_OVERSPEND],
    );
    assert!(
        checker.discovery(ONE_OWNER).is_some(),
        "the model misses a grant answered before it is durable"
    );
    assert!(
        checker.discovery(NO_OVERSPEND).is_some(),
        "a crash after an early answer lets the asker spend quota its donor took back"
    );
}

#[test]
fn a_credit_on_a_bare_amount_breaks_the_model() {
    let checker = check_until(
        HandoffModel {
            initial: INITIAL,
            broken: Some(Break::BareCredit),
        },
        &[CONSERVED],
    );
    assert!(
        checker.discovery(CONSERVED).is_some(),
        "the model misses a credit taken from a bare amount"
    );
}

#[test]
fn a_donor_that_forgets_its_asks_grants_twice() {
    let checker = check_until(
        HandoffModel {
            initial: INITIAL,
            broken: Some(Break::ForgetAsks),
        },
        &[ONCE],
    );
    assert!(
        checker.discovery(ONCE).is_some(),
        "the model misses a duplicated ask granted again"
    );
}
