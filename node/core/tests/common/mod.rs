#![allow(dead_code)]

use allot_crdt::{Allotments, PoolKind};
use allot_node::cluster::LocalCluster;
use allot_node::*;

pub const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

pub fn spec(id: &str, ga: u64, seats: usize) -> EventSpec {
    let mut pools = vec![PoolInput {
        id: "floor".into(),
        kind: PoolKind::General { capacity: ga },
        price_cents: 8900,
    }];
    if seats > 0 {
        pools.push(PoolInput {
            id: "stalls".into(),
            kind: PoolKind::Assigned {
                seats: (1..=seats).map(|i| format!("A-{i}")).collect(),
            },
            price_cents: 12900,
        });
    }
    EventSpec {
        id: id.into(),
        name: "Rock".into(),
        description: "An evening".into(),
        venue: "Arena".into(),
        lat: 52.5,
        lon: 13.4,
        starts_at: "2027-06-01T19:00:00Z".into(),
        currency: "EUR".into(),
        hold_ttl_s: 600,
        rebalance: true,
        pools,
        allotments: Allotments::Even,
    }
}

/// A cluster with one event everywhere, settled.
pub fn cluster_with(names: &[&str], ga: u64, seats: usize) -> LocalCluster {
    settled(LocalCluster::new(names), ga, seats)
}

/// The same, with regions that answer from their own quota alone (no forwarding): for the
/// rules of one region.
pub fn cluster_alone(names: &[&str], ga: u64, seats: usize) -> LocalCluster {
    settled(
        LocalCluster::configured(names, |cfg| cfg.forwarding = false),
        ga,
        seats,
    )
}

fn settled(mut c: LocalCluster, ga: u64, seats: usize) -> LocalCluster {
    c.call(0, Command::CreateEvent(spec("rock", ga, seats)))
        .expect("create");
    c.settle(2);
    c.converged().expect("genesis spread");
    c
}

pub fn buy(quantity: u64) -> Command {
    Command::Purchase {
        event: "rock".into(),
        want: Want::Quantity {
            pool: "floor".into(),
            quantity,
        },
        customer: "c-1".into(),
        payment_ref: "pay".into(),
    }
}

/// An operator's transfer of `quantity` floor places to region `to`.
pub fn transfer(to: &str, quantity: u64) -> Command {
    Command::Grant {
        event: "rock".into(),
        pool: "floor".into(),
        to: to.into(),
        amount: GrantAmount::Quantity(quantity),
    }
}

pub fn hold_qty(customer: &str, pool: &str, quantity: u64) -> Command {
    Command::Hold {
        event: "rock".into(),
        want: Want::Quantity {
            pool: pool.into(),
            quantity,
        },
        customer: customer.into(),
    }
}

pub fn hold_seats(customer: &str, seats: &[&str]) -> Command {
    Command::Hold {
        event: "rock".into(),
        want: Want::Seats {
            pool: None,
            seats: seats.iter().map(|s| s.to_string()).collect(),
        },
        customer: customer.into(),
    }
}

/// The id region `region` gives its hold or order `n` (tests run with the test keys).
pub fn id(kind: IdKind, region: &str, n: impl Into<u64>) -> String {
    IdKey::insecure_for_tests(region).format(kind, region, n)
}

pub fn hold_id(r: &Reply, region: &str) -> String {
    match r {
        Ok(Outcome::Held(h)) => id(IdKind::Hold, region, h.n),
        other => panic!("expected a hold, got {other:?}"),
    }
}

pub fn order_of(r: &Reply) -> &Order {
    match r {
        Ok(Outcome::Order(o)) => o,
        other => panic!("expected an order, got {other:?}"),
    }
}
