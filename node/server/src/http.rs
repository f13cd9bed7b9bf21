//! The region-local HTTP API (docs/http-api.md): parsing, auth and problem details around
//! the core. Every answer about state comes from the core's thread; every write is answered
//! only once durable.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use allot_crdt::{Allotments, PoolKind};
use allot_node::{Command, EventSpec, GrantAmount, IdempotencyKey, Outcome, PoolInput, Want};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::driver::CoreHandle;
use crate::extract::{parse, Keyed, Operator, Posted};
use crate::problem::Problem;
use crate::views;

pub const MAX_BODY: usize = 64 * 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AppState {
    pub core: CoreHandle,
    pub region: String,
    pub admin_token: Option<String>,
    pub transport: Option<Arc<std::sync::Mutex<BTreeMap<String, crate::transport::PeerStatus>>>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub sessions: crate::dashboard::Sessions,
    pub history: crate::dashboard::SaleHistory,
    pub admission: crate::admission::Admission,
    /// Set only through `POST /v1/admin/faults`, which only a `fault-switch` build has.
    pub sync_switch: Arc<crate::driver::SyncSwitch>,
}

type St = State<Arc<AppState>>;
type ApiResult = Result<Response, Problem>;

pub fn router(state: Arc<AppState>) -> Router {
    let routes = Router::new();
    #[cfg(feature = "fault-switch")]
    let routes = crate::fault_switch::routes(routes);
    routes
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/readyz", get(readyz))
        .route("/v1/events", get(list_events))
        .route("/v1/events/{event}", get(event_detail))
        .route("/v1/events/{event}/availability", get(availability))
        .route(
            "/v1/events/{event}/availability/stream",
            get(availability_stream),
        )
        .route("/v1/events/{event}/seats", get(seats))
        .route("/v1/events/{event}/holds", post(create_hold))
        .route("/v1/events/{event}/purchases", post(purchase))
        .route("/v1/holds/{hold}/confirm", post(confirm))
        .route("/v1/holds/{hold}", delete(release))
        .route("/v1/orders/{order}", get(get_order))
        .route("/v1/admin/events", post(create_event))
        .route(
            "/v1/admin/events/{event}",
            axum::routing::patch(patch_event),
        )
        .route("/v1/admin/events/{event}/ledger", get(ledger))
        .route("/v1/admin/events/{event}/transfers", post(transfer))
        .route("/v1/admin/orders", get(list_orders))
        .route("/v1/admin/orders/{order}/refund", post(refund))
        .route("/v1/admin/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(crate::dashboard::show))
        .route("/dashboard/login", post(crate::dashboard::login))
        .route("/dashboard/logout", post(crate::dashboard::logout))
        .route("/dashboard/stream", get(crate::dashboard::stream))
        .route("/dashboard/live.js", get(crate::dashboard::live_js))
        .route("/dashboard/events/{event}", get(crate::dashboard::event))
        .route(
            "/dashboard/events/{event}/stream",
            get(crate::dashboard::event_stream),
        )
        .route(
            "/dashboard/events/{event}/sales",
            post(crate::dashboard::set_sales),
        )
        .route("/dashboard/cluster", get(crate::dashboard::cluster))
        .route(
            "/dashboard/cluster/stream",
            get(crate::dashboard::cluster_stream),
        )
        .route_layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(15),
        ))
        // After routing, so requests are counted by their route's pattern; around the
        // timeout, so a request it cuts short is counted too.
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            |State(m): State<Arc<crate::metrics::Metrics>>, req, next| {
                crate::metrics::track(m, req, next)
            },
        ))
        .fallback(|| async { Problem::not_found("not-found", "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

// ----- plumbing -------------------------------------------------------------------------------

async fn call(
    s: &AppState,
    key: Option<IdempotencyKey>,
    command: Command,
) -> Result<Outcome, Problem> {
    call_render(s, key, command, |_, o| o).await
}

/// Sends a command and renders its outcome on the core's thread once durable.
async fn call_render<T: Send + 'static>(
    s: &AppState,
    key: Option<IdempotencyKey>,
    command: Command,
    render: fn(&allot_node::Core, Outcome) -> T,
) -> Result<T, Problem> {
    // A read of durable state needs no durable write: an unready node still answers it.
    let write = !matches!(command, Command::ReadOrder { .. });
    if write && !s.core.is_ready() {
        return Err(Problem::unavailable(
            "this node cannot make writes durable and accepts none",
        ));
    }
    // Buyers' writes are admitted up to the node's limit; past it, refused before they cost
    // anything (operators' edits are few and always taken).
    let admitted = match &command {
        Command::Hold { .. }
        | Command::Purchase { .. }
        | Command::Confirm { .. }
        | Command::Release { .. } => Some(s.admission.admit()?),
        _ => None,
    };
    // The place is held until the core answers (not until this caller stops waiting), so
    // the limit bounds what the core has in hand.
    let answer = s.core.call_render(key, command, move |core, reply| {
        drop(admitted);
        reply.map(|o| render(core, o))
    });
    match tokio::time::timeout(CALL_TIMEOUT, answer).await {
        Ok(Some(Ok(outcome))) => Ok(outcome),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(None) if !s.core.is_ready() => Err(Problem::unavailable(
            "a synced write failed: this node acknowledges nothing until restarted",
        )),
        Ok(None) => Err(Problem::unavailable("the node is shutting down")),
        Err(_) => Err(Problem::unavailable(
            "the write was not made durable in time",
        )),
    }
}

/// An operator's edit of an event's metadata, from the dashboard's forms.
pub(crate) async fn patch(
    s: &AppState,
    event: String,
    patch: allot_crdt::MetaPatch,
) -> Result<(), Problem> {
    call(s, None, Command::PatchEvent { event, patch })
        .await
        .map(|_| ())
}

fn read<T>(s: &AppState, f: impl FnOnce(&allot_node::Core) -> T) -> Result<T, Problem> {
    s.core
        .read(f)
        .ok_or_else(|| Problem::unavailable("the node's core has stopped"))
}

fn created(v: Value) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// A hold or order as a response body (see [`views::sale_body`]).
struct SaleBody(Vec<u8>);

impl IntoResponse for SaleBody {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

fn order_view(core: &allot_node::Core, o: Outcome) -> SaleBody {
    SaleBody(views::sale_body(core, &o))
}

fn created_sale(body: SaleBody) -> Response {
    (StatusCode::CREATED, body).into_response()
}

// ----- health ---------------------------------------------------------------------------------

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "monitoring",
    responses(
        (status = 200, description = "The process answers", body = crate::openapi::Health),
    ),
)]
pub(crate) async fn healthz() -> Json<crate::openapi::Health> {
    Json(crate::openapi::Health {
        status: "ok",
        region: None,
    })
}

/// This API as OpenAPI 3.1 (see `openapi.rs`).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "monitoring",
    responses(
        (status = 200, description = "This document", body = Object),
    ),
)]
pub(crate) async fn openapi() -> Response {
    use utoipa::OpenApi;
    // Built once: it never changes while the binary runs.
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        crate::openapi::ApiDoc::openapi()
            .to_json()
            .unwrap_or_default()
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.as_str(),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "monitoring",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::Health),
        (status = 503, description = "A synced write failed: this node acknowledges nothing until restarted", body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn readyz(State(s): St) -> Response {
    if s.core.is_ready() {
        Json(crate::openapi::Health {
            status: "ready",
            region: Some(s.region.clone()),
        })
        .into_response()
    } else {
        Problem::unavailable(
            "a synced write failed or the core stopped: this node acknowledges nothing until restarted",
        )
        .into_response()
    }
}

// ----- buyers ---------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    from: Option<String>,
    to: Option<String>,
    q: Option<String>,
}

