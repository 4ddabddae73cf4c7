//! The request a piece of work serves, across threads and actors: the request id in a
//! task-local (set by the HTTP request-id middleware, `crate::http::request_id`) and [`Trace`],
//! the span and id the write path carries from the handler to its resource actor and the Raft
//! thread. Below HTTP on purpose: the actors and consensus log under it without knowing HTTP.

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// The id of the request this task serves, if any.
pub fn current() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Runs `fut` as the work of request `id` ([`current`] answers `id` inside it).
pub async fn scope<F: Future>(id: Arc<str>, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

/// The tracing span of the write path, as the resource actor and Raft see it: the request's
/// span and id, taken when the write is handed to its actor.
#[derive(Debug, Clone)]
pub struct Trace {
    pub span: tracing::Span,
    pub request_id: Option<Arc<str>>,
}

impl Trace {
    /// The current span and request id.
    pub fn current() -> Trace {
        Trace { span: tracing::Span::current(), request_id: current() }
    }
}
