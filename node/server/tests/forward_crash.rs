//! A forwarded sale across a crash, on three `allot node` processes: the region the buyer
//! asked is SIGKILLed after it forwarded the purchase and before it answered; the buyer's
//! retry of the same key at the restarted region yields exactly one order, the seller's.

mod common;

use std::time::Duration;

use common::{free_port, free_udp, send, spawn, wait_ready, NodeProcess, TOKEN};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const NAMES: [&str; 3] = ["eu-west", "us-east", "ap-south"];

fn signal(p: &NodeProcess, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &p.id().to_string()])
        .status()
        .expect("kill(1)")
        .success();
    assert!(ok, "kill {sig}");
}

/// Units of the floor pool region `seller` sold, as `base` sees it.
async fn consumed(client: &Client, base: &str, seller: &str) -> i64 {
    let (s, l) = send(
        client
            .get(format!("{base}/v1/admin/events/rock/ledger"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{l}");
    l["pools"][0]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == seller)
        .unwrap()["consumed"]
        .as_i64()
        .unwrap()
}

/// Waits until `base` has lately heard `peer` about the event: it forwards only to peers it
/// hears.
async fn hears(client: &Client, base: &str, peer: &str) {
    for _ in 0..200 {
        let (_, a) = send(client.get(format!("{base}/v1/events/rock/availability"))).await;
        if a["staleness"]["age_ms"][peer]
            .as_u64()
            .is_some_and(|ms| ms < 500)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{base} does not hear {peer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_origin_mid_forward_then_a_retry_yields_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let regions: Vec<String> = NAMES.map(String::from).to_vec();
    allot::tls::generate(&regions, &dir.path().join("certs")).unwrap();
    let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut toml = "[cluster]\nname = \"forward-crash\"\ngossip_interval_ms = 20\n\
                    reconnect_max_ms = 100\ntls_dir = \"certs\"\nrebalance = false\n\
                    forwarding = true\n"
        .to_owned();
    for (i, name) in NAMES.iter().enumerate() {
        toml += &format!(
            "\n[[region]]\nname = \"{name}\"\nhttp = \"127.0.0.1:{}\"\nquic = \"{}\"\n\
             data_dir = \"data/{name}\"\n",
            http[i],
            free_udp()
        );
    }
    let config = dir.path().join("regions.toml");
    std::fs::write(&config, toml).unwrap();
    let bases: Vec<String> = http
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let client = Client::new();
    let mut nodes: Vec<NodeProcess> = NAMES.iter().map(|n| spawn(&config, n)).collect();
    for b in &bases {
        wait_ready(&client, b).await;
    }
    // All of the floor is us-east's: eu-west must forward every purchase there.
    let mut ev = common::event("rock", 10, 2, 600);
    ev["allotments"] = json!({
        "floor": {"eu-west": 0, "us-east": 10, "ap-south": 0},
        "stalls": {"eu-west": 0, "us-east": 2, "ap-south": 0}
    });
    let (s, v) = send(
        client
            .post(format!("{}/v1/admin/events", bases[0]))
            .bearer_auth(TOKEN)
            .json(&ev),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    hears(&client, &bases[0], "us-east").await;

    // us-east is paused: the forwarded call waits in its socket. eu-west records the
    // forward, sends it, and dies before any answer can come.
    signal(&nodes[1], "-STOP");
    let purchase = json!({"pool": "floor", "quantity": 3, "customer": "c-1", "payment_ref": "p-1"});
    let first = {
        let (client, url, body) = (
            client.clone(),
            format!("{}/v1/events/rock/purchases", bases[0]),
            purchase.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .header("Idempotency-Key", "k-crash")
                .json(&body)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    nodes[0].kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    nodes[0].wait().unwrap();
    let first = first.await.unwrap();
    assert!(
        first.is_err() || first.as_ref().is_ok_and(|s| s.is_server_error()),
        "the buyer was not told of an order: {first:?}"
    );
    // us-east wakes up. The call may have reached it (then it sold, and its answer found no
    // one) or died with the link (a paused peer's connection may time out): either is an
    // outcome the retry must cope with.
    signal(&nodes[1], "-CONT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now ap-south has more of the floor than us-east: a retry that forgot where its key
    // went would be sold there (a second order, if us-east sold the first call).
    let (s, t) = send(
        client
            .post(format!("{}/v1/admin/events/rock/transfers", bases[1]))
            .bearer_auth(TOKEN)
            .json(&json!({"pool": "floor", "from": "us-east", "to": "ap-south", "quantity": 6})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    nodes[0] = spawn(&config, "eu-west");
    wait_ready(&client, &bases[0]).await;
    hears(&client, &bases[0], "us-east").await;
    hears(&client, &bases[0], "ap-south").await;

    let retry = |client: Client| {
        let url = format!("{}/v1/events/rock/purchases", bases[0]);
        let body = purchase.clone();
        async move {
            send(
                client
                    .post(url)
                    .header("Idempotency-Key", "k-crash")
                    .json(&body),
            )
            .await
        }
    };
    let (s, order) = retry(client.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    assert_eq!(order["region"], "us-east", "{order}");
    let id = order["order_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("o-us-east-"), "{id}");
    let (s, again) = retry(client.clone()).await;
    assert_eq!((s, &again), (StatusCode::CREATED, &order), "the same order");
    // Exactly one order of three places, in us-east's own books and as eu-west sees them.
    for _ in 0..100 {
        if consumed(&client, &bases[0], "us-east").await == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(consumed(&client, &bases[1], "us-east").await, 3);
    assert_eq!(consumed(&client, &bases[0], "us-east").await, 3);
    assert_eq!(
        consumed(&client, &bases[2], "ap-south").await,
        0,
        "no second order"
    );
    let (s, read): (StatusCode, Value) = send(
        client
            .get(format!("{}/v1/orders/{id}", bases[0]))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!((s, &read), (StatusCode::OK, &order));
    drop(nodes);
}
