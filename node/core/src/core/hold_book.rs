//! The hold book: this region's live holds, the queue they expire from, how many each
//! customer has, and the next hold number.
//!
//! A hold leaves the book when it is confirmed, released or expires; what it set aside (the
//! held count and the seats' states, which belong to the event) the core gives back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::{Hold, HoldNo, Millis};

pub(super) struct HoldBook {
    // B-trees like every map that grows with a sale: a hash map doubles all at once.
    holds: BTreeMap<HoldNo, Hold>,
    /// Live holds by (expiry, hold number), soonest first. A hold leaves it when confirmed or
    /// released, so it holds the live holds only.
    expiry: BTreeSet<(Millis, HoldNo)>,
    per_customer: BTreeMap<Arc<str>, u32>,
    /// Numbers below are taken, even after a restart.
    next: HoldNo,
}

impl Default for HoldBook {
    fn default() -> Self {
        HoldBook {
            holds: BTreeMap::new(),
            expiry: BTreeSet::new(),
            per_customer: BTreeMap::new(),
            next: HoldNo(1),
        }
    }
}

impl HoldBook {
    /// The number the next hold gets.
    pub fn next_number(&self) -> HoldNo {
        self.next
    }

    /// Whether hold `n` was ever given out here (live or not).
    pub fn issued(&self, n: HoldNo) -> bool {
        n < self.next
    }

    /// Numbers below `next` were given out before a restart.
    pub fn restore_next(&mut self, next: HoldNo) {
        self.next = self.next.max(next);
    }

    pub fn live_of(&self, customer: &str) -> u32 {
        self.per_customer.get(customer).copied().unwrap_or(0)
    }

    pub fn get(&self, n: HoldNo) -> Option<&Hold> {
        self.holds.get(&n)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    pub fn insert(&mut self, hold: Hold) {
        *self.per_customer.entry(hold.customer.clone()).or_insert(0) += 1;
        self.expiry.insert((hold.expires_at, hold.n));
        self.next = self.next.max(hold.n.next());
        self.holds.insert(hold.n, hold);
    }

    /// Takes hold `n` out of the book (confirmed, released or expired).
    pub fn take(&mut self, n: HoldNo) -> Option<Hold> {
        let h = self.holds.remove(&n)?;
        self.expiry.remove(&(h.expires_at, h.n));
        if let Some(c) = self.per_customer.get_mut(&h.customer) {
            *c -= 1;
            if *c == 0 {
                self.per_customer.remove(&h.customer);
            }
        }
        Some(h)
    }

    /// Live holds whose expiry is at or before `now`, by event, soonest first.
    pub fn due(&self, now: Millis) -> BTreeMap<String, Vec<HoldNo>> {
        let mut by_event: BTreeMap<String, Vec<HoldNo>> = BTreeMap::new();
        for &(_, n) in self.expiry.iter().take_while(|(at, _)| *at <= now) {
            if let Some(h) = self.holds.get(&n) {
                by_event.entry(h.event.to_string()).or_default().push(n);
            }
        }
        by_event
    }

    /// Every live hold, and nothing else, waits in the expiry queue, and the per-customer
    /// counts are the live holds'.
    pub fn check(&self) -> Result<(), String> {
        if self.expiry.len() != self.holds.len()
            || self
                .holds
                .values()
                .any(|h| !self.expiry.contains(&(h.expires_at, h.n)))
        {
            return Err(format!(
                "expiry queue of {} for {} live holds",
                self.expiry.len(),
                self.holds.len()
            ));
        }
        let mut counted: BTreeMap<&str, u32> = BTreeMap::new();
        for h in self.holds.values() {
            *counted.entry(&h.customer).or_insert(0) += 1;
            if h.n >= self.next {
                return Err(format!(
                    "hold {} at or above the next number {}",
                    h.n, self.next
                ));
            }
        }
        if counted.len() != self.per_customer.len()
            || self
                .per_customer
                .iter()
                .any(|(c, &n)| counted.get(&**c) != Some(&n))
        {
            return Err("live hold counts per customer are wrong".into());
        }
        Ok(())
    }
}
