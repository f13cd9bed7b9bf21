//! Three real nodes on loopback, gossiping over QUIC with mutual TLS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allot::node::{serve, NodeOptions, Peer};
use allot::transport::NetFaults;
use common::{bound_udp, event, read, replicated_view, send, time_to_agree, TOKEN};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const NAMES: [&str; 3] = ["eu-west", "us-east", "ap-south"];

struct Cluster {
    bases: Vec<String>,
    faults: Vec<Arc<NetFaults>>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(|_, _| {}).await
    }

    /// Starts the three nodes, letting `tune` adjust node `i`'s options.
    async fn start_with(tune: impl Fn(usize, &mut NodeOptions)) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let regions: Vec<String> = NAMES.map(String::from).to_vec();
        allot::tls::generate(&regions, &dir.path().join("certs")).unwrap();
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let http: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let (mut sockets, quic) = bound_udp(3);
        let mut c = Cluster {
            bases: Vec::new(),
            faults: Vec::new(),
            stops: Vec::new(),
            tasks: Vec::new(),
            client: Client::new(),
            _dir: dir,
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let faults: Arc<NetFaults> = Arc::default();
            let mut opts = NodeOptions::local(
                NAMES[i],
                &regions,
                http[i],
                c._dir.path().join(NAMES[i]),
                Some(TOKEN.into()),
            );
            opts.tick = Duration::from_millis(20);
            opts.quic = quic[i];
            opts.quic_socket = sockets[i].take();
            opts.peers = (0..3)
                .filter(|&j| j != i)
                .map(|j| Peer {
                    name: NAMES[j].into(),
                    http: http[j],
                    quic: quic[j],
                })
                .collect();
            opts.tls_dir = Some(c._dir.path().join("certs"));
            opts.reconnect_max = Duration::from_millis(100);
            opts.net_faults = faults.clone();
            tune(i, &mut opts);
            let (stop, rx) = oneshot::channel::<()>();
            c.tasks.push(tokio::spawn(serve(opts, listener, async move {
                let _ = rx.await;
            })));
            c.stops.push(stop);
            c.faults.push(faults);
            c.bases.push(format!("http://{}", http[i]));
        }
        for b in &c.bases {
            for _ in 0..200 {
                if c.client
                    .get(format!("{b}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        c
    }

    async fn get(&self, i: usize, path: &str) -> (StatusCode, Value) {
        send(
            self.client
                .get(format!("{}{path}", self.bases[i]))
                .bearer_auth(TOKEN),
        )
        .await
    }

    async fn post(&self, i: usize, path: &str, body: Value) -> (StatusCode, Value) {
        send(
            self.client
                .post(format!("{}{path}", self.bases[i]))
                .bearer_auth(TOKEN)
                .json(&body),
        )
        .await
    }

    async fn patch(&self, i: usize, path: &str, body: Value) -> (StatusCode, Value) {
        send(
            self.client
                .patch(format!("{}{path}", self.bases[i]))
                .bearer_auth(TOKEN)
                .json(&body),
        )
        .await
    }

    /// Cuts region `i` off from the others, both ways.
    fn isolate(&self, i: usize, cut: bool) {
        for (j, f) in self.faults.iter().enumerate() {
            let mut set = f.cut.lock().unwrap();
            let names: Vec<&str> = if j == i {
                NAMES.iter().copied().filter(|n| *n != NAMES[i]).collect()
            } else {
                vec![NAMES[i]]
            };
            for n in names {
                if cut {
                    set.insert(n.to_owned());
                } else {
                    set.remove(n);
                }
            }
        }
    }

    /// Waits until every region's replicated view agrees, and returns it.
    async fn converge(&self, event: &str, within: Duration) -> Value {
        time_to_agree(&self.client, &self.bases, event, within).await;
        replicated_view(&self.client, &self.bases[0], event).await
    }

    async fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }
}

async fn buy(c: &Cluster, i: usize, pool: &str, q: u64) -> StatusCode {
    c.post(
        i,
        "/v1/events/rock/purchases",
        json!({"pool": pool, "quantity": q, "customer": "c", "payment_ref": "p"}),
    )
    .await
    .0
}

fn even_event() -> Value {
    let mut e = event("rock", 300, 30, 600);
    e["allotments"] = json!("even");
    e
}

/// Σ available + Σ (consumed − returned) = capacity, in a converged view.
fn conserved(ledger: &Value, full: &[Value]) {
    for (p, pool) in ledger["pools"].as_array().unwrap().iter().enumerate() {
        let cap = pool["capacity"].as_i64().unwrap();
        let mut total = 0;
        for view in full {
            let r = &view["pools"][p]["regions"];
            let mine = r
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["region"] == view["region"])
                .unwrap();
            total += mine["available"].as_i64().unwrap()
                + mine["held"].as_i64().unwrap()
                + mine["consumed"].as_i64().unwrap()
                - mine["returned"].as_i64().unwrap();
        }
        assert_eq!(total, cap, "conservation in pool {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_sell_and_converge() {
    let c = Cluster::start().await;
    let (s, v) = c.post(0, "/v1/admin/events", even_event()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // The event spreads to every region and sells there.
    for i in 1..3 {
        let start = std::time::Instant::now();
        while c.get(i, "/v1/events/rock").await.0 != StatusCode::OK {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "event did not reach region {i}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for i in 0..3 {
        for _ in 0..5 {
            assert_eq!(buy(&c, i, "floor", 2).await, StatusCode::CREATED);
        }
    }
    let ledger = c.converge("rock", Duration::from_secs(5)).await;
    let consumed: Vec<u64> = (0..3)
        .map(|r| {
            ledger["pools"][0]["regions"][r]["consumed"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(consumed, vec![10, 10, 10]);
    // The cluster view shows every peer connected and, within a few gossip rounds, reporting
    // the version vector everyone converged on.
    let start = std::time::Instant::now();
    loop {
        let (_, cl) = c.get(0, "/v1/admin/cluster").await;
        let peers = cl["peers"].as_array().unwrap();
        let caught_up = peers.iter().all(|p| {
            p["state"] == "connected"
                && p["frames_in"].as_u64().unwrap_or(0) > 0
                && p["version_vectors"]["rock"] == ledger["version_vector"]
                && p["lag_versions"] == 0
        });
        if caught_up {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "peers never reported the converged state: {cl}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Concurrent metadata edits in two regions merge.
    let (s, _) = c
        .patch(1, "/v1/admin/events/rock", json!({"name": "Rock II"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = c
        .patch(2, "/v1/admin/events/rock", json!({"venue": "Stadium"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let start = std::time::Instant::now();
    loop {
        let mut seen = Vec::new();
        for i in 0..3 {
            let (_, e) = c.get(i, "/v1/events/rock").await;
            seen.push((e["name"].clone(), e["venue"].clone()));
        }
        if seen
            .iter()
            .all(|x| *x == (json!("Rock II"), json!("Stadium")))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "metadata did not merge: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another region's order is asked of its owner.
    let (_, o) = c
        .post(
            2,
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 1, "customer": "c", "payment_ref": "p"}),
        )
        .await;
    let (s, got) = c
        .get(
            0,
            &format!("/v1/orders/{}", o["order_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!((s, &got), (StatusCode::OK, &o));
    // And event creation from a non-catalog region goes to the catalog.
    let mut other = even_event();
    other["id"] = json!("jazz");
    let (s, v) = c.post(1, "/v1/admin/events", other).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Each peer's gossip, as monitoring scrapes it from eu-west.
    let m = common::scrape(&c.client, &c.bases[0]).await;
    for peer in ["us-east", "ap-south"] {
        for direction in ["in", "out"] {
            let labels = [("peer", peer), ("direction", direction)];
            assert!(common::value(&m, "allot_gossip_frames_total", &labels) > 0.0);
            assert!(common::value(&m, "allot_gossip_bytes_total", &labels) > 0.0);
        }
        let age = common::value(&m, "allot_peer_last_frame_age_seconds", &[("peer", peer)]);
        assert!(age < 5.0, "{peer}: last frame {age} s ago");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_region_keeps_selling_and_nobody_oversells() {
    // Allotments stay put here, and buyers are not sent elsewhere: each region sells exactly
    // what it was given.
    let c = Cluster::start_with(|_, o| {
        o.rebalance = false;
        o.forwarding = false;
    })
    .await;
    assert_eq!(
        c.post(0, "/v1/admin/events", even_event()).await.0,
        StatusCode::CREATED
    );
    c.converge("rock", Duration::from_secs(5)).await;
    c.isolate(2, true);
    // Everyone sells until sold out locally; the isolated region too.
    let mut sold = [0u64; 3];
    for (i, sold) in sold.iter_mut().enumerate() {
        while buy(&c, i, "floor", 3).await == StatusCode::CREATED {
            *sold += 3;
        }
        while buy(&c, i, "floor", 1).await == StatusCode::CREATED {
            *sold += 1;
        }
    }
    assert_eq!(
        sold,
        [100, 100, 100],
        "each region sells exactly its allotment"
    );
    // The cut-off region has not seen the others' sales.
    let (_, l2) = c.get(2, "/v1/admin/events/rock/ledger").await;
    assert_eq!(l2["pools"][0]["regions"][0]["consumed"], 0);
    let heal = std::time::Instant::now();
    c.isolate(2, false);
    let ledger = c.converge("rock", Duration::from_secs(5)).await;
    eprintln!("converged {:?} after healing", heal.elapsed());
    let mut views = Vec::new();
    for i in 0..3 {
        views.push(c.get(i, "/v1/admin/events/rock/ledger").await.1);
    }
    conserved(&ledger, &views);
    let total: u64 = (0..3)
        .map(|r| {
            ledger["pools"][0]["regions"][r]["consumed"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(total, 300);
    c.stop().await;
}

/// A 60,000-seat stadium fits one create request in the compact notation (the 64 KiB body limit
/// capped a listed seat map at about 7,000 ids), expands to the same genesis everywhere, and
/// reaches every region by gossip; bad notation is a 422 that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60000_seat_stadium_is_created_in_one_request_and_gossiped() {
    let c = Cluster::start().await;
    let mut stadium = event("stadium", 10, 0, 600);
    stadium["pools"][1] = json!({
        "id": "bowl",
        "seat_blocks": [{"rows": {"from": 1, "to": 100}, "from": 1, "to": 400},
                        {"prefix": "U", "rows": ["A", "B", "C", "D", "E"], "from": 1, "to": 4000}],
        "price_cents": 5000
    });
    stadium["allotments"] = json!("even");
    let body = serde_json::to_vec(&stadium).unwrap();
    assert!(body.len() < 1024, "the request is {} bytes", body.len());
    for (bad, why) in [
        (json!([{"rows": ["A"], "from": 5, "to": 1}]), "from > to"),
        (json!([{"rows": [], "from": 1, "to": 10}]), "no rows"),
        (
            json!([{"rows": {"from": 1, "to": 1000}, "from": 1, "to": 1000}]),
            "a million seats",
        ),
        (
            json!([{"rows": {"from": 0, "to": 4294967295u32}, "from": 0, "to": 4294967295u32}]),
            "2^64 seats, which wrapped to 0 before review",
        ),
        (
            json!([{"rows": ["A", "A"], "from": 1, "to": 2}]),
            "a seat twice",
        ),
        (json!([{"rows": ["A b"], "from": 1, "to": 2}]), "a bad id"),
    ] {
        let mut e = stadium.clone();
        e["id"] = json!("bad");
        e["pools"][1]["seat_blocks"] = bad;
        let (s, v) = c.post(0, "/v1/admin/events", e).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{why}: {v}");
        assert_eq!(c.get(0, "/v1/events/bad").await.0, StatusCode::NOT_FOUND);
    }
    let (s, v) = c.post(0, "/v1/admin/events", stadium).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let start = std::time::Instant::now();
    for i in 1..3 {
        while c.get(i, "/v1/events/stadium").await.0 != StatusCode::OK {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "not at region {i}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every region sees the same 60,000 seats, split in contiguous blocks in list order.
    let (s, map) = c.get(2, "/v1/events/stadium/seats?pool=bowl").await;
    assert_eq!(s, StatusCode::OK);
    let seats = map["seats"].as_array().unwrap();
    assert_eq!(seats.len(), 60_000);
    assert_eq!(seats[0]["seat"], "1-1");
    assert_eq!(seats[39_999]["seat"], "100-400");
    assert_eq!(seats[59_999]["seat"], "UE-4000");
    assert_eq!(seats[0]["owner"], "eu-west");
    assert_eq!(seats[20_000]["owner"], "us-east");
    assert_eq!(seats[59_999]["owner"], "ap-south");
    // us-east sells one of its own; eu-west may not sell it.
    let buy = json!({"seats": ["60-1"], "customer": "c", "payment_ref": "p"});
    let (s, v) = c.post(1, "/v1/events/stadium/purchases", buy.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = c.post(0, "/v1/events/stadium/purchases", buy).await;
    assert_eq!(s, StatusCode::CONFLICT);
    c.converge("stadium", Duration::from_secs(10)).await;
    c.stop().await;
}

/// A buyer's hold at one region is confirmed, released and read through the others, and an
/// operator refunds another region's order: every call travels between the regions over
/// their mutual-TLS links, and the operator's token never leaves the region it was shown to
/// (here us-east has no operator token at all, and still refunds its order for eu-west's
/// operator). A client header can no longer pose as a region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_regions_carry_holds_orders_and_refunds_without_the_token() {
    let c = Cluster::start_with(|i, o| {
        if i == 1 {
            o.admin_token = None;
        }
    })
    .await;
    let (s, v) = c.post(0, "/v1/admin/events", even_event()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let start = std::time::Instant::now();
    while c.get(1, "/v1/events/rock").await.0 != StatusCode::OK {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hold = |q: u64| json!({"pool": "floor", "quantity": q, "customer": "c-9"});
    let (s, h) = c.post(1, "/v1/events/rock/holds", hold(2)).await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    let hold_id = h["hold_id"].as_str().unwrap().to_owned();
    assert!(hold_id.starts_with("h-us-east-"));
    // Confirmed through eu-west: the order is us-east's, named by us-east.
    let (s, o) = c
        .post(
            0,
            &format!("/v1/holds/{hold_id}/confirm"),
            json!({"payment_ref": "p-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    assert_eq!(o["region"], "us-east");
    assert_eq!(o["hold_id"], hold_id);
    let order_id = o["order_id"].as_str().unwrap().to_owned();
    // Confirming again anywhere returns the same order.
    let (s, again) = c
        .post(
            2,
            &format!("/v1/holds/{hold_id}/confirm"),
            json!({"payment_ref": "p-1"}),
        )
        .await;
    assert_eq!((s, &again), (StatusCode::CREATED, &o));
    let (s, read) = c.get(2, &format!("/v1/orders/{order_id}")).await;
    assert_eq!((s, &read), (StatusCode::OK, &o));
    // Another hold released through ap-south; its quota is back at us-east at once.
    let (_, h2) = c.post(1, "/v1/events/rock/holds", hold(3)).await;
    let h2 = h2["hold_id"].as_str().unwrap().to_owned();
    let r = c
        .client
        .delete(format!("{}/v1/holds/{h2}", c.bases[2]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, av) = c.get(1, "/v1/events/rock/availability").await;
    assert_eq!(av["pools"][0]["local_available"], 98);
    // us-east has no operator token: its own operator endpoints refuse everyone...
    let (s, _) = c
        .post(1, &format!("/v1/admin/orders/{order_id}/refund"), json!({}))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // ...yet eu-west's operator refunds us-east's order through eu-west.
    let (s, refunded) = c
        .post(0, &format!("/v1/admin/orders/{order_id}/refund"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{refunded}");
    assert_eq!(refunded["status"], "refunded");
    assert_eq!(refunded["region"], "us-east");
    // A client that claims to be a region is just a client.
    let r = c
        .client
        .post(format!("{}/v1/holds/{hold_id}/confirm", c.bases[0]))
        .header("x-allot-proxied", "eu-west")
        .json(&json!({"payment_ref": "p-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // A forged tag on a real number is unknown, asked of its owner.
    let forged = format!(
        "{}000000000000000000000000",
        &order_id[..order_id.len() - 24]
    );
    let (s, v) = c.get(0, &format!("/v1/orders/{forged}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // us-east's ledger endpoint needs a token it does not have: the two others agree, on its
    // row too.
    let others = [c.bases[0].clone(), c.bases[2].clone()];
    let start = std::time::Instant::now();
    loop {
        time_to_agree(&c.client, &others, "rock", Duration::from_secs(5)).await;
        let view = replicated_view(&c.client, &c.bases[0], "rock").await;
        let us_east = &view["pools"][0]["regions"][1];
        if us_east["consumed"] == 2 && us_east["returned"] == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{us_east}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stop().await;
}

/// One buyer's stream at one region: `units` asked for in orders of 1 or 2 (2 every third
/// order), paced at `per_s` units a second; the orders acknowledged.
async fn buyer(c: &Cluster, i: usize, pool: &str, units: u64, per_s: f64) -> Vec<Value> {
    let mut orders = Vec::new();
    let mut asked = 0;
    let mut n = 0u64;
    let start = tokio::time::Instant::now();
    while asked < units {
        n += 1;
        let q = if n.is_multiple_of(3) { 2 } else { 1 }.min(units - asked);
        asked += q;
        let body = json!({"pool": pool, "quantity": q, "customer": format!("c-{i}-{n}"), "payment_ref": "p"});
        let (s, v) = c.post(i, "/v1/events/rock/purchases", body).await;
        match s {
            StatusCode::CREATED => orders.push(v),
            StatusCode::CONFLICT => assert_eq!(v["type"], "urn:allot:problem:sold-out", "{v}"),
            _ => panic!("region {i}: {s} {v}"),
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(asked as f64 / per_s)).await;
    }
    orders
}

/// Demand skewed 70/20/10 against an even split, three times the stock: with no operator
/// action, the regions' rebalancer moves the quiet regions' quota to the busy one, the whole
/// capacity sells, every acknowledged order is there and no seat is sold twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_demand_sells_the_whole_capacity_by_handoffs_alone() {
    let c = Cluster::start().await;
    let (s, v) = c.post(0, "/v1/admin/events", even_event()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    c.converge("rock", Duration::from_secs(5)).await;
    // 300 GA and 30 seats, 100 and 10 per region; 900 and 90 units asked for, 70/20/10,
    // over about five seconds.
    let share = [0.7, 0.2, 0.1];
    let run = |i: usize| {
        let c = &c;
        async move {
            let (floor, stalls) = tokio::join!(
                buyer(c, i, "floor", (900.0 * share[i]) as u64, 180.0 * share[i]),
                buyer(c, i, "stalls", (90.0 * share[i]) as u64, 18.0 * share[i]),
            );
            (floor, stalls)
        }
    };
    let (a, b, d) = tokio::join!(run(0), run(1), run(2));
    let ledger = c.converge("rock", Duration::from_secs(10)).await;
    let mut views = Vec::new();
    for i in 0..3 {
        views.push(c.get(i, "/v1/admin/events/rock/ledger").await.1);
    }
    conserved(&ledger, &views);
    let sold = |p: usize| -> u64 {
        (0..3)
            .map(|r| {
                ledger["pools"][p]["regions"][r]["consumed"]
                    .as_u64()
                    .unwrap()
            })
            .sum()
    };
    assert_eq!(
        (sold(0), sold(1)),
        (300, 30),
        "the whole capacity sells: {ledger}"
    );
    // The busy region sold far beyond its allotment, by quota the others gave it.
    let eu = &ledger["pools"][0]["regions"][0];
    assert!(eu["consumed"].as_u64().unwrap() > 150, "{eu}");
    assert!(eu["granted_in"].as_u64().unwrap() > 50, "{eu}");
    // Every acknowledged order is there, and no seat went twice.
    let (mut floor_units, mut seats) = (0, std::collections::BTreeSet::new());
    for (floor, stalls) in [&a, &b, &d] {
        for o in floor.iter().chain(stalls.iter()) {
            let id = o["order_id"].as_str().unwrap();
            let (s, got) = c.get(0, &format!("/v1/orders/{id}")).await;
            assert_eq!((s, &got), (StatusCode::OK, o));
        }
        floor_units += floor
            .iter()
            .map(|o| o["quantity"].as_u64().unwrap())
            .sum::<u64>();
        for o in stalls {
            for seat in o["seats"].as_array().unwrap() {
                assert!(
                    seats.insert(seat.as_str().unwrap().to_owned()),
                    "{seat} sold twice"
                );
            }
        }
    }
    assert_eq!((floor_units, seats.len()), (300, 30));
    // The handoffs are the rebalancer's, logged where they happened.
    let (_, cl) = c.get(0, "/v1/admin/cluster").await;
    assert!(
        cl["handoffs"]["counters"]["asks_granted"].as_u64().unwrap() > 0,
        "{cl}"
    );
    let log = views[0]["handoffs"].as_array().unwrap();
    assert!(!log.is_empty());
    for h in log {
        assert_ne!(h["reason"], "operator", "{h}");
        assert_eq!(h["to"], "eu-west", "{h}");
    }
    c.stop().await;
}

/// An operator pauses the rebalancer for one event at one region; every region hears it, and
/// a region that runs dry stays dry until it is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_event_keeps_its_allotments_until_resumed() {
    // Without forwarding, eu-west's own sales show its quota exactly.
    let c = Cluster::start_with(|_, o| o.forwarding = false).await;
    assert_eq!(
        c.post(0, "/v1/admin/events", even_event()).await.0,
        StatusCode::CREATED
    );
    c.converge("rock", Duration::from_secs(5)).await;
    let patch = |i: usize, rebalance: Value| {
        c.patch(
            i,
            "/v1/admin/events/rock",
            json!({ "rebalance": rebalance }),
        )
    };
    let (s, v) = patch(2, json!(false)).await;
    assert_eq!((s, &v["rebalance"]), (StatusCode::OK, &json!(false)), "{v}");
    // A value that is not a boolean changes nothing.
    let (s, v) = patch(1, json!("no")).await;
    assert!(s.is_client_error(), "{s} {v}");
    let converged = c.converge("rock", Duration::from_secs(5)).await;
    assert_eq!(converged["rebalance"], false);
    for i in 0..3 {
        assert_eq!(c.get(i, "/v1/events/rock").await.1["rebalance"], false);
    }
    // eu-west sells out its 100 and keeps asking buyers; nothing comes.
    let mut sold = 0;
    while buy(&c, 0, "floor", 2).await == StatusCode::CREATED {
        sold += 2;
    }
    assert_eq!(sold, 100);
    for _ in 0..20 {
        assert_eq!(buy(&c, 0, "floor", 1).await, StatusCode::CONFLICT);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, l) = c.get(0, "/v1/admin/events/rock/ledger").await;
    assert_eq!(l["pools"][0]["regions"][1]["granted_out"], 0, "{l}");
    assert_eq!(l["pools"][0]["regions"][2]["granted_out"], 0, "{l}");
    // Resumed (at another region): quota arrives and eu-west sells again.
    let (s, _) = patch(1, json!(true)).await;
    assert_eq!(s, StatusCode::OK);
    let start = std::time::Instant::now();
    while buy(&c, 0, "floor", 1).await != StatusCode::CREATED {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no quota came after resuming"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, l) = c.get(0, "/v1/admin/events/rock/ledger").await;
    assert_eq!(l["rebalance"], true);
    assert!(!l["handoffs"].as_array().unwrap().is_empty(), "{l}");
    c.stop().await;
}

/// Waits until every region has lately heard every other about `event` (links come up a
/// little after the genesis has spread): a region forwards only to peers it hears.
async fn hear_each_other(c: &Cluster, event: &str) {
    for _ in 0..100 {
        let mut all = true;
        for i in 0..3 {
            let (_, a) = c.get(i, &format!("/v1/events/{event}/availability")).await;
            all &= NAMES.iter().all(|n| {
                a["staleness"]["age_ms"][n]
                    .as_u64()
                    .is_some_and(|ms| ms < 1_000)
            });
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the regions do not hear each other");
}

/// Three regions without a rebalancer (only forwarding sells beyond a region's allotment),
/// the even event everywhere, every region hearing the others.
async fn forwarding_cluster() -> Cluster {
    let c = Cluster::start_with(|_, o| o.rebalance = false).await;
    assert_eq!(
        c.post(0, "/v1/admin/events", even_event()).await.0,
        StatusCode::CREATED
    );
    c.converge("rock", Duration::from_secs(5)).await;
    hear_each_other(&c, "rock").await;
    c
}

/// Sells out eu-west's own quota of the floor (100 of the even event's 300).
async fn sell_out_eu_west(c: &Cluster) {
    let mut sold = 0;
    while sold < 100 && buy(c, 0, "floor", 4).await == StatusCode::CREATED {
        sold += 4;
    }
    assert_eq!(sold, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_without_quota_sells_through_a_peer() {
    let c = forwarding_cluster().await;
    sell_out_eu_west(&c).await;
    let (s, order) = c
        .post(
            0,
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 2, "customer": "c-9", "payment_ref": "p-9"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let seller = order["region"].as_str().unwrap().to_owned();
    assert_ne!(seller, "eu-west", "{order}");
    let id = order["order_id"].as_str().unwrap();
    assert!(id.starts_with(&format!("o-{seller}-")), "{id}");
    // The order is the seller's: read through either region, counted in its row.
    for i in [0, NAMES.iter().position(|n| *n == seller).unwrap()] {
        let (s, got) = c.get(i, &format!("/v1/orders/{id}")).await;
        assert_eq!((s, &got), (StatusCode::OK, &order));
    }
    c.converge("rock", Duration::from_secs(5)).await;
    let mut full = Vec::new();
    for i in 0..3 {
        full.push(c.get(i, "/v1/admin/events/rock/ledger").await.1);
    }
    let regions = &full[0]["pools"][0]["regions"];
    let consumed = |r: &str| {
        regions
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["region"] == r)
            .unwrap()["consumed"]
            .as_i64()
            .unwrap()
    };
    assert_eq!((consumed("eu-west"), consumed(&seller)), (100, 2));
    conserved(&full[0], &full);
    // The origin counts the forward, and its latency, per target.
    let (_, cluster) = c.get(0, "/v1/admin/cluster").await;
    let f = cluster["forwards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["to"] == seller.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{cluster}"));
    assert_eq!(
        (f["sent"].as_u64(), f["served"].as_u64()),
        (Some(1), Some(1)),
        "{f}"
    );
    assert!(f["mean_latency_ms"].as_u64().is_some(), "{f}");
    // The same, for the event, in its ledger at the origin.
    let forwards = full[0]["forwards"].as_array().unwrap();
    assert_eq!(forwards.len(), 1, "{forwards:?}");
    assert_eq!(forwards[0], f);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_hold_for_another_regions_seat_is_placed_by_its_owner() {
    let c = forwarding_cluster().await;
    // Thirty seats in blocks of ten: are us-east's.
    let (s, hold) = c
        .post(
            0,
            "/v1/events/rock/holds",
            json!({"seats": ["A-15", "A-16"], "customer": "c-5"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hold}");
    let hold_id = hold["hold_id"].as_str().unwrap();
    assert!(hold_id.starts_with("h-us-east-"), "{hold_id}");
    let (s, order) = c
        .post(
            0,
            &format!("/v1/holds/{hold_id}/confirm"),
            json!({"payment_ref": "p-5"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    assert_eq!(order["region"], "us-east");
    assert_eq!(order["seats"], json!(["A-15", "A-16"]));
    // The seats show sold wherever one looks, once gossip has carried the order.
    c.converge("rock", Duration::from_secs(5)).await;
    let (_, again) = c
        .post(
            2,
            "/v1/events/rock/holds",
            json!({"seats": ["A-15"], "customer": "c-6"}),
        )
        .await;
    assert_eq!(again["type"], "urn:allot:problem:seat-taken", "{again}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_only_across_a_partition_is_unreachable_not_sold_out() {
    let c = forwarding_cluster().await;
    sell_out_eu_west(&c).await;
    c.isolate(0, true);
    // Past the time a region stays heard from: both peers count as cut off, and the answer
    // comes at once from what eu-west knows (not from a call timing out).
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    let asked = std::time::Instant::now();
    let r = c
        .client
        .post(format!("{}/v1/events/rock/purchases", c.bases[0]))
        .json(&json!({"pool": "floor", "quantity": 1, "customer": "c", "payment_ref": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let (_, body) = read(r).await;
    assert_eq!(
        body["type"], "urn:allot:problem:stock-unreachable",
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("us-east") && detail.contains("ap-south"),
        "{detail}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // Healed, the same request sells through a peer.
    c.isolate(0, false);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = buy(&c, 0, "floor", 1).await;
        if status == StatusCode::CREATED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::CREATED);
    c.stop().await;
}
