//! The region core: a sans-IO state machine.
//!
//! The driver calls [`Core::handle`] with an input and the current time, then takes a
//! [`Ready`]: records to persist first, replies and messages that may go out now. Replies that
//! depend on a record are held back until the driver reports the record durable with
//! [`Input::Persisted`]. Nothing here touches a socket, a clock or a disk, which is what lets
//! the simulator replay a fault schedule from a seed and the server run the same logic.
//!
//! Every state change goes through [`Core::apply_record`]: the live path builds a record,
//! applies it and emits it, and [`Core::recover`] applies the same records again.

use std::collections::HashMap;
use std::sync::Arc;

use allot_crdt::{PoolIdx, PoolKind, RegionIdx, SeatIdx};

use crate::api::*;
use crate::event::{EventState, SeatLocal};
use crate::exchange::{Exchange, ExchangeBook};
use crate::gossip::GossipFrame;
use crate::ids::IdKey;
use crate::reads::{Found, Lookup, ReadId, ReadResult, RecordIndex};
use crate::record::{IdemRecord, Record, RecordBody, ReleaseReason};

mod commands;
mod durability;
mod forwards;
mod gathers;
mod handoffs;
mod hold_book;
mod idempotency;
mod parked;
mod peer_calls;
mod rebalancer;
mod recent_orders;
mod records;
mod sync;

use commands::invalid;
use durability::DurabilityQueues;
use forwards::ForwardBook;
pub use forwards::ForwardStats;
use gathers::GatherBook;
pub use gathers::GatherStats;
pub use handoffs::InFlight;
use hold_book::HoldBook;
use idempotency::{IdempotencyTable, Seen};
use parked::{Parked, Request};
pub(crate) use peer_calls::Caller;
pub use rebalancer::HandoffCounters;
use rebalancer::Rebalancer;
use recent_orders::RecentOrders;

/// Limits and identity of one region's core.
#[derive(Clone, Debug)]
pub struct Config {
    pub region: String,
    /// Every region of the cluster, in config order (the order `even` splits follow).
    pub regions: Vec<String>,
    pub catalog_region: String,
    /// Bumped and synced by the driver at every start; part of the automerge actor id.
    pub incarnation: u64,
    pub max_holds_per_customer: u32,
    pub max_quantity: u64,
    pub idempotency_ttl_ms: Millis,
    /// The secret that makes hold and order ids unguessable (see [`IdKey`]). Drivers set a
    /// random one, kept across restarts; [`Config::new`] starts from a test key.
    pub id_key: IdKey,
    /// The most a gossip frame may encode to. One event's whole unit (its row deltas, plus
    /// genesis and metadata while the peer lacks them) is never split, so an event that could
    /// not fit is refused at creation; the rest waits for later ticks.
    pub frame_budget_bytes: usize,
    /// How long a call to another region may take before its caller hears 503.
    pub peer_call_timeout_ms: Millis,
    /// Calls to one region in flight at once; more answer 503 at once.
    pub max_calls_per_peer: usize,
    /// The rebalancer's tuning; `None` keeps allotments where they are (only operators move
    /// quota), and this region then refuses other regions' asks.
    pub rebalance: Option<crate::policy::Tuning>,
    /// How long a handoff ask may take before the asker tries another donor.
    pub handoff_timeout_ms: Millis,
    /// A buyer's request this region cannot cover goes to a region that can (see
    /// `core/forwards.rs`); off, this region answers `sold-out` from its own quota alone.
    pub forwarding: bool,
    /// Forwarded requests to one region in flight at once; more try the next region, then
    /// answer 503. Each waits a round trip: 256 carries 3,200 forwards/s to a region 80 ms
    /// away (64 carried 800/s, and an on-sale's busiest region forwards more once its own
    /// quota is gone: `allot bench compare --parts wan` saw 503s at 2,100/s).
    pub max_forwards_per_peer: usize,
    /// Round trips to the other regions as configured: which to forward to first, until
    /// answers measure them.
    pub peer_rtt_ms: std::collections::BTreeMap<String, Millis>,
}

