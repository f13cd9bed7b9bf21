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
use tokio::sync::{mpsc, watch, Notify};

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
    call_queues: BTreeMap<String, mpsc::Sender<Arc<PeerMessage>>>,
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
}

impl LinkTiming {
    /// From `reconnect_max_ms` and the largest round trip of `[latency_ms]`.
    pub fn new(reconnect_max: Duration, largest_rtt: Duration) -> LinkTiming {
        LinkTiming {
            reconnect_max,
            idle_timeout: (largest_rtt * 4).max(Duration::from_secs(1)),
        }
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
        bind: SocketAddr,
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
            std::net::UdpSocket::bind(bind)?,
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
        let redial: BTreeMap<String, Arc<Notify>> = peers
            .iter()
            .map(|p| (p.name.clone(), Arc::default()))
            .collect();
        tokio::spawn(accept_loop(
            endpoint.clone(),
            me.to_owned(),
            redial.clone(),
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
            let redial = redial[&peer.name].clone();
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
                if tx.try_send(Arc::new(message)).is_err() {
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

/// One peer's outgoing side: where it is, the newest frame for it, and the signal that its
/// new incarnation has dialed in (so the connection to the old one is dropped at once).
struct OutLink {
    peer: PeerAddr,
    rx: watch::Receiver<Option<Arc<PeerMessage>>>,
    /// Calls and answers, in order, none replaced by a newer one.
    calls: mpsc::Receiver<Arc<PeerMessage>>,
    redial: Arc<Notify>,
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
        redial,
    } = link;
    let pause = Duration::from_millis(10).min(timing.reconnect_max);
    loop {
        let Some(conn) = dial(&endpoint, &peer, timing, &faults, &status).await else {
            return;
        };
        update(&status, &peer.name, |s| s.outgoing = "connected");
        tracing::info!(peer = %peer.name, "connected");
        // Full anti-entropy: the core forgets what it believed the peer had and sends all.
        reconnected(peer.name.clone());
        rx.mark_changed();
        loop {
            let message: Arc<PeerMessage> = tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    match rx.borrow_and_update().clone() {
                        Some(frame) => frame,
                        None => continue,
                    }
                }
                call = calls.recv() => match call {
                    Some(m) => m,
                    None => return,
                },
                reason = conn.closed() => {
                    tracing::info!(peer = %peer.name, "connection lost: {reason}");
                    break;
                }
                _ = redial.notified() => {
                    tracing::info!(peer = %peer.name, "the peer dialed in anew: redialing it");
                    conn.close(4u32.into(), b"the peer has a newer connection");
                    break;
                }
            };
            if faults.is_cut(&peer.name) {
                conn.close(1u32.into(), b"partitioned by a test");
                break;
            }
            let bytes = match wire::encode(&message) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(peer = %peer.name, "frame not sent: {e}");
                    continue;
                }
            };
            let sent = async {
                let mut s = conn.open_uni().await?;
                s.write_all(&bytes).await?;
                s.finish()?;
                anyhow::Ok(())
            };
            match sent.await {
                Ok(()) => update(&status, &peer.name, |s| {
                    s.frames_out += 1;
                    s.bytes_out += bytes.len() as u64;
                    s.last_sent_ms = Some(wall_ms());
                }),
                Err(e) => {
                    tracing::debug!(peer = %peer.name, "send failed: {e}");
                    break;
                }
            }
        }
        update(&status, &peer.name, |s| s.outgoing = "down");
        tokio::time::sleep(pause).await;
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
    let mut every = tokio::time::interval(timing.reconnect_max);
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
    redial: BTreeMap<String, Arc<Notify>>,
    status: Arc<Mutex<BTreeMap<String, PeerStatus>>>,
    faults: Arc<NetFaults>,
    timing: LinkTiming,
    deliver: Arc<dyn Fn(String, PeerMessage) + Send + Sync>,
) {
    let regions: Vec<String> = redial.keys().cloned().collect();
    let redial = Arc::new(redial);
    // The newest incoming connection of each peer: a newer one (the peer restarted, or lost
    // its link and dialed again) replaces the older at once.
    let current: Arc<Mutex<BTreeMap<String, quinn::Connection>>> = Arc::default();
    // When each peer last made us redial it: at most once per idle timeout, so two regions
    // can never make each other redial in a loop.
    let redialed: Arc<Mutex<BTreeMap<String, std::time::Instant>>> = Arc::default();
    while let Some(incoming) = endpoint.accept().await {
        let (regions, status, faults, deliver, me, current, redial, redialed) = (
            regions.clone(),
            status.clone(),
            faults.clone(),
            deliver.clone(),
            me.clone(),
            current.clone(),
            redial.clone(),
            redialed.clone(),
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
            let older = current
                .lock()
                .expect("connections")
                .insert(peer.clone(), conn.clone());
            if let Some(older) = older {
                older.close(3u32.into(), b"replaced by a newer connection");
                // The peer dialed again while its older connection still stood: most likely a
                // new incarnation, and our connection to the old one is a dead end that QUIC's
                // probe back-off would take long to give up on. Redial it now.
                let mut last = redialed.lock().expect("redials");
                let quiet = last
                    .get(&peer)
                    .is_none_or(|t| t.elapsed() >= timing.idle_timeout);
                if quiet {
                    last.insert(peer.clone(), std::time::Instant::now());
                    if let Some(n) = redial.get(&peer) {
                        n.notify_waiters();
                    }
                }
            }
            update(&status, &peer, |s| s.incoming_connected = true);
            while let Ok(mut stream) = conn.accept_uni().await {
                let bytes = match stream.read_to_end(wire::MAX_FRAME).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(%peer, "frame refused: {e}");
                        update(&status, &peer, |s| s.refused += 1);
                        continue;
                    }
                };
                if faults.is_cut(&peer) {
                    conn.close(1u32.into(), b"partitioned by a test");
                    break;
                }
                match wire::decode(&bytes) {
                    Ok(frame) => {
                        update(&status, &peer, |s| {
                            s.frames_in += 1;
                            s.bytes_in += bytes.len() as u64;
                            s.last_received_ms = Some(wall_ms());
                        });
                        deliver(peer.clone(), frame);
                    }
                    Err(e) => {
                        tracing::warn!(%peer, "frame refused: {e}");
                        update(&status, &peer, |s| s.refused += 1);
                    }
                }
            }
            let mut current = current.lock().expect("connections");
            if current
                .get(&peer)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                current.remove(&peer);
                update(&status, &peer, |s| s.incoming_connected = false);
            }
        });
    }
}
