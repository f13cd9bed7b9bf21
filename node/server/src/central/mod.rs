//! `allot central`: the central designs a user would build instead of allot — every pool's
//! remaining count in one store in one place — behind the same HTTP purchase API as a node,
//! served by the same axum stack, so that `allot bench compare` measures the store and not
//! the front. Only what the comparison drives is served: creating an event (its pools and
//! capacities), purchases, and readiness.
//!
//! - `redis_store`: Redis with `appendfsync always`; a Lua script decrements if enough
//!   remains and records the order, atomically.
//! - `postgres_store`: PostgreSQL with `synchronous_commit=on`; one row per pool, decremented
//!   by `UPDATE ... WHERE remaining >= $1 RETURNING`, the order inserted in the same
//!   transaction, over a pool of connections.

pub mod postgres_store;
pub mod redis_store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::problem::Problem;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Redis,
    Postgres,
}

#[derive(clap::Args, Debug)]
pub struct CentralArgs {
    #[arg(long, value_enum)]
    pub store: StoreKind,
    /// `redis://127.0.0.1:6379` or `host=127.0.0.1 port=5432 user=postgres`.
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub listen: SocketAddr,
    /// Connections to PostgreSQL (Redis multiplexes one connection).
    #[arg(long, default_value_t = 32)]
    pub pool_size: usize,
}

/// Why a purchase was not made.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("not enough left in pool {0}")]
    SoldOut(String),
    #[error("no such event or pool")]
    NotFound,
    #[error("the event exists")]
    Exists,
    #[error("the store: {0}")]
    Store(String),
}

impl From<Refusal> for Problem {
    fn from(r: Refusal) -> Problem {
        match r {
            Refusal::SoldOut(_) => Problem::new(StatusCode::CONFLICT, "sold-out", r.to_string()),
            Refusal::NotFound => Problem::not_found("not-found", r.to_string()),
            Refusal::Exists => Problem::new(StatusCode::CONFLICT, "event-exists", r.to_string()),
            Refusal::Store(e) => Problem::unavailable(e),
        }
    }
}

pub enum Store {
    Redis(redis_store::RedisStore),
    Postgres(postgres_store::PgStore),
}

/// A pool as the central store keeps it: its id and how many places it has.
pub struct PoolCapacity {
    pub id: String,
    pub capacity: u64,
}

/// What one purchase asks for.
pub struct PurchaseOrder<'a> {
    pub event: &'a str,
    pub pool: &'a str,
    pub quantity: u64,
    pub customer: &'a str,
    pub payment_ref: &'a str,
}

impl Store {
    async fn create(&self, event: &str, pools: &[PoolCapacity]) -> Result<(), Refusal> {
        match self {
            Store::Redis(s) => s.create(event, pools).await,
            Store::Postgres(s) => s.create(event, pools).await,
        }
    }

    /// The order's id once it is durable.
    async fn purchase(&self, order: &PurchaseOrder<'_>) -> Result<i64, Refusal> {
        match self {
            Store::Redis(s) => s.purchase(order).await,
            Store::Postgres(s) => s.purchase(order).await,
        }
    }
}

#[derive(Deserialize)]
struct EventBody {
    id: String,
    pools: Vec<PoolBody>,
}

#[derive(Deserialize)]
struct PoolBody {
    id: String,
    capacity: Option<u64>,
    seats: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct PurchaseBody {
    pool: String,
    quantity: u64,
    customer: String,
    payment_ref: String,
}

async fn create_event(
    State(store): State<Arc<Store>>,
    Json(e): Json<EventBody>,
) -> Result<Response, Problem> {
    let pools: Vec<PoolCapacity> = e
        .pools
        .into_iter()
        .map(|p| PoolCapacity {
            capacity: p.capacity.or(p.seats.map(|s| s.len() as u64)).unwrap_or(0),
            id: p.id,
        })
        .collect();
    if e.id.is_empty() || pools.is_empty() || pools.iter().any(|p| p.id.is_empty()) {
        return Err(Problem::invalid("an id and at least one pool"));
    }
    store.create(&e.id, &pools).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": e.id}))).into_response())
}

async fn purchase(
    State(store): State<Arc<Store>>,
    Path(event): Path<String>,
    Json(p): Json<PurchaseBody>,
) -> Result<Response, Problem> {
    if p.quantity == 0 || p.quantity > 100 {
        return Err(Problem::invalid("quantity: 1 to 100"));
    }
    let order = PurchaseOrder {
        event: &event,
        pool: &p.pool,
        quantity: p.quantity,
        customer: &p.customer,
        payment_ref: &p.payment_ref,
    };
    let id = store.purchase(&order).await?;
    let body = json!({
        "order_id": format!("c-{id}"), "event": event, "pool": p.pool, "quantity": p.quantity,
        "customer": p.customer, "payment_ref": p.payment_ref, "status": "confirmed",
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/readyz", get(|| async { "ready" }))
        .route("/v1/admin/events", post(create_event))
        .route("/v1/events/{event}/purchases", post(purchase))
        .layer(axum::extract::DefaultBodyLimit::max(crate::http::MAX_BODY))
        .with_state(store)
}

pub async fn serve(args: &CentralArgs) -> anyhow::Result<()> {
    let store = match args.store {
        StoreKind::Redis => Store::Redis(redis_store::RedisStore::connect(&args.url).await?),
        StoreKind::Postgres => {
            Store::Postgres(postgres_store::PgStore::connect(&args.url, args.pool_size).await?)
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(Arc::new(store)))
        .with_graceful_shutdown(crate::node::signal())
        .await
        .context("serving HTTP")
}
