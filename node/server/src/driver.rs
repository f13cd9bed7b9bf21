//! The drivers around the sans-IO core: the `Core` behind a lock, one thread owns the disk's
//! writes, one thread keeps the clock, and whoever fed the core serves the reads it asked for.
//!
//! Group commit falls out of the split: while the writer syncs one batch, request handlers
//! keep feeding the core, and everything that piled up goes down in the next synced write.
//! Replies leave the core only once the writer reports their records durable. If a sync fails,
//! the node turns unready and never reports anything durable again, so nothing more is
//! acknowledged: an operator restarts it, and it recovers from what is on disk.
//!
//! Reads (an idempotency answer or a past order the core does not keep in memory) are served
//! by the thread whose input made the core ask, after it lets go of the lock: a RocksDB point
//! read never holds up the other requests, and the answer goes back in as an input.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allot_node::{
    Command, Config, Core, Exchange, Found, IdempotencyKey, Input, Lookup, PeerMessage, ReadId,
    Ready, Record, RecordIndex, Reply, RequestId,
};
use crossbeam_channel::{Receiver, Sender};
use rocksdb::WriteBatch;
use tokio::sync::{oneshot, watch};

use crate::store::Store;

/// How records reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Commit {
    /// Everything waiting shares one synced write.
    Group,
    /// One synced write per record: the baseline group commit is measured against.
    PerRequest,
}

/// Runs under the engine's lock when the reply is released, so the answer is rendered against
/// the state that produced it, with no second trip to the core.
type DoneFn = Box<dyn FnOnce(&Core, Reply) + Send>;

/// How the writer turns records into synced writes.
#[derive(Clone, Copy, Debug)]
pub struct Durability {
    pub commit: Commit,
    /// With group commit, at most one synced write per window: under load a sync is shared
    /// by more records (on the benchmark VM a sync cost the writer about as much CPU as seven
    /// records, and the virtual disk two round trips: data, then the file's new size), at the
    /// price of up to one window of latency. A request that finds the disk idle for a window
    /// is written at once.
    pub window: Duration,
}

/// Where the core's gossip frames, calls and answers go (the QUIC transport, once it runs).
pub type Outbound = Arc<std::sync::OnceLock<Box<dyn Fn(String, PeerMessage) + Send + Sync>>>;

/// Faults a test can inject into the drivers; all off in production.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Make every synced write after this many succeed-then-fail, as a dying disk would.
    pub fail_sync_after: Option<u64>,
    /// Slow or failing syncs, switched on at start (a test) or on a running node: only a
    /// binary built with the `fault-switch` feature has the endpoint that sets it (`POST
    /// /v1/admin/faults`).
    pub switch: Arc<SyncSwitch>,
}

/// Sync faults switched while the node runs, for fault runs on real processes
/// (`allot bench compare --parts faults`). The writer reads it before each synced write: two
/// relaxed loads, nothing else, when it is off.
#[derive(Debug, Default)]
pub struct SyncSwitch {
    delay_ms: AtomicU64,
    failing: AtomicBool,
}

