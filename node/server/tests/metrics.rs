//! `GET /metrics`: Prometheus text that a real parser reads, whose counters move with sales.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_sales() {
    let n = TestNode::start().await;
    n.create_event(event("rock", 10, 4, 600)).await;
    let before = scrape(&n.client, &n.base).await;
    assert_eq!(value(&before, "allot_ready", &[]), 1.0);
    assert_eq!(value(&before, "allot_events", &[]), 1.0);
    let purchases = ("route", "/v1/events/:event/purchases");

    for i in 0..3 {
        let (s, v) = n
            .post(
                "/v1/events/rock/purchases",
                json!({"pool": "floor", "quantity": 2, "customer": format!("c-{i}"), "payment_ref": "p"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, hold) = n
        .post(
            "/v1/events/rock/holds",
            json!({"pool": "floor", "quantity": 1, "customer": "c-9"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hold}");
    let id = hold["hold_id"].as_str().unwrap();
    let r = n
        .client
        .delete(n.url(&format!("/v1/holds/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Two refusals: more than is left, and a malformed body.
    let (s, _) = n
        .post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 9, "customer": "c-1", "payment_ref": "p"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = n
        .post("/v1/events/rock/purchases", json!({"pool": 7}))
        .await;
    assert!(s.is_client_error());

    let after = scrape(&n.client, &n.base).await;
    assert_eq!(
        value(&after, "allot_sales_total", &[("operation", "purchase")]),
        3.0
    );
    assert_eq!(
        value(&after, "allot_sales_total", &[("operation", "hold")]),
        1.0
    );
    assert_eq!(
        value(&after, "allot_sales_total", &[("operation", "release")]),
        1.0
    );
    assert_eq!(
        value(&after, "allot_rejections_total", &[("kind", "sold-out")]),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "allot_http_requests_total",
            &[purchases, ("status", "201")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "allot_http_requests_total",
            &[purchases, ("status", "409")]
        ),
        1.0
    );
    // Every request to the route is timed, under the route's pattern (never a raw path).
    assert_eq!(
        value(
            &after,
            "allot_http_request_duration_seconds_count",
            &[purchases]
        ),
        5.0
    );
    assert!(!after
        .samples
        .iter()
        .any(|x| x.labels.get("route").is_some_and(|r| r.contains(id))));
    // The writer synced the sales in batches of at least one record.
    let syncs = value(&after, "allot_commit_sync_seconds_count", &[]);
    let batches = value(&after, "allot_commit_batch_records_count", &[]);
    assert!(
        syncs >= 1.0 && syncs == batches,
        "{syncs} syncs, {batches} batches"
    );
    assert!(
        value(&after, "allot_durable_record_index", &[])
            > value(&before, "allot_durable_record_index", &[])
    );
    n.stop().await;
}
