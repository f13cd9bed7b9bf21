//! Gossip between regions over QUIC with mutual TLS.
//!
//! Each node dials every peer and *sends* its frames on that outgoing connection, one frame per
//! unidirectional stream; it *receives* on the connections peers dial to it. Only the newest
//! frame for a peer is kept while the link is down or busy (frames are deltas from the version
//! the peer last reported, so a newer one covers an older one). Dialing backs off exponentially,
//! capped at `reconnect_max_ms`. A test-only switch cuts links to emulate partitions.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_node::GossipFrame;
use tokio::sync::watch;

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
    outboxes: BTreeMap<String, watch::Sender<Option<Arc<GossipFrame>>>>,
    pub status: Arc<Mutex<BTreeMap<String, PeerStatus>>>,
    pub faults: Arc<NetFaults>,
    endpoint: quinn::Endpoint,
}

pub struct PeerAddr {
    pub name: String,
    pub quic: SocketAddr,
}

impl Transport {
    /// Binds the endpoint and starts the dialers and the acceptor. Incoming frames go to
    /// `deliver(from, frame)`; a (re)connected outgoing link calls `reconnected(peer)`.
    pub fn start(
        me: &str,
        bind: SocketAddr,
        peers: Vec<PeerAddr>,
        identity: &Identity,
        reconnect_max: Duration,
        faults: Arc<NetFaults>,
        deliver: impl Fn(String, GossipFrame) + Send + Sync + 'static,
        reconnected: impl Fn(String) + Send + Sync + 'static,
    ) -> anyhow::Result<Transport> {
        let mut endpoint = quinn::Endpoint::server(identity.server_config()?, bind)?;
        endpoint.set_default_client_config(identity.client_config()?);
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
        let names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
        let deliver = Arc::new(deliver);
        let reconnected = Arc::new(reconnected);
        tokio::spawn(accept_loop(
            endpoint.clone(),
            me.to_owned(),
            names,
            status.clone(),
            faults.clone(),
            deliver,
        ));
        let mut outboxes = BTreeMap::new();
        for p in peers {
            let (tx, rx) = watch::channel(None);
            outboxes.insert(p.name.clone(), tx);
            tokio::spawn(dial_loop(
                endpoint.clone(),
                p,
                rx,
                status.clone(),
                faults.clone(),
                reconnect_max,
                reconnected.clone(),
            ));
        }
        Ok(Transport {
            outboxes,
            status,
            faults,
            endpoint,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Queues `frame` for `peer`, replacing any frame not sent yet.
    pub fn send(&self, peer: &str, frame: GossipFrame) {
        if let Some(tx) = self.outboxes.get(peer) {
            tx.send_replace(Some(Arc::new(frame)));
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

async fn dial_loop(
    endpoint: quinn::Endpoint,
    peer: PeerAddr,
    mut rx: watch::Receiver<Option<Arc<GossipFrame>>>,
    status: Arc<Mutex<BTreeMap<String, PeerStatus>>>,
    faults: Arc<NetFaults>,
    reconnect_max: Duration,
    reconnected: Arc<dyn Fn(String) + Send + Sync>,
) {
    let mut backoff = Duration::from_millis(10).min(reconnect_max);
    loop {
        if faults.is_cut(&peer.name) {
            update(&status, &peer.name, |s| s.outgoing = "down");
            tokio::time::sleep(backoff).await;
            continue;
        }
        let conn = match endpoint.connect(peer.quic, &peer.name) {
            Ok(connecting) => tokio::time::timeout(Duration::from_secs(2), connecting).await,
            Err(quinn::ConnectError::EndpointStopping) => return,
            Err(e) => {
                tracing::warn!(peer = %peer.name, "cannot dial: {e}");
                return;
            }
        };
        let conn = match conn {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer.name, "connect failed: {e}");
                update(&status, &peer.name, |s| s.outgoing = "down");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(reconnect_max);
                continue;
            }
            Err(_) => {
                update(&status, &peer.name, |s| s.outgoing = "down");
                continue;
            }
        };
        backoff = Duration::from_millis(10).min(reconnect_max);
        update(&status, &peer.name, |s| s.outgoing = "connected");
        tracing::info!(peer = %peer.name, "connected");
        // Full anti-entropy: the core forgets what it believed the peer had and sends all.
        reconnected(peer.name.clone());
        rx.mark_changed();
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                reason = conn.closed() => {
                    tracing::info!(peer = %peer.name, "connection lost: {reason}");
                    break;
                }
            }
            if faults.is_cut(&peer.name) {
                conn.close(1u32.into(), b"partitioned by a test");
                break;
            }
            let Some(frame) = rx.borrow_and_update().clone() else {
                continue;
            };
            let bytes = match wire::encode(&frame) {
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
        tokio::time::sleep(backoff).await;
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    me: String,
    regions: Vec<String>,
    status: Arc<Mutex<BTreeMap<String, PeerStatus>>>,
    faults: Arc<NetFaults>,
    deliver: Arc<dyn Fn(String, GossipFrame) + Send + Sync>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (regions, status, faults, deliver, me) = (
            regions.clone(),
            status.clone(),
            faults.clone(),
            deliver.clone(),
            me.clone(),
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
            update(&status, &peer, |s| s.incoming_connected = false);
        });
    }
}
