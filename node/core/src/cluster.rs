//! An in-memory cluster of cores: a driver with no IO, for tests and `allot demo`'s
//! single-process mode. Messages wait in a queue the caller delivers, drops, duplicates or
//! reorders at will; records wait until the caller persists them into the region's
//! [`MemStore`], which answers the core's reads (at once, or when the caller says); a crash
//! drops what was not persisted and restarts the region from its store's live state through
//! [`Core::recover`].

use allot_crdt::{PoolIdx, RegionIdx};

use crate::api::{Command, IdempotencyKey, Millis, Reply, RequestId};
use crate::core::{Config, Core, Input};
use crate::exchange::Exchange;
use crate::gossip::GossipFrame;
use crate::mem_store::MemStore;
use crate::reads::{Lookup, ReadId};
use crate::record::Record;

pub struct Envelope {
    pub from: usize,
    pub to: usize,
    pub frame: GossipFrame,
}

/// A call or answer between regions on its way.
#[derive(Clone, Debug)]
pub struct CallEnvelope {
    pub from: usize,
    pub to: usize,
    pub message: Exchange,
}

pub struct LocalCluster {
    pub names: Vec<String>,
    pub cores: Vec<Core>,
    pub now: Millis,
    pub network: Vec<Envelope>,
    pub calls: Vec<CallEnvelope>,
    /// Per region: records emitted but not yet durable.
    pub unpersisted: Vec<Vec<Record>>,
    /// Per region: the durable state, what reads are answered from and a restart recovers
    /// from.
    pub stores: Vec<MemStore>,
    /// Per region: reads asked and not yet answered (only while `defer_reads` is set).
    pub reads: Vec<Vec<(ReadId, Lookup)>>,
    /// Leave reads for the caller to answer with [`LocalCluster::answer_read`] (to race
    /// requests against each other); otherwise each is answered as soon as it is asked.
    pub defer_reads: bool,
    /// Per region: replies released so far.
    pub replies: Vec<Vec<(RequestId, Reply)>>,
    pub warnings: Vec<String>,
    next_request: u64,
}

impl LocalCluster {
    pub fn new(names: &[&str]) -> LocalCluster {
        LocalCluster::configured(names, |_| {})
    }

    /// A cluster whose every region's config `tune` adjusts first.
    pub fn configured(names: &[&str], tune: impl Fn(&mut Config)) -> LocalCluster {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cores = names
            .iter()
            .map(|n| {
                let mut cfg = Config::new(n, &names);
                tune(&mut cfg);
                Core::new(cfg)
            })
            .collect();
        let n = names.len();
        let stores = names
            .iter()
            .map(|r| MemStore::new(r, Config::new(r, &names).idempotency_ttl_ms))
            .collect();
        LocalCluster {
            names,
            cores,
            now: 1_000,
            network: Vec::new(),
            calls: Vec::new(),
            unpersisted: vec![Vec::new(); n],
            stores,
            reads: vec![Vec::new(); n],
            defer_reads: false,
            replies: vec![Vec::new(); n],
            warnings: Vec::new(),
            next_request: 1,
        }
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .expect("known region")
    }

    /// Feeds one input to region `i` and collects its outputs.
    pub fn step(&mut self, i: usize, input: Input) {
        self.cores[i].handle(self.now, input);
        let ready = self.cores[i].ready();
        self.unpersisted[i].extend(ready.records);
        self.replies[i].extend(ready.replies);
        for (to, frame) in ready.messages {
            let to = self.index_of(&to);
            self.network.push(Envelope { from: i, to, frame });
        }
        for (to, message) in ready.exchange {
            let to = self.index_of(&to);
            self.calls.push(CallEnvelope {
                from: i,
                to,
                message,
            });
        }
        self.warnings.extend(
            ready
                .warnings
                .into_iter()
                .map(|w| format!("{}: {w}", self.names[i])),
        );
        self.reads[i].extend(ready.reads);
        if !self.defer_reads {
            while !self.reads[i].is_empty() {
                self.answer_read(i, 0);
            }
        }
    }

