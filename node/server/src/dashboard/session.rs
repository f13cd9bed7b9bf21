//! Who may see the dashboard: a login form for the operator token that sets a session
//! cookie (`HttpOnly`, `SameSite=Strict`, `Path=/dashboard`, never a token in a URL), logout,
//! and the session's CSRF token that every form which changes something must carry.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::html::{escape, page, respond};
use crate::http::AppState;

/// The session cookie's name is per region: browsers keep cookies per host, not per port, so
/// nodes sharing a host (the demo's three on loopback) must not overwrite each other's.
fn cookie_name(region: &str) -> String {
    format!("allot_session_{region}")
}
/// A session lasts this long after login.
const SESSION_MS: u64 = 12 * 3600 * 1000;
/// Sessions kept at once: logging in past it drops the oldest.
const MAX_SESSIONS: usize = 1_000;

struct Session {
    csrf: String,
    expires_at_ms: u64,
}

/// Live operator sessions of this node (in memory: a restart logs everyone out).
pub struct Sessions {
    /// The session cookie's name on this node.
    cookie: String,
    live: Mutex<HashMap<String, Session>>,
    /// Live streams of this node's pages, all sessions together: each costs a short read
    /// under the core's lock twice a second.
    streams: Arc<tokio::sync::Semaphore>,
}

/// Page streams open at once on one node.
pub const MAX_STREAMS: usize = 64;

impl Sessions {
    pub fn new(region: &str) -> Sessions {
        Sessions {
            cookie: cookie_name(region),
            live: Mutex::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }
}

/// A stream's right to run: a live session's id and one of the node's stream permits.
pub(super) struct StreamPass {
    pub session: String,
    pub _permit: tokio::sync::OwnedSemaphorePermit,
}

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
        let mut map = self.live.lock().ok()?;
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
    pub(super) fn csrf_of(&self, headers: &HeaderMap, now: u64) -> Option<(String, String)> {
        let id = cookie(headers, &self.cookie)?;
        let map = self.live.lock().ok()?;
        let s = map.get(&id).filter(|s| s.expires_at_ms > now)?;
        Some((id, s.csrf.clone()))
    }

    /// Whether session `id` is still live (a stream ends when its session does).
    pub(super) fn alive(&self, id: &str, now: u64) -> bool {
        self.live
            .lock()
            .is_ok_and(|map| map.get(id).is_some_and(|s| s.expires_at_ms > now))
    }

    fn close(&self, id: &str) {
        if let Ok(mut map) = self.live.lock() {
            map.remove(id);
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(name)
                .and_then(|v| v.strip_prefix('='))
                .map(str::to_owned)
        })
}

pub(super) fn login_form(region: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=err>{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        region,
        "Log in",
        None,
        &format!(
            "{error}<form method=post action=/dashboard/login>\
             <label>Operator token <input type=password name=token autocomplete=current-password required></label> \
             <button>Log in</button></form>"
        ),
    )
}

/// Why a dashboard request is turned away before its handler runs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// A page without a session: to the login form.
    ToLogin,
    /// A stream without a session (an `EventSource` cannot follow a redirect to a form).
    Unauthorized,
    /// Every stream permit of the node is taken.
    TooManyStreams,
    /// A form whose CSRF token is not the session's.
    WrongCsrf,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::ToLogin => see_other("/dashboard"),
            Refused::Unauthorized => {
                (StatusCode::UNAUTHORIZED, "log in at /dashboard").into_response()
            }
            Refused::TooManyStreams => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                "too many dashboard streams on this node",
            )
                .into_response(),
            Refused::WrongCsrf => {
                (StatusCode::FORBIDDEN, "the form's CSRF token is wrong").into_response()
            }
        }
    }
}

/// The session's CSRF token, or where to go without a session: the login form.
pub(super) fn page_session(s: &AppState, headers: &HeaderMap) -> Result<String, Refused> {
    match s.sessions.csrf_of(headers, crate::driver::wall_ms()) {
        Some((_, csrf)) => Ok(csrf),
        None => Err(Refused::ToLogin),
    }
}

