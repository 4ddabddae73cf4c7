//! Smoke run of kiln-bench against a real node: every landed scenario runs without errors, the
//! others are skipped with a note, and the report files are written. Asserts the tool works, not a speed.

use std::time::Duration;

use kiln_bench::scenarios::ALL;
use kiln_bench::suite::{run_suite, SuiteOptions};
use kiln_tests::TestNode;

#[test]
fn bench_suite_smoke() {
    let node = TestNode::start();
    let out = tempfile::tempdir().unwrap();
    let opts = SuiteOptions {
        base: node.base.clone(),
        patients: 4,
        seed: 7,
        load: true,
        load_concurrency: 8,
        scenarios: ALL.iter().map(|s| s.to_string()).collect(),
        clients: vec![1, 3],
        duration: Duration::from_millis(400),
        // No warmup: a debug-build transaction of 1,000 entries takes longer than the whole run,
        // and a request that starts in the warmup is not recorded.
        warmup: Duration::ZERO,
        max_requests: Some(40),
        rate: None,
        server_pid: Some(std::process::id()),
        token: None,
        progress: false,
    };
    let report = tokio::runtime::Runtime::new().unwrap().block_on(run_suite(&opts)).unwrap();
    assert_eq!(report.loaded, Some(4 * 50 + 2));
    for row in &report.rows {
        assert_eq!(row.errors, 0, "{} x{}: {:?}", row.scenario, row.clients, row.first_error);
        assert!(row.ok > 0, "{} x{} recorded nothing", row.scenario, row.clients);
        assert!(row.p50_ms > 0.0 && row.p99_ms >= row.p50_ms);
    }
    let ran: Vec<&str> = report.rows.iter().map(|r| r.scenario.as_str()).collect();
    for s in ["read", "vread", "create", "update-if-match", "history-instance", "history-type", "history-system", "mixed-crud", "delete",
        "search-token", "search-string", "search-date", "search-reference", "search-count", "search-sort", "search-chained", "search-include",
        "transaction-100", "transaction-1000"] {
        assert!(ran.contains(&s), "{s} did not run");
    }
    report.write(out.path()).unwrap();
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## read") && md.contains("## transaction-1000"));
    for svg in ["throughput.svg", "latency-cdf.svg"] {
        let text = std::fs::read_to_string(out.path().join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("<polyline"), "{svg} has no plotted line");
    }
}
