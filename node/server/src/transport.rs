//! Gossip between regions over QUIC with mutual TLS.
//!
//! Each node dials every peer and *sends* its frames on that outgoing connection, one frame per
//! unidirectional stream; it *receives* on the connections peers dial to it. Only the newest
//! frame for a peer is kept while the link is down or busy (frames are deltas from the version
//! the peer last reported, so a newer one covers an older one). A test-only switch cuts links
//! to emulate partitions.
//!
//! How fast a link comes back ([`LinkTiming`]) is what bounds convergence after a fault:
//! keep-alives about every `reconnect_max`, so a silent peer is noticed; an idle timeout of at
//! least max(1 s, 4 × the largest RTT hint), so a healthy WAN link is never dropped; a fresh
//! dial attempt every `reconnect_max` while earlier ones continue, so a healed partition is
//! crossed without waiting out the handshake's own retransmission back-off; a stateless-reset
//! key that survives restarts, so a restarted node resets the connections of its previous
//! incarnation the moment a survivor sends on one; and a newer incoming connection from a
//! peer replaces the older one at once.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_node::PeerMessage;
use tokio::sync::{mpsc, watch};

use crate::driver::wall_ms;
use crate::tls::{peer_region, Identity};
use crate::wire;

/// What the cluster endpoint shows about a peer.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PeerStatus {
    /// `connected`, `connecting` or `down`.
    pub outgoing: &'static str,
    pub incoming_connected: bool,
    pub last_sent_ms: Option<u64>,
    pub last_received_ms: Option<u64>,
    pub frames_out: u64,
    pub frames_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub refused: u64,
    /// Calls and answers dropped because the link's queue was full.
    pub calls_dropped: u64,
}

/// Links cut by a test, as peer names. Frames to or from them are dropped.
#[derive(Default)]
pub struct NetFaults {
    pub cut: Mutex<HashSet<String>>,
}

impl NetFaults {
    pub fn is_cut(&self, peer: &str) -> bool {
        self.cut.lock().expect("fault switch").contains(peer)
    }
}

pub struct Transport {
    outboxes: BTreeMap<String, watch::Sender<Option<Arc<PeerMessage>>>>,
    /// Calls and answers waiting for each peer's link, bounded: past the bound they are
    /// dropped, and the calling core times the call out (503).
    call_queues: BTreeMap<String, mpsc::Sender<Queued>>,
    pub status: Arc<Mutex<BTreeMap<String, PeerStatus>>>,
    pub faults: Arc<NetFaults>,
    endpoint: quinn::Endpoint,
}

pub struct PeerAddr {
    pub name: String,
    pub quic: SocketAddr,
}

/// How quickly links are watched and re-established.
#[derive(Clone, Copy, Debug)]
pub struct LinkTiming {
    /// The longest wait between two dial attempts (`reconnect_max_ms`).
    pub reconnect_max: Duration,
    /// A link silent this long is dead: at least max(1 s, 4 × the largest RTT hint).
    pub idle_timeout: Duration,
    /// A call or answer queued longer than this is dropped unsent: its caller has timed it
    /// out (the core's `peer_call_timeout_ms`).
    pub call_ttl: Duration,
}

impl LinkTiming {
    /// From `reconnect_max_ms` and the largest round trip of `[latency_ms]`.
    pub fn new(reconnect_max: Duration, largest_rtt: Duration) -> LinkTiming {
        LinkTiming {
            reconnect_max,
            idle_timeout: (largest_rtt * 4).max(Duration::from_secs(1)),
            call_ttl: Duration::from_millis(allot_node::DEFAULT_PEER_CALL_TIMEOUT_MS),
        }
    }

    /// How often a fresh dial attempt starts: every `reconnect_max`, but never so often that
    /// [`MAX_DIAL_ATTEMPTS`] attempts would not cover an idle timeout, so every attempt lives
    /// long enough for a handshake over the longest round trip.
    pub fn dial_every(&self) -> Duration {
        self.reconnect_max
            .max(self.idle_timeout / MAX_DIAL_ATTEMPTS as u32)
    }

