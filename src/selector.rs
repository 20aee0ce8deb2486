//! How an acquire picks among the proxies that match.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How an acquire picks one proxy among the available ones that match.
///
/// Every strategy is served from an index, so its cost does not grow with the pool.
///
/// The default is [`SelectorStrategy::LeastUsed`]: it spreads leases over the pool
/// (a proxy gets a second holder only when every matching proxy has one), which is
/// what a crawler fleet wants to keep per-IP request rates low and bans rare, and it
/// is deterministic, so behaviour is reproducible in tests and across storages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SelectorStrategy {
    /// The earliest-added available proxy: fills proxies in insertion order.
    FirstAvailable,
    /// The proxy with the fewest live leases (ties: earliest added).
    #[default]
    LeastUsed,
    /// The next available proxy after the one the pool handed out last, in insertion
    /// order, wrapping around. The cursor is per pool and shared by every manager.
    RoundRobin,
    /// A uniformly random available proxy (uniform when the filter is served by an
    /// index alone; see the storage's docs).
    Random,
    /// The proxy with the lowest latency measured by its last health check
    /// (proxies never measured come last; ties: earliest added).
    LowestLatency,
    /// The proxy with the best success score, an exponentially weighted
    /// success rate of the reports about it, shared by every host (ties:
    /// earliest added; see [`crate::success`]). Needs the pool to keep
    /// [`crate::IndexOrder::Success`]. A small share of these acquires (the
    /// pool's exploration) picks a random proxy instead.
    BestSuccess,
}

impl SelectorStrategy {
    /// Every strategy.
    pub const ALL: [SelectorStrategy; 6] = [
        SelectorStrategy::FirstAvailable,
        SelectorStrategy::LeastUsed,
        SelectorStrategy::RoundRobin,
        SelectorStrategy::Random,
        SelectorStrategy::LowestLatency,
        SelectorStrategy::BestSuccess,
    ];

    /// `first_available`, `least_used`, `round_robin`, `random`,
    /// `lowest_latency` or `best_success`.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectorStrategy::FirstAvailable => "first_available",
            SelectorStrategy::LeastUsed => "least_used",
            SelectorStrategy::RoundRobin => "round_robin",
            SelectorStrategy::Random => "random",
            SelectorStrategy::LowestLatency => "lowest_latency",
            SelectorStrategy::BestSuccess => "best_success",
        }
    }
}

impl fmt::Display for SelectorStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SelectorStrategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "first_available" => Ok(SelectorStrategy::FirstAvailable),
            "least_used" => Ok(SelectorStrategy::LeastUsed),
            "round_robin" => Ok(SelectorStrategy::RoundRobin),
            "random" => Ok(SelectorStrategy::Random),
            "lowest_latency" => Ok(SelectorStrategy::LowestLatency),
            "best_success" => Ok(SelectorStrategy::BestSuccess),
            _ => Err(Error::InvalidArgument(format!(
                "unknown selector {s:?}: use first_available, least_used, round_robin, random, lowest_latency or best_success"
            ))),
        }
    }
}
