//! Telemetry hooks: the manager calls them after every acquire and release.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::lease::ReleaseOutcome;
use crate::names::{ConsumerName, PoolName};
use crate::stats::PoolStats;

/// Which call an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseEventKind {
    /// [`crate::ProxyManager::acquire_proxy`] (one event per attempt when retrying).
    Acquire,
    /// [`crate::ProxyManager::release_proxy`].
    Release,
}

/// How the call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseEventOutcome {
    /// A lease was granted.
    Acquired,
    /// No matching proxy had a free slot (`Ok(None)`).
    Exhausted,
    /// A release call ended with this outcome.
    Released(ReleaseOutcome),
    /// The call failed with this error message.
    Failed(String),
}

/// What a hook receives.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LeaseEvent {
    /// Acquire or release.
    pub kind: LeaseEventKind,
    /// Pool name.
    pub pool: PoolName,
    /// Consumer name.
    pub consumer: ConsumerName,
    /// How it ended.
    pub outcome: LeaseEventOutcome,
    /// How long the storage call took.
    pub elapsed: Duration,
    /// The lease concerned, if any.
    pub lease_id: Option<Uuid>,
    /// The proxy concerned, if any.
    pub proxy_id: Option<Uuid>,
    /// The pool's stats right after the call, when a hook was added with
    /// [`crate::ProxyManagerBuilder::hook_with_stats`] (`None` otherwise, or when they
    /// could not be read).
    pub pool_stats: Option<PoolStats>,
}

/// A hook: any `Fn(&LeaseEvent)` that is `Send + Sync`. Keep it quick; it runs
/// inline on the caller's task.
pub type Hook = Arc<dyn Fn(&LeaseEvent) + Send + Sync>;
