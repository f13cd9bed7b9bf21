//! The delay relay: what the emulated WAN's wires are. Every datagram (QUIC between regions)
//! and every byte (a buyer's HTTP to a central store in another region) waits half the
//! round-trip time of its link each way before it is passed on, in order. A link can be cut:
//! datagrams are dropped and TCP bytes held back until it heals, as a partition does to
//! packets, and no connection is closed by it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// One wire between two regions, both ways.
pub struct Link {
    one_way: Duration,
    cut: AtomicBool,
}

impl Link {
    pub fn new(rtt: Duration) -> Arc<Link> {
        Arc::new(Link {
            one_way: rtt / 2,
            cut: AtomicBool::new(false),
        })
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

/// The relay's tasks, stopped when dropped.
#[derive(Default)]
pub struct Relay {
    tasks: JoinSet<()>,
}

type Delayed = mpsc::UnboundedSender<(Instant, Bytes)>;

impl Relay {
    /// Relays datagrams sent to the returned address (bound on `listen_ip`) to `target`,
    /// from a socket of their own per sender bound on `upstream_ip`, and the answers back.
    pub async fn udp(
        &mut self,
        listen_ip: IpAddr,
        upstream_ip: IpAddr,
        target: SocketAddr,
        link: Arc<Link>,
    ) -> anyhow::Result<SocketAddr> {
        let front = Arc::new(UdpSocket::bind((listen_ip, 0)).await?);
        let addr = front.local_addr()?;
        self.tasks.spawn(async move {
            let mut flows: HashMap<SocketAddr, Delayed> = HashMap::new();
            let mut flow_tasks = JoinSet::new();
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                if link.is_cut() {
                    continue;
                }
                let due = Instant::now() + link.one_way;
                let tx = flows.entry(from).or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    flow_tasks.spawn(udp_flow(
                        front.clone(),
                        from,
                        upstream_ip,
                        target,
                        link.clone(),
                        rx,
                    ));
                    tx
                });
                let _ = tx.send((due, Bytes::copy_from_slice(&buf[..n])));
            }
        });
        Ok(addr)
    }

    /// Relays TCP connections made to the returned address (bound on `listen_ip`) to `target`.
    pub async fn tcp(
        &mut self,
        listen_ip: IpAddr,
        target: SocketAddr,
        link: Arc<Link>,
    ) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind((listen_ip, 0)).await?;
        let addr = listener.local_addr()?;
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let link = link.clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(
                        tcp_direction(cr, sw, link.clone()),
                        tcp_direction(sr, cw, link)
                    );
                });
            }
        });
        Ok(addr)
    }
}

/// One sender's datagrams: out through its own upstream socket, answers back to it.
async fn udp_flow(
    front: Arc<UdpSocket>,
    client: SocketAddr,
    upstream_ip: IpAddr,
    target: SocketAddr,
    link: Arc<Link>,
    mut outbound: mpsc::UnboundedReceiver<(Instant, Bytes)>,
) {
    let Ok(upstream) = UdpSocket::bind((upstream_ip, 0)).await else {
        return;
    };
    if upstream.connect(target).await.is_err() {
        return;
    }
    let upstream = Arc::new(upstream);
    let (back_tx, mut back_rx) = mpsc::unbounded_channel::<(Instant, Bytes)>();
    let up = upstream.clone();
    let (link_out, link_back) = (link.clone(), link.clone());
    // A datagram already on the wire when the link is cut is lost too: checked again when due.
    let forward = async move {
        while let Some((due, datagram)) = outbound.recv().await {
            tokio::time::sleep_until(due).await;
            if !link_out.is_cut() {
                let _ = up.send(&datagram).await;
            }
        }
    };
    let receive = async move {
        let mut buf = vec![0u8; 65_536];
        // A refused send (the node is down) reports as an error here: keep listening.
        loop {
            if let Ok(n) = upstream.recv(&mut buf).await {
                if !link.is_cut() {
                    let due = Instant::now() + link.one_way;
                    let _ = back_tx.send((due, Bytes::copy_from_slice(&buf[..n])));
                }
            }
        }
    };
    let answer = async move {
        while let Some((due, datagram)) = back_rx.recv().await {
            tokio::time::sleep_until(due).await;
            if !link_back.is_cut() {
                let _ = front.send_to(&datagram, client).await;
            }
        }
    };
    tokio::join!(forward, receive, answer);
}

/// One direction of a relayed TCP connection: each chunk is written a one-way delay after
/// it was read, and held while the link is cut.
async fn tcp_direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Bytes>)>();
    let held = link.clone();
    let read = async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let due = Instant::now() + link.one_way;
            let chunk = (n > 0).then(|| Bytes::copy_from_slice(&buf[..n]));
            let end = chunk.is_none();
            if tx.send((due, chunk)).is_err() || end {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            while held.is_cut() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let Some(chunk) = chunk else {
                break;
            };
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// An echo server's address: UDP.
    async fn udp_echo() -> SocketAddr {
        let s = UdpSocket::bind((LOCAL, 0)).await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_datagram_pays_the_round_trip_and_a_cut_drops_it_until_healed() {
        let link = Link::new(Duration::from_millis(60));
        let mut relay = Relay::default();
        let front = relay
            .udp(LOCAL, LOCAL, udp_echo().await, link.clone())
            .await
            .unwrap();
        let client = UdpSocket::bind((LOCAL, 0)).await.unwrap();
        client.connect(front).await.unwrap();
        let mut buf = [0u8; 16];

        let sent = Instant::now();
        client.send(b"ping").await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        let rtt = sent.elapsed();
        assert!(rtt >= Duration::from_millis(60), "answered in {rtt:?}");

        link.set_cut(true);
        client.send(b"lost").await.unwrap();
        let answer = tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await;
        assert!(answer.is_err(), "a cut link delivered a datagram");

        link.set_cut(false);
        client.send(b"again").await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..n],
            b"again",
            "the datagram sent during the cut came back"
        );
    }

    #[tokio::test]
    async fn tcp_bytes_pay_the_round_trip_and_wait_out_a_cut_in_order() {
        let server = TcpListener::bind((LOCAL, 0)).await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        let link = Link::new(Duration::from_millis(60));
        let mut relay = Relay::default();
        let front = relay.tcp(LOCAL, target, link.clone()).await.unwrap();
        let mut client = TcpStream::connect(front).await.unwrap();
        let mut buf = [0u8; 8];

        let sent = Instant::now();
        client.write_all(b"abc").await.unwrap();
        client.read_exact(&mut buf[..3]).await.unwrap();
        assert_eq!(&buf[..3], b"abc");
        assert!(sent.elapsed() >= Duration::from_millis(60));

        link.set_cut(true);
        client.write_all(b"def").await.unwrap();
        let held = tokio::time::timeout(Duration::from_millis(300), client.read(&mut buf)).await;
        assert!(held.is_err(), "a cut link passed bytes on");
        link.set_cut(false);
        client.read_exact(&mut buf[..3]).await.unwrap();
        assert_eq!(
            &buf[..3],
            b"def",
            "held bytes arrive after the heal, connection open"
        );
    }
}
