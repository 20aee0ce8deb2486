//! Limits that several modules check (a leaf module: it depends on nothing in
//! the crate, so the modules that share them do not depend on each other).
//! Public through the storage module.

use std::time::Duration;

/// Longest lease accepted: 7 days. Longer jobs should renew their lease instead.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest lease accepted: 1 ms (storages keep time in milliseconds).
pub const MIN_LEASE_DURATION: Duration = Duration::from_millis(1);
