//! After a run, checks from outside, through the HTTP API only, what a ticketing platform
//! promises: every region's ledger converged once the faults healed, no pool sold past its
//! capacity, no seat sold twice, every acknowledged order still there (restarts included),
//! one order per idempotency key, and each region's ledger agreeing with its orders.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

use super::load::Acked;

#[derive(Deserialize)]
struct Ledger {
    pools: Vec<LedgerPool>,
}

#[derive(Deserialize)]
struct LedgerPool {
    pool: String,
    capacity: u64,
    regions: Vec<LedgerRow>,
}

#[derive(Deserialize, PartialEq, Eq, Debug, Clone)]
struct LedgerRow {
    region: String,
    initial: u64,
    granted_out: u64,
    granted_in: u64,
    consumed: u64,
    returned: u64,
}

#[derive(Deserialize)]
struct OrderPage {
    orders: Vec<OrderView>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct OrderView {
    order_id: String,
    pool: Option<String>,
    quantity: u64,
    seats: Vec<String>,
    region: String,
    payment_ref: String,
    status: String,
}

/// What the audit found; a run passes when every count of a broken promise is zero.
#[derive(Debug, Default)]
pub struct Audit {
    pub orders: usize,
    pub sold: u64,
    pub capacity: u64,
    /// Per pool: sold of capacity, and how the unsold places lie by region at the end.
    pub pools: Vec<String>,
    pub oversold: u64,
    pub seats_sold_twice: usize,
    pub lost_acknowledged: usize,
    pub duplicate_keys: usize,
    /// (region, pool) whose ledger's sold count differs from its orders.
    pub ledger_mismatches: usize,
    /// From the end of the load (faults healed) until every region showed the same ledger.
    pub converged_after: Option<Duration>,
}

impl Audit {
    pub fn passed(&self) -> bool {
        self.oversold == 0
            && self.seats_sold_twice == 0
            && self.lost_acknowledged == 0
            && self.duplicate_keys == 0
            && self.ledger_mismatches == 0
            && self.converged_after.is_some()
    }
}

type Rows = BTreeMap<String, Vec<LedgerRow>>;

async fn ledger(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    event: &str,
) -> anyhow::Result<(Rows, BTreeMap<String, u64>)> {
    let r = client
        .get(format!("{base}/v1/admin/events/{event}/ledger"))
        .bearer_auth(token)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("ledger at {base}: {}", r.status());
    }
    let l: Ledger = r.json().await?;
    let capacity = l
        .pools
        .iter()
        .map(|p| (p.pool.clone(), p.capacity))
        .collect();
    let rows = l.pools.into_iter().map(|p| (p.pool, p.regions)).collect();
    Ok((rows, capacity))
}

async fn orders(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    event: &str,
) -> anyhow::Result<Vec<OrderView>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/admin/orders?event={event}&limit=1000");
        if let Some(a) = &after {
            url += &format!("&after={a}");
        }
        let r = client.get(url).bearer_auth(token).send().await?;
        if !r.status().is_success() {
            bail!("orders at {base}: {}", r.status());
        }
        let page: OrderPage = r.json().await?;
        out.extend(page.orders);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// Audits `event` across `bases` (every region's HTTP base URL), waiting up to `settle` for
/// the ledgers to converge first.
pub async fn audit(
    bases: &[String],
    token: &str,
    event: &str,
    acked: &[Acked],
    settle: Duration,
) -> anyhow::Result<Audit> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    let mut audit = Audit::default();
    let (rows, capacity) = loop {
        let mut views = Vec::new();
        for b in bases {
            // A node still catching up after a restart may not answer yet: that is not converged.
            if let Ok(v) = ledger(&client, b, token, event).await {
                views.push(v);
            }
        }
        if views.len() == bases.len() && views.windows(2).all(|w| w[0].0 == w[1].0) {
            audit.converged_after = Some(started.elapsed());
            break views.swap_remove(0);
        }
        if started.elapsed() > settle {
            match views.into_iter().next() {
                Some(v) => break v,
                None => bail!("no region answered its ledger within {settle:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut all = Vec::new();
    for b in bases {
        all.extend(
            orders(&client, b, token, event)
                .await
                .with_context(|| format!("listing the orders at {b}"))?,
        );
    }
    audit.orders = all.len();
    audit.capacity = capacity.values().sum();
    let confirmed: Vec<&OrderView> = all.iter().filter(|o| o.status == "confirmed").collect();
    let mut sold: HashMap<(&str, &str), u64> = HashMap::new();
    for o in &confirmed {
        *sold
            .entry((o.pool.as_deref().unwrap_or_default(), o.region.as_str()))
            .or_default() += o.quantity;
    }
    audit.sold = sold.values().sum();
    for (pool, cap) in &capacity {
        let in_pool: u64 = sold
            .iter()
            .filter(|((p, _), _)| p == pool)
            .map(|(_, q)| q)
            .sum();
        audit.oversold += in_pool.saturating_sub(*cap);
        let unsold: Vec<String> = rows
            .get(pool)
            .into_iter()
            .flatten()
            .map(|r| {
                let left = (r.initial + r.granted_in + r.returned)
                    .saturating_sub(r.granted_out + r.consumed);
                format!("{} {left}", r.region)
            })
            .collect();
        audit.pools.push(format!(
            "{pool}: {in_pool}/{cap} sold, unsold {}",
            unsold.join(", ")
        ));
    }
    let mut seats = BTreeSet::new();
    for o in &confirmed {
        for s in &o.seats {
            let pool = o.pool.as_deref().unwrap_or_default();
            if !seats.insert((pool, s.as_str())) {
                audit.seats_sold_twice += 1;
            }
        }
    }
    let ids: BTreeSet<&str> = all.iter().map(|o| o.order_id.as_str()).collect();
    audit.lost_acknowledged = acked
        .iter()
        .filter(|a| !ids.contains(a.order_id.as_str()))
        .count();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for o in &all {
        *per_key.entry(o.payment_ref.as_str()).or_default() += 1;
    }
    audit.duplicate_keys = per_key.values().filter(|&&n| n > 1).count();
    for (pool, regions) in &rows {
        for row in regions {
            let ledger_sold = row.consumed.saturating_sub(row.returned);
            let orders_sold = sold
                .get(&(pool.as_str(), row.region.as_str()))
                .copied()
                .unwrap_or(0);
            if ledger_sold != orders_sold {
                audit.ledger_mismatches += 1;
            }
        }
    }
    Ok(audit)
}
