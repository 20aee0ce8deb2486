//! The `lighthouse-sweeper` sidecar (feature `cli`): gives back the slots of
//! expired leases in every pool, audits lease counters, and serves `/metrics` and
//! `/healthz`.
//!
//! - Pools come from the registry in Redis; each sweep runs `cleanup.lua` on each
//!   pool in bounded batches, so no call blocks Redis for long.
//! - Any number of replicas may run: the scripts give each lease's slot back
//!   exactly once, whoever runs them.
//! - When Redis is unreachable it logs, backs off (up to 30 s) and keeps going;
//!   `/healthz` answers 503 until Redis is back.
//! - With `--health-check-interval`, it also checks every pool's proxies on a
//!   schedule through the crate's [`HealthChecker`](crate::HealthChecker) and
//!   applies the verdicts (see [`health`]).
//! - With `--status-page`, `/` serves a read-only HTML view of the pools,
//!   resting proxies, oldest leases and the last sweep (see [`status`]).
//! - On SIGTERM or SIGINT it finishes the batch in progress and exits 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::Result;
use crate::redis::RedisStorage;

pub mod health;
pub mod http;
pub mod metrics;
pub mod status;

use metrics::{Metrics, PoolGauges};

/// How the sweeper works.
#[derive(Debug, Clone)]
pub struct SweeperConfig {
    /// Pause between sweeps (default 1 s).
    pub interval: Duration,
    /// Leases per cleanup script call (default 200: a few ms of Redis time).
    pub batch_size: u32,
    /// Pause between counter audits; `None` disables them (default 60 s).
    pub audit_interval: Option<Duration>,
    /// Proxies per audit script call (default 500).
    pub audit_batch: u32,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        SweeperConfig {
            interval: Duration::from_secs(1),
            batch_size: 200,
            audit_interval: Some(Duration::from_secs(60)),
            audit_batch: 500,
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepReport {
    /// Pools swept.
    pub pools: usize,
    /// Leases whose slot was given back.
    pub reclaimed: u64,
    /// Cleanup script calls.
    pub batches: u64,
    /// The longest single cleanup call.
    pub longest_batch: Duration,
    /// Whether it stopped early for a shutdown.
    pub interrupted: bool,
}

/// The sweep loop over one Redis namespace.
pub struct Sweeper {
    storage: RedisStorage,
    config: SweeperConfig,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Sweeper {
    /// A sweeper over a storage. Its metrics go to the recorder installed when
    /// it is made (none: nothing is recorded); it registers them at zero.
    pub fn new(storage: RedisStorage, config: SweeperConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        metrics.register();
        Sweeper {
            storage,
            config,
            metrics,
        }
    }

    /// The storage it sweeps.
    pub fn storage(&self) -> &RedisStorage {
        &self.storage
    }

    /// Its settings.
    pub fn config(&self) -> &SweeperConfig {
        &self.config
    }

    /// The metrics it keeps (shared with the HTTP endpoint).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// One pass over every pool: cleanup in bounded batches until no due lease is
    /// left, then the pool's gauges. Stops between batches once `stop` is set.
    pub async fn sweep_once(&self, stop: &watch::Receiver<bool>) -> Result<SweepReport> {
        let started = Instant::now();
        let pools = self.storage.pool_names().await?;
        let mut report = SweepReport {
            pools: pools.len(),
            ..SweepReport::default()
        };
        'pools: for pool in &pools {
            loop {
                if *stop.borrow() {
                    report.interrupted = true;
                    break 'pools;
                }
                let t = Instant::now();
                let batch = match self
                    .storage
                    .cleanup_batch(pool, self.config.batch_size)
                    .await
                {
                    Ok(b) => b,
                    // Removed between listing and sweeping: nothing to do.
                    Err(crate::Error::PoolNotFound { .. }) => break,
                    Err(e) => return Err(e),
                };
                report.longest_batch = report.longest_batch.max(t.elapsed());
                report.batches += 1;
                report.reclaimed += batch.reclaimed;
                if batch.reclaimed > 0 {
                    self.metrics.reclaimed(pool, batch.reclaimed);
                }
                if !batch.more {
                    break;
                }
            }
            match self.storage.pool_stats_snapshot(pool).await {
                Ok(st) => self.metrics.pool(
                    pool,
                    PoolGauges {
                        active_leases: st.total_leases,
                        available_proxies: st.available_proxies,
                        total_proxies: st.total_proxies,
                        active_proxies: st.active_proxies,
                        leased_proxies: st.leased_proxies,
                        cooling_proxies: st.cooling_proxies,
                        banned_proxies: st.banned_proxies,
                    },
                ),
                Err(crate::Error::PoolNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.metrics.retain_pools(&pools);
        self.metrics
            .sweep_done(started.elapsed(), report.longest_batch, report.reclaimed);
        Ok(report)
    }

    /// Audits every pool's lease counters and repairs drift; returns how many
    /// proxies were repaired.
    pub async fn audit_once(&self) -> Result<u64> {
        let mut repaired = 0;
        for pool in self.storage.pool_names().await? {
            let fixes = match self
                .storage
                .audit_pool(&pool, self.config.audit_batch)
                .await
            {
                Ok(f) => f,
                Err(crate::Error::PoolNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            for f in &fixes {
                warn!(pool = %f.pool, proxy = %f.proxy_id, recorded = f.recorded, actual = f.actual,
                    "repaired a drifted lease counter");
            }
            repaired += fixes.len() as u64;
        }
        self.metrics.repairs(repaired);
        Ok(repaired)
    }

    /// Sweeps every `interval` until `stop` turns true, then returns after the
    /// batch in progress. Failures are logged and retried with backoff; they never
    /// end the loop.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        let mut backoff = self.config.interval.max(Duration::from_millis(100));
        let mut last_audit: Option<Instant> = None;
        let mut failing = false;
        while !*stop.borrow() {
            let wait = match self.sweep_once(&stop).await {
                Ok(r) => {
                    if failing {
                        info!("Redis is reachable again; sweeping resumed");
                        failing = false;
                    }
                    backoff = self.config.interval.max(Duration::from_millis(100));
                    if r.reclaimed > 0 {
                        info!(
                            pools = r.pools,
                            reclaimed = r.reclaimed,
                            batches = r.batches,
                            longest_batch_ms = r.longest_batch.as_secs_f64() * 1e3,
                            "sweep"
                        );
                    } else {
                        debug!(pools = r.pools, "sweep: nothing expired");
                    }
                    if let Some(every) = self.config.audit_interval {
                        if last_audit.is_none_or(|t| t.elapsed() >= every) && !r.interrupted {
                            last_audit = Some(Instant::now());
                            match self.audit_once().await {
                                Ok(n) if n > 0 => {
                                    info!(repaired = n, "audit repaired lease counters")
                                }
                                Ok(_) => debug!("audit: every counter matches"),
                                Err(e) => warn!(error = %e, "audit failed"),
                            }
                        }
                    }
                    self.config.interval
                }
                Err(e) => {
                    self.metrics.error(&e.to_string());
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "sweep failed; will retry");
                    failing = true;
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        info!("stopping: shutdown requested");
    }
}

pub mod cli;
