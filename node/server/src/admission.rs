//! Admission: how many buyers' writes a node takes at once. Past the limit a write is refused
//! at once with 503 `overloaded` and `Retry-After`, before it reaches the core — before it can
//! cost a synced write — so the writes already admitted keep their latency instead of queueing
//! behind an excess that would be answered too late to matter. Reads, operators' calls and
//! other regions' calls are not counted: they are few, and a peer's call is a sale it already
//! admitted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::problem::Problem;

/// The default limit: enough for the group commit to fill its batches (a batch of a few
/// hundred records at saturation), small enough that the admitted wait at most a few batches.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

pub struct Admission {
    in_flight: Arc<AtomicUsize>,
    limit: usize,
}

/// One admitted write; dropping it (answered, failed or abandoned) frees its place.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(limit: usize) -> Admission {
        Admission {
            in_flight: Arc::default(),
            limit: limit.max(1),
        }
    }

    /// A place for one write, or `overloaded`.
    pub fn admit(&self) -> Result<Admitted, Problem> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(self.in_flight.clone());
        if before >= self.limit {
            drop(admitted);
            return Err(Problem::overloaded(self.limit));
        }
        Ok(admitted)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The count is never above the limit for long: only a refused request's brief
    /// increment can pass it.
    pub fn check(&self) -> Result<(), String> {
        let n = self.in_flight();
        if n > self.limit.saturating_mul(2) + 1024 {
            return Err(format!(
                "admission: {n} in flight against a limit of {}",
                self.limit
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_a_write_is_refused_and_a_place_frees_on_drop() {
        let a = Admission::new(2);
        let first = a.admit().unwrap();
        let second = a.admit().unwrap();
        let refused = a.admit().unwrap_err();
        assert_eq!((refused.status.as_u16(), refused.kind), (503, "overloaded"));
        assert_eq!(refused.retry_after_s, Some(1));
        assert_eq!(a.in_flight(), 2, "a refusal holds no place");
        drop(first);
        let third = a.admit().unwrap();
        drop((second, third));
        assert_eq!(a.in_flight(), 0);
        a.check().unwrap();
    }
}
