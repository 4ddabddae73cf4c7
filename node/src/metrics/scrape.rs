//! The gauges refreshed only when `/metrics` is scraped (`crate::http::scrape` fills them): the
//! size of the sled database on disk, export jobs by status, and the Meilisearch outbox lag
//! (history rows not yet indexed, and the age of the oldest) when Meilisearch is configured.

use parking_lot::Mutex;
use prometheus::{IntGauge, IntGaugeVec};

use super::{Families, MetricsError};

/// The families refreshed at scrape time (besides the Raft state).
pub(crate) struct Scraped {
    pub(crate) db: sled::Db,
    pub(crate) sled_bytes: IntGauge,
    pub(crate) export_jobs: IntGaugeVec,
    pub(crate) meili_lag_rows: IntGauge,
    pub(crate) meili_lag_seconds: IntGauge,
    /// One scrape at a time refreshes the gauges (the per-peer families are reset and refilled).
    pub(crate) refresh: Mutex<()>,
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