    /// About `reconnect_max`, and always well inside the idle timeout.
    pub fn keep_alive(&self) -> Duration {
        self.reconnect_max.min(self.idle_timeout / 3)
    }

    fn quic(&self) -> anyhow::Result<Arc<quinn::TransportConfig>> {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive()));
        t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(self.idle_timeout)?));
        Ok(Arc::new(t))
    }
}

/// Calls and answers queued for one peer while its link is busy or down.
const CALLS_QUEUED_PER_PEER: usize = 256;

/// Dial attempts in flight at once for one peer.
const MAX_DIAL_ATTEMPTS: usize = 4;

impl Transport {
    /// Binds the endpoint and starts the dialers and the acceptor. Incoming frames go to
    /// `deliver(from, frame)`; a (re)connected outgoing link calls `reconnected(peer)`.
    pub fn start(
        me: &str,
        socket: std::net::UdpSocket,
        peers: Vec<PeerAddr>,
        identity: &Identity,
        timing: LinkTiming,
        faults: Arc<NetFaults>,
        deliver: impl Fn(String, PeerMessage) + Send + Sync + 'static,
        reconnected: impl Fn(String) + Send + Sync + 'static,
    ) -> anyhow::Result<Transport> {
        let quic = timing.quic()?;
        let mut server = identity.server_config()?;
        server.transport_config(quic.clone());
        let mut client = identity.client_config()?;
        client.transport_config(quic);
        let runtime =
            quinn::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime"))?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::new(identity.reset_key()),
            Some(server),
            socket,
            runtime,
        )?;
        endpoint.set_default_client_config(client);
        let status: Arc<Mutex<BTreeMap<String, PeerStatus>>> = Arc::new(Mutex::new(
            peers
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        PeerStatus {
                            outgoing: "connecting",
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        ));
        let deliver = Arc::new(deliver);
        let reconnected = Arc::new(reconnected);
        let (redial_tx, mut redial_rx): (BTreeMap<_, _>, BTreeMap<_, _>) = peers
            .iter()
            .map(|p| {
                let (tx, rx) = watch::channel(0u64);
                ((p.name.clone(), tx), (p.name.clone(), rx))
            })
            .unzip();
        tokio::spawn(accept_loop(
            endpoint.clone(),
            me.to_owned(),
            redial_tx,
            status.clone(),
            faults.clone(),
            timing,
            deliver,
        ));
        let mut outboxes = BTreeMap::new();
        let mut call_queues = BTreeMap::new();
        for peer in peers {
            let (tx, rx) = watch::channel(None);
            outboxes.insert(peer.name.clone(), tx);
            let (call_tx, calls) = mpsc::channel(CALLS_QUEUED_PER_PEER);
            call_queues.insert(peer.name.clone(), call_tx);
            let redial = redial_rx
                .remove(&peer.name)
                .expect("one redial signal per peer");
            tokio::spawn(dial_loop(
                endpoint.clone(),
                OutLink {
                    peer,
                    rx,
                    calls,
                    redial,
                },
                status.clone(),
                faults.clone(),
                timing,
                reconnected.clone(),
            ));
        }
        Ok(Transport {
            outboxes,
            call_queues,
            status,
            faults,
            endpoint,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Queues a message for `peer`: a gossip frame replaces any frame not sent yet (frames
    /// are deltas from what the peer last reported, so the newest covers the older); calls
    /// and answers queue in order, up to a bound.
    pub fn send(&self, peer: &str, message: PeerMessage) {
        match message {
            PeerMessage::Gossip(_) => {
                if let Some(tx) = self.outboxes.get(peer) {
                    tx.send_replace(Some(Arc::new(message)));
                }
            }
            PeerMessage::Exchange(_) => {
                let Some(tx) = self.call_queues.get(peer) else {
                    return;
                };
                let queued = Queued {
                    at: std::time::Instant::now(),
                    message: Arc::new(message),
                };
                if tx.try_send(queued).is_err() {
                    tracing::warn!(%peer, "calls to the region are backed up; one dropped");
                    update(&self.status, peer, |s| s.calls_dropped += 1);
                }
            }
        }
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}

fn update(
    status: &Mutex<BTreeMap<String, PeerStatus>>,
    peer: &str,
    f: impl FnOnce(&mut PeerStatus),
) {
    if let Some(s) = status.lock().expect("status").get_mut(peer) {
        f(s);
    }
}

/// A call or answer waiting for its peer's link, with when it was queued.
struct Queued {
    at: std::time::Instant,
    message: Arc<PeerMessage>,
}

/// One peer's outgoing side: where it is, the newest frame for it, its calls and answers, and
/// the count of times it dialed in anew (a change means: drop the connection to it, redial).
struct OutLink {
    peer: PeerAddr,
    rx: watch::Receiver<Option<Arc<PeerMessage>>>,
    /// Calls and answers, in order, none replaced by a newer one.
    calls: mpsc::Receiver<Queued>,
    redial: watch::Receiver<u64>,
}

async fn dial_loop(
    endpoint: quinn::Endpoint,
    link: OutLink,
    status: Arc<Mutex<BTreeMap<String, PeerStatus>>>,
    faults: Arc<NetFaults>,
    timing: LinkTiming,
    reconnected: Arc<dyn Fn(String) + Send + Sync>,
) {
    let OutLink {
        peer,
        mut rx,
        mut calls,
        mut redial,
    } = link;
    let pause = Duration::from_millis(10).min(timing.reconnect_max);
    loop {
        let Some(conn) = dial(&endpoint, &peer, timing, &faults, &status).await else {
            return;
        };
        update(&status, &peer.name, |s| s.outgoing = "connected");
        tracing::info!(peer = %peer.name, "connected");
        // A redial asked for before this connection existed is answered by it.
        redial.borrow_and_update();
        // Full anti-entropy: the core forgets what it believed the peer had and sends all.
        reconnected(peer.name.clone());
        rx.mark_changed();
        loop {
            let frame: Arc<PeerMessage> = tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    match rx.borrow_and_update().clone() {
                        Some(frame) => frame,
                        None => continue,
                    }
                }
                call = calls.recv() => {
                    let Some(q) = call else { return };
                    // A call older than its caller's deadline has been answered 503 there
                    // already: running it now would do what its client was told failed.
                    if q.at.elapsed() > timing.call_ttl {
                        update(&status, &peer.name, |s| s.calls_dropped += 1);
                        continue;
                    }
                    // Each call or answer on its own stream, not queued behind a large frame.
                    tokio::spawn(send_message(conn.clone(), q.message, peer.name.clone(), status.clone()));
                    continue;
                }
                reason = conn.closed() => {
                    tracing::info!(peer = %peer.name, "connection lost: {reason}");
                    break;
                }
                changed = redial.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tracing::info!(peer = %peer.name, "the peer dialed in anew: redialing it");
                    conn.close(4u32.into(), b"the peer has a newer connection");
                    break;
                }
            };
            if faults.is_cut(&peer.name) {
                conn.close(1u32.into(), b"partitioned by a test");
                break;
            }
            if !send_message(conn.clone(), frame, peer.name.clone(), status.clone()).await {
                break;
            }
        }
        update(&status, &peer.name, |s| s.outgoing = "down");
        tokio::time::sleep(pause).await;
    }
}

/// Sends one message on its own unidirectional stream; false if the connection failed.
async fn send_message(
    conn: quinn::Connection,
    message: Arc<PeerMessage>,
    peer: String,
    status: Arc<Mutex<BTreeMap<String, PeerStatus>>>,
) -> bool {
    let bytes = match wire::encode(&message) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(%peer, "message not sent: {e}");
            return true;
        }
    };
    let sent = async {
        let mut s = conn.open_uni().await?;
        s.write_all(&bytes).await?;
        s.finish()?;
        anyhow::Ok(())
    };
    match sent.await {
        Ok(()) => {
            update(&status, &peer, |s| {
                s.frames_out += 1;
                s.bytes_out += bytes.len() as u64;
                s.last_sent_ms = Some(wall_ms());
            });
            true
        }
        Err(e) => {
            tracing::debug!(%peer, "send failed: {e}");
            false
        }
    }
}

