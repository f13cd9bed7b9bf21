//! What the HTTP endpoints read before their own logic: the operator's token, and a write's
//! body with its idempotency key.
//!
//! The checks run in one fixed order, which decides the answer to a request that is wrong in
//! several ways at once: the operator's token (401, on operator endpoints), the body's size
//! (413), the `Idempotency-Key` (422), then the JSON (400 malformed, 422 wrong shape). Axum
//! runs an endpoint's extractors in argument order, so [`Operator`] goes before [`Keyed`] or
//! [`Posted`]: a caller without the token learns nothing about the body it sent.

use std::sync::Arc;

use allot_node::IdempotencyKey;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::http::AppState;
use crate::problem::Problem;

/// The request carries this node's operator token.
pub struct Operator;

impl FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Operator, Problem> {
        let unauthorized = |d: &str| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", d);
        let Some(token) = &state.admin_token else {
            return Err(unauthorized(
                "no operator token is configured on this node (ALLOT_ADMIN_TOKEN)",
            ));
        };
        let given = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("operator endpoints need Authorization: Bearer <token>"))?;
        if !same_token(given, token) {
            return Err(unauthorized("wrong operator token"));
        }
        Ok(Operator)
    }
}

/// Whether a secret given equals the expected one, in a time that does not reveal how much of
/// it matched. An empty expected secret matches nothing.
pub fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let diff = a.len() ^ b.len()
        | a.iter()
            .zip(b.iter().cycle())
            .fold(0usize, |d, (x, y)| d | usize::from(x ^ y));
    diff == 0 && !b.is_empty()
}

/// A write's raw body and its idempotency key.
pub struct Keyed {
    pub key: Option<IdempotencyKey>,
    pub body: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for Keyed {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Keyed, Problem> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let key = req.headers().get("idempotency-key").cloned();
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::body_too_large()
            } else {
                Problem::bad_request(e.body_text())
            }
        })?;
        let key = match key {
            Some(key) => Some(idempotency_key(&key, &method, &path, &body)?),
            None => None,
        };
        Ok(Keyed { key, body })
    }
}

/// A write's JSON body, parsed, with its idempotency key.
pub struct Posted<T> {
    pub key: Option<IdempotencyKey>,
    pub body: T,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Posted<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Posted<T>, Problem> {
        let Keyed { key, body } = Keyed::from_request(req, state).await?;
        Ok(Posted {
            key,
            body: parse(&body)?,
        })
    }
}

pub fn parse<T: DeserializeOwned>(b: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(b).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Problem::invalid(format!("invalid body: {e}")),
        _ => Problem::bad_request(format!("malformed JSON: {e}")),
    })
}

/// The `Idempotency-Key` with a hash of what it guards: method, path and body, so the same
/// key reused for anything else is told apart.
fn idempotency_key(
    key: &HeaderValue,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<IdempotencyKey, Problem> {
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| Problem::invalid("Idempotency-Key: 1-128 visible ASCII characters"))?;
    let mut h = Sha256::new();
    h.update(method.as_str());
    h.update([0]);
    h.update(path);
    h.update([0]);
    h.update(body);
    Ok(IdempotencyKey {
        key: key.to_owned(),
        body_hash: h.finalize().into(),
    })
}
