//! The library's metrics (src/telemetry.rs) as a recorder sees them: names,
//! labels and counts of a known sequence of calls.

#[path = "support/recording.rs"]
mod recording;

use metrics_util::debugging::DebugValue;
use metrics_util::MetricKind;
use recording::{record_every_call, Snapshot};

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .find_map(|(key, _, _, value)| {
            let k = key.key();
            let same = key.kind() == MetricKind::Counter
                && k.name() == name
                && labels
                    .iter()
                    .all(|(l, v)| k.labels().any(|x| x.key() == *l && x.value() == *v));
            match (same, value) {
                (true, DebugValue::Counter(n)) => Some(*n),
                _ => None,
            }
        })
        .unwrap_or(0)
}

fn histogram_len(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> usize {
    snapshot
        .iter()
        .find_map(|(key, _, _, value)| {
            let k = key.key();
            let same = k.name() == name
                && labels
                    .iter()
                    .all(|(l, v)| k.labels().any(|x| x.key() == *l && x.value() == *v));
            match (same, value) {
                (true, DebugValue::Histogram(v)) => Some(v.len()),
                _ => None,
            }
        })
        .unwrap_or(0)
}

#[test]
fn calls_are_counted_by_pool_and_outcome() {
    let snapshot = record_every_call();
    let p = ("pool", "p");
    let acquires = |o| counter(&snapshot, "lighthouse_acquire_total", &[p, ("outcome", o)]);
    // 2 leased by hand + 1 by rotate; 1 none by hand + 1 per attempt of the wait.
    assert_eq!(acquires("leased"), 3);
    assert!(acquires("none") >= 2, "{}", acquires("none"));
    assert_eq!(acquires("error"), 0);
    let releases = |o| counter(&snapshot, "lighthouse_release_total", &[p, ("outcome", o)]);
    assert_eq!(
        (releases("released"), releases("already_released")),
        (3, 1),
        "two by hand, one by rotate; then the repeat"
    );
    assert_eq!(counter(&snapshot, "lighthouse_rotate_total", &[p]), 1);
    let extends = |o| counter(&snapshot, "lighthouse_extend_total", &[p, ("outcome", o)]);
    assert_eq!((extends("extended"), extends("lost")), (1, 1));
    assert_eq!(
        counter(
            &snapshot,
            "lighthouse_reports_total",
            &[("kind", "failure")]
        ),
        1
    );
    assert_eq!(
        counter(
            &snapshot,
            "lighthouse_reports_total",
            &[("kind", "success")]
        ),
        1
    );
    assert_eq!(
        histogram_len(
            &snapshot,
            "lighthouse_wait_duration_seconds",
            &[p, ("outcome", "none")]
        ),
        1
    );
    assert_eq!(
        histogram_len(&snapshot, "lighthouse_acquire_duration_seconds", &[p]) as u64,
        acquires("leased") + acquires("none")
    );
    // No label carries an id.
    for (key, ..) in &snapshot {
        for label in key.key().labels() {
            assert!(uuid::Uuid::parse_str(label.value()).is_err(), "{label:?}");
        }
    }
}
