//! Conditions (searches that decide a replicated write: conditional create/update/delete,
//! `_typeFilter`), run within the row budget identically on every node, and the link scope that
//! limits what chains and `_has` read for the search running on this thread (a hidden
//! thread-local, documented at [`with_link_scope`]: it is set around the blocking part of a search
//! and read deep in the executor, where passing it down every call would touch every reader).

use super::error::SearchError;
use super::query::{Executor, Ids};
use crate::store::space::Space;
use std::collections::HashMap;
use std::sync::Arc;


use super::params::Registry;
use super::parse::{parse, Query};


/// The ids of `rtype` matching a condition (a search that decides a replicated write), in id
/// order, read within the row budget of [`super::cost`]. Refused, identically on every node:
/// parameters that do not parse, and queries whose answer is not a function of the replicated
/// state alone (`ap` reads the clock, `near` computes with platform floating point).
pub fn condition_ids(reg: &Registry, tree: &Space, rtype: &str, params: &[(String, String)]) -> Result<Vec<String>, SearchError> {
    let q = condition_query(reg, rtype, params)?;
    let mut ids = super::cost::limited(super::cost::CONDITION_ROWS, || (Executor { tree, rtype }).run_ids(&q))?;
    ids.sort();
    Ok(ids)
}

/// [`condition_ids`] as doc numbers (an export's `_typeFilter`, decided at apply).
pub fn condition_docs(reg: &Registry, tree: &Space, rtype: &str, params: &[(String, String)]) -> Result<Ids, SearchError> {
    let q = condition_query(reg, rtype, params)?;
    super::cost::limited(super::cost::CONDITION_ROWS, || (Executor { tree, rtype }).run(&q))
}

/// A search that decides replicated state: parsed strictly, without what replicas could
/// evaluate differently.
fn condition_query(reg: &Registry, rtype: &str, params: &[(String, String)]) -> Result<Query, SearchError> {
    let q = parse(reg, rtype, params, false)?;
    if q.uses_now() {
        return Err(SearchError::NotSupported("the ap prefix in a condition (it depends on the current time)".into()));
    }
    if q.uses_near() {
        return Err(SearchError::NotSupported("near in a condition (its distance is computed in floating point, which replicas need not share)".into()));
    }
    Ok(q)
}

thread_local! {
    /// The resources chains and `_has` may read, per linked type, for the search running on
    /// this thread ([`with_link_scope`]); types not in it are read whole.
    static LINK_SCOPE: std::cell::RefCell<Option<Arc<HashMap<String, Ids>>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with chains and `_has` limited, per linked type, to `scope` (the caller's reach:
/// a `patient/` grant reads only that patient's compartment through a chain too).
pub fn with_link_scope<T>(scope: Option<Arc<HashMap<String, Ids>>>, f: impl FnOnce() -> T) -> T {
    /// Puts the previous scope back however `f` ends (a panic on a reused blocking thread must
    /// not leave this request's scope behind).
    struct Restore(Option<Option<Arc<HashMap<String, Ids>>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take().flatten();
            LINK_SCOPE.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(Some(LINK_SCOPE.with(|s| s.replace(scope))));
    f()
}

/// `ids` of `rtype` limited to the link scope of this thread.
pub(super) fn link_scoped(rtype: &str, ids: Ids) -> Ids {
    LINK_SCOPE.with(|s| match s.borrow().as_ref().and_then(|m| m.get(rtype)) {
        Some(within) => ids & within,
        None => ids,
    })
}
