#![cfg(feature = "redis")]
//! RenewingLease on both storages, in real time with short leases: it outlives
//! its duration, signals a loss, and releases on drop. Then on tokio's paused
//! clock, with an in-memory storage whose time follows that clock (set far ahead
//! of this host's wall clock) and whose renewals fail or hang on demand: when it
//! signals lost, and what its policy accepts.

#[path = "support/delegate.rs"]
#[macro_use]
mod delegate;
mod support;
use support::pn;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lighthouse_lease::{
    AcquireOptions, AcquireRequest, BackendErrorKind, CooldownPolicy, Error, HealthCheckResult,
    InMemoryStorage, Lease, LeaseStatus, LeaseStorage, PoolName, PoolStats, Proxy, ProxyManager,
    ReleaseOutcome, RenewPolicy, Result, Storage,
};
use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

const POOL: &str = "latam-residential";

async fn manager<S: Storage>(storage: S) -> ProxyManager<S> {
    support::one_proxy_manager(storage, 1).await
}

/// Long enough that a renewal (every third of it) delayed by a loaded machine
/// does not miss the renew deadline (two thirds of it): 667 ms of slack.
fn short() -> AcquireOptions {
    AcquireOptions::new().duration(Duration::from_secs(2))
}

async fn outlives_its_duration<S: Storage>(m: ProxyManager<S>) {
    let held = m.acquire_renewing(POOL, short()).await.unwrap().unwrap();
    let first_expiry = held.lease().expires_at;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        m.cleanup_expired_leases().await.unwrap(),
        0,
        "renewed, not expired"
    );
    assert_eq!(
        m.acquire_proxy(POOL, AcquireOptions::new()).await.unwrap(),
        None,
        "still held"
    );
    assert!(!held.is_lost());
    assert!(held.lease().expires_at > first_expiry);
    assert_eq!(held.release().await.unwrap(), ReleaseOutcome::Released);
    assert!(m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .is_some());
}

async fn signals_a_loss<S: Storage>(m: ProxyManager<S>) {
    let held = m.acquire_renewing(POOL, short()).await.unwrap().unwrap();
    // Someone else releases it (an operator with the CLI, say).
    m.release_proxy(&held.lease()).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), held.lost())
        .await
        .expect("lost at the first renewal, due after 667 ms");
    assert!(reason.contains("was released"), "{reason}");
    assert!(held.is_lost());
}

async fn releases_on_drop<S: Storage>(m: ProxyManager<S>) {
    let held = m
        .acquire_renewing(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    drop(held);
    for _ in 0..100 {
        if m.storage()
            .pool_stats(&pn(POOL))
            .await
            .unwrap()
            .total_leases
            == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("dropping the guard did not release the lease");
}

#[tokio::test]
async fn in_memory_renewing_lease_outlives_its_duration() {
    outlives_its_duration(manager(InMemoryStorage::new()).await).await;
}

#[tokio::test]
async fn in_memory_renewing_lease_signals_a_loss() {
    signals_a_loss(manager(InMemoryStorage::new()).await).await;
}

#[tokio::test]
async fn in_memory_renewing_lease_releases_on_drop() {
    releases_on_drop(manager(InMemoryStorage::new()).await).await;
}

#[tokio::test]
async fn redis_renewing_lease_outlives_its_duration() {
    outlives_its_duration(manager(support::storage()).await).await;
}

#[tokio::test]
async fn redis_renewing_lease_signals_a_loss() {
    signals_a_loss(manager(support::storage()).await).await;
}

#[tokio::test]
async fn redis_renewing_lease_releases_on_drop() {
    releases_on_drop(manager(support::storage()).await).await;
}

/// Storage time on tokio's clock, starting at a chosen wall-clock time: with
/// `tokio::time::pause()` the storage's time and the renewer's move together.
#[derive(Debug)]
struct TokioClock {
    base: chrono::DateTime<chrono::Utc>,
    start: tokio::time::Instant,
}

impl lighthouse_lease::Clock for TokioClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap()
    }
}

/// What [`Flaky::extend`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extend {
    Works,
    /// Fails as a broken connection does.
    Fails,
    /// Never answers (a partition without a response timeout).
    Hangs,
}

/// An in-memory storage whose `extend` fails or hangs on demand, and counts its
/// calls; everything else is passed through.
#[derive(Debug, Clone)]
struct Flaky {
    inner: Arc<InMemoryStorage>,
    mode: Arc<Mutex<Extend>>,
    extends: Arc<AtomicU32>,
}

impl Flaky {
    fn set(&self, mode: Extend) {
        *self.mode.lock().unwrap() = mode;
    }
    fn extends(&self) -> u32 {
        self.extends.load(Ordering::SeqCst)
    }
}

