//! Deliberate bugs, for proving the simulator finds what they break. They exist only with the
//! `inject-bugs` feature, which only `cargo test -p allot-sim --features inject-bugs` enables;
//! without it every switch is a constant `false` the compiler removes.

#[cfg(feature = "inject-bugs")]
mod switches {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static SKIP_OWNER_CHECK: AtomicBool = AtomicBool::new(false);
    pub static PUBLISH_BEFORE_DURABLE: AtomicBool = AtomicBool::new(false);
    pub static GRANT_ANSWERED_BEFORE_DURABLE: AtomicBool = AtomicBool::new(false);
    pub static CREDIT_BARE_GRANT: AtomicBool = AtomicBool::new(false);

    /// A donor answers a handoff ask with its row as it is in memory, before the grant is
    /// durable (a crash then takes back quota the asker already sells).
    pub fn grant_answered_before_durable() -> bool {
        GRANT_ANSWERED_BEFORE_DURABLE.load(Ordering::Relaxed)
    }

    /// An asker credits a grant by the bare quantity in the answer, besides the donor's row.
    pub fn credit_bare_grant() -> bool {
        CREDIT_BARE_GRANT.load(Ordering::Relaxed)
    }

    /// Sell or hold a seat whatever region owns it.
    pub fn skip_owner_check() -> bool {
        SKIP_OWNER_CHECK.load(Ordering::Relaxed)
    }

    /// Gossip this region's row as it is in memory, before it is durable.
    pub fn publish_before_durable() -> bool {
        PUBLISH_BEFORE_DURABLE.load(Ordering::Relaxed)
    }
}

#[cfg(not(feature = "inject-bugs"))]
mod switches {
    #[inline(always)]
    pub fn skip_owner_check() -> bool {
        false
    }

    #[inline(always)]
    pub fn publish_before_durable() -> bool {
        false
    }

    #[inline(always)]
    pub fn grant_answered_before_durable() -> bool {
        false
    }

    #[inline(always)]
    pub fn credit_bare_grant() -> bool {
        false
    }
}

pub use switches::*;
