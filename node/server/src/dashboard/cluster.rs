//! The cluster page: this node's readiness and durable record index, and each other region's
//! link as this node sees it (state, last frame each way, gossip frames and bytes, how many of
//! this region's row versions it has not acknowledged).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::html::{escape, page, region_colour, respond};
use super::{live, session};
use crate::http::AppState;
use crate::transport::PeerStatus;
use axum::http::StatusCode;

struct PeerLine {
    region: String,
    /// Its place in cluster order (its colour).
    index: usize,
    link: Option<PeerStatus>,
    lag_versions: u64,
}

struct ClusterFigures {
    region: String,
    ready: bool,
    durable_index: u64,
    incarnation: u64,
    events: usize,
    /// Milliseconds on this node's clock, to age the links' last frames.
    now: u64,
    peers: Vec<PeerLine>,
}

fn snapshot(s: &AppState) -> Option<ClusterFigures> {
    let ready = s.core.is_ready();
    let links = s
        .transport
        .as_ref()
        .and_then(|t| t.lock().ok().map(|l| l.clone()));
    s.core.read(|core| {
        let cfg = core.config();
        ClusterFigures {
            region: cfg.region.clone(),
            ready,
            durable_index: core.persisted_index(),
            incarnation: cfg.incarnation,
            events: core.events().count(),
            now: crate::driver::wall_ms(),
            peers: cfg
                .regions
                .iter()
                .enumerate()
                .filter(|(_, r)| **r != cfg.region)
                .map(|(index, r)| PeerLine {
                    region: r.clone(),
                    index,
                    link: links.as_ref().and_then(|l| l.get(r).cloned()),
                    lag_versions: crate::http::peer_lag(core, r),
                })
                .collect(),
        }
    })
}

fn ago(now: u64, at: Option<u64>) -> String {
    match at {
        Some(t) => format!("{:.1} s ago", now.saturating_sub(t) as f64 / 1000.0),
        None => "never".into(),
    }
}

fn render(f: &ClusterFigures) -> String {
    let mut o = format!(
        "<table><tbody><tr><th>This node</th><td>{region}, incarnation {inc}</td></tr>\
         <tr><th>Ready</th><td class={cls} id=ready>{ready}</td></tr>\
         <tr><th>Durable record index</th><td class=n id=durable>{idx}</td></tr>\
         <tr><th>Events</th><td class=n>{events}</td></tr></tbody></table>\
         <h2>Links to the other regions</h2>",
        region = escape(&f.region),
        inc = f.incarnation,
        cls = if f.ready { "ok" } else { "err" },
        ready = if f.ready {
            "ready"
        } else {
            "not ready: refuses writes"
        },
        idx = f.durable_index,
        events = f.events,
    );
    o.push_str(
        "<div class=scroll><table><thead><tr><th>Region</th><th>Link out</th><th>Link in</th>\
         <th>Last frame in</th><th>Last frame out</th><th class=n>Frames in/out</th>\
         <th class=n>Bytes in/out</th><th class=n>Unacked versions</th></tr></thead><tbody>",
    );
    for p in &f.peers {
        let _ = write!(
            o,
            "<tr data-region=\"{name}\"><td><span style=\"color:{c}\">■</span> {name}</td>",
            name = escape(&p.region),
            c = region_colour(p.index),
        );
        match &p.link {
            Some(l) => {
                let _ = write!(
                    o,
                    "<td class=\"link {cls}\">{out}</td><td>{inc}</td><td>{rin}</td><td>{rout}</td>\
                     <td class=n>{fi} / {fo}</td><td class=n>{bi} / {bo}</td><td class=n>{lag}</td></tr>",
                    cls = if l.outgoing == "connected" { "ok" } else { "err" },
                    out = l.outgoing,
                    inc = if l.incoming_connected { "connected" } else { "none" },
                    rin = ago(f.now, l.last_received_ms),
                    rout = ago(f.now, l.last_sent_ms),
                    fi = l.frames_in,
                    fo = l.frames_out,
                    bi = l.bytes_in,
                    bo = l.bytes_out,
                    lag = p.lag_versions,
                );
            }
            None => {
                let _ = write!(
                    o,
                    "<td colspan=6 class=muted>no gossip configured on this node (no tls_dir)</td>\
                     <td class=n>{}</td></tr>",
                    p.lag_versions
                );
            }
        }
    }
    o.push_str("</tbody></table></div>");
    o
}

/// `GET /dashboard/cluster`: the cluster as this region sees it.
#[utoipa::path(get, path = "/dashboard/cluster", operation_id = "dashboard_cluster", tag = "dashboard",
    responses(
        (status = 200, description = "The cluster page", body = String, content_type = "text/html"),
        (status = 303, description = "No live session: to the login form")))]
pub async fn show(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(to_login) = session::page_session(&s, &headers) {
        return to_login.into_response();
    }
    let view = snapshot(&s).map(|f| render(&f)).unwrap_or_default();
    let body = format!(
        "<p>The cluster as <b>{region}</b> sees it: the other regions' figures are what their \
         links to this node say.</p><div id=view>{view}</div>\
         <p><small id=live class=muted>connecting…</small></p>",
        region = escape(&s.region)
    );
    respond(
        StatusCode::OK,
        page(
            &s.region,
            "Cluster",
            Some("/dashboard/cluster/stream"),
            &body,
        ),
    )
}

/// `GET /dashboard/cluster/stream`: the cluster page's figures, each time they change.
#[utoipa::path(get, path = "/dashboard/cluster/stream", operation_id = "dashboard_cluster_stream", tag = "dashboard",
    responses(
        (status = 200, description = "Server-Sent Events named `view`: the cluster's figures (HTML)", body = String, content_type = "text/event-stream"),
        (status = 401, description = "No live session", body = String, content_type = "text/plain"),
        (status = 503, description = "Every stream this node allows is open (Retry-After)", body = String, content_type = "text/plain")))]
pub async fn stream(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match session::stream_session(&s, &headers) {
        Ok(pass) => live::stream(s, pass, snapshot, render),
        Err(r) => r.into_response(),
    }
}