delegate_admin_storage!(Flaky);

impl LeaseStorage for Flaky {
    async fn acquire(&self, request: &AcquireRequest) -> Result<Option<Lease>> {
        self.inner.acquire(request).await
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.inner.release(lease).await
    }
    async fn extend(&self, lease: &Lease, duration: Duration) -> Result<Lease> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        let mode = *self.mode.lock().unwrap();
        match mode {
            Extend::Works => self.inner.extend(lease, duration).await,
            Extend::Fails => Err(Error::backend_of(
                BackendErrorKind::Connection,
                "broken pipe (injected)",
                None,
            )),
            Extend::Hangs => std::future::pending().await,
        }
    }
    async fn get_lease(&self, pool_name: &PoolName, lease_id: Uuid) -> Result<Option<Lease>> {
        self.inner.get_lease(pool_name, lease_id).await
    }
    async fn list_leases(&self, pool_name: &PoolName) -> Result<Vec<Lease>> {
        self.inner.list_leases(pool_name).await
    }
    async fn cleanup_expired_leases(&self) -> Result<u64> {
        self.inner.cleanup_expired_leases().await
    }
    async fn pool_stats(&self, pool_name: &PoolName) -> Result<PoolStats> {
        self.inner.pool_stats(pool_name).await
    }
    async fn report_success(&self, proxy_id: Uuid) -> Result<Proxy> {
        self.inner.report_success(proxy_id).await
    }
    async fn report_failure(
        &self,
        proxy_id: Uuid,
        reason: &str,
        policy: &CooldownPolicy,
    ) -> Result<Proxy> {
        self.inner.report_failure(proxy_id, reason, policy).await
    }
    async fn subscribe_freed(&self, pool_name: &PoolName) -> Result<broadcast::Receiver<()>> {
        self.inner.subscribe_freed(pool_name).await
    }
    async fn next_expiry(&self, pool_name: &PoolName) -> Result<Option<Duration>> {
        self.inner.next_expiry(pool_name).await
    }
    async fn apply_health_check(&self, result: &HealthCheckResult) -> Result<Proxy> {
        self.inner.apply_health_check(result).await
    }
}

/// How far ahead of this host's wall clock the storage's clock runs in the
/// paused-clock tests: a client that judged loss by comparing its wall clock
/// with `expires_at` would think the lease good for another hour.
const STORAGE_AHEAD: chrono::Duration = chrono::Duration::hours(1);

/// A manager over a [`Flaky`] storage (one proxy, one slot) whose time follows
/// tokio's clock, an hour ahead of the wall clock. Call on a paused runtime.
async fn flaky_manager() -> (ProxyManager<Flaky>, Flaky, Arc<TokioClock>) {
    let clock = Arc::new(TokioClock {
        base: chrono::Utc::now() + STORAGE_AHEAD,
        start: Instant::now(),
    });
    let inner = InMemoryStorage::with_clock(ClockRef(clock.clone()));
    let flaky = Flaky {
        inner: Arc::new(inner),
        mode: Arc::new(Mutex::new(Extend::Works)),
        extends: Arc::default(),
    };
    (manager(flaky.clone()).await, flaky, clock)
}

/// Shares one [`TokioClock`] between the storage and the test.
#[derive(Debug)]
struct ClockRef(Arc<TokioClock>);

impl lighthouse_lease::Clock for ClockRef {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.now()
    }
}

const D: Duration = Duration::from_secs(30);

fn thirty_seconds() -> AcquireOptions {
    AcquireOptions::new().duration(D)
}

/// Timers on tokio's paused clock fire at their instant rounded up to the
/// millisecond: `at` is `want` within that.
fn assert_at(at: Duration, want: Duration, what: &str) {
    assert!(
        at >= want && at <= want + Duration::from_millis(5),
        "{what}: at {at:?}, want {want:?}"
    );
}

/// The storage still holds the lease (its one slot is taken, the record is
/// active and its expiry, on the storage's clock, is at least `left` away).
async fn storage_still_holds(
    m: &ProxyManager<Flaky>,
    clock: &TokioClock,
    lease: &Lease,
    left: Duration,
) {
    use lighthouse_lease::Clock;
    let rec = m
        .storage()
        .get_lease(&pn(POOL), lease.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, LeaseStatus::Active);
    assert!(
        rec.expires_at - clock.now() >= chrono::Duration::from_std(left).unwrap(),
        "expires at {}, now {}",
        rec.expires_at,
        clock.now()
    );
    assert_eq!(
        m.acquire_proxy(POOL, AcquireOptions::new()).await.unwrap(),
        None,
        "the slot is still taken"
    );
}