/// Dials `peer` until a handshake completes; `None` once the endpoint stops. A new attempt
/// starts every `reconnect_max` while the earlier ones go on (the oldest is dropped beyond a
/// few, and each lives at most the idle timeout): after a partition heals, a fresh Initial
/// goes out within `reconnect_max` instead of at the end of the handshake's own back-off, and
/// a handshake slower than `reconnect_max` (a long WAN round trip) still completes.
async fn dial(
    endpoint: &quinn::Endpoint,
    peer: &PeerAddr,
    timing: LinkTiming,
    faults: &NetFaults,
    status: &Mutex<BTreeMap<String, PeerStatus>>,
) -> Option<quinn::Connection> {
    let (done_tx, mut done) = tokio::sync::mpsc::channel::<quinn::Connection>(MAX_DIAL_ATTEMPTS);
    let mut attempts: VecDeque<tokio::task::AbortHandle> = VecDeque::new();
    let abort_all = |attempts: &mut VecDeque<tokio::task::AbortHandle>| {
        for a in attempts.drain(..) {
            a.abort();
        }
    };
    let mut every = tokio::time::interval(timing.dial_every());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                if faults.is_cut(&peer.name) {
                    update(status, &peer.name, |s| s.outgoing = "down");
                    abort_all(&mut attempts);
                    continue;
                }
                attempts.retain(|a| !a.is_finished());
                if attempts.len() >= MAX_DIAL_ATTEMPTS {
                    if let Some(oldest) = attempts.pop_front() {
                        oldest.abort();
                    }
                }
                let connecting = match endpoint.connect(peer.quic, &peer.name) {
                    Ok(c) => c,
                    Err(quinn::ConnectError::EndpointStopping) => return None,
                    Err(e) => {
                        tracing::warn!(peer = %peer.name, "cannot dial: {e}");
                        return None;
                    }
                };
                let (tx, lifetime, name) = (done_tx.clone(), timing.idle_timeout, peer.name.clone());
                let attempt = tokio::spawn(async move {
                    match tokio::time::timeout(lifetime, connecting).await {
                        Ok(Ok(conn)) => {
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %name, "connect failed: {e}"),
                        Err(_) => tracing::debug!(peer = %name, "handshake timed out"),
                    }
                });
                attempts.push_back(attempt.abort_handle());
            }
            Some(conn) = done.recv() => {
                abort_all(&mut attempts);
                if faults.is_cut(&peer.name) {
                    conn.close(1u32.into(), b"partitioned by a test");
                    continue;
                }
                return Some(conn);
            }
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    me: String,
    redial: BTreeMap<String, watch::Sender<u64>>,
    status: Arc<Mutex<BTreeMap<String, PeerStatus>>>,
    faults: Arc<NetFaults>,
    timing: LinkTiming,
    deliver: Arc<dyn Fn(String, PeerMessage) + Send + Sync>,
) {
    let regions: Vec<String> = redial.keys().cloned().collect();
    let incoming_state = Arc::new(Incoming {
        redial,
        current: Mutex::default(),
        redialed: Mutex::default(),
        idle_timeout: timing.idle_timeout,
    });
    while let Some(incoming) = endpoint.accept().await {
        let (regions, status, faults, deliver, me, state) = (
            regions.clone(),
            status.clone(),
            faults.clone(),
            deliver.clone(),
            me.clone(),
            incoming_state.clone(),
        );
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("refused a peer: handshake failed: {e}");
                    return;
                }
            };
            let Some(peer) = peer_region(&conn, &regions).filter(|p| *p != me) else {
                tracing::warn!(remote = %conn.remote_address(), "refused a peer: its certificate names no other region of the config");
                conn.close(2u32.into(), b"unknown region");
                return;
            };
            if faults.is_cut(&peer) {
                conn.close(1u32.into(), b"partitioned by a test");
                return;
            }
            update(&status, &peer, |s| s.incoming_connected = true);
            let first = Arc::new(std::sync::Once::new());
            // Streams are read side by side: a call is not held up behind a large frame.
            while let Ok(mut stream) = conn.accept_uni().await {
                let (peer, status, faults, deliver, conn, state, first) = (
                    peer.clone(),
                    status.clone(),
                    faults.clone(),
                    deliver.clone(),
                    conn.clone(),
                    state.clone(),
                    first.clone(),
                );
                tokio::spawn(async move {
                    let bytes = match stream.read_to_end(wire::MAX_FRAME).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(%peer, "message refused: {e}");
                            update(&status, &peer, |s| s.refused += 1);
                            return;
                        }
                    };
                    if faults.is_cut(&peer) {
                        conn.close(1u32.into(), b"partitioned by a test");
                        return;
                    }
                    match wire::decode(&bytes) {
                        Ok(message) => {
                            // A connection counts as the peer's current one once it carried a
                            // message: a dial attempt its dialer dropped never replaces a live
                            // connection.
                            first.call_once(|| state.carried(&peer, &conn));
                            update(&status, &peer, |s| {
                                s.frames_in += 1;
                                s.bytes_in += bytes.len() as u64;
                                s.last_received_ms = Some(wall_ms());
                            });
                            deliver(peer.clone(), message);
                        }
                        Err(e) => {
                            tracing::warn!(%peer, "message refused: {e}");
                            update(&status, &peer, |s| s.refused += 1);
                        }
                    }
                });
            }
            if state.ended(&peer, &conn) {
                update(&status, &peer, |s| s.incoming_connected = false);
            }
        });
    }
}