/// How long a call to another region may take by default before its caller hears 503.
pub const DEFAULT_PEER_CALL_TIMEOUT_MS: Millis = 3_000;

/// The default gossip frame budget: below the 8 MiB the wire accepts, with room for framing.
pub const DEFAULT_FRAME_BUDGET: usize = 7 << 20;

impl Config {
    pub fn new(region: &str, regions: &[String]) -> Config {
        Config {
            region: region.to_owned(),
            regions: regions.to_vec(),
            catalog_region: regions.first().cloned().unwrap_or_default(),
            incarnation: 1,
            max_holds_per_customer: 5,
            max_quantity: 20,
            idempotency_ttl_ms: 24 * 3600 * 1000,
            id_key: IdKey::insecure_for_tests(region),
            frame_budget_bytes: DEFAULT_FRAME_BUDGET,
            peer_call_timeout_ms: DEFAULT_PEER_CALL_TIMEOUT_MS,
            max_calls_per_peer: 256,
            rebalance: None,
            handoff_timeout_ms: 2_000,
            forwarding: true,
            max_forwards_per_peer: 256,
            peer_rtt_ms: std::collections::BTreeMap::new(),
        }
    }
}

pub enum Input {
    Request {
        id: RequestId,
        key: Option<IdempotencyKey>,
        command: Command,
    },
    Peer {
        from: String,
        frame: GossipFrame,
    },
    /// A call from another region, or the answer to one of ours.
    Exchange {
        from: String,
        message: Exchange,
    },
    /// A message to `to` that the driver could not even queue (no link to that region at
    /// all): a call's caller hears at once that the region is unreachable.
    Undeliverable {
        to: String,
        message: Exchange,
    },
    /// The store's answer to one of [`Ready::reads`].
    Read {
        id: ReadId,
        found: ReadResult,
    },
    /// Expire holds and idempotency keys, and gossip to every peer.
    Tick,
    /// Records `1..=n` are durable.
    Persisted(u64),
    /// The link to `peer` was (re)established: forget what it was believed to have, so the
    /// next tick sends it everything (full anti-entropy).
    PeerReset {
        peer: String,
    },
}

/// What the driver must do next, in order: persist `records`, then send the rest.
#[derive(Debug, Default)]
pub struct Ready {
    pub records: Vec<Record>,
    pub replies: Vec<(RequestId, Reply)>,
    pub messages: Vec<(String, GossipFrame)>,
    /// Calls to other regions and answers to theirs.
    pub exchange: Vec<(String, Exchange)>,
    /// What the core needs from the store; each answer comes back as [`Input::Read`]. Reads
    /// may be answered in any order, and any time after the records emitted before them.
    pub reads: Vec<(ReadId, Lookup)>,
    /// Refused peer input and other things an operator should see in the log.
    pub warnings: Vec<String>,
}

/// Sizes of what a core keeps in memory (see [`Core::footprint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub live_holds: usize,
    pub cached_keys: usize,
    pub recent_orders: usize,
    pub reads_in_flight: usize,
    pub waiting_replies: usize,
    /// Buyers' requests sent to (or about to go to) another region.
    pub forwards_in_flight: usize,
    /// Buyers' requests waiting for the parts other regions give them.
    pub gathers_in_flight: usize,
}

