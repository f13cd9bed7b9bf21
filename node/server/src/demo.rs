//! `allot demo`: three real nodes on loopback — certificates, RocksDB data, QUIC gossip — a
//! sample event, a gentle generated load skewed 70/20/10, and each region's view of the ledger
//! printed as it converges. Everything lives in a temp dir unless `--data DIR`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::node::{serve, NodeOptions, Peer};

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

fn sample_event() -> Value {
    let seats: Vec<String> = (0..60)
        .map(|i| format!("{}-{}", (b'A' + i / 10) as char, i % 10 + 1))
        .collect();
    json!({
        "id": "rock-2027", "name": "Rock in the Park", "description": "A sample event for the demo",
        "venue": "Tempelhofer Feld", "lat": 52.47, "lon": 13.40, "starts_at": "2027-06-01T19:00:00Z",
        "currency": "EUR", "hold_ttl_s": 600,
        "pools": [
            {"id": "floor", "capacity": 3000, "price_cents": 8900},
            {"id": "stalls", "seats": seats, "price_cents": 12900}
        ],
        "allotments": "even"
    })
}

fn token() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A small deterministic generator for the load's shape.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

pub async fn run(data: Option<PathBuf>, seconds: Option<u64>, rate: u64) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let root = data.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    let names: Vec<String> = REGIONS.map(String::from).to_vec();
    let certs = root.join("certs");
    if !certs.join("ca.pem").exists() {
        crate::tls::generate(&names, &certs)?;
    }
    // A token of the operator's choosing (a test driving the demo), else a throwaway one.
    let (token, chosen) = match std::env::var("ALLOT_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => (t.trim().to_owned(), true),
        _ => (token()?, false),
    };
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let http: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    // Bound now and handed to the nodes, so no port changes hands between choosing and using.
    let mut sockets: Vec<Option<std::net::UdpSocket>> = (0..3)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").map(Some))
        .collect::<Result<_, _>>()?;
    let quic: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.as_ref().expect("bound above").local_addr())
        .collect::<Result<_, _>>()?;
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut opts = NodeOptions::local(
            &names[i],
            &names,
            http[i],
            root.join("data").join(&names[i]),
            Some(token.clone()),
        );
        opts.quic = quic[i];
        opts.quic_socket = sockets[i].take();
        opts.peers = (0..3)
            .filter(|&j| j != i)
            .map(|j| Peer {
                name: names[j].clone(),
                http: http[j],
                quic: quic[j],
            })
            .collect();
        opts.tls_dir = Some(certs.clone());
        let (stop, rx) = oneshot::channel::<()>();
        tasks.push(tokio::spawn(serve(opts, listener, async move {
            let _ = rx.await;
        })));
        stops.push(stop);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let bases: Vec<String> = http.iter().map(|a| format!("http://{a}")).collect();
    for b in &bases {
        wait_ready(&client, b).await?;
    }
    let r = client
        .post(format!("{}/v1/admin/events", bases[0]))
        .bearer_auth(&token)
        .json(&sample_event())
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::CREATED && r.status() != reqwest::StatusCode::CONFLICT {
        bail!(
            "creating the sample event: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    println!("allot demo: three regions on loopback, gossiping over QUIC with mutual TLS.");
    println!(
        "  data and certificates: {}{}",
        root.display(),
        if root == temp.path() {
            " (deleted on exit)"
        } else {
            ""
        }
    );
    for (i, b) in bases.iter().enumerate() {
        println!(
            "  {:<9} dashboard {b}/dashboard · {b}/v1/events/rock-2027/availability · {b}/metrics",
            names[i]
        );
    }
    if chosen {
        // A token of the operator's is never printed.
        println!("  operator token: the one in ALLOT_ADMIN_TOKEN (the dashboards' login)");
    } else {
        println!("  operator token (shown once; the dashboards' login): {token}");
    }
    println!(
        "  e.g. curl -H 'Authorization: Bearer <token>' {}/v1/admin/events/rock-2027/ledger",
        bases[0]
    );
    if rate == 0 {
        println!(
            "No generated load (--rate 0): the nodes serve until Ctrl-C{}.\n",
            seconds.map(|s| format!(" or {s} s")).unwrap_or_default()
        );
    } else {
        println!("Selling rock-2027 (floor: 3000, stalls: 60 seats, even allotments) at ~{rate} purchases/s, 70/20/10 across regions. Ctrl-C stops.\n");
    }

    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut rng = Lcg(7);
    let mut n = 0u64;
    let mut last_print = Instant::now();
    // Without load the loop only watches the clock and the signal.
    let interval = Duration::from_micros(1_000_000 / rate.max(1)).min(Duration::from_millis(200));
    let mut sold_out = [0u64; 3];
    let stop_signal = crate::node::signal();
    tokio::pin!(stop_signal);
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        tokio::select! {
            _ = &mut stop_signal => break,
            _ = tokio::time::sleep(interval) => {}
        }
        if rate == 0 {
            continue;
        }
        let roll = rng.next() % 100;
        let r = if roll < 70 {
            0
        } else if roll < 90 {
            1
        } else {
            2
        };
        n += 1;
        let body = if rng.next().is_multiple_of(5) {
            json!({"pool": "stalls", "quantity": 1 + rng.next() % 2, "customer": format!("c-{n}"), "payment_ref": format!("pay-{n}")})
        } else {
            json!({"pool": "floor", "quantity": 1 + rng.next() % 4, "customer": format!("c-{n}"), "payment_ref": format!("pay-{n}")})
        };
        let resp = client
            .post(format!("{}/v1/events/rock-2027/purchases", bases[r]))
            .header("Idempotency-Key", format!("demo-{n}"))
            .json(&body)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::CONFLICT {
            sold_out[r] += 1;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            print_views(&client, &bases, &token).await?;
            last_print = Instant::now();
        }
    }
    // Let gossip settle, then show the converged views.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("\nload stopped; after gossip settles:");
    let views = print_views(&client, &bases, &token).await?;
    let converged = views.windows(2).all(|w| w[0] == w[1]);
    println!("\n{n} purchases sent; sold-out answers per region: {sold_out:?}; replicated state identical everywhere: {converged}");
    for s in stops {
        let _ = s.send(());
    }
    for t in tasks {
        t.await??;
    }
    if !converged {
        bail!("the regions did not converge");
    }
    Ok(())
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("node at {base} did not become ready")
}

