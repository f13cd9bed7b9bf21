//! An event's page: per pool and region a stacked bar of sold / held / sellable / in flight
//! that adds up to the pool's capacity, how stale this region's view of each region is, the
//! sale rate per region over the last minutes, forwards and recent handoffs, the seat map of
//! assigned pools, and the sales buttons. All of it as *this* region sees the cluster.

use std::fmt::Write as _;
use std::sync::Arc;

use allot_crdt::{PoolIdx, PoolKind, RegionIdx};
use allot_node::event::{EventState, SeatLocal};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::html::{
    escape, key, page, rate_chart, region_colour, respond, seat_map, stacked_bar, SeatLook,
    Segment, Series, HELD, IN_FLIGHT, SELLABLE, SOLD,
};
use super::{live, session};
use crate::http::AppState;
use crate::views::{self, ForwardView, HandoffView};

/// A region not heard from for this long makes the view stale.
const STALE_AFTER_MS: u64 = 3_000;

/// What this region knows of another's view of the event's metadata.
enum MetaSeen {
    /// This region itself.
    Here,
    /// It reported the same metadata heads: it sees the same sales state.
    Same,
    /// It reported other heads: one of the two has changes the other has not merged yet.
    Syncing,
    NotHeard,
}

struct RegionLine {
    name: String,
    /// Since it was last heard from (`Some(0)` for this region).
    heard_ms_ago: Option<u64>,
    /// Versions of its own row it reported having and this region has not merged yet.
    versions_behind: u64,
    meta: MetaSeen,
}

/// One region's part of a pool, as this region sees it.
struct Bar {
    sold: u64,
    held: u64,
    sellable: u64,
    /// This region only: credited here, not yet durable.
    landing: u64,
}

struct PoolFigures {
    id: String,
    capacity: u64,
    bars: Vec<Bar>,
    /// Units this region asked others for and is still waiting on.
    asked: u64,
    /// Seat rows, for an assigned pool.
    seats: Option<Vec<Vec<SeatLook>>>,
}

struct EventFigures {
    region: String,
    id: String,
    name: String,
    sales: &'static str,
    on_sale_at: Option<String>,
    on_sale_now: bool,
    regions: Vec<RegionLine>,
    pools: Vec<PoolFigures>,
    handoffs: Vec<HandoffView>,
    forwards: Vec<ForwardView>,
    /// Sales per minute per region, oldest first (from the sampled history).
    rates: Vec<Vec<u64>>,
}

fn regions(e: &EventState, now: u64) -> Vec<RegionLine> {
    let vv = e.ledger.version_vector();
    e.genesis()
        .regions
        .iter()
        .enumerate()
        .map(|(r, name)| {
            if r == e.me as usize {
                return RegionLine {
                    name: name.clone(),
                    heard_ms_ago: Some(0),
                    versions_behind: 0,
                    meta: MetaSeen::Here,
                };
            }
            let peer = &e.peers[r];
            let meta = if peer.heard_at.is_none() {
                MetaSeen::NotHeard
            } else if peer.meta_heads == e.gossiped_meta_heads {
                MetaSeen::Same
            } else {
                MetaSeen::Syncing
            };
            RegionLine {
                name: name.clone(),
                heard_ms_ago: peer.heard_at.map(|t| now.saturating_sub(t)),
                versions_behind: peer
                    .vv
                    .as_ref()
                    .map_or(0, |theirs| theirs.get(r).saturating_sub(vv.get(r))),
                meta,
            }
        })
        .collect()
}

