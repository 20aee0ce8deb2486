//! Pool statistics.

use serde::{Deserialize, Serialize};

/// A snapshot of one pool's occupancy.
///
/// More counts may be added: the struct is `#[non_exhaustive]`, so a storage
/// outside this crate builds one from [`PoolStats::default`] and sets the
/// fields it counts. Deserializing stats that lack a field (written by an
/// older version) gives that field 0.
///
/// ```
/// use lighthouse_lease::PoolStats;
///
/// let mut stats = PoolStats::default();
/// stats.total_proxies = 3;
/// stats.banned_proxies = 1;
/// assert_eq!(stats.cooling_proxies, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
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
    /// Proxies cooling down after a reported failure: their cooldown ends after
    /// the storage's now (its clock; Redis's `TIME` for the Redis storage).
    /// Counted whatever the status, so a proxy set `banned` during its cooldown
    /// counts here too until the cooldown is over; a ban by
    /// [`crate::cooldown::CooldownPolicy::ban_after`] ends the cooldown.
    pub cooling_proxies: u64,
    /// Proxies whose status is `banned`: by the ban threshold of reported
    /// failures, or set so (`set_proxy_status`, an import, an update).
    pub banned_proxies: u64,
}
