//! Overload: past its limit of buyers' writes in flight a node refuses the excess at once with
//! 503 `overloaded` and `Retry-After`, before it costs a synced write; every admitted purchase
//! is kept, nothing refused is sold, and a refused key retried later gets exactly one order.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const LIMIT: usize = 4;

async fn sold(n: &TestNode) -> u64 {
    let (_, l) = n.admin_get("/v1/admin/events/rock/ledger").await;
    l["pools"][0]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["consumed"].as_u64().unwrap() - r["returned"].as_u64().unwrap())
        .sum()
}

async fn buy(
    client: &reqwest::Client,
    n: &TestNode,
    i: usize,
) -> (StatusCode, Option<String>, Value) {
    let r = client
        .post(n.url("/v1/events/rock/purchases"))
        .header("Idempotency-Key", format!("k-{i}"))
        .json(&json!({"pool": "floor", "quantity": 1, "customer": format!("c-{i}"), "payment_ref": format!("p-{i}")}))
        .send()
        .await
        .unwrap();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status(), retry_after, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_limit_a_node_sheds_writes_early_and_loses_none_it_took() {
    let n = TestNode::start_with(|o| {
        o.max_in_flight = LIMIT;
        // A slow disk: every synced write takes 100 ms, so 40 buyers at once overlap.
        o.faults.switch.set(Duration::from_millis(100), false);
    })
    .await;
    n.create_event(event("rock", 1_000, 1, 600)).await;
    let client = reqwest::Client::new();

    let answers = futures_util::future::join_all((0..40).map(|i| buy(&client, &n, i))).await;
    let mut taken = Vec::new();
    let mut shed = Vec::new();
    for (i, (status, retry_after, body)) in answers.into_iter().enumerate() {
        match status {
            StatusCode::CREATED => taken.push((i, body["order_id"].as_str().unwrap().to_owned())),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["type"], "urn:allot:problem:overloaded", "{body}");
                assert_eq!(retry_after.as_deref(), Some("1"));
                shed.push(i);
            }
            other => panic!("purchase {i}: {other} {body}"),
        }
    }
    assert!(
        taken.len() >= LIMIT,
        "at least the limit is admitted: {}",
        taken.len()
    );
    assert!(
        !shed.is_empty(),
        "40 at once against a limit of {LIMIT}: some are shed"
    );

    // Every admitted purchase is an order; nothing shed was sold.
    for (_, id) in &taken {
        let (s, o) = n.get(&format!("/v1/orders/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{o}");
    }
    assert_eq!(sold(&n).await, taken.len() as u64);
    let scraped = scrape(&n.client, &n.base).await;
    assert_eq!(
        value(
            &scraped,
            "allot_rejections_total",
            &[("kind", "overloaded")]
        ),
        shed.len() as f64,
        "each shed write is counted"
    );

    // A shed key retried once the rush is over: one order, the same on a second retry.
    for &i in &shed {
        let (s, _, first) = buy(&client, &n, i).await;
        assert_eq!(s, StatusCode::CREATED, "{first}");
        let (s, _, again) = buy(&client, &n, i).await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(again["order_id"], first["order_id"]);
    }
    assert_eq!(sold(&n).await, 40);
    n.stop().await;
}
