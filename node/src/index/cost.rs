//! A deterministic cost budget for searches that decide replicated writes. Conditional
//! create / update / delete / patch and conditional references in bundles run a search inside
//! apply, on the Raft thread of every node. Each index row or key such a search reads is charged
//! here ([`charge`], called by the index readers); once the budget is spent the search fails with
//! "too costly". The count depends only on the replicated state and the query, so every node
//! fails the same condition at the same row and their states stay identical. Budgets nest
//! ([`limited`] inside [`pool`]): a condition's own budget also draws on the pool of its whole log
//! entry.
//! Every charge also draws on the client request's budget ([`crate::budget`]) when the search
//! runs for one. Outside any budget charging costs two thread-local reads.

use std::cell::RefCell;

/// Rows one condition may read (a conditional write's search, or one conditional reference).
pub const CONDITION_ROWS: u64 = 50_000;

/// Rows all the conditions of one log entry may read together (a transaction of many
/// conditional entries).
pub const ENTRY_ROWS: u64 = 250_000;

thread_local! {
    /// (limit, rows left, whether it is a search's own budget) of each budget in force on this
    /// thread, outermost first.
    static BUDGETS: RefCell<Vec<(u64, u64, bool)>> = const { RefCell::new(Vec::new()) };
}

/// The budget ran out: a condition's (or its entry's), or the client request's
/// ([`crate::budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    #[error("the search read more than {limit} index rows, the limit for searches that decide a write; make the condition more selective (e.g. an identifier)")]
    Condition { limit: u64 },
    #[error(transparent)]
    Request(#[from] crate::budget::Spent),
}

fn scoped<T>(rows: u64, search: bool, f: impl FnOnce() -> T) -> T {
    BUDGETS.with(|b| b.borrow_mut().push((rows, rows, search)));
    // Popped even if `f` panics, so a later search on this thread is not charged to a dead budget.
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            BUDGETS.with(|b| {
                b.borrow_mut().pop();
            });
        }
    }
    let _pop = Pop;
    f()
}

/// Runs a search that decides a write with at most `rows` row reads, and no more than what
/// an enclosing [`pool`] has left; its reads are charged to that pool too.
pub fn limited<T>(rows: u64, f: impl FnOnce() -> T) -> T {
    scoped(rows, true, f)
}

/// Runs `f` (applying one log entry) with a pool of `rows` shared by every [`limited`] search
/// inside it. Reads outside such searches (the writes themselves) are not charged.
pub fn pool<T>(rows: u64, f: impl FnOnce() -> T) -> T {
    scoped(rows, false, f)
}

/// Charges `n` row reads to every budget in force when a [`limited`] search is running;
/// `Err` names the smallest budget that is spent.
pub fn charge(n: u64) -> Result<(), Exhausted> {
    crate::budget::charge(n)?;
    BUDGETS.with(|b| {
        let mut b = b.borrow_mut();
        if !b.last().is_some_and(|(_, _, search)| *search) {
            return Ok(());
        }
        let mut spent: Option<u64> = None;
        for (limit, left, _) in b.iter_mut() {
            if *left < n {
                *left = 0;
                spent = Some(spent.map_or(*limit, |s| s.min(*limit)));
            } else {
                *left -= n;
            }
        }
        spent.map_or(Ok(()), |limit| Err(Exhausted::Condition { limit }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_nest_and_unwind() {
        assert!(charge(1_000_000).is_ok(), "no budget: free");
        pool(10, || {
            assert!(charge(1_000).is_ok(), "outside a search, the pool is not charged");
            limited(100, || {
                assert!(charge(4).is_ok());
                assert!(charge(5).is_ok());
                assert_eq!(charge(2), Err(Exhausted::Condition { limit: 10 }), "the pool has 1 left");
            });
            limited(100, || assert!(charge(1).is_err(), "the pool is spent for the next search too"));
        });
        assert!(charge(1_000_000).is_ok(), "popped");
        limited(3, || assert_eq!(charge(4), Err(Exhausted::Condition { limit: 3 })));
        let caught = std::panic::catch_unwind(|| limited(1, || panic!("boom")));
        assert!(caught.is_err());
        assert!(charge(5).is_ok(), "a panic pops its budget");
    }
}
