//! The drivers around the sans-IO core: one thread owns the `Core`, one thread owns the disk.
//!
//! Group commit falls out of the split: while the writer syncs one batch, the core keeps
//! taking requests, and everything that piled up goes down in the next synced write. Replies
//! leave the core only once the writer reports their records durable. If a sync fails, the
//! node turns unready and never reports anything durable again, so nothing more is
//! acknowledged: an operator restarts it, and it recovers from what is on disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allot_node::{
    Command, Config, Core, GossipFrame, IdempotencyKey, Input, Record, Reply, RequestId,
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

type ReadFn = Box<dyn FnOnce(&Core) + Send>;

/// Runs on the core's thread when the reply is released, so the answer is rendered against
/// the state that produced it, with no second trip to the core.
type DoneFn = Box<dyn FnOnce(&Core, Reply) + Send>;

enum ToCore {
    Request {
        key: Option<IdempotencyKey>,
        command: Command,
        done: DoneFn,
    },
    Read(ReadFn),
    Peer {
        from: String,
        frame: GossipFrame,
    },
    PeerReset(String),
}

/// Where the core's gossip frames go (the QUIC transport, once it runs).
pub type Outbound = Arc<std::sync::OnceLock<Box<dyn Fn(String, GossipFrame) + Send + Sync>>>;

/// Faults a test can inject into the drivers; all off in production.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Make every synced write after this many succeed-then-fail, as a dying disk would.
    pub fail_sync_after: Option<u64>,
}

/// What the HTTP layer holds to talk to the core.
#[derive(Clone)]
pub struct CoreHandle {
    tx: Sender<ToCore>,
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
    /// Sends a command; resolves once its reply is released (after its records are durable).
    /// `None` if the core has stopped.
    pub async fn call(&self, key: Option<IdempotencyKey>, command: Command) -> Option<Reply> {
        self.call_render(key, command, |_, reply| reply).await
    }

