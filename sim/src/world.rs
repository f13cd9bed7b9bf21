//! The simulated world: region cores, a network and disks in virtual time, driven by one
//! seeded random generator. The same seed gives the same run, byte for byte.

use std::collections::{BTreeMap, HashMap};

use allot_crdt::{Allotments, PoolKind};
use allot_node::cluster::check_global;
use allot_node::*;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::report::{Latency, Report};
use crate::scenario::Scenario;
use crate::waits::{Answer, Waits};

/// How quota is managed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Allotments never move.
    Static,
    /// The regions' own rebalancer: asks and grants by demand (`allot_node::policy`).
    Rebalance,
    /// An operator's handoff by hand: every second, the region with the most spare quota
    /// gives half its surplus over the poorest to the poorest.
    Operator,
    /// Every sale is a round trip to one home region that owns everything (a central database).
    Central,
}

/// Extra chaos the fuzz mode adds to a scenario: random operator transfers of quota and seats.
#[derive(Clone, Copy, Debug, Default)]
pub struct Chaos {
    pub transfers_per_s: f64,
}

/// The region the central strategy keeps everything in: the scenario's first. Its buyers are
/// the "home" ones; the remote-region latency bar is about everyone else's.
const CENTRAL_HOME: usize = 0;

#[derive(Debug)]
enum Ev {
    Request {
        region: usize,
        command: Box<Command>,
        pending: Pending,
    },
    Arrival {
        region: usize,
    },
    Confirm {
        region: usize,
        hold: String,
        quantity: u64,
        pool: &'static str,
        client: usize,
    },
    /// A gossip frame, a call or an answer arriving.
    Deliver {
        from: usize,
        to: usize,
        message: PeerMessage,
    },
    Tick {
        region: usize,
    },
    /// The store answers a read (from what it holds when the answer is made).
    Read {
        region: usize,
        incarnation: u64,
        id: ReadId,
        lookup: Lookup,
    },
    Persist {
        region: usize,
    },
    Crash {
        region: usize,
        restart_at: u64,
    },
    Restart {
        region: usize,
    },
    Rebalance,
    Transfer,
    /// An operator refunds an order at the region that sold it.
    Refund {
        region: usize,
        order: String,
    },
}

/// What an answer is for.
#[derive(Debug, Clone, PartialEq)]
enum Purpose {
    /// A buyer's purchase, hold or confirm: counted in the report.
    Sale,
    /// A purchase sent again with its key: only checked against the first answer.
    Retry,
    /// An operator's refund.
    Refund,
}

#[derive(Debug)]
struct Pending {
    arrival: u64,
    quantity: u64,
    pool: &'static str,
    /// The region the buyer is in (differs from the serving region under `central`).
    client: usize,
    purpose: Purpose,
    /// The `Idempotency-Key` the request carries.
    key: Option<String>,
}

struct Node {
    core: Option<Core>,
    cfg: Config,
    unpersisted: Vec<Record>,
    /// The region's durable state: what reads see and a restart recovers from.
    store: MemStore,
    persist_scheduled: bool,
    pending: HashMap<RequestId, Pending>,
    /// While the region is down: its durable state as a restart will recover it, which the
    /// global invariants count in its place (quota it gave or sold does not vanish with it).
    ghost: Option<Core>,
}

pub struct World {
    sc: Scenario,
    strategy: Strategy,
    chaos: Chaos,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    names: Vec<String>,
    nodes: Vec<Node>,
    next_request: u64,
    /// Check every invariant after every step (fuzz mode and tests).
    pub check_every_step: bool,
    report: Report,
    waits: Waits,
    /// Of the sales another region made through forwarding.
    forward_latency: Histogram<u64>,
    heal_pending: Vec<u64>,
    steps: u64,
    /// Per region, the exact (fractional ms) time of the last arrival: arrivals may be denser
    /// than the millisecond clock.
    arrival_clock: Vec<f64>,
    /// Regions whose next `Arrival` is only a wake-up during a quiet phase.
    quiet: Vec<usize>,
    /// Reused output buffers of the cores.
    ready: Ready,
    /// Handoff asks sent, by asking region: their answers count as handoff messages too.
    asks: std::collections::HashSet<(usize, CallId)>,
    /// The order each idempotency key was first answered with: (region, order number).
    keyed: HashMap<String, (usize, OrderNo)>,
}

const EVENT: &str = "sim";

