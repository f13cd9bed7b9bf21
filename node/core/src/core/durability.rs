//! What waits for the disk: everything the core did that must not be seen, published or
//! spent before the record behind it is durable, in record order.
//!
//! - replies: a client hears of a change only once it survives a crash;
//! - own row versions: gossip publishes this region's row only as far as it is durable;
//! - credits from peers' rows: quota (or a seat) received is spendable only once the record
//!   that applied it is durable, so a restart never finds a region that sold more than it can
//!   prove it owned;
//!
//! "Persisted up to n" covers records 1..=n; each queue releases its front while the front's
//! record index is at most n.

use std::collections::VecDeque;

use allot_crdt::{PoolIdx, RowDelta, SeatIdx};

use crate::api::Reply;
use crate::reads::RecordIndex;

use super::Caller;

/// Quota or a seat a peer's row gave this region, not spendable until durable.
pub(super) struct PendingCredit {
    pub index: RecordIndex,
    /// The event's position in the core.
    pub event: usize,
    pub pool: PoolIdx,
    pub amount: u64,
    pub seat: Option<SeatIdx>,
}

/// A version of this region's own row, published once durable.
pub(super) struct PendingRow {
    pub index: RecordIndex,
    pub event: usize,
    pub row: RowDelta,
}

/// A reply released once the record at `index` is durable.
struct WaitingReply {
    index: RecordIndex,
    caller: Caller,
    reply: Reply,
}

#[derive(Default)]
pub(super) struct DurabilityQueues {
    persisted: RecordIndex,
    replies: VecDeque<WaitingReply>,
    own_rows: VecDeque<PendingRow>,
    credits: VecDeque<PendingCredit>,
}

impl DurabilityQueues {
    /// Records up to this index are durable.
    pub fn persisted(&self) -> RecordIndex {
        self.persisted
    }

    /// Notes records `..=upto` durable; false if that is not news.
    pub fn advance(&mut self, upto: RecordIndex) -> bool {
        if upto <= self.persisted {
            return false;
        }
        self.persisted = upto;
        true
    }

    pub fn reply_after(&mut self, index: RecordIndex, caller: Caller, reply: Reply) {
        // Mostly in order; a repeated idempotency key waits on its first answer's record,
        // which may be older than replies already queued.
        let at = if self.replies.back().is_none_or(|r| r.index <= index) {
            self.replies.len()
        } else {
            self.replies.partition_point(|r| r.index <= index)
        };
        let waiting = WaitingReply {
            index,
            caller,
            reply,
        };
        self.replies.insert(at, waiting);
    }

    pub fn own_row(&mut self, row: PendingRow) {
        self.own_rows.push_back(row);
    }

    pub fn credit(&mut self, credit: PendingCredit) {
        self.credits.push_back(credit);
    }

    pub fn waiting_replies(&self) -> usize {
        self.replies.len()
    }

    /// The next own row version now durable.
    pub fn durable_row(&mut self) -> Option<PendingRow> {
        let upto = self.persisted;
        self.own_rows
            .front()
            .is_some_and(|r| r.index <= upto)
            .then(|| self.own_rows.pop_front())?
    }

    /// Units of `pool` of event `event` credited here and not yet durable.
    pub fn landing(&self, event: usize, pool: PoolIdx) -> u64 {
        self.credits
            .iter()
            .filter(|c| c.event == event && c.pool == pool)
            .map(|c| c.amount)
            .sum()
    }

    /// The next credit now durable.
    pub fn durable_credit(&mut self) -> Option<PendingCredit> {
        let upto = self.persisted;
        self.credits
            .front()
            .is_some_and(|c| c.index <= upto)
            .then(|| self.credits.pop_front())?
    }

    /// The next reply whose record is now durable.
    pub fn durable_reply(&mut self) -> Option<(Caller, Reply)> {
        let upto = self.persisted;
        self.replies
            .front()
            .is_some_and(|r| r.index <= upto)
            .then(|| self.replies.pop_front().map(|w| (w.caller, w.reply)))?
    }

    /// Every queue waits only on records not yet durable, in record order.
    pub fn check(&self) -> Result<(), String> {
        let upto = self.persisted;
        let ordered = |it: &mut dyn Iterator<Item = RecordIndex>| {
            let mut last = upto;
            for i in it {
                if i <= upto || i < last {
                    return false;
                }
                last = i;
            }
            true
        };
        if !ordered(&mut self.replies.iter().map(|r| r.index))
            || !ordered(&mut self.own_rows.iter().map(|r| r.index))
            || !ordered(&mut self.credits.iter().map(|c| c.index))
        {
            return Err(format!(
                "a durability queue holds a record at or below the durable index {upto}, or out of order"
            ));
        }
        Ok(())
    }
}
