//! Scheduled health checks: every `interval` the sweeper runs the crate's
//! [`HealthChecker`] over each pool's proxies (banned ones excepted, as
//! [`HealthChecker::check_pool`] does), a bounded number at once, and applies
//! each verdict with [`LeaseStorage::apply_health_check`](crate::LeaseStorage::apply_health_check):
//! proxies that fail stop being leased, proxies that recover are leased again.
//! Off unless `--health-check-interval` is given.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Sweeper;
use crate::error::Result;
use crate::health_check::HealthChecker;
use crate::proxy::ProxyStatus;

/// What one pass over every pool found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthPass {
    /// Pools checked.
    pub pools: usize,
    /// Proxies found active.
    pub active: u64,
    /// Proxies found slow.
    pub slow: u64,
    /// Proxies found inactive.
    pub inactive: u64,
    /// Pools whose pass failed on a storage error (logged and counted).
    pub failed_pools: usize,
}

impl HealthPass {
    /// Proxies checked.
    pub fn checked(&self) -> u64 {
        self.active + self.slow + self.inactive
    }
}

impl Sweeper {
    /// Checks every pool's proxies once and applies the verdicts. The checker's
    /// [`concurrency`](crate::HealthCheckConfig::concurrency) bounds the checks
    /// in flight (pools are checked one after the other). A pool whose pass
    /// fails is logged and counted, and the others are still checked; only
    /// failing to list the pools is an error.
    pub async fn health_check_once(&self, checker: &HealthChecker) -> Result<HealthPass> {
        let pools = self.storage.pool_names().await?;
        let mut pass = HealthPass {
            pools: pools.len(),
            ..HealthPass::default()
        };
        for pool in &pools {
            match checker.check_pool(&self.storage, pool).await {
                Ok(results) => {
                    for r in results {
                        self.metrics.health_check(pool, r.status);
                        match r.status {
                            ProxyStatus::Slow => pass.slow += 1,
                            ProxyStatus::Active => pass.active += 1,
                            _ => pass.inactive += 1,
                        }
                    }
                }
                // Removed between listing and checking.
                Err(crate::Error::PoolNotFound { .. }) => {}
                Err(e) => {
                    warn!(pool = %pool, error = %e, "health checks of a pool failed");
                    self.metrics.health_check_error();
                    pass.failed_pools += 1;
                }
            }
        }
        self.metrics.health_check_pass(pass.checked());
        Ok(pass)
    }

    /// Runs [`Sweeper::health_check_once`] every `interval` (from the end of one
    /// pass to the start of the next) until `stop` turns true; a pass in progress
    /// is abandoned then (each verdict already applied stays applied).
    pub async fn run_health_checks(
        &self,
        checker: HealthChecker,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        while !*stop.borrow() {
            let started = Instant::now();
            tokio::select! {
                pass = self.health_check_once(&checker) => match pass {
                    Ok(p) if p.inactive + p.slow > 0 || p.failed_pools > 0 => info!(
                        pools = p.pools, active = p.active, slow = p.slow, inactive = p.inactive,
                        failed_pools = p.failed_pools, took_ms = started.elapsed().as_millis() as u64,
                        "health checks"
                    ),
                    Ok(p) => debug!(pools = p.pools, active = p.active, "health checks: all active"),
                    Err(e) => warn!(error = %e, "health checks failed; will retry"),
                },
                _ = stop.changed() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
    }
}
