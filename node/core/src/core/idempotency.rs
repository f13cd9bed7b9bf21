//! The idempotency table: the first answer to each `Idempotency-Key` this core holds in memory,
//! with the hash of the body it came with.
//!
//! Memory holds the answers still in flight (their record not yet durable: only memory has
//! them) and a bounded cache of recent durable ones; every durable answer is also in the store,
//! which the core asks for a key memory lacks (see `parked.rs`). Answers expire the configured
//! time after they were made (24 h by default), in memory here and in the store by its own
//! rule, and a stored answer read back after its time is treated as absent.

use std::collections::BTreeMap;

use crate::api::{IdempotencyKey, Millis, Outcome};
use crate::reads::RecordIndex;
use crate::reads::StoredKey;
use crate::record::IdemRecord;

/// Durable answers kept in memory beyond those in flight: a retry soon after its first answer
/// does not cost a read.
pub(super) const CACHED_KEYS: usize = 4096;

/// The first answer to a key.
pub(super) struct IdemEntry {
    pub body_hash: [u8; 32],
    /// The record that carried the answer: a repeat is answered once it is durable.
    pub index: RecordIndex,
    pub at: Millis,
    pub outcome: Outcome,
}

/// What a repeated key gets.
pub(super) enum Seen<'a> {
    /// Not in memory: new, or only the store knows.
    NotHere,
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
    by_age: BTreeMap<(Millis, RecordIndex), String>,
    /// Keys by record index, oldest first: durable ones leave first when the cache is full.
    by_index: BTreeMap<RecordIndex, String>,
}

impl IdempotencyTable {
    /// What `key` finds at `now`: a durable answer `ttl` or older is gone, even before a tick
    /// drops it. One still in flight (record above `persisted`) stands whatever its age: the
    /// store does not have it yet, so forgetting it would let a retry run twice.
    pub fn seen(
        &self,
        key: &IdempotencyKey,
        now: Millis,
        ttl: Millis,
        persisted: RecordIndex,
    ) -> Seen<'_> {
        match self.entries.get(&key.key) {
            None => Seen::NotHere,
            Some(e) if e.index <= persisted && e.at.saturating_add(ttl) <= now => Seen::NotHere,
            Some(e) if e.body_hash == key.body_hash => Seen::Again(e),
            Some(_) => Seen::OtherBody,
        }
    }

    fn insert(&mut self, key: &str, entry: IdemEntry) {
        self.by_age.insert((entry.at, entry.index), key.to_owned());
        self.by_index.insert(entry.index, key.to_owned());
        if let Some(old) = self.entries.insert(key.to_owned(), entry) {
            self.by_age.remove(&(old.at, old.index));
            self.by_index.remove(&old.index);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.by_age.remove(&(old.at, old.index));
            self.by_index.remove(&old.index);
        }
    }

    /// Remembers the answer a record at `index`, made at `at`, carries.
    pub fn remember(&mut self, index: RecordIndex, at: Millis, idem: Option<&IdemRecord>) {
        if let Some(r) = idem {
            self.insert(
                &r.key.key,
                IdemEntry {
                    body_hash: r.key.body_hash,
                    index,
                    at,
                    outcome: r.outcome.clone(),
                },
            );
        }
    }

    /// Keeps an answer the store gave back, as a durable entry of the cache.
    pub fn cache_stored(&mut self, key: &str, stored: StoredKey, persisted: RecordIndex) {
        // An index from before a restart is below every live one; the entry is durable, so
        // it may not claim an index above what is persisted (it would never leave the cache).
        let index = stored.index.min(persisted);
        if self.by_index.contains_key(&index) {
            // The slot is taken (two stored answers from one batch): keep the key unmemoised.
            return;
        }
        self.insert(
            key,
            IdemEntry {
                body_hash: stored.body_hash,
                index,
                at: stored.at,
                outcome: stored.outcome,
            },
        );
    }

    /// Drops the oldest durable answers (records `..=persisted`) beyond the cache's size; the
    /// store still has them.
    pub fn trim(&mut self, persisted: RecordIndex) {
        while self.entries.len() > CACHED_KEYS {
            let Some((&index, key)) = self.by_index.first_key_value() else {
                break;
            };
            if index > persisted {
                break; // in flight: only memory has it
            }
            let key = key.clone();
            self.remove(&key);
        }
    }

    /// Forgets durable keys remembered `ttl` or longer before `now` (in-flight ones wait until
    /// the store has them).
    pub fn expire(&mut self, now: Millis, ttl: Millis, persisted: RecordIndex) {
        while let Some((&(at, index), key)) = self.by_age.first_key_value() {
            if at.saturating_add(ttl) > now || index > persisted {
                break;
            }
            let key = key.clone();
            self.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every key is queued for expiry and for eviction under its own entry, and nothing else is.
    pub fn check(&self) -> Result<(), String> {
        if self.by_age.len() != self.entries.len() || self.by_index.len() != self.entries.len() {
            return Err(format!(
                "idempotency table: {} keys, {} queued for expiry, {} for eviction",
                self.entries.len(),
                self.by_age.len(),
                self.by_index.len()
            ));
        }
        for (key, e) in &self.entries {
            if self.by_age.get(&(e.at, e.index)) != Some(key)
                || self.by_index.get(&e.index) != Some(key)
            {
                return Err(format!(
                    "idempotency key {key:?} is not queued under its entry"
                ));
            }
        }
        Ok(())
    }
}