/// Renewals that keep failing: lost at the renew deadline (2/3 of 30 s after
/// the acquire was sent), 10 s before the storage's expiry, although the
/// storage's `expires_at` is an hour ahead of this host's wall clock (judging by
/// `Utc::now() >= expires_at` would wait an hour). Failed renewals are retried
/// every 2.5 s, not every 10 s.
#[tokio::test(start_paused = true)]
async fn failing_renewals_signal_lost_at_the_renew_deadline_before_the_storage_expiry() {
    let (m, flaky, clock) = flaky_manager().await;
    let start = Instant::now();
    let held = m
        .acquire_renewing(POOL, thirty_seconds())
        .await
        .unwrap()
        .unwrap();
    assert!(held.lease().expires_at > chrono::Utc::now() + STORAGE_AHEAD);
    flaky.set(Extend::Fails);
    let reason = tokio::time::timeout(D, held.lost())
        .await
        .expect("lost before the lease's duration has passed");
    assert_at(start.elapsed(), Duration::from_secs(20), "lost");
    assert!(held.is_lost());
    assert!(reason.contains("renew deadline"), "{reason}");
    assert!(reason.contains("broken pipe (injected)"), "{reason}");
    assert_eq!(
        flaky.extends(),
        4,
        "attempts at 10 s, then retries at 12.5, 15 and 17.5 s"
    );
    assert_eq!(held.valid_until(), start + Duration::from_secs(20));
    storage_still_holds(&m, &clock, &held.lease(), Duration::from_secs(10)).await;
    // It stopped renewing (at 25 s, before the storage's expiry at 30 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(flaky.extends(), 4);
    // Released, the slot comes back at once, not at the expiry.
    assert_eq!(held.release().await.unwrap(), ReleaseOutcome::Released);
    assert!(m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .is_some());
}

/// A renewal that never answers does not hold the signal back: lost at the
/// deadline, with no second call sent meanwhile.
#[tokio::test(start_paused = true)]
async fn a_hanging_renewal_still_signals_lost_at_the_renew_deadline() {
    let (m, flaky, clock) = flaky_manager().await;
    let start = Instant::now();
    let held = m
        .acquire_renewing(POOL, thirty_seconds())
        .await
        .unwrap()
        .unwrap();
    flaky.set(Extend::Hangs);
    let reason = tokio::time::timeout(D, held.lost())
        .await
        .expect("lost before the lease's duration has passed");
    assert_at(start.elapsed(), Duration::from_secs(20), "lost");
    assert!(reason.contains("had no reply"), "{reason}");
    assert_eq!(flaky.extends(), 1, "one call at a time");
    storage_still_holds(&m, &clock, &held.lease(), Duration::from_secs(10)).await;
}

/// A renewal that finds the lease gone signals at once, not at the deadline:
/// here the first renewal (10 s) fails, the lease is released elsewhere, and
/// the retry at 12.5 s reports it.
#[tokio::test(start_paused = true)]
async fn a_renewal_that_finds_the_lease_gone_signals_lost_at_once() {
    let (m, flaky, _) = flaky_manager().await;
    let start = Instant::now();
    let held = m
        .acquire_renewing(POOL, thirty_seconds())
        .await
        .unwrap()
        .unwrap();
    flaky.set(Extend::Fails);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(flaky.extends(), 1);
    assert!(!held.is_lost(), "one failure is not a loss");
    // An operator releases it with the CLI, say; the storage answers again.
    assert_eq!(
        m.release_proxy(&held.lease()).await.unwrap(),
        ReleaseOutcome::Released
    );
    flaky.set(Extend::Works);
    let reason = tokio::time::timeout(D, held.lost()).await.unwrap();
    assert_at(start.elapsed(), Duration::from_millis(12_500), "lost");
    assert!(reason.contains("was released"), "{reason}");
    assert!(held.is_lost());
    assert!(held.valid_until() <= Instant::now());
    assert_eq!(flaky.extends(), 2);
}

/// Renewals that fail for a while and then succeed before the deadline keep the
/// lease: the deadline moves to 20 s after the send of the success, and regular
/// renewals go on every 10 s from there.
#[tokio::test(start_paused = true)]
async fn a_renewal_after_transient_failures_keeps_the_lease() {
    let (m, flaky, clock) = flaky_manager().await;
    let start = Instant::now();
    let held = m
        .acquire_renewing(POOL, thirty_seconds())
        .await
        .unwrap()
        .unwrap();
    let first = held.lease();
    flaky.set(Extend::Fails);
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(flaky.extends(), 3, "10, 12.5 and 15 s failed");
    assert!(!held.is_lost());
    assert_eq!(held.valid_until(), start + Duration::from_secs(20));
    flaky.set(Extend::Works);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(flaky.extends(), 4, "17.5 s succeeded");
    assert_at(
        held.valid_until() - start,
        Duration::from_millis(37_500),
        "valid until",
    );
    assert!(held.lease().expires_at > first.expires_at);
    // Well past the first deadline and the first expiry: still held, renewed at
    // 27.5, 37.5, 47.5 and 57.5 s.
    tokio::time::sleep(Duration::from_secs(42)).await;
    assert!(!held.is_lost());
    assert_eq!(flaky.extends(), 8);
    storage_still_holds(&m, &clock, &held.lease(), Duration::from_secs(20)).await;
    assert_eq!(held.release().await.unwrap(), ReleaseOutcome::Released);
}

