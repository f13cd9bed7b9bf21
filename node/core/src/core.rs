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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use allot_crdt::{PoolIdx, PoolKind, RegionIdx, SeatIdx};

use crate::api::*;
use crate::chunked::ChunkedVec;
use crate::event::{EventState, SeatLocal};
use crate::exchange::{Exchange, ExchangeBook};
use crate::gossip::GossipFrame;
use crate::ids::{IdKey, IdKind};
use crate::record::{IdemRecord, Record, RecordBody, ReleaseReason};

mod commands;
mod durability;
mod hold_book;
mod idempotency;
mod peer_calls;
mod records;
mod sync;

use commands::invalid;
use durability::DurabilityQueues;
use hold_book::HoldBook;
use idempotency::{IdempotencyTable, Seen};
pub(crate) use peer_calls::Caller;

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
    /// Refused peer input and other things an operator should see in the log.
    pub warnings: Vec<String>,
}

pub struct Core {
    cfg: Config,
    events: Vec<EventState>,
    by_id: HashMap<Arc<str>, usize>,
    // Maps that grow with the sale are B-trees: a hash map doubles its table all at once,
    // and at 131,072 idempotency keys that is a 150 ms pause in the middle of an on-sale
    // (measured by `allot bench http --idempotency-keys`); a B-tree grows a node at a time.
    holds: HoldBook,
    /// Orders are numbered densely from 1 in each region: order `n` is at `n − 1`.
    orders: ChunkedVec<Order>,
    order_of_hold: BTreeMap<u64, u64>,
    idem: IdempotencyTable,
    next_order: u64,
    last_index: u64,
    now: Millis,
    /// What waits for the disk.
    durable: DurabilityQueues,
    /// Calls to and from other regions.
    calls: ExchangeBook,
    out: Ready,
}

const MAX_KEY_LEN: usize = 128;
impl Core {
    pub fn new(cfg: Config) -> Core {
        let incarnation = cfg.incarnation;
        Core {
            cfg,
            events: Vec::new(),
            by_id: HashMap::new(),
            holds: HoldBook::default(),
            orders: ChunkedVec::default(),
            order_of_hold: BTreeMap::new(),
            idem: IdempotencyTable::default(),
            next_order: 1,
            last_index: 0,
            now: 0,
            durable: DurabilityQueues::default(),
            calls: ExchangeBook::new(incarnation),
            out: Ready::default(),
        }
    }

    /// Rebuilds a core from its durable records, in order. The only way back from disk.
    pub fn recover(cfg: Config, records: impl IntoIterator<Item = Record>) -> Result<Core, String> {
        let mut core = Core::new(cfg);
        for r in records {
            if r.index != core.last_index + 1 {
                return Err(format!(
                    "record {} follows {}: records must be contiguous",
                    r.index, core.last_index
                ));
            }
            core.now = core.now.max(r.at);
            core.apply_record(r.index, r.at, &r.body)?;
            core.last_index = r.index;
            // Everything replayed is durable: credits it brought are spendable at once.
            core.persisted(r.index);
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
        self.last_index
    }

    pub fn persisted_index(&self) -> u64 {
        self.durable.persisted()
    }

    pub fn handle(&mut self, now: Millis, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Request { id, key, command } => self.request(Caller::Client(id), key, command),
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
                self.gossip();
            }
            Input::Persisted(n) => self.persisted(n),
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
        into.warnings.append(&mut self.out.warnings);
    }

    // ----- requests -------------------------------------------------------------------------

    fn request(&mut self, id: Caller, key: Option<IdempotencyKey>, command: Command) {
        if let Some(k) = &key {
            if k.key.is_empty()
                || k.key.len() > MAX_KEY_LEN
                || !k.key.bytes().all(|b| b.is_ascii_graphic())
            {
                return self.reply_now(
                    id,
                    invalid(format!(
                        "Idempotency-Key: 1-{MAX_KEY_LEN} visible ASCII characters"
                    )),
                );
            }
            match self.idem.seen(k) {
                Seen::New => {}
                Seen::OtherBody => return self.reply_now(id, Err(CoreError::IdempotencyMismatch)),
                Seen::Again(e) => {
                    let (index, outcome) = (e.index, e.outcome.clone());
                    return self.reply_after(index, id, Ok(outcome));
                }
            }
        }
        // What another region owns is asked of it; a call from another region is never
        // passed on again (it answers `foreign-id` below).
        if let Caller::Client(client) = id {
            if let Some(region) = self.owner_elsewhere(&command) {
                return self.call_peer(client, &region, key, command);
            }
        }
        let key = key.as_ref();
        let result = match command {
            Command::CreateEvent(spec) => self.create_event(spec, key),
            Command::PatchEvent { event, patch } => self.patch_event(&event, patch, key),
            Command::Hold {
                event,
                want,
                customer,
            } => self.hold(&event, &want, customer, key),
            Command::Confirm { hold, payment_ref } => self.confirm(&hold, payment_ref, key),
            Command::Release { hold } => self.release(&hold),
            Command::Purchase {
                event,
                want,
                customer,
                payment_ref,
            } => self.purchase(&event, &want, customer, payment_ref, key),
            Command::Refund { order } => self.refund(&order, key),
            Command::Grant {
                event,
                pool,
                to,
                amount,
            } => self.grant(&event, &pool, &to, amount, key),
            Command::ReadOrder { order } => self
                .durable_order_by_id(&order)
                .map(|o| (0, Outcome::Order(o.into_owned()))),
        };
        match result {
            Ok((index, outcome)) => self.reply_after(index, id, Ok(outcome)),
            Err(e) => self.reply_now(id, Err(e)),
        }
    }