impl SyncSwitch {
    /// Every synced write from now takes at least `delay` (zero: as fast as the disk), and
    /// fails if `failing` (the node then stops acknowledging, as after a real failed sync).
    pub fn set(&self, delay: Duration, failing: bool) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
        self.failing.store(failing, Ordering::Relaxed);
    }

    pub fn delay(&self) -> Option<Duration> {
        let ms = self.delay_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

/// The core and the callers waiting on it, behind one lock.
///
/// Whoever holds the lock feeds the core one input and then routes everything the input made
/// ready ([`Engine::pump`]): there is no core thread to hand requests to, so a request costs no
/// thread switch on its way in. The lock is held for microseconds (the core does no IO).
struct Engine {
    core: Core,
    waiting: HashMap<RequestId, DoneFn>,
    next_id: u64,
    /// Records go to the writer in the order the core emitted them: they are sent under the lock.
    to_writer: Sender<ToWriter>,
    outbound: Outbound,
    changes: watch::Sender<u64>,
    /// The same flag as [`CoreHandle`]'s: false once a synced write failed.
    ready_flag: Arc<AtomicBool>,
    ready: Ready,
    /// For reads memory can answer while the lock is held.
    store: Arc<Store>,
    reads_ahead: Arc<ReadAheadCounts>,
}

/// What became of the keys read before the lock (`/v1/admin/cluster`'s `memory`).
#[derive(Default)]
pub struct ReadAheadCounts {
    /// Taken in place of the core's read.
    pub used: AtomicU64,
    /// Not taken: the key was in the core's memory (no read asked), or an answer that left
    /// memory since made the read stale and the key was read again.
    pub unused: AtomicU64,
}

enum ToWriter {
    Records(Vec<Record>),
    /// Everything sent before this is written; then the writer stops.
    Stop,
}

/// Reads the core asked for, to be served outside the lock.
type Reads = Vec<(ReadId, Lookup)>;

/// A key read from the store before the request took the core's lock: a keyed request's key
/// is nearly always new, and RocksDB's lookup (memtables, then a bloom filter per table) then
/// runs beside other requests instead of holding every one of them up. The core takes it in
/// place of the read it would ask for only if the read still stands
/// ([`Core::key_read_stands`]); if not, the key is read again under the lock as before.
struct KeyReadAhead {
    lookup: Lookup,
    /// The store held every record through this index when the read began.
    through: RecordIndex,
    found: Found,
}

/// A store answer as the core takes it: a failed read is logged here and reaches the core as
/// its reason (the request that asked hears 503).
fn read_result(
    lookup: &Lookup,
    found: anyhow::Result<allot_node::Found>,
) -> allot_node::ReadResult {
    found.map_err(|e| {
        tracing::error!("reading {lookup:?} from the store: {e:#}");
        format!("{e:#}")
    })
}

impl Engine {
    /// Feeds one input; answers at once the reads RocksDB can answer from memory (a new
    /// idempotency key, a recent order), and returns those that need the disk, to be served
    /// outside the lock.
    #[must_use = "the core's reads must be served"]
    fn handle(&mut self, input: Input) -> Reads {
        self.handle_with(input, None)
    }

    /// Like [`handle`](Self::handle), with a key already read for the request in `input`.
    #[must_use = "the core's reads must be served"]
    fn handle_with(&mut self, input: Input, mut ahead: Option<KeyReadAhead>) -> Reads {
        self.core.handle(wall_ms(), input);
        let mut reads = self.pump();
        let mut disk = Reads::new();
        // A request asks for one read at a time and each answer moves it on; the bound only
        // guards the lock against a core that would keep asking (then the rest is served
        // outside it).
        for _ in 0..8 {
            if reads.is_empty() {
                break;
            }
            let now = wall_ms();
            for (id, lookup) in std::mem::take(&mut reads) {
                let core = &self.core;
                let read = match ahead
                    .take_if(|a| a.lookup == lookup && core.key_read_stands(a.through))
                {
                    Some(a) => {
                        self.reads_ahead.used.fetch_add(1, Ordering::Relaxed);
                        Some(Ok(a.found))
                    }
                    None => self.store.lookup_in_memory(&lookup, now),
                };
                match read {
                    Some(found) => {
                        let found = read_result(&lookup, found);
                        self.core.handle(now, Input::Read { id, found });
                    }
                    None => disk.push((id, lookup)),
                }
            }
            reads = self.pump();
        }
        disk.append(&mut reads);
        if ahead.is_some() {
            self.reads_ahead.unused.fetch_add(1, Ordering::Relaxed);
        }
        disk
    }

    /// Routes what the core made ready: records to the writer, released replies to their
    /// callers, gossip to the transport; returns the reads it asked for.
    #[must_use = "the core's reads must be served"]
    fn pump(&mut self) -> Reads {
        let mut ready = std::mem::take(&mut self.ready);
        self.core.ready_into(&mut ready);
        if self.outbound.get().is_none() {
            // Without a transport nothing leaves: calls' callers hear so at once (503), with
            // the other replies below.
            ready.messages.clear();
            for (to, message) in std::mem::take(&mut ready.exchange) {
                self.core
                    .handle(wall_ms(), Input::Undeliverable { to, message });
            }
            self.core.ready_into(&mut ready);
        }
        let changed = !ready.records.is_empty();
        if changed {
            let records = std::mem::take(&mut ready.records);
            if self.to_writer.send(ToWriter::Records(records)).is_err() {
                tracing::error!("the writer has stopped; no more acknowledgements");
            }
        }
        for (id, reply) in ready.replies.drain(..) {
            if let Some(done) = self.waiting.remove(&id) {
                done(&self.core, reply);
            }
        }
        for w in ready.warnings.drain(..) {
            tracing::warn!("{w}");
        }
        if let Some(send) = self.outbound.get() {
            for (peer, frame) in ready.messages.drain(..) {
                send(peer, PeerMessage::Gossip(frame));
            }
            for (peer, message) in ready.exchange.drain(..) {
                send(peer, PeerMessage::Exchange(message));
            }
        }
        let reads = std::mem::take(&mut ready.reads);
        self.ready = ready;
        if changed {
            self.changes.send_modify(|v| *v += 1);
        }
        if !self.ready_flag.load(Ordering::SeqCst) && !self.waiting.is_empty() {
            // Nothing will be made durable again: tell every waiting caller now (they answer
            // 503) instead of letting them time out.
            self.waiting.clear();
        }
        reads
    }
}

/// What the HTTP layer and the transport hold to talk to the core.
#[derive(Clone)]
pub struct CoreHandle {
    engine: Arc<Mutex<Engine>>,
    store: Arc<Store>,
    /// The index through which every record is in the store: the writer raises it after each
    /// synced write, before the core hears of it.
    written_through: Arc<AtomicU64>,
    reads_ahead: Arc<ReadAheadCounts>,
    ready: Arc<AtomicBool>,
    changes: watch::Receiver<u64>,
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CoreHandle {
    /// The engine, unless a panic inside the core poisoned it: a core that broke an invariant
    /// half-way takes no more input, and every caller is told it is unavailable.
    fn engine(&self) -> Option<MutexGuard<'_, Engine>> {
        self.engine.lock().ok()
    }

    /// Feeds the core one input, then serves the reads it asks for. False if the core has
    /// stopped.
    fn feed(&self, input: Input) -> bool {
        let reads = match self.engine() {
            Some(mut e) => e.handle(input),
            None => return false,
        };
        self.serve(reads);
        true
    }

    /// Answers the core's reads from the store, outside the lock, until it asks for no more.
    fn serve(&self, mut reads: Reads) {
        while !reads.is_empty() {
            let now = wall_ms();
            let answers: Vec<_> = reads
                .drain(..)
                .map(|(id, lookup)| {
                    let found = self.store.lookup(&lookup, now);
                    (id, read_result(&lookup, found))
                })
                .collect();
            let Some(mut e) = self.engine() else { return };
            for (id, found) in answers {
                reads.extend(e.handle(Input::Read { id, found }));
            }
        }
    }

    /// The store, for reads that are the driver's own (the operator's order list).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sends a command; resolves once its reply is released (after its records are durable).
    /// `None` if the core has stopped.
    pub async fn call(&self, key: Option<IdempotencyKey>, command: Command) -> Option<Reply> {
        self.call_render(key, command, |_, reply| reply).await
    }

    /// Like [`call`](Self::call), rendering the reply against the core that produced it.
    pub async fn call_render<T: Send + 'static>(
        &self,
        key: Option<IdempotencyKey>,
        command: Command,
        render: impl FnOnce(&Core, Reply) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let done: DoneFn = Box::new(move |core: &Core, reply: Reply| {
            let _ = tx.send(render(core, reply));
        });
        let ahead = key.as_ref().and_then(|k| self.read_key_ahead(&k.key));
        let reads = {
            let mut engine = self.engine()?;
            let id = RequestId(engine.next_id);
            engine.next_id += 1;
            engine.waiting.insert(id, done);
            engine.handle_with(Input::Request { id, key, command }, ahead)
        };
        self.serve(reads);
        rx.await.ok()
    }

    /// Reads `key` from the store's memory (memtables and block cache), before the core's lock
    /// is taken. `None` when that needs the disk or fails: the core then asks as usual.
    fn read_key_ahead(&self, key: &str) -> Option<KeyReadAhead> {
        // Loaded before the read begins: every record through it is in the store.
        let through = RecordIndex(self.written_through.load(Ordering::Acquire));
        let lookup = Lookup::Key(key.to_owned());
        let found = self.store.lookup_in_memory(&lookup, wall_ms())?.ok()?;
        Some(KeyReadAhead {
            lookup,
            through,
            found,
        })
    }

    /// Keys read before the lock: how many the core took, how many it did not.
    pub fn reads_ahead(&self) -> (u64, u64) {
        (
            self.reads_ahead.used.load(Ordering::Relaxed),
            self.reads_ahead.unused.load(Ordering::Relaxed),
        )
    }

    /// Runs `f` against the core. `None` if the core has stopped.
    pub fn read<T>(&self, f: impl FnOnce(&Core) -> T) -> Option<T> {
        self.engine().map(|e| f(&e.core))
    }

    /// Hands a peer's message (gossip, a call or an answer) to the core. An unready node
    /// serves no calls from other regions either: it could never make their writes durable,
    /// and their callers time them out (503) instead of waiting on a node that cannot answer.
    pub fn deliver(&self, from: String, message: PeerMessage) {
        if !self.is_ready() && matches!(message, PeerMessage::Exchange(Exchange::Call { .. })) {
            return;
        }
        self.feed(match message {
            PeerMessage::Gossip(frame) => Input::Peer { from, frame },
            PeerMessage::Exchange(message) => Input::Exchange { from, message },
        });
    }

    pub fn peer_reset(&self, peer: String) {
        self.feed(Input::PeerReset { peer });
    }

    /// False once a synced write failed or the core panicked: either way the node
    /// acknowledges nothing more until it is restarted.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.engine.is_poisoned()
    }

    /// A counter bumped whenever the core's state changes (for server-sent events).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

