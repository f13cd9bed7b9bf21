//! Who may see the dashboard: a login form for the operator token that sets a session
//! cookie (`HttpOnly`, `SameSite=Strict`, `Path=/dashboard`, never a token in a URL), logout,
//! and the session's CSRF token that every form which changes something must carry.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::html::{escape, page};
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
    pub(super) fn csrf_of(&self, headers: &HeaderMap, now: u64) -> Option<(String, String)> {
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

/// The session's CSRF token, or where to go without a session: the login form.
pub(super) fn page_session(s: &AppState, headers: &HeaderMap) -> Result<String, Response> {
    match s.sessions.csrf_of(headers, crate::driver::wall_ms()) {
        Some((_, csrf)) => Ok(csrf),
        None => Err(see_other("/dashboard")),
    }
}

/// A stream's session check: without a live session, 401 (an `EventSource` cannot follow a
/// redirect to a form).
pub(super) fn stream_session(s: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    match s.sessions.csrf_of(headers, crate::driver::wall_ms()) {
        Some(_) => Ok(()),
        None => Err((StatusCode::UNAUTHORIZED, "log in at /dashboard").into_response()),
    }
}

/// A form's session check: the live session's CSRF token must be the form's.
pub(super) fn form_session(s: &AppState, headers: &HeaderMap, csrf: &str) -> Result<(), Response> {
    match s.sessions.csrf_of(headers, crate::driver::wall_ms()) {
        Some((_, token)) if crate::extract::same_token(csrf, &token) => Ok(()),
        Some(_) => Err((StatusCode::FORBIDDEN, "the form's CSRF token is wrong").into_response()),
        None => Err(see_other("/dashboard")),
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
