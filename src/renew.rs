//! [`RenewingLease`]: a lease kept alive in the background for jobs of unknown
//! length, with a signal when it is lost, judged on the storage's time; and
//! [`RenewPolicy`], when it renews and when it gives up.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::error::{Error, Result};
use crate::lease::{Lease, ReleaseOutcome};
use crate::manager::{AcquireOptions, ProxyManager};
use crate::storage::{validate_lease_duration, Storage};

/// The floor of the default safety margin (see [`RenewPolicy::safety_margin`]).
pub const DEFAULT_SAFETY_MARGIN_FLOOR: Duration = Duration::from_millis(50);

/// When a [`RenewingLease`] renews, how soon it retries a failed renewal, and when
/// it gives up. Each field left `None` takes a default computed from the lease
/// duration `d`:
///
/// | field | default | for `d` = 30 s |
/// |---|---|---|
/// | [`interval`](RenewPolicy::interval) | `d / 3` | 10 s |
/// | [`retry_period`](RenewPolicy::retry_period) | `interval / 4` | 2.5 s |
/// | [`renew_deadline`](RenewPolicy::renew_deadline) | `2 d / 3` | 20 s |
/// | [`safety_margin`](RenewPolicy::safety_margin) | `d / 10`, at least 50 ms, at most `d / 5` | 3 s |
///
/// [`RenewPolicy::timings`] checks a policy against a duration:
/// every period is positive, `safety_margin < d`,
/// `renew_deadline < d - safety_margin` (the holder stops before the storage can
/// expire the lease), `interval < renew_deadline` (a renewal is sent before the
/// deadline) and `retry_period <= interval`. A policy that breaks one of them is
/// an [`Error::InvalidArgument`] naming it, raised by
/// [`ProxyManager::acquire_renewing_with`] before anything is acquired.
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::RenewPolicy;
///
/// let t = RenewPolicy::new().timings(Duration::from_secs(30))?;
/// assert_eq!(
///     (t.interval, t.retry_period, t.renew_deadline, t.safety_margin),
///     (Duration::from_secs(10), Duration::from_millis(2500), Duration::from_secs(20), Duration::from_secs(3)),
/// );
/// // A deadline that would let the holder use the lease into the margin is refused.
/// let late = RenewPolicy::new().renew_deadline(Duration::from_secs(28));
/// assert!(late.timings(Duration::from_secs(30)).is_err());
/// # Ok::<(), lighthouse_lease::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use]
pub struct RenewPolicy {
    /// Time between regular renewals, from the send of the last successful one.
    pub interval: Option<Duration>,
    /// Time between a failed renewal's reply and the next attempt.
    pub retry_period: Option<Duration>,
    /// How long after the send of the last successful renewal (or of the
    /// acquire) the holder may go on using the lease without a new success.
    pub renew_deadline: Option<Duration>,
    /// How much earlier than the storage's expiry (measured locally, see
    /// [`RenewingLease`]) the holder must have stopped: an upper bound on the
    /// renew deadline, `renew_deadline < d - safety_margin`.
    pub safety_margin: Option<Duration>,
}

/// A [`RenewPolicy`] resolved for one lease duration and checked; see
/// [`RenewPolicy::timings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenewTimings {
    /// The lease duration each renewal asks for.
    pub duration: Duration,
    /// Time between regular renewals.
    pub interval: Duration,
    /// Time between a failed renewal and the next attempt.
    pub retry_period: Duration,
    /// How long after the last successful send the lease may be used.
    pub renew_deadline: Duration,
    /// How much of the duration the holder never uses.
    pub safety_margin: Duration,
}

impl RenewTimings {
    /// How long after the send of the last successful renewal the lease may be
    /// used: `min(renew_deadline, duration - safety_margin)` (which is the renew
    /// deadline, since [`RenewPolicy::timings`] checks it is the smaller).
    pub fn usable_for(&self) -> Duration {
        self.renew_deadline
            .min(self.duration.saturating_sub(self.safety_margin))
    }
}