fn seats(e: &EventState, p: PoolIdx) -> Option<Vec<Vec<SeatLook>>> {
    let PoolKind::Assigned { seats } = &e.genesis().pool(p).kind else {
        return None;
    };
    let owners = e.ledger.seat_owners(p);
    let starts = &e.row_starts[p as usize];
    let mut rows: Vec<Vec<SeatLook>> = Vec::new();
    for (s, seat) in owners.iter().enumerate().take(seats.len()) {
        let owner = seat.owner;
        let look = if owner != e.me {
            SeatLook::Owner(owner as usize)
        } else {
            match e.seats[p as usize][s] {
                SeatLocal::Free => SeatLook::Free(owner as usize),
                SeatLocal::Held(_) => SeatLook::Held,
                SeatLocal::Arriving(_) => SeatLook::Arriving,
                SeatLocal::Sold(_) => SeatLook::Sold,
            }
        };
        if rows.is_empty() || starts.get(s).copied().unwrap_or(false) {
            rows.push(Vec::new());
        }
        if let Some(row) = rows.last_mut() {
            row.push(look);
        }
    }
    Some(rows)
}

fn pools(core: &allot_node::Core, e: &EventState) -> Vec<PoolFigures> {
    let g = e.genesis();
    (0..g.pools.len() as PoolIdx)
        .map(|p| {
            let l = &e.ledger;
            let bars = (0..g.regions.len() as RegionIdx)
                .map(|r| {
                    let figures = e.region_figures(p, r);
                    Bar {
                        sold: l.sold(p, r),
                        held: figures.held,
                        sellable: figures.sellable.max(0) as u64,
                        // Only this region knows what is credited to it and not yet durable.
                        landing: if r == e.me {
                            e.pending_credit[p as usize]
                        } else {
                            0
                        },
                    }
                })
                .collect();
            PoolFigures {
                id: g.pool(p).id.clone(),
                capacity: g.pool(p).capacity(),
                bars,
                asked: core.in_flight(&e.id, p).map_or(0, |f| f.asked),
                seats: seats(e, p),
            }
        })
        .collect()
}

fn snapshot(s: &AppState, event: &str) -> Option<EventFigures> {
    let mut figures = s.core.read(|core| {
        let e = core.event(event)?;
        let i = &e.info;
        Some(EventFigures {
            region: core.config().region.clone(),
            id: e.id.to_string(),
            name: i.name.clone(),
            sales: i.sales.as_str(),
            on_sale_at: i.on_sale_at_ms.map(views::rfc3339),
            on_sale_now: i.sales == allot_crdt::SalesState::Open
                && i.on_sale_at_ms.is_none_or(|t| core.now() >= t),
            regions: regions(e, core.now()),
            pools: pools(core, e),
            handoffs: core
                .handoffs()
                .filter(|h| h.event == e.id)
                .take(10)
                .map(|h| views::handoff(core, h))
                .collect(),
            forwards: core
                .event_forward_stats(&e.id)
                .into_iter()
                .map(|(to, f)| views::forward(to, f))
                .collect(),
            rates: Vec::new(),
        })
    })??;
    // The history has its own lock: read after the core's is released.
    figures.rates = s.history.rates(event, figures.regions.len());
    Some(figures)
}

fn render(f: &EventFigures) -> String {
    let mut o = String::new();
    let on_sale_at = f
        .on_sale_at
        .as_deref()
        .map(|t| format!(", on sale from {}", escape(t)))
        .unwrap_or_default();
    let state = if f.on_sale_now { "ok" } else { "err" };
    let _ = write!(
        o,
        "<p>Sales here: <b class={state} id=sales>{}</b>{on_sale_at} — {}</p>",
        f.sales,
        if f.on_sale_now {
            "taking holds and purchases"
        } else {
            "refusing holds and purchases (409 sales-closed)"
        },
    );
    render_regions(&mut o, f);
    for p in &f.pools {
        render_pool(&mut o, f, p);
    }
    let series: Vec<Series> = f
        .regions
        .iter()
        .zip(&f.rates)
        .enumerate()
        .map(|(r, (line, points))| Series {
            name: &line.name,
            colour: region_colour(r),
            points,
        })
        .collect();
    let now: Vec<String> = f
        .regions
        .iter()
        .zip(&f.rates)
        .map(|(line, points)| {
            format!(
                "{} {}",
                escape(&line.name),
                points.last().copied().unwrap_or(0)
            )
        })
        .collect();
    let _ = write!(
        o,
        "<h2>Sales per minute, last ten minutes</h2><div class=scroll>{}</div><p class=muted>now: {}</p>",
        rate_chart(&series, 600),
        now.join(" · ")
    );
    render_flows(&mut o, f);
    o
}

