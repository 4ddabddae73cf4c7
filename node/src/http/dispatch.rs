//! Running a GET / HEAD given as a URL inside a batch or transaction: the URL is matched against
//! the GET shapes of [`super::INTERACTIONS`] up front ([`Route::parse`] and [`Route::checked`], so
//! a transaction with a malformed URL or an unknown type fails before anything is written) and
//! served by the same functions as the HTTP routes.

use actix_web::HttpResponse;

use super::negotiate::Ctx;
use super::{crud, history, search, AppState, RequestError};
use crate::http::error::ApiError;

/// A readable URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    SystemSearch,
    SystemHistory,
    TypeSearch(String),
    TypeHistory(String),
    Read(String, String),
    InstanceHistory(String, String),
    Vread(String, String, String),
    Compartment(String, String, String),
}

impl Route {
    pub fn parse(path: &str) -> Result<Route, RequestError> {
        let s: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(String::from).collect();
        let refs: Vec<&str> = s.iter().map(String::as_str).collect();
        Ok(match refs.as_slice() {
            [] => Route::SystemSearch,
            ["_history"] => Route::SystemHistory,
            [t] => Route::TypeSearch(t.to_string()),
            [t, "_history"] => Route::TypeHistory(t.to_string()),
            [t, id, "_history"] => Route::InstanceHistory(t.to_string(), id.to_string()),
            [t, id, "_history", v] => Route::Vread(t.to_string(), id.to_string(), v.to_string()),
            [t, id] => Route::Read(t.to_string(), id.to_string()),
            [c, id, t] => Route::Compartment(c.to_string(), id.to_string(), t.to_string()),
            _ => return Err(RequestError::NoRoute(format!("GET /{path}"))),
        })
    }

    /// Checks the type names (and ids) in the URL, so a transaction with a read of an unknown
    /// type fails before anything is written.
    pub fn checked(self, st: &AppState) -> Result<Route, ApiError> {
        let ty = |t: &str| st.defs.resource_type(t).map(|_| ());
        let id = |t: &str, id: &str| crud::type_and_id(st, t, id).map(|_| ());
        match &self {
            Route::SystemSearch | Route::SystemHistory => {}
            Route::TypeSearch(t) | Route::TypeHistory(t) => ty(t)?,
            Route::Read(t, i) | Route::InstanceHistory(t, i) | Route::Vread(t, i, _) => id(t, i)?,
            Route::Compartment(c, i, t) => {
                id(c, i)?;
                ty(t)?;
            }
        }
        Ok(self)
    }

    /// Serves the read as its HTTP route would.
    pub async fn run(&self, ctx: &Ctx, st: &actix_web::web::Data<AppState>) -> Result<HttpResponse, ApiError> {
        match self {
            Route::SystemSearch => search::system_in(ctx, st).await,
            Route::SystemHistory => history::history_in(ctx, st, None, None).await,
            Route::TypeSearch(t) => search::type_in(ctx, st, t).await,
            Route::TypeHistory(t) => history::history_in(ctx, st, Some(t), None).await,
            Route::InstanceHistory(t, id) => history::history_in(ctx, st, Some(t), Some(id)).await,
            Route::Vread(t, id, v) => crud::vread_in(ctx, st, t, id, v),
            Route::Read(t, id) => crud::read_in(ctx, st, t, id),
            Route::Compartment(c, id, t) => search::compartment_in(ctx, st, c, id, t).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(Route::parse("").unwrap(), Route::SystemSearch);
        assert_eq!(Route::parse("Patient/1").unwrap(), Route::Read("Patient".into(), "1".into()));
        assert_eq!(Route::parse("/Patient/1/_history/2").unwrap(), Route::Vread("Patient".into(), "1".into(), "2".into()));
        assert_eq!(Route::parse("Patient/1/Observation").unwrap(), Route::Compartment("Patient".into(), "1".into(), "Observation".into()));
        assert!(Route::parse("a/b/c/d/e").is_err());
    }
}