fn parse_time(field: &str, v: &str) -> Result<OffsetDateTime, Problem> {
    OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
        Problem::invalid(format!(
            "{field}: an RFC 3339 time, like 2027-06-01T19:00:00Z"
        ))
    })
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "buyers",
    params(ListQuery),
    responses(
        (status = 200, description = "Events by start time", body = crate::views::EventList),
        (status = 422, response = inline(crate::openapi::Invalid)),
    ),
)]
pub(crate) async fn list_events(
    State(s): St,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| Problem::invalid(e.body_text()))?;
    let from = q
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?;
    let to = q.to.as_deref().map(|v| parse_time("to", v)).transpose()?;
    let text = q.q.map(|t| t.to_lowercase());
    if text.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(Problem::invalid("q: at most 200 characters"));
    }
    let events = read(&s, move |core| {
        let mut out: Vec<(String, views::EventSummary)> = core
            .events()
            .filter(|e| {
                let starts = OffsetDateTime::parse(&e.info.starts_at, &Rfc3339).ok();
                let in_range = from.is_none_or(|f| starts.is_some_and(|t| t >= f))
                    && to.is_none_or(|f| starts.is_some_and(|t| t < f));
                let matches = text.as_ref().is_none_or(|t| {
                    [
                        e.id.as_ref(),
                        e.info.name.as_str(),
                        e.info.venue.as_str(),
                        e.info.description.as_str(),
                    ]
                    .iter()
                    .any(|f| f.to_lowercase().contains(t))
                });
                in_range && matches
            })
            .map(|e| (e.info.starts_at.clone(), views::summary(e)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, v)| v).collect::<Vec<_>>()
    })?;
    Ok(Json(views::EventList { events }).into_response())
}

fn unknown_event(event: &str) -> Problem {
    Problem::not_found("unknown-event", format!("no event {event:?}"))
}