/// The incoming side's state: the current connection of each peer, and the redials it asked.
struct Incoming {
    redial: BTreeMap<String, watch::Sender<u64>>,
    /// The newest incoming connection of each peer that carried a message: a newer one (the
    /// peer restarted, or lost its link and dialed again) replaces the older at once.
    current: Mutex<BTreeMap<String, quinn::Connection>>,
    /// When each peer last made us redial it: at most once per idle timeout, so two regions
    /// can never make each other redial in a loop.
    redialed: Mutex<BTreeMap<String, std::time::Instant>>,
    idle_timeout: Duration,
}

impl Incoming {
    /// `conn` from `peer` carried its first message.
    fn carried(&self, peer: &str, conn: &quinn::Connection) {
        let older = self
            .current
            .lock()
            .expect("connections")
            .insert(peer.to_owned(), conn.clone());
        let Some(older) = older.filter(|o| o.stable_id() != conn.stable_id()) else {
            return;
        };
        older.close(3u32.into(), b"replaced by a newer connection");
        // The peer dialed again while its older connection still stood: most likely a new
        // incarnation, and our connection to the old one is a dead end that QUIC's probe
        // back-off would take long to give up on. Redial it now.
        let mut last = self.redialed.lock().expect("redials");
        if last
            .get(peer)
            .is_none_or(|t| t.elapsed() >= self.idle_timeout)
        {
            last.insert(peer.to_owned(), std::time::Instant::now());
            if let Some(r) = self.redial.get(peer) {
                r.send_modify(|n| *n += 1);
            }
        }
    }

    /// `conn` from `peer` ended; true if it was the current one.
    fn ended(&self, peer: &str, conn: &quinn::Connection) -> bool {
        let mut current = self.current.lock().expect("connections");
        let was = current
            .get(peer)
            .is_some_and(|c| c.stable_id() == conn.stable_id());
        if was {
            current.remove(peer);
        }
        was
    }
}