    /// Answers region `i`'s queued read `k` from what its store holds now.
    pub fn answer_read(&mut self, i: usize, k: usize) {
        let (id, lookup) = self.reads[i].remove(k);
        let found = self.stores[i].lookup(&lookup, self.now);
        self.step(
            i,
            Input::Read {
                id,
                found: Ok(found),
            },
        );
    }

    /// Sends a command; returns its request id (the reply arrives once its records persist).
    pub fn send(&mut self, i: usize, key: Option<IdempotencyKey>, command: Command) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.step(i, Input::Request { id, key, command });
        id
    }

    /// Makes every record of region `i` durable, then tells the core.
    pub fn persist(&mut self, i: usize) {
        let Some(last) = self.unpersisted[i].last().map(|r| r.index) else {
            return;
        };
        let recs = std::mem::take(&mut self.unpersisted[i]);
        self.stores[i].apply(&recs);
        self.step(i, Input::Persisted(last));
    }

    /// Makes only the first `n` pending records of region `i` durable.
    pub fn persist_some(&mut self, i: usize, n: usize) {
        let n = n.min(self.unpersisted[i].len());
        if n == 0 {
            return;
        }
        let rest = self.unpersisted[i].split_off(n);
        let done = std::mem::replace(&mut self.unpersisted[i], rest);
        let last = done.last().map(|r| r.index).expect("n > 0");
        self.stores[i].apply(&done);
        self.step(i, Input::Persisted(last));
    }

    /// Sends, persists and returns the reply.
    pub fn call(&mut self, i: usize, command: Command) -> Reply {
        self.call_keyed(i, None, command)
    }

    /// Sends, persists and returns the reply; a command another region owns is carried there
    /// and back (calls and answers delivered, every region persisted) until it is answered.
    pub fn call_keyed(&mut self, i: usize, key: Option<IdempotencyKey>, command: Command) -> Reply {
        let id = self.send(i, key, command);
        self.persist(i);
        loop {
            if let Some(r) = self.take_reply(i, id) {
                return r;
            }
            assert!(
                !self.calls.is_empty() || self.unpersisted.iter().any(|u| !u.is_empty()),
                "a persisted request has its reply, or a call on its way, or a record to persist"
            );
            while !self.calls.is_empty() {
                self.deliver_call(0);
            }
            for r in 0..self.cores.len() {
                self.persist(r);
            }
        }
    }

    pub fn take_reply(&mut self, i: usize, id: RequestId) -> Option<Reply> {
        let pos = self.replies[i].iter().position(|(r, _)| *r == id)?;
        Some(self.replies[i].remove(pos).1)
    }

    /// Kills region `i`: unpersisted records, queued replies and in-memory state are lost; it
    /// restarts from its store's live state with the next incarnation.
    pub fn crash(&mut self, i: usize) {
        self.unpersisted[i].clear();
        self.replies[i].clear();
        self.reads[i].clear();
        let mut cfg: Config = self.cores[i].config().clone();
        cfg.incarnation += 1;
        self.cores[i] = Core::recover(cfg, self.stores[i].load()).expect("the store restores");
    }

    pub fn tick(&mut self, i: usize) {
        self.step(i, Input::Tick);
    }

    /// Delivers queued message `k`.
    pub fn deliver(&mut self, k: usize) {
        let env = self.network.remove(k);
        let from = self.names[env.from].clone();
        self.step(
            env.to,
            Input::Peer {
                from,
                frame: env.frame,
            },
        );
    }

    /// Delivers queued call or answer `k`.
    pub fn deliver_call(&mut self, k: usize) {
        let env = self.calls.remove(k);
        let from = self.names[env.from].clone();
        self.step(
            env.to,
            Input::Exchange {
                from,
                message: env.message,
            },
        );
    }

    /// Persists everything, gossips and delivers until the network is quiet `rounds` times.
    pub fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            for i in 0..self.cores.len() {
                self.persist(i);
                self.tick(i);
            }
            while !self.network.is_empty() || !self.calls.is_empty() {
                while !self.network.is_empty() {
                    self.deliver(0);
                }
                while !self.calls.is_empty() {
                    self.deliver_call(0);
                }
                for i in 0..self.cores.len() {
                    self.persist(i);
                }
            }
        }
    }

    pub fn advance(&mut self, ms: Millis) {
        self.now += ms;
    }

    /// True when every region holds the same replicated state of every event.
    pub fn converged(&mut self) -> Result<(), String> {
        let first = &self.cores[0];
        for (i, c) in self.cores.iter().enumerate().skip(1) {
            if c.events().count() != first.events().count() {
                return Err(format!(
                    "{} knows {} events, {} knows {}",
                    self.names[0],
                    first.events().count(),
                    self.names[i],
                    c.events().count()
                ));
            }
            for e in first.events() {
                let other = c
                    .event(&e.id)
                    .ok_or_else(|| format!("{} lacks event {}", self.names[i], e.id))?;
                if other.ledger.rows() != e.ledger.rows() {
                    return Err(format!(
                        "event {}: rows of {} and {} differ",
                        e.id, self.names[0], self.names[i]
                    ));
                }
                if other.info != e.info {
                    return Err(format!(
                        "event {}: metadata of {} and {} differ",
                        e.id, self.names[0], self.names[i]
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every region's invariants, plus the global ones only a view of all regions can check.
    pub fn check(&self) -> Result<(), String> {
        for (i, c) in self.cores.iter().enumerate() {
            c.check_invariants()
                .map_err(|m| format!("{}: {m}", self.names[i]))?;
            self.stores[i].check()?;
        }
        check_global(&self.cores.iter().collect::<Vec<_>>())
    }
}

/// DESIGN invariants 1, 2 and 5 across all regions (each region's own view of itself).
///
/// `Σ sellable + Σ held + Σ (consumed − returned) + in_flight = capacity`, where `in_flight` is
/// what givers have granted that receivers have not yet durably credited.
pub fn check_global(cores: &[&Core]) -> Result<(), String> {
    let Some(first) = cores.first() else {
        return Ok(());
    };
    for e0 in first.events() {
        let g = e0.genesis().clone();
        let views: Vec<_> = cores.iter().filter_map(|c| c.event(&e0.id)).collect();
        if views.len() != cores.len() {
            continue; // not every region knows the event yet: nobody can have sold it there
        }
        for (p, pool) in g.pools.iter().enumerate() {
            let pi = p as PoolIdx;
            let mut total: i128 = 0;
            let mut sold: u64 = 0;
            let mut held: u64 = 0;
            for v in &views {
                let me = v.me;
                total += i128::from(v.sellable(pi))
                    + i128::from(v.pending_credit[p])
                    + i128::from(v.held[p]);
                let c = v.ledger.consumed(pi, me) - v.ledger.returned(pi, me);
                total += i128::from(c);
                sold += c;
                held += v.held[p];
                for r in 0..g.regions.len() as RegionIdx {
                    if r == me {
                        continue;
                    }
                    // What `me` granted to r (as me knows it) minus what r has seen of it.
                    let given = v.ledger.row(me).pools[p].granted_out[r as usize].value;
                    let seen =
                        views[r as usize].ledger.row(me).pools[p].granted_out[r as usize].value;
                    total += i128::from(given) - i128::from(seen);
                }
            }
            if total != i128::from(pool.capacity()) {
                return Err(format!(
                    "event {} pool {}: global conservation {total} != capacity {}",
                    e0.id,
                    pool.id,
                    pool.capacity()
                ));
            }
            if sold + held > pool.capacity() {
                return Err(format!(
                    "event {} pool {}: oversold, {sold} sold + {held} held > {}",
                    e0.id,
                    pool.id,
                    pool.capacity()
                ));
            }
            if pool.is_assigned() {
                let mut seat_sold = vec![false; pool.seat_count()];
                for v in &views {
                    for (s, st) in v.seats[p].iter().enumerate() {
                        if matches!(st, crate::event::SeatLocal::Sold(_)) {
                            if seat_sold[s] {
                                return Err(format!(
                                    "event {} pool {}: seat {s} sold twice",
                                    e0.id, pool.id
                                ));
                            }
                            seat_sold[s] = true;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