impl World {
    pub fn new(sc: Scenario, strategy: Strategy, seed: u64, chaos: Chaos) -> World {
        let names = sc.regions.clone();
        // Each region's id key comes from the seed (its own stream, so drawing it does not
        // shift the main generator): a seed replays the same ids.
        let mut keys = ChaCha8Rng::seed_from_u64(seed ^ 0x1d_6e75);
        let nodes = names
            .iter()
            .map(|n| {
                let mut cfg = Config::new(n, &names);
                cfg.max_holds_per_customer = u32::MAX;
                cfg.id_key = IdKey::new(keys.random());
                if strategy == Strategy::Rebalance {
                    cfg.rebalance = Some(allot_node::policy::Tuning {
                        max_order: sc.demand.max_quantity,
                        ..Default::default()
                    });
                }
                // Forwarding goes with the rebalancer: `static` and `operator` show what a
                // region sells from its own quota alone.
                cfg.forwarding = strategy == Strategy::Rebalance;
                for peer in names.iter().filter(|p| *p != n) {
                    cfg.peer_rtt_ms
                        .insert(peer.clone(), 2 * sc.one_way(n, peer));
                }
                let mut store = MemStore::new(n, cfg.idempotency_ttl_ms);
                // A confirm that reaches the owner twice (a duplicated call after the owner's
                // restart) reads the order of its hold: keep orders when confirms travel.
                if sc.demand.refund == 0.0
                    && sc.demand.retry == 0.0
                    && sc.demand.confirm_elsewhere == 0.0
                {
                    // Nothing reads a past order: keeping a million would halve the speed.
                    store.forget_orders();
                }
                Node {
                    core: Some(Core::new(cfg.clone())),
                    cfg,
                    unpersisted: vec![],
                    store,
                    persist_scheduled: false,
                    pending: HashMap::new(),
                    ghost: None,
                }
            })
            .collect();
        let capacity = sc.event.capacity + sc.event.seats as u64;
        let mut report = Report::new(&sc.name, strategy, seed, capacity);
        report.regions = names.clone();
        let waits = Waits::new(names.len(), CENTRAL_HOME);
        World {
            rng: ChaCha8Rng::seed_from_u64(seed),
            sc,
            strategy,
            chaos,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            names,
            nodes,
            next_request: 1,
            check_every_step: false,
            report,
            waits,
            forward_latency: Histogram::new(3).expect("histogram"),
            heal_pending: vec![],
            steps: 0,
            arrival_clock: vec![],
            quiet: vec![],
            ready: Ready::default(),
            asks: Default::default(),
            keyed: HashMap::new(),
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    /// The region's clock: virtual time plus its skew, never below zero.
    fn clock(&self, r: usize) -> u64 {
        let skew = self
            .sc
            .faults
            .clock_skew_ms
            .get(&self.names[r])
            .copied()
            .unwrap_or(0);
        (self.now as i64 + skew).max(0) as u64 + 1_000_000
    }

    fn spec(&self) -> EventSpec {
        let mut pools = Vec::new();
        if self.sc.event.capacity > 0 {
            pools.push(PoolInput {
                id: "floor".into(),
                kind: PoolKind::General {
                    capacity: self.sc.event.capacity,
                },
                price_cents: 100,
            });
        }
        if self.sc.event.seats > 0 {
            let seats = (1..=self.sc.event.seats)
                .map(|i| format!("S-{i}"))
                .collect();
            pools.push(PoolInput {
                id: "seats".into(),
                kind: PoolKind::Assigned { seats },
                price_cents: 200,
            });
        }
        let allotments = match (&self.sc.event.allotments, self.strategy) {
            (_, Strategy::Central) => Allotments::Explicit(self.all_to(CENTRAL_HOME, &pools)),
            (None, _) => Allotments::Even,
            (Some(share), _) => {
                let total: u64 = share.values().sum::<u64>().max(1);
                let mut m = BTreeMap::new();
                for p in &pools {
                    let cap = match &p.kind {
                        PoolKind::General { capacity } => *capacity,
                        PoolKind::Assigned { seats } => seats.len() as u64,
                    };
                    let mut per: BTreeMap<String, u64> = self
                        .names
                        .iter()
                        .map(|r| (r.clone(), cap * share.get(r).copied().unwrap_or(0) / total))
                        .collect();
                    let given: u64 = per.values().sum();
                    *per.get_mut(&self.names[0]).expect("a region") += cap - given;
                    m.insert(p.id.clone(), per);
                }
                Allotments::Explicit(m)
            }
        };
        EventSpec {
            id: EVENT.into(),
            name: "Simulated".into(),
            description: String::new(),
            venue: "Nowhere".into(),
            lat: 0.0,
            lon: 0.0,
            starts_at: "2027-01-01T00:00:00Z".into(),
            currency: "EUR".into(),
            hold_ttl_s: self.sc.event.hold_ttl_s.max(1),
            rebalance: true,
            pools,
            allotments,
        }
    }

    fn all_to(&self, home: usize, pools: &[PoolInput]) -> BTreeMap<String, BTreeMap<String, u64>> {
        pools
            .iter()
            .map(|p| {
                let cap = match &p.kind {
                    PoolKind::General { capacity } => *capacity,
                    PoolKind::Assigned { seats } => seats.len() as u64,
                };
                (
                    p.id.clone(),
                    self.names
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (r.clone(), if i == home { cap } else { 0 }))
                        .collect(),
                )
            })
            .collect()
    }

    /// Runs the scenario to the end (or the first violation, when checking every step).
    pub fn run(mut self) -> Report {
        // Genesis at the catalog region, spread before the sale opens.
        let spec = self.spec();
        self.request(0, Command::CreateEvent(spec), None);
        for r in 0..self.names.len() {
            let jitter = self.rng.random_range(0..self.sc.tick_ms);
            self.at(jitter, Ev::Tick { region: r });
        }
        let open = 2_000;
        for r in 0..self.names.len() {
            self.schedule_arrival(r, open);
        }
        for c in self.sc.faults.crash.clone() {
            if let Some(r) = self.names.iter().position(|n| *n == c.region) {
                self.at(
                    open + c.at_ms,
                    Ev::Crash {
                        region: r,
                        restart_at: open + c.restart_ms.max(c.at_ms + 1),
                    },
                );
            }
        }
        for p in self.sc.faults.partition.clone() {
            self.heal_pending.push(open + p.to_ms);
        }
        if self.strategy == Strategy::Operator {
            self.at(open + 1000, Ev::Rebalance);
        }
        if self.chaos.transfers_per_s > 0.0 {
            let dt = self.exp(self.chaos.transfers_per_s);
            self.at(open + dt, Ev::Transfer);
        }
        let end = open + self.sc.duration_ms + self.sc.settle_ms;
        self.report.opened_at_ms = open;
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            if t > end {
                break;
            }
            self.now = t;
            if self.check_every_step {
                // A core's own assertion is a violation found, not a crash of the simulator.
                let stepped =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(ev)));
                if let Err(panic) = stepped {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    self.report.violations.push(format!(
                        "t={}ms step {}: a core assertion failed: {why}",
                        self.now, self.steps
                    ));
                    break;
                }
            } else {
                self.step(ev);
            }
            self.steps += 1;
            if self.check_every_step {
                if let Err(v) = self.check() {
                    self.report
                        .violations
                        .push(format!("t={}ms step {}: {v}", self.now, self.steps));
                    break;
                }
            }
        }
        self.finish()
    }

    fn exp(&mut self, rate_per_s: f64) -> u64 {
        self.exp_ms(rate_per_s).ceil() as u64
    }

    fn exp_ms(&mut self, rate_per_s: f64) -> f64 {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        (-u.ln() / rate_per_s) * 1000.0
    }

    fn schedule_arrival(&mut self, r: usize, from: u64) {
        if self.arrival_clock.len() != self.names.len() {
            self.arrival_clock = vec![0.0; self.names.len()];
        }
        let total: f64 = self.sc.demand.share.values().sum();
        let share = self
            .sc
            .demand
            .share
            .get(&self.names[r])
            .copied()
            .unwrap_or(0.0)
            / total.max(f64::EPSILON);
        let since_open = from.saturating_sub(2_000);
        let rate = self.sc.demand.rate_per_s * share * self.sc.demand.factor(since_open);
        if rate <= 0.0 {
            // A quiet phase: look again when it may have ended.
            let next = from + 100;
            if next < 2_000 + self.sc.duration_ms && share > 0.0 {
                self.at(next, Ev::Arrival { region: r });
                self.quiet.push(r);
            }
            return;
        }
        let exact = self.arrival_clock[r].max(from as f64) + self.exp_ms(rate);
        self.arrival_clock[r] = exact;
        let t = exact.floor() as u64;
        if t < self.report.opened_at_ms.max(2_000) + self.sc.duration_ms {
            self.at(t, Ev::Arrival { region: r });
        }
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        let t = self.now.saturating_sub(2_000);
        let (na, nb) = (&self.names[a], &self.names[b]);
        self.sc.faults.partition.iter().any(|p| {
            if t < p.from_ms || t >= p.to_ms {
                return false;
            }
            let in_a = |n: &String| p.a.contains(n);
            let in_b = |n: &String| {
                if p.b.is_empty() {
                    !p.a.contains(n)
                } else {
                    p.b.contains(n)
                }
            };
            (in_a(na) && in_b(nb)) || (in_a(nb) && in_b(na))
        })
    }

    fn serving(&self, client: usize) -> usize {
        if self.strategy == Strategy::Central {
            0
        } else {
            client
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Request {
                region,
                command,
                pending,
            } => {
                self.request(region, *command, Some(pending));
            }
            Ev::Arrival { region } => {
                self.schedule_arrival(region, self.now);
                // An arrival scheduled only to look at the rate again sells nothing.
                if let Some(i) = self.quiet.iter().position(|q| *q == region) {
                    self.quiet.swap_remove(i);
                } else {
                    self.buyer(region);
                }
            }
            Ev::Confirm {
                region,
                hold,
                quantity,
                pool,
                client,
            } => {
                // Latency is per request: this one leaves the buyer now.
                let command = Command::Confirm {
                    hold,
                    payment_ref: "p".into(),
                };
                let pending = Pending {
                    arrival: self.now,
                    quantity,
                    pool,
                    client,
                    purpose: Purpose::Sale,
                    key: None,
                };
                let delay = self.sc.one_way(&self.names[client], &self.names[region]);
                self.at(
                    self.now + delay,
                    Ev::Request {
                        region,
                        command: Box::new(command),
                        pending,
                    },
                );
            }
            Ev::Deliver { from, to, message } => {
                if self.nodes[to].core.is_some() && !self.partitioned(from, to) {
                    let from = self.names[from].clone();
                    let input = match message {
                        PeerMessage::Gossip(frame) => Input::Peer { from, frame },
                        PeerMessage::Exchange(message) => Input::Exchange { from, message },
                    };
                    self.input(to, input);
                }
            }
            Ev::Tick { region } => {
                let next = self.now + self.sc.tick_ms;
                self.at(next, Ev::Tick { region });
                if self.nodes[region].core.is_some() {
                    self.input(region, Input::Tick);
                }
                if region == 0 {
                    self.watch_convergence();
                    self.sample();
                }
            }
            Ev::Read {
                region,
                incarnation,
                id,
                lookup,
            } => {
                let node = &self.nodes[region];
                // A read of a crashed incarnation has nobody to answer.
                if node.core.is_some() && node.cfg.incarnation == incarnation {
                    let found = node.store.lookup(&lookup, self.now);
                    self.input(
                        region,
                        Input::Read {
                            id,
                            found: Ok(found),
                        },
                    );
                }
            }
            Ev::Persist { region } => {
                let node = &mut self.nodes[region];
                node.persist_scheduled = false;
                if let Some(last) = node.unpersisted.last().map(|r| r.index) {
                    let recs = std::mem::take(&mut node.unpersisted);
                    node.store.apply(&recs);
                    self.input(region, Input::Persisted(last));
                }
            }
            Ev::Crash { region, restart_at } => {
                let node = &mut self.nodes[region];
                // A region already down stays down until its first restart.
                if node.core.take().is_some() {
                    self.report.crashes += 1;
                    node.unpersisted.clear();
                    self.report.lost_unacknowledged += node.pending.len() as u64;
                    node.pending.clear();
                    match Core::recover(node.cfg.clone(), node.store.load()) {
                        Ok(ghost) => node.ghost = Some(ghost),
                        Err(e) => self.report.violations.push(format!(
                            "t={}ms: {}'s durable state does not recover: {e}",
                            self.now, self.names[region]
                        )),
                    }
                    self.at(restart_at, Ev::Restart { region });
                }
            }
            Ev::Restart { region } => {
                let node = &mut self.nodes[region];
                if node.core.is_some() {
                    return;
                }
                node.cfg.incarnation += 1;
                node.ghost = None;
                match Core::recover(node.cfg.clone(), node.store.load()) {
                    Ok(core) => node.core = Some(core),
                    Err(e) => self.report.violations.push(format!(
                        "t={}ms: {} cannot recover: {e}",
                        self.now, self.names[region]
                    )),
                }
                for p in 0..self.names.len() {
                    if p != region {
                        let peer = self.names[p].clone();
                        if self.nodes[p].core.is_some() {
                            let me = self.names[region].clone();
                            self.input(p, Input::PeerReset { peer: me });
                        }
                        self.input(region, Input::PeerReset { peer });
                    }
                }
            }
            Ev::Rebalance => {
                self.at(self.now + 1000, Ev::Rebalance);
                self.rebalance();
            }
            Ev::Transfer => {
                let dt = self.exp(self.chaos.transfers_per_s);
                self.at(self.now + dt, Ev::Transfer);
                self.random_transfer();
            }
            Ev::Refund { region, order } => {
                let pending = Pending {
                    arrival: self.now,
                    quantity: 0,
                    pool: "floor",
                    client: region,
                    purpose: Purpose::Refund,
                    key: None,
                };
                self.request(region, Command::Refund { order }, Some(pending));
            }
        }
    }

    fn buyer(&mut self, client: usize) {
        let d = self.sc.demand.clone();
        let quantity = self.rng.random_range(d.min_quantity..=d.max_quantity);
        let seats = self.sc.event.seats > 0
            && (self.sc.event.capacity == 0
                || self.rng.random_bool(d.seat_fraction.clamp(0.0, 1.0)));
        let pool: &'static str = if seats { "seats" } else { "floor" };
        let want = Want::Quantity {
            pool: pool.into(),
            quantity,
        };
        let hold = self.rng.random_bool(d.hold_fraction.clamp(0.0, 1.0));
        let customer = format!("c-{}", self.next_request);
        let serving = self.serving(client);
        let delay = self.sc.one_way(&self.names[client], &self.names[serving]);
        let cmd = if hold {
            Command::Hold {
                event: EVENT.into(),
                want,
                customer,
            }
        } else {
            Command::Purchase {
                event: EVENT.into(),
                want,
                customer,
                payment_ref: "p".into(),
            }
        };
        let arrival = self.now;
        let key = (!hold && self.rng.random_bool(d.retry.clamp(0.0, 1.0))).then(|| {
            self.report.retried += 1;
            format!("k-{}", self.report.retried)
        });
        if let Some(key) = &key {
            // The front end sends it again with the same key a moment later.
            let again = Pending {
                arrival,
                quantity,
                pool,
                client,
                purpose: Purpose::Retry,
                key: Some(key.clone()),
            };
            let later = self.rng.random_range(0..=300);
            self.at(
                arrival + delay + later,
                Ev::Request {
                    region: serving,
                    command: Box::new(cmd.clone()),
                    pending: again,
                },
            );
        }
        let pending = Pending {
            arrival,
            quantity,
            pool,
            client,
            purpose: Purpose::Sale,
            key,
        };
        if delay > 0 {
            // Under `central` the request crosses the WAN first.
            self.at(
                arrival + delay,
                Ev::Request {
                    region: serving,
                    command: Box::new(cmd),
                    pending,
                },
            );
        } else {
            self.request(serving, cmd, Some(pending));
        }
    }

    fn request(&mut self, r: usize, command: Command, pending: Option<Pending>) {
        if self.nodes[r].core.is_none() {
            self.report.unavailable += u64::from(pending.is_some());
            return;
        }
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let key = pending
            .as_ref()
            .and_then(|p| p.key.clone())
            .map(|key| IdempotencyKey {
                key,
                body_hash: [0; 32],
            });
        if let Some(p) = pending {
            self.nodes[r].pending.insert(id, p);
        }
        self.input(r, Input::Request { id, key, command });
    }

    /// Feeds an input to region `r` and routes everything it outputs.
    fn input(&mut self, r: usize, input: Input) {
        let now = self.clock(r);
        let Some(core) = self.nodes[r].core.as_mut() else {
            return;
        };
        core.handle(now, input);
        let mut ready = std::mem::take(&mut self.ready);
        core.ready_into(&mut ready);
        // The store answers each read a moment later, after whatever else is due now: other
        // requests race the read, as they do in the server.
        let incarnation = self.nodes[r].cfg.incarnation;
        for (id, lookup) in ready.reads.drain(..) {
            self.at(
                self.now,
                Ev::Read {
                    region: r,
                    incarnation,
                    id,
                    lookup,
                },
            );
        }
        if !ready.records.is_empty() {
            self.nodes[r].unpersisted.append(&mut ready.records);
            if !self.nodes[r].persist_scheduled {
                self.nodes[r].persist_scheduled = true;
                let t = self.now + self.sc.disk_ms;
                self.at(t, Ev::Persist { region: r });
            }
        }
        for w in ready.warnings.drain(..) {
            self.report.violations.push(format!(
                "t={}ms {}: an honest peer was refused: {w}",
                self.now, self.names[r]
            ));
        }
        let mut messages: Vec<(String, PeerMessage)> = ready
            .messages
            .drain(..)
            .map(|(p, f)| (p, PeerMessage::Gossip(f)))
            .collect();
        messages.extend(
            ready
                .exchange
                .drain(..)
                .map(|(p, m)| (p, PeerMessage::Exchange(m))),
        );
        let replies: Vec<_> = ready.replies.drain(..).collect();
        self.ready = ready;
        // Calls and answers between regions travel like gossip: with the same loss,
        // duplication and delay.
        for (peer, message) in messages {
            let to = self
                .names
                .iter()
                .position(|n| *n == peer)
                .expect("a known region");
            match &message {
                PeerMessage::Gossip(frame) => {
                    self.report.gossip_bytes += postcard::to_stdvec(frame)
                        .map(|b| b.len() as u64 + 8)
                        .unwrap_or(0);
                }
                PeerMessage::Exchange(Exchange::Call { id, command, .. })
                    if matches!(**command, Command::Ask(_)) =>
                {
                    self.report.handoff_messages += 1;
                    self.asks.insert((r, *id));
                }
                PeerMessage::Exchange(Exchange::Answer { id, .. })
                    if self.asks.contains(&(to, *id)) =>
                {
                    self.report.handoff_messages += 1;
                }
                _ => {}
            }
            if self.rng.random_bool(self.sc.faults.loss) {
                continue;
            }
            let copies = if self.rng.random_bool(self.sc.faults.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let jitter = if self.sc.jitter_ms > 0 {
                    self.rng.random_range(0..=self.sc.jitter_ms)
                } else {
                    0
                };
                let t = self.now + self.sc.one_way(&self.names[r], &peer) + jitter + 1;
                self.at(
                    t,
                    Ev::Deliver {
                        from: r,
                        to,
                        message: message.clone(),
                    },
                );
            }
        }
        for (id, reply) in replies {
            if let Some(p) = self.nodes[r].pending.remove(&id) {
                self.answer(r, p, reply);
            }
        }
    }

    fn answer(&mut self, r: usize, p: Pending, reply: Reply) {
        let back = self.sc.one_way(&self.names[r], &self.names[p.client]);
        let done = self.now + back;
        if p.purpose != Purpose::Sale {
            return self.answer_aside(r, p, reply);
        }
        match reply {
            Ok(Outcome::Held(h)) => {
                let hold = self.nodes[r]
                    .cfg
                    .id_key
                    .format(IdKind::Hold, &self.names[r], h.n);
                self.held(r, done, p, hold);
            }
            Ok(Outcome::Remote(remote)) => {
                self.report.remote_answers += 1;
                let seller = self.names.iter().position(|n| *n == remote.region);
                let forwarded = |w: &mut World, p: &Pending| {
                    w.report.forwarded += 1;
                    let _ = w.forward_latency.record(done.saturating_sub(p.arrival));
                };
                match (remote.outcome, seller, remote.id) {
                    (Answered::Order(o), Some(seller), _) => {
                        forwarded(self, &p);
                        self.sold(seller, done, p, o)
                    }
                    (Answered::Held(_), Some(_), Some(hold)) => {
                        forwarded(self, &p);
                        self.held(r, done, p, hold)
                    }
                    _ => {}
                }
            }
            Ok(Outcome::Order(o)) => self.sold(r, done, p, o),
            Ok(_) => {}
            Err(CoreError::SoldOut { wanted, .. }) => {
                self.report.answers += 1;
                self.report.sold_out_answers += 1;
                if self.global_sellable(p.pool) >= wanted {
                    self.report.false_sold_outs += 1;
                }
                self.record_latency(&p, done, Answer::Refusal);
            }
            // Counted apart from sold-outs (DESIGN): the stock exists, out of reach.
            Err(CoreError::StockUnreachable { .. }) => {
                self.report.answers += 1;
                self.report.stock_unreachable += 1;
                self.record_latency(&p, done, Answer::Refusal);
            }
            Err(CoreError::HoldExpired) => self.report.expired += 1,
            Err(CoreError::Unreachable { .. } | CoreError::DeadlinePassed) => {
                self.report.answers += 1;
                self.report.unavailable += 1;
            }
            Err(_) => {
                self.report.answers += 1;
                self.report.other_errors += 1;
            }
        }
    }

    /// A buyer's hold, placed by whichever region (`hold` names it), answered at `done` to a
    /// buyer who asked region `r`: confirmed later (there or at another region), or abandoned.
    fn held(&mut self, r: usize, done: u64, p: Pending, hold: String) {
        self.note_sold_out(done);
        // A hold is an answer its buyer waits for, as a sale or a confirm is.
        self.record_latency(&p, done, Answer::Sale);
        let d = self.sc.demand.clone();
        if self.rng.random_bool(d.abandon.clamp(0.0, 1.0)) {
            self.report.abandoned += 1;
        } else {
            let think = self.rng.random_range(0..=d.think_ms);
            let n = self.names.len();
            let at = if n > 1 && self.rng.random_bool(d.confirm_elsewhere.clamp(0.0, 1.0)) {
                (r + self.rng.random_range(1..n)) % n
            } else {
                r
            };
            self.at(
                done + think,
                Ev::Confirm {
                    region: at,
                    hold,
                    quantity: p.quantity,
                    pool: p.pool,
                    client: p.client,
                },
            );
        }
    }

    /// A buyer's order, sold by region `r`, answered at `done`.
    fn sold(&mut self, r: usize, done: u64, p: Pending, o: Order) {
        self.keyed_order(r, &p, &o);
        if self.rng.random_bool(self.sc.demand.refund.clamp(0.0, 1.0)) {
            let order = self.nodes[r]
                .cfg
                .id_key
                .format(IdKind::Order, &self.names[r], o.n);
            let at = done + self.rng.random_range(0..=self.sc.demand.think_ms);
            let copies = if self.rng.random_bool(0.5) { 2 } else { 1 };
            for _ in 0..copies {
                self.at(
                    at,
                    Ev::Refund {
                        region: r,
                        order: order.clone(),
                    },
                );
            }
        }
        self.report.answers += 1;
        self.report.sold += o.quantity;
        self.report.orders += 1;
        self.record_latency(&p, done, Answer::Sale);
        self.note_sold_out(done);
    }

    /// A buyer's wait for an answer, where the buyer is.
    fn record_latency(&mut self, p: &Pending, done: u64, answer: Answer) {
        self.waits
            .record(p.client, done.saturating_sub(p.arrival), answer);
    }

    /// Sold out: every unit sold or in a live hold, nothing sellable anywhere (the same
    /// moment for every strategy).
    fn note_sold_out(&mut self, at: u64) {
        if self.report.sold_out_at_ms.is_none()
            && self.total_sold() + self.total_held() >= self.report.capacity
        {
            self.report.sold_out_at_ms = Some(at.saturating_sub(self.report.opened_at_ms));
        }
    }

    fn total_held(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| Some(n.core.as_ref()?.event(EVENT)?.held.iter().sum::<u64>()))
            .sum()
    }

    /// Answers to retries and refunds: checked, not counted as sales.
    fn answer_aside(&mut self, r: usize, p: Pending, reply: Reply) {
        match (&p.purpose, reply) {
            (Purpose::Retry, Ok(Outcome::Order(o))) => self.keyed_order(r, &p, &o),
            (Purpose::Retry, Ok(Outcome::Remote(remote))) => {
                let seller = self.names.iter().position(|n| *n == remote.region);
                if let (Answered::Order(o), Some(seller)) = (&remote.outcome, seller) {
                    self.keyed_order(seller, &p, o);
                }
            }
            (Purpose::Refund, Ok(Outcome::Order(o))) => {
                self.report.refunds += 1;
                if o.status != OrderStatus::Refunded {
                    self.report.violations.push(format!(
                        "t={}ms {}: a refund answered order {} as {:?}",
                        self.now, self.names[r], o.n, o.status
                    ));
                }
            }
            _ => {}
        }
    }

    /// Every answer to one idempotency key names one order.
    fn keyed_order(&mut self, r: usize, p: &Pending, o: &Order) {
        let Some(key) = &p.key else { return };
        let named = (r, o.n);
        match self.keyed.get(key) {
            Some(&first) if first != named => self.report.violations.push(format!(
                "t={}ms: key {key} answered order {:?} and then {named:?}",
                self.now, first
            )),
            Some(_) => {}
            None => {
                self.keyed.insert(key.clone(), named);
            }
        }
    }

    /// Units sold anywhere, from each region's own row.
    fn total_sold(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| {
                n.core.as_ref()?.event(EVENT).map(|e| {
                    (0..e.genesis().pools.len() as u16)
                        .map(|p| e.ledger.consumed(p, e.me) - e.ledger.returned(p, e.me))
                        .sum::<u64>()
                })
            })
            .sum()
    }

    /// What all regions could still sell of a pool, in their own views (the true state).
    fn global_sellable(&self, pool: &str) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| {
                let e = n.core.as_ref()?.event(EVENT)?;
                Some(e.sellable(e.genesis().pool_index(pool)?).max(0) as u64)
            })
            .sum()
    }

    fn rebalance(&mut self) {
        let mut best: Option<(usize, i64)> = None;
        let mut worst: Option<(usize, i64)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(e) = n.core.as_ref().and_then(|c| c.event(EVENT)) else {
                continue;
            };
            if e.genesis().pools[0].is_assigned() {
                return;
            }
            let s = e.sellable(0);
            if best.is_none_or(|b| s > b.1) {
                best = Some((i, s));
            }
            if worst.is_none_or(|w| s < w.1) {
                worst = Some((i, s));
            }
        }
        let (Some((from, rich)), Some((to, poor))) = (best, worst) else {
            return;
        };
        let give = (rich - poor) / 2;
        if from == to || give <= 0 || poor as f64 > 0.2 * rich as f64 {
            return;
        }
        let cmd = Command::Grant {
            event: EVENT.into(),
            pool: "floor".into(),
            to: self.names[to].clone(),
            amount: GrantAmount::Quantity(give as u64),
        };
        self.report.handoffs += 1;
        self.request(from, cmd, None);
    }

    fn random_transfer(&mut self) {
        let n = self.names.len();
        let from = self.rng.random_range(0..n);
        let to = (from + self.rng.random_range(1..n)) % n;
        let to_name = self.names[to].clone();
        let cmd = if self.sc.event.seats > 0
            && (self.sc.event.capacity == 0 || self.rng.random_bool(0.5))
        {
            let seat = self.rng.random_range(1..=self.sc.event.seats);
            Command::Grant {
                event: EVENT.into(),
                pool: "seats".into(),
                to: to_name,
                amount: GrantAmount::Seats(vec![format!("S-{seat}")]),
            }
        } else {
            let q = self.rng.random_range(1..=5);
            Command::Grant {
                event: EVENT.into(),
                pool: "floor".into(),
                to: to_name,
                amount: GrantAmount::Quantity(q),
            }
        };
        self.report.handoffs += 1;
        self.request(from, cmd, None);
    }

    fn sample(&mut self) {
        let row = self
            .nodes
            .iter()
            .map(|n| {
                n.core.as_ref().and_then(|c| c.event(EVENT)).map_or(0, |e| {
                    (0..e.genesis().pools.len() as u16)
                        .map(|p| e.sellable(p))
                        .sum()
                })
            })
            .collect();
        self.report.series.push((
            self.now.saturating_sub(self.report.opened_at_ms.max(2_000)),
            row,
        ));
    }

    fn watch_convergence(&mut self) {
        let t = self.now;
        let since_open = t.saturating_sub(2_000);
        if self
            .sc
            .faults
            .partition
            .iter()
            .any(|p| p.from_ms <= since_open && since_open < p.to_ms)
        {
            // A new cut before the state converged: that heal has no convergence time.
            let before = self.heal_pending.len();
            self.heal_pending.retain(|h| *h > t);
            self.report.interrupted_heals += (before - self.heal_pending.len()) as u64;
            return;
        }
        let due: Vec<u64> = self
            .heal_pending
            .iter()
            .copied()
            .filter(|h| *h <= t)
            .collect();
        if due.is_empty() || self.nodes.iter().any(|n| n.core.is_none()) {
            return;
        }
        let rows: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                n.core
                    .as_ref()
                    .and_then(|c| c.event(EVENT))
                    .map(|e| e.ledger.rows().to_vec())
            })
            .collect();
        if rows.windows(2).all(|w| w[0] == w[1]) {
            for h in due {
                self.report.convergence_ms.push(t - h);
            }
            self.heal_pending.retain(|h| *h > t);
        }
    }

    /// Every region's invariants, and the global ones over every region: a region that is
    /// down counts with its durable state.
    pub fn check(&self) -> Result<(), String> {
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(c) = &n.core {
                c.check_invariants()
                    .map_err(|e| format!("{}: {e}", self.names[i]))?;
            }
            n.store.check()?;
        }
        let cores: Option<Vec<&Core>> = self
            .nodes
            .iter()
            .map(|n| n.core.as_ref().or(n.ghost.as_ref()))
            .collect();
        if let Some(cores) = cores {
            check_global(&cores)?;
        }
        if let Some(v) = self.report.violations.first() {
            return Err(v.clone());
        }
        Ok(())
    }

    fn finish(mut self) -> Report {
        // Oversold, judged from every region's durable rows (what survives any crash).
        let mut sold_rows = 0u64;
        for n in &self.nodes {
            if let Some(e) = n.core.as_ref().and_then(|c| c.event(EVENT)) {
                sold_rows += (0..e.genesis().pools.len() as u16)
                    .map(|p| e.ledger.consumed(p, e.me) - e.ledger.returned(p, e.me))
                    .sum::<u64>();
            }
        }
        self.report.sold_in_rows = sold_rows;
        self.report.oversold = sold_rows.saturating_sub(self.report.capacity);
        if self.report.oversold > 0 {
            self.report
                .violations
                .push(format!("oversold by {}", self.report.oversold));
        }
        self.waits.report(&self.names, &mut self.report);
        // From each ask to the credit being spendable, as the askers' logs have it (a log
        // keeps the newest 64 handoffs; a region that crashed lost its log).
        let mut spendable = Histogram::<u64>::new(3).expect("histogram");
        for core in self.nodes.iter().filter_map(|n| n.core.as_ref()) {
            for ms in core.handoffs().filter_map(|h| h.ask_to_spendable_ms) {
                let _ = spendable.record(ms);
            }
        }
        self.report.ask_to_spendable_ms = (!spendable.is_empty()).then(|| Latency::of(&spendable));
        self.report.forward_latency_ms =
            (!self.forward_latency.is_empty()).then(|| Latency::of(&self.forward_latency));
        for core in self.nodes.iter().filter_map(|n| n.core.as_ref()) {
            for s in core.forward_stats().values() {
                self.report.forwards_refused += s.refused;
                self.report.forwards_lost += s.lost;
            }
            let g = core.gather_stats();
            self.report.gathered += g.started;
            self.report.gathered_whole += g.complete;
        }
        self.report.finish();
        self.report
    }
}