/// A stream's session check: without a live session, 401 (an `EventSource` cannot follow a
/// redirect to a form); with every stream permit taken, 503.
pub(super) fn stream_session(s: &AppState, headers: &HeaderMap) -> Result<StreamPass, Refused> {
    let Some((session, _)) = s.sessions.csrf_of(headers, crate::driver::wall_ms()) else {
        return Err(Refused::Unauthorized);
    };
    match s.sessions.streams.clone().try_acquire_owned() {
        Ok(permit) => Ok(StreamPass {
            session,
            _permit: permit,
        }),
        Err(_) => Err(Refused::TooManyStreams),
    }
}

/// A form's session check: the live session's CSRF token must be the form's.
pub(super) fn form_session(s: &AppState, headers: &HeaderMap, csrf: &str) -> Result<(), Refused> {
    match s.sessions.csrf_of(headers, crate::driver::wall_ms()) {
        Some((_, token)) if crate::extract::same_token(csrf, &token) => Ok(()),
        Some(_) => Err(Refused::WrongCsrf),
        None => Err(Refused::ToLogin),
    }
}

pub(super) fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

/// The login form.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginForm {
    token: String,
}

/// `POST /dashboard/login`: the token checked as the API checks it; a session cookie back.
#[utoipa::path(post, path = "/dashboard/login", operation_id = "dashboard_login", tag = "dashboard",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded", description = "The operator token"),
    responses(
        (status = 303, description = "Logged in: an HttpOnly, SameSite=Strict session cookie, back to /dashboard"),
        (status = 401, description = "Wrong token: the form again", body = String, content_type = "text/html")))]
pub async fn login(State(s): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> Response {
    let refused = |why: &str| respond(StatusCode::UNAUTHORIZED, login_form(&s.region, Some(why)));
    match &s.admin_token {
        Some(t) if crate::extract::same_token(&f.token, t) => {}
        Some(_) => return refused("Wrong operator token."),
        None => return refused("No operator token is configured on this node."),
    }
    let Some((id, _)) = s.sessions.open(crate::driver::wall_ms()) else {
        return refused("No session could be opened.");
    };
    back_to_dashboard(&s.sessions.cookie, &id, SESSION_MS / 1000)
}

/// A redirect to the dashboard that sets the session cookie to `value` for `max_age_s`
/// (0 clears it). The cookie's flags live here alone.
fn back_to_dashboard(name: &str, value: &str, max_age_s: u64) -> Response {
    let cookie =
        format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age={max_age_s}");
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/dashboard".to_owned()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

/// The logout form.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct LogoutForm {
    csrf: String,
}

/// `POST /dashboard/logout`: only with the session's CSRF token.
#[utoipa::path(post, path = "/dashboard/logout", operation_id = "dashboard_logout", tag = "dashboard",
    request_body(content = LogoutForm, content_type = "application/x-www-form-urlencoded", description = "The session's CSRF token, from the page"),
    responses(
        (status = 303, description = "Logged out; the cookie cleared"),
        (status = 403, description = "The form's CSRF token is wrong", body = String, content_type = "text/plain")))]
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
    back_to_dashboard(&s.sessions.cookie, "", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_stay_bounded() {
        let s = Sessions::new("eu-west");
        let (id, csrf) = s.open(1_000).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=b; allot_session_us-east=x; allot_session_eu-west={id}")
                .parse()
                .unwrap(),
        );
        assert_eq!(s.csrf_of(&h, 2_000), Some((id.clone(), csrf)));
        assert_eq!(s.csrf_of(&h, 1_000 + SESSION_MS), None, "expired");
        for t in 0..(MAX_SESSIONS as u64 + 10) {
            s.open(5_000 + t).unwrap();
        }
        assert!(s.live.lock().unwrap().len() <= MAX_SESSIONS);
    }
}