pub struct Running {
    pub handle: CoreHandle,
    stop_ticker: Sender<()>,
    ticker_thread: std::thread::JoinHandle<()>,
    writer_thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Stops the clock, lets every write already handed to the writer land, and waits for
    /// both threads. Call it once nothing sends requests any more.
    pub fn shutdown(self) {
        drop(self.stop_ticker);
        let _ = self.ticker_thread.join();
        if let Some(e) = self.handle.engine() {
            let _ = e.to_writer.send(ToWriter::Stop);
        }
        let _ = self.writer_thread.join();
    }
}

/// Recovers the core from the store and starts the writer and the ticker.
pub fn start(
    mut cfg: Config,
    store: Store,
    key_ttl_ms: allot_node::Millis,
    tick: Duration,
    durability: Durability,
    faults: Faults,
    outbound: Outbound,
    commit_metrics: crate::metrics::CommitMetrics,
) -> anyhow::Result<Running> {
    let incarnation = store.next_incarnation()?;
    cfg.incarnation = incarnation;
    cfg.id_key = store.id_key()?;
    cfg.idempotency_ttl_ms = key_ttl_ms;
    let loaded = store.load(incarnation)?;
    let restored = loaded.records.len();
    let core = Core::recover(cfg, loaded.records)
        .map_err(|e| anyhow::anyhow!("recovering from the store: {e}"))?;
    let written_through = Arc::new(AtomicU64::new(core.persisted_index()));
    core.check_invariants()
        .map_err(|e| anyhow::anyhow!("recovered state breaks an invariant: {e}"))?;
    tracing::info!(incarnation, restored, clock = loaded.clock, "recovered");

    let (wtx, wrx) = crossbeam_channel::unbounded::<ToWriter>();
    let ready = Arc::new(AtomicBool::new(true));
    let (changes_tx, changes_rx) = watch::channel(0u64);
    let store = Arc::new(store);
    let reads_ahead = Arc::new(ReadAheadCounts::default());
    let engine = Arc::new(Mutex::new(Engine {
        store: store.clone(),
        reads_ahead: reads_ahead.clone(),
        core,
        waiting: HashMap::new(),
        next_id: 1,
        to_writer: wtx,
        outbound,
        changes: changes_tx,
        ready_flag: ready.clone(),
        ready: Ready::default(),
    }));
    let handle = CoreHandle {
        engine,
        store: store.clone(),
        written_through,
        reads_ahead,
        ready: ready.clone(),
        changes: changes_rx,
    };
    // Tick once at start: holds that expired while the node was down are released now.
    handle.feed(Input::Tick);

    let writer = handle.clone();
    let writer_thread = std::thread::Builder::new()
        .name("allot-writer".into())
        .spawn(move || write_loop(store, wrx, writer, durability, faults, commit_metrics))?;
    let (stop_ticker, stopped) = crossbeam_channel::bounded::<()>(0);
    let ticker = handle.clone();
    let ticker_thread = std::thread::Builder::new()
        .name("allot-ticker".into())
        .spawn(move || {
            // Ticks until `Running::shutdown` drops the sender.
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick)
            {
                if !ticker.feed(Input::Tick) {
                    return;
                }
            }
        })?;
    Ok(Running {
        handle,
        stop_ticker,
        ticker_thread,
        writer_thread,
    })
}