#[utoipa::path(
    get,
    path = "/v1/events/{event}",
    tag = "buyers",
    params(("event" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "The event, with this region's availability", body = crate::views::EventDetail),
        (status = 404, response = inline(crate::openapi::NotFound)),
    ),
)]
pub(crate) async fn event_detail(State(s): St, Path(event): Path<String>) -> ApiResult {
    let ev = event.clone();
    let v = read(&s, move |core| {
        core.event(&ev).map(|e| views::event_detail(core, e))
    })?;
    Ok(Json(v.ok_or_else(|| unknown_event(&event))?).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/events/{event}/availability",
    tag = "buyers",
    params(("event" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "Stock per pool, here and in all", body = crate::views::AvailabilityView),
        (status = 404, response = inline(crate::openapi::NotFound)),
    ),
)]
pub(crate) async fn availability(State(s): St, Path(event): Path<String>) -> ApiResult {
    let ev = event.clone();
    let v = read(&s, move |core| {
        core.event(&ev).map(|e| views::availability(core, e))
    })?;
    Ok(Json(v.ok_or_else(|| unknown_event(&event))?).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/events/{event}/availability/stream",
    tag = "buyers",
    params(("event" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "Server-Sent Events: an availability view each time the figures change", body = crate::views::AvailabilityView, content_type = "text/event-stream"),
        (status = 404, response = inline(crate::openapi::NotFound)),
    ),
)]
pub(crate) async fn availability_stream(
    State(s): St,
    Path(event): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let ev = event.clone();
    if !read(&s, move |core| core.event(&ev).is_some())? {
        return Err(unknown_event(&event));
    }
    let changes = s.core.changes();
    let state = s.clone();
    let stream = futures_util::stream::unfold(
        (changes, state, event, None::<String>, true),
        |(mut changes, s, event, last, first)| async move {
            loop {
                if !first && changes.changed().await.is_err() {
                    return None;
                }
                let ev = event.clone();
                // The view is copied under the core's lock and rendered after it.
                let v = s
                    .core
                    .read(move |core| core.event(&ev).map(|e| views::availability(core, e)))??;
                // Staleness ages change all the time; send only when the figures change.
                let figures = serde_json::to_string(&v.pools).unwrap_or_default();
                if last.as_deref() != Some(figures.as_str()) || first {
                    let item = SseEvent::default()
                        .event("availability")
                        .data(serde_json::to_string(&v).unwrap_or_default());
                    return Some((Ok(item), (changes, s, event, Some(figures), false)));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeatsQuery {
    pool: String,
}

#[utoipa::path(
    get,
    path = "/v1/events/{event}/seats",
    tag = "buyers",
    params(("event" = String, Path, description = "Event id"), SeatsQuery),
    responses(
        (status = 200, description = "Each seat: available here, held, sold, or another region's", body = crate::views::SeatMap),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 422, response = inline(crate::openapi::Invalid)),
    ),
)]
pub(crate) async fn seats(
    State(s): St,
    Path(event): Path<String>,
    q: Result<Query<SeatsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|_| Problem::invalid("query parameter pool= is required"))?;
    let ev = event.clone();
    let v = read(&s, move |core| {
        let e = core.event(&ev).ok_or_else(|| unknown_event(&ev))?;
        let p = e.genesis().pool_index(&q.pool).ok_or_else(|| {
            Problem::not_found("unknown-pool", format!("event has no pool {:?}", q.pool))
        })?;
        views::seat_map(e, p).ok_or_else(|| {
            Problem::invalid(format!(
                "pool {:?} is general admission: it has no seat map",
                q.pool
            ))
        })
    })??;
    Ok(Json(v).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WantBody {
    pool: Option<String>,
    quantity: Option<u64>,
    seats: Option<Vec<String>>,
    customer: String,
    payment_ref: Option<String>,
}

impl WantBody {
    fn want(&self) -> Result<Want, Problem> {
        match (&self.pool, self.quantity, &self.seats) {
            (Some(pool), Some(quantity), None) => Ok(Want::Quantity {
                pool: pool.clone(),
                quantity,
            }),
            (pool, None, Some(seats)) => Ok(Want::Seats {
                pool: pool.clone(),
                seats: seats.clone(),
            }),
            _ => Err(Problem::invalid(
                "give either pool and quantity, or seats (with an optional pool)",
            )),
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/events/{event}/holds",
    tag = "buyers",
    params(("event" = String, Path, description = "Event id"), crate::openapi::KeyHeader),
    request_body = WantBody,
    responses(
        (status = 201, description = "Held (by this region, or by the region that had the stock)", body = crate::views::HoldView),
        (status = 409, description = "sold-out, seat-taken, sales-closed", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "hold-limit: the customer has the most live holds allowed", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 422, response = inline(crate::openapi::Invalid)),
        (status = 503, response = inline(crate::openapi::Unavailable)),
    ),
)]
pub(crate) async fn create_hold(
    State(s): St,
    Path(event): Path<String>,
    Posted { key, body: w }: Posted<WantBody>,
) -> ApiResult {
    if w.payment_ref.is_some() {
        return Err(Problem::invalid(
            "a hold takes no payment_ref; confirm it with one",
        ));
    }
    Ok(created_sale(
        call_render(
            &s,
            key,
            Command::Hold {
                event,
                want: w.want()?,
                customer: w.customer,
            },
            order_view,
        )
        .await?,
    ))
}

#[utoipa::path(
    post,
    path = "/v1/events/{event}/purchases",
    tag = "buyers",
    params(("event" = String, Path, description = "Event id"), crate::openapi::KeyHeader),
    request_body = WantBody,
    responses(
        (status = 201, description = "Sold (payment_ref required)", body = crate::views::OrderView),
        (status = 409, description = "sold-out, seat-taken, sales-closed", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 422, response = inline(crate::openapi::Invalid)),
        (status = 503, response = inline(crate::openapi::Unavailable)),
    ),
)]
pub(crate) async fn purchase(
    State(s): St,
    Path(event): Path<String>,
    Posted { key, body: w }: Posted<WantBody>,
) -> ApiResult {
    let want = w.want()?;
    let payment_ref = w
        .payment_ref
        .ok_or_else(|| Problem::invalid("payment_ref is required"))?;
    Ok(created_sale(
        call_render(
            &s,
            key,
            Command::Purchase {
                event,
                want,
                customer: w.customer,
                payment_ref,
            },
            order_view,
        )
        .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfirmBody {
    payment_ref: String,
}

#[utoipa::path(
    post,
    path = "/v1/holds/{hold}/confirm",
    tag = "buyers",
    params(("hold" = String, Path, description = "Hold id (names its region)"), crate::openapi::KeyHeader),
    request_body = ConfirmBody,
    responses(
        (status = 201, description = "The order (again the same one if confirmed before)", body = crate::views::OrderView),
        (status = 410, description = "hold-expired", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 422, response = inline(crate::openapi::Invalid)),
        (status = 503, response = inline(crate::openapi::Unavailable)),
    ),
)]
pub(crate) async fn confirm(
    State(s): St,
    Path(hold): Path<String>,
    Posted { key, body: c }: Posted<ConfirmBody>,
) -> ApiResult {
    Ok(created_sale(
        call_render(
            &s,
            key,
            Command::Confirm {
                hold,
                payment_ref: c.payment_ref,
            },
            order_view,
        )
        .await?,
    ))
}

#[utoipa::path(
    delete,
    path = "/v1/holds/{hold}",
    tag = "buyers",
    params(("hold" = String, Path, description = "Hold id (names its region)")),
    responses(
        (status = 204, description = "Released: the quota returns to the region at once"),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 503, response = inline(crate::openapi::Unavailable)),
    ),
)]
pub(crate) async fn release(State(s): St, Path(hold): Path<String>) -> ApiResult {
    call(&s, None, Command::Release { hold }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/orders/{order}",
    tag = "buyers",
    params(("order" = String, Path, description = "Order id (names its region)")),
    responses(
        (status = 200, description = "The order", body = crate::views::OrderView),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 503, response = inline(crate::openapi::Unavailable)),
    ),
)]
pub(crate) async fn get_order(State(s): St, Path(order): Path<String>) -> ApiResult {
    // Through the core: another region's order is asked of that region.
    let v = call_render(&s, None, Command::ReadOrder { order }, order_view).await?;
    Ok(v.into_response())
}