pub struct Core {
    cfg: Config,
    events: Vec<EventState>,
    by_id: HashMap<Arc<str>, usize>,
    // Maps that grow with the sale are B-trees: a hash map doubles its table all at once,
    // and at 131,072 idempotency keys that is a 150 ms pause in the middle of an on-sale
    // (measured by `allot bench http --idempotency-keys`); a B-tree grows a node at a time.
    holds: HoldBook,
    /// Orders changed since the oldest read in flight was asked; past orders are in the store.
    recent: RecentOrders,
    idem: IdempotencyTable,
    /// Requests waiting on the store or behind another request with their key.
    parked: Parked,
    next_order: OrderNo,
    last_index: RecordIndex,
    now: Millis,
    /// What waits for the disk.
    durable: DurabilityQueues,
    /// Calls to and from other regions.
    calls: ExchangeBook,
    /// Buyers' requests sent to the region that has the stock.
    forwards: ForwardBook,
    gathers: GatherBook,
    rebalancer: Rebalancer,
    out: Ready,
}

const MAX_KEY_LEN: usize = 128;

/// How far a command got.
enum Step {
    Done(Result<(RecordIndex, Outcome), CoreError>),
    /// It needs the store's answer to this first.
    Need(Lookup),
}

/// Why a command that may need the store stopped short of a record.
pub(crate) enum Halt {
    Refused(CoreError),
    Need(Lookup),
}

impl From<CoreError> for Halt {
    fn from(e: CoreError) -> Halt {
        Halt::Refused(e)
    }
}
impl Core {
    pub fn new(cfg: Config) -> Core {
        let incarnation = cfg.incarnation;
        // Forwarding sells the last units wherever they are: no pooling (see Tuning).
        let tuning = cfg.rebalance.map(|t| crate::policy::Tuning {
            pool_endgame: t.pool_endgame && !cfg.forwarding,
            ..t
        });
        Core {
            cfg,
            events: Vec::new(),
            by_id: HashMap::new(),
            holds: HoldBook::default(),
            recent: RecentOrders::default(),
            idem: IdempotencyTable::default(),
            parked: Parked::default(),
            next_order: OrderNo(1),
            last_index: RecordIndex(0),
            now: 0,
            durable: DurabilityQueues::default(),
            calls: ExchangeBook::new(incarnation),
            forwards: ForwardBook::new(incarnation),
            gathers: GatherBook::default(),
            rebalancer: Rebalancer::new(tuning),
            out: Ready::default(),
        }
    }

    /// Rebuilds a core from durable records, in order: a store's restore records (live state
    /// only), or a log. The only way back from disk. Indices go on from the first record's, so
    /// they keep growing across restarts.
    pub fn recover(cfg: Config, records: impl IntoIterator<Item = Record>) -> Result<Core, String> {
        let mut core = Core::new(cfg);
        let mut records = records.into_iter().peekable();
        if let Some(first) = records.peek() {
            core.last_index = RecordIndex(first.index.saturating_sub(1));
            core.durable.advance(core.last_index);
        }
        for r in records {
            if r.index != core.last_index.0 + 1 {
                return Err(format!(
                    "record {} follows {}: records must be contiguous",
                    r.index, core.last_index
                ));
            }
            core.now = core.now.max(r.at);
            core.apply_record(RecordIndex(r.index), r.at, &r.body)?;
            core.last_index = RecordIndex(r.index);
            // Everything replayed is durable: credits it brought are spendable at once.
            core.persisted(RecordIndex(r.index));
        }
        core.out.replies.clear();
        Ok(core)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The core's clock: the highest `now` it has been given or has replayed.
    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn last_index(&self) -> u64 {
        self.last_index.0
    }

    pub fn persisted_index(&self) -> u64 {
        self.durable.persisted().0
    }

    /// Whether a store read of an idempotency key, taken when the store held every record
    /// through `through`, answers the core's [`Lookup::Key`] as well as a read asked now would
    /// (see `IdempotencyTable::read_stands`). It lets a driver read a new key outside the lock
    /// that serialises the core.
    pub fn key_read_stands(&self, through: RecordIndex) -> bool {
        self.idem.read_stands(through)
    }

    pub fn handle(&mut self, now: Millis, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Request { id, key, command } => self.request(Caller::Client(id), key, command),
            Input::Read { id, found } => self.read_done(id, found),
            Input::Peer { from, frame } => self.peer(&from, frame),
            Input::Exchange { from, message } => self.exchange(&from, message),
            Input::Undeliverable { to, message } => self.undeliverable(&to, message),
            Input::Tick => {
                let now = self.now;
                for e in &mut self.events {
                    e.update_rates(now);
                }
                self.expire_holds();
                self.expire_keys();
                self.expire_calls();
                self.forwards.expire(self.now);
                self.rebalance();
                self.gossip();
            }
            Input::Persisted(n) => self.persisted(RecordIndex(n)),
            Input::PeerReset { peer } => {
                for e in &mut self.events {
                    if let Some(p) = e.genesis().region_index(&peer) {
                        e.peers[p as usize].vv = None;
                        e.peers[p as usize].meta_heads.clear();
                    }
                }
            }
        }
    }

