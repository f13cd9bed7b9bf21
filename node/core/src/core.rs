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

use allot_crdt::{
    Applied, Change, EventMeta, Genesis, MetaDoc, MetaPatch, PoolIdx, PoolKind, PoolSpec,
    RegionIdx, RowDelta, SeatIdx,
};

use crate::api::*;
use crate::chunked::ChunkedVec;
use crate::event::{EventState, SeatLocal};
use crate::exchange::{Exchange, ExchangeBook};
use crate::gossip::GossipFrame;
use crate::ids::{GlobalId, IdKey, IdKind};
use crate::record::{IdemRecord, Record, RecordBody, ReleaseReason};

mod durability;
mod hold_book;
mod idempotency;
mod peer_calls;
mod sync;

use durability::{DurabilityQueues, PendingCredit, PendingRow};
use hold_book::HoldBook;
use idempotency::{IdempotencyTable, Seen};
pub(crate) use peer_calls::Caller;
use sync::{largest_gossip_unit, unit_room};

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
const MAX_TEXT: usize = 4000;
const MAX_PRICE: u64 = 1_000_000_000;

fn invalid<T>(why: impl Into<String>) -> Result<T, CoreError> {
    Err(CoreError::Invalid(why.into()))
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), CoreError> {
    if s.len() > max || s.chars().any(char::is_control) {
        return invalid(format!(
            "{field}: at most {max} bytes, no control characters"
        ));
    }
    Ok(())
}

