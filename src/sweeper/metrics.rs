//! The sweeper's metrics, recorded through the [`metrics`] facade, and the
//! Prometheus exporter the `lighthouse-sweeper` binary installs.
//!
//! The binary installs one [`PrometheusRecorder`](metrics_exporter_prometheus::PrometheusRecorder)
//! (see [`prometheus_builder`]) as the process's global recorder, so what the
//! sweeper records here and what the library records for the sweeper's own
//! storage calls (see [`crate::telemetry`]) come out together on `/metrics`.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `lighthouse_sweeper_leases_reclaimed_total{pool}` | counter | expired leases whose slot the sweeper gave back |
//! | `lighthouse_sweeper_sweeps_total` | counter | completed sweeps over every pool |
//! | `lighthouse_sweeper_sweep_duration_seconds` | histogram | one whole sweep |
//! | `lighthouse_sweeper_sweep_duration_seconds_total` | gauge (monotonic) | time spent sweeping, in all (the facade's counters are integers, so it is a gauge only ever incremented; `rate()` works on it) |
//! | `lighthouse_sweeper_last_sweep_duration_seconds` | gauge | the last sweep |
//! | `lighthouse_sweeper_longest_batch_seconds` | gauge | the longest single cleanup call (one Redis script) in the last sweep |
//! | `lighthouse_sweeper_errors_total` | counter | sweeps that failed (Redis unreachable or erroring) |
//! | `lighthouse_sweeper_counter_repairs_total` | counter | proxies whose lease counter or index membership an audit repaired |
//! | `lighthouse_sweeper_redis_up` | gauge | 1 while the last contact with Redis worked |
//! | `lighthouse_sweeper_health_checks_total{pool,result}` | counter | scheduled health checks; `result`: `active`, `slow`, `inactive` |
//! | `lighthouse_sweeper_health_check_errors_total` | counter | scheduled health-check passes over a pool that failed (storage error) |
//! | `lighthouse_pool_active_leases{pool}` | gauge | live leases in the pool, after the last sweep |
//! | `lighthouse_pool_available_proxies{pool}` | gauge | proxies with a free slot |
//! | `lighthouse_pool_proxies{pool}` | gauge | proxies in the pool |
//! | `lighthouse_pool_active_proxies{pool}` | gauge | proxies whose status is `active` |
//! | `lighthouse_pool_leased_proxies{pool}` | gauge | proxies with at least one live lease |
//! | `lighthouse_pool_cooling_proxies{pool}` | gauge | proxies cooling down after a reported failure |
//! | `lighthouse_pool_banned_proxies{pool}` | gauge | proxies whose status is `banned` |
//!
//! Gauges of a pool that no longer exists stop being refreshed and leave the
//! output after the exporter's idle timeout (see [`prometheus_builder`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::proxy::ProxyStatus;

/// Upper bounds (seconds) of the histograms' buckets: from half a millisecond
/// (an acquire on a local Redis) to a minute (a long `acquire_proxy_wait`).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The exporter's settings: every histogram (the library's
/// `lighthouse_*_duration_seconds` and the sweeper's) as a Prometheus histogram
/// with [`DURATION_BUCKETS`] (so `histogram_quantile` works across replicas),
/// and gauges not set for `gauge_idle_timeout` dropped from the output (the
/// gauges of a removed pool).
///
/// The binary calls `.install_recorder()` on it; a test can
/// `.build_recorder()` and install it locally.
pub fn prometheus_builder(gauge_idle_timeout: Duration) -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(&DURATION_BUCKETS)
        // DURATION_BUCKETS is not empty: the only error set_buckets returns.
        .unwrap_or_else(|_| PrometheusBuilder::new())
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(gauge_idle_timeout),
        )
}

/// Per-pool figures from the last sweep (from the pool's stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGauges {
    /// Live leases.
    pub active_leases: u64,
    /// Proxies with a free slot.
    pub available_proxies: u64,
    /// Proxies in the pool.
    pub total_proxies: u64,
    /// Proxies whose status is `active`.
    pub active_proxies: u64,
    /// Proxies with at least one live lease.
    pub leased_proxies: u64,
    /// Proxies cooling down after a reported failure (their cooldown ends
    /// after Redis's now).
    pub cooling_proxies: u64,
    /// Proxies whose status is `banned`.
    pub banned_proxies: u64,
}

