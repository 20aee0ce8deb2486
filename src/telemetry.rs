//! Library metrics, through the [`metrics`] facade: the crate records, the
//! application chooses the exporter (`metrics-exporter-prometheus`, say). With
//! no recorder installed every handle is a no-op.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `lighthouse_acquire_total` | counter | `pool`, `outcome`: `leased`, `none`, `error` |
//! | `lighthouse_acquire_duration_seconds` | histogram | `pool`: one storage acquire call |
//! | `lighthouse_release_total` | counter | `pool`, `outcome`: `released`, `already_released`, `expired`, `not_found`, `error` |
//! | `lighthouse_release_duration_seconds` | histogram | `pool` |
//! | `lighthouse_rotate_total` | counter | `pool` (its release and acquire are counted above too) |
//! | `lighthouse_wait_duration_seconds` | histogram | `pool`, `outcome`: `leased`, `none` (timed out), `error`: a whole `acquire_proxy_wait` |
//! | `lighthouse_extend_total` | counter | `pool`, `outcome`: `extended`, `lost`, `error` (renewals included) |
//! | `lighthouse_renew_lost_total` | counter | `pool`: a `RenewingLease` signalled lost |
//! | `lighthouse_reports_total` | counter | `kind`: `success`, `failure` |
//! | `lighthouse_redis_batch_size` | histogram | `op`: `acquire`, `release`, `cycle` (releases and acquires in one call), `rotate`: requests per script call of a `RedisStorage` (registered when the storage is made) |
//!
//! Each of the manager's storage calls also runs in a `tracing` span at DEBUG,
//! `lighthouse.acquire`, `lighthouse.release`, `lighthouse.rotate`,
//! `lighthouse.extend`, `lighthouse.wait`, with fields `pool` and `outcome`
//! (the same words as the metrics').
//!
//! Labels are low-cardinality: pool names and fixed words, never lease or proxy
//! ids. A manager registers a pool's handles on its first call for that pool
//! (so install the recorder before calls start) and reuses them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::error::Error;
use crate::lease::{Lease, ReleaseOutcome};
use crate::names::PoolName;

/// Times the manager's storage calls (for the duration histograms and the
/// hooks' `elapsed`) on the CPU's time-stamp counter ([`crate::clock`]'s,
/// through `quanta`, or the monotonic clock where the counter is not steady).
/// Start and read cost a third of `std::time::Instant`'s here (27 vs 76 ns),
/// which was a tenth of an in-memory acquire→release.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallTimer(u64);

impl CallTimer {
    /// Starts timing.
    #[inline]
    pub(crate) fn start() -> Self {
        CallTimer(crate::clock::tsc().raw())
    }

    /// The time since [`Self::start`].
    #[inline]
    pub(crate) fn elapsed(self) -> Duration {
        let clock = crate::clock::tsc();
        clock.delta(self.0, clock.raw())
    }
}

/// Times a manager's call of a storage. A storage that reads the system
/// clock as it starts (the in-memory storage) is timed from that read, so
/// the call reads the counter once, at its end; another is timed from a read
/// of the counter before the call. Which one a storage is shows after its
/// first call, and `reads_clock` (kept by the caller) remembers it.
pub(crate) struct StorageTimer {
    start: Option<u64>,
}

impl StorageTimer {
    /// Before calling the storage at address `storage`.
    #[inline]
    pub(crate) fn start(storage: usize, reads_clock: &AtomicBool) -> Self {
        crate::clock::watch_clock(storage);
        let start = if reads_clock.load(Ordering::Relaxed) {
            None
        } else {
            Some(crate::clock::tsc().raw())
        };
        StorageTimer { start }
    }

    /// After the call: how long it took (from the storage's first clock read
    /// when it did not read the counter before; zero when neither).
    #[inline]
    pub(crate) fn stop(self, reads_clock: &AtomicBool) -> Duration {
        let read = crate::clock::unwatch_clock();
        if read.is_some() != reads_clock.load(Ordering::Relaxed) {
            reads_clock.store(read.is_some(), Ordering::Relaxed);
        }
        match self.start.or(read) {
            Some(start) => CallTimer(start).elapsed(),
            None => Duration::ZERO,
        }
    }
}

