//! Pool statistics.

use serde::{Deserialize, Serialize};

/// A snapshot of one pool's occupancy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// Every proxy in the pool, whatever its status.
    pub total_proxies: u64,
    /// Proxies whose status is `active`.
    pub active_proxies: u64,
    /// Active proxies with at least one free slot: what an unfiltered acquire can get.
    pub available_proxies: u64,
    /// Proxies with at least one live lease.
    pub leased_proxies: u64,
    /// Live leases in the pool (the sum of every proxy's `current_leases`).
    pub total_leases: u64,
}