// ----- operators ------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolBody {
    id: String,
    capacity: Option<u64>,
    seats: Option<Vec<String>>,
    /// The compact notation for a large seat map: rows × numbers, expanded here into the same
    /// seat list (and so the same genesis) as if every id had been listed.
    seat_blocks: Option<Vec<SeatBlock>>,
    price_cents: u64,
}

/// Seats `<prefix><row>-<n>` for every row and every `n` in `from..=to`, rows in order.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeatBlock {
    #[serde(default)]
    prefix: String,
    rows: SeatRows,
    from: u32,
    to: u32,
}

/// Row labels: listed (`["A","B"]`), or numbered (`{"from": 1, "to": 40}`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum SeatRows {
    Labels(Vec<String>),
    Numbered { from: u32, to: u32 },
}

/// Expands seat blocks, refusing before any allocation a total above what a pool may hold.
fn expand_seat_blocks(pool: &str, blocks: &[SeatBlock]) -> Result<Vec<String>, Problem> {
    let mut total: u64 = 0;
    for b in blocks {
        let rows = match &b.rows {
            SeatRows::Labels(l) => l.len() as u64,
            SeatRows::Numbered { from, to } if from <= to => u64::from(to - from) + 1,
            SeatRows::Numbered { .. } => 0,
        };
        if b.from > b.to || rows == 0 {
            return Err(Problem::invalid(format!(
                "pool {pool:?}: a seat block needs at least one row and from <= to"
            )));
        }
        // Checked: 2^32 rows of 2^32 seats must not wrap into a small total.
        total = rows
            .checked_mul(u64::from(b.to - b.from) + 1)
            .and_then(|seats| total.checked_add(seats))
            .unwrap_or(u64::MAX);
        if total > allot_crdt::MAX_SEATS_PER_POOL as u64 {
            return Err(Problem::invalid(format!(
                "pool {pool:?}: seat blocks expand to more than {} seats",
                allot_crdt::MAX_SEATS_PER_POOL
            )));
        }
    }
    let mut seats = Vec::with_capacity(total as usize);
    for b in blocks {
        let rows: Vec<String> = match &b.rows {
            SeatRows::Labels(l) => l.clone(),
            SeatRows::Numbered { from, to } => (*from..=*to).map(|r| r.to_string()).collect(),
        };
        for row in &rows {
            for n in b.from..=b.to {
                seats.push(format!("{}{row}-{n}", b.prefix));
            }
        }
    }
    Ok(seats)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum AllotmentsBody {
    Named(String),
    Explicit(BTreeMap<String, BTreeMap<String, u64>>),
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateEventBody {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    venue: String,
    lat: f64,
    lon: f64,
    starts_at: String,
    currency: String,
    #[serde(default = "default_ttl")]
    hold_ttl_s: u64,
    #[serde(default = "default_rebalance")]
    rebalance: bool,
    pools: Vec<PoolBody>,
    allotments: AllotmentsBody,
}

fn default_ttl() -> u64 {
    600
}

fn default_rebalance() -> bool {
    true
}

#[utoipa::path(
    post,
    path = "/v1/admin/events",
    tag = "operators",
    params(crate::openapi::KeyHeader),
    request_body = CreateEventBody,
    responses(
        (status = 201, description = "Created (at the catalog region)", body = crate::views::EventDetail),
        (status = 409, description = "event-exists", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, response = inline(crate::openapi::Unauthorized)),
        (status = 422, response = inline(crate::openapi::Invalid)),
        (status = 503, response = inline(crate::openapi::Unavailable)),
    ),
    security(("operator" = [])),
)]
pub(crate) async fn create_event(
    State(s): St,
    _: Operator,
    Posted { key, body: c }: Posted<CreateEventBody>,
) -> ApiResult {
    parse_time("starts_at", &c.starts_at)?;
    let allotments = match c.allotments {
        AllotmentsBody::Named(n) if n == "even" => Allotments::Even,
        AllotmentsBody::Named(n) => {
            return Err(Problem::invalid(format!(
                "allotments: \"even\" or an object per pool and region, not {n:?}"
            )))
        }
        AllotmentsBody::Explicit(m) => Allotments::Explicit(m),
    };
    let mut pools = Vec::with_capacity(c.pools.len());
    for p in c.pools {
        let kind = match (p.capacity, p.seats, p.seat_blocks) {
            (Some(capacity), None, None) => PoolKind::General { capacity },
            (None, Some(seats), None) => PoolKind::Assigned { seats },
            (None, None, Some(blocks)) => PoolKind::Assigned {
                seats: expand_seat_blocks(&p.id, &blocks)?,
            },
            _ => {
                return Err(Problem::invalid(format!(
                    "pool {:?}: give one of capacity, seats or seat_blocks",
                    p.id
                )))
            }
        };
        pools.push(PoolInput {
            id: p.id,
            kind,
            price_cents: p.price_cents,
        });
    }
    let spec = EventSpec {
        id: c.id,
        name: c.name,
        description: c.description,
        venue: c.venue,
        lat: c.lat,
        lon: c.lon,
        starts_at: c.starts_at,
        currency: c.currency,
        hold_ttl_s: c.hold_ttl_s,
        rebalance: c.rebalance,
        pools,
        allotments,
    };
    // At another region the catalog creates it; the answer brings the event here at once.
    let event = match call(&s, key, Command::CreateEvent(spec)).await? {
        Outcome::EventCreated { event } => event,
        Outcome::Remote(r) => match r.outcome {
            allot_node::Answered::EventCreated { event } => event,
            _ => return Err(Problem::unavailable("unexpected answer from the catalog")),
        },
        _ => return Err(Problem::unavailable("unexpected answer from the core")),
    };
    let ev = event.clone();
    let v = read(&s, move |core| {
        core.event(&ev).map(|e| views::event_detail(core, e))
    })?;
    // Created by the catalog, but not known here yet (the catalog sends an event's metadata
    // only once durable, else gossip brings it in a moment): say so rather than 404.
    Ok(created(v.unwrap_or_else(|| {
        json!({ "id": event, "created": true, "note": "created by the catalog region; it reaches this region with the next gossip" })
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchBody {
    name: Option<String>,
    description: Option<String>,
    venue: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    starts_at: Option<String>,
    hold_ttl_s: Option<u64>,
    #[serde(default)]
    prices: BTreeMap<String, u64>,
    rebalance: Option<bool>,
    sales: Option<SalesBody>,
    /// RFC 3339; `null` removes it (sales open at once).
    #[serde(default, deserialize_with = "present")]
    on_sale_at: Option<Option<String>>,
}

/// Whether holds and purchases are taken.
#[derive(Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SalesBody {
    Open,
    Paused,
    Closed,
}

impl From<SalesBody> for allot_crdt::SalesState {
    fn from(s: SalesBody) -> Self {
        match s {
            SalesBody::Open => allot_crdt::SalesState::Open,
            SalesBody::Paused => allot_crdt::SalesState::Paused,
            SalesBody::Closed => allot_crdt::SalesState::Closed,
        }
    }
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[utoipa::path(
    patch,
    path = "/v1/admin/events/{event}",
    tag = "operators",
    params(("event" = String, Path, description = "Event id"), crate::openapi::KeyHeader),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The event after the edit", body = crate::views::EventDetail),
        (status = 401, response = inline(crate::openapi::Unauthorized)),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 422, response = inline(crate::openapi::Invalid)),
    ),
    security(("operator" = [])),
)]
pub(crate) async fn patch_event(
    State(s): St,
    Path(event): Path<String>,
    _: Operator,
    Posted { key, body: p }: Posted<PatchBody>,
) -> ApiResult {
    if let Some(t) = &p.starts_at {
        parse_time("starts_at", t)?;
    }
    let on_sale_at_ms = match &p.on_sale_at {
        Some(Some(t)) => {
            let ms = parse_time("on_sale_at", t)?.unix_timestamp_nanos() / 1_000_000;
            let ms =
                u64::try_from(ms).map_err(|_| Problem::invalid("on_sale_at: a time after 1970"))?;
            Some(Some(ms))
        }
        Some(None) => Some(None),
        None => None,
    };
    let patch = allot_crdt::MetaPatch {
        name: p.name,
        description: p.description,
        venue: p.venue,
        lat: p.lat,
        lon: p.lon,
        starts_at: p.starts_at,
        hold_ttl_s: p.hold_ttl_s,
        prices: p.prices,
        rebalance: p.rebalance,
        sales: p.sales.map(Into::into),
        on_sale_at_ms,
    };
    let v = call_render(
        &s,
        key,
        Command::PatchEvent { event, patch },
        |core, o| match o {
            Outcome::EventPatched { event } => core
                .event(&event)
                .map(|e| views::event_detail(core, e))
                .unwrap_or_default(),
            _ => Value::Null,
        },
    )
    .await?;
    Ok(Json(v).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/admin/events/{event}/ledger",
    tag = "operators",
    params(("event" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "The ledger as this region sees it", body = crate::views::LedgerView),
        (status = 401, response = inline(crate::openapi::Unauthorized)),
        (status = 404, response = inline(crate::openapi::NotFound)),
    ),
    security(("operator" = [])),
)]
pub(crate) async fn ledger(State(s): St, _: Operator, Path(event): Path<String>) -> ApiResult {
    let ev = event.clone();
    let v = read(&s, move |core| {
        core.event(&ev).map(|e| views::ledger(core, e))
    })?;
    Ok(Json(v.ok_or_else(|| unknown_event(&event))?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransferBody {
    pool: String,
    from: String,
    to: String,
    quantity: Option<u64>,
    seats: Option<Vec<String>>,
}

#[utoipa::path(
    post,
    path = "/v1/admin/events/{event}/transfers",
    tag = "operators",
    params(("event" = String, Path, description = "Event id"), crate::openapi::KeyHeader),
    request_body = TransferBody,
    responses(
        (status = 201, description = "Moved: only the owner of quota gives it", body = crate::openapi::TransferView),
        (status = 409, description = "not-owner", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, response = inline(crate::openapi::Unauthorized)),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 422, response = inline(crate::openapi::Invalid)),
    ),
    security(("operator" = [])),
)]
pub(crate) async fn transfer(
    State(s): St,
    Path(event): Path<String>,
    _: Operator,
    Posted { key, body: t }: Posted<TransferBody>,
) -> ApiResult {
    if t.from != s.region {
        return Err(allot_node::CoreError::NotOwner(format!(
            "only {} can give away its quota; send the transfer to that region",
            t.from
        ))
        .into());
    }
    let amount = match (t.quantity, t.seats) {
        (Some(q), None) => GrantAmount::Quantity(q),
        (None, Some(seats)) => GrantAmount::Seats(seats),
        _ => return Err(Problem::invalid("give either quantity or seats")),
    };
    let outcome = call(
        &s,
        key,
        Command::Grant {
            event,
            pool: t.pool.clone(),
            to: t.to,
            amount,
        },
    )
    .await?;
    let Outcome::Granted {
        event,
        to,
        quantity,
        seats,
        pool,
    } = outcome
    else {
        return Err(Problem::unavailable("unexpected answer from the core"));
    };
    let ev = event.clone();
    let seat_ids = read(&s, move |core| {
        core.event(&ev)
            .map(|e| {
                seats
                    .iter()
                    .filter_map(|&x| e.genesis().pool(pool).seat_id(x).map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    })?;
    Ok(created(
        json!({ "event": event, "pool": t.pool, "from": s.region, "to": to, "quantity": quantity, "seats": seat_ids }),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrdersQuery {
    event: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/v1/admin/orders",
    tag = "operators",
    params(OrdersQuery),
    responses(
        (status = 200, description = "This region's orders, oldest first", body = crate::openapi::OrderList),
        (status = 401, response = inline(crate::openapi::Unauthorized)),
        (status = 422, response = inline(crate::openapi::Invalid)),
    ),
    security(("operator" = [])),
)]
pub(crate) async fn list_orders(
    State(s): St,
    _: Operator,
    q: Result<Query<OrdersQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(q) = q.map_err(|e| Problem::invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid("limit must be 1-1000"));
    }
    let after = match q.after.as_deref() {
        None => 0,
        Some(c) => c
            .parse::<u64>()
            .map_err(|_| Problem::invalid("after: the `next` cursor of a previous page"))?,
    };
    // Orders live in the store; it holds durable state only, which is what readers see.
    let page = s
        .core
        .store()
        .orders_after(q.event.as_deref(), after, limit + 1)
        .map_err(|e| {
            tracing::error!("listing orders: {e:#}");
            Problem::unavailable("the store could not list orders")
        })?;
    let v = read(&s, move |core| {
        let more = page.len() > limit;
        let orders: Vec<Value> = page
            .iter()
            .take(limit)
            .map(|o| views::order(core, &o.order))
            .collect();
        let next = if more {
            page.get(limit - 1).map(|o| o.order.n.to_string())
        } else {
            None
        };
        json!({ "orders": orders, "next": next })
    })?;
    Ok(Json(v).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/admin/orders/{order}/refund",
    tag = "operators",
    params(("order" = String, Path, description = "Order id (names its region)"), crate::openapi::KeyHeader),
    responses(
        (status = 200, description = "The refunded order (again the same if refunded before)", body = crate::views::OrderView),
        (status = 401, response = inline(crate::openapi::Unauthorized)),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 503, response = inline(crate::openapi::Unavailable)),
    ),
    security(("operator" = [])),
)]
pub(crate) async fn refund(
    State(s): St,
    Path(order): Path<String>,
    _: Operator,
    Keyed { key, body }: Keyed,
) -> ApiResult {
    // The body is optional; when there is one, it is a JSON object.
    if !body.iter().all(u8::is_ascii_whitespace) {
        let _: serde_json::Map<String, Value> = parse(&body)?;
    }
    Ok(call_render(&s, key, Command::Refund { order }, order_view)
        .await?
        .into_response())
}

/// What `peer` last reported of each event's version vector.
fn peer_vvs(core: &allot_node::Core, peer: &str) -> Value {
    let m: serde_json::Map<String, Value> = core
        .events()
        .filter_map(|e| {
            let p = e.genesis().region_index(peer)?;
            let vv = e.peers[p as usize].vv.as_ref()?;
            Some((e.id.to_string(), by_region(&e.genesis().regions, vv)))
        })
        .collect();
    Value::Object(m)
}

/// A version vector as `{region: count}`, in the event's region order.
fn by_region(regions: &[String], vv: &allot_crdt::VersionVector) -> Value {
    Value::Object(
        regions
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), json!(vv.get(i))))
            .collect(),
    )
}

/// Prometheus text (open, as monitoring scrapes it): see `metrics.rs`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "monitoring",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4 (docs/operations.md lists the metrics)", body = String, content_type = "text/plain"),
    ),
)]
pub(crate) async fn metrics(State(s): St) -> ApiResult {
    let ready = s.core.is_ready();
    let links = s
        .transport
        .as_ref()
        .map(|t| t.lock().expect("status").clone())
        .unwrap_or_default();
    let snapshot = read(&s, move |core| {
        let now = crate::driver::wall_ms();
        let peers = core
            .config()
            .regions
            .iter()
            .filter(|r| **r != core.config().region)
            .map(|r| {
                let st = links.get(r).cloned().unwrap_or_default();
                crate::metrics::PeerFigures {
                    region: r.clone(),
                    frames_in: st.frames_in,
                    frames_out: st.frames_out,
                    bytes_in: st.bytes_in,
                    bytes_out: st.bytes_out,
                    refused_frames: st.refused,
                    last_frame_age_ms: st.last_received_ms.map(|t| now.saturating_sub(t)),
                    lag_versions: peer_lag(core, r),
                }
            })
            .collect();
        crate::metrics::Snapshot {
            ready,
            durable_index: core.persisted_index(),
            events: core.events().count() as u64,
            peers,
            handoffs: core.handoff_counters(),
            forwards: core
                .forward_stats()
                .iter()
                .map(|(to, f)| (to.clone(), *f))
                .collect(),
            gathers: core.gather_stats(),
        }
    })?;
    let text = s.metrics.render(snapshot);
    let content_type = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Versions of this region's rows, over all events, that `peer` has not acknowledged.
pub(crate) fn peer_lag(core: &allot_node::Core, peer: &str) -> u64 {
    core.events()
        .map(|e| {
            let Some(p) = e.genesis().region_index(peer) else {
                return 0;
            };
            let none = allot_crdt::VersionVector::new(0);
            e.ledger
                .version_vector()
                .lag_behind(e.peers[p as usize].vv.as_ref().unwrap_or(&none))
        })
        .fold(0, u64::saturating_add)
}

#[utoipa::path(
    get,
    path = "/v1/admin/cluster",
    tag = "operators",
    responses(
        (status = 200, description = "Peers, links, version vectors, forwards, gathers, handoffs, memory", body = Object),
        (status = 401, response = inline(crate::openapi::Unauthorized)),
    ),
    security(("operator" = [])),
)]
pub(crate) async fn cluster(State(s): St, _: Operator) -> ApiResult {
    let ready = s.core.is_ready();
    let links = s
        .transport
        .as_ref()
        .map(|t| t.lock().expect("status").clone());
    let store = s.core.store().memory();
    let direct_writes = s.core.store().direct_writes();
    let disk_reads = s.core.store().disk_reads();
    let (ahead_used, ahead_unused) = s.core.reads_ahead();
    let v = read(&s, move |core| {
        let cfg = core.config();
        let now = crate::driver::wall_ms();
        let peers: Vec<Value> = cfg
            .regions
            .iter()
            .filter(|r| **r != cfg.region)
            .map(|r| {
                let st = links.as_ref().and_then(|l| l.get(r).cloned());
                let lag = peer_lag(core, r);
                match st {
                    Some(st) => json!({
                        "region": r, "state": st.outgoing, "incoming_connected": st.incoming_connected,
                        "last_message_ms_ago": st.last_received_ms.map(|t| now.saturating_sub(t)),
                        "last_sent_ms_ago": st.last_sent_ms.map(|t| now.saturating_sub(t)),
                        "frames_in": st.frames_in, "frames_out": st.frames_out, "bytes_in": st.bytes_in, "bytes_out": st.bytes_out,
                        "refused_frames": st.refused, "lag_versions": lag, "version_vectors": peer_vvs(core, r),
                    }),
                    None => json!({ "region": r, "state": "not-configured", "note": "no tls_dir: this node runs without gossip", "lag_versions": lag }),
                }
            })
            .collect();
        let events: Vec<Value> = core
            .events()
            .map(|e| {
                let versions = by_region(&e.genesis().regions, &e.ledger.version_vector());
                json!({ "event": &*e.id, "version_vector": versions })
            })
            .collect();
        json!({
            "region": cfg.region, "catalog_region": cfg.catalog_region, "incarnation": cfg.incarnation,
            "ready": ready, "durable_index": core.persisted_index(), "peers": peers, "events": events,
            "rebalance": cfg.rebalance.is_some(),
            "forwarding": cfg.forwarding,
            // Buyers' requests this region sent to the region that had the stock, per target:
            // calls sent, served (hold or order), refused, lost (no answer in time or no
            // link), and the latency of the answered ones.
            "forwards": core.forward_stats().iter().map(|(region, f)| views::forward(region, f)).collect::<Vec<_>>(),
            "gathers": core.gather_stats(),
            "handoffs": {
                "counters": core.handoff_counters(),
                "recent": core.handoffs().map(|h| views::handoff(core, h)).collect::<Vec<_>>(),
            },
            "memory": {
                "core": {
                    "live_holds": core.footprint().live_holds,
                    "cached_keys": core.footprint().cached_keys,
                    "recent_orders": core.footprint().recent_orders,
                    "reads_in_flight": core.footprint().reads_in_flight,
                    "forwards_in_flight": core.footprint().forwards_in_flight,
                    "gathers_in_flight": core.footprint().gathers_in_flight,
                },
                "store_bytes": {
                    "block_cache": store.block_cache, "memtables": store.memtables,
                    "table_readers": store.table_readers, "total": store.total(),
                },
                // Whether RocksDB's flushes write around the page cache (docs/operations.md).
                "store_direct_writes": direct_writes,
                // The core's reads (keys, orders) that memory could not answer.
                "store_disk_reads": disk_reads,
                // Keyed requests' keys read before the core's lock, taken or not.
                "key_reads_ahead": {"used": ahead_used, "unused": ahead_unused},
            },
        })
    })?;
    Ok(Json(v).into_response())
}
