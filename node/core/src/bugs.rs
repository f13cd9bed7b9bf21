//! Deliberate bugs, for proving the simulator finds what they break. They exist only with the
//! `inject-bugs` feature, which only `cargo test -p allot-sim --features inject-bugs` enables;
//! without it every switch is a constant `false` the compiler removes.

#[cfg(feature = "inject-bugs")]
mod switches {
    use std::sync::atomic::{AtomicBool, Ordering};

    pub static SKIP_OWNER_CHECK: AtomicBool = AtomicBool::new(false);
    pub static PUBLISH_BEFORE_DURABLE: AtomicBool = AtomicBool::new(false);

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
}

pub use switches::*;
