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
///
/// [`Clock::now_nanos`] reads the wall clock at most once a millisecond per
/// thread and counts the time in between on the CPU's time-stamp counter
/// (through `quanta`, which falls back to the monotonic clock where the counter
/// is not steady). The two drift apart by parts per million, so the result is
/// the wall clock to well within a microsecond, and a step of the wall clock
/// (NTP, an operator) shows within a millisecond. Reading the counter costs a
/// third of reading the wall clock here.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// How long [`SystemClock::now_nanos`] counts on the time-stamp counter before
/// it reads the wall clock again.
const REANCHOR_NANOS: u64 = 1_000_000;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn now_nanos(&self) -> i64 {
        system_nanos_at(tsc().raw())
    }
}

thread_local! {
    /// The storage (by address; 0: none) a manager's call on this thread is
    /// timing, and the counter value of its first read of the system clock
    /// (0: none yet): see [`watch_clock`].
    static WATCHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static WATCHED_READ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Starts watching this thread's reads of the system clock by the storage at
/// address `storage` ([`system_nanos_for`]): the first one is kept, for
/// [`unwatch_clock`]. A manager times a call of a storage that reads the
/// clock as it starts (the in-memory storage) from that read, and need not
/// read the counter itself (each read was about 3% of an in-memory
/// acquire→release). Only that storage's reads count, so a call that waits
/// meanwhile (another task, another storage) changes nothing.
#[inline]
pub(crate) fn watch_clock(storage: usize) {
    WATCHED.set(storage);
    WATCHED_READ.set(0);
}

/// Stops watching ([`watch_clock`]): the counter value of the watched
/// storage's first read, if it read the clock.
#[inline]
pub(crate) fn unwatch_clock() -> Option<u64> {
    WATCHED.set(0);
    Some(WATCHED_READ.take()).filter(|&raw| raw != 0)
}

/// [`SystemClock::now_nanos`] for the storage at address `storage` (kept
/// when it is watched; see [`watch_clock`]).
#[inline]
pub(crate) fn system_nanos_for(storage: usize) -> i64 {
    let raw = tsc().raw();
    if WATCHED.get() == storage {
        // Once: the first read.
        WATCHED.set(0);
        WATCHED_READ.set(raw);
    }
    system_nanos_at(raw)
}

/// The wall clock at counter value `raw` (a value just read on this thread).
#[inline]
fn system_nanos_at(raw: u64) -> i64 {
    thread_local! {
        /// The counter and the wall clock (ns since the epoch) read together last.
        static ANCHOR: std::cell::Cell<Option<(u64, i64)>> =
            const { std::cell::Cell::new(None) };
    }
    let counter = tsc();
    ANCHOR.with(|anchor| {
        if let Some((at, wall)) = anchor.get() {
            let since = counter.delta_as_nanos(at, raw);
            if since < REANCHOR_NANOS {
                // Less than a millisecond: fits.
                return wall.saturating_add(i64::try_from(since).unwrap_or(0));
            }
        }
        let wall = wall_clock_nanos();
        anchor.set(Some((raw, wall)));
        wall
    })
}

/// The wall clock, in nanoseconds since the epoch (saturating).
fn wall_clock_nanos() -> i64 {
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => nanos(since),
        Err(before) => -nanos(before.duration()),
    }
}

/// The process's time-stamp counter clock (calibrated once, about a
/// millisecond, on first use).
#[inline]
pub(crate) fn tsc() -> &'static quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_in_nanoseconds_follows_the_wall_clock() {
        let clock = SystemClock;
        for _ in 0..1_000 {
            let before = Utc::now().timestamp_nanos_opt().unwrap_or(0);
            let now = clock.now_nanos();
            let after = Utc::now().timestamp_nanos_opt().unwrap_or(0);
            // Within 50 us of the wall clock read around it.
            assert!(
                now >= before - 50_000 && now <= after + 50_000,
                "{before} {now} {after}"
            );
        }
    }

    #[test]
    fn a_watched_storage_reports_its_first_clock_read_only() {
        // Another storage's reads do not count.
        watch_clock(1);
        let other = system_nanos_for(2);
        assert_eq!(unwatch_clock(), None);
        // The watched one's first read is kept.
        watch_clock(1);
        let first = system_nanos_for(1);
        let second = system_nanos_for(1);
        assert!(
            unwatch_clock().is_some(),
            "the watched storage read the clock"
        );
        assert!(other <= first && first <= second);
        // Not watched any more.
        system_nanos_for(1);
        assert_eq!(unwatch_clock(), None);
    }

    #[test]
    fn a_manual_clock_in_nanoseconds_is_exact() {
        let clock = ManualClock::new();
        assert_eq!(
            clock.now_nanos(),
            clock.now_utc().timestamp_nanos_opt().unwrap_or(0)
        );
        clock.advance(Duration::from_nanos(1));
        assert_eq!(
            clock.now_nanos(),
            clock.now_utc().timestamp_nanos_opt().unwrap_or(0)
        );
    }
}
