//! The sweeper's metrics, written in the Prometheus text format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Per-pool figures from the last sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGauges {
    /// Live leases.
    pub active_leases: u64,
    /// Proxies with a free slot.
    pub available_proxies: u64,
    /// Proxies in the pool.
    pub total_proxies: u64,
}

#[derive(Debug, Default)]
struct State {
    reclaimed: BTreeMap<String, u64>,
    pools: BTreeMap<String, PoolGauges>,
    sweeps: u64,
    sweep_seconds_sum: f64,
    last_sweep_seconds: f64,
    longest_batch_seconds: f64,
    errors: u64,
    repairs: u64,
    redis_up: bool,
    last_error: Option<String>,
}

/// Counters and gauges shared by the sweep loop and the HTTP endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records a finished sweep.
    pub fn sweep_done(&self, took: Duration, longest_batch: Duration) {
        self.with(|s| {
            s.sweeps += 1;
            s.sweep_seconds_sum += took.as_secs_f64();
            s.last_sweep_seconds = took.as_secs_f64();
            s.longest_batch_seconds = longest_batch.as_secs_f64();
            s.redis_up = true;
            s.last_error = None;
        });
    }

    /// Adds leases reclaimed in a pool.
    pub fn reclaimed(&self, pool: &str, n: u64) {
        self.with(|s| *s.reclaimed.entry(pool.to_string()).or_default() += n);
    }

    /// Sets a pool's gauges.
    pub fn pool(&self, pool: &str, g: PoolGauges) {
        self.with(|s| {
            s.pools.insert(pool.to_string(), g);
        });
    }

    /// Drops the gauges of pools that no longer exist.
    pub fn retain_pools(&self, live: &[String]) {
        self.with(|s| s.pools.retain(|p, _| live.contains(p)));
    }

    /// Records a failed sweep (Redis unreachable or erroring).
    pub fn error(&self, message: &str) {
        self.with(|s| {
            s.errors += 1;
            s.redis_up = false;
            s.last_error = Some(message.to_string());
        });
    }

    /// Adds counter repairs made by an audit.
    pub fn repairs(&self, n: u64) {
        self.with(|s| s.repairs += n);
    }

    /// `None` while the last contact with Redis worked, else the error.
    pub fn unhealthy(&self) -> Option<String> {
        self.with(|s| {
            if s.redis_up {
                None
            } else {
                Some(
                    s.last_error
                        .clone()
                        .unwrap_or_else(|| "no sweep has completed yet".into()),
                )
            }
        })
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        self.with(|s| {
            let mut o = String::new();
            head(
                &mut o,
                "lighthouse_sweeper_leases_reclaimed_total",
                "counter",
                "Expired leases whose slot the sweeper gave back, by pool.",
            );
            for (pool, n) in &s.reclaimed {
                let _ = writeln!(
                    o,
                    "lighthouse_sweeper_leases_reclaimed_total{{pool=\"{}\"}} {n}",
                    escape(pool)
                );
            }
            let scalars: [(&str, &str, &str, String); 7] = [
                (
                    "lighthouse_sweeper_sweeps_total",
                    "counter",
                    "Completed sweeps over every pool.",
                    s.sweeps.to_string(),
                ),
                (
                    "lighthouse_sweeper_sweep_duration_seconds_total",
                    "counter",
                    "Total time spent sweeping.",
                    format!("{:.6}", s.sweep_seconds_sum),
                ),
                (
                    "lighthouse_sweeper_last_sweep_duration_seconds",
                    "gauge",
                    "Duration of the last sweep.",
                    format!("{:.6}", s.last_sweep_seconds),
                ),
                (
                    "lighthouse_sweeper_longest_batch_seconds",
                    "gauge",
                    "Longest single cleanup call (one Redis script) in the last sweep.",
                    format!("{:.6}", s.longest_batch_seconds),
                ),
                (
                    "lighthouse_sweeper_errors_total",
                    "counter",
                    "Sweeps that failed (Redis unreachable or erroring).",
                    s.errors.to_string(),
                ),
                (
                    "lighthouse_sweeper_counter_repairs_total",
                    "counter",
                    "Proxies whose lease counter or index membership the audit repaired.",
                    s.repairs.to_string(),
                ),
                (
                    "lighthouse_sweeper_redis_up",
                    "gauge",
                    "1 when the last contact with Redis worked.",
                    u8::from(s.redis_up).to_string(),
                ),
            ];
            for (name, kind, help, value) in scalars {
                head(&mut o, name, kind, help);
                let _ = writeln!(o, "{name} {value}");
            }
            type Get = fn(&PoolGauges) -> u64;
            let per_pool: [(&str, &str, Get); 3] = [
                (
                    "lighthouse_pool_active_leases",
                    "Live leases in the pool.",
                    |g| g.active_leases,
                ),
                (
                    "lighthouse_pool_available_proxies",
                    "Proxies with a free slot.",
                    |g| g.available_proxies,
                ),
                ("lighthouse_pool_proxies", "Proxies in the pool.", |g| {
                    g.total_proxies
                }),
            ];
            for (name, help, get) in per_pool {
                head(&mut o, name, "gauge", help);
                for (pool, g) in &s.pools {
                    let _ = writeln!(o, "{name}{{pool=\"{}\"}} {}", escape(pool), get(g));
                }
            }
            o
        })
    }
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