/// Prints every region's view of the floor pool; returns the replicated part of each view.
async fn print_views(
    client: &reqwest::Client,
    bases: &[String],
    token: &str,
) -> anyhow::Result<Vec<Value>> {
    println!(
        "{:<16}| {:<20}| {:<20}| {:<20}| version vector",
        "view of", "eu-west", "us-east", "ap-south"
    );
    let mut out = Vec::new();
    for (i, b) in bases.iter().enumerate() {
        let l: Value = client
            .get(format!("{b}/v1/admin/events/rock-2027/ledger"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await
            .context("ledger")?;
        let regions = l["pools"][0]["regions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let cells: Vec<String> = regions
            .iter()
            .map(|r| {
                let avail = r["initial"].as_i64().unwrap_or(0)
                    + r["granted_in"].as_i64().unwrap_or(0)
                    - r["granted_out"].as_i64().unwrap_or(0)
                    - r["consumed"].as_i64().unwrap_or(0)
                    + r["returned"].as_i64().unwrap_or(0);
                format!(
                    "left {avail:>4} sold {:>4}",
                    r["consumed"].as_i64().unwrap_or(0) - r["returned"].as_i64().unwrap_or(0)
                )
            })
            .collect();
        println!(
            "{:<9} sees  | {} | {}",
            REGIONS[i],
            cells.join(" | "),
            l["version_vector"]
        );
        out.push(json!({"rows": regions.iter().map(|r| json!([r["consumed"], r["returned"], r["granted_in"], r["granted_out"]])).collect::<Vec<_>>(), "vv": l["version_vector"]}));
    }
    Ok(out)
}
