//! SIGKILL mid-load: every acknowledged order survives, its `Idempotency-Key` replays to the
//! same order (never a second one), nothing is oversold, and the ledger agrees with the orders
//! and holds found after restart.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_no_huge_pages, event, free_port, send, spawn, wait_ready, TOKEN};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_no_acknowledged_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("regions.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nname = \"crash\"\ngossip_interval_ms = 20\n\n\
             [[region]]\nname = \"eu-west\"\nhttp = \"127.0.0.1:{port}\"\nquic = \"127.0.0.1:0\"\ndata_dir = \"data/eu-west\"\n\n\
             [[region]]\nname = \"us-east\"\nhttp = \"127.0.0.1:1\"\nquic = \"127.0.0.1:0\"\ndata_dir = \"data/us-east\"\n"
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new();
    let mut child = spawn(&config, "eu-west");
    wait_ready(&client, &base).await;
    let mut ev = event("rock", 100_000, 300, 600);
    ev["allotments"] = json!({"floor": {"eu-west": 100_000, "us-east": 0}, "stalls": {"eu-west": 300, "us-east": 0}});
    let (s, v) = send(
        client
            .post(format!("{base}/v1/admin/events"))
            .bearer_auth(TOKEN)
            .json(&ev),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Each acknowledged purchase: its key, its body, and the order it was answered with.
    let acked: Arc<Mutex<Vec<(String, Value, Value)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (client, base, acked) = (client.clone(), base.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let body = if i % 3 == 0 {
                    json!({"pool": "stalls", "quantity": 1, "customer": format!("c-{w}"), "payment_ref": format!("p-{w}-{i}")})
                } else {
                    json!({"pool": "floor", "quantity": 1 + i % 3, "customer": format!("c-{w}"), "payment_ref": format!("p-{w}-{i}")})
                };
                let key = format!("k-{w}-{i}");
                let r = client.post(format!("{base}/v1/events/rock/purchases")).header("Idempotency-Key", &key).json(&body).send().await;
                match r {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let Ok(order) = r.json::<Value>().await else { return };
                        acked.lock().unwrap().push((key, body, order));
                    }
                    Ok(r) if r.status() == StatusCode::CONFLICT => {}
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the load should have made progress before the kill ({} orders)",
        acked.len()
    );

    let mut child = spawn(&config, "eu-west");
    wait_ready(&client, &base).await;
    for (_, _, o) in &acked {
        let id = o["order_id"].as_str().unwrap();
        let (s, got) = send(client.get(format!("{base}/v1/orders/{id}"))).await;
        assert_eq!(s, StatusCode::OK, "acknowledged order {id} lost");
        assert_eq!(&got, o);
    }
    // A buyer whose answer was lost retries with the same key: every acknowledged purchase
    // replays to the order it was answered with. (The listing below then checks that no
    // replay sold again: one order per payment_ref.)
    for (key, body, o) in &acked {
        let (s, got) = send(
            client
                .post(format!("{base}/v1/events/rock/purchases"))
                .header("Idempotency-Key", key)
                .json(body),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "replay of {key}: {got}");
        assert_eq!(&got, o, "replay of {key} answered another order");
    }
    // Every order on disk, acknowledged or not, agrees with the ledger.
    let (_, page) = send(
        client
            .get(format!("{base}/v1/admin/orders?limit=1000"))
            .bearer_auth(TOKEN),
    )
    .await;
    let mut orders: Vec<Value> = page["orders"].as_array().unwrap().clone();
    let mut next = page["next"].clone();
    while let Some(c) = next.as_str() {
        let (_, p) = send(
            client
                .get(format!("{base}/v1/admin/orders?limit=1000&after={c}"))
                .bearer_auth(TOKEN),
        )
        .await;
        orders.extend(p["orders"].as_array().unwrap().iter().cloned());
        next = p["next"].clone();
    }
    assert!(orders.len() >= acked.len());
    let mut payments = HashSet::new();
    for o in &orders {
        let payment = o["payment_ref"].as_str().unwrap();
        assert!(
            payments.insert(payment),
            "{payment} sold twice (a replayed key)"
        );
    }
    eprintln!(
        "{} orders acknowledged before SIGKILL, {} on disk after restart",
        acked.len(),
        orders.len()
    );
    let (_, ledger) = send(
        client
            .get(format!("{base}/v1/admin/events/rock/ledger"))
            .bearer_auth(TOKEN),
    )
    .await;
    let mut seats = HashSet::new();
    for (p, pool) in ["floor", "stalls"].iter().enumerate() {
        let sold: u64 = orders
            .iter()
            .filter(|o| o["pool"] == *pool && o["status"] == "confirmed")
            .map(|o| o["quantity"].as_u64().unwrap())
            .sum();
        let eu = &ledger["pools"][p]["regions"][0];
        let capacity = ledger["pools"][p]["capacity"].as_u64().unwrap();
        assert!(sold <= capacity, "oversold {pool}");
        assert_eq!(
            eu["consumed"].as_u64().unwrap() - eu["returned"].as_u64().unwrap(),
            sold,
            "{pool}: ledger and orders disagree"
        );
        assert_eq!(
            eu["available"].as_u64().unwrap(),
            eu["initial"].as_u64().unwrap() - sold - eu["held"].as_u64().unwrap(),
            "{pool}"
        );
    }
    for o in orders.iter().filter(|o| o["pool"] == "stalls") {
        for s in o["seats"].as_array().unwrap() {
            assert!(
                seats.insert(s.as_str().unwrap().to_owned()),
                "seat {s} sold twice"
            );
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_writes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("regions.toml");
    std::fs::write(
        &config,
        format!("[cluster]\nname = \"term\"\n\n[[region]]\nname = \"eu-west\"\nhttp = \"127.0.0.1:{port}\"\nquic = \"127.0.0.1:0\"\ndata_dir = \"data\"\n"),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = Client::new();
    let mut child = spawn(&config, "eu-west");
    wait_ready(&client, &base).await;
    assert_no_huge_pages(child.id());
    let (s, _) = send(
        client
            .post(format!("{base}/v1/admin/events"))
            .bearer_auth(TOKEN)
            .json(&event("rock", 100_000, 1, 600)),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let acked: Arc<Mutex<Vec<Value>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (client, base, acked) = (client.clone(), base.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let body = json!({"pool": "floor", "quantity": 1, "customer": "c", "payment_ref": format!("p-{w}-{i}")});
                match client.post(format!("{base}/v1/events/rock/purchases")).json(&body).send().await {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let Ok(o) = r.json::<Value>().await else { return };
                        acked.lock().unwrap().push(o);
                    }
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "allot node exits 0 on SIGTERM, got {status}"
    );
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let mut child = spawn(&config, "eu-west");
    wait_ready(&client, &base).await;
    for o in &acked {
        let (s, got) = send(client.get(format!(
            "{base}/v1/orders/{}",
            o["order_id"].as_str().unwrap()
        )))
        .await;
        assert_eq!((s, &got), (StatusCode::OK, o));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
