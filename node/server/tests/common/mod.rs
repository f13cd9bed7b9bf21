#![allow(dead_code)]

use std::time::Duration;

use allot::node::{serve, NodeOptions};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const TOKEN: &str = "test-operator-token";

pub struct TestNode {
    pub base: String,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub dir: tempfile::TempDir,
}

pub fn regions() -> Vec<String> {
    ["eu-west", "us-east", "ap-south"]
        .map(String::from)
        .to_vec()
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut NodeOptions)) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().unwrap();
        let mut opts = NodeOptions::local(
            "eu-west",
            &regions(),
            addr,
            dir.path().join("data"),
            Some(TOKEN.into()),
        );
        opts.tick = Duration::from_millis(20);
        tune(&mut opts);
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(opts, listener, async move {
            let _ = rx.await;
        }));
        let node = TestNode {
            base: format!("http://{addr}"),
            client: Client::new(),
            stop: Some(stop),
            task: Some(task),
            dir,
        };
        node.wait_ready().await;
        node
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("node did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.client.get(self.url(path))).await
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        send(self.client.get(self.url(path)).bearer_auth(TOKEN)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.client.post(self.url(path)).json(&body)).await
    }

    pub async fn post_keyed(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        send(
            self.client
                .post(self.url(path))
                .header("Idempotency-Key", key)
                .json(&body),
        )
        .await
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(
            self.client
                .post(self.url(path))
                .bearer_auth(TOKEN)
                .json(&body),
        )
        .await
    }

    pub async fn create_event(&self, body: Value) {
        let (s, v) = self.admin_post("/v1/admin/events", body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
}

/// Sends a request and reads its answer.
pub async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    read(req.send().await.unwrap()).await
}

/// The answer's status and JSON body; an error must be `application/problem+json`.
pub async fn read(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    if status.is_client_error() || status.is_server_error() {
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert_eq!(
            ct, "application/problem+json",
            "errors are problem+json (status {status})"
        );
    }
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

/// The sample event: GA `floor` of `ga`, assigned `stalls` A-1..A-`seats`, all owned by eu-west.
pub fn event(id: &str, ga: u64, seats: usize, ttl: u64) -> Value {
    let seat_ids: Vec<String> = (1..=seats).map(|i| format!("A-{i}")).collect();
    json!({
        "id": id, "name": "Rock Night", "description": "An evening of rock", "venue": "Arena",
        "lat": 52.5, "lon": 13.4, "starts_at": "2027-06-01T19:00:00Z", "currency": "EUR", "hold_ttl_s": ttl,
        "pools": [
            {"id": "floor", "capacity": ga, "price_cents": 8900},
            {"id": "stalls", "seats": seat_ids, "price_cents": 12900}
        ],
        "allotments": {
            "floor": {"eu-west": ga},
            "stalls": {"eu-west": seats}
        }
    })
}