    fn reply_now(&mut self, id: Caller, reply: Reply) {
        self.deliver_reply(id, reply);
    }

    /// Releases the reply once record `index` is durable.
    fn reply_after(&mut self, index: u64, id: Caller, reply: Reply) {
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
        self.idem.expire(self.now, self.cfg.idempotency_ttl_ms);
    }

    // ----- reads ----------------------------------------------------------------------------

    pub fn events(&self) -> impl Iterator<Item = &EventState> {
        self.events.iter()
    }

    pub fn event(&self, id: &str) -> Option<&EventState> {
        self.by_id.get(id).map(|&i| &self.events[i])
    }

    pub fn live_hold(&self, n: u64) -> Option<&Hold> {
        self.holds.get(n)
    }

    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.iter()
    }

    /// Order `n` as the core's rules see it, durable or not. Readers use
    /// [`durable_order`](Self::durable_order).
    pub fn order(&self, n: u64) -> Option<&Order> {
        n.checked_sub(1).and_then(|i| self.orders.get(i as usize))
    }

    /// Order `n` as far as it is durable: `None` until the record that placed it is synced
    /// (a failed sync must not leave a readable order that a restart forgets), and shown
    /// confirmed until its refund is synced.
    pub fn durable_order(&self, n: u64) -> Option<std::borrow::Cow<'_, Order>> {
        if !self.durable.order_durable(n) {
            return None;
        }
        let o = self.order(n)?;
        if self.durable.refund_pending(n) {
            let mut before = o.clone();
            before.status = OrderStatus::Confirmed;
            return Some(std::borrow::Cow::Owned(before));
        }
        Some(std::borrow::Cow::Borrowed(o))
    }

    /// A durable order by its id, for readers: unknown, another region's, or the order.
    pub fn durable_order_by_id(&self, id: &str) -> Result<std::borrow::Cow<'_, Order>, CoreError> {
        let n = self.local_id(IdKind::Order, id)?;
        self.durable_order(n)
            .ok_or_else(|| CoreError::UnknownOrder(id.to_owned()))
    }

    /// Durable orders by number, after `after`, at most `limit`.
    pub fn orders_after(
        &self,
        event: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Vec<std::borrow::Cow<'_, Order>> {
        self.orders
            .iter_from(usize::try_from(after).unwrap_or(usize::MAX))
            .filter(|o| event.is_none_or(|e| &*o.event == e))
            .map_while(|o| self.durable_order(o.n))
            .take(limit)
            .collect()
    }

    pub fn orders(&self) -> impl Iterator<Item = &Order> {
        self.orders.iter()
    }

    // ----- invariants -----------------------------------------------------------------------

    /// Checks the whole state against DESIGN's invariants, as this region sees them.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.calls.check()?;
        self.idem.check()?;
        self.durable.check()?;
        self.holds.check()?;
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
                let mine: Vec<&Order> = self
                    .orders
                    .iter()
                    .filter(|o| o.event == e.id && o.pool == pi)
                    .collect();
                let sold: u64 = mine
                    .iter()
                    .filter(|o| o.status == OrderStatus::Confirmed)
                    .map(|o| o.quantity)
                    .sum();
                let refunded: u64 = mine
                    .iter()
                    .filter(|o| o.status == OrderStatus::Refunded)
                    .map(|o| o.quantity)
                    .sum();
                let row = &e.ledger.row(e.me).pools[p];
                if row.consumed.value != sold + refunded || row.returned.value != refunded {
                    return fail(format!(
                        "row says consumed {} returned {}, orders say {} and {refunded}",
                        row.consumed.value,
                        row.returned.value,
                        sold + refunded
                    ));
                }
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
                    let mut sold_seats = std::collections::HashSet::new();
                    for o in mine.iter().filter(|o| o.status == OrderStatus::Confirmed) {
                        for &s in &o.seats {
                            if !sold_seats.insert(s) {
                                return fail(format!("seat {s} sold twice"));
                            }
                            if owners[s as usize].owner != e.me
                                || e.seats[p][s as usize] != SeatLocal::Sold(o.n)
                            {
                                return fail(format!(
                                    "sold seat {s} is not recorded as sold by its owner"
                                ));
                            }
                        }
                    }
                    for (s, st) in e.seats[p].iter().enumerate() {
                        let ok = match *st {
                            SeatLocal::Free | SeatLocal::Arriving(_) => true,
                            SeatLocal::Held(h) => self
                                .holds
                                .get(h)
                                .is_some_and(|h| h.seats.contains(&(s as SeatIdx))),
                            SeatLocal::Sold(o) => self
                                .order(o)
                                .is_some_and(|o| o.status == OrderStatus::Confirmed),
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

    /// A comparable picture of everything durable state determines (for recovery tests).
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
            "holds {holds:?}\norders {:?}\nnext {} {}",
            self.orders,
            self.holds.next_number(),
            self.next_order
        );
        let mut keys = self.idem.describe();
        keys.sort();
        let _ = writeln!(s, "idem {keys:?}");
        s
    }
}
