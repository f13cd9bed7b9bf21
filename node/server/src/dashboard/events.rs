//! The events page: every event with its sell-through, sale rate and sales state, as this
//! region's merged ledger has them.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::html::{escape, page, respond};
use super::{live, session};
use crate::http::AppState;
use axum::http::StatusCode;

/// One event's line.
struct EventRow {
    id: String,
    name: String,
    sales: &'static str,
    capacity: u64,
    sold: u64,
    /// Places sold per minute, by all regions (each region's own last report).
    sale_rate_per_min: u64,
}

impl EventRow {
    fn pct(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            (1000.0 * self.sold as f64 / self.capacity as f64).round() / 10.0
        }
    }
}

/// Every event's figures: copied under the core's lock.
fn rows(core: &allot_node::Core) -> Vec<EventRow> {
    core.events()
        .map(|e| {
            let g = e.genesis();
            let (mut capacity, mut sold, mut rate) = (0u64, 0u64, 0u64);
            for (p, pool) in g.pools.iter().enumerate() {
                let pi = p as allot_crdt::PoolIdx;
                capacity += pool.capacity();
                for r in 0..g.regions.len() as allot_crdt::RegionIdx {
                    sold += e.ledger.sold(pi, r);
                    rate += e.region_figures(pi, r).sale_rate_per_min;
                }
            }
            EventRow {
                id: e.id.to_string(),
                name: e.info.name.clone(),
                sales: e.info.sales.as_str(),
                capacity,
                sold,
                sale_rate_per_min: rate,
            }
        })
        .collect()
}

/// The live part of the page: the table.
fn render(rows: &Vec<EventRow>) -> String {
    if rows.is_empty() {
        return "<p class=muted>No events yet.</p>".into();
    }
    let mut t = String::from(
        "<div class=scroll><table><thead><tr><th>Event</th><th class=n>Sold</th>\
         <th>Sell-through</th><th class=n>Sales /min</th><th>Sales</th></tr></thead><tbody>",
    );
    for r in rows {
        let _ = write!(
            t,
            "<tr data-event=\"{id}\"><td><a href=\"/dashboard/events/{id}\">{name}</a> <small class=muted>{id}</small></td>\
             <td class=\"n sold\">{sold} / {capacity}</td>\
             <td><div class=bar><i style=\"width:{pct:.1}%\"></i></div><span class=pct>{pct:.1}%</span></td>\
             <td class=\"n rate\">{rate}</td><td class=sales>{sales}</td></tr>",
            id = escape(&r.id),
            name = escape(&r.name),
            sold = r.sold,
            capacity = r.capacity,
            pct = r.pct(),
            rate = r.sale_rate_per_min,
            sales = r.sales,
        );
    }
    t.push_str("</tbody></table></div>");
    t
}

fn snapshot(s: &AppState) -> Option<Vec<EventRow>> {
    s.core.read(rows)
}

/// `GET /dashboard`: the events page for a logged-in operator, else the login form.
#[utoipa::path(get, path = "/dashboard", operation_id = "dashboard_events", tag = "dashboard",
    responses((status = 200, description = "The events page, or the login form", body = String, content_type = "text/html")))]
pub async fn show(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Ok(csrf) = session::page_session(&s, &headers) else {
        return respond(StatusCode::OK, session::login_form(&s.region, None));
    };
    let view = render(&snapshot(&s).unwrap_or_default());
    let body = format!(
        "<p>Every event as <b>{region}</b> sees it (its merged ledger; sales rates as each \
         region last reported them).</p><div id=view>{view}</div>\
         <form method=post action=/dashboard/logout><input type=hidden name=csrf value=\"{csrf}\">\
         <button>Log out</button></form><p><small id=live class=muted>connecting…</small></p>",
        region = escape(&s.region)
    );
    respond(
        StatusCode::OK,
        page(&s.region, "Events", Some("/dashboard/stream"), &body),
    )
}

/// `GET /dashboard/stream`: the events page's table, each time it changes.
#[utoipa::path(get, path = "/dashboard/stream", operation_id = "dashboard_events_stream", tag = "dashboard",
    responses(
        (status = 200, description = "Server-Sent Events named `view`: the events table (HTML)", body = String, content_type = "text/event-stream"),
        (status = 401, description = "No live session", body = String, content_type = "text/plain"),
        (status = 503, description = "Every stream this node allows is open (Retry-After)", body = String, content_type = "text/plain")))]
pub async fn stream(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match session::stream_session(&s, &headers) {
        Ok(pass) => live::stream(s, pass, snapshot, render),
        Err(r) => r.into_response(),
    }
}

/// `GET /dashboard/live.js`: the script that keeps a page live (open: it holds no data).
#[utoipa::path(get, path = "/dashboard/live.js", operation_id = "dashboard_live_js", tag = "dashboard",
    responses((status = 200, description = "The dashboard's script", body = String, content_type = "text/javascript")))]
pub async fn live_js() -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "max-age=300"),
        ],
        super::html::LIVE_JS,
    )
        .into_response()
}