    /// Like [`call`](Self::call), rendering the reply on the core's thread.
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
        self.tx.send(ToCore::Request { key, command, done }).ok()?;
        rx.await.ok()
    }

    /// Runs `f` on the core's thread, between inputs.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: ReadFn = Box::new(move |core: &Core| {
            let _ = tx.send(f(core));
        });
        self.tx.send(ToCore::Read(job)).ok()?;
        rx.await.ok()
    }

    /// Hands a peer's gossip frame to the core.
    pub fn deliver(&self, from: String, frame: GossipFrame) {
        let _ = self.tx.send(ToCore::Peer { from, frame });
    }

    pub fn peer_reset(&self, peer: String) {
        let _ = self.tx.send(ToCore::PeerReset(peer));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// A counter bumped whenever the core's state changes (for server-sent events).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

pub struct Running {
    pub handle: CoreHandle,
    core_thread: std::thread::JoinHandle<()>,
    writer_thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Stops taking input, lets in-flight writes finish, and waits for both threads.
    pub fn shutdown(self) {
        drop(self.handle);
        let _ = self.core_thread.join();
        let _ = self.writer_thread.join();
    }
}

/// Recovers the core from the store and starts the core and writer threads.
pub fn start(
    mut cfg: Config,
    store: Store,
    tick: Duration,
    commit: Commit,
    faults: Faults,
    outbound: Outbound,
) -> anyhow::Result<Running> {
    let incarnation = store.next_incarnation()?;
    cfg.incarnation = incarnation;
    let loaded = store.load(incarnation)?;
    let restored = loaded.records.len();
    let core = Core::recover(cfg, loaded.records)
        .map_err(|e| anyhow::anyhow!("recovering from the store: {e}"))?;
    core.check_invariants()
        .map_err(|e| anyhow::anyhow!("recovered state breaks an invariant: {e}"))?;
    tracing::info!(incarnation, restored, clock = loaded.clock, "recovered");

    let (tx, rx) = crossbeam_channel::unbounded::<ToCore>();
    let (ptx, prx) = crossbeam_channel::unbounded::<u64>();
    let (wtx, wrx) = crossbeam_channel::unbounded::<Vec<Record>>();
    let ready = Arc::new(AtomicBool::new(true));
    let (changes_tx, changes_rx) = watch::channel(0u64);
    let handle = CoreHandle {
        tx,
        ready: ready.clone(),
        changes: changes_rx,
    };

    let writer_ready = ready.clone();
    let writer_thread = std::thread::Builder::new()
        .name("allot-writer".into())
        .spawn(move || write_loop(store, wrx, ptx, writer_ready, commit, faults))?;
    let core_thread = std::thread::Builder::new()
        .name("allot-core".into())
        .spawn(move || core_loop(core, rx, prx, wtx, changes_tx, tick, ready, outbound))?;
    Ok(Running {
        handle,
        core_thread,
        writer_thread,
    })
}

#[allow(clippy::too_many_arguments)]
fn core_loop(
    mut core: Core,
    rx: Receiver<ToCore>,
    prx: Receiver<u64>,
    wtx: Sender<Vec<Record>>,
    changes: watch::Sender<u64>,
    tick: Duration,
    healthy: Arc<AtomicBool>,
    outbound: Outbound,
) {
    let mut waiting: HashMap<RequestId, DoneFn> = HashMap::new();
    let mut next_id = 1u64;
    let mut last_tick = Instant::now();
    let mut requests = rx;
    let mut open = true;
    // Tick once at start: holds that expired while the node was down are released now.
    core.handle(wall_ms(), Input::Tick);
    loop {
        let timeout = tick.saturating_sub(last_tick.elapsed());
        let mut handled = 0;
        crossbeam_channel::select! {
            recv(requests) -> m => match m {
                Ok(m) => { step(&mut core, &mut waiting, &mut next_id, m); handled += 1; }
                Err(_) => {
                    // Every handle is gone: take no more input, finish what is in flight.
                    open = false;
                    requests = crossbeam_channel::never();
                }
            },
            recv(prx) -> n => if let Ok(n) = n { core.handle(wall_ms(), Input::Persisted(n)); },
            default(timeout) => {},
        }
        // Take whatever else is queued, so it shares the next synced write.
        while handled < 4096 {
            if let Ok(n) = prx.try_recv() {
                core.handle(wall_ms(), Input::Persisted(n));
            }
            match requests.try_recv() {
                Ok(m) => step(&mut core, &mut waiting, &mut next_id, m),
                Err(_) => break,
            }
            handled += 1;
        }
        if open && last_tick.elapsed() >= tick {
            core.handle(wall_ms(), Input::Tick);
            last_tick = Instant::now();
        }
        let ready = core.ready();
        let changed = !ready.records.is_empty();
        if changed && wtx.send(ready.records).is_err() {
            tracing::error!("the writer has stopped; no more acknowledgements");
        }
        for (id, reply) in ready.replies {
            if let Some(done) = waiting.remove(&id) {
                done(&core, reply);
            }
        }
        for w in ready.warnings {
            tracing::warn!("{w}");
        }
        if let Some(send) = outbound.get() {
            for (peer, frame) in ready.messages {
                send(peer, frame);
            }
        }
        if changed {
            changes.send_modify(|v| *v += 1);
        }
        if !healthy.load(Ordering::SeqCst) && !waiting.is_empty() {
            // Nothing will be made durable again: tell every waiting caller now (they answer
            // 503) instead of letting them time out.
            waiting.clear();
        }
        if !open && (core.persisted_index() == core.last_index() || !healthy.load(Ordering::SeqCst))
        {
            break;
        }
    }
}

fn step(core: &mut Core, waiting: &mut HashMap<RequestId, DoneFn>, next_id: &mut u64, msg: ToCore) {
    match msg {
        ToCore::Request { key, command, done } => {
            let id = RequestId(*next_id);
            *next_id += 1;
            waiting.insert(id, done);
            core.handle(wall_ms(), Input::Request { id, key, command });
        }
        ToCore::Read(f) => f(core),
        ToCore::Peer { from, frame } => core.handle(wall_ms(), Input::Peer { from, frame }),
        ToCore::PeerReset(peer) => core.handle(wall_ms(), Input::PeerReset { peer }),
    }
}

fn write_loop(
    store: Store,
    rx: Receiver<Vec<Record>>,
    core: Sender<u64>,
    ready: Arc<AtomicBool>,
    commit: Commit,
    faults: Faults,
) {
    let mut writes = 0u64;
    while let Ok(mut records) = rx.recv() {
        if commit == Commit::Group {
            while let Ok(more) = rx.try_recv() {
                records.extend(more);
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
            let result = match faults.fail_sync_after {
                Some(n) if writes > n => Err("injected fault: the synced write failed".to_owned()),
                _ => store.write(batch).map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                tracing::error!(
                    "synced write failed: {e}; the node is unready and acknowledges nothing more"
                );
                ready.store(false, Ordering::SeqCst);
                // Keep draining so the core never blocks, but never report anything durable.
                while rx.recv().is_ok() {}
                return;
            }
            if core.send(last).is_err() {
                return;
            }
        }
    }
}
