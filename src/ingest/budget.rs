//! Bytes all connections together may hold against a limit, and each connection's share.

use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Bytes held by all connections together against a limit: unfinished lines
/// (`daemon.partial_line_budget_bytes`) or queued replies (`connection::REPLY_BUDGET`).
#[derive(Debug)]
pub struct ByteBudget {
    pub budget: usize,
    pub held: std::sync::atomic::AtomicUsize,
}

impl ByteBudget {
    pub fn new(budget: usize) -> ByteBudget {
        ByteBudget {
            budget,
            held: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// One connection's part of a [`ByteBudget`].
pub(super) struct Share {
    pub(super) budget: Arc<ByteBudget>,
    pub(super) held: usize,
}

impl Share {
    /// Records that this connection now holds `bytes`; true when that takes all connections
    /// over the budget.
    pub(super) fn hold(&mut self, bytes: usize) -> bool {
        if bytes == self.held {
            return false;
        }
        let total = if bytes > self.held {
            let add = bytes - self.held;
            self.budget.held.fetch_add(add, Ordering::Relaxed) + add
        } else {
            let sub = self.held - bytes;
            self.budget.held.fetch_sub(sub, Ordering::Relaxed) - sub
        };
        self.held = bytes;
        bytes > 0 && total > self.budget.budget
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.hold(0);
    }
}