impl RenewPolicy {
    /// Every field at its default.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the time between regular renewals.
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = Some(d);
        self
    }
    /// Sets the time between a failed renewal and the next attempt.
    pub fn retry_period(mut self, d: Duration) -> Self {
        self.retry_period = Some(d);
        self
    }
    /// Sets the renew deadline.
    pub fn renew_deadline(mut self, d: Duration) -> Self {
        self.renew_deadline = Some(d);
        self
    }
    /// Sets the safety margin.
    pub fn safety_margin(mut self, d: Duration) -> Self {
        self.safety_margin = Some(d);
        self
    }

    /// The timings for a lease of `duration`: the defaults filled in (see
    /// [`RenewPolicy`]), then checked.
    pub fn timings(&self, duration: Duration) -> Result<RenewTimings> {
        validate_lease_duration(duration)?;
        let interval = self.interval.unwrap_or(duration / 3);
        let t = RenewTimings {
            duration,
            interval,
            retry_period: self.retry_period.unwrap_or(interval / 4),
            renew_deadline: self.renew_deadline.unwrap_or(duration * 2 / 3),
            safety_margin: self.safety_margin.unwrap_or_else(|| {
                (duration / 10)
                    .max(DEFAULT_SAFETY_MARGIN_FLOOR)
                    .min(duration / 5)
            }),
        };
        let bad = |rule: String| Err(Error::InvalidArgument(format!("RenewPolicy: {rule}")));
        for (name, value) in [
            ("interval", t.interval),
            ("retry_period", t.retry_period),
            ("renew_deadline", t.renew_deadline),
        ] {
            if value.is_zero() {
                return bad(format!("{name} must be positive"));
            }
        }
        if t.safety_margin >= duration {
            return bad(format!(
                "safety_margin {:?} must be shorter than the lease duration {duration:?}",
                t.safety_margin
            ));
        }
        if t.renew_deadline >= duration - t.safety_margin {
            return bad(format!(
                "renew_deadline {:?} must be shorter than the lease duration {duration:?} minus \
                 the safety_margin {:?}, or the holder could use the lease after the storage \
                 expired it",
                t.renew_deadline, t.safety_margin
            ));
        }
        if t.interval >= t.renew_deadline {
            return bad(format!(
                "interval {:?} must be shorter than the renew_deadline {:?}, or no renewal \
                 is sent before the deadline",
                t.interval, t.renew_deadline
            ));
        }
        if t.retry_period > t.interval {
            return bad(format!(
                "retry_period {:?} must not be longer than the interval {:?}",
                t.retry_period, t.interval
            ));
        }
        Ok(t)
    }
}

/// A lease that renews itself in the background until it is released or
/// dropped, and says when it must no longer be used.
///
/// **When it counts as lost.** The guard never reads a wall clock: it measures
/// on this host's monotonic clock (tokio's) from the instant it *sent* each
/// call. A renewal for duration `d` sent at instant `s` that succeeds made the
/// storage set the expiry to `T + d`, where `T`, the storage's time when it ran
/// the call, is after `s`; so the storage holds the lease at least until `s + d`
/// on the local clock (up to the rate difference of the two clocks, parts per
/// million for clocks kept by NTP). The acquire counts as the first renewal, sent
/// when [`ProxyManager::acquire_renewing`] was called. With `s` the send of the
/// last successful call, `D` the renew deadline and `m` the safety margin
/// ([`RenewPolicy`]; `D < d - m` is checked), the lease may be used until
/// [`valid_until`](RenewingLease::valid_until) `= s + min(D, d - m) = s + D`: at
/// least `m` before the storage can expire it, however far the client's wall
/// clock is from the storage's. Renewals go out `interval` after `s`; a failed
/// one is retried `retry_period` after its reply (one call at a time). If none
/// succeeds by `s + D`, [`lost`](RenewingLease::lost) resolves then, even while
/// a call hangs, and the guard stops renewing; a renewal that finds the lease
/// gone ([`Error::LeaseLost`]: released elsewhere, or expired during a pause)
/// signals at once. With the defaults and `d` = 30 s: renewals every 10 s,
/// retries every 2.5 s, lost 20 s after the send of the last success, which is
/// at least 10 s before the storage's expiry. Not covered: a storage whose clock
/// jumps forward, and a pause of the holder between its check and its use of the
/// proxy (fencing tokens, [`crate::FencingGuard`], turn those away).
///
/// - [`RenewingLease::is_lost`] is true from `valid_until` on even if the
///   background task has not run yet (a loaded machine): check it right before
///   each use of the proxy.
/// - Dropping it stops the renewals and releases the lease (spawned on the current
///   tokio runtime); [`RenewingLease::release`] does the same and reports. Once
///   lost by the deadline the lease may still be held by the storage: releasing
///   gives the slot back at once instead of at expiry.
///
/// ```
/// # use std::time::Duration;
/// # use lighthouse_lease::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<()> {
/// # let manager = ProxyManager::new(InMemoryStorage::new());
/// # let pool = manager.storage().create_pool(ProxyPool::new("p")?).await?;
/// # manager.storage().add_proxy(Proxy::builder(pool.id, "1.1.1.1", 80).build()?).await?;
/// let options = AcquireOptions::new().duration(Duration::from_secs(30));
/// let held = manager.acquire_renewing("p", options).await?.expect("a free proxy");
/// tokio::select! {
///     _ = held.lost() => { /* stop: the lease may be someone else's soon */ }
///     _ = async { /* a crawl of unknown length through held.lease().proxy_url() */ } => {}
/// }
/// held.release().await?;
/// # Ok(())
/// # }
/// ```
pub struct RenewingLease<S: Storage> {
    manager: ProxyManager<S>,
    state: Arc<Mutex<Held>>,
    lost: watch::Receiver<Option<String>>,
    timings: RenewTimings,
    task: Option<JoinHandle<()>>,
    released: bool,
}

