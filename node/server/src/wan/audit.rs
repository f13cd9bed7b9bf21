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
    /// Which versions of each region's row this view has merged: equal views have seen the
    /// same history, not only counters that happen to match.
    version_vector: serde_json::Value,
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
    pool: String,
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
    /// Orders of assigned seats whose seat count is not their quantity.
    pub seats_not_quantity: usize,
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
            && self.seats_not_quantity == 0
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
) -> anyhow::Result<(Rows, BTreeMap<String, u64>, serde_json::Value)> {
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
    Ok((rows, capacity, l.version_vector))
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
    let (rows, capacity, _) = loop {
        let mut views = Vec::new();
        for b in bases {
            // A node still catching up after a restart may not answer yet: that is not converged.
            if let Ok(v) = ledger(&client, b, token, event).await {
                views.push(v);
            }
        }
        if views.len() == bases.len()
            && views
                .windows(2)
                .all(|w| (&w[0].0, &w[0].2) == (&w[1].0, &w[1].2))
        {
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
    judge(&mut audit, &rows, &capacity, &all, acked);
    Ok(audit)
}

/// The checks, on what the API answered: `rows` (the converged ledger), `capacity` per pool,
/// every region's orders, and the orders the buyers were acknowledged.
fn judge(
    audit: &mut Audit,
    rows: &Rows,
    capacity: &BTreeMap<String, u64>,
    all: &[OrderView],
    acked: &[Acked],
) {
    audit.orders = all.len();
    audit.capacity = capacity.values().sum();
    let confirmed: Vec<&OrderView> = all.iter().filter(|o| o.status == "confirmed").collect();
    let mut sold: HashMap<(&str, &str), u64> = HashMap::new();
    for o in &confirmed {
        *sold
            .entry((o.pool.as_str(), o.region.as_str()))
            .or_default() += o.quantity;
    }
    audit.sold = sold.values().sum();
    for (pool, cap) in capacity {
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
    audit.seats_not_quantity = confirmed
        .iter()
        .filter(|o| !o.seats.is_empty() && o.seats.len() as u64 != o.quantity)
        .count();
    let mut seats = BTreeSet::new();
    for o in &confirmed {
        for s in &o.seats {
            let pool = o.pool.as_str();
            if !seats.insert((pool, s.as_str())) {
                audit.seats_sold_twice += 1;
            }
        }
    }
    // An acknowledged order must still be there, confirmed, for what the buyer was told.
    let held: HashMap<&str, u64> = confirmed
        .iter()
        .map(|o| (o.order_id.as_str(), o.quantity))
        .collect();
    audit.lost_acknowledged = acked
        .iter()
        .filter(|a| held.get(a.order_id.as_str()) != Some(&a.quantity))
        .count();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for o in all {
        *per_key.entry(o.payment_ref.as_str()).or_default() += 1;
    }
    audit.duplicate_keys = per_key.values().filter(|&&n| n > 1).count();
    for (pool, regions) in rows {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(region: &str, initial: u64, consumed: u64) -> LedgerRow {
        LedgerRow {
            region: region.into(),
            initial,
            granted_out: 0,
            granted_in: 0,
            consumed,
            returned: 0,
        }
    }

    fn order(id: &str, region: &str, quantity: u64, seats: &[&str], key: &str) -> OrderView {
        OrderView {
            order_id: id.into(),
            pool: "stalls".into(),
            quantity,
            seats: seats.iter().map(|s| s.to_string()).collect(),
            region: region.into(),
            payment_ref: key.into(),
            status: "confirmed".into(),
        }
    }

    fn acked(id: &str, key: &str, quantity: u64) -> Acked {
        Acked {
            key: key.into(),
            order_id: id.into(),
            seller: id.split('-').nth(1).unwrap_or_default().into(),
            quantity,
        }
    }

    /// A pool of 4 in two regions, 2 each; `consumed` per region as given.
    fn judged(consumed: [u64; 2], orders: &[OrderView], acks: &[Acked]) -> Audit {
        let rows: Rows = [(
            "stalls".to_string(),
            vec![row("eu", 2, consumed[0]), row("us", 2, consumed[1])],
        )]
        .into();
        let capacity = [("stalls".to_string(), 4)].into();
        let mut audit = Audit {
            converged_after: Some(Duration::ZERO),
            ..Audit::default()
        };
        judge(&mut audit, &rows, &capacity, orders, acks);
        audit
    }

    #[test]
    fn a_clean_sale_passes() {
        let orders = [
            order("o-eu-1", "eu", 2, &["A-1", "A-2"], "k1"),
            order("o-us-1", "us", 1, &["B-1"], "k2"),
        ];
        let a = judged(
            [2, 1],
            &orders,
            &[acked("o-eu-1", "k1", 2), acked("o-us-1", "k2", 1)],
        );
        assert!(a.passed(), "{a:?}");
        assert_eq!((a.sold, a.capacity, a.orders), (3, 4, 2));
    }

    #[test]
    fn every_broken_promise_is_caught() {
        // Sold past capacity, a seat twice, two orders under one key.
        let orders = [
            order("o-eu-1", "eu", 2, &["A-1", "A-2"], "k1"),
            order("o-us-1", "us", 2, &["A-2", "B-1"], "k1"),
            order("o-us-2", "us", 1, &["B-2"], "k3"),
        ];
        let a = judged([2, 3], &orders, &[acked("o-eu-1", "k1", 2)]);
        assert_eq!(a.oversold, 1);
        assert_eq!(a.seats_sold_twice, 1);
        assert_eq!(a.duplicate_keys, 1);
        assert!(!a.passed());

        // An order of two assigned seats that names one.
        let orders = [order("o-eu-1", "eu", 2, &["A-1"], "k1")];
        let a = judged([2, 0], &orders, &[acked("o-eu-1", "k1", 2)]);
        assert_eq!(a.seats_not_quantity, 1);
        assert!(!a.passed());

        // An acknowledged order missing, and a ledger that counts a sale no order shows.
        let orders = [order("o-eu-1", "eu", 1, &["A-1"], "k1")];
        let a = judged(
            [2, 0],
            &orders,
            &[acked("o-eu-1", "k1", 1), acked("o-us-7", "k9", 1)],
        );
        assert_eq!(a.lost_acknowledged, 1);
        assert_eq!(a.ledger_mismatches, 1);
        assert!(!a.passed());

        // An order held for fewer places than the buyer was told.
        let orders = [order("o-eu-1", "eu", 1, &["A-1"], "k1")];
        let a = judged([1, 0], &orders, &[acked("o-eu-1", "k1", 2)]);
        assert_eq!(a.lost_acknowledged, 1);

        // Not converged within the wait: a failure even with nothing else wrong.
        let mut a = judged([0, 0], &[], &[]);
        a.converged_after = None;
        assert!(!a.passed());
    }
}