fn render_regions(o: &mut String, f: &EventFigures) {
    let stale: Vec<&RegionLine> = f
        .regions
        .iter()
        .filter(|r| r.versions_behind > 0 || r.heard_ms_ago.is_none_or(|a| a > STALE_AFTER_MS))
        .collect();
    if !stale.is_empty() {
        let names: Vec<String> = stale.iter().map(|r| escape(&r.name)).collect();
        let _ = write!(
            o,
            "<p class=stale id=stale>This view is stale for {}: the figures of those regions are \
             what {} last merged (see lag and age below).</p>",
            names.join(", "),
            escape(&f.region)
        );
    }
    o.push_str(
        "<div class=scroll><table><thead><tr><th>Region</th><th class=n>Heard</th>\
         <th class=n>Versions behind</th><th>Sales state</th></tr></thead><tbody>",
    );
    for (r, line) in f.regions.iter().enumerate() {
        let heard = match line.heard_ms_ago {
            Some(0) if matches!(line.meta, MetaSeen::Here) => "this region".to_owned(),
            Some(ms) => format!("{:.1} s ago", ms as f64 / 1000.0),
            None => "never".to_owned(),
        };
        let meta = match line.meta {
            MetaSeen::Here => f.sales.to_owned(),
            MetaSeen::Same => format!("{} (same metadata as here)", f.sales),
            MetaSeen::Syncing => "metadata not in sync yet".to_owned(),
            MetaSeen::NotHeard => "not heard".to_owned(),
        };
        let _ = write!(
            o,
            "<tr data-region=\"{name}\"><td><span style=\"color:{c}\">■</span> {name}</td>\
             <td class=n>{heard}</td><td class=n>{behind}</td><td>{meta}</td></tr>",
            name = escape(&line.name),
            c = region_colour(r),
            behind = line.versions_behind,
        );
    }
    o.push_str("</tbody></table></div>");
}

fn render_pool(o: &mut String, f: &EventFigures, p: &PoolFigures) {
    let _ = write!(o, "<h2>Pool {}</h2>", escape(&p.id));
    o.push_str(&key(&[
        (SOLD, "sold"),
        (HELD, "held"),
        (SELLABLE, "sellable"),
        (IN_FLIGHT, "in flight (credited here, not yet durable)"),
    ]));
    o.push_str(
        "<div class=scroll><table><thead><tr><th>Region</th><th style=\"width:45%\"></th>\
         <th class=n>Sold</th><th class=n>Held</th><th class=n>Sellable</th><th class=n>In flight</th></tr></thead><tbody>",
    );
    let mut total = 0u64;
    for (line, b) in f.regions.iter().zip(&p.bars) {
        total += b.sold + b.held + b.sellable + b.landing;
        let bar = stacked_bar(
            &[
                Segment {
                    label: "sold",
                    value: b.sold,
                    colour: SOLD,
                },
                Segment {
                    label: "held",
                    value: b.held,
                    colour: HELD,
                },
                Segment {
                    label: "sellable",
                    value: b.sellable,
                    colour: SELLABLE,
                },
                Segment {
                    label: "in flight",
                    value: b.landing,
                    colour: IN_FLIGHT,
                },
            ],
            p.capacity,
        );
        let _ = write!(
            o,
            "<tr data-pool=\"{pool}\" data-region=\"{name}\"><td>{name}</td><td>{bar}</td>\
             <td class=\"n sold\">{}</td><td class=n>{}</td><td class=\"n sellable\">{}</td><td class=n>{}</td></tr>",
            b.sold,
            b.held,
            b.sellable,
            b.landing,
            pool = escape(&p.id),
            name = escape(&line.name),
        );
    }
    let sum = if total == p.capacity {
        format!("{total} = capacity {}", p.capacity)
    } else {
        format!(
            "{total} ≠ capacity {}: a region's figures are in motion",
            p.capacity
        )
    };
    let _ = write!(
        o,
        "</tbody><tfoot><tr><th>All regions</th><td class=total>{sum}</td><td colspan=4 class=muted>{}</td></tr></tfoot></table></div>",
        if p.asked > 0 { format!("asking other regions for {}", p.asked) } else { String::new() }
    );
    if let Some(rows) = &p.seats {
        let owners: Vec<(&str, String)> = f
            .regions
            .iter()
            .enumerate()
            .map(|(r, l)| (region_colour(r), format!("{}'s", l.name)))
            .collect();
        let mut legend: Vec<(&str, &str)> = owners.iter().map(|(c, l)| (*c, l.as_str())).collect();
        legend.extend([
            (SOLD, "sold here"),
            (HELD, "held here"),
            (IN_FLIGHT, "arriving here"),
        ]);
        let _ = write!(
            o,
            "<h3>Seat map</h3>{}<p class=muted>{} seats are drawn by state; the others by owner only \
             (their state is their owner's to say).</p><div class=scroll>{}</div>",
            key(&legend),
            escape(&f.region),
            seat_map(rows)
        );
    }
}

