//! Mutual TLS between regions: only peers whose certificate the cluster CA signed, naming a
//! region of the config, get a frame through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use allot::tls::{generate, Identity};
use allot::transport::{LinkTiming, PeerAddr, Transport};
use allot_node::{GossipFrame, PeerMessage};

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

/// Starts `me` with identity from `certs`, dialing `target` as region `target_name`.
fn dialer(me: &str, certs: &std::path::Path, target_name: &str, target: SocketAddr) -> Transport {
    let id = Identity::load(certs, me).unwrap();
    Transport::start(
        me,
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        vec![PeerAddr {
            name: target_name.into(),
            quic: target,
        }],
        &id,
        LinkTiming::new(Duration::from_millis(50), Duration::ZERO),
        Arc::default(),
        |_, _| {},
        |_| {},
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_cluster_ca_and_configured_regions_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    // One CA signs the three regions and "mallory", who is not in the target's config.
    generate(
        &names(&["eu-west", "us-east", "ap-south", "mallory"]),
        &ours,
    )
    .unwrap();
    // Another CA signs a certificate that names a real region.
    generate(&names(&["us-east"]), &theirs).unwrap();

    let received: Arc<AtomicU64> = Arc::default();
    let from_us_east: Arc<AtomicU64> = Arc::default();
    let (r, u) = (received.clone(), from_us_east.clone());
    let target_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target_addr = target_socket.local_addr().unwrap();
    let target = Transport::start(
        "eu-west",
        target_socket,
        vec![
            PeerAddr {
                name: "us-east".into(),
                quic: free_udp(),
            },
            PeerAddr {
                name: "ap-south".into(),
                quic: free_udp(),
            },
        ],
        &Identity::load(&ours, "eu-west").unwrap(),
        LinkTiming::new(Duration::from_millis(50), Duration::ZERO),
        Arc::default(),
        move |from, _| {
            r.fetch_add(1, Ordering::SeqCst);
            if from == "us-east" {
                u.fetch_add(1, Ordering::SeqCst);
            }
        },
        |_| {},
    )
    .unwrap();

    let impostor = dialer("us-east", &theirs, "eu-west", target_addr);
    let stranger = dialer("mallory", &ours, "eu-west", target_addr);
    for _ in 0..20 {
        impostor.send("eu-west", PeerMessage::Gossip(GossipFrame::default()));
        stranger.send("eu-west", PeerMessage::Gossip(GossipFrame::default()));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "a refused peer got a frame through"
    );
    assert!(!target.status.lock().unwrap()["us-east"].incoming_connected);

    // The control: the real us-east, same target, gets through.
    let honest = dialer("us-east", &ours, "eu-west", target_addr);
    let start = std::time::Instant::now();
    while from_us_east.load(Ordering::SeqCst) == 0 {
        honest.send("eu-west", PeerMessage::Gossip(GossipFrame::default()));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the honest peer never got through"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for t in [&target, &impostor, &stranger, &honest] {
        t.close();
    }
}