    /// Takes everything ready to go out.
    pub fn ready(&mut self) -> Ready {
        std::mem::take(&mut self.out)
    }

    /// Appends what is ready to `into`, reusing its buffers (for hot loops).
    pub fn ready_into(&mut self, into: &mut Ready) {
        into.records.append(&mut self.out.records);
        into.replies.append(&mut self.out.replies);
        into.messages.append(&mut self.out.messages);
        into.exchange.append(&mut self.out.exchange);
        into.reads.append(&mut self.out.reads);
        into.warnings.append(&mut self.out.warnings);
    }

    // ----- requests -------------------------------------------------------------------------

    fn request(&mut self, caller: Caller, key: Option<IdempotencyKey>, command: Command) {
        self.request_until(caller, key, command, None);
    }

    /// A request that is not run after `deadline` (a call from another region).
    fn request_until(
        &mut self,
        caller: Caller,
        mut key: Option<IdempotencyKey>,
        command: Command,
        deadline: Option<Millis>,
    ) {
        // A region's forward id holds a space, which a buyer's key may not.
        let peer = matches!(caller, Caller::Peer { .. });
        if let Some(k) = &key {
            if k.key.is_empty()
                || k.key.len() > MAX_KEY_LEN
                || !k
                    .key
                    .bytes()
                    .all(|b| b.is_ascii_graphic() || (peer && b == b' '))
            {
                return self.reply_now(
                    caller,
                    invalid(format!(
                        "Idempotency-Key: 1-{MAX_KEY_LEN} visible ASCII characters"
                    )),
                );
            }
        }
        // A key another region's buyer chose is that region's: scoped by it (a space, which
        // no client key may hold, keeps the scopes apart), so two regions' buyers never share
        // an answer by choosing the same key.
        if let (Caller::Peer { region, .. }, Some(k)) = (&caller, &mut key) {
            k.key = format!("{region} {}", k.key);
        }
        let mut req = Request::new(caller, key, command);
        req.deadline = deadline;
        self.run(req);
    }

