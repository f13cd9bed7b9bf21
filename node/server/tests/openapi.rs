//! `GET /openapi.json`: every route is in it, each route in it is served, and real answers —
//! successes and problems — validate against the schemas it gives for them.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Every route the router serves, kept by hand beside `http::router`: the spec must list
/// exactly these, and each must be served (neither the fallback's 404 nor a 405).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/events"),
    ("get", "/v1/events/{event}"),
    ("get", "/v1/events/{event}/availability"),
    ("get", "/v1/events/{event}/availability/stream"),
    ("get", "/v1/events/{event}/seats"),
    ("post", "/v1/events/{event}/holds"),
    ("post", "/v1/events/{event}/purchases"),
    ("post", "/v1/holds/{hold}/confirm"),
    ("delete", "/v1/holds/{hold}"),
    ("get", "/v1/orders/{order}"),
    ("post", "/v1/admin/events"),
    ("patch", "/v1/admin/events/{event}"),
    ("get", "/v1/admin/events/{event}/ledger"),
    ("post", "/v1/admin/events/{event}/transfers"),
    ("get", "/v1/admin/orders"),
    ("post", "/v1/admin/orders/{order}/refund"),
    ("get", "/v1/admin/cluster"),
    ("get", "/dashboard"),
    ("post", "/dashboard/login"),
    ("post", "/dashboard/logout"),
    ("get", "/dashboard/stream"),
    ("get", "/dashboard/live.js"),
    ("get", "/dashboard/events/{event}"),
    ("get", "/dashboard/events/{event}/stream"),
    ("post", "/dashboard/events/{event}/sales"),
    ("get", "/dashboard/cluster"),
    ("get", "/dashboard/cluster/stream"),
];

/// Checks `body` against the schema the spec gives for `method path` answering `status`: the
/// whole spec is the schema's root (so its `#/components/...` references resolve) with a
/// `$ref` to that response's schema.
fn check(spec: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let errors = errors(spec, method, path, status, body);
    assert!(
        errors.is_empty(),
        "{method} {path} {status}: {errors:?}\n{body:#}"
    );
}