/// What the renewer shares with the guard.
#[derive(Debug, Clone)]
struct Held {
    lease: Lease,
    valid_until: Instant,
}

/// Renewing leases, from the manager (here rather than in `manager.rs`, so the
/// manager does not depend on this module).
impl<S: Storage> ProxyManager<S> {
    /// Acquires a lease that renews itself every third of its duration until it is
    /// released or dropped, and signals it lost when no renewal succeeded within
    /// two thirds of the duration (the default [`RenewPolicy`]); see
    /// [`RenewingLease`].
    pub async fn acquire_renewing(
        &self,
        pool_name: &str,
        options: AcquireOptions,
    ) -> Result<Option<RenewingLease<S>>> {
        self.acquire_renewing_with(pool_name, options, RenewPolicy::default())
            .await
    }

    /// [`ProxyManager::acquire_renewing`] with its own renewal interval, retry
    /// period, renew deadline and safety margin. A policy that does not fit the
    /// lease duration is an [`crate::Error::InvalidArgument`] before anything is
    /// acquired.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use lighthouse_lease::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<()> {
    /// # let manager = ProxyManager::new(InMemoryStorage::new());
    /// # let pool = manager.storage().create_pool(ProxyPool::new("p")?).await?;
    /// # manager.storage().add_proxy(Proxy::builder(pool.id, "1.1.1.1", 80).build()?).await?;
    /// let options = AcquireOptions::new().duration(Duration::from_secs(60));
    /// let policy = RenewPolicy::new()
    ///     .interval(Duration::from_secs(10))
    ///     .renew_deadline(Duration::from_secs(40));
    /// let held = manager.acquire_renewing_with("p", options, policy).await?.expect("a free proxy");
    /// assert!(held.valid_until() > tokio::time::Instant::now());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire_renewing_with(
        &self,
        pool_name: &str,
        options: AcquireOptions,
        policy: RenewPolicy,
    ) -> Result<Option<RenewingLease<S>>> {
        let duration = options.duration.unwrap_or(self.default_duration());
        let timings = policy.timings(duration)?;
        // Before the call goes out: the storage's expiry is at least this + duration.
        let sent = tokio::time::Instant::now();
        Ok(self
            .acquire_proxy(pool_name, options.duration(duration))
            .await?
            .map(|lease| RenewingLease::start(self.clone(), lease, timings, sent)))
    }
}

impl<S: Storage> std::fmt::Debug for RenewingLease<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewingLease")
            .field("lease", &self.lease())
            .field("valid_until", &self.valid_until())
            .field("lost", &self.is_lost())
            .field("timings", &self.timings)
            .finish()
    }
}

impl<S: Storage> RenewingLease<S> {
    /// Starts renewing `lease`, acquired by a call sent at `sent`.
    pub(crate) fn start(
        manager: ProxyManager<S>,
        lease: Lease,
        timings: RenewTimings,
        sent: Instant,
    ) -> Self {
        let state = Arc::new(Mutex::new(Held {
            lease,
            valid_until: sent + timings.usable_for(),
        }));
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(renew(manager.clone(), state.clone(), tx, timings, sent));
        RenewingLease {
            manager,
            state,
            lost: rx,
            timings,
            task: Some(task),
            released: false,
        }
    }

