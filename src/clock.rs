//! Injectable time for [`crate::InMemoryStorage`], so expiry is tested without sleeping.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// Now, in nanoseconds since the Unix epoch (saturating outside the years
    /// 1677 to 2262). The in-memory storage keeps its times this way, so its
    /// hot path does no calendar arithmetic. The default reads [`Clock::now`];
    /// a clock that can tell the time more cheaply as a number overrides it.
    fn now_nanos(&self) -> i64 {
        let now = self.now();
        now.timestamp_nanos_opt().unwrap_or(if now.timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        })
    }
}

/// The system's wall clock (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn now_nanos(&self) -> i64 {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => nanos(since),
            Err(before) => -nanos(before.duration()),
        }
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(301));
/// assert_eq!((clock.now() - t0).num_seconds(), 301);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// Starts at the current wall-clock time.
    pub fn new() -> Self {
        Self::starting_at(Utc::now())
    }

    /// Starts at the given time.
    pub fn starting_at(at: DateTime<Utc>) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(at)),
        }
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = now.checked_add_signed(by).unwrap_or(*now);
    }

    /// The current time of this clock (same as [`Clock::now`], without importing the trait).
    pub fn now_utc(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the time.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}
