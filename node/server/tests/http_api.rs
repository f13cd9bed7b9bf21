//! The HTTP API through a real client against a node on a free loopback port.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buyer_path_end_to_end() {
    let n = TestNode::start().await;
    n.create_event(event("rock-2027", 100, 10, 600)).await;

    let (s, v) = n
        .get("/v1/events?q=rock&from=2027-01-01T00:00:00Z&to=2028-01-01T00:00:00Z")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    let (_, v) = n.get("/v1/events?q=jazz").await;
    assert!(v["events"].as_array().unwrap().is_empty());
    let (_, v) = n.get("/v1/events?from=2028-01-01T00:00:00Z").await;
    assert!(v["events"].as_array().unwrap().is_empty());

    let (s, v) = n.get("/v1/events/rock-2027").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["pools"][0]["local_available"], 100);
    assert_eq!(v["pools"][0]["price_cents"], 8900);

    // Hold, confirm, confirm again.
    let (s, hold) = n
        .post_keyed(
            "/v1/events/rock-2027/holds",
            "h1",
            json!({"pool": "floor", "quantity": 2, "customer": "c-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hold}");
    assert_eq!(hold["price_cents"], 2 * 8900);
    let hold_id = hold["hold_id"].as_str().unwrap().to_owned();
    assert!(hold_id.starts_with("h-eu-west-"));
    let (_, again) = n
        .post_keyed(
            "/v1/events/rock-2027/holds",
            "h1",
            json!({"pool": "floor", "quantity": 2, "customer": "c-1"}),
        )
        .await;
    assert_eq!(again, hold, "the same key and body return the first answer");
    let (_, av) = n.get("/v1/events/rock-2027/availability").await;
    assert_eq!(av["pools"][0]["local_available"], 98);
    let (s, order) = n
        .post(
            &format!("/v1/holds/{hold_id}/confirm"),
            json!({"payment_ref": "pay-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["region"], "eu-west");
    let (_, order2) = n
        .post(
            &format!("/v1/holds/{hold_id}/confirm"),
            json!({"payment_ref": "pay-1"}),
        )
        .await;
    assert_eq!(order2["order_id"], order["order_id"]);

    // Seats: hold two, release, buy one.
    let (s, h2) = n
        .post(
            "/v1/events/rock-2027/holds",
            json!({"seats": ["A-1", "A-2"], "customer": "c-2"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, map) = n.get("/v1/events/rock-2027/seats?pool=stalls").await;
    assert_eq!(map["seats"][0]["state"], "held");
    let r = n
        .client
        .delete(n.url(&format!("/v1/holds/{}", h2["hold_id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (s, bought) = n
        .post(
            "/v1/events/rock-2027/purchases",
            json!({"seats": ["A-1"], "customer": "c-2", "payment_ref": "pay-2"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{bought}");
    assert_eq!(bought["seats"], json!(["A-1"]));
    let (_, map) = n.get("/v1/events/rock-2027/seats?pool=stalls").await;
    assert_eq!(
        (
            map["seats"][0]["state"].as_str(),
            map["seats"][1]["state"].as_str()
        ),
        (Some("sold"), Some("available"))
    );

    let (s, got) = n
        .get(&format!(
            "/v1/orders/{}",
            bought["order_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got, bought);

    // Operators: ledger, orders pages, refund, cluster.
    let (s, l) = n.admin_get("/v1/admin/events/rock-2027/ledger").await;
    assert_eq!(s, StatusCode::OK);
    let eu = &l["pools"][0]["regions"][0];
    assert_eq!(
        (eu["consumed"].as_u64(), eu["available"].as_u64()),
        (Some(2), Some(98))
    );
    let (_, page) = n.admin_get("/v1/admin/orders?limit=1").await;
    assert_eq!(page["orders"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, page2) = n
        .admin_get(&format!("/v1/admin/orders?limit=1&after={next}"))
        .await;
    assert_eq!(page2["orders"][0]["order_id"], bought["order_id"]);
    assert_eq!(page2["next"], Value::Null);
    let (s, refunded) = n
        .admin_post(
            &format!(
                "/v1/admin/orders/{}/refund",
                order["order_id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(refunded["status"], "refunded");
    let (_, av) = n.get("/v1/events/rock-2027/availability").await;
    assert_eq!(av["pools"][0]["local_available"], 100);
    let (s, c) = n.admin_get("/v1/admin/cluster").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c["region"], "eu-west");
    let (s, _) = n.get("/healthz").await;
    assert_eq!(s, StatusCode::OK);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 10, 4, 1)).await;
    let (_, before) = n.admin_get("/v1/admin/events/rock/ledger").await;
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "/v1/events/nope/purchases",
            json!({"pool": "floor", "quantity": 1, "customer": "c", "payment_ref": "p"}),
            StatusCode::NOT_FOUND,
            "unknown-event",
        ),
        (
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 0, "customer": "c", "payment_ref": "p"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        ),
        (
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 1_000_000_000u64, "customer": "c", "payment_ref": "p"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        ),
        (
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": -1, "customer": "c", "payment_ref": "p"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        ),
        (
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 1, "customer": "c"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        ),
        (
            "/v1/events/rock/purchases",
            json!({"pool": "vip", "quantity": 1, "customer": "c", "payment_ref": "p"}),
            StatusCode::NOT_FOUND,
            "unknown-pool",
        ),
        (
            "/v1/events/rock/holds",
            json!({"pool": "floor", "quantity": 1, "customer": "c", "extra": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        ),
        (
            "/v1/events/rock/holds",
            json!({"seats": ["Z-9"], "customer": "c"}),
            StatusCode::NOT_FOUND,
            "unknown-seat",
        ),
        (
            "/v1/events/rock/holds",
            json!({"pool": "floor", "quantity": 11, "customer": "c"}),
            StatusCode::CONFLICT,
            "sold-out",
        ),
        (
            "/v1/holds/h-eu-west-999-000000000000000000000000/confirm",
            json!({"payment_ref": "p"}),
            StatusCode::NOT_FOUND,
            "unknown-hold",
        ),
        // The old, guessable form, and ids naming no region of the cluster: unknown, not 503.
        (
            "/v1/holds/h-eu-west-1/confirm",
            json!({"payment_ref": "p"}),
            StatusCode::NOT_FOUND,
            "unknown-hold",
        ),
        (
            "/v1/holds/h-nosuch-1/confirm",
            json!({"payment_ref": "p"}),
            StatusCode::NOT_FOUND,
            "unknown-hold",
        ),
        (
            "/v1/holds/h-nosuch-1-000000000000000000000000/confirm",
            json!({"payment_ref": "p"}),
            StatusCode::NOT_FOUND,
            "unknown-hold",
        ),
        // Another region's: asked of it, and this node has no link to it.
        (
            "/v1/holds/h-us-east-1-000000000000000000000000/confirm",
            json!({"payment_ref": "p"}),
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        ),
    ];
    for (path, body, status, kind) in cases {
        let (s, v) = n.post(path, body.clone()).await;
        assert_eq!(s, status, "{path} {body} -> {v}");
        assert_eq!(
            v["type"],
            format!("urn:allot:problem:{kind}"),
            "{path} {body}"
        );
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // A transfer of 2^64 - 10 wrapped into new quota before the fix; anything above the
    // pool's capacity is refused.
    for q in [18446744073709551606u64, u64::MAX, 1 << 63, 11] {
        let (s, v) = n
            .admin_post(
                "/v1/admin/events/rock/transfers",
                json!({"pool": "floor", "from": "eu-west", "to": "us-east", "quantity": q}),
            )
            .await;
        assert_eq!(
            (s, v["type"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("urn:allot:problem:invalid-input")
            ),
            "{q}: {v}"
        );
    }
    // Malformed JSON and an oversized body.
    let (s, v) = send(
        n.client
            .post(n.url("/v1/events/rock/holds"))
            .header("content-type", "application/json")
            .body("{\"pool\": "),
    )
    .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("urn:allot:problem:malformed-request")
        )
    );
    // The node answers 413 without reading the rest of the body and closes the connection,
    // so the client may see a reset while it is still sending (a race of the transport, not
    // of the node): it tries again, and some answer must be the 413.
    let mut too_large = None;
    for _ in 0..5 {
        if let Ok(r) = n
            .client
            .post(n.url("/v1/events/rock/holds"))
            .body(vec![b' '; 100_000])
            .send()
            .await
        {
            too_large = Some(r.status());
            break;
        }
    }
    assert_eq!(too_large, Some(StatusCode::PAYLOAD_TOO_LARGE));
    // Wrong or missing operator token.
    assert_eq!(
        send(n.client.get(n.url("/v1/admin/events/rock/ledger")))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            n.client
                .get(n.url("/v1/admin/events/rock/ledger"))
                .bearer_auth("nope")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            n.client
                .post(n.url("/v1/admin/events"))
                .bearer_auth("test-operator-tokeX")
                .json(&event("x", 1, 1, 1))
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    // A reused key with another body.
    let (s, _) = n
        .post_keyed(
            "/v1/events/rock/holds",
            "k",
            json!({"pool": "floor", "quantity": 1, "customer": "c-9"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = n
        .post_keyed(
            "/v1/events/rock/holds",
            "k",
            json!({"pool": "floor", "quantity": 2, "customer": "c-9"}),
        )
        .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("urn:allot:problem:idempotency-mismatch")
        )
    );
    // Creating a known id; an event that does not add up.
    let (s, _) = n
        .admin_post("/v1/admin/events", event("rock", 10, 4, 1))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let mut bad = event("bad", 10, 4, 1);
    bad["allotments"]["floor"]["eu-west"] = json!(9);
    let (s, v) = n.admin_post("/v1/admin/events", bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let mut dup = event("dup", 10, 2, 1);
    dup["pools"][1]["seats"] = json!(["A-1", "A-1"]);
    let (s, _) = n.admin_post("/v1/admin/events", dup).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // Wrong in several ways at once: the first check in the documented order answers
    // (operator token, body size, Idempotency-Key, JSON).
    let big = vec![b' '; 100_000];
    assert_eq!(
        send(n.client.post(n.url("/v1/admin/events")).body(big.clone()))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            n.client
                .post(n.url("/v1/admin/events"))
                .bearer_auth(TOKEN)
                .body(big.clone())
        )
        .await
        .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        send(
            n.client
                .post(n.url("/v1/admin/events"))
                .header("idempotency-key", "two words")
                .body("{")
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(
            n.client
                .post(n.url("/v1/events/rock/holds"))
                .header("idempotency-key", "two words")
                .body(big)
        )
        .await
        .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let (s, v) = send(
        n.client
            .post(n.url("/v1/events/rock/holds"))
            .header("idempotency-key", "two words")
            .body("{\"pool\": "),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Idempotency-Key")),
        "{v}"
    );
    // A refund's body is optional, but when given it is a JSON object.
    for (body, status) in [
        ("nope", StatusCode::BAD_REQUEST),
        ("[1]", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        assert_eq!(
            send(
                n.client
                    .post(n.url("/v1/admin/orders/o-eu-west-1/refund"))
                    .bearer_auth(TOKEN)
                    .body(body)
            )
            .await
            .0,
            status,
            "refund with body {body}"
        );
    }
    // Nothing changed but the one hold.
    let (_, after) = n.admin_get("/v1/admin/events/rock/ledger").await;
    assert_eq!(
        before["pools"][0]["regions"][0]["consumed"],
        after["pools"][0]["regions"][0]["consumed"]
    );
    assert_eq!(after["pools"][0]["regions"][0]["held"], 1);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_expire_are_capped_and_release_quota() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 10, 4, 1)).await;
    let (s, h) = n
        .post(
            "/v1/events/rock/holds",
            json!({"pool": "floor", "quantity": 3, "customer": "c-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, av) = n.get("/v1/events/rock/availability").await;
    assert_eq!(av["pools"][0]["local_available"], 7);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, v) = n
        .post(
            &format!("/v1/holds/{}/confirm", h["hold_id"].as_str().unwrap()),
            json!({"payment_ref": "p"}),
        )
        .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (StatusCode::GONE, Some("urn:allot:problem:hold-expired"))
    );
    let (_, av) = n.get("/v1/events/rock/availability").await;
    assert_eq!(av["pools"][0]["local_available"], 10);
    // The sweep frees holds nobody touches.
    n.post(
        "/v1/events/rock/holds",
        json!({"pool": "floor", "quantity": 4, "customer": "c-2"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, av) = n.get("/v1/events/rock/availability").await;
    assert_eq!(av["pools"][0]["local_available"], 10);
    // Five live holds per customer.
    for _ in 0..5 {
        assert_eq!(
            n.post(
                "/v1/events/rock/holds",
                json!({"pool": "floor", "quantity": 1, "customer": "c-3"})
            )
            .await
            .0,
            StatusCode::CREATED
        );
    }
    let (s, v) = n
        .post(
            "/v1/events/rock/holds",
            json!({"pool": "floor", "quantity": 1, "customer": "c-3"}),
        )
        .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (
            StatusCode::TOO_MANY_REQUESTS,
            Some("urn:allot:problem:hold-limit")
        )
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_buyers_for_fifty_seats() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 1, 50, 600)).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, url) = (n.client.clone(), n.url("/v1/events/rock/purchases"));
        tasks.push(tokio::spawn(async move {
            let body = json!({"pool": "stalls", "quantity": 1, "customer": format!("c-{i}"), "payment_ref": format!("p-{i}")});
            send(client.post(url).json(&body)).await
        }));
    }
    let mut seats = HashSet::new();
    let (mut ok, mut sold_out) = (0, 0);
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            StatusCode::CREATED => {
                ok += 1;
                assert!(
                    seats.insert(v["seats"][0].as_str().unwrap().to_owned()),
                    "seat sold twice: {v}"
                );
            }
            StatusCode::CONFLICT => {
                assert_eq!(v["type"], "urn:allot:problem:sold-out");
                sold_out += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!((ok, sold_out), (50, 150));
    let (_, page) = n.admin_get("/v1/admin/orders?limit=1000").await;
    assert_eq!(page["orders"].as_array().unwrap().len(), 50);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_buyers_for_one_seat() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 1, 5, 600)).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (client, url) = (n.client.clone(), n.url("/v1/events/rock/holds"));
        tasks.push(tokio::spawn(async move {
            send(
                client
                    .post(url)
                    .json(&json!({"seats": ["A-3"], "customer": format!("c-{i}")})),
            )
            .await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        if s == StatusCode::CONFLICT {
            assert_eq!(v["type"], "urn:allot:problem:seat-taken");
        }
        statuses.push(s);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        29
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_clean_restart() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 10, 4, 600)).await;
    let (_, o) = n
        .post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 2, "customer": "c", "payment_ref": "p"}),
        )
        .await;
    let (_, h) = n
        .post_keyed(
            "/v1/events/rock/holds",
            "key-1",
            json!({"seats": ["A-2"], "customer": "c"}),
        )
        .await;
    let dir = n.stop().await;
    let n = TestNode::start_with(|o| o.data_dir = dir.path().join("data")).await;
    let (s, got) = n
        .get(&format!("/v1/orders/{}", o["order_id"].as_str().unwrap()))
        .await;
    assert_eq!((s, &got), (StatusCode::OK, &o));
    let (_, again) = n
        .post_keyed(
            "/v1/events/rock/holds",
            "key-1",
            json!({"seats": ["A-2"], "customer": "c"}),
        )
        .await;
    assert_eq!(again, h, "idempotency keys survive a restart");
    let (_, av) = n.get("/v1/events/rock/availability").await;
    assert_eq!(av["pools"][0]["local_available"], 8);
    // Hold numbers are never reused.
    let (_, h2) = n
        .post(
            "/v1/events/rock/holds",
            json!({"seats": ["A-3"], "customer": "c"}),
        )
        .await;
    assert_ne!(h2["hold_id"], h["hold_id"]);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_wait_for_the_first_answer() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 100, 4, 600)).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, url) = (n.client.clone(), n.url("/v1/events/rock/purchases"));
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"pool": "floor", "quantity": 2, "customer": "c-1", "payment_ref": "p"});
            send(
                client
                    .post(url)
                    .header("Idempotency-Key", "same")
                    .json(&body),
            )
            .await
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, StatusCode::CREATED);
        ids.insert(v["order_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one order for one key");
    let (_, l) = n.admin_get("/v1/admin/events/rock/ledger").await;
    assert_eq!(l["pools"][0]["regions"][0]["consumed"], 2);
    n.stop().await;
}

/// More keyed purchases than the core keeps answers for (4,096), with retries of keys both
/// fresh (still in memory, or in flight) and long evicted (on disk only) racing them: the node
/// reads a new key before it takes the core's lock, and whatever it read, a retry gets its
/// key's first order and never a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_evicted_and_fresh_keys_racing_new_ones_get_their_first_order() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 100_000, 4, 600)).await;
    let (writers, per_writer) = (4u64, 2_000u64);
    let first: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Value>>> =
        Default::default();
    let body = |w: u64, i: u64| json!({"pool": "floor", "quantity": 1, "customer": format!("c-{w}"), "payment_ref": format!("p-{w}-{i}")});
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, url, first) = (
            n.client.clone(),
            n.url("/v1/events/rock/purchases"),
            first.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // This writer's purchase number `i`, under its own key, first time or again.
            let buy = |i: u64| {
                let key = format!("k-{w}-{i}");
                let request = client
                    .post(&url)
                    .header("Idempotency-Key", &key)
                    .json(&body(w, i));
                async move { (key, send(request).await) }
            };
            for i in 0..per_writer {
                let (key, (s, v)) = buy(i).await;
                assert_eq!(s, StatusCode::CREATED, "{v}");
                first.lock().unwrap().insert(key, v);
                // Every tenth purchase, retry this writer's key from 1,500 purchases ago (some
                // 6,000 answers ago, evicted: the node keeps 4,096) and the one just before.
                if i % 10 == 0 {
                    for j in [i.saturating_sub(1_500), i.saturating_sub(1)] {
                        let (key, (s, again)) = buy(j).await;
                        assert_eq!(s, StatusCode::CREATED, "{again}");
                        let was = first
                            .lock()
                            .unwrap()
                            .get(&key)
                            .cloned()
                            .expect("answered before");
                        assert_eq!(
                            again["order_id"], was["order_id"],
                            "key {key} answered twice"
                        );
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let orders = writers * per_writer;
    assert_eq!(first.lock().unwrap().len() as u64, orders);
    let (_, l) = n.admin_get("/v1/admin/events/rock/ledger").await;
    assert_eq!(
        l["pools"][0]["regions"][0]["consumed"], orders,
        "one order per key: {l}"
    );
    // The keys were read before the lock and those reads taken: new keys and evicted ones.
    let (_, c) = n.admin_get("/v1/admin/cluster").await;
    let used = c["memory"]["key_reads_ahead"]["used"]
        .as_u64()
        .expect("counted");
    assert!(used >= orders * 9 / 10, "{}", c["memory"]);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_streams_as_server_sent_events() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 10, 4, 600)).await;
    let mut stream = n
        .client
        .get(n.url("/v1/events/rock/availability/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let mut next_event = async || -> Value {
        loop {
            if let Some(end) = seen.find("\n\n") {
                let frame: String = seen.drain(..end + 2).collect();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                    assert!(frame.contains("event: availability"));
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
                .await
                .expect("an event in time")
                .unwrap()
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    assert_eq!(next_event().await["pools"][0]["local_available"], 10);
    let (s, _) = n
        .post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 3, "customer": "c", "payment_ref": "p"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(next_event().await["pools"][0]["local_available"], 7);
    drop(stream);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_makes_the_node_unready_and_acknowledge_nothing() {
    // The first synced write (the event) succeeds; every later one fails.
    let n = TestNode::start_with(|o| o.faults.fail_sync_after = Some(1)).await;
    n.create_event(event("rock", 10, 4, 600)).await;
    let (s, v) = n
        .post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 1, "customer": "c", "payment_ref": "p"}),
        )
        .await;
    assert_eq!(
        (s, v["type"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("urn:allot:problem:unavailable")
        ),
        "{v}"
    );
    let (s, _) = n.get("/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = n
        .post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 1, "customer": "c", "payment_ref": "p"}),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    // The sales that were not made durable are not readable either (before the fix the
    // order list showed them, and a restart gave their numbers to other buyers).
    let (_, page) = n.admin_get("/v1/admin/orders").await;
    assert_eq!(page["orders"], json!([]), "{page}");
    // After a restart (with a healthy disk) the unacknowledged sale is not there.
    let dir = n.stop().await;
    let n = TestNode::start_with(|o| o.data_dir = dir.path().join("data")).await;
    let (_, av) = n.get("/v1/events/rock/availability").await;
    assert_eq!(av["pools"][0]["local_available"], 10);
    let (_, page) = n.admin_get("/v1/admin/orders").await;
    assert!(page["orders"].as_array().unwrap().is_empty());
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_regions_ids_answer_503_when_it_is_unreachable() {
    let n = TestNode::start_with(|o| {
        o.peers = vec![allot::node::Peer {
            name: "us-east".into(),
            http: "127.0.0.1:1".parse().unwrap(),
            quic: "127.0.0.1:1".parse().unwrap(),
        }];
    })
    .await;
    for (method, path) in [
        ("GET", "/v1/orders/o-us-east-4-000000000000000000000000"),
        (
            "POST",
            "/v1/holds/h-us-east-1-000000000000000000000000/confirm",
        ),
    ] {
        let req = n
            .client
            .request(method.parse().unwrap(), n.url(path))
            .json(&json!({"payment_ref": "p"}));
        let r = req.send().await.unwrap();
        assert_eq!(
            r.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("1".into())
        );
        let (s, v) = read(r).await;
        assert_eq!(
            (s, v["type"].as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("urn:allot:problem:unavailable")
            ),
            "{v}"
        );
        assert!(v["detail"].as_str().unwrap().contains("us-east"));
    }
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_time_and_reopen_an_on_sale() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 10, 4, 600)).await;
    let buy = || {
        n.post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 1, "customer": "c-1", "payment_ref": "p"}),
        )
    };
    let (_, e) = n.get("/v1/events/rock").await;
    assert_eq!(
        (e["sales"].as_str(), e["on_sale_now"].as_bool()),
        (Some("open"), Some(true))
    );

    let (s, e) = n
        .admin_patch("/v1/admin/events/rock", json!({"sales": "paused"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["sales"], "paused");
    let (s, p) = buy().await;
    assert_eq!(s, StatusCode::CONFLICT, "{p}");
    assert_eq!(p["type"], "urn:allot:problem:sales-closed");
    let (s, _) = n
        .post(
            "/v1/events/rock/holds",
            json!({"pool": "floor", "quantity": 1, "customer": "c-2"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, a) = n.get("/v1/events/rock/availability").await;
    assert_eq!(
        a["pools"][0]["local_available"], 10,
        "a refusal takes nothing: {a}"
    );

    // Open, but from a moment ahead of the clock; then with the time removed.
    let (s, e) = n
        .admin_patch(
            "/v1/admin/events/rock",
            json!({"sales": "open", "on_sale_at": "2100-01-01T10:00:00Z"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["on_sale_at"], "2100-01-01T10:00:00Z");
    assert_eq!(e["on_sale_now"], false);
    let (s, p) = buy().await;
    assert_eq!(
        (s, p["type"].as_str()),
        (StatusCode::CONFLICT, Some("urn:allot:problem:sales-closed"))
    );
    let (s, e) = n
        .admin_patch("/v1/admin/events/rock", json!({"on_sale_at": null}))
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert!(e["on_sale_at"].is_null(), "{e}");
    assert_eq!(buy().await.0, StatusCode::CREATED);

    // Bad input: a clear 4xx, nothing changed.
    for bad in [
        json!({"sales": "sold"}),
        json!({"on_sale_at": "tomorrow"}),
        json!({"sales": 1}),
    ] {
        let (s, p) = n.admin_patch("/v1/admin/events/rock", bad.clone()).await;
        assert!(s.is_client_error(), "{bad}: {s} {p}");
    }
    let (_, e) = n.get("/v1/events/rock").await;
    assert_eq!(
        (e["sales"].as_str(), e["on_sale_now"].as_bool()),
        (Some("open"), Some(true))
    );
    // Without the operator's token: 401.
    let (s, _) = send(
        n.client
            .patch(n.url("/v1/admin/events/rock"))
            .json(&json!({"sales": "closed"})),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    n.stop().await;
}