fn render_flows(o: &mut String, f: &EventFigures) {
    if !f.forwards.is_empty() {
        o.push_str(
            "<h2>Sales forwarded from here</h2><div class=scroll><table><thead><tr><th>To</th>\
             <th class=n>Sent</th><th class=n>Served</th><th class=n>Refused</th><th class=n>Lost</th>\
             <th class=n>Mean ms</th></tr></thead><tbody>",
        );
        for w in &f.forwards {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                escape(&w.to),
                w.sent,
                w.served,
                w.refused,
                w.lost,
                w.mean_latency_ms.map_or("–".into(), |m| m.to_string())
            );
        }
        o.push_str("</tbody></table></div>");
    }
    o.push_str("<h2>Recent handoffs</h2>");
    if f.handoffs.is_empty() {
        o.push_str("<p class=muted>None made or received here yet.</p>");
        return;
    }
    o.push_str(
        "<div class=scroll><table><thead><tr><th>When</th><th>Pool</th><th>From</th><th>To</th>\
         <th class=n>Amount</th><th>Reason</th><th class=n>To spendable</th></tr></thead><tbody>",
    );
    for h in &f.handoffs {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td>{}</td><td class=n>{}</td></tr>",
            escape(&h.at),
            escape(h.pool.as_deref().unwrap_or("–")),
            escape(&h.from),
            escape(&h.to),
            h.quantity,
            h.reason.as_str(),
            h.ask_to_spendable_ms.map_or("–".into(), |m| format!("{m} ms"))
        );
    }
    o.push_str("</tbody></table></div>");
}

/// The buttons: each a form carrying the session's CSRF token.
fn sales_buttons(event: &str, csrf: &str) -> String {
    let mut o = String::from("<p>Sales, for every region (replicated like the other metadata): ");
    for (state, label) in [("open", "Open"), ("paused", "Pause"), ("closed", "Close")] {
        let _ = write!(
            o,
            "<form class=inline method=post action=\"/dashboard/events/{event}/sales\">\
             <input type=hidden name=csrf value=\"{csrf}\"><input type=hidden name=sales value={state}>\
             <button name=do value={state}>{label}</button></form> ",
            event = escape(event),
        );
    }
    o.push_str("</p>");
    o
}

/// `GET /dashboard/events/{event}`: the event as this region sees it.
#[utoipa::path(get, path = "/dashboard/events/{event}", operation_id = "dashboard_event", tag = "dashboard",
    params(("event" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "The event's page", body = String, content_type = "text/html"),
        (status = 303, description = "No live session: to the login form"),
        (status = 404, description = "No such event here", body = String, content_type = "text/html")))]