    fn held(&self) -> Held {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The lease as last renewed (its `expires_at` is the storage's time, for
    /// display; the guard does not compare it with this host's clock).
    pub fn lease(&self) -> Lease {
        self.held().lease
    }

    /// The local monotonic instant until which the lease may be used: the send of
    /// the last successful renewal (or of the acquire) plus the renew deadline.
    /// It moves forward with each successful renewal; once lost, it no longer
    /// does (after a renewal found the lease gone, it is that renewal's send).
    pub fn valid_until(&self) -> Instant {
        self.held().valid_until
    }

    /// The policy's timings for this lease.
    pub fn timings(&self) -> RenewTimings {
        self.timings
    }

    /// Whether the lease must no longer be used: a renewal found it gone, or
    /// [`RenewingLease::valid_until`] has passed. Once true, it stays true.
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some() || Instant::now() >= self.valid_until()
    }

    /// Resolves with the reason once the lease is lost; never resolves while it is
    /// held.
    pub fn lost(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            loop {
                if let Some(reason) = rx.borrow_and_update().clone() {
                    return reason;
                }
                if rx.changed().await.is_err() {
                    // The renewer ended without a verdict (released): wait forever.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// A watch channel that turns `Some(reason)` when the lease is lost.
    pub fn lost_signal(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Stops renewing and releases the lease.
    pub async fn release(mut self) -> Result<ReleaseOutcome> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.released = true;
        let lease = self.lease();
        self.manager.release_proxy(&lease).await
    }
}

/// The renewer: see [`RenewingLease`] for the rules it follows.
async fn renew<S: Storage>(
    manager: ProxyManager<S>,
    state: Arc<Mutex<Held>>,
    lost: watch::Sender<Option<String>>,
    t: RenewTimings,
    acquire_sent: Instant,
) {
    let lock = || state.lock().unwrap_or_else(PoisonError::into_inner);
    let mut next = acquire_sent + t.interval;
    let mut valid_until = acquire_sent + t.usable_for();
    let mut failed = 0u32;
    let mut last_error: Option<Error> = None;
    let mut in_flight: Option<Instant> = None;
    let reason = loop {
        // Wait for the next attempt, unless the deadline comes first.
        tokio::select! {
            biased;
            () = sleep_until(valid_until) => break None,
            () = sleep_until(next) => {}
        }
        let lease = lock().lease.clone();
        let sent = Instant::now();
        let reply = tokio::select! {
            biased;
            () = sleep_until(valid_until) => {
                in_flight = Some(sent);
                break None;
            }
            reply = manager.extend_lease(&lease, t.duration) => reply,
        };
        match reply {
            // A success that arrives after the deadline is too late: lost stays lost.
            Ok(_) if Instant::now() >= valid_until => break None,
            Ok(renewed) => {
                valid_until = sent + t.usable_for();
                next = sent + t.interval;
                failed = 0;
                last_error = None;
                let mut held = lock();
                held.lease = renewed;
                held.valid_until = valid_until;
            }
            Err(e @ Error::LeaseLost { .. }) => {
                let mut held = lock();
                held.valid_until = held.valid_until.min(sent);
                break Some(e.to_string());
            }
            Err(e) => {
                // The storage is unreachable or failing: try again soon, until
                // the deadline.
                failed += 1;
                last_error = Some(e);
                next = Instant::now() + t.retry_period;
            }
        }
    };
    let reason = reason.unwrap_or_else(|| {
        let id = lock().lease.id;
        let mut why = match &last_error {
            Some(e) => format!("{failed} renewal attempts failed, the last with: {e}"),
            None => "no renewal succeeded in time".to_string(),
        };
        if let Some(sent) = in_flight {
            why.push_str(&format!(
                "; a renewal sent {:?} earlier had no reply",
                sent.elapsed()
            ));
        }
        format!(
            "lease {id} was not renewed within its renew deadline of {:?} ({why})",
            t.renew_deadline
        )
    });
    manager.count_renew_lost(&lock().lease.pool_name);
    let _ = lost.send(Some(reason));
}

impl<S: Storage> Drop for RenewingLease<S> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if !self.released {
            let lease = self.lease();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let manager = self.manager.clone();
                handle.spawn(async move {
                    let _ = manager.release_proxy(&lease).await;
                });
            }
        }
    }
}
