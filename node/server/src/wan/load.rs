//! The WAN's buyers: an open-loop load per region (latency from each purchase's due time,
//! as in `bench`), each region's buyers at their own address of the design under test. An
//! answer is classed as a local sale, a forwarded sale (the order names another region as
//! its seller), a sold-out, or a failure. With `retry`, a buyer does what a careful front
//! end does: the same `Idempotency-Key` again after a 503, a timeout or a broken connection,
//! until an answer or a minute has passed. Every acknowledged order is kept for the audit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};

use crate::bench::{connect, Load, Sender, Slots};

/// One region's buyers.
pub struct Buyers {
    pub region: usize,
    /// Where they buy: their own region's node, or the central design (maybe via the relay).
    pub target: SocketAddr,
    pub rate: f64,
}

pub struct LoadSpec {
    pub event: String,
    /// Purchase `i` buys from `pools[i % pools.len()]`.
    pub pools: Vec<String>,
    pub seconds: f64,
    pub retry: bool,
    /// Prefix of the idempotency keys (and payment references), unique per run.
    pub tag: String,
}

/// An order a buyer was told is theirs (a 201).
#[derive(Clone, Debug)]
pub struct Acked {
    pub key: String,
    pub order_id: String,
    pub seller: String,
    pub quantity: u64,
}

/// What one region's buyers saw.
pub struct RegionOutcome {
    pub due: u64,
    pub local: Histogram<u64>,
    pub forwarded: Histogram<u64>,
    pub sold_out: Histogram<u64>,
    /// Failures by kind (status and problem type, or the transport error).
    pub failed: BTreeMap<String, u64>,
    pub retries: u64,
    pub acked: Vec<Acked>,
}

/// A latency histogram: 1 µs to 10 minutes, three significant digits.
pub(super) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

impl RegionOutcome {
    fn new() -> anyhow::Result<RegionOutcome> {
        Ok(RegionOutcome {
            due: 0,
            local: histogram()?,
            forwarded: histogram()?,
            sold_out: histogram()?,
            failed: BTreeMap::new(),
            retries: 0,
            acked: Vec::new(),
        })
    }

    fn add(&mut self, o: RegionOutcome) -> anyhow::Result<()> {
        self.due += o.due;
        self.local.add(&o.local)?;
        self.forwarded.add(&o.forwarded)?;
        self.sold_out.add(&o.sold_out)?;
        for (k, v) in o.failed {
            *self.failed.entry(k).or_default() += v;
        }
        self.retries += o.retries;
        self.acked.extend(o.acked);
        Ok(())
    }

    /// Sales, local and forwarded together.
    pub fn sales(&self) -> anyhow::Result<Histogram<u64>> {
        let mut h = self.local.clone();
        h.add(&self.forwarded)?;
        Ok(h)
    }

