//! JSON views of core state, as the HTTP API shows them (docs/http-api.md).
//!
//! Each view is a type: the handlers serialise it, and `/openapi.json` describes it from the
//! same type (`ToSchema`), so the spec cannot drift from what the server answers.

use std::collections::BTreeMap;

use allot_crdt::{PoolIdx, PoolKind, RegionIdx};
use allot_node::event::{EventState, SeatLocal};
use allot_node::{Answered, Core, Hold, IdKind, Millis, Order, OrderStatus};
use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// A view as the JSON a handler answers with.
fn to_json(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A buyer's hold or order (this region's or, forwarded, another's) as the bytes of the
/// response body, serialised straight from its view. It is rendered under the core's lock as
/// each group of sales becomes durable, on the WAL writer's thread: a `serde_json::Value` in
/// between cost an allocation per field and a second pass.
pub fn sale_body(core: &Core, outcome: &allot_node::Outcome) -> Vec<u8> {
    use allot_node::Outcome;
    let bytes = match outcome {
        Outcome::Order(o) => serde_json::to_vec(&own_order(core, o)),
        Outcome::Held(h) => serde_json::to_vec(&hold_as(core, h, &core.id_of(IdKind::Hold, h.n))),
        // Another region's answer, with the ids it gave (the event's genesis, which names
        // pools and seats, is the same everywhere).
        Outcome::Remote(r) => {
            let id = r.id.as_deref().unwrap_or_default();
            match &r.outcome {
                Answered::Order(o) => {
                    serde_json::to_vec(&order_as(core, o, &r.region, id, r.hold_id.as_deref()))
                }
                Answered::Held(h) => serde_json::to_vec(&hold_as(core, h, id)),
                _ => Ok(b"null".to_vec()),
            }
        }
        _ => Ok(b"{}".to_vec()),
    };
    bytes.unwrap_or_else(|_| b"null".to_vec())
}

pub fn rfc3339(ms: Millis) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OrderState {
    Confirmed,
    Refunded,
}

/// An order; its id names the region that sold it, which keeps it.
#[derive(Serialize, ToSchema)]
pub struct OrderView {
    #[schema(example = "o-eu-west-1-5f2a9c")]
    pub order_id: String,
    pub event: String,
    pub pool: Option<String>,
    pub quantity: u64,
    /// Seat ids, for an assigned pool.
    pub seats: Vec<String>,
    /// The region that sold it.
    pub region: String,
    pub customer: String,
    /// Total paid, in the currency's minor unit.
    pub price_cents: u64,
    pub currency: Option<String>,
    pub payment_ref: String,
    pub status: OrderState,
    /// RFC 3339.
    pub created_at: String,
    /// The hold it confirmed, if any.
    pub hold_id: Option<String>,
}

/// A hold: the places are the buyer's until `expires_at`, at the locked price.
#[derive(Serialize, ToSchema)]
pub struct HoldView {
    pub hold_id: String,
    pub event: String,
    pub pool: Option<String>,
    pub quantity: u64,
    pub seats: Vec<String>,
    pub customer: String,
    pub price_cents: u64,
    pub currency: Option<String>,
    /// RFC 3339, by the owning region's clock.
    pub expires_at: String,
}

pub fn order(core: &Core, o: &Order) -> Value {
    to_json(own_order(core, o))
}

/// An order this region sold.
fn own_order(core: &Core, o: &Order) -> OrderView {
    let hold_id = o.hold.map(|h| core.id_of(IdKind::Hold, h));
    order_as(
        core,
        o,
        &core.config().region,
        &core.id_of(IdKind::Order, o.n),
        hold_id.as_deref(),
    )
}

/// An order as the region that sold it names it (its own, or another region's answer).
fn order_as(core: &Core, o: &Order, region: &str, id: &str, hold_id: Option<&str>) -> OrderView {
    let e = core.event(&o.event);
    let pool = e.map(|e| e.genesis().pool(o.pool));
    OrderView {
        order_id: id.to_owned(),
        event: o.event.to_string(),
        pool: pool.map(|p| p.id.clone()),
        quantity: o.quantity,
        seats: o
            .seats
            .iter()
            .filter_map(|&s| pool.and_then(|p| p.seat_id(s)).map(str::to_owned))
            .collect(),
        region: region.to_owned(),
        customer: o.customer.to_string(),
        price_cents: o.price_cents,
        currency: e.map(|e| e.genesis().currency.clone()),
        payment_ref: o.payment_ref.to_string(),
        status: match o.status {
            OrderStatus::Confirmed => OrderState::Confirmed,
            OrderStatus::Refunded => OrderState::Refunded,
        },
        created_at: rfc3339(o.created_at),
        hold_id: hold_id.map(str::to_owned),
    }
}

fn hold_as(core: &Core, h: &Hold, id: &str) -> HoldView {
    let e = core.event(&h.event);
    let pool = e.map(|e| e.genesis().pool(h.pool));
    HoldView {
        hold_id: id.to_owned(),
        event: h.event.to_string(),
        pool: pool.map(|p| p.id.clone()),
        quantity: h.quantity,
        seats: h
            .seats
            .iter()
            .filter_map(|&s| pool.and_then(|p| p.seat_id(s)).map(str::to_owned))
            .collect(),
        customer: h.customer.to_string(),
        price_cents: h.price_cents,
        currency: e.map(|e| e.genesis().currency.clone()),
        expires_at: rfc3339(h.expires_at),
    }
}

/// One pool's stock as this region sees it.
#[derive(Serialize, ToSchema)]
pub struct PoolAvailability {
    pub pool: String,
    /// What this region can sell now.
    pub local_available: u64,
    /// What the regions together can sell, from the merged ledger.
    pub global_available: u64,
    pub sold_out: bool,
}

fn pool_availability(e: &EventState, p: PoolIdx) -> PoolAvailability {
    let local = e.sellable(p).max(0) as u64;
    let global = e.global_available(p).max(local);
    PoolAvailability {
        pool: e.genesis().pool(p).id.clone(),
        local_available: local,
        global_available: global,
        sold_out: global == 0,
    }
}

/// How old this region's knowledge of each region is.
#[derive(Serialize, ToSchema)]
pub struct Staleness {
    /// Row versions merged, by region.
    pub version_vector: BTreeMap<String, u64>,
    /// Since the region was last heard from (0 for this region; null before the first frame).
    pub age_ms: BTreeMap<String, Option<u64>>,
}

fn staleness(e: &EventState, now: Millis) -> Staleness {
    let g = e.genesis();
    let vv = e.ledger.version_vector();
    let mut version_vector = BTreeMap::new();
    let mut age_ms = BTreeMap::new();
    for (r, name) in g.regions.iter().enumerate() {
        version_vector.insert(name.clone(), vv.get(r));
        let age = if r == e.me as usize {
            Some(0)
        } else {
            e.peers[r].heard_at.map(|t| now.saturating_sub(t))
        };
        age_ms.insert(name.clone(), age);
    }
    Staleness {
        version_vector,
        age_ms,
    }
}

#[derive(Serialize, ToSchema)]
pub struct AvailabilityView {
    pub event: String,
    /// The region answering.
    pub region: String,
    pub pools: Vec<PoolAvailability>,
    pub staleness: Staleness,
}

/// Built under the core's lock (copies of a few figures); serialised after it is released.
pub fn availability(core: &Core, e: &EventState) -> AvailabilityView {
    AvailabilityView {
        event: e.id.to_string(),
        region: core.config().region.clone(),
        pools: (0..e.genesis().pools.len() as PoolIdx)
            .map(|p| pool_availability(e, p))
            .collect(),
        staleness: staleness(e, core.now()),
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventSummary {
    pub id: String,
    pub name: String,
    pub venue: String,
    pub starts_at: String,
    pub currency: String,
    pub lat: f64,
    pub lon: f64,
    /// `open`, `paused` or `closed`.
    #[schema(example = "open")]
    pub sales: &'static str,
    /// RFC 3339, or null: holds and purchases from this moment.
    pub on_sale_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventSummary>,
}

pub fn summary(e: &EventState) -> EventSummary {
    let i = &e.info;
    EventSummary {
        id: e.id.to_string(),
        name: i.name.clone(),
        venue: i.venue.clone(),
        starts_at: i.starts_at.clone(),
        currency: e.genesis().currency.clone(),
        lat: i.lat,
        lon: i.lon,
        sales: i.sales.as_str(),
        on_sale_at: i.on_sale_at_ms.map(rfc3339),
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PoolKindView {
    General,
    Assigned,
}

#[derive(Serialize, ToSchema)]
pub struct PoolDetail {
    pub id: String,
    pub kind: PoolKindView,
    pub capacity: u64,
    pub price_cents: u64,
    pub local_available: u64,
    pub global_available: u64,
    pub sold_out: bool,
}

#[derive(Serialize, ToSchema)]
pub struct EventDetail {
    pub id: String,
    pub name: String,
    pub description: String,
    pub venue: String,
    pub lat: f64,
    pub lon: f64,
    pub starts_at: String,
    pub currency: String,
    pub hold_ttl_s: u64,
    /// Whether the regions' rebalancer moves this event's quota.
    pub rebalance: bool,
    /// The region answering.
    pub region: String,
    pub genesis_hash: String,
    pub pools: Vec<PoolDetail>,
    #[schema(example = "open")]
    pub sales: &'static str,
    pub on_sale_at: Option<String>,
    /// Whether this region takes holds and purchases now, by its own clock.
    pub on_sale_now: bool,
}

pub fn event_detail(core: &Core, e: &EventState) -> Value {
    let g = e.genesis();
    let i = &e.info;
    let pools = g
        .pools
        .iter()
        .enumerate()
        .map(|(p, pool)| {
            let a = pool_availability(e, p as PoolIdx);
            PoolDetail {
                id: pool.id.clone(),
                kind: if pool.is_assigned() {
                    PoolKindView::Assigned
                } else {
                    PoolKindView::General
                },
                capacity: pool.capacity(),
                price_cents: e.prices[p],
                local_available: a.local_available,
                global_available: a.global_available,
                sold_out: a.sold_out,
            }
        })
        .collect();
    to_json(EventDetail {
        id: e.id.to_string(),
        name: i.name.clone(),
        description: i.description.clone(),
        venue: i.venue.clone(),
        lat: i.lat,
        lon: i.lon,
        starts_at: i.starts_at.clone(),
        currency: g.currency.clone(),
        hold_ttl_s: i.hold_ttl_s,
        rebalance: i.rebalance,
        region: core.config().region.clone(),
        genesis_hash: e.ledger.hash().to_string(),
        pools,
        sales: i.sales.as_str(),
        on_sale_at: i.on_sale_at_ms.map(rfc3339),
        on_sale_now: i.sales == allot_crdt::SalesState::Open
            && i.on_sale_at_ms.is_none_or(|t| core.now() >= t),
    })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SeatState {
    /// This region's, free.
    Available,
    Held,
    Sold,
    /// Another region's (`owner`): its state is that region's to say.
    Elsewhere,
}

#[derive(Serialize, ToSchema)]
pub struct SeatView {
    pub seat: String,
    pub state: SeatState,
    /// The region that owns it.
    pub owner: String,
}

#[derive(Serialize, ToSchema)]
pub struct SeatMap {
    pub event: String,
    pub pool: String,
    pub region: String,
    pub seats: Vec<SeatView>,
}

/// The seat map of an assigned pool; `None` for a general-admission pool.
pub fn seat_map(e: &EventState, p: PoolIdx) -> Option<Value> {
    let g = e.genesis();
    let pool = g.pool(p);
    let PoolKind::Assigned { seats } = &pool.kind else {
        return None;
    };
    let owners = e.ledger.seat_owners(p);
    let seats = seats
        .iter()
        .enumerate()
        .map(|(s, id)| {
            let owner = owners[s].owner;
            let state = if owner != e.me {
                SeatState::Elsewhere
            } else {
                match e.seats[p as usize][s] {
                    SeatLocal::Free => SeatState::Available,
                    SeatLocal::Held(_) | SeatLocal::Arriving(_) => SeatState::Held,
                    SeatLocal::Sold(_) => SeatState::Sold,
                }
            };
            SeatView {
                seat: id.clone(),
                state,
                owner: g.regions[owner as usize].clone(),
            }
        })
        .collect();
    Some(to_json(SeatMap {
        event: e.id.to_string(),
        pool: pool.id.clone(),
        region: g.regions[e.me as usize].clone(),
        seats,
    }))
}

/// One handoff of the rebalancer's log (or an operator's transfer), for operators.
#[derive(Serialize, ToSchema)]
pub struct HandoffView {
    pub event: String,
    pub pool: Option<String>,
    pub from: String,
    pub to: String,
    pub quantity: u64,
    /// `running-dry`, `endgame`, `operator` or `gather`.
    #[schema(value_type = String, example = "running-dry")]
    pub reason: allot_node::handoff::Reason,
    pub at: String,
    /// On the receiving side: from the ask to the credit being durable here.
    pub ask_to_spendable_ms: Option<u64>,
}

pub fn handoff(core: &Core, h: &allot_node::handoff::Handoff) -> HandoffView {
    HandoffView {
        event: h.event.to_string(),
        pool: core
            .event(&h.event)
            .and_then(|e| e.genesis().pools.get(h.pool as usize))
            .map(|p| p.id.clone()),
        from: h.from.clone(),
        to: h.to.clone(),
        quantity: h.quantity,
        reason: h.reason,
        at: rfc3339(h.at),
        ask_to_spendable_ms: h.ask_to_spendable_ms,
    }
}

/// One region's row of a pool, as this region sees it.
#[derive(Serialize, ToSchema)]
pub struct LedgerRegion {
    pub region: String,
    pub initial: u64,
    pub granted_out: u64,
    pub granted_in: u64,
    pub consumed: u64,
    pub returned: u64,
    /// Live holds: this region's own, or the last figure another region gossiped.
    pub held: u64,
    /// What it can sell: `sellable` for this region.
    pub available: i64,
    pub held_age_ms: Option<u64>,
    pub sale_rate_per_min: u64,
}

#[derive(Serialize, ToSchema)]
pub struct LedgerPool {
    pub pool: String,
    pub capacity: u64,
    pub regions: Vec<LedgerRegion>,
}

/// This region's forwards to one region.
#[derive(Serialize, ToSchema)]
pub struct ForwardView {
    pub to: String,
    pub sent: u64,
    /// Answered with a hold or an order.
    pub served: u64,
    pub refused: u64,
    /// No answer in time, or no link.
    pub lost: u64,
    pub mean_latency_ms: Option<u64>,
    pub max_latency_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct LedgerView {
    pub event: String,
    pub region: String,
    pub pools: Vec<LedgerPool>,
    pub version_vector: BTreeMap<String, u64>,
    pub rebalance: bool,
    /// The last handoffs this region made or received, newest first.
    pub handoffs: Vec<HandoffView>,
    /// This region's forwarded sales of the event, per target.
    pub forwards: Vec<ForwardView>,
}

pub fn ledger(core: &Core, e: &EventState) -> Value {
    let g = e.genesis();
    let now = core.now();
    let pools = g
        .pools
        .iter()
        .enumerate()
        .map(|(p, pool)| {
            let pi = p as PoolIdx;
            let regions = (0..g.regions.len() as RegionIdx)
                .map(|r| {
                    let l = &e.ledger;
                    let figures = e.region_figures(pi, r);
                    let age = if r == e.me {
                        Some(0)
                    } else {
                        e.peers[r as usize].heard_at.map(|t| now.saturating_sub(t))
                    };
                    LedgerRegion {
                        region: g.regions[r as usize].clone(),
                        initial: l.initial(pi, r),
                        granted_out: l.granted_out(pi, r),
                        granted_in: l.granted_in(pi, r),
                        consumed: l.consumed(pi, r),
                        returned: l.returned(pi, r),
                        held: figures.held,
                        available: figures.sellable,
                        held_age_ms: age,
                        sale_rate_per_min: figures.sale_rate_per_min,
                    }
                })
                .collect();
            LedgerPool {
                pool: pool.id.clone(),
                capacity: pool.capacity(),
                regions,
            }
        })
        .collect();
    let vv = e.ledger.version_vector();
    to_json(LedgerView {
        event: e.id.to_string(),
        region: core.config().region.clone(),
        pools,
        version_vector: g
            .regions
            .iter()
            .enumerate()
            .map(|(r, n)| (n.clone(), vv.get(r)))
            .collect(),
        rebalance: e.info.rebalance,
        handoffs: core
            .handoffs()
            .filter(|h| h.event == e.id)
            .map(|h| handoff(core, h))
            .collect(),
        forwards: core
            .event_forward_stats(&e.id)
            .into_iter()
            .map(|(to, f)| forward(to, f))
            .collect(),
    })
}

pub fn forward(to: &str, f: &allot_node::ForwardStats) -> ForwardView {
    ForwardView {
        to: to.to_owned(),
        sent: f.sent,
        served: f.served,
        refused: f.refused,
        lost: f.lost,
        mean_latency_ms: f.mean_latency_ms(),
        max_latency_ms: f.latency_ms_max,
    }
}
