//! The operator dashboard's door: `GET /dashboard`, a login form for the operator token that
//! sets a session cookie (`HttpOnly`, `SameSite=Strict`, never a token in a URL), and logout.
//! Every form that changes something carries the session's CSRF token.
//!
//! First part: the events page (sell-through, sale rate, sales state), rendered on the
//! server from what this region sees, and kept live over Server-Sent Events
//! (`/dashboard/stream`, at most two updates a second, only when a figure changed; the
//! browser's `EventSource` reconnects by itself). The figures are copied under the core's
//! lock and rendered after it. The other pages (an event's regions and seat map, the
//! cluster) come next.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde::Serialize;

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use crate::http::AppState;

const COOKIE: &str = "allot_session";
/// A session lasts this long after login.
const SESSION_MS: u64 = 12 * 3600 * 1000;
/// Sessions kept at once: logging in past it drops the oldest.
const MAX_SESSIONS: usize = 1_000;

struct Session {
    csrf: String,
    expires_at_ms: u64,
}

/// Live operator sessions of this node (in memory: a restart logs everyone out).
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 24];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .ok()?;
    Some(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

impl Sessions {
    /// A new session: its id (the cookie) and its CSRF token.
    fn open(&self, now: u64) -> Option<(String, String)> {
        let (id, csrf) = (random_hex()?, random_hex()?);
        let mut map = self.0.lock().ok()?;
        map.retain(|_, s| s.expires_at_ms > now);
        if map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let session = Session {
            csrf: csrf.clone(),
            expires_at_ms: now + SESSION_MS,
        };
        map.insert(id.clone(), session);
        Some((id, csrf))
    }

    /// The CSRF token of the live session the request's cookie names.
    fn csrf_of(&self, headers: &HeaderMap, now: u64) -> Option<(String, String)> {
        let id = cookie(headers)?;
        let map = self.0.lock().ok()?;
        let s = map.get(&id).filter(|s| s.expires_at_ms > now)?;
        Some((id, s.csrf.clone()))
    }

    fn close(&self, id: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(id);
        }
    }
}

/// One event's line on the events page.
#[derive(Clone, PartialEq, Serialize)]
struct EventRow {
    id: String,
    name: String,
    sales: &'static str,
    capacity: u64,
    sold: u64,
    pct: f64,
    sale_rate_per_min: u64,
}

/// Every event's figures as this region sees them: copied under the core's lock.
fn rows(core: &allot_node::Core) -> Vec<EventRow> {
    core.events()
        .map(|e| {
            let g = e.genesis();
            let (mut capacity, mut sold, mut rate) = (0u64, 0u64, 0u64);
            for (p, pool) in g.pools.iter().enumerate() {
                let pi = p as allot_crdt::PoolIdx;
                capacity += pool.capacity();
                for r in 0..g.regions.len() as allot_crdt::RegionIdx {
                    sold += e
                        .ledger
                        .consumed(pi, r)
                        .saturating_sub(e.ledger.returned(pi, r));
                }
                rate += e.rates[p].per_min;
            }
            let pct = if capacity == 0 {
                0.0
            } else {
                (1000.0 * sold as f64 / capacity as f64).round() / 10.0
            };
            EventRow {
                id: e.id.to_string(),
                name: e.info.name.clone(),
                sales: e.info.sales.as_str(),
                capacity,
                sold,
                pct,
                sale_rate_per_min: rate,
            }
        })
        .collect()
}

/// The page's script: rows updated in place from the stream (text, never markup).
const LIVE: &str = "<script>\
(function(){var live=document.getElementById('live');\
var es=new EventSource('/dashboard/stream');\
es.onopen=function(){live.textContent='live';};\
es.onerror=function(){live.textContent='reconnecting…';};\
es.addEventListener('events',function(m){JSON.parse(m.data).forEach(function(r){\
var tr=document.querySelector('tr[data-event=\"'+CSS.escape(r.id)+'\"]');if(!tr)return;\
tr.querySelector('.sold').textContent=r.sold+' / '+r.capacity;\
tr.querySelector('.pct').textContent=r.pct.toFixed(1)+'%';\
tr.querySelector('.bar i').style.width=r.pct+'%';\
tr.querySelector('.rate').textContent=r.sale_rate_per_min;\
tr.querySelector('.sales').textContent=r.sales;});});})();</script>";

/// `GET /dashboard/stream`: the events' figures, each time they change, at most twice a
/// second, for a logged-in operator.
#[utoipa::path(get, path = "/dashboard/stream", tag = "dashboard",
    responses(
        (status = 200, description = "Server-Sent Events named `events`: every event's figures", body = String, content_type = "text/event-stream"),
        (status = 401, description = "No live session")))]
pub async fn stream(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if s.sessions
        .csrf_of(&headers, crate::driver::wall_ms())
        .is_none()
    {
        return (StatusCode::UNAUTHORIZED, "log in at /dashboard").into_response();
    }
    let changes = s.core.changes();
    let updates = futures_util::stream::unfold(
        (changes, s, None::<Vec<EventRow>>),
        |(mut changes, s, last)| async move {
            loop {
                if last.is_some() {
                    // At most two updates a second, and only after something changed.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if changes.changed().await.is_err() {
                        return None;
                    }
                }
                let now = s.core.read(rows)?;
                if last.as_ref() != Some(&now) {
                    let data = serde_json::to_string(&now).unwrap_or_default();
                    let item = SseEvent::default().event("events").data(data);
                    return Some((Ok::<_, Infallible>(item), (changes, s, Some(now))));
                }
            }
        },
    );
    Sse::new(updates)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_owned)
        })
}

