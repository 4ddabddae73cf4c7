//! Why a search (or a condition) is refused: [`SearchError`], and how the errors of the layers
//! below become it.



use super::posting::PostingError;
use crate::store::StoreError;


/// Why a search request is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SearchError {
    #[error("unknown search parameter '{param}' for {rtype} (see GET /metadata for the supported ones)")]
    UnknownParameter { rtype: String, param: String },
    #[error("invalid value for search parameter '{param}': {reason}")]
    BadValue { param: String, reason: String },
    #[error("'{0}' is not supported by this server yet")]
    NotSupported(String),
    #[error("search too costly: {0}")]
    TooCostly(String),
    /// A terminology modifier that cannot be evaluated (storage failures and spent budgets are
    /// [`SearchError::Store`] / [`SearchError::TooCostly`], as for every other criterion).
    #[error(transparent)]
    Terminology(crate::terminology::TerminologyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PostingError> for SearchError {
    fn from(e: PostingError) -> Self {
        match e {
            PostingError::TooCostly(x) => x.into(),
            e => SearchError::Store(e.into()),
        }
    }
}

impl From<crate::terminology::TerminologyError> for SearchError {
    fn from(e: crate::terminology::TerminologyError) -> Self {
        use crate::terminology::TerminologyError as T;
        match e {
            T::Store(s) => SearchError::Store(s),
            T::TooCostly(x) => SearchError::TooCostly(x),
            e => SearchError::Terminology(e),
        }
    }
}

impl From<super::cost::Exhausted> for SearchError {
    fn from(e: super::cost::Exhausted) -> Self {
        SearchError::TooCostly(e.to_string())
    }
}

impl From<sled::Error> for SearchError {
    fn from(e: sled::Error) -> Self {
        SearchError::Store(e.into())
    }
}