    /// Every answer a buyer could act on: sales and sold-outs.
    pub fn answers(&self) -> anyhow::Result<Histogram<u64>> {
        let mut h = self.sales()?;
        h.add(&self.sold_out)?;
        Ok(h)
    }

    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// Runs every region's buyers at once; one outcome per entry of `buyers`.
pub async fn run(
    names: &[String],
    buyers: &[Buyers],
    spec: &LoadSpec,
) -> anyhow::Result<Vec<RegionOutcome>> {
    let secs = spec.seconds;
    let spec = Arc::new(LoadSpecShared {
        event: spec.event.clone(),
        pools: spec.pools.clone(),
        retry: spec.retry,
        tag: spec.tag.clone(),
    });
    // Every connection first, then the clock: no region's buyers start while another's are
    // still connecting, and a failed connect leaves nothing running.
    let mut senders = Vec::new();
    for b in buyers {
        let mut region = Vec::new();
        for _ in 0..connections(b.rate) {
            region.push(connect_in_time(b.target).await?);
        }
        senders.push(region);
    }
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(secs);
    let mut regions = Vec::new();
    for (b, region) in buyers.iter().zip(senders) {
        let load = Load {
            start,
            measured_from: start,
            end,
            interval: Duration::from_secs_f64(1.0 / b.rate.max(0.001)),
            tick: Duration::from_micros(500),
            idempotency_keys: true,
        };
        let (pacer, slots) = load.spawn_pacer("wan-pacer")?;
        let mut tasks = Vec::new();
        for sender in region {
            let buyer = Buyer {
                region: names[b.region].clone(),
                target: b.target,
                spec: spec.clone(),
            };
            tasks.push(tokio::spawn(buyer.run(Some(sender), slots.clone())));
        }
        regions.push((pacer, tasks));
    }
    let mut out = Vec::new();
    for (pacer, tasks) in regions {
        let mut total = RegionOutcome::new()?;
        for t in tasks {
            total.add(t.await??)?;
        }
        let _ = pacer.join();
        out.push(total);
    }
    Ok(out)
}

/// Connections for one region's buyers: enough for its rate at half-second answers (the
/// farthest round trip to a central store, and some queueing there), so the generator's
/// pool is rarely what queues them; at most 256, the node's admission places (more would
/// measure its shedding, the overload part's subject, and cost the one-thread generator
/// more than it measures: 1,024 made every design's p99 worse).
fn connections(rate: f64) -> usize {
    ((rate * 0.5).ceil() as usize).clamp(16, 256)
}

struct LoadSpecShared {
    event: String,
    pools: Vec<String>,
    retry: bool,
    tag: String,
}

struct Buyer {
    region: String,
    target: SocketAddr,
    spec: Arc<LoadSpecShared>,
}

/// What one attempt came to.
enum Answer {
    Sold {
        order_id: String,
        seller: String,
    },
    SoldOut,
    /// Worth the same key again (503, timeout, broken connection), after this long.
    Retry(Duration, String),
    Failed(String),
}

/// How long a buyer waits for one answer before trying again (with `retry`) or giving up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after its due time a buyer keeps retrying one purchase.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

impl Buyer {
    async fn run(self, mut sender: Option<Sender>, slots: Slots) -> anyhow::Result<RegionOutcome> {
        let mut out = RegionOutcome::new()?;
        loop {
            let next = slots.lock().await.recv().await;
            let Some((i, due)) = next else {
                return Ok(out);
            };
            out.due += 1;
            let key = format!("{}-{}-{i}", self.spec.tag, self.region);
            let pool = &self.spec.pools[i as usize % self.spec.pools.len()];
            // Not `i % 2`: that would tie each quantity to one pool.
            let quantity = 1 + (i / 2) % 2;
            let body = format!(
                r#"{{"pool":"{pool}","quantity":{quantity},"customer":"c-{}-{}","payment_ref":"{key}"}}"#,
                self.region,
                i % 500
            );
            let answer = loop {
                let answer = self.attempt(&mut sender, &key, &body).await;
                match answer {
                    Answer::Retry(after, why) if self.spec.retry => {
                        if due.elapsed() > GIVE_UP_AFTER {
                            break Answer::Failed(format!("gave up: {why}"));
                        }
                        out.retries += 1;
                        tokio::time::sleep(after).await;
                    }
                    Answer::Retry(_, why) => break Answer::Failed(why),
                    other => break other,
                }
            };
            let us = (due.elapsed().as_micros() as u64).max(1);
            match answer {
                Answer::Sold { order_id, seller } => {
                    if seller == self.region {
                        out.local.saturating_record(us);
                    } else {
                        out.forwarded.saturating_record(us);
                    }
                    out.acked.push(Acked {
                        key,
                        order_id,
                        seller,
                        quantity,
                    });
                }
                Answer::SoldOut => out.sold_out.saturating_record(us),
                Answer::Failed(why) | Answer::Retry(_, why) => {
                    *out.failed.entry(why).or_default() += 1
                }
            }
        }
    }

    async fn attempt(&self, sender: &mut Option<Sender>, key: &str, body: &str) -> Answer {
        let pause = Duration::from_millis(100);
        let ready = match sender.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut s = match ready {
            Some(s) => s,
            None => match connect_in_time(self.target).await {
                Ok(s) => s,
                Err(e) => return Answer::Retry(pause, format!("connect: {}", short(&e))),
            },
        };
        let request = hyper::Request::post(format!("/v1/events/{}/purchases", self.spec.event))
            .header(hyper::header::HOST, self.target.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from(body.to_owned())));
        let Ok(request) = request else {
            return Answer::Failed("building the request".into());
        };
        let sent = tokio::time::timeout(ANSWER_TIMEOUT, async {
            let r = s.send_request(request).await?;
            let status = r.status();
            let retry_after = r
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = r.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, retry_after, body))
        })
        .await;
        let (status, retry_after, body) = match sent {
            Ok(Ok(answer)) => answer,
            // The connection may still carry the old request: drop it, retry on a new one.
            Ok(Err(e)) => return Answer::Retry(pause, format!("transport: {}", short(&e))),
            Err(_) => return Answer::Retry(Duration::ZERO, "timeout".into()),
        };
        *sender = Some(s);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let kind = json["type"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("urn:allot:problem:")
            .to_owned();
        match status.as_u16() {
            201 => match (json["order_id"].as_str(), json["region"].as_str()) {
                (Some(id), seller) => Answer::Sold {
                    order_id: id.to_owned(),
                    // The central design names no region: its one store sold it.
                    seller: seller.unwrap_or(&self.region).to_owned(),
                },
                (None, _) => Answer::Failed("201 without an order_id".into()),
            },
            409 if kind == "sold-out" => Answer::SoldOut,
            503 => Answer::Retry(
                Duration::from_secs(retry_after.unwrap_or(1)).min(Duration::from_secs(1)),
                format!("503 {kind}"),
            ),
            code => Answer::Failed(format!("{code} {kind}")),
        }
    }
}

/// How long a buyer waits for a connection: a paused node's full accept queue would
/// otherwise hold a connect for the kernel's SYN retries, outside [`ANSWER_TIMEOUT`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

async fn connect_in_time(target: SocketAddr) -> anyhow::Result<Sender> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect(target))
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out"))?
}

/// The first line of an error chain, for a failure's kind.
fn short(e: &anyhow::Error) -> String {
    let s = e.to_string();
    s.chars().take(60).collect()
}