    /// Runs a request as far as it goes: answered, or parked on a read or behind its key.
    fn run(&mut self, mut req: Request) {
        if let Some(k) = &req.key {
            let (now, ttl, persisted) = (
                self.now,
                self.cfg.idempotency_ttl_ms,
                self.durable.persisted(),
            );
            match self.idem.seen(k, now, ttl, persisted) {
                Seen::NotHere => {}
                Seen::OtherBody => {
                    self.reply_now(req.caller.clone(), Err(CoreError::IdempotencyMismatch));
                    return self.decided(req);
                }
                Seen::Again(e)
                    if req.sell_here && matches!(e.outcome, Outcome::Forwarded { .. }) => {}
                Seen::Again(e) => {
                    let (index, outcome) = (e.index, e.outcome.clone());
                    return self.answer_again(req, index, outcome);
                }
            }
        }
        // What another region owns is asked of it, with the key (that region keeps it); a call
        // from another region is never passed on again (it answers `foreign-id` below).
        if let Caller::Client(client) = req.caller {
            if let Some(region) = self.owner_elsewhere(&req.command) {
                return self.call_peer(client, &region, req.key, req.command);
            }
        }
        if let Some(k) = &req.key {
            if !req.holds_claim {
                if self.parked.is_claimed(&k.key) {
                    // A duplicate of a request still deciding: it gets the same answer.
                    let key = k.key.clone();
                    return self.parked.wait_behind(&key, req);
                }
                // Not in memory: only the store can say whether the key was answered before.
                let lookup = Lookup::Key(k.key.clone());
                self.parked.claim(&k.key);
                req.holds_claim = true;
                return self.park(req, lookup);
            }
        }
        // A forwarded request the origin no longer waits for is not sold.
        if req.deadline.is_some_and(|d| self.now > d) {
            return self.refuse(req, CoreError::DeadlinePassed);
        }
        match self.execute(&mut req) {
            Step::Need(lookup) => self.park(req, lookup),
            Step::Done(Ok((index, outcome))) => {
                self.reply_after(index, req.caller.clone(), Ok(outcome));
                self.decided(req);
            }
            Step::Done(Err(e)) if self.forwards(&req, &e) => self.forward_refused(req, e),
            Step::Done(Err(e)) => self.refuse(req, e),
        }
    }

    /// Refuses a request. A forwarded sale's refusal is kept under its key when a late
    /// duplicate of the call must not sell after it (see [`forwards::keeps_refusal`]).
    fn refuse(&mut self, req: Request, e: CoreError) {
        match (&req.caller, &req.key) {
            (Caller::Peer { .. }, Some(key))
                if req.command.want().is_some() && forwards::keeps_refusal(&key.key, &e) =>
            {
                let index = self.commit(RecordBody::KeyAnswered {
                    idem: IdemRecord {
                        key: key.clone(),
                        outcome: Outcome::Refused(e.clone()),
                    },
                });
                self.reply_after(index, req.caller.clone(), Err(e));
            }
            _ => self.reply_now(req.caller.clone(), Err(e)),
        }
        self.decided(req);
    }

    /// A key's first answer, for a request that repeats it: the same reply, or for a request
    /// this region forwarded, the same target again.
    fn answer_again(&mut self, mut req: Request, index: RecordIndex, outcome: Outcome) {
        match outcome {
            Outcome::Forwarded { target, refused_by }
                if matches!(req.caller, Caller::Client(_)) =>
            {
                // One request per key on its way at a time: it alone may move the key to
                // another region after a refusal, from the target the key's record names.
                // A duplicate waits, then follows the record as that request left it.
                if !req.holds_claim {
                    let key = req.key.as_ref().map(|k| k.key.clone()).unwrap_or_default();
                    if self.parked.is_claimed(&key) {
                        return self.parked.wait_behind(&key, req);
                    }
                    self.parked.claim(&key);
                    req.holds_claim = true;
                }
                self.forward_again(req, target, refused_by, index)
            }
            Outcome::Forwarded { .. } => {
                let e = CoreError::Invalid("a key of a forwarded request, forwarded again".into());
                self.reply_now(req.caller.clone(), Err(e));
                self.decided(req);
            }
            Outcome::Refused(e) => {
                self.reply_after(index, req.caller.clone(), Err(e));
                self.decided(req);
            }
            outcome => {
                self.reply_after(index, req.caller.clone(), Ok(outcome));
                self.decided(req);
            }
        }
    }

