//! The core's side of the exchange between regions (see [`crate::exchange`]): calling the
//! region that owns something, serving calls from other regions, and routing every reply to
//! whoever asked — a local client or a calling region.

use crate::api::{Command, CoreError, IdempotencyKey, Outcome, Reply, RequestId};
use crate::exchange::{Answered, Arrival, CallId, Exchange, RemoteOutcome, Waiter};
use crate::ids::{GlobalId, IdKind};
use crate::reads::RecordIndex;

use super::Core;

/// Who waits for a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// A request of this region's driver.
    Client(RequestId),
    /// A call from another region.
    Peer { region: String, call: CallId },
}

impl Command {
    /// Commands that may concern another region's hold or order, the catalog's event
    /// creation, another region's stock or quota: the only ones a region sends to another,
    /// and the only ones it serves for another.
    pub(crate) fn belongs_elsewhere_maybe(&self) -> bool {
        matches!(
            self,
            Command::Confirm { .. }
                | Command::Release { .. }
                | Command::Refund { .. }
                | Command::CreateEvent(_)
                | Command::ReadOrder { .. }
                | Command::Ask(_)
                | Command::Hold { .. }
                | Command::Purchase { .. }
        )
    }
}

impl Core {
    /// The region that owns what `command` is about, when it is another region of the
    /// cluster (an id naming no region of the cluster is this region's to refuse).
    pub(super) fn owner_elsewhere(&self, command: &Command) -> Option<String> {
        let (kind, id) = match command {
            Command::Confirm { hold, .. } | Command::Release { hold } => (IdKind::Hold, hold),
            Command::Refund { order } | Command::ReadOrder { order } => (IdKind::Order, order),
            Command::CreateEvent(_) if self.cfg.catalog_region != self.cfg.region => {
                return Some(self.cfg.catalog_region.clone())
            }
            _ => return None,
        };
        let (region, _, _) = GlobalId::parts(kind, id)?;
        (region != self.cfg.region && self.cfg.regions.iter().any(|r| r == region))
            .then(|| region.to_owned())
    }

    /// Sends a reply where it is awaited.
    pub(super) fn deliver_reply(&mut self, caller: Caller, reply: Reply) {
        match caller {
            Caller::Client(id) => self.out.replies.push((id, reply)),
            Caller::Peer { region, call } => {
                let answer = Exchange::Answer {
                    id: call,
                    answer: reply.and_then(|o| self.remote_outcome(&region, o).map(Box::new)),
                };
                self.calls.answered(&region, call, &answer);
                self.out.exchange.push((region, answer));
            }
        }
    }

    /// An outcome as the calling region needs it: with this region's ids, and a new event's
    /// genesis and metadata.
    fn remote_outcome(&mut self, to: &str, outcome: Outcome) -> Result<RemoteOutcome, CoreError> {
        let outcome = Answered::from_outcome(outcome)
            .ok_or_else(|| CoreError::Invalid("not an answer between regions".into()))?;
        let (id, hold_id) = match &outcome {
            Answered::Order(o) => (
                Some(self.id_of(IdKind::Order, o.n)),
                o.hold.map(|h| self.id_of(IdKind::Hold, h)),
            ),
            Answered::Held(h) => (Some(self.id_of(IdKind::Hold, h.n)), None),
            _ => (None, None),
        };
        // Metadata goes out only once durable (DESIGN: a change is synced before it is sent);
        // if an edit is still on its way to disk, the caller learns the event by gossip.
        let persisted = self.durable.persisted();
        let event = match &outcome {
            Answered::EventCreated { event } => self
                .by_id
                .get(event.as_str())
                .map(|&ev| &mut self.events[ev])
                .filter(|e| e.meta_index <= persisted)
                .map(|e| ((**e.genesis()).clone(), e.meta.all_changes())),
            _ => None,
        };
        // A grant goes with this region's durable row from what the asker last reported: the
        // asker credits it only through that row. (Not an order: a row that consumed quota
        // granted by a third region, merged without that region's row, would show the caller
        // more sold than the capacity.)
        let row_of = match &outcome {
            Answered::Granted { event, .. } => Some(event.as_str()),
            _ => None,
        };
        let row = match row_of {
            Some(event) => self.by_id.get(event).and_then(|&ev| {
                let e = &self.events[ev];
                let have = e
                    .genesis()
                    .region_index(to)
                    .and_then(|r| e.peers[r as usize].vv.as_ref())
                    .map_or(0, |vv| vv.get(e.me as usize));
                if crate::bugs::grant_answered_before_durable() {
                    e.ledger.row(e.me).delta_since(e.ledger.hash(), have)
                } else {
                    e.published.delta_since(e.ledger.hash(), have)
                }
            }),
            _ => None,
        };
        Ok(RemoteOutcome {
            region: self.cfg.region.clone(),
            outcome,
            id,
            hold_id,
            event,
            row,
        })
    }

