//! `POST /v1/admin/faults`: sync faults switched on a running node, so fault runs on real
//! processes (`allot bench compare --parts faults`) can slow or fail its disk. Compiled only
//! with the `fault-switch` feature: a production build has no such endpoint.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::extract::{Operator, Posted};
use crate::http::AppState;
use crate::problem::Problem;

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFaults {
    /// Every synced write from now waits this long first (0: off), at most a minute.
    pub sync_delay_ms: u64,
    /// Every synced write from now fails: the node stops acknowledging until restarted.
    pub fail_syncs: bool,
}

async fn set(
    State(s): State<Arc<AppState>>,
    _: Operator,
    Posted { body, .. }: Posted<SyncFaults>,
) -> Result<Response, Problem> {
    if body.sync_delay_ms > 60_000 {
        return Err(Problem::invalid("sync_delay_ms: 0 to 60000"));
    }
    s.sync_switch
        .set(Duration::from_millis(body.sync_delay_ms), body.fail_syncs);
    tracing::warn!(
        sync_delay_ms = body.sync_delay_ms,
        fail_syncs = body.fail_syncs,
        "sync faults switched by an operator (fault-switch build)"
    );
    Ok(Json(body).into_response())
}

pub fn routes(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router.route("/v1/admin/faults", post(set))
}