/// What the status page shows about the sweeper itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweeperStatus {
    /// When the last sweep finished, how long it took and what it reclaimed.
    pub last_sweep: Option<(DateTime<Utc>, Duration, u64)>,
    /// When the last audit finished and how many proxies it repaired.
    pub last_audit: Option<(DateTime<Utc>, u64)>,
    /// When the last scheduled health-check pass finished, and how many proxies
    /// it checked.
    pub last_health_check: Option<(DateTime<Utc>, u64)>,
    /// Completed sweeps.
    pub sweeps: u64,
    /// Failed sweeps.
    pub errors: u64,
    /// Whether the last contact with Redis worked.
    pub redis_up: bool,
    /// The last error, while Redis is failing.
    pub last_error: Option<String>,
    /// Each pool's gauges after the last sweep.
    pub pools: BTreeMap<String, PoolGauges>,
}

#[derive(Debug, Default)]
struct State {
    status: SweeperStatus,
    longest_batch_seconds: f64,
}

/// The sweeper's own figures: records each through the facade (to whatever
/// recorder is installed; nothing without one) and keeps what `/healthz` and the
/// status page read.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

const RECLAIMED: &str = "lighthouse_sweeper_leases_reclaimed_total";
const SWEEPS: &str = "lighthouse_sweeper_sweeps_total";
const SWEEP_SECONDS: &str = "lighthouse_sweeper_sweep_duration_seconds";
const SWEEP_SECONDS_TOTAL: &str = "lighthouse_sweeper_sweep_duration_seconds_total";
const LAST_SWEEP: &str = "lighthouse_sweeper_last_sweep_duration_seconds";
const LONGEST_BATCH: &str = "lighthouse_sweeper_longest_batch_seconds";
const ERRORS: &str = "lighthouse_sweeper_errors_total";
const REPAIRS: &str = "lighthouse_sweeper_counter_repairs_total";
const REDIS_UP: &str = "lighthouse_sweeper_redis_up";
const HEALTH_CHECKS: &str = "lighthouse_sweeper_health_checks_total";
const HEALTH_CHECK_ERRORS: &str = "lighthouse_sweeper_health_check_errors_total";
const POOL_LEASES: &str = "lighthouse_pool_active_leases";
const POOL_AVAILABLE: &str = "lighthouse_pool_available_proxies";
const POOL_PROXIES: &str = "lighthouse_pool_proxies";
const POOL_ACTIVE: &str = "lighthouse_pool_active_proxies";
const POOL_LEASED: &str = "lighthouse_pool_leased_proxies";
const POOL_COOLING: &str = "lighthouse_pool_cooling_proxies";
const POOL_BANNED: &str = "lighthouse_pool_banned_proxies";

