//! The Redis design: `appendonly yes`, `appendfsync always` (the server's setting, made by the
//! bench), one multiplexed connection, and a Lua script that decrements the pool if enough
//! remains and records the order in the same atomic step.

use redis::aio::MultiplexedConnection;
use redis::Script;

use super::{PoolCapacity, PurchaseOrder, Refusal};

/// KEYS: the event's pools hash, its order counter. ARGV: pool, quantity, event, customer,
/// payment reference. Returns the order's id, -1 when too few remain, -2 for no such pool.
pub(crate) const PURCHASE: &str = r"
local remaining = redis.call('HGET', KEYS[1], ARGV[1])
if not remaining then return -2 end
local quantity = tonumber(ARGV[2])
if tonumber(remaining) < quantity then return -1 end
redis.call('HINCRBY', KEYS[1], ARGV[1], -quantity)
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[2] .. ':' .. id, 'event', ARGV[3], 'pool', ARGV[1],
  'quantity', quantity, 'customer', ARGV[4], 'payment_ref', ARGV[5])
return id
";

/// KEYS: the event's pools hash. ARGV: pool, capacity, pool, capacity, ... Refuses (0) an
/// event that exists.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
";

pub struct RedisStore {
    conn: MultiplexedConnection,
    purchase: Script,
    create: Script,
}

fn store_error(e: redis::RedisError) -> Refusal {
    Refusal::Store(e.to_string())
}

impl RedisStore {
    pub async fn connect(url: &str) -> anyhow::Result<RedisStore> {
        let client = redis::Client::open(url)?;
        // The same patience as a node's (10 s): the client's default of 500 ms would turn a
        // slow fsync into a 503 for a purchase the script already made.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(10)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(RedisStore {
            conn,
            purchase: Script::new(PURCHASE),
            create: Script::new(CREATE),
        })
    }

    pub async fn create(&self, event: &str, pools: &[PoolCapacity]) -> Result<(), Refusal> {
        let mut invocation = self.create.key(format!("pools:{event}"));
        for p in pools {
            invocation.arg(&p.id).arg(p.capacity);
        }
        let created: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        if created == 1 {
            Ok(())
        } else {
            Err(Refusal::Exists)
        }
    }

    pub async fn purchase(&self, o: &PurchaseOrder<'_>) -> Result<i64, Refusal> {
        let id: i64 = self
            .purchase
            .key(format!("pools:{}", o.event))
            .key(format!("orders:{}", o.event))
            .arg(o.pool)
            .arg(o.quantity)
            .arg(o.event)
            .arg(o.customer)
            .arg(o.payment_ref)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        match id {
            -1 => Err(Refusal::SoldOut(o.pool.to_owned())),
            -2 => Err(Refusal::NotFound),
            id => Ok(id),
        }
    }
}