    /// Runs the command against the state of this moment.
    fn execute(&mut self, req: &mut Request) -> Step {
        let key = req.key.as_ref();
        let found = req.found.take();
        let found = found.as_ref();
        let result = match &req.command {
            // The commands that may need the store take their input by reference: a parked
            // request keeps its command.
            Command::Confirm { hold, payment_ref } => self.confirm(hold, payment_ref, key, found),
            Command::Release { hold } => self.release(hold, found),
            Command::Refund { order } => self.refund(order, key, found),
            Command::ReadOrder { order } => self
                .read_order(order, found)
                .map(|o| (RecordIndex(0), Outcome::Order(o))),
            // A buyer's hold or purchase keeps its command: refused for want of stock here,
            // it may go to another region.
            Command::Hold {
                event,
                want,
                customer,
            } => self.hold(event, want, customer, key).map_err(Halt::from),
            Command::Purchase {
                event,
                want,
                customer,
                payment_ref,
            } => self
                .purchase(event, want, customer, payment_ref, key)
                .map_err(Halt::from),
            Command::Ask(_) if key.is_none() => Err(Halt::Refused(CoreError::Invalid(
                "an ask for quota carries its id as its key".into(),
            ))),
            Command::Ask(ask) => match &req.caller {
                Caller::Peer { region, .. } => {
                    let (region, ask) = (region.clone(), ask.clone());
                    self.give_on_ask(&region, &ask, key).map_err(Halt::from)
                }
                Caller::Client(_) => Err(Halt::Refused(CoreError::Invalid(
                    "asks for quota come from other regions only".into(),
                ))),
            },
            _ => {
                let command = std::mem::replace(
                    &mut req.command,
                    Command::Release {
                        hold: String::new(),
                    },
                );
                self.execute_owned(command, key).map_err(Halt::from)
            }
        };
        match result {
            Ok(done) => Step::Done(Ok(done)),
            Err(Halt::Refused(e)) => Step::Done(Err(e)),
            Err(Halt::Need(lookup)) => Step::Need(lookup),
        }
    }

    /// The commands that never need the store.
    fn execute_owned(
        &mut self,
        command: Command,
        key: Option<&IdempotencyKey>,
    ) -> Result<(RecordIndex, Outcome), CoreError> {
        match command {
            Command::CreateEvent(spec) => self.create_event(spec, key),
            Command::PatchEvent { event, patch } => self.patch_event(&event, patch, key),
            Command::Grant {
                event,
                pool,
                to,
                amount,
            } => self.grant(&event, &pool, &to, amount, key),
            Command::Confirm { .. }
            | Command::Hold { .. }
            | Command::Purchase { .. }
            | Command::Release { .. }
            | Command::Refund { .. }
            | Command::ReadOrder { .. }
            | Command::Ask(_) => unreachable!("executed by reference"),
        }
    }

    fn park(&mut self, req: Request, lookup: Lookup) {
        let asked_at = self.durable.persisted();
        let id = self.parked.park(req, lookup.clone(), asked_at);
        self.out.reads.push((id, lookup));
    }

    /// A request has its answer: duplicates that waited behind its key run now (and find its
    /// answer in memory, or, if it left none, the next of them asks the store again).
    fn decided(&mut self, req: Request) {
        if !req.holds_claim {
            return;
        }
        let Some(k) = req.key else { return };
        for waiting in self.parked.release(&k.key) {
            self.run(waiting);
        }
    }

    /// The store answered a read: the request that asked runs again with the answer.
    fn read_done(&mut self, id: ReadId, found: ReadResult) {
        let Some(waiting) = self.parked.answered(id) else {
            self.out
                .warnings
                .push(format!("an answer to read {} that nothing waits for", id.0));
            return;
        };
        let mut req = waiting.request;
        match (waiting.lookup, found) {
            (_, Err(why)) => {
                self.reply_now(req.caller.clone(), Err(CoreError::Storage(why)));
                self.decided(req);
            }
            (Lookup::Key(key), Ok(Found::Key(stored))) => {
                let ttl = self.cfg.idempotency_ttl_ms;
                match stored.filter(|k| k.at.saturating_add(ttl) > self.now) {
                    Some(stored) => {
                        let same_body = req
                            .key
                            .as_ref()
                            .is_some_and(|k| k.body_hash == stored.body_hash);
                        let outcome = stored.outcome.clone();
                        // Kept in memory, so the duplicates waiting behind it find it there.
                        self.idem
                            .cache_stored(&key, stored, self.durable.persisted());
                        if same_body {
                            // Durable already: it came from the store.
                            self.answer_again(req, RecordIndex(0), outcome);
                        } else {
                            self.reply_now(req.caller.clone(), Err(CoreError::IdempotencyMismatch));
                            self.decided(req);
                        }
                    }
                    None => self.run(req),
                }
            }
            (Lookup::Order(_) | Lookup::OrderOfHold(_), Ok(found @ Found::Order(_))) => {
                req.found = Some(found);
                self.run(req);
            }
            (lookup, Ok(other)) => {
                self.reply_now(
                    req.caller.clone(),
                    Err(CoreError::Storage(format!(
                        "the store answered {lookup:?} with {other:?}"
                    ))),
                );
                self.decided(req);
            }
        }
        self.trim_recent();
    }
    fn reply_now(&mut self, id: Caller, reply: Reply) {
        self.deliver_reply(id, reply);
    }