/// A policy of one's own: a 5 s deadline with retries every 500 ms.
#[tokio::test(start_paused = true)]
async fn a_custom_policy_sets_the_deadline_and_the_retries() {
    let (m, flaky, _) = flaky_manager().await;
    let policy = RenewPolicy::new()
        .interval(Duration::from_secs(2))
        .retry_period(Duration::from_millis(500))
        .renew_deadline(Duration::from_secs(5));
    let start = Instant::now();
    let held = m
        .acquire_renewing_with(POOL, thirty_seconds(), policy)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.timings().renew_deadline, Duration::from_secs(5));
    flaky.set(Extend::Fails);
    tokio::time::timeout(D, held.lost()).await.unwrap();
    assert_at(start.elapsed(), Duration::from_secs(5), "lost");
    assert_eq!(flaky.extends(), 6, "2 s, then every 500 ms until 4.5 s");
}

/// Policies are checked against the lease duration, with errors that name the
/// rule, before anything is acquired; the defaults fit every valid duration.
#[tokio::test]
async fn renew_policy_is_checked_before_acquiring() {
    let t = RenewPolicy::new().timings(D).unwrap();
    assert_eq!(
        (
            t.interval,
            t.retry_period,
            t.renew_deadline,
            t.safety_margin
        ),
        (
            Duration::from_secs(10),
            Duration::from_millis(2500),
            Duration::from_secs(20),
            Duration::from_secs(3)
        )
    );
    assert_eq!(t.usable_for(), Duration::from_secs(20));
    let t = RenewPolicy::new()
        .timings(Duration::from_millis(300))
        .unwrap();
    assert_eq!(
        t.safety_margin,
        Duration::from_millis(50),
        "the margin's floor"
    );
    for ms in [1, 2, 3, 7, 100, 249, 250, 499, 500, 1000, 60_000] {
        let d = Duration::from_millis(ms);
        let t = RenewPolicy::new().timings(d).unwrap();
        assert!(t.renew_deadline + t.safety_margin < d, "{d:?}: {t:?}");
    }
    RenewPolicy::new()
        .timings(lighthouse_lease::storage::MAX_LEASE_DURATION)
        .unwrap();
    let s = Duration::from_secs;
    for (policy, rule) in [
        (
            RenewPolicy::new().renew_deadline(s(27)),
            "renew_deadline 27s must be shorter than the lease duration 30s minus the safety_margin 3s",
        ),
        (
            RenewPolicy::new()
                .safety_margin(s(11))
                .renew_deadline(s(19)),
            "renew_deadline 19s must be shorter",
        ),
        (
            RenewPolicy::new().safety_margin(s(30)),
            "safety_margin 30s must be shorter than the lease duration 30s",
        ),
        (
            RenewPolicy::new().interval(s(20)),
            "interval 20s must be shorter than the renew_deadline 20s",
        ),
        (
            RenewPolicy::new().retry_period(s(11)),
            "retry_period 11s must not be longer than the interval 10s",
        ),
        (
            RenewPolicy::new().interval(Duration::ZERO),
            "interval must be positive",
        ),
        (
            RenewPolicy::new().retry_period(Duration::ZERO),
            "retry_period must be positive",
        ),
        (
            RenewPolicy::new().renew_deadline(Duration::ZERO),
            "renew_deadline must be positive",
        ),
    ] {
        match policy.timings(D) {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains(rule), "{msg}"),
            other => panic!("{policy:?}: {other:?}"),
        }
    }
    assert!(matches!(
        RenewPolicy::new().timings(Duration::ZERO),
        Err(Error::InvalidDuration { .. })
    ));
    let m = manager(InMemoryStorage::new()).await;
    let err = m
        .acquire_renewing_with(
            POOL,
            thirty_seconds(),
            RenewPolicy::new().renew_deadline(s(29)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(
        m.storage()
            .pool_stats(&pn(POOL))
            .await
            .unwrap()
            .total_leases,
        0,
        "nothing acquired"
    );
}
