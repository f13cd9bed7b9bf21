//! The core's memory is bounded by live state, not by the orders it ever sold: measured with a
//! counting global allocator (the only test in this binary, so nothing else allocates while it
//! runs).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use allot_node::*;

mod common;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Drives one core as a driver would with a store that persists at once: records are
/// dropped as written, every key read answers "never seen".
struct Driver {
    core: Core,
    ready: Ready,
    next: u64,
}

impl Driver {
    fn feed(&mut self, input: Input) {
        self.core.handle(1_000 + self.next, input);
        loop {
            self.core.ready_into(&mut self.ready);
            let last = self.ready.records.last().map(|r| r.index);
            self.ready.records.clear();
            self.ready.replies.clear();
            self.ready.messages.clear();
            self.ready.exchange.clear();
            let reads = std::mem::take(&mut self.ready.reads);
            if let Some(last) = last {
                self.core.handle(1_000 + self.next, Input::Persisted(last));
            }
            if reads.is_empty() {
                self.core.ready_into(&mut self.ready);
                self.ready.replies.clear();
                break;
            }
            for (id, lookup) in reads {
                let found = match lookup {
                    Lookup::Key(_) => Found::Key(None),
                    Lookup::Order(_) | Lookup::OrderOfHold(_) => Found::Order(None),
                };
                self.core.handle(
                    1_000 + self.next,
                    Input::Read {
                        id,
                        found: Ok(found),
                    },
                );
            }
        }
    }

    fn purchase(&mut self) {
        self.next += 1;
        let key = IdempotencyKey {
            key: format!("purchase-{:012}", self.next),
            body_hash: [7; 32],
        };
        self.feed(Input::Request {
            id: RequestId(self.next),
            key: Some(key),
            command: Command::Purchase {
                event: "rock".into(),
                want: Want::Quantity {
                    pool: "floor".into(),
                    quantity: 1,
                },
                customer: format!("c-{}", self.next % 1000),
                payment_ref: format!("pay-{}", self.next),
            },
        });
    }
}

#[test]
fn live_bytes_after_100k_purchases_do_not_grow_with_the_count() {
    let regions = vec!["eu-west".to_owned()];
    let mut driver = Driver {
        core: Core::new(Config::new("eu-west", &regions)),
        ready: Ready::default(),
        next: 0,
    };
    driver.feed(Input::Request {
        id: RequestId(0),
        key: None,
        command: Command::CreateEvent(common::spec("rock", 1_000_000, 0)),
    });
    // Warm up past the key cache's size, so what follows is steady state.
    for _ in 0..10_000 {
        driver.purchase();
    }
    let warm = live();
    for _ in 0..90_000 {
        driver.purchase();
    }
    let after = live();
    let sold = {
        let e = driver.core.event("rock").unwrap();
        e.ledger.consumed(0, e.me)
    };
    assert_eq!(sold, 100_000, "every purchase sold");
    let footprint = driver.core.footprint();
    assert!(
        footprint.cached_keys <= 4096 && footprint.recent_orders == 0,
        "{footprint:?}"
    );
    driver.core.check_invariants().unwrap();
    // The design before this bound kept every order and key: about 880 bytes per order, so
    // 79 MB for these 90,000. What may grow now is allocator noise and B-tree node slack.
    let grew = after - warm;
    println!("live bytes: {warm} after 10,000 purchases, {after} after 100,000 ({grew:+})");
    assert!(
        grew < 256 * 1024,
        "the core grew by {grew} bytes over 90,000 purchases ({} per purchase)",
        grew / 90_000
    );
}