fn errors(spec: &Value, method: &str, path: &str, status: StatusCode, body: &Value) -> Vec<String> {
    let pointer = format!(
        "/paths/{}/{method}/responses/{}/content",
        path.replace('~', "~0").replace('/', "~1"),
        status.as_u16()
    );
    let content = spec
        .pointer(&pointer)
        .unwrap_or_else(|| panic!("{method} {path}: no {status} in the spec"));
    let (media, _) = content.as_object().unwrap().iter().next().unwrap();
    let mut root = spec.clone();
    let fragment = format!(
        "{pointer}/{}/schema",
        media.replace('~', "~0").replace('/', "~1")
    );
    // A URI fragment: the braces of path templates are percent-encoded there.
    root["$ref"] = json!(format!(
        "#{}",
        fragment.replace('{', "%7B").replace('}', "%7D")
    ));
    let validator = jsonschema::validator_for(&root).expect("a valid JSON Schema");
    validator.iter_errors(body).map(|e| e.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_covers_every_route_and_real_answers_validate_against_it() {
    let n = TestNode::start().await;
    let (s, spec) = n.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    // OpenAPI wants every operationId unique (scripts/api-fuzz.sh validates the whole document
    // against the OpenAPI 3.1 schema too).
    let mut ids: Vec<&str> = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "operationIds repeat: {ids:?}");
    let mut listed: Vec<(String, String)> = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            listed.push((method.clone(), path.clone()));
        }
    }
    listed.sort();
    let mut routes: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    routes.sort();
    assert_eq!(listed, routes);
    // Each is served: nothing answers the router's fallback.
    for (method, path) in ROUTES {
        if path.ends_with("/stream") {
            continue; // it stays open
        }
        let url = n.url(
            &path
                .replace("{event}", "none")
                .replace("{hold}", "h")
                .replace("{order}", "o"),
        );
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = n
            .client
            .request(m, url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_ne!(
            body["type"], "urn:allot:problem:not-found",
            "{method} {path}: {status}"
        );
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }

    n.create_event(event("rock", 10, 4, 600)).await;
    let buyer = [
        ("get", "/v1/events", "/v1/events?q=rock"),
        ("get", "/v1/events/{event}", "/v1/events/rock"),
        (
            "get",
            "/v1/events/{event}/availability",
            "/v1/events/rock/availability",
        ),
        (
            "get",
            "/v1/events/{event}/seats",
            "/v1/events/rock/seats?pool=stalls",
        ),
        ("get", "/healthz", "/healthz"),
        ("get", "/readyz", "/readyz"),
    ];
    for (method, path, url) in buyer {
        let (s, v) = n.get(url).await;
        check(&spec, method, path, s, &v);
    }
    let (s, hold) = n
        .post(
            "/v1/events/rock/holds",
            json!({"seats": ["A-1"], "customer": "c-1"}),
        )
        .await;
    check(&spec, "post", "/v1/events/{event}/holds", s, &hold);
    let id = hold["hold_id"].as_str().unwrap();
    let (s, order) = n
        .post(
            &format!("/v1/holds/{id}/confirm"),
            json!({"payment_ref": "p-1"}),
        )
        .await;
    check(&spec, "post", "/v1/holds/{hold}/confirm", s, &order);
    let (s, bought) = n
        .post(
            "/v1/events/rock/purchases",
            json!({"pool": "floor", "quantity": 2, "customer": "c-2", "payment_ref": "p-2"}),
        )
        .await;
    check(&spec, "post", "/v1/events/{event}/purchases", s, &bought);
    let oid = bought["order_id"].as_str().unwrap();
    let (s, v) = n.get(&format!("/v1/orders/{oid}")).await;
    check(&spec, "get", "/v1/orders/{order}", s, &v);
    // The check can fail: an order missing its id, or with a status the API never gives.
    let mut wrong = v.clone();
    wrong.as_object_mut().unwrap().remove("order_id");
    assert!(!errors(&spec, "get", "/v1/orders/{order}", s, &wrong).is_empty());
    let mut wrong = v.clone();
    wrong["status"] = json!("lost");
    assert!(!errors(&spec, "get", "/v1/orders/{order}", s, &wrong).is_empty());
    // Problems: refused purchases, unknown things, bad input, no token.
    let refusals = [
        json!({"pool": "floor", "quantity": 99, "customer": "c", "payment_ref": "p"}),
        json!({"pool": "floor", "quantity": 1, "customer": "c"}),
        json!({"pool": "nope", "quantity": 1, "customer": "c", "payment_ref": "p"}),
        json!({"seats": ["A-1"], "customer": "c", "payment_ref": "p"}),
    ];
    for body in refusals {
        let (s, v) = n.post("/v1/events/rock/purchases", body).await;
        assert!(s.is_client_error(), "{s} {v}");
        check(&spec, "post", "/v1/events/{event}/purchases", s, &v);
    }
    let (s, v) = n.get("/v1/orders/o-eu-west-9-nothing").await;
    check(&spec, "get", "/v1/orders/{order}", s, &v);
    let (s, v) = send(n.client.get(n.url("/v1/admin/events/rock/ledger"))).await;
    check(&spec, "get", "/v1/admin/events/{event}/ledger", s, &v);

    // Operators.
    let (s, v) = n.admin_get("/v1/admin/events/rock/ledger").await;
    check(&spec, "get", "/v1/admin/events/{event}/ledger", s, &v);
    let (s, v) = n.admin_get("/v1/admin/orders?event=rock&limit=1").await;
    check(&spec, "get", "/v1/admin/orders", s, &v);
    let (s, v) = n
        .admin_patch("/v1/admin/events/rock", json!({"sales": "paused"}))
        .await;
    check(&spec, "patch", "/v1/admin/events/{event}", s, &v);
    let (s, v) = n
        .admin_post(&format!("/v1/admin/orders/{oid}/refund"), json!({}))
        .await;
    check(&spec, "post", "/v1/admin/orders/{order}/refund", s, &v);
    let (s, v) = n
        .admin_post(
            "/v1/admin/events/rock/transfers",
            json!({"pool": "floor", "from": "eu-west", "to": "us-east", "quantity": 1}),
        )
        .await;
    check(&spec, "post", "/v1/admin/events/{event}/transfers", s, &v);
    let (s, v) = n.admin_get("/v1/admin/cluster").await;
    check(&spec, "get", "/v1/admin/cluster", s, &v);
    n.stop().await;
}
