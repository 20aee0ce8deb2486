//! Retry with exponential backoff, for [`crate::ProxyManager::acquire_proxy_with_retry`].

use std::time::Duration;

/// How often and how patiently to retry an acquire that found no free proxy or hit a
/// storage failure. Bad input is never retried.
///
/// The wait before attempt `n + 1` is `initial_backoff * multiplier^(n-1)`, capped
/// at `max_backoff`; with `jitter` each wait is drawn uniformly from half to all of it,
/// so a fleet that was turned away together does not come back together.
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::RetryPolicy;
///
/// let policy = RetryPolicy::new(4).initial_backoff(Duration::from_millis(50));
/// assert_eq!(policy.max_attempts, 4);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt.
    pub initial_backoff: Duration,
    /// Longest wait.
    pub max_backoff: Duration,
    /// Growth factor of the wait (at least 1).
    pub multiplier: f64,
    /// Randomize waits between 50 % and 100 %.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The default policy with this many attempts.
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..Self::default()
        }
    }
    /// Sets the first wait.
    #[must_use]
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }
    /// Sets the longest wait.
    #[must_use]
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }
    /// Sets the growth factor.
    #[must_use]
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = m;
        self
    }
    /// Turns jitter on or off.
    #[must_use]
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// The wait after failed attempt number `attempt` (1-based), before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let secs = self.initial_backoff.as_secs_f64() * exp;
        let capped = secs.min(self.max_backoff.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_backoff)
    }

    pub(crate) fn wait(&self, attempt: u32) -> Duration {
        let base = self.backoff(attempt);
        if self.jitter {
            base.mul_f64(0.5 + fastrand::f64() * 0.5)
        } else {
            base
        }
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        if self.max_attempts == 0 {
            return Err(crate::Error::InvalidArgument(
                "RetryPolicy::max_attempts must be at least 1".into(),
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(crate::Error::InvalidArgument(format!(
                "RetryPolicy::multiplier must be a finite number >= 1, got {}",
                self.multiplier
            )));
        }
        Ok(())
    }
}
