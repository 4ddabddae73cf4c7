//! Search latency by parameter type: `kiln_search_duration_seconds{param_type}`. A search is
//! observed once under each distinct type of the parameters it uses (`token`, `date`,
//! `reference`, ... as the registry defines them; `chain` for chained parameters and `_has`,
//! `text` for `_content` / `_text`, `none` for a search with no criteria; computed by
//! `crate::http::search_kinds`), so a slow parameter type shows in its own series;
//! `kiln_search_requests_total{param_type}` counts the same.

use prometheus::{HistogramVec, IntCounterVec};

use super::{Families, MetricsError, LATENCY_BUCKETS};

pub struct SearchMetrics {
    pub duration: HistogramVec,
    pub requests: IntCounterVec,
}

impl SearchMetrics {
    pub(crate) fn new(f: &Families) -> Result<SearchMetrics, MetricsError> {
        Ok(SearchMetrics {
            duration: f.histogram_vec(
                "kiln_search_duration_seconds",
                "Search time (criteria, sort, page, includes), observed once per parameter type the search uses.",
                &["param_type"],
                LATENCY_BUCKETS,
            )?,
            requests: f.counter_vec("kiln_search_requests_total", "Searches run, counted once per parameter type they use.", &["param_type"])?,
        })
    }

    /// Records one search that took `seconds` under each of `kinds`.
    pub fn observe(&self, kinds: &[&'static str], seconds: f64) {
        for k in kinds {
            self.duration.with_label_values(&[k]).observe(seconds);
            self.requests.with_label_values(&[k]).inc();
        }
    }
}
