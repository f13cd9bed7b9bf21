//! Parked requests: those waiting on a read from the store, and those waiting behind the first
//! request with the same idempotency key.
//!
//! A request that needs what memory lacks (an older idempotency answer, a past order) parks
//! here with the [`Lookup`] the driver must answer; the answer re-runs it against the state of
//! that moment. A key whose first request is still deciding (its store lookup, or its own read)
//! is *claimed*: concurrent duplicates wait behind it and re-run once it has decided, so they
//! get its answer and never run a second time.

use std::collections::{BTreeMap, VecDeque};

use crate::api::{Command, IdempotencyKey};
use crate::reads::{Found, Lookup, ReadId, RecordIndex};

use super::Caller;

/// A request on its way through the core.
pub(super) struct Request {
    pub caller: Caller,
    pub key: Option<IdempotencyKey>,
    pub command: Command,
    /// The store's answer to the one read this request asked for.
    pub found: Option<Found>,
    /// The key was checked against the store and this request holds its claim.
    pub holds_claim: bool,
    /// A call from another region: not run after this time.
    pub deadline: Option<crate::api::Millis>,
    /// Quota was gathered for it from other regions already: it is not gathered for again.
    pub gathered: bool,
    /// It runs here although its key's record names a region it was forwarded to: every
    /// region it went to refused it and keeps that refusal under the key, so a sale here is
    /// its only one (and its order replaces the forward record).
    pub sell_here: bool,
}

impl Request {
    pub fn new(caller: Caller, key: Option<IdempotencyKey>, command: Command) -> Request {
        Request {
            caller,
            key,
            command,
            found: None,
            holds_claim: false,
            deadline: None,
            gathered: false,
            sell_here: false,
        }
    }
}

pub(super) struct Waiting {
    pub request: Request,
    pub lookup: Lookup,
    /// Records `..=asked_at` were durable when the read was asked: the answer reflects them.
    pub asked_at: RecordIndex,
}

#[derive(Default)]
pub(super) struct Parked {
    next_read: u64,
    reads: BTreeMap<ReadId, Waiting>,
    claims: BTreeMap<String, VecDeque<Request>>,
}

impl Parked {
    /// Parks `request` until the driver answers `lookup`; returns the read's id.
    pub fn park(&mut self, request: Request, lookup: Lookup, asked_at: RecordIndex) -> ReadId {
        self.next_read += 1;
        let id = ReadId(self.next_read);
        self.reads.insert(
            id,
            Waiting {
                request,
                lookup,
                asked_at,
            },
        );
        id
    }

    /// The request a read's answer belongs to (none for an unknown or repeated answer).
    pub fn answered(&mut self, id: ReadId) -> Option<Waiting> {
        self.reads.remove(&id)
    }

    /// The oldest durable index a read in flight was asked at: what it may not reflect must
    /// stay in memory.
    pub fn oldest_read(&self) -> Option<RecordIndex> {
        self.reads.values().map(|w| w.asked_at).min()
    }

    pub fn in_flight(&self) -> usize {
        self.reads.len()
    }

    pub fn is_claimed(&self, key: &str) -> bool {
        self.claims.contains_key(key)
    }

    pub fn claim(&mut self, key: &str) {
        let fresh = self
            .claims
            .insert(key.to_owned(), VecDeque::new())
            .is_none();
        debug_assert!(fresh, "a key is claimed by one request at a time");
    }

    pub fn wait_behind(&mut self, key: &str, request: Request) {
        self.claims
            .get_mut(key)
            .expect("waits behind a claimed key")
            .push_back(request);
    }

    /// Ends a claim; returns the requests that waited behind it, in arrival order.
    pub fn release(&mut self, key: &str) -> VecDeque<Request> {
        self.claims.remove(key).unwrap_or_default()
    }

    /// Every claim is held by exactly one request still in the core (waiting on a read).
    /// Every claim is held by exactly one request: parked here, or `elsewhere` (a request
    /// forwarded to another region keeps its claim until it is answered).
    pub fn check<'a>(&'a self, elsewhere: impl Iterator<Item = &'a Request>) -> Result<(), String> {
        let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
        let requests = self.reads.values().map(|w| &w.request).chain(elsewhere);
        for r in requests.filter(|r| r.holds_claim) {
            if let Some(k) = &r.key {
                *holders.entry(k.key.as_str()).or_default() += 1;
            }
        }
        for key in self.claims.keys() {
            let n = holders.remove(key.as_str()).unwrap_or(0);
            if n != 1 {
                return Err(format!(
                    "idempotency key {key:?} is claimed by {n} requests in flight"
                ));
            }
        }
        if let Some(key) = holders.keys().next() {
            return Err(format!(
                "a request holds an unrecorded claim on key {key:?}"
            ));
        }
        Ok(())
    }
}