    /// [`check_remote`](Self::check_remote), logged: an answer it refuses is, for the
    /// client that waits, a region that could not be used.
    pub(super) fn accept_remote(&mut self, from: &str, r: &RemoteOutcome) -> Result<(), CoreError> {
        self.check_remote(from, r).map_err(|why| {
            self.out
                .warnings
                .push(format!("an answer from {from} refused: {why}"));
            CoreError::Unreachable {
                region: from.to_owned(),
                why: "it answered something this region cannot use".into(),
            }
        })
    }

    /// Checks an answer before anything of it is believed or shown: it names the region that
    /// sent it, its hold or order fits an event this region knows (pool and seat indices are
    /// rendered against the local genesis), and only the catalog answers with a new event.
    pub(super) fn check_remote(&self, from: &str, r: &RemoteOutcome) -> Result<(), String> {
        if r.region != from {
            return Err(format!("answer from {from} names region {:?}", r.region));
        }
        let fits = |event: &str, pool: allot_crdt::PoolIdx, seats: &[allot_crdt::SeatIdx]| {
            let e = self
                .event(event)
                .ok_or("an event this region does not know")?;
            let p = e
                .genesis()
                .pools
                .get(pool as usize)
                .ok_or("an unknown pool")?;
            if seats.iter().any(|&s| s as usize >= p.seat_count()) {
                return Err("an unknown seat");
            }
            Ok(())
        };
        match &r.outcome {
            Answered::Order(o) => fits(&o.event, o.pool, &o.seats)?,
            Answered::Held(h) => fits(&h.event, h.pool, &h.seats)?,
            Answered::EventCreated { .. } if from != self.cfg.catalog_region => {
                return Err("an event created by a region that is not the catalog".into())
            }
            Answered::Granted {
                event, pool, seats, ..
            } => fits(event, *pool, seats)?,
            Answered::EventCreated { .. } | Answered::Released => {}
        }
        Ok(())
    }

    /// Asks `region` to run `command` for local client `client`.
    pub(super) fn call_peer(
        &mut self,
        client: RequestId,
        region: &str,
        key: Option<IdempotencyKey>,
        command: Command,
    ) {
        let unreachable = |why: &str| CoreError::Unreachable {
            region: region.to_owned(),
            why: why.to_owned(),
        };
        if region == self.cfg.region || !self.cfg.regions.iter().any(|r| r == region) {
            return self.reply_now(Caller::Client(client), Err(unreachable("not a peer")));
        }
        if self.calls.outstanding_to(region) >= self.cfg.max_calls_per_peer {
            return self.reply_now(
                Caller::Client(client),
                Err(unreachable("too many calls to it are in flight")),
            );
        }
        let deadline = self.now.saturating_add(self.cfg.peer_call_timeout_ms);
        let id = self.calls.open(Waiter::Client(client), region, deadline);
        self.out.exchange.push((
            region.to_owned(),
            Exchange::Call {
                id,
                key,
                command: Box::new(command),
                budget_ms: None,
            },
        ));
    }

    /// Calls not answered in time: their callers hear that the region is unreachable.
    pub(super) fn expire_calls(&mut self) {
        for (call, o) in self.calls.expire(self.now) {
            let client = match o.waiter {
                Waiter::Client(client) => client,
                Waiter::Handoff => {
                    self.ask_lost(call);
                    continue;
                }
                Waiter::Forward => {
                    self.forward_lost(call, true);
                    continue;
                }
                Waiter::Gather => {
                    self.gather_lost(call);
                    continue;
                }
            };
            let why = "it did not answer in time".to_owned();
            self.reply_now(
                Caller::Client(client),
                Err(CoreError::Unreachable {
                    region: o.region,
                    why,
                }),
            );
        }
    }

