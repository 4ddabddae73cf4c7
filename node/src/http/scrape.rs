//! `GET /metrics`: refreshes what is read only when scraped, then renders every family in the
//! Prometheus text format. Read at scrape time: the consensus state ([`crate::metrics::raft`]),
//! and the gauges of [`crate::metrics::scrape::Scraped`].
//!
//! Who may read it is decided before the handler runs: on the FHIR port by the auth middleware
//! (the admin group, like `/_cluster/status`; [`super::authenticate::is_operator_page`]), on
//! the operator listener by its bearer token ([`super::admin::require_token`]).

use actix_web::{web, HttpResponse};

use crate::http::error::ApiError;
use crate::machine::export_job::Status;
use crate::http::AppState;
use crate::metrics::MetricsError;

/// Copies the scrape-time values into the gauges. Blocking (reads sled): run off the workers.
fn refresh(st: &AppState) {
    let m = &st.metrics;
    let s = &m.scraped;
    let _one = s.refresh.lock();
    crate::consensus::metrics::observe_status(&m.raft, &st.raft.status());
    match s.db.size_on_disk() {
        Ok(bytes) => s.sled_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!("metrics: cannot measure the database on disk: {e}"),
    }
    let tree = st.store.tree().tree();
    match crate::machine::export_state::list(tree) {
        Ok(jobs) => {
            let mut counts = [0i64; 4];
            for j in &jobs {
                counts[match j.status {
                    Status::Active => 0,
                    Status::Complete => 1,
                    Status::Failed(_) => 2,
                    Status::Cancelled => 3,
                }] += 1;
            }
            for (status, n) in ["active", "complete", "failed", "cancelled"].iter().zip(counts) {
                s.export_jobs.with_label_values(&[status]).set(n);
            }
        }
        Err(e) => tracing::warn!("metrics: cannot list export jobs: {e}"),
    }
    if st.meili.is_some() {
        let (mut rows, mut oldest) = (0usize, None::<u64>);
        for t in crate::meili::status::tenants(tree).unwrap_or_else(|_| vec![None]) {
            match crate::meili::status::backlog(tree, t.as_deref(), crate::meili::status::MAX_COUNTED_ROWS) {
                Ok((_, o, n)) => {
                    rows += n;
                    oldest = match (oldest, o) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Err(e) => tracing::warn!("metrics: cannot read the Meilisearch backlog: {e}"),
            }
        }
        let now = crate::fhir::meta::now_micros();
        s.meili_lag_rows.set(i64::try_from(rows).unwrap_or(i64::MAX));
        s.meili_lag_seconds.set(oldest.map(|o| (now.saturating_sub(o) / 1_000_000) as i64).unwrap_or(0));
    }
}

/// Renders the metrics (the gauges refreshed first).
pub fn render(st: &AppState) -> Result<String, MetricsError> {
    refresh(st);
    let families = st.metrics.registry().gather();
    prometheus::TextEncoder::new().encode_to_string(&families).map_err(|e| MetricsError::Encode(e.to_string()))
}

/// `GET /metrics` (FHIR port and operator listener).
pub async fn scrape(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let st2 = st.clone();
    let text = web::block(move || render(&st2)).await.map_err(|e| MetricsError::Encode(e.to_string()))??;
    Ok(HttpResponse::Ok().content_type(prometheus::TEXT_FORMAT).body(text))
}