/// Text for HTML: what an operator typed (event names) is never markup.
fn escape(s: &str) -> String {
    s.chars().fold(String::with_capacity(s.len()), |mut o, c| {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
        o
    })
}

fn page(region: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>allot · {region}</title><style>\
         body{{font:15px system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;color:#222}}\
         table{{border-collapse:collapse;width:100%}}td,th{{padding:.4rem;border-bottom:1px solid #ddd;text-align:left}}\
         .bar{{background:#eee;height:.6rem;border-radius:.3rem}}.bar i{{display:block;height:100%;background:#3a7;border-radius:.3rem}}\
         header{{display:flex;justify-content:space-between;align-items:center}}.err{{color:#b00}}\
         </style></head><body><header><h1>allot · {region}</h1></header>{body}</body></html>",
        region = escape(region)
    )
}

fn login_form(region: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=err>{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        region,
        &format!(
            "{error}<form method=post action=/dashboard/login>\
             <label>Operator token <input type=password name=token autocomplete=current-password required></label> \
             <button>Log in</button></form>"
        ),
    )
}

/// `GET /dashboard`: the events page for a logged-in operator, else the login form.
#[utoipa::path(get, path = "/dashboard", tag = "dashboard",
    responses((status = 200, description = "The events page, or the login form", body = String, content_type = "text/html")))]
pub async fn show(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let now = crate::driver::wall_ms();
    let Some((_, csrf)) = s.sessions.csrf_of(&headers, now) else {
        return Html(login_form(&s.region, None)).into_response();
    };
    let rows = s.core.read(rows).unwrap_or_default();
    let mut table = String::from(
        "<table><thead><tr><th>Event</th><th>Sold</th><th>Sell-through</th>\
         <th>Sales here /min</th><th>Sales</th></tr></thead><tbody>",
    );
    for r in rows {
        let _ = write!(
            table,
            "<tr data-event=\"{id}\"><td>{name} <small>{id}</small></td>\
             <td class=sold>{sold} / {capacity}</td>\
             <td><div class=bar><i style=\"width:{pct:.1}%\"></i></div><span class=pct>{pct:.1}%</span></td>\
             <td class=rate>{rate}</td><td class=sales>{sales}</td></tr>",
            id = escape(&r.id),
            name = escape(&r.name),
            sold = r.sold,
            capacity = r.capacity,
            pct = r.pct,
            rate = r.sale_rate_per_min,
            sales = r.sales,
        );
    }
    table.push_str("</tbody></table>");
    let body = format!(
        "<p>The events as <b>{region}</b> sees them (its merged ledger).</p>{table}\
         <form method=post action=/dashboard/logout><input type=hidden name=csrf value=\"{csrf}\">\
         <button>Log out</button></form><p><small id=live>connecting…</small></p>{LIVE}",
        region = escape(&s.region)
    );
    Html(page(&s.region, &body)).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /dashboard/login`: the token checked as the API checks it; a session cookie back.
#[utoipa::path(post, path = "/dashboard/login", tag = "dashboard",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "token=<operator token>"),
    responses(
        (status = 303, description = "Logged in: an HttpOnly, SameSite=Strict session cookie, back to /dashboard"),
        (status = 401, description = "Wrong token: the form again", body = String, content_type = "text/html")))]
pub async fn login(State(s): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> Response {
    let refused = |why: &str| {
        (
            StatusCode::UNAUTHORIZED,
            Html(login_form(&s.region, Some(why))),
        )
            .into_response()
    };
    match &s.admin_token {
        Some(t) if crate::extract::same_token(&f.token, t) => {}
        Some(_) => return refused("Wrong operator token."),
        None => return refused("No operator token is configured on this node."),
    }
    let Some((id, _)) = s.sessions.open(crate::driver::wall_ms()) else {
        return refused("No session could be opened.");
    };
    back_to_dashboard(&id, SESSION_MS / 1000)
}

/// A redirect to the dashboard that sets the session cookie to `value` for `max_age_s`
/// (0 clears it). The cookie's flags live here alone.
fn back_to_dashboard(value: &str, max_age_s: u64) -> Response {
    let cookie = format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age={max_age_s}"
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/dashboard".to_owned()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// `POST /dashboard/logout`: only with the session's CSRF token.
#[utoipa::path(post, path = "/dashboard/logout", tag = "dashboard",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "csrf=<the session's token, from the page>"),
    responses(
        (status = 303, description = "Logged out; the cookie cleared"),
        (status = 403, description = "The form's CSRF token is wrong")))]
pub async fn logout(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    let now = crate::driver::wall_ms();
    match s.sessions.csrf_of(&headers, now) {
        Some((id, csrf)) if crate::extract::same_token(&f.csrf, &csrf) => s.sessions.close(&id),
        Some(_) => {
            return (StatusCode::FORBIDDEN, "the form's CSRF token is wrong").into_response()
        }
        None => {}
    }
    back_to_dashboard("", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_text_is_never_markup() {
        assert_eq!(
            escape("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }

    #[test]
    fn sessions_expire_and_stay_bounded() {
        let s = Sessions::default();
        let (id, csrf) = s.open(1_000).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={id}").parse().unwrap(),
        );
        assert_eq!(s.csrf_of(&h, 2_000), Some((id.clone(), csrf)));
        assert_eq!(s.csrf_of(&h, 1_000 + SESSION_MS), None, "expired");
        for t in 0..(MAX_SESSIONS as u64 + 10) {
            s.open(5_000 + t).unwrap();
        }
        assert!(s.0.lock().unwrap().len() <= MAX_SESSIONS);
    }
}
