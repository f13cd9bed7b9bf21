//! JSON views of core state, as the HTTP API shows them (docs/http-api.md).

use allot_crdt::{PoolIdx, PoolKind, RegionIdx};
use allot_node::event::{EventState, SeatLocal};
use allot_node::{Answered, Core, Hold, IdKind, Millis, Order, OrderStatus, RemoteOutcome};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Another region's answer about its hold or order, with the ids it gave them (the event's
/// genesis, which names pools and seats, is the same everywhere).
pub fn remote(core: &Core, r: &RemoteOutcome) -> Value {
    let id = r.id.as_deref().unwrap_or_default();
    match &r.outcome {
        Answered::Order(o) => order_as(core, o, &r.region, id, r.hold_id.as_deref()),
        Answered::Held(h) => hold_as(core, h, id),
        _ => Value::Null,
    }
}

pub fn rfc3339(ms: Millis) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub fn order(core: &Core, o: &Order) -> Value {
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
fn order_as(core: &Core, o: &Order, region: &str, id: &str, hold_id: Option<&str>) -> Value {
    let e = core.event(&o.event);
    let pool = e.map(|e| e.genesis().pool(o.pool));
    let seats: Vec<&str> = o
        .seats
        .iter()
        .filter_map(|&s| pool.and_then(|p| p.seat_id(s)))
        .collect();
    json!({
        "order_id": id,
        "event": &*o.event,
        "pool": pool.map(|p| p.id.as_str()),
        "quantity": o.quantity,
        "seats": seats,
        "region": region,
        "customer": &*o.customer,
        "price_cents": o.price_cents,
        "currency": e.map(|e| e.genesis().currency.as_str()),
        "payment_ref": &*o.payment_ref,
        "status": match o.status { OrderStatus::Confirmed => "confirmed", OrderStatus::Refunded => "refunded" },
        "created_at": rfc3339(o.created_at),
        "hold_id": hold_id,
    })
}

pub fn hold(core: &Core, h: &Hold) -> Value {
    hold_as(core, h, &core.id_of(IdKind::Hold, h.n))
}

fn hold_as(core: &Core, h: &Hold, id: &str) -> Value {
    let e = core.event(&h.event);
    let pool = e.map(|e| e.genesis().pool(h.pool));
    let seats: Vec<&str> = h
        .seats
        .iter()
        .filter_map(|&s| pool.and_then(|p| p.seat_id(s)))
        .collect();
    json!({
        "hold_id": id,
        "event": &*h.event,
        "pool": pool.map(|p| p.id.as_str()),
        "quantity": h.quantity,
        "seats": seats,
        "customer": &*h.customer,
        "price_cents": h.price_cents,
        "currency": e.map(|e| e.genesis().currency.as_str()),
        "expires_at": rfc3339(h.expires_at),
    })
}

fn pool_availability(e: &EventState, p: PoolIdx) -> Value {
    let local = e.sellable(p).max(0) as u64;
    let global = e.global_available(p).max(local);
    json!({
        "pool": e.genesis().pool(p).id,
        "local_available": local,
        "global_available": global,
        "sold_out": global == 0,
    })
}

fn staleness(e: &EventState, now: Millis) -> Value {
    let g = e.genesis();
    let vv = e.ledger.version_vector();
    let mut versions = serde_json::Map::new();
    let mut ages = serde_json::Map::new();
    for (r, name) in g.regions.iter().enumerate() {
        versions.insert(name.clone(), json!(vv.get(r)));
        let age = if r == e.me as usize {
            Some(0)
        } else {
            e.peers[r].heard_at.map(|t| now.saturating_sub(t))
        };
        ages.insert(name.clone(), json!(age));
    }
    json!({ "version_vector": versions, "age_ms": ages })
}

pub fn availability(core: &Core, e: &EventState) -> Value {
    let pools: Vec<Value> = (0..e.genesis().pools.len() as PoolIdx)
        .map(|p| pool_availability(e, p))
        .collect();
    json!({ "event": &*e.id, "region": core.config().region, "pools": pools, "staleness": staleness(e, core.now()) })
}

pub fn event_summary(e: &EventState) -> Value {
    let i = &e.info;
    json!({
        "id": &*e.id, "name": i.name, "venue": i.venue, "starts_at": i.starts_at,
        "currency": e.genesis().currency, "lat": i.lat, "lon": i.lon,
        "sales": i.sales, "on_sale_at": i.on_sale_at_ms.map(rfc3339),
    })
}

pub fn event_detail(core: &Core, e: &EventState) -> Value {
    let g = e.genesis();
    let i = &e.info;
    let pools: Vec<Value> = g
        .pools
        .iter()
        .enumerate()
        .map(|(p, pool)| {
            let mut v = pool_availability(e, p as PoolIdx);
            let o = v.as_object_mut().expect("an object");
            o.insert("id".into(), json!(pool.id));
            o.remove("pool");
            o.insert(
                "kind".into(),
                json!(if pool.is_assigned() {
                    "assigned"
                } else {
                    "general"
                }),
            );
            o.insert("capacity".into(), json!(pool.capacity()));
            o.insert("price_cents".into(), json!(e.prices[p]));
            v
        })
        .collect();
    json!({
        "id": &*e.id, "name": i.name, "description": i.description, "venue": i.venue,
        "lat": i.lat, "lon": i.lon, "starts_at": i.starts_at, "currency": g.currency,
        "hold_ttl_s": i.hold_ttl_s, "rebalance": i.rebalance, "region": core.config().region,
        "genesis_hash": e.ledger.hash().to_string(), "pools": pools,
        "sales": i.sales, "on_sale_at": i.on_sale_at_ms.map(rfc3339),
        // As this region sees it, by its own clock.
        "on_sale_now": i.sales == allot_crdt::SalesState::Open
            && i.on_sale_at_ms.is_none_or(|t| core.now() >= t),
    })
}

pub fn seat_map(e: &EventState, p: PoolIdx) -> Value {
    let g = e.genesis();
    let pool = g.pool(p);
    let PoolKind::Assigned { seats } = &pool.kind else {
        return json!(null);
    };
    let owners = e.ledger.seat_owners(p);
    let list: Vec<Value> = seats
        .iter()
        .enumerate()
        .map(|(s, id)| {
            let owner = owners[s].owner;
            let state = if owner != e.me {
                "elsewhere"
            } else {
                match e.seats[p as usize][s] {
                    SeatLocal::Free => "available",
                    SeatLocal::Held(_) | SeatLocal::Arriving(_) => "held",
                    SeatLocal::Sold(_) => "sold",
                }
            };
            json!({ "seat": id, "state": state, "owner": g.regions[owner as usize] })
        })
        .collect();
    json!({ "event": &*e.id, "pool": pool.id, "region": g.regions[e.me as usize], "seats": list })
}

/// One handoff of the rebalancer's log (or an operator's transfer), for operators.
pub fn handoff(core: &Core, h: &allot_node::handoff::Handoff) -> Value {
    let pool = core
        .event(&h.event)
        .and_then(|e| e.genesis().pools.get(h.pool as usize))
        .map(|p| p.id.clone());
    json!({
        "event": &*h.event, "pool": pool, "from": h.from, "to": h.to, "quantity": h.quantity,
        "reason": h.reason, "at": rfc3339(h.at), "ask_to_spendable_ms": h.ask_to_spendable_ms,
    })
}

pub fn ledger(core: &Core, e: &EventState) -> Value {
    let g = e.genesis();
    let now = core.now();
    let pools: Vec<Value> = g
        .pools
        .iter()
        .enumerate()
        .map(|(p, pool)| {
            let pi = p as PoolIdx;
            let regions: Vec<Value> = (0..g.regions.len() as RegionIdx)
                .map(|r| {
                    let l = &e.ledger;
                    let (held, available, age, rate) = if r == e.me {
                        (e.held[p], e.sellable(pi), Some(0), e.rates[p].per_min)
                    } else {
                        let view = &e.peers[r as usize];
                        let held = view.held.get(p).copied().unwrap_or(0);
                        let rate = view.sale_rate_per_min.get(p).copied().unwrap_or(0);
                        (
                            held,
                            l.available(pi, r).saturating_sub_unsigned(held),
                            view.heard_at.map(|t| now.saturating_sub(t)),
                            rate,
                        )
                    };
                    json!({
                        "region": g.regions[r as usize],
                        "initial": l.initial(pi, r),
                        "granted_out": l.granted_out(pi, r),
                        "granted_in": l.granted_in(pi, r),
                        "consumed": l.consumed(pi, r),
                        "returned": l.returned(pi, r),
                        "held": held,
                        "available": available,
                        "held_age_ms": age,
                        "sale_rate_per_min": rate,
                    })
                })
                .collect();
            json!({ "pool": pool.id, "capacity": pool.capacity(), "regions": regions })
        })
        .collect();
    let vv = e.ledger.version_vector();
    let versions: serde_json::Map<String, Value> = g
        .regions
        .iter()
        .enumerate()
        .map(|(r, n)| (n.clone(), json!(vv.get(r))))
        .collect();
    let handoffs: Vec<Value> = core
        .handoffs()
        .filter(|h| h.event == e.id)
        .map(|h| handoff(core, h))
        .collect();
    let forwards: Vec<Value> = core
        .event_forward_stats(&e.id)
        .into_iter()
        .map(|(to, f)| forward(to, f))
        .collect();
    json!({
        "event": &*e.id, "region": core.config().region, "pools": pools,
        "version_vector": versions, "rebalance": e.info.rebalance, "handoffs": handoffs,
        "forwards": forwards,
    })
}

/// This region's forwards to one region: calls sent, served (a hold or an order), refused,
/// lost (no answer in time, or no link), and the latency of the answered ones.
pub fn forward(to: &str, f: &allot_node::ForwardStats) -> Value {
    json!({
        "to": to, "sent": f.sent, "served": f.served, "refused": f.refused, "lost": f.lost,
        "mean_latency_ms": f.mean_latency_ms(), "max_latency_ms": f.latency_ms_max,
    })
}
