//! `GET /metrics`: refreshes what is read only when scraped, then renders every family in the
//! Prometheus text format. Read at scrape time: the consensus state ([`super::raft`]), the size
//! of the sled database on disk, export jobs by status, and the Meilisearch outbox lag (history
//! rows not yet indexed, and the age of the oldest) when Meilisearch is configured.
//!
//! Who may read it is decided before the handler runs: on the FHIR port by the auth middleware
//! (the admin group, like `/_cluster/status`; `crate::http::authenticate::is_operator_page`), on
//! the operator listener by its bearer token (`crate::http::admin::require_token`).

use actix_web::{web, HttpResponse};
use parking_lot::Mutex;
use prometheus::{IntGauge, IntGaugeVec};

use super::{Families, MetricsError};
use crate::error::ApiError;
use crate::export::job::Status;
use crate::http::AppState;

/// The families refreshed at scrape time (besides the Raft state).
pub(crate) struct Scraped {
    db: sled::Db,
    sled_bytes: IntGauge,
    export_jobs: IntGaugeVec,
    meili_lag_rows: IntGauge,
    meili_lag_seconds: IntGauge,
    /// One scrape at a time refreshes the gauges (the per-peer families are reset and refilled).
    refresh: Mutex<()>,
}

impl Scraped {
    pub(crate) fn new(f: &Families, db: sled::Db) -> Result<Scraped, MetricsError> {
        Ok(Scraped {
            db,
            sled_bytes: f.gauge("kiln_sled_size_bytes", "Size of this node's sled database on disk (log, state, indexes).")?,
            export_jobs: f.gauge_vec("kiln_export_jobs", "Bulk export jobs in the replicated state, by status.", &["status"])?,
            meili_lag_rows: f.gauge(
                "kiln_meilisearch_outbox_lag_rows",
                "History rows not yet sent to Meilisearch (counted up to 1000000; absent without [meilisearch]).",
            )?,
            meili_lag_seconds: f.gauge("kiln_meilisearch_outbox_lag_seconds", "Age of the oldest history row not yet sent to Meilisearch (0: none waiting).")?,
            refresh: Mutex::new(()),
        })
    }
}

/// Copies the scrape-time values into the gauges. Blocking (reads sled): run off the workers.
fn refresh(st: &AppState) {
    let m = &st.metrics;
    let s = &m.scraped;
    let _one = s.refresh.lock();
    m.raft.observe_status(&st.raft.status());
    match s.db.size_on_disk() {
        Ok(bytes) => s.sled_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!("metrics: cannot measure the database on disk: {e}"),
    }
    let tree = st.store.tree().tree();
    match crate::export::state::list(tree) {
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