fn check_id(field: &str, s: &str) -> Result<(), CoreError> {
    if allot_crdt::valid_id(s) {
        Ok(())
    } else {
        invalid(format!("{field}: 1-64 characters of A-Z a-z 0-9 - _ ."))
    }
}

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

    fn idem_record(key: Option<&IdempotencyKey>, outcome: &Outcome) -> Option<IdemRecord> {
        key.map(|k| IdemRecord {
            key: k.clone(),
            outcome: outcome.clone(),
        })
    }

    fn event_idx(&self, event: &str) -> Result<usize, CoreError> {
        self.by_id
            .get(event)
            .copied()
            .ok_or_else(|| CoreError::UnknownEvent(event.to_owned()))
    }

    fn pool_idx(&self, ev: usize, pool: &str) -> Result<PoolIdx, CoreError> {
        self.events[ev]
            .genesis()
            .pool_index(pool)
            .ok_or_else(|| CoreError::UnknownPool(pool.to_owned()))
    }

    fn create_event(
        &mut self,
        spec: EventSpec,
        key: Option<&IdempotencyKey>,
    ) -> Result<(u64, Outcome), CoreError> {
        if self.cfg.region != self.cfg.catalog_region {
            return Err(CoreError::NotCatalog {
                catalog: self.cfg.catalog_region.clone(),
            });
        }
        check_id("id", &spec.id)?;
        if self.by_id.contains_key(spec.id.as_str()) {
            return Err(CoreError::EventExists(spec.id));
        }
        check_text("name", &spec.name, 200)?;
        check_text("description", &spec.description, MAX_TEXT)?;
        check_text("venue", &spec.venue, 200)?;
        check_text("starts_at", &spec.starts_at, 40)?;
        if !(-90.0..=90.0).contains(&spec.lat) || !(-180.0..=180.0).contains(&spec.lon) {
            return invalid("lat must be within ±90 and lon within ±180");
        }
        if !(1..=86_400).contains(&spec.hold_ttl_s) {
            return invalid("hold_ttl_s must be 1-86400");
        }
        let mut prices = BTreeMap::new();
        for p in &spec.pools {
            if p.price_cents > MAX_PRICE {
                return invalid(format!("pool {}: price_cents at most {MAX_PRICE}", p.id));
            }
            prices.insert(p.id.clone(), p.price_cents);
        }
        let pools = spec
            .pools
            .iter()
            .map(|p| PoolSpec {
                id: p.id.clone(),
                kind: p.kind.clone(),
            })
            .collect();
        let genesis = Genesis::build(
            &spec.id,
            &spec.currency,
            &self.cfg.regions,
            pools,
            &spec.allotments,
        )?;
        let meta = EventMeta {
            name: spec.name,
            description: spec.description,
            venue: spec.venue,
            lat: spec.lat,
            lon: spec.lon,
            starts_at: spec.starts_at,
            hold_ttl_s: spec.hold_ttl_s,
            prices,
        };
        let actor = EventState::actor(&self.cfg.region, self.cfg.incarnation);
        let (_, change) =
            MetaDoc::create(&actor, &meta).map_err(|e| CoreError::Meta(e.to_string()))?;
        let largest = largest_gossip_unit(&genesis, change.len());
        let room = unit_room(self.cfg.frame_budget_bytes);
        if largest > room {
            return invalid(format!(
                "the event could grow to {largest} bytes of gossip, more than the {room} one \
                 frame carries: split its seats into fewer or smaller pools"
            ));
        }
        let outcome = Outcome::EventCreated { event: spec.id };
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::EventCreated {
            genesis,
            meta: vec![change],
            idem,
        });
        Ok((index, outcome))
    }

    fn patch_event(
        &mut self,
        event: &str,
        patch: MetaPatch,
        key: Option<&IdempotencyKey>,
    ) -> Result<(u64, Outcome), CoreError> {
        let ev = self.event_idx(event)?;
        for (field, v, max) in [
            ("name", &patch.name, 200),
            ("description", &patch.description, MAX_TEXT),
            ("venue", &patch.venue, 200),
            ("starts_at", &patch.starts_at, 40),
        ] {
            if let Some(v) = v {
                check_text(field, v, max)?;
            }
        }
        if patch.lat.is_some_and(|l| !(-90.0..=90.0).contains(&l))
            || patch.lon.is_some_and(|l| !(-180.0..=180.0).contains(&l))
        {
            return invalid("lat must be within ±90 and lon within ±180");
        }
        if patch.hold_ttl_s.is_some_and(|t| !(1..=86_400).contains(&t)) {
            return invalid("hold_ttl_s must be 1-86400");
        }
        if patch.prices.values().any(|&p| p > MAX_PRICE) {
            return invalid(format!("price_cents at most {MAX_PRICE}"));
        }
        // Every edit rides with the genesis to a peer that lacks the event: the history may
        // not grow past what one frame carries.
        let e = &self.events[ev];
        let patch_bytes = [
            &patch.name,
            &patch.description,
            &patch.venue,
            &patch.starts_at,
        ]
        .iter()
        .map(|v| v.as_ref().map_or(0, String::len))
        .sum::<usize>()
            + 64 * (patch.prices.len() + 8);
        let largest = largest_gossip_unit(e.genesis(), e.meta_bytes + patch_bytes);
        if largest > unit_room(self.cfg.frame_budget_bytes) {
            return invalid(
                "this event's metadata has been edited so often that its history would not fit \
                 one gossip frame; no more edits are accepted",
            );
        }
        let change = self.events[ev]
            .meta
            .patch(&patch)
            .map_err(|e| CoreError::Meta(e.to_string()))?;
        let outcome = Outcome::EventPatched {
            event: event.to_owned(),
        };
        let Some(change) = change else {
            return Ok((self.last_index, outcome));
        };
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::MetaChanged {
            event: event.to_owned(),
            changes: vec![change],
            idem,
        });
        Ok((index, outcome))
    }

    /// Turns a want into (pool, quantity, seats), checking this region can cover it now.
    fn resolve(&self, ev: usize, want: &Want) -> Result<(PoolIdx, u64, Vec<SeatIdx>), CoreError> {
        let e = &self.events[ev];
        match want {
            Want::Quantity { pool, quantity } => {
                let p = self.pool_idx(ev, pool)?;
                if *quantity == 0 || *quantity > self.cfg.max_quantity {
                    return invalid(format!("quantity must be 1-{}", self.cfg.max_quantity));
                }
                let sellable = e.sellable(p);
                if i128::from(sellable) < i128::from(*quantity) {
                    return Err(CoreError::SoldOut {
                        available: sellable.max(0) as u64,
                        wanted: *quantity,
                    });
                }
                let seats = if e.genesis().pool(p).is_assigned() {
                    let owners = e.ledger.seat_owners(p);
                    let picked: Vec<SeatIdx> = (0..owners.len())
                        .filter(|&s| {
                            (owners[s].owner == e.me || crate::bugs::skip_owner_check())
                                && e.seats[p as usize][s] == SeatLocal::Free
                        })
                        .take(*quantity as usize)
                        .map(|s| s as SeatIdx)
                        .collect();
                    if (picked.len() as u64) < *quantity {
                        return Err(CoreError::SoldOut {
                            available: picked.len() as u64,
                            wanted: *quantity,
                        });
                    }
                    picked
                } else {
                    Vec::new()
                };
                Ok((p, *quantity, seats))
            }
            Want::Seats { pool, seats } => {
                if seats.is_empty() || seats.len() as u64 > self.cfg.max_quantity {
                    return invalid(format!("1-{} seats per request", self.cfg.max_quantity));
                }
                let p = match pool {
                    Some(pool) => self.pool_idx(ev, pool)?,
                    None => e
                        .seat_index
                        .iter()
                        .position(|m| m.contains_key(&seats[0]))
                        .map(|i| i as PoolIdx)
                        .ok_or_else(|| CoreError::UnknownSeat(seats[0].clone()))?,
                };
                let idx = self.seat_indices(ev, p, seats)?;
                for (&s, id) in idx.iter().zip(seats) {
                    let owner = e.ledger.seat_owner(p, s).owner;
                    if owner != e.me && !crate::bugs::skip_owner_check() {
                        return Err(CoreError::SeatElsewhere {
                            seat: id.clone(),
                            region: e.genesis().regions[owner as usize].clone(),
                        });
                    }
                    if e.seats[p as usize][s as usize] != SeatLocal::Free {
                        return Err(CoreError::SeatTaken(id.clone()));
                    }
                }
                Ok((p, idx.len() as u64, idx))
            }
        }
    }

    fn seat_indices(
        &self,
        ev: usize,
        p: PoolIdx,
        seats: &[String],
    ) -> Result<Vec<SeatIdx>, CoreError> {
        let e = &self.events[ev];
        if !e.genesis().pool(p).is_assigned() {
            return invalid(format!("pool {} has no seat map", e.genesis().pool(p).id));
        }
        let mut idx = Vec::with_capacity(seats.len());
        for s in seats {
            let i = *e.seat_index[p as usize]
                .get(s)
                .ok_or_else(|| CoreError::UnknownSeat(s.clone()))?;
            if idx.contains(&i) {
                return invalid(format!("seat {s} listed twice"));
            }
            idx.push(i);
        }
        Ok(idx)
    }

    fn price(&self, ev: usize, p: PoolIdx, quantity: u64) -> u64 {
        self.events[ev].prices[p as usize].saturating_mul(quantity)
    }

    fn hold(
        &mut self,
        event: &str,
        want: &Want,
        customer: String,
        key: Option<&IdempotencyKey>,
    ) -> Result<(u64, Outcome), CoreError> {
        let ev = self.event_idx(event)?;
        check_id("customer", &customer)?;
        let live = self.holds.live_of(&customer);
        if live >= self.cfg.max_holds_per_customer {
            return Err(CoreError::HoldLimit(live));
        }
        let (pool, quantity, seats) = self.resolve(ev, want)?;
        let e = &self.events[ev];
        let hold = Hold {
            n: self.holds.next_number(),
            event: e.id.clone(),
            pool,
            quantity,
            seats,
            customer: customer.into(),
            price_cents: self.price(ev, pool, quantity),
            created_at: self.now,
            expires_at: self.now + e.info.hold_ttl_s * 1000,
        };
        let outcome = Outcome::Held(hold.clone());
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::HoldPlaced { hold, idem });
        Ok((index, outcome))
    }

    /// The number of one of this region's holds or orders, from its id. A malformed id, one
    /// that names no region of the cluster, and one whose tag this region did not make are
    /// all simply unknown; another region's id is that region's to answer.
    fn local_id(&self, kind: IdKind, id: &str) -> Result<u64, CoreError> {
        let unknown = || match kind {
            IdKind::Hold => CoreError::UnknownHold(id.to_owned()),
            IdKind::Order => CoreError::UnknownOrder(id.to_owned()),
        };
        let (region, n, tag) = GlobalId::parts(kind, id).ok_or_else(unknown)?;
        if region != self.cfg.region {
            if !self.cfg.regions.iter().any(|r| r == region) {
                return Err(unknown());
            }
            return Err(CoreError::Foreign {
                id: id.to_owned(),
                region: region.to_owned(),
            });
        }
        if !self.cfg.id_key.verifies_parts(kind, n, tag) {
            return Err(unknown());
        }
        Ok(n)
    }

    /// The id buyers and operators see for this region's hold or order `n`.
    pub fn id_of(&self, kind: IdKind, n: u64) -> String {
        self.cfg.id_key.format(kind, &self.cfg.region, n)
    }

    fn confirm(
        &mut self,
        hold_id: &str,
        payment_ref: String,
        key: Option<&IdempotencyKey>,
    ) -> Result<(u64, Outcome), CoreError> {
        let n = self.local_id(IdKind::Hold, hold_id)?;
        if let Some(o) = self.order_of_hold.get(&n) {
            return Ok((
                self.last_index,
                Outcome::Order(
                    self.order(*o)
                        .cloned()
                        .expect("a confirmed hold names an existing order"),
                ),
            ));
        }
        let Some(hold) = self.holds.get(n) else {
            return Err(if self.holds.issued(n) {
                CoreError::HoldExpired
            } else {
                CoreError::UnknownHold(hold_id.to_owned())
            });
        };
        if self.now >= hold.expires_at {
            let event = hold.event.to_string();
            self.commit(RecordBody::HoldsReleased {
                event,
                holds: vec![n],
                reason: ReleaseReason::Expired,
            });
            return Err(CoreError::HoldExpired);
        }
        check_text("payment_ref", &payment_ref, 128)?;
        if payment_ref.is_empty() {
            return invalid("payment_ref is required");
        }
        let hold = hold.clone();
        let ev = self.by_id[&hold.event];
        let row = self.events[ev]
            .ledger
            .write(
                self.events[ev].me,
                &[Change::Consume {
                    pool: hold.pool,
                    n: hold.quantity,
                }],
            )
            .expect("a live hold is covered by this region's quota");
        let mut order = self.new_order(
            &hold.event,
            hold.pool,
            hold.quantity,
            hold.seats,
            hold.customer,
            hold.price_cents,
            payment_ref,
        );
        order.hold = Some(n);
        let outcome = Outcome::Order(order.clone());
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::OrderPlaced {
            order,
            hold: Some(n),
            row,
            idem,
        });
        Ok((index, outcome))
    }

    #[allow(clippy::too_many_arguments)]
    fn new_order(
        &self,
        event: &Arc<str>,
        pool: PoolIdx,
        quantity: u64,
        seats: Vec<SeatIdx>,
        customer: Arc<str>,
        price_cents: u64,
        payment_ref: String,
    ) -> Order {
        Order {
            n: self.next_order,
            event: event.clone(),
            pool,
            quantity,
            seats,
            customer,
            price_cents,
            payment_ref: payment_ref.into(),
            status: OrderStatus::Confirmed,
            created_at: self.now,
            hold: None,
        }
    }

    fn release(&mut self, hold_id: &str) -> Result<(u64, Outcome), CoreError> {
        let n = self.local_id(IdKind::Hold, hold_id)?;
        if self.order_of_hold.contains_key(&n) {
            return invalid("the hold is confirmed; refund the order instead");
        }
        match self.holds.get(n) {
            Some(h) => {
                let event = h.event.to_string();
                let index = self.commit(RecordBody::HoldsReleased {
                    event,
                    holds: vec![n],
                    reason: ReleaseReason::Released,
                });
                Ok((index, Outcome::Released { hold: n }))
            }
            None if self.holds.issued(n) => Ok((self.last_index, Outcome::Released { hold: n })),
            None => Err(CoreError::UnknownHold(hold_id.to_owned())),
        }
    }

    fn purchase(
        &mut self,
        event: &str,
        want: &Want,
        customer: String,
        payment_ref: String,
        key: Option<&IdempotencyKey>,
    ) -> Result<(u64, Outcome), CoreError> {
        let ev = self.event_idx(event)?;
        check_id("customer", &customer)?;
        if payment_ref.is_empty() {
            return invalid("payment_ref is required");
        }
        check_text("payment_ref", &payment_ref, 128)?;
        let (pool, quantity, seats) = self.resolve(ev, want)?;
        let e = &self.events[ev];
        let row = e
            .ledger
            .write(e.me, &[Change::Consume { pool, n: quantity }])
            .expect("resolve checked sellable");
        let order = self.new_order(
            &e.id,
            pool,
            quantity,
            seats,
            customer.into(),
            self.price(ev, pool, quantity),
            payment_ref,
        );
        let outcome = Outcome::Order(order.clone());
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::OrderPlaced {
            order,
            hold: None,
            row,
            idem,
        });
        Ok((index, outcome))
    }

    fn refund(
        &mut self,
        order_id: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<(u64, Outcome), CoreError> {
        let n = self.local_id(IdKind::Order, order_id)?;
        let order = self
            .order(n)
            .ok_or_else(|| CoreError::UnknownOrder(order_id.to_owned()))?;
        if order.status == OrderStatus::Refunded {
            return Ok((self.last_index, Outcome::Order(order.clone())));
        }
        let ev = self.by_id[&order.event];
        let e = &self.events[ev];
        let row = e
            .ledger
            .write(
                e.me,
                &[Change::Return {
                    pool: order.pool,
                    n: order.quantity,
                }],
            )
            .expect("an order's units were consumed here");
        let mut refunded = order.clone();
        refunded.status = OrderStatus::Refunded;
        let outcome = Outcome::Order(refunded.clone());
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::Refunded {
            order: refunded,
            row,
            idem,
        });
        Ok((index, outcome))
    }

    fn grant(
        &mut self,
        event: &str,
        pool: &str,
        to: &str,
        amount: GrantAmount,
        key: Option<&IdempotencyKey>,
    ) -> Result<(u64, Outcome), CoreError> {
        let ev = self.event_idx(event)?;
        let p = self.pool_idx(ev, pool)?;
        let e = &self.events[ev];
        let to_idx = e
            .genesis()
            .region_index(to)
            .ok_or_else(|| CoreError::Invalid(format!("unknown region {to:?}")))?;
        if to_idx == e.me {
            return invalid("a region cannot grant to itself");
        }
        let (changes, quantity, seats) = match amount {
            GrantAmount::Quantity(q) => {
                if e.genesis().pool(p).is_assigned() {
                    return invalid("assigned seats move by seat id");
                }
                let capacity = e.genesis().pool(p).capacity();
                if q == 0 || q > capacity {
                    return invalid(format!(
                        "quantity must be 1-{capacity}, the capacity of {pool}"
                    ));
                }
                let sellable = e.sellable(p);
                if i128::from(sellable) < i128::from(q) {
                    return Err(CoreError::NotOwner(format!(
                        "{} can spare {} of {pool}, not {q}",
                        self.cfg.region,
                        sellable.max(0)
                    )));
                }
                (
                    vec![Change::Grant {
                        pool: p,
                        to: to_idx,
                        n: q,
                    }],
                    q,
                    Vec::new(),
                )
            }
            GrantAmount::Seats(ids) => {
                if ids.is_empty() || ids.len() > 10_000 {
                    return invalid("1-10000 seats per transfer");
                }
                let idx = self.seat_indices(ev, p, &ids)?;
                for (&s, id) in idx.iter().zip(&ids) {
                    let owner = e.ledger.seat_owner(p, s).owner;
                    if owner != e.me {
                        return Err(CoreError::NotOwner(format!(
                            "seat {id} is owned by {}",
                            e.genesis().regions[owner as usize]
                        )));
                    }
                    if e.seats[p as usize][s as usize] != SeatLocal::Free {
                        return Err(CoreError::SeatTaken(id.clone()));
                    }
                }
                let changes = idx
                    .iter()
                    .map(|&seat| Change::GiveSeat {
                        pool: p,
                        seat,
                        to: to_idx,
                    })
                    .collect();
                (changes, idx.len() as u64, idx)
            }
        };
        let row = e
            .ledger
            .write(e.me, &changes)
            .map_err(|r| CoreError::NotOwner(r.to_string()))?;
        let outcome = Outcome::Granted {
            event: event.to_owned(),
            pool: p,
            to: to.to_owned(),
            quantity,
            seats,
        };
        let idem = Self::idem_record(key, &outcome);
        let index = self.commit(RecordBody::Granted {
            event: event.to_owned(),
            row,
            idem,
        });
        Ok((index, outcome))
    }

    // ----- records --------------------------------------------------------------------------

    /// Applies a record the live path built (so it cannot fail) and emits it.
    fn commit(&mut self, body: RecordBody) -> u64 {
        let index = self.last_index + 1;
        let changed = self
            .apply_record(index, self.now, &body)
            .expect("the live path builds only valid records");
        assert!(changed, "a command's record always changes state");
        self.last_index = index;
        self.out.records.push(Record {
            index,
            at: self.now,
            body,
        });
        index
    }

    /// The one place state changes. Returns whether the record changed anything (a peer row
    /// may turn out to be old news, and then is not recorded).
    fn apply_record(&mut self, index: u64, at: Millis, body: &RecordBody) -> Result<bool, String> {
        match body {
            RecordBody::EventCreated {
                genesis,
                meta,
                idem,
            } => {
                if self.by_id.contains_key(genesis.id.as_str()) {
                    return Err(format!("event {} created twice", genesis.id));
                }
                genesis.validate().map_err(|e| e.to_string())?;
                let me = genesis
                    .region_index(&self.cfg.region)
                    .ok_or("event does not include this region")?;
                let actor = EventState::actor(&self.cfg.region, self.cfg.incarnation);
                let doc = MetaDoc::from_changes(&actor, meta).map_err(|e| e.to_string())?;
                let info = doc.read().map_err(|e| e.to_string())?;
                let mut ev = EventState::new(genesis.clone(), me, doc, info, index);
                ev.meta_bytes = meta.iter().map(Vec::len).sum();
                self.by_id.insert(ev.id.clone(), self.events.len());
                self.events.push(ev);
                self.remember(index, at, idem);
            }
            RecordBody::MetaChanged {
                event,
                changes,
                idem,
            } => {
                let ev = self.event_idx(event).map_err(|e| e.to_string())?;
                let e = &mut self.events[ev];
                // Tried on a fork first: changes that leave the metadata unreadable change
                // nothing.
                let info = e.meta.apply_checked(changes).map_err(|e| e.to_string())?;
                e.info = info;
                e.refresh_prices();
                e.meta_index = index;
                e.meta_bytes += changes.iter().map(Vec::len).sum::<usize>();
                self.remember(index, at, idem);
            }
            RecordBody::HoldPlaced { hold, idem } => {
                let ev = self.event_idx(&hold.event).map_err(|e| e.to_string())?;
                let e = &mut self.events[ev];
                let p = hold.pool as usize;
                e.held[p] += hold.quantity;
                for &s in &hold.seats {
                    assert_eq!(
                        e.seats[p][s as usize],
                        SeatLocal::Free,
                        "held seat must be free"
                    );
                    e.seats[p][s as usize] = SeatLocal::Held(hold.n);
                }
                e.assert_pool(hold.pool);
                self.holds.insert(hold.clone());
                self.remember(index, at, idem);
            }
            RecordBody::HoldsReleased { holds, .. } => {
                for n in holds {
                    let h = self
                        .holds
                        .take(*n)
                        .ok_or_else(|| format!("release of unknown hold {n}"))?;
                    self.drop_hold(&h, SeatLocal::Free);
                }
            }
            RecordBody::OrderPlaced {
                order,
                hold,
                row,
                idem,
            } => {
                let ev = self.event_idx(&order.event).map_err(|e| e.to_string())?;
                if let Some(h) = hold {
                    let h = self.holds.take(*h).ok_or("confirm of an unknown hold")?;
                    self.drop_hold(&h, SeatLocal::Sold(order.n));
                    self.order_of_hold.insert(h.n, order.n);
                } else {
                    let e = &mut self.events[ev];
                    for &s in &order.seats {
                        assert_eq!(
                            e.seats[order.pool as usize][s as usize],
                            SeatLocal::Free,
                            "sold seat must be free"
                        );
                        e.seats[order.pool as usize][s as usize] = SeatLocal::Sold(order.n);
                    }
                }
                self.apply_own_row(index, ev, row)?;
                self.events[ev].assert_pool(order.pool);
                self.next_order = self.next_order.max(order.n + 1);
                if order.n != self.orders.len() as u64 + 1 {
                    return Err(format!(
                        "order {} out of sequence after {}",
                        order.n,
                        self.orders.len()
                    ));
                }
                self.orders.push(order.clone());
                self.durable.order_placed(index, order.n);
                self.remember(index, at, idem);
            }
            RecordBody::Refunded { order, row, idem } => {
                let o = order
                    .n
                    .checked_sub(1)
                    .and_then(|i| self.orders.get_mut(i as usize))
                    .ok_or("refund of an unknown order")?;
                o.status = OrderStatus::Refunded;
                let (event, pool, seats) = (o.event.clone(), o.pool, o.seats.clone());
                self.durable.order_refunded(index, order.n);
                let ev = self.event_idx(&event).map_err(|e| e.to_string())?;
                for s in seats {
                    self.events[ev].seats[pool as usize][s as usize] = SeatLocal::Free;
                }
                self.apply_own_row(index, ev, row)?;
                self.events[ev].assert_pool(pool);
                self.remember(index, at, idem);
            }
            RecordBody::Granted { event, row, idem } => {
                let ev = self.event_idx(event).map_err(|e| e.to_string())?;
                self.apply_own_row(index, ev, row)?;
                for &(_, entry) in &row.entries {
                    self.events[ev].assert_pool(entry.pool());
                }
                self.remember(index, at, idem);
            }
            RecordBody::RowRestored { .. }
            | RecordBody::OrderRestored { .. }
            | RecordBody::KeyRestored { .. }
            | RecordBody::CountersRestored { .. } => {
                self.restore(index, at, body)?;
            }
            RecordBody::PeerRow { event, row } => {
                let ev = self.event_idx(event).map_err(|e| e.to_string())?;
                let e = &mut self.events[ev];
                if row.writer == e.me {
                    return Err("a peer row written by this region".into());
                }
                // Every rule is checked on the preview, before anything changes: a refused
                // row leaves no trace (no half-applied ledger, no stray pending credit).
                match e.ledger.preview(row).map_err(|r| r.to_string())? {
                    Applied::Stale | Applied::Gap { .. } => return Ok(false),
                    Applied::Advanced { credits, seats, .. } => {
                        if seats.iter().any(|m| m.from == e.me) {
                            return Err("a peer row moved a seat this region owns".into());
                        }
                        e.check_credits_fit(&credits)?;
                        e.ledger.apply(row).map_err(|r| r.to_string())?;
                        for c in credits.iter().filter(|c| c.to == e.me) {
                            e.pending_credit[c.pool as usize] += c.amount;
                            self.durable.credit(PendingCredit {
                                index,
                                event: ev,
                                pool: c.pool,
                                amount: c.amount,
                                seat: None,
                            });
                        }
                        for m in seats.iter().filter(|m| m.to == e.me) {
                            e.seats[m.pool as usize][m.seat as usize] = SeatLocal::Arriving(index);
                            self.durable.credit(PendingCredit {
                                index,
                                event: ev,
                                pool: m.pool,
                                amount: 0,
                                seat: Some(m.seat),
                            });
                        }
                    }
                }
            }
        }
        Ok(true)
    }

    fn restore(&mut self, index: u64, at: Millis, body: &RecordBody) -> Result<(), String> {
        match body {
            RecordBody::RowRestored { event, row } => {
                let ev = self.event_idx(event).map_err(|e| e.to_string())?;
                let e = &mut self.events[ev];
                if row.since != 0 {
                    return Err("a restored row must be whole (since 0)".into());
                }
                match e.ledger.apply(row).map_err(|r| r.to_string())? {
                    Applied::Advanced { .. } => {}
                    other => return Err(format!("restored row did not advance: {other:?}")),
                }
                if row.writer == e.me {
                    e.published.absorb(row);
                }
            }
            RecordBody::OrderRestored { order } => {
                let ev = self.event_idx(&order.event).map_err(|e| e.to_string())?;
                if order.n != self.orders.len() as u64 + 1 {
                    return Err(format!(
                        "order {} out of sequence after {}",
                        order.n,
                        self.orders.len()
                    ));
                }
                if order.status == OrderStatus::Confirmed {
                    let e = &mut self.events[ev];
                    for &s in &order.seats {
                        e.seats[order.pool as usize][s as usize] = SeatLocal::Sold(order.n);
                    }
                }
                if let Some(h) = order.hold {
                    self.order_of_hold.insert(h, order.n);
                }
                self.next_order = order.n + 1;
                self.orders.push(order.clone());
            }
            RecordBody::KeyRestored { key, outcome } => {
                self.remember(
                    index,
                    at,
                    &Some(IdemRecord {
                        key: key.clone(),
                        outcome: outcome.clone(),
                    }),
                );
            }
            RecordBody::CountersRestored { next_hold } => {
                self.holds.restore_next(*next_hold);
            }
            _ => unreachable!("restore is called with restore records only"),
        }
        Ok(())
    }

    fn apply_own_row(&mut self, index: u64, ev: usize, row: &RowDelta) -> Result<(), String> {
        let e = &mut self.events[ev];
        if row.writer != e.me {
            return Err("own-row record written by another region".into());
        }
        match e.ledger.apply(row).map_err(|r| r.to_string())? {
            Applied::Advanced { .. } => {}
            other => return Err(format!("own row did not advance: {other:?}")),
        }
        self.durable.own_row(PendingRow {
            index,
            event: ev,
            row: row.clone(),
        });
        Ok(())
    }

    /// Gives back what a hold that left the book set aside.
    fn drop_hold(&mut self, h: &Hold, seat_state: SeatLocal) {
        let ev = self.by_id[&h.event];
        let e = &mut self.events[ev];
        e.held[h.pool as usize] -= h.quantity;
        for &s in &h.seats {
            e.seats[h.pool as usize][s as usize] = seat_state;
        }
    }

    fn remember(&mut self, index: u64, at: Millis, idem: &Option<IdemRecord>) {
        self.idem.remember(index, at, idem);
    }

    fn persisted(&mut self, upto: u64) {
        if !self.durable.advance(upto.min(self.last_index)) {
            return;
        }
        while let Some(r) = self.durable.durable_row() {
            self.events[r.event].published.absorb(&r.row);
        }
        while let Some(c) = self.durable.durable_credit() {
            let e = &mut self.events[c.event];
            let p = c.pool as usize;
            e.pending_credit[p] -= c.amount;
            if let Some(s) = c.seat {
                if matches!(e.seats[p][s as usize], SeatLocal::Arriving(_)) {
                    e.seats[p][s as usize] = SeatLocal::Free;
                }
            }
        }
        while let Some((caller, reply)) = self.durable.durable_reply() {
            self.deliver_reply(caller, reply);
        }
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
