//! Cooldowns and bans after reported failures.

use std::time::Duration;

use crate::error::{Error, Result};

/// How a proxy is rested after failures reported with
/// [`crate::ProxyManager::report_failure`].
///
/// After the n-th failure in a row the proxy is not leased for
/// `min(cap, base × 2^(n-1))`, shortened by a random part of up to `jitter` of it
/// (so proxies that failed together come back spread out). After `ban_after`
/// failures in a row its status becomes `banned` (no cooldown: an operator or a
/// health check decides when it returns). A reported success resets the count and
/// lifts a cooldown.
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::CooldownPolicy;
///
/// let policy = CooldownPolicy::default()
///     .base(Duration::from_secs(10))
///     .cap(Duration::from_secs(600))
///     .ban_after(Some(5));
/// assert_eq!(policy.delay(1, 0.0), Duration::from_secs(10));
/// assert_eq!(policy.delay(3, 0.0), Duration::from_secs(40));
/// assert_eq!(policy.delay(30, 0.0), Duration::from_secs(600));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CooldownPolicy {
    /// Cooldown after the first failure (default 30 s).
    pub base: Duration,
    /// Longest cooldown (default 15 min).
    pub cap: Duration,
    /// Largest fraction of a cooldown taken off at random, 0 to 1 (default 0.2).
    pub jitter: f64,
    /// Failures in a row that ban the proxy; `None` never bans (default 5).
    pub ban_after: Option<u32>,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(15 * 60),
            jitter: 0.2,
            ban_after: Some(5),
        }
    }
}

impl CooldownPolicy {
    /// Sets the first cooldown.
    #[must_use]
    pub fn base(mut self, d: Duration) -> Self {
        self.base = d;
        self
    }
    /// Sets the longest cooldown.
    #[must_use]
    pub fn cap(mut self, d: Duration) -> Self {
        self.cap = d;
        self
    }
    /// Sets the jitter fraction.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }
    /// Sets the failures in a row that ban a proxy.
    #[must_use]
    pub fn ban_after(mut self, n: Option<u32>) -> Self {
        self.ban_after = n;
        self
    }

    /// The cooldown after the `failures`-th failure in a row, with `random` in
    /// `0..1` choosing how much jitter to take off.
    pub fn delay(&self, failures: u32, random: f64) -> Duration {
        let exp = 2f64.powi(failures.saturating_sub(1).min(62) as i32);
        let full = (self.base.as_secs_f64() * exp).min(self.cap.as_secs_f64());
        let cut = full * self.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0);
        Duration::try_from_secs_f64((full - cut).max(0.001)).unwrap_or(self.cap)
    }

    /// Checks the settings: base at least 1 ms, cap at least base and at most 7
    /// days, jitter in 0..=1, ban_after at least 1.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("cooldown policy: {m}")));
        if self.base < Duration::from_millis(1) {
            return bad("base must be at least 1 ms");
        }
        if self.cap < self.base || self.cap > crate::storage::MAX_LEASE_DURATION {
            return bad("cap must be between base and 7 days");
        }
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            return bad("jitter must be in 0..=1");
        }
        if self.ban_after == Some(0) {
            return bad("ban_after must be at least 1 (None never bans)");
        }
        Ok(())
    }
}