    pub(super) fn undeliverable(&mut self, to: &str, message: Exchange) {
        let Exchange::Call { id, .. } = message else {
            return; // an answer lost: its caller times out.
        };
        if let Some(o) = self.calls.close(to, id) {
            let client = match o.waiter {
                Waiter::Client(client) => client,
                Waiter::Handoff => return self.ask_lost(id),
                Waiter::Forward => return self.forward_lost(id, false),
                Waiter::Gather => return self.gather_lost(id),
            };
            let why = "this node has no link to it".to_owned();
            let e = CoreError::Unreachable {
                region: o.region,
                why,
            };
            self.reply_now(Caller::Client(client), Err(e));
        }
    }

    pub(super) fn exchange(&mut self, from: &str, message: Exchange) {
        if from == self.cfg.region || !self.cfg.regions.iter().any(|r| r == from) {
            self.out
                .warnings
                .push(format!("a call from unknown region {from:?} refused"));
            return;
        }
        match message {
            Exchange::Call {
                id,
                key,
                command,
                budget_ms,
            } => {
                let command = *command;
                // The budget runs from the arrival, on this region's own clock.
                let deadline = budget_ms.map(|b| self.now.saturating_add(b));
                if !command.belongs_elsewhere_maybe() {
                    self.out
                        .warnings
                        .push(format!("{from} made a call that no region makes; refused"));
                    let refused = Exchange::Answer {
                        id,
                        answer: Err(CoreError::Invalid("not a call between regions".into())),
                    };
                    self.out.exchange.push((from.to_owned(), refused));
                    return;
                }
                // A read changes nothing: it runs every time, and nothing is kept for it.
                if matches!(command, Command::ReadOrder { .. }) {
                    let caller = Caller::Peer {
                        region: from.to_owned(),
                        call: id,
                    };
                    return self.request(caller, key, command);
                }
                // A buyer's request forwarded here carries the origin's key (or forward id):
                // the idempotency table, durable, is what runs it once.
                if command.want().is_some() && key.is_none() {
                    let refused = Exchange::Answer {
                        id,
                        answer: Err(CoreError::Invalid(
                            "a forwarded request carries a key".into(),
                        )),
                    };
                    self.out.exchange.push((from.to_owned(), refused));
                    return;
                }
                match self.calls.arrive(from, id, self.now) {
                    Arrival::Run => {
                        let caller = Caller::Peer {
                            region: from.to_owned(),
                            call: id,
                        };
                        self.request_until(caller, key, command, deadline);
                    }
                    Arrival::Again(answer) => self.out.exchange.push((from.to_owned(), answer)),
                    Arrival::Running => {}
                }
            }
            Exchange::Answer { id, answer } => {
                // A late or duplicated answer finds no call: it changes nothing.
                let Some(o) = self.calls.close(from, id) else {
                    return;
                };
                let client = match o.waiter {
                    Waiter::Client(client) => client,
                    Waiter::Handoff => return self.ask_answered(from, id, answer),
                    Waiter::Forward => return self.forward_answered(from, id, answer),
                    Waiter::Gather => return self.gather_answered(from, id, answer),
                };
                let caller = Caller::Client(client);
                match answer {
                    Ok(remote) => {
                        if let Err(e) = self.accept_remote(from, &remote) {
                            return self.reply_now(caller, Err(e));
                        }
                        let index = self.learn_from_answer(from, &remote);
                        self.reply_after(index, caller, Ok(Outcome::Remote(remote)));
                    }
                    Err(e) => self.reply_now(caller, Err(e)),
                }
            }
        }
    }

    /// A new event in an answer from the catalog is learned at once (as gossip would), so the
    /// caller can show it; the reply waits until that record is durable.
    fn learn_from_answer(&mut self, from: &str, remote: &RemoteOutcome) -> RecordIndex {
        let (Some((genesis, meta)), Answered::EventCreated { event }) =
            (&remote.event, &remote.outcome)
        else {
            return RecordIndex(0);
        };
        if self.by_id.contains_key(event.as_str()) {
            return RecordIndex(0);
        }
        let hash = genesis.hash();
        match self.learn_event(genesis.clone(), meta.clone(), hash, event) {
            Ok(()) => self.last_index,
            Err(why) => {
                self.out.warnings.push(format!(
                    "event {event:?} in an answer from {from} refused: {why}"
                ));
                RecordIndex(0)
            }
        }
    }
}
