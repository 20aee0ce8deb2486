#![cfg(feature = "cli")]
//! `deploy/grafana/lighthouse.json` queries only metrics the code exports: the
//! library's (recorded through a `DebuggingRecorder` while a manager runs every
//! kind of call) and the sweeper's (the text of its Prometheus exporter).

#[path = "support/recording.rs"]
mod recording;

use std::collections::BTreeSet;
use std::time::Duration;

use lighthouse_lease::sweeper::metrics::{prometheus_builder, Metrics, PoolGauges};
use metrics_util::MetricKind;
use recording::record_every_call;

/// Every `expr` of the dashboard's panels.
fn queries() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/lighthouse.json"
    );
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            out.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

/// The `lighthouse_*` metric names in a PromQL expression.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("lighthouse_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The library's metrics: (name, is a histogram), after every kind of call.
fn library_metrics() -> Vec<(String, bool)> {
    record_every_call()
        .into_iter()
        .map(|(key, ..)| {
            (
                key.key().name().to_string(),
                key.kind() == MetricKind::Histogram,
            )
        })
        .collect()
}

/// The sweeper's metric names, from the text its exporter serves (the same
/// exporter settings as the binary's, installed locally).
fn sweeper_metrics() -> BTreeSet<String> {
    let recorder = prometheus_builder(Duration::from_secs(120)).build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let metrics = Metrics::default();
    metrics.register();
    metrics.pool("p", PoolGauges::default());
    metrics.reclaimed("p", 1);
    metrics.sweep_done(Duration::from_millis(3), Duration::from_millis(1), 1);
    metrics.repairs(0);
    metrics.error("down");
    metrics.health_check("p", lighthouse_lease::ProxyStatus::Active);
    handle
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let mut exported = sweeper_metrics();
    for (name, histogram) in library_metrics() {
        if histogram {
            // As a Prometheus exporter publishes a histogram.
            for suffix in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{suffix}"));
            }
        }
        exported.insert(name);
    }
    let queries = queries();
    assert!(queries.len() >= 6, "the dashboard has its panels");
    let mut queried = BTreeSet::new();
    for q in &queries {
        queried.extend(names_in(q));
    }
    let missing: Vec<_> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
    // The panels the issue names are there.
    for needed in [
        "lighthouse_pool_active_leases",
        "lighthouse_pool_cooling_proxies",
        "lighthouse_pool_banned_proxies",
        "lighthouse_acquire_total",
        "lighthouse_acquire_duration_seconds_bucket",
        "lighthouse_release_total",
        "lighthouse_sweeper_leases_reclaimed_total",
    ] {
        assert!(queried.contains(needed), "{needed} is not on the dashboard");
    }
}

#[test]
fn a_name_that_is_not_exported_is_caught() {
    let exported = sweeper_metrics();
    let names = names_in("rate(lighthouse_no_such_metric_total[5m]) / lighthouse_pool_proxies");
    assert_eq!(
        names
            .iter()
            .filter(|n| !exported.contains(*n))
            .collect::<Vec<_>>(),
        ["lighthouse_no_such_metric_total"]
    );
}
