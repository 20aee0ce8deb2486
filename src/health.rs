//! Health-check results that storages apply to proxies.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::proxy::ProxyStatus;

/// The verdict of one health check on one proxy.
///
/// Applying it ([`crate::LeaseStorage::apply_health_check`]) sets the proxy's status and
/// `checked_at`. A proxy that turns non-active keeps its live leases (they run out
/// or are released) but gets no new ones.
///
/// ```
/// use lighthouse_lease::{HealthCheckResult, ProxyStatus};
/// # let proxy_id = uuid::Uuid::new_v4();
/// let result = HealthCheckResult::new(proxy_id, ProxyStatus::Slow)
///     .with_latency(std::time::Duration::from_millis(2_300));
/// assert_eq!(result.status, ProxyStatus::Slow);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckResult {
    /// The proxy that was checked.
    pub proxy_id: Uuid,
    /// The status it should have now.
    pub status: ProxyStatus,
    /// Round-trip time measured, if the check got an answer.
    pub latency: Option<Duration>,
    /// When the check ran.
    pub checked_at: DateTime<Utc>,
}

impl HealthCheckResult {
    /// A result checked now.
    pub fn new(proxy_id: Uuid, status: ProxyStatus) -> Self {
        HealthCheckResult {
            proxy_id,
            status,
            latency: None,
            checked_at: Utc::now(),
        }
    }

    /// Sets the measured latency.
    #[must_use]
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Sets when the check ran.
    #[must_use]
    pub fn checked_at(mut self, at: DateTime<Utc>) -> Self {
        self.checked_at = at;
        self
    }
}