    /// Releases the reply once record `index` is durable.
    fn reply_after(&mut self, index: RecordIndex, id: Caller, reply: Reply) {
        if index <= self.durable.persisted() {
            self.deliver_reply(id, reply);
        } else {
            self.durable.reply_after(index, id, reply);
        }
    }

    pub(super) fn idem_record(
        key: Option<&IdempotencyKey>,
        outcome: &Outcome,
    ) -> Option<IdemRecord> {
        key.map(|k| IdemRecord {
            key: k.clone(),
            outcome: outcome.clone(),
        })
    }

    // ----- time -----------------------------------------------------------------------------

    /// Runs on the tick, before its gossip: what expiry returns is told in the same breath.
    fn expire_holds(&mut self) {
        for (event, holds) in self.holds.due(self.now) {
            self.commit(RecordBody::HoldsReleased {
                event,
                holds,
                reason: ReleaseReason::Expired,
            });
        }
    }

    fn expire_keys(&mut self) {
        let persisted = self.durable.persisted();
        self.idem
            .expire(self.now, self.cfg.idempotency_ttl_ms, persisted);
    }

    // ----- reads ----------------------------------------------------------------------------

    pub fn events(&self) -> impl Iterator<Item = &EventState> {
        self.events.iter()
    }

    pub fn event(&self, id: &str) -> Option<&EventState> {
        self.by_id.get(id).map(|&i| &self.events[i])
    }

