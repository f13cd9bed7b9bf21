//! The PostgreSQL design: `synchronous_commit=on` (the server's setting, made by the bench),
//! one row per pool, decremented with `UPDATE ... WHERE remaining >= $1 RETURNING`, and the
//! order inserted in the same transaction (one statement: a data-modifying CTE), over a pool
//! of connections. Every purchase of a
//! pool updates the same row: the row lock is the queue.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{PoolCapacity, PurchaseOrder, Refusal};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pools (
  event text NOT NULL, pool text NOT NULL,
  remaining bigint NOT NULL CHECK (remaining >= 0),
  PRIMARY KEY (event, pool));
CREATE TABLE IF NOT EXISTS orders (
  id bigserial PRIMARY KEY, event text NOT NULL, pool text NOT NULL,
  quantity bigint NOT NULL, customer text NOT NULL, payment_ref text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
";

/// The purchase: $1 quantity, $2 event, $3 pool, $4 customer, $5 payment reference.
pub(crate) const PURCHASE: &str = "WITH taken AS (\
    UPDATE pools SET remaining = remaining - $1 \
    WHERE event = $2 AND pool = $3 AND remaining >= $1 RETURNING event, pool) \
  INSERT INTO orders (event, pool, quantity, customer, payment_ref) \
  SELECT event, pool, $1, $4, $5 FROM taken RETURNING id";

pub struct PgStore {
    pool: Pool,
}

fn store_error(e: impl std::fmt::Display) -> Refusal {
    Refusal::Store(e.to_string())
}

impl PgStore {
    pub async fn connect(url: &str, size: usize) -> anyhow::Result<PgStore> {
        let config: tokio_postgres::Config = url.parse()?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(size.max(1)).build()?;
        pool.get().await?.batch_execute(SCHEMA).await?;
        Ok(PgStore { pool })
    }

    pub async fn create(&self, event: &str, pools: &[PoolCapacity]) -> Result<(), Refusal> {
        let mut client = self.pool.get().await.map_err(store_error)?;
        let tx = client.transaction().await.map_err(store_error)?;
        for p in pools {
            let capacity = i64::try_from(p.capacity).map_err(store_error)?;
            let inserted = tx
                .execute(
                    "INSERT INTO pools (event, pool, remaining) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&event, &p.id, &capacity],
                )
                .await
                .map_err(store_error)?;
            if inserted == 0 {
                return Err(Refusal::Exists);
            }
        }
        tx.commit().await.map_err(store_error)
    }

    /// One statement, committed on its own: the pool's row is decremented only if enough
    /// remains, and the order inserted from what the update returned, so the row lock is held
    /// for one round trip and the synced commit, not for three.
    pub async fn purchase(&self, o: &PurchaseOrder<'_>) -> Result<i64, Refusal> {
        let quantity = i64::try_from(o.quantity).map_err(store_error)?;
        let client = self.pool.get().await.map_err(store_error)?;
        let buy = client.prepare_cached(PURCHASE).await.map_err(store_error)?;
        let row = client
            .query_opt(
                &buy,
                &[&quantity, &o.event, &o.pool, &o.customer, &o.payment_ref],
            )
            .await
            .map_err(store_error)?;
        if let Some(row) = row {
            return Ok(row.get(0));
        }
        let exists = client
            .query_opt(
                "SELECT 1 FROM pools WHERE event = $1 AND pool = $2",
                &[&o.event, &o.pool],
            )
            .await
            .map_err(store_error)?;
        Err(match exists {
            Some(_) => Refusal::SoldOut(o.pool.to_owned()),
            None => Refusal::NotFound,
        })
    }
}
