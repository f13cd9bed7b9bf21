//! The idempotency table: the first answer to each `Idempotency-Key` this core holds in memory,
//! with the hash of the body it came with.
//!
//! Memory holds the answers still in flight (their record not yet durable: only memory has
//! them) and a bounded cache of recent durable ones; every durable answer is also in the store,
//! which the core asks for a key memory lacks (see `parked.rs`). Answers expire the configured
//! time after they were made (24 h by default), in memory here and in the store by its own
//! rule, and a stored answer read back after its time is treated as absent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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

/// Each key's text is allocated once and shared by the table and its two queues: this runs
/// for every keyed request under the core's lock. Against three B-trees each holding its own
/// copy of the key, the core's keyed purchases went from 0.63-0.68 to 0.80-0.90 million a
/// second (`ALLOT_BENCH_ONLY=keyed cargo bench -p allot-node --bench core`; docs/benchmarks.md).
pub(super) struct IdempotencyTable {
    /// Hashed (SipHash with a per-process key: the keys are the clients'). The table holds
    /// [`CACHED_KEYS`] durable answers plus those in flight and starts with room for half as
    /// many again in flight; it grows only past that (a disk stall under load), and then moves
    /// pointers: entries are boxed, so a slot holds a pointer, not the whole answer, and the
    /// table stays small enough for the caches. (When it held every key ever seen, a hash
    /// map's growth at 131,072 unboxed entries paused an on-sale 150 ms.) Its iteration order
    /// differs from process to process: nothing reads it (`check` walks a queue instead), so a
    /// simulated seed replays the same.
    entries: HashMap<Arc<str>, Box<IdemEntry>>,
    /// Keys by (time remembered, record index), oldest first, for expiry.
    by_age: BTreeMap<(Millis, RecordIndex), Arc<str>>,
    /// Keys by record index, oldest first: durable ones leave first when the cache is full.
    by_index: BTreeMap<RecordIndex, Arc<str>>,
    /// The highest record index of any answer that has left memory. A store read of a key
    /// taken when the store held every record through some index at or above this one
    /// cannot have missed an answer memory no longer has (see [`Self::read_stands`]).
    left_through: RecordIndex,
}