/// Owns the disk. While one synced write is in flight, records pile up in the channel and go
/// down together in the next one: that is the group commit.
fn write_loop(
    store: Arc<Store>,
    rx: Receiver<ToWriter>,
    handle: CoreHandle,
    durability: Durability,
    faults: Faults,
    metrics: crate::metrics::CommitMetrics,
) {
    let commit = durability.commit;
    let mut writes = 0u64;
    let mut stopping = false;
    let mut last_write: Option<Instant> = None;
    while !stopping {
        let mut records = match rx.recv() {
            Ok(ToWriter::Records(r)) => r,
            Ok(ToWriter::Stop) | Err(_) => return,
        };
        if commit == Commit::Group {
            if let Some(wait) = last_write.and_then(|t| durability.window.checked_sub(t.elapsed()))
            {
                std::thread::sleep(wait);
            }
            last_write = Some(Instant::now());
            while let Ok(more) = rx.try_recv() {
                match more {
                    ToWriter::Records(more) => records.extend(more),
                    ToWriter::Stop => {
                        stopping = true;
                        break;
                    }
                }
            }
        }
        let groups: Vec<Vec<Record>> = match commit {
            Commit::Group => vec![records],
            Commit::PerRequest => records.into_iter().map(|r| vec![r]).collect(),
        };
        for group in groups {
            let Some(last) = group.last().map(|r| r.index) else {
                continue;
            };
            let mut batch = WriteBatch::default();
            store.batch(&mut batch, &group);
            writes += 1;
            let sync_started = Instant::now();
            if let Some(d) = faults.switch.delay() {
                std::thread::sleep(d);
            }
            let result = match faults.fail_sync_after {
                Some(n) if writes > n => Err("injected fault: the synced write failed".to_owned()),
                _ if faults.switch.failing() => {
                    Err("injected fault (switched on): the synced write failed".to_owned())
                }
                _ => store.write(batch).map_err(|e| e.to_string()),
            };
            metrics
                .sync_seconds
                .observe(sync_started.elapsed().as_secs_f64());
            metrics.batch_records.observe(group.len() as f64);
            if let Err(e) = result {
                tracing::error!(
                    "synced write failed: {e}; the node is unready and acknowledges nothing more"
                );
                handle.ready.store(false, Ordering::SeqCst);
                if let Some(mut e) = handle.engine() {
                    // Releases every waiting caller (they answer 503); reads still work.
                    let reads = e.pump();
                    drop(e);
                    handle.serve(reads);
                }
                // Hold the channel open until shutdown, so the core does not log a lost writer
                // for every record, but never report anything durable again.
                while let Ok(ToWriter::Records(_)) = rx.recv() {}
                return;
            }
            handle.written_through.store(last, Ordering::Release);
            if !handle.feed(Input::Persisted(last)) {
                return;
            }
        }
    }
}