/// Handles of one pool's metrics.
#[derive(Debug)]
pub(crate) struct PoolMetrics {
    acquired: [Counter; 3],
    acquire_seconds: Histogram,
    released: [Counter; 5],
    release_seconds: Histogram,
    rotated: Counter,
    waited: [Histogram; 3],
    extended: [Counter; 3],
    renew_lost: Counter,
}

impl PoolMetrics {
    fn new(pool: &PoolName) -> Self {
        let pool = pool.to_string();
        let counter = |name: &'static str, outcome: &'static str| metrics::counter!(name, "pool" => pool.clone(), "outcome" => outcome);
        PoolMetrics {
            acquired: ACQUIRE_OUTCOMES.map(|o| counter("lighthouse_acquire_total", o)),
            acquire_seconds: metrics::histogram!("lighthouse_acquire_duration_seconds", "pool" => pool.clone()),
            released: RELEASE_OUTCOMES.map(|o| counter("lighthouse_release_total", o)),
            release_seconds: metrics::histogram!("lighthouse_release_duration_seconds", "pool" => pool.clone()),
            rotated: metrics::counter!("lighthouse_rotate_total", "pool" => pool.clone()),
            waited: ACQUIRE_OUTCOMES.map(|o| {
                metrics::histogram!("lighthouse_wait_duration_seconds", "pool" => pool.clone(), "outcome" => o)
            }),
            extended: EXTEND_OUTCOMES.map(|o| counter("lighthouse_extend_total", o)),
            renew_lost: metrics::counter!("lighthouse_renew_lost_total", "pool" => pool.clone()),
        }
    }

    /// An acquire call's outcome ([`leased`]) and storage time.
    #[inline]
    pub(crate) fn acquire(&self, leased: Option<bool>, took: Duration) {
        let i = acquire_index(leased);
        self.acquired[i].increment(1);
        self.acquire_seconds.record(took.as_secs_f64());
    }

    /// A release's outcome, and its storage time when it was a call of its own.
    /// (`outcome` is `None` for a failed call.)
    #[inline]
    pub(crate) fn release(&self, outcome: Option<ReleaseOutcome>, took: Option<Duration>) {
        let i = release_index(outcome);
        self.released[i].increment(1);
        if let Some(took) = took {
            self.release_seconds.record(took.as_secs_f64());
        }
    }

    /// A rotate call (its parts are counted by [`Self::acquire`] and [`Self::release`]).
    pub(crate) fn rotate(&self) {
        self.rotated.increment(1);
    }

    /// A whole waiting acquire.
    pub(crate) fn wait(&self, leased: Option<bool>, took: Duration) {
        let i = acquire_index(leased);
        self.waited[i].record(took.as_secs_f64());
    }

    /// An extend (by hand or by a renewing lease).
    pub(crate) fn extend(&self, result: &Result<Lease, Error>) {
        let i = extend_index(result);
        self.extended[i].increment(1);
    }

    /// A renewing lease signalled lost.
    pub(crate) fn renew_lost(&self) {
        self.renew_lost.increment(1);
    }
}

const ACQUIRE_OUTCOMES: [&str; 3] = ["leased", "none", "error"];
const RELEASE_OUTCOMES: [&str; 5] = [
    "released",
    "already_released",
    "expired",
    "not_found",
    "error",
];
const EXTEND_OUTCOMES: [&str; 3] = ["extended", "lost", "error"];

/// An acquire's outcome as the metrics and spans count it: leased
/// (`Some(true)`), none free (`Some(false)`) or failed (`None`).
#[inline]
pub(crate) fn leased(result: &Result<Option<Lease>, Error>) -> Option<bool> {
    result.as_ref().ok().map(Option::is_some)
}

#[inline]
fn acquire_index(leased: Option<bool>) -> usize {
    match leased {
        Some(true) => 0,
        Some(false) => 1,
        None => 2,
    }
}

#[inline]
fn release_index(outcome: Option<ReleaseOutcome>) -> usize {
    match outcome {
        Some(ReleaseOutcome::Released) => 0,
        Some(ReleaseOutcome::AlreadyReleased) => 1,
        Some(ReleaseOutcome::Expired) => 2,
        Some(ReleaseOutcome::NotFound) => 3,
        None => 4,
    }
}