pub async fn show(
    State(s): State<Arc<AppState>>,
    Path(event): Path<String>,
    headers: HeaderMap,
) -> Response {
    let csrf = match session::page_session(&s, &headers) {
        Ok(csrf) => csrf,
        Err(to_login) => return to_login.into_response(),
    };
    let Some(figures) = snapshot(&s, &event) else {
        let body = format!("<p class=err>No event <b>{}</b> here.</p>", escape(&event));
        return respond(
            StatusCode::NOT_FOUND,
            page(&s.region, "No such event", None, &body),
        );
    };
    let body = format!(
        "<h2>{name} <small class=muted>{id}</small></h2>\
         <p>As <b>{region}</b> sees the cluster: its merged ledger, and each region's last report.</p>\
         {buttons}<div id=view>{view}</div><p><small id=live class=muted>connecting…</small></p>",
        name = escape(&figures.name),
        id = escape(&figures.id),
        region = escape(&s.region),
        buttons = sales_buttons(&figures.id, &csrf),
        view = render(&figures),
    );
    let stream = format!("/dashboard/events/{}/stream", urlencoding(&figures.id));
    respond(
        StatusCode::OK,
        page(&s.region, &figures.name, Some(&stream), &body),
    )
}

/// Event ids are `[A-Za-z0-9_-]`; anything else is percent-encoded all the same.
fn urlencoding(id: &str) -> String {
    id.bytes().fold(String::new(), |mut o, b| {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
        o
    })
}

/// `GET /dashboard/events/{event}/stream`: the event's figures, each time they change.
#[utoipa::path(get, path = "/dashboard/events/{event}/stream", operation_id = "dashboard_event_stream", tag = "dashboard",
    params(("event" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "Server-Sent Events named `view`: the event's figures (HTML)", body = String, content_type = "text/event-stream"),
        (status = 401, description = "No live session", body = String, content_type = "text/plain"),
        (status = 503, description = "Every stream this node allows is open (Retry-After)", body = String, content_type = "text/plain"),
        (status = 404, description = "No such event here", body = String, content_type = "text/plain")))]
pub async fn stream(
    State(s): State<Arc<AppState>>,
    Path(event): Path<String>,
    headers: HeaderMap,
) -> Response {
    let pass = match session::stream_session(&s, &headers) {
        Ok(pass) => pass,
        Err(r) => return r.into_response(),
    };
    if s.core
        .read(|core| core.event(&event).is_none())
        .unwrap_or(true)
    {
        return (StatusCode::NOT_FOUND, "no such event here").into_response();
    }
    live::stream(s, pass, move |s| snapshot(s, &event), render)
}

/// The sales buttons' form.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct SalesForm {
    /// The session's CSRF token, from the page.
    csrf: String,
    sales: crate::http::SalesBody,
}

/// `POST /dashboard/events/{event}/sales`: the buttons' form; the same edit as `PATCH
/// /v1/admin/events/{event}` with `sales`.
#[utoipa::path(post, path = "/dashboard/events/{event}/sales", operation_id = "dashboard_set_sales", tag = "dashboard",
    params(("event" = String, Path, description = "Event id")),
    request_body(content = SalesForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Done (or no live session): back to the event's page (or the login form)"),
        (status = 403, description = "The form's CSRF token is wrong", body = String, content_type = "text/plain"),
        (status = 404, response = inline(crate::openapi::NotFound)),
        (status = 503, response = inline(crate::openapi::Unavailable))))]
pub async fn set_sales(
    State(s): State<Arc<AppState>>,
    Path(event): Path<String>,
    headers: HeaderMap,
    Form(f): Form<SalesForm>,
) -> Response {
    if let Err(r) = session::form_session(&s, &headers, &f.csrf) {
        return r.into_response();
    }
    let patch = allot_crdt::MetaPatch {
        sales: Some(f.sales.into()),
        ..Default::default()
    };
    let back = format!("/dashboard/events/{}", urlencoding(&event));
    match crate::http::patch(&s, event, patch).await {
        Ok(()) => session::see_other(&back),
        Err(problem) => problem.into_response(),
    }
}
