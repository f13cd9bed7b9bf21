//! Prometheus metrics (`GET /metrics`, open): what an operator's monitoring scrapes.
//!
//! Two kinds, so the hot path pays only for the first:
//! - counted as things happen: HTTP requests and their latency by route, rejections by
//!   problem kind, sales by operation (a middleware around the router), and the group
//!   commit's batch sizes and sync times (the writer thread);
//! - read at scrape time from what the node already keeps: gossip frames and bytes per peer
//!   and the time since the last one (the transport's status), each peer's lag in versions,
//!   handoffs, forwards, gatherings, the durable record index and readiness (the core, read
//!   under its lock once per scrape).
//!
//! Names follow Prometheus' conventions (`allot_` prefix, `_total` counters, base units); the
//! alerts docs/operations.md suggests use them.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use allot_node::{ForwardStats, GatherStats, HandoffCounters};
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerDirection {
    peer: String,
    direction: &'static str,
}

/// The problem kind of a refused request, left on its response for the middleware to count.
#[derive(Clone, Copy, Debug)]
pub struct ProblemKind(pub &'static str);

/// The group commit's figures, fed by the writer thread.
#[derive(Clone, Debug)]
pub struct CommitMetrics {
    /// Records per synced write.
    pub batch_records: Histogram,
    /// Time of one synced write (RocksDB write with its fsync).
    pub sync_seconds: Histogram,
}

impl CommitMetrics {
    fn new() -> CommitMetrics {
        CommitMetrics {
            batch_records: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            sync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

/// One peer as the scrape reads it.
#[derive(Clone, Debug, Default)]
pub struct PeerFigures {
    pub region: String,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub refused_frames: u64,
    /// Since the last frame from it; `None` before the first.
    pub last_frame_age_ms: Option<u64>,
    /// Versions of its rows this region has that it has not acknowledged, over all events.
    pub lag_versions: u64,
}

/// What the scrape reads from the core and the transport, once per scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ready: bool,
    pub durable_index: u64,
    pub events: u64,
    pub peers: Vec<PeerFigures>,
    pub handoffs: HandoffCounters,
    pub forwards: Vec<(String, ForwardStats)>,
    pub gathers: GatherStats,
}

#[derive(Debug, Default)]
struct SnapshotCollector(Mutex<Snapshot>);

pub struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteOnly, Histogram>,
    rejections: Family<KindLabel, Counter>,
    sales: Family<OperationLabel, Counter>,
    pub commit: CommitMetrics,
    snapshot: Arc<SnapshotCollector>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("allot");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let latency = Family::<RouteOnly, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route",
            latency.clone(),
        );
        let rejections = Family::<KindLabel, Counter>::default();
        registry.register(
            "rejections",
            "Requests refused, by problem kind (docs/http-api.md)",
            rejections.clone(),
        );
        let sales = Family::<OperationLabel, Counter>::default();
        registry.register(
            "sales",
            "Buyers' operations answered with success here: purchase, hold, confirm, release, \
             refund (a retried key's repeated answer counts again)",
            sales.clone(),
        );
        let commit = CommitMetrics::new();
        registry.register(
            "commit_batch_records",
            "Records per synced write (group commit)",
            commit.batch_records.clone(),
        );
        registry.register(
            "commit_sync_seconds",
            "Time of one synced write",
            commit.sync_seconds.clone(),
        );
        let snapshot = Arc::new(SnapshotCollector::default());
        registry.register_collector(Box::new(snapshot.clone()));
        Arc::new(Metrics {
            registry,
            requests,
            latency,
            rejections,
            sales,
            commit,
            snapshot,
        })
    }

    /// Counts one answered request.
    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64, kind: Option<&str>) {
        let labels = RouteLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        let route_only = RouteOnly {
            method: labels.method,
            route: labels.route,
        };
        self.latency.get_or_create(&route_only).observe(seconds);
        if let Some(kind) = kind {
            self.rejections
                .get_or_create(&KindLabel {
                    kind: kind.to_owned(),
                })
                .inc();
        }
        if (200..300).contains(&status) {
            if let Some(operation) = operation(method, route) {
                self.sales
                    .get_or_create(&OperationLabel { operation })
                    .inc();
            }
        }
    }

    /// The text a scrape gets, with `snapshot` as the figures read at scrape time.
    pub fn render(&self, snapshot: Snapshot) -> String {
        *self.snapshot.0.lock().expect("metrics snapshot") = snapshot;
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// A route's pattern as a label: `/v1/holds/{hold}` becomes `/v1/holds/:hold`. Braces are
/// legal in a label value, but some scrapers' parsers stop a label set at the first `}`.
fn route_label(pattern: &str) -> String {
    pattern
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => format!(":{param}"),
                None => seg.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// The buyer's operation a successful request on `route` was.
fn operation(method: &str, route: &str) -> Option<&'static str> {
    Some(match (method, route) {
        ("POST", "/v1/events/:event/purchases") => "purchase",
        ("POST", "/v1/events/:event/holds") => "hold",
        ("POST", "/v1/holds/:hold/confirm") => "confirm",
        ("DELETE", "/v1/holds/:hold") => "release",
        ("POST", "/v1/admin/orders/:order/refund") => "refund",
        _ => return None,
    })
}

/// The middleware: times and counts every request by its route (the pattern, never the raw
/// path, so ids do not multiply the series).
pub async fn track(metrics: Arc<Metrics>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    // A route layer runs only once a route matched (unknown paths and methods never reach it,
    // so a client cannot make up series).
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(String::new, |p| route_label(p.as_str()));
    let response = next.run(req).await;
    let kind = response.extensions().get::<ProblemKind>().map(|k| k.0);
    metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
        kind,
    );
    response
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One series per peer (or per peer and direction), each with its value.
fn per_peer<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(L, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(first) = series.first() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, first.1.metric_type())?;
    for (labels, metric) in &series {
        metric.encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().map_err(|_| std::fmt::Error)?.clone();
        gauge(
            &mut e,
            "ready",
            "1 while the node makes writes durable and answers, 0 once a synced write failed",
            i64::from(s.ready),
        )?;
        gauge(
            &mut e,
            "durable_record_index",
            "The last record the store has synced",
            s.durable_index as i64,
        )?;
        gauge(
            &mut e,
            "events",
            "Events this region knows",
            s.events as i64,
        )?;
        let peer = |p: &PeerFigures| PeerLabel {
            peer: p.region.clone(),
        };
        let both = |p: &PeerFigures, inward: u64, outward: u64| {
            [("in", inward), ("out", outward)].map(|(direction, v)| {
                (
                    PeerDirection {
                        peer: p.region.clone(),
                        direction,
                    },
                    ConstCounter::new(v),
                )
            })
        };
        per_peer(
            &mut e,
            "gossip_frames",
            "Frames (gossip, calls and answers) to and from each peer",
            s.peers
                .iter()
                .flat_map(|p| both(p, p.frames_in, p.frames_out))
                .collect(),
        )?;
        per_peer(
            &mut e,
            "gossip_bytes",
            "Bytes of frames to and from each peer",
            s.peers
                .iter()
                .flat_map(|p| both(p, p.bytes_in, p.bytes_out))
                .collect(),
        )?;
        per_peer(
            &mut e,
            "gossip_refused_frames",
            "Frames from each peer refused (malformed, another wire version)",
            s.peers
                .iter()
                .map(|p| (peer(p), ConstCounter::new(p.refused_frames)))
                .collect(),
        )?;
        per_peer(
            &mut e,
            "peer_lag_versions",
            "Row versions this region has that the peer has not acknowledged",
            s.peers
                .iter()
                .map(|p| (peer(p), ConstGauge::new(p.lag_versions as i64)))
                .collect(),
        )?;
        per_peer(
            &mut e,
            "peer_last_frame_age_seconds",
            "Time since the last frame from the peer (absent before the first)",
            s.peers
                .iter()
                .filter_map(|p| {
                    let ms = p.last_frame_age_ms?;
                    Some((peer(p), ConstGauge::new(ms as f64 / 1000.0)))
                })
                .collect(),
        )?;
        let h = s.handoffs;
        for (name, help, v) in [
            (
                "handoff_asks_sent",
                "Quota asks this region sent",
                h.asks_sent,
            ),
            (
                "handoff_asks_granted",
                "Asks granted to this region",
                h.asks_granted,
            ),
            (
                "handoff_asks_refused",
                "Asks refused by their donor",
                h.asks_refused,
            ),
            (
                "handoff_asks_lost",
                "Asks not answered in time",
                h.asks_lost,
            ),
            (
                "handoff_asks_served",
                "Asks this region granted",
                h.asks_served,
            ),
            (
                "handoff_units_received",
                "Units of quota received",
                h.units_received,
            ),
            (
                "handoff_units_given",
                "Units of quota given away",
                h.units_given,
            ),
        ] {
            counter(&mut e, name, help, v)?;
        }
        let fwd = |f: fn(&ForwardStats) -> u64| {
            s.forwards
                .iter()
                .map(|(to, st)| (PeerLabel { peer: to.clone() }, ConstCounter::new(f(st))))
                .collect::<Vec<_>>()
        };
        per_peer(
            &mut e,
            "forwards_sent",
            "Buyers' requests forwarded to each region",
            fwd(|f| f.sent),
        )?;
        per_peer(
            &mut e,
            "forwards_served",
            "Forwarded requests the target answered with a hold or an order",
            fwd(|f| f.served),
        )?;
        per_peer(
            &mut e,
            "forwards_refused",
            "Forwarded requests the target refused",
            fwd(|f| f.refused),
        )?;
        per_peer(
            &mut e,
            "forwards_lost",
            "Forwarded requests not answered in time, or never sent for want of a link",
            fwd(|f| f.lost),
        )?;
        per_peer(
            &mut e,
            "forwards_latency_seconds_sum",
            "Total time of the answered forwards (with forwards_served + forwards_refused: the mean)",
            s.forwards
                .iter()
                .map(|(to, st)| {
                    let seconds = st.latency_ms_total as f64 / 1000.0;
                    (PeerLabel { peer: to.clone() }, ConstCounter::new(seconds))
                })
                .collect(),
        )?;
        let g = s.gathers;
        counter(
            &mut e,
            "gathers_started",
            "Requests no one region could cover, gathered from several",
            g.started,
        )?;
        counter(
            &mut e,
            "gathers_complete",
            "Gatherings that got every part",
            g.complete,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_labelled_by_pattern_without_braces() {
        assert_eq!(
            route_label("/v1/holds/{hold}/confirm"),
            "/v1/holds/:hold/confirm"
        );
        assert_eq!(route_label("/metrics"), "/metrics");
        assert_eq!(
            operation("DELETE", &route_label("/v1/holds/{hold}")),
            Some("release")
        );
        assert_eq!(operation("GET", &route_label("/v1/holds/{hold}")), None);
    }
}