fn extend_index(result: &Result<Lease, Error>) -> usize {
    match result {
        Ok(_) => 0,
        Err(Error::LeaseLost { .. }) => 1,
        Err(_) => 2,
    }
}

/// An acquire's outcome label (metrics and spans).
pub(crate) fn acquire_outcome(leased: Option<bool>) -> &'static str {
    ACQUIRE_OUTCOMES[acquire_index(leased)]
}

/// A release's outcome label.
pub(crate) fn release_outcome(outcome: Option<ReleaseOutcome>) -> &'static str {
    RELEASE_OUTCOMES[release_index(outcome)]
}

/// An extend's outcome label.
pub(crate) fn extend_outcome(result: &Result<Lease, Error>) -> &'static str {
    EXTEND_OUTCOMES[extend_index(result)]
}

/// One manager's metric handles, by pool (shared by its clones).
#[derive(Debug)]
pub(crate) struct Telemetry {
    /// Tells this manager's handles from another's in the thread's cache.
    id: u64,
    /// Each pool's handles, in slots filled once, in order, and kept (at
    /// most [`MAX_POOLS`]): a call finds its pool's handles with plain
    /// loads, no lock and no reference count.
    slots: Box<[OnceLock<Box<PoolSlot>>]>,
    /// Taken to fill a slot.
    registering: Mutex<()>,
    /// Whether the storage reads the system clock as a call starts (see
    /// [`StorageTimer`]).
    pub(crate) storage_reads_clock: AtomicBool,
}

/// A pool's name and its handles.
#[derive(Debug)]
struct PoolSlot {
    pool: PoolName,
    metrics: PoolMetrics,
}

impl Default for Telemetry {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Telemetry {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            slots: (0..MAX_POOLS).map(|_| OnceLock::new()).collect(),
            registering: Mutex::default(),
            storage_reads_clock: AtomicBool::new(false),
        }
    }
}

thread_local! {
    /// The manager (its id) and the slot this thread's last call used: a
    /// call to the same pool finds its handles by comparing the name there.
    /// (The cache this replaces held the name and a shared handle in a
    /// `RefCell`: about 80 instructions a call, with the check that the
    /// thread-local's destructor is registered; this one has no destructor.)
    static LAST: std::cell::Cell<(u64, usize)> = const { std::cell::Cell::new((u64::MAX, 0)) };
}

/// Pools past this many are not given handles of their own (their calls go
/// unrecorded): a bound on label cardinality and on the lookup.
const MAX_POOLS: usize = 256;

impl Telemetry {
    /// The slot of `pool`'s handles (registered on first use), or `None`
    /// past [`MAX_POOLS`] pools.
    fn slot(&self, pool: &PoolName) -> Option<usize> {
        let find = |pool: &PoolName| {
            self.slots
                .iter()
                .map_while(OnceLock::get)
                .position(|s| s.pool == *pool)
        };
        if let Some(at) = find(pool) {
            return Some(at);
        }
        // Slots fill in order, one at a time.
        let _registering = self
            .registering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = find(pool) {
            return Some(at);
        }
        let at = self.slots.iter().position(|s| s.get().is_none())?;
        let slot = Box::new(PoolSlot {
            pool: pool.clone(),
            metrics: PoolMetrics::new(pool),
        });
        self.slots.get(at)?.set(slot).ok()?;
        Some(at)
    }

    /// Runs `f` with the handles of `pool` (none past [`MAX_POOLS`] pools).
    #[inline]
    pub(crate) fn with_pool(&self, pool: &PoolName, f: impl FnOnce(&PoolMetrics)) {
        let (id, at) = LAST.get();
        if id == self.id {
            if let Some(slot) = self.slots.get(at).and_then(OnceLock::get) {
                if slot.pool == *pool {
                    return f(&slot.metrics);
                }
            }
        }
        let Some(at) = self.slot(pool) else { return };
        if let Some(slot) = self.slots.get(at).and_then(OnceLock::get) {
            f(&slot.metrics);
        }
        LAST.set((self.id, at));
    }

    /// A report of success or failure with a proxy.
    pub(crate) fn report(&self, failure: bool) {
        let kind = if failure { "failure" } else { "success" };
        metrics::counter!("lighthouse_reports_total", "kind" => kind).increment(1);
    }
}
