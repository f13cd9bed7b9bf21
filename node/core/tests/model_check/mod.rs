//! How the stateright models (handoff_model.rs, forwarding_model.rs) are searched: on both
//! cores, breadth first.

use std::hash::Hash;

use stateright::{Checker, HasDiscoveries, Model};

/// The whole search, to its end.
pub fn check<M>(model: M) -> impl Checker<M>
where
    M: Model + Send + Sync + 'static,
    M::State: Hash + Send + Sync + Clone + PartialEq + 'static,
    M::Action: Clone + PartialEq,
{
    model.checker().threads(2).spawn_bfs().join()
}

/// A broken model is searched only until it shows the failures it must show.
pub fn check_until<M>(model: M, failures: &[&'static str]) -> impl Checker<M>
where
    M: Model + Send + Sync + 'static,
    M::State: Hash + Send + Sync + Clone + PartialEq + 'static,
    M::Action: Clone + PartialEq,
{
    let wanted = failures.iter().copied().collect();
    model
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AllOf(wanted))
        .spawn_bfs()
        .join()
}
