//! The idempotency table: the first answer to each `Idempotency-Key`, with the hash of the
//! body it came with, kept for the configured time (24 h by default) and then forgotten.
//!
//! Answers are remembered when the record that carries them is applied (live or replayed), so
//! a restart knows every key its durable records knew.

use std::collections::BTreeMap;

use crate::api::{IdempotencyKey, Millis, Outcome};
use crate::record::IdemRecord;

/// The first answer to a key.
pub(super) struct IdemEntry {
    pub body_hash: [u8; 32],
    /// The record that carried the answer: a repeat is answered once it is durable.
    pub index: u64,
    pub outcome: Outcome,
}

/// What a repeated key gets.
pub(super) enum Seen<'a> {
    /// A new key.
    New,
    /// The same key with the same body: the first answer.
    Again(&'a IdemEntry),
    /// The same key with another body.
    OtherBody,
}

// B-trees, not hash maps: a hash map doubles its table all at once, and at 131,072 keys that
// was a 150 ms pause in the middle of an on-sale (`allot bench http --idempotency-keys`).
#[derive(Default)]
pub(super) struct IdempotencyTable {
    entries: BTreeMap<String, IdemEntry>,
    /// Keys by (time remembered, record index), oldest first, for expiry.
    by_age: BTreeMap<(Millis, u64), String>,
}

impl IdempotencyTable {
    pub fn seen(&self, key: &IdempotencyKey) -> Seen<'_> {
        match self.entries.get(&key.key) {
            None => Seen::New,
            Some(e) if e.body_hash == key.body_hash => Seen::Again(e),
            Some(_) => Seen::OtherBody,
        }
    }

    /// Remembers the answer a record at `index`, made at `at`, carries.
    pub fn remember(&mut self, index: u64, at: Millis, idem: &Option<IdemRecord>) {
        if let Some(r) = idem {
            self.entries.insert(
                r.key.key.clone(),
                IdemEntry {
                    body_hash: r.key.body_hash,
                    index,
                    outcome: r.outcome.clone(),
                },
            );
            self.by_age.insert((at, index), r.key.key.clone());
        }
    }

    /// Forgets keys remembered `ttl` or longer before `now`.
    pub fn expire(&mut self, now: Millis, ttl: Millis) {
        while let Some(oldest) = self.by_age.first_entry() {
            let (at, index) = *oldest.key();
            if at.saturating_add(ttl) > now {
                break;
            }
            let key = oldest.remove();
            // A key remembered again later (after an expiry) belongs to its newer entry.
            if self.entries.get(&key).is_some_and(|e| e.index == index) {
                self.entries.remove(&key);
            }
        }
    }

    /// Keys, their record index and answer, sorted (for snapshots).
    pub fn describe(&self) -> Vec<(String, u64, String)> {
        self.entries
            .iter()
            .map(|(k, e)| (k.clone(), e.index, format!("{:?}", e.outcome)))
            .collect()
    }

    /// Every key is waiting for its expiry, under the index of the record that carried it.
    pub fn check(&self) -> Result<(), String> {
        let queued: std::collections::BTreeSet<(&str, u64)> = self
            .by_age
            .iter()
            .map(|(&(_, index), k)| (k.as_str(), index))
            .collect();
        for (key, e) in &self.entries {
            if !queued.contains(&(key.as_str(), e.index)) {
                return Err(format!("idempotency key {key:?} is not queued for expiry"));
            }
        }
        Ok(())
    }
}