    pub fn live_hold(&self, n: HoldNo) -> Option<&Hold> {
        self.holds.get(n)
    }

    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.iter()
    }

    /// What the core holds in memory, by kind: each is bounded by live state, not history.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            live_holds: self.holds.iter().count(),
            cached_keys: self.idem.len(),
            recent_orders: self.recent.len(),
            reads_in_flight: self.parked.in_flight(),
            waiting_replies: self.durable.waiting_replies(),
            forwards_in_flight: self.forwards.len(),
            gathers_in_flight: self.gathers.len(),
        }
    }

    /// The number the next order gets.
    pub fn next_order(&self) -> OrderNo {
        self.next_order
    }

    fn trim_recent(&mut self) {
        let persisted = self.durable.persisted();
        let floor = self
            .parked
            .oldest_read()
            .map_or(persisted, |r| r.min(persisted));
        self.recent.trim(floor);
        self.idem.trim(persisted);
    }

    // ----- invariants -----------------------------------------------------------------------

    /// Checks the whole state against DESIGN's invariants, as this region sees them.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.calls.check()?;
        self.forwards.check()?;
        self.gathers.check()?;
        self.rebalancer.check()?;
        if let Some(call) = self
            .rebalancer
            .calls()
            .find(|&c| !self.calls.awaits_handoff(c))
        {
            // An ask whose call is gone would keep its pool "asking" for ever.
            return Err(format!("rebalancer: ask {call:?} has no call awaiting it"));
        }
        self.idem.check()?;
        self.parked
            .check(self.forwards.requests().chain(self.gathers.requests()))?;
        self.recent.check()?;
        self.durable.check()?;
        self.holds.check()?;
        self.check_gossip()?;
        for e in &self.events {
            let g = e.genesis().clone();
            e.ledger.check().map_err(|m| format!("{}: {m}", e.id))?;
            for (p, pool) in g.pools.iter().enumerate() {
                let pi = p as PoolIdx;
                let fail = |m: String| Err(format!("{} pool {}: {m}", e.id, pool.id));
                if e.sellable(pi) < 0 {
                    return fail(format!("sellable {} < 0", e.sellable(pi)));
                }
                let held: u64 = self
                    .holds
                    .iter()
                    .filter(|h| h.event == e.id && h.pool == pi)
                    .map(|h| h.quantity)
                    .sum();
                if held != e.held[p] {
                    return fail(format!("held {} but live holds sum to {held}", e.held[p]));
                }
                let row = &e.ledger.row(e.me).pools[p];
                // No oversell in this view: what every region has sold, plus what is held here,
                // fits the capacity.
                let sold_all: u64 = (0..g.regions.len() as RegionIdx)
                    .map(|r| e.ledger.consumed(pi, r) - e.ledger.returned(pi, r))
                    .sum();
                if sold_all + e.held[p] > pool.capacity() {
                    return fail(format!(
                        "oversold: {sold_all} sold + {} held > {}",
                        e.held[p],
                        pool.capacity()
                    ));
                }
                if e.published.seq > e.ledger.row(e.me).seq
                    || e.published.pools[p].consumed.value > row.consumed.value
                {
                    return fail("published row is ahead of the live row".into());
                }
                if let PoolKind::Assigned { .. } = pool.kind {
                    let owners = e.ledger.seat_owners(pi);
                    let owned = owners.iter().filter(|o| o.owner == e.me).count() as i64;
                    let expect = e.ledger.available(pi, e.me)
                        + (row.consumed.value - row.returned.value) as i64;
                    if owned != expect {
                        return fail(format!("owns {owned} seats but counters say {expect}"));
                    }
                    // Orders live in the store; what memory can check is that every unit this
                    // region sold and did not refund is a seat it marks sold.
                    let sold_seats = e.seats[p]
                        .iter()
                        .filter(|s| matches!(s, SeatLocal::Sold(_)))
                        .count() as u64;
                    if sold_seats != row.consumed.value - row.returned.value {
                        return fail(format!(
                            "{sold_seats} seats marked sold, counters say {}",
                            row.consumed.value - row.returned.value
                        ));
                    }
                    for (s, st) in e.seats[p].iter().enumerate() {
                        let ok = match *st {
                            SeatLocal::Free | SeatLocal::Arriving(_) => true,
                            SeatLocal::Held(h) => self
                                .holds
                                .get(h)
                                .is_some_and(|h| h.seats.contains(&(s as SeatIdx))),
                            SeatLocal::Sold(o) => o < self.next_order,
                        };
                        if !ok || (*st != SeatLocal::Free && owners[s].owner != e.me) {
                            return fail(format!(
                                "seat {s} state {st:?} disagrees with holds, orders or ownership"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A comparable picture of everything durable state determines in memory (for recovery
    /// tests; idempotency answers and orders are the store's).
    pub fn snapshot(&self) -> String {
        let mut s = String::new();
        use std::fmt::Write;
        for e in &self.events {
            let _ = writeln!(
                s,
                "event {} {:?} {:?} {:?}",
                e.id,
                e.ledger.rows(),
                e.info,
                e.held
            );
            let _ = writeln!(s, "  seats {:?} published {:?}", e.seats, e.published);
        }
        let mut holds: Vec<_> = self.holds.iter().collect();
        holds.sort_by_key(|h| h.n);
        let _ = writeln!(
            s,
            "holds {holds:?}\nnext {} {}",
            self.holds.next_number(),
            self.next_order
        );
        s
    }
}