impl Default for IdempotencyTable {
    fn default() -> Self {
        IdempotencyTable {
            entries: HashMap::with_capacity(CACHED_KEYS + CACHED_KEYS / 2),
            by_age: BTreeMap::new(),
            by_index: BTreeMap::new(),
            left_through: RecordIndex(0),
        }
    }
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
        match self.entries.get(key.key.as_str()) {
            None => Seen::NotHere,
            Some(e) if e.index <= persisted && e.at.saturating_add(ttl) <= now => Seen::NotHere,
            Some(e) if e.body_hash == key.body_hash => Seen::Again(e),
            Some(_) => Seen::OtherBody,
        }
    }

    fn insert(&mut self, key: &str, entry: IdemEntry) {
        // An answer replaced (a restored record remembered again) leaves its places first,
        // which may be the new one's, and its key's text with it.
        self.forget(key);
        let key: Arc<str> = Arc::from(key);
        self.by_age
            .insert((entry.at, entry.index), Arc::clone(&key));
        self.by_index.insert(entry.index, Arc::clone(&key));
        self.entries.insert(key, Box::new(entry));
    }

    /// Forgets a key and its places in both queues: the one way an answer leaves.
    fn forget(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.by_age.remove(&(old.at, old.index));
            self.by_index.remove(&old.index);
            self.left_through = self.left_through.max(old.index);
        }
    }

    /// Whether a key's store read, taken when the store held every record through `through`,
    /// may answer a key memory lacks. An answer leaves memory only once durable, so unless
    /// one recorded after `through` has left since, the key was either in the store when read
    /// (it answered through `through`) or is still here (the read is not asked for). The
    /// driver reads a new key before it takes the core's lock and offers the result here.
    pub fn read_stands(&self, through: RecordIndex) -> bool {
        self.left_through <= through
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
            match self.by_index.first_key_value() {
                Some((&index, key)) if index <= persisted => {
                    let key = Arc::clone(key);
                    self.forget(&key);
                }
                _ => break, // in flight: only memory has it
            }
        }
    }

    /// Forgets durable keys remembered `ttl` or longer before `now` (in-flight ones wait until
    /// the store has them).
    pub fn expire(&mut self, now: Millis, ttl: Millis, persisted: RecordIndex) {
        while let Some((&(at, index), key)) = self.by_age.first_key_value() {
            if at.saturating_add(ttl) > now || index > persisted {
                break;
            }
            let key = Arc::clone(key);
            self.forget(&key);
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
        // In record order, not the map's (which differs between processes): the same state
        // reports the same key.
        for (index, key) in &self.by_index {
            match self.entries.get(key) {
                Some(e) if e.index == *index && self.by_age.get(&(e.at, e.index)) == Some(key) => {}
                _ => {
                    return Err(format!(
                        "idempotency key {key:?} is not queued under its entry"
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HoldNo;

    /// A read taken before an answer was written and then left memory must not stand: it
    /// would miss the answer, and the request would run twice.
    #[test]
    fn a_read_from_before_an_answer_that_left_memory_does_not_stand() {
        let mut t = IdempotencyTable::default();
        assert!(t.read_stands(RecordIndex(0)), "nothing has left yet");
        let n = CACHED_KEYS as u64 + 10;
        for i in 1..=n {
            t.remember(RecordIndex(i), 1, Some(&record(&format!("k{i}"), 1)));
        }
        // All in flight: nothing leaves, any read stands.
        t.trim(RecordIndex(0));
        assert!(t.read_stands(RecordIndex(0)));
        // Durable through 5: the five oldest leave (the cache holds the rest).
        t.trim(RecordIndex(5));
        assert_eq!(t.len(), CACHED_KEYS + 5);
        assert!(
            !t.read_stands(RecordIndex(4)),
            "k5 left after a read through 4"
        );
        assert!(t.read_stands(RecordIndex(5)));
        // Expiry counts the same way.
        t.expire(10, 5, RecordIndex(n));
        assert_eq!(t.len(), 0);
        assert!(!t.read_stands(RecordIndex(n - 1)));
        assert!(t.read_stands(RecordIndex(n)));
    }

    fn record(key: &str, hash: u8) -> IdemRecord {
        IdemRecord {
            key: IdempotencyKey {
                key: key.into(),
                body_hash: [hash; 32],
            },
            outcome: Outcome::Released { hold: HoldNo(7) },
        }
    }

    fn key(k: &str, hash: u8) -> IdempotencyKey {
        record(k, hash).key
    }

    const TTL: Millis = 1_000;

    #[test]
    fn the_cache_keeps_in_flight_answers_and_forgets_the_oldest_durable_ones() {
        let mut t = IdempotencyTable::default();
        let n = CACHED_KEYS as u64 + 100;
        for i in 1..=n {
            t.remember(RecordIndex(i), 10, Some(&record(&format!("k{i}"), 1)));
        }
        // Nothing durable yet: nothing may leave, whatever the cache's size.
        t.trim(RecordIndex(0));
        assert_eq!(t.len(), n as usize);
        t.check().unwrap();
        // Durable up to 50: those 50 leave first, the in-flight rest stays over the bound.
        t.trim(RecordIndex(50));
        assert_eq!(t.len(), n as usize - 50);
        let persisted = RecordIndex(n);
        assert!(matches!(
            t.seen(&key("k50", 1), 10, TTL, persisted),
            Seen::NotHere
        ));
        assert!(
            matches!(t.seen(&key("k51", 1), 10, TTL, persisted), Seen::Again(e) if e.index == RecordIndex(51))
        );
        assert!(matches!(
            t.seen(&key("k51", 2), 10, TTL, persisted),
            Seen::OtherBody
        ));
        // All durable: down to the bound, the newest kept.
        t.trim(persisted);
        assert_eq!(t.len(), CACHED_KEYS);
        assert!(matches!(
            t.seen(&key("k100", 1), 10, TTL, persisted),
            Seen::NotHere
        ));
        assert!(matches!(
            t.seen(&key("k101", 1), 10, TTL, persisted),
            Seen::Again(_)
        ));
        t.check().unwrap();
    }

    #[test]
    fn a_key_answered_again_or_read_back_keeps_one_entry_and_expires_once() {
        let mut t = IdempotencyTable::default();
        t.remember(RecordIndex(1), 10, Some(&record("a", 1)));
        // The same answer remembered twice at the same places: one entry, still queued.
        t.remember(RecordIndex(1), 10, Some(&record("a", 1)));
        assert_eq!(t.len(), 1);
        t.check().unwrap();
        assert!(
            matches!(t.seen(&key("a", 1), 10, TTL, RecordIndex(1)), Seen::Again(e) if e.index == RecordIndex(1))
        );
        // The same key under a later record (a restored answer): one entry, the later one.
        t.remember(RecordIndex(2), 20, Some(&record("a", 1)));
        assert_eq!(t.len(), 1);
        t.check().unwrap();
        // A stored answer of another key whose index is taken is not memoised.
        let stored = StoredKey {
            at: 5,
            index: RecordIndex(2),
            body_hash: [3; 32],
            outcome: Outcome::Released { hold: HoldNo(1) },
        };
        t.cache_stored("b", stored.clone(), RecordIndex(2));
        assert_eq!(t.len(), 1);
        // Under a free index it is, capped at what is persisted.
        let stored = StoredKey {
            index: RecordIndex(1),
            ..stored
        };
        t.cache_stored("b", stored, RecordIndex(2));
        assert_eq!(t.len(), 2);
        t.check().unwrap();
        // "b" (at 5) expires before "a" (at 20); nothing in flight outlives its TTL here.
        t.expire(5 + TTL, TTL, RecordIndex(2));
        assert_eq!(t.len(), 1);
        assert!(matches!(
            t.seen(&key("a", 1), 5 + TTL, TTL, RecordIndex(2)),
            Seen::Again(_)
        ));
        // An in-flight answer (record above what is persisted) stays past its TTL.
        t.remember(RecordIndex(3), 20, Some(&record("c", 1)));
        t.expire(20 + TTL, TTL, RecordIndex(2));
        assert_eq!(t.len(), 1);
        assert!(matches!(
            t.seen(&key("c", 1), 20 + TTL, TTL, RecordIndex(2)),
            Seen::Again(_)
        ));
        t.check().unwrap();
    }
}
