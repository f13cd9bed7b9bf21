#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use allot::node::{serve, NodeOptions};
use prometheus_parse::{Scrape, Value as Sample};
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

    pub async fn admin_patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(
            self.client
                .patch(self.url(path))
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node process, killed when dropped: a test that fails half-way leaves no orphan behind
/// (an orphan holds the test's output pipe, and the CI job with it, open).
pub struct NodeProcess(Child);

impl Deref for NodeProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for NodeProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl From<Child> for NodeProcess {
    fn from(child: Child) -> NodeProcess {
        NodeProcess(child)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts an `allot node` process for `region` of the cluster in `config`.
pub fn spawn(config: &std::path::Path, region: &str) -> NodeProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "node",
            "--config",
            config.to_str().unwrap(),
            "--region",
            region,
        ])
        .env("ALLOT_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start allot node");
    NodeProcess(child)
}

/// The node turns transparent huge pages off for itself (a fault on a fresh huge page stalled
/// a request handler for milliseconds; docs/benchmarks.md). Kernels before 5.0 do not report it.
pub fn assert_no_huge_pages(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}

pub async fn wait_ready(client: &Client, base: &str) {
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("node did not become ready");
}

/// `n` QUIC sockets bound on loopback, to hand to nodes, and their addresses: bound before
/// any node starts, so no port changes hands between choosing it and using it.
pub fn bound_udp(n: usize) -> (Vec<Option<std::net::UdpSocket>>, Vec<std::net::SocketAddr>) {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
    (sockets.into_iter().map(Some).collect(), addrs)
}

pub fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The replicated part of a region's ledger view of `event` (rows and version vector, without
/// the figures local to the region), or `Null` if the region cannot answer.
pub async fn replicated_view(client: &Client, base: &str, event: &str) -> Value {
    let (s, mut l) = send(
        client
            .get(format!("{base}/v1/admin/events/{event}/ledger"))
            .bearer_auth(TOKEN),
    )
    .await;
    if s != StatusCode::OK {
        return Value::Null;
    }
    for p in l["pools"].as_array_mut().unwrap() {
        for r in p["regions"].as_array_mut().unwrap() {
            let o = r.as_object_mut().unwrap();
            for local in ["held", "available", "held_age_ms", "sale_rate_per_min"] {
                o.remove(local);
            }
        }
    }
    // Each region's own: its name, the handoffs it took part in and the sales it forwarded.
    for own in ["region", "handoffs", "forwards"] {
        l.as_object_mut().unwrap().remove(own);
    }
    l
}

/// Polls every region's replicated view of `event` until all agree; the time that took.
pub async fn time_to_agree(
    client: &Client,
    bases: &[String],
    event: &str,
    give_up: Duration,
) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let mut views = Vec::new();
        for b in bases {
            views.push(replicated_view(client, b, event).await);
        }
        if views.iter().all(|v| *v == views[0] && !v.is_null()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < give_up,
            "no agreement within {give_up:?}: {views:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `GET /metrics` of the node at `base`, parsed as Prometheus text.
pub async fn scrape(client: &Client, base: &str) -> Scrape {
    let r = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// The value of the one sample named `name` whose labels include `labels`.
pub fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            Sample::Histogram(b) => b.last().map_or(0.0, |b| b.count),
            Sample::Summary(_) => f64::NAN,
        })
        .collect();
    match found.as_slice() {
        [v] => *v,
        [] => panic!("no sample {name} {labels:?}"),
        many => panic!("{name} {labels:?}: {} samples", many.len()),
    }
}