impl Metrics {
    /// Describes every metric and sets the sweeper's counters and gauges to
    /// zero, so they are exported before the first sweep. Call it after
    /// installing the recorder ([`super::Sweeper::new`] does).
    pub fn register(&self) {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_counter!(
            RECLAIMED,
            "Expired leases whose slot the sweeper gave back, by pool."
        );
        describe_counter!(SWEEPS, "Completed sweeps over every pool.");
        describe_histogram!(SWEEP_SECONDS, Unit::Seconds, "Duration of one sweep.");
        describe_gauge!(
            SWEEP_SECONDS_TOTAL,
            Unit::Seconds,
            "Total time spent sweeping (monotonic)."
        );
        describe_gauge!(LAST_SWEEP, Unit::Seconds, "Duration of the last sweep.");
        describe_gauge!(
            LONGEST_BATCH,
            Unit::Seconds,
            "Longest single cleanup call (one Redis script) in the last sweep."
        );
        describe_counter!(
            ERRORS,
            "Sweeps that failed (Redis unreachable or erroring)."
        );
        describe_counter!(
            REPAIRS,
            "Proxies whose lease counter or index membership the audit repaired."
        );
        describe_gauge!(REDIS_UP, "1 when the last contact with Redis worked.");
        describe_counter!(
            HEALTH_CHECKS,
            "Scheduled health checks, by pool and result (active, slow, inactive)."
        );
        describe_counter!(
            HEALTH_CHECK_ERRORS,
            "Scheduled health-check passes over a pool that failed."
        );
        describe_gauge!(POOL_LEASES, "Live leases in the pool.");
        describe_gauge!(POOL_AVAILABLE, "Proxies with a free slot.");
        describe_gauge!(POOL_PROXIES, "Proxies in the pool.");
        describe_gauge!(POOL_ACTIVE, "Proxies whose status is active.");
        describe_gauge!(POOL_LEASED, "Proxies with at least one live lease.");
        describe_gauge!(
            POOL_COOLING,
            "Proxies cooling down after a reported failure."
        );
        describe_gauge!(POOL_BANNED, "Proxies whose status is banned.");
        for name in [SWEEPS, ERRORS, REPAIRS] {
            metrics::counter!(name).increment(0);
        }
        metrics::counter!(HEALTH_CHECK_ERRORS).increment(0);
        self.touch_gauges();
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sets every gauge to the value it has (so the exporter's idle timeout
    /// drops only the gauges of pools that are gone).
    fn touch_gauges(&self) {
        self.with(|s| {
            let st = &s.status;
            metrics::gauge!(REDIS_UP).set(f64::from(u8::from(st.redis_up)));
            metrics::gauge!(LAST_SWEEP).set(st.last_sweep.map_or(0.0, |l| l.1.as_secs_f64()));
            metrics::gauge!(LONGEST_BATCH).set(s.longest_batch_seconds);
            metrics::gauge!(SWEEP_SECONDS_TOTAL).increment(0.0);
            for (pool, g) in &st.pools {
                set_pool_gauges(pool, g);
            }
        });
    }

    /// Records a finished sweep, and the leases it reclaimed.
    pub fn sweep_done(&self, took: Duration, longest_batch: Duration, reclaimed: u64) {
        metrics::counter!(SWEEPS).increment(1);
        metrics::histogram!(SWEEP_SECONDS).record(took.as_secs_f64());
        metrics::gauge!(SWEEP_SECONDS_TOTAL).increment(took.as_secs_f64());
        self.with(|s| {
            s.status.sweeps += 1;
            s.status.last_sweep = Some((Utc::now(), took, reclaimed));
            s.longest_batch_seconds = longest_batch.as_secs_f64();
            s.status.redis_up = true;
            s.status.last_error = None;
        });
        self.touch_gauges();
    }

    /// Adds leases reclaimed in a pool.
    pub fn reclaimed(&self, pool: &str, n: u64) {
        metrics::counter!(RECLAIMED, "pool" => pool.to_string()).increment(n);
    }

    /// Sets a pool's gauges.
    pub fn pool(&self, pool: &str, g: PoolGauges) {
        set_pool_gauges(pool, &g);
        self.with(|s| {
            s.status.pools.insert(pool.to_string(), g);
        });
    }

    /// Forgets the pools that no longer exist: their gauges are no longer set,
    /// and the exporter drops them after its idle timeout.
    pub fn retain_pools(&self, live: &[crate::names::PoolName]) {
        self.with(|s| s.status.pools.retain(|p, _| live.iter().any(|l| l == p)));
    }

    /// Records a failed sweep (Redis unreachable or erroring).
    pub fn error(&self, message: &str) {
        metrics::counter!(ERRORS).increment(1);
        self.with(|s| {
            s.status.errors += 1;
            s.status.redis_up = false;
            s.status.last_error = Some(message.to_string());
        });
        self.touch_gauges();
    }

    /// Records an audit that repaired `n` proxies.
    pub fn repairs(&self, n: u64) {
        metrics::counter!(REPAIRS).increment(n);
        self.with(|s| s.status.last_audit = Some((Utc::now(), n)));
    }

    /// Records one scheduled health check's verdict in a pool.
    pub fn health_check(&self, pool: &str, status: ProxyStatus) {
        metrics::counter!(HEALTH_CHECKS, "pool" => pool.to_string(), "result" => status.as_str())
            .increment(1);
    }

    /// Records a scheduled health-check pass over a pool that failed.
    pub fn health_check_error(&self) {
        metrics::counter!(HEALTH_CHECK_ERRORS).increment(1);
    }

    /// Records the end of a scheduled health-check pass over every pool.
    pub fn health_check_pass(&self, checked: u64) {
        self.with(|s| s.status.last_health_check = Some((Utc::now(), checked)));
    }

    /// `None` while the last contact with Redis worked, else the error.
    pub fn unhealthy(&self) -> Option<String> {
        self.with(|s| {
            if s.status.redis_up {
                None
            } else {
                Some(
                    s.status
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "no sweep has completed yet".into()),
                )
            }
        })
    }

    /// What the status page shows about the sweeper.
    pub fn status(&self) -> SweeperStatus {
        self.with(|s| s.status.clone())
    }
}

fn set_pool_gauges(pool: &str, g: &PoolGauges) {
    let values = [
        (POOL_LEASES, g.active_leases),
        (POOL_AVAILABLE, g.available_proxies),
        (POOL_PROXIES, g.total_proxies),
        (POOL_ACTIVE, g.active_proxies),
        (POOL_LEASED, g.leased_proxies),
        (POOL_COOLING, g.cooling_proxies),
        (POOL_BANNED, g.banned_proxies),
    ];
    for (name, v) in values {
        metrics::gauge!(name, "pool" => pool.to_string()).set(v as f64);
    }
}
