//! The storage seam: every state change of the product goes through [`Storage`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::fair::{QueuedTicket, WaitTicket};
use crate::filters::ProxyFilters;
use crate::health::HealthCheckResult;
use crate::lease::{Lease, ReleaseOutcome, Rotation};
use crate::names::{ConsumerName, IntoConsumerName, IntoPoolName, PoolName};
use crate::pool::ProxyPool;
use crate::proxy::{Proxy, ProxyStatus};
use crate::selector::SelectorStrategy;
use crate::session::{SessionBinding, StickySession};
use crate::site::{Site, SiteStanding};
use crate::stats::PoolStats;

pub use crate::limits::{MAX_LEASE_DURATION, MIN_LEASE_DURATION};
/// How long a lease record is kept after the lease finished (when it was released,
/// or when it expired), so that a late or repeated release is told
/// `AlreadyReleased` or `Expired` rather than `NotFound`. Finished records cost
/// memory in proportion to the lease rate times this grace.
pub const DEFAULT_RECORD_GRACE: Duration = Duration::from_secs(60);

/// Checks a lease duration: at least [`MIN_LEASE_DURATION`], at most [`MAX_LEASE_DURATION`].
#[inline]
pub fn validate_lease_duration(duration: Duration) -> Result<()> {
    if duration < MIN_LEASE_DURATION || duration > MAX_LEASE_DURATION {
        return Err(lease_duration_error(duration));
    }
    Ok(())
}

/// Why `duration` is not a lease length (it is out of range).
#[cold]
fn lease_duration_error(duration: Duration) -> Error {
    if duration < MIN_LEASE_DURATION {
        return Error::InvalidDuration {
            duration,
            reason: "a lease must last at least 1 ms".into(),
        };
    }
    Error::InvalidDuration {
        duration,
        reason: format!(
            "longer than the maximum of {} s",
            MAX_LEASE_DURATION.as_secs()
        ),
    }
}

/// One atomic acquire, as the manager hands it to a storage.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AcquireRequest {
    /// Pool to lease from; it must exist.
    pub pool_name: PoolName,
    /// Who holds the lease.
    pub consumer_name: ConsumerName,
    /// Lease length.
    pub duration: Duration,
    /// Which proxies qualify (shared: a request and the options it came from
    /// hold the same filters).
    pub filters: Arc<ProxyFilters>,
    /// How to pick among them.
    pub selector: SelectorStrategy,
    /// Register the consumer if it is unknown, instead of failing with
    /// [`Error::ConsumerNotFound`].
    pub register_consumer: bool,
    /// Caller-chosen id that makes the acquire idempotent: a retry with the same
    /// id (after a timeout whose outcome is unknown, say) returns the lease the
    /// first attempt granted, with its current status, instead of a second one.
    /// Remembered as long as that lease's record (until its expiry plus the record
    /// grace). 1 to [`MAX_REQUEST_ID_LEN`] printable bytes.
    pub request_id: Option<String>,
    /// Sticky session: the proxy this session had last, when it can serve the
    /// request, else another, which the session then keeps (see
    /// [`crate::session`]).
    pub session: Option<StickySession>,
    /// The site this lease is for: proxies resting or banned for it are
    /// skipped (see [`crate::site`]).
    pub site: Option<Site>,
    /// A fair waiter's ticket in the pool's queue: the acquire refreshes it,
    /// and takes a proxy only while it is the head of the queue (see
    /// [`crate::fair`]). A storage that keeps no queue ignores it.
    pub ticket: Option<WaitTicket>,
}

/// The error of a storage that keeps no site state.
fn no_sites() -> Error {
    Error::InvalidArgument(
        "this storage keeps no site cooldowns (see lighthouse_lease::site)".into(),
    )
}

/// Checks a failure report: the cooldown policy and the reason.
pub(crate) fn validate_failure(
    reason: &str,
    policy: &crate::cooldown::CooldownPolicy,
) -> Result<()> {
    policy.validate()?;
    validate_failure_reason(reason)
}

/// Longest failure reason accepted by [`LeaseStorage::report_failure`], in bytes.
pub const MAX_FAILURE_REASON_LEN: usize = 256;

/// Checks a failure reason: at most [`MAX_FAILURE_REASON_LEN`] bytes, no control
/// characters.
pub fn validate_failure_reason(reason: &str) -> Result<()> {
    if reason.len() > MAX_FAILURE_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "failure reason must be at most {MAX_FAILURE_REASON_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// Longest [`AcquireRequest::request_id`] accepted, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Checks an idempotency key: 1 to [`MAX_REQUEST_ID_LEN`] bytes, no control characters.
pub fn validate_request_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN || id.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "request id must be 1 to {MAX_REQUEST_ID_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

impl AcquireRequest {
    /// A request with no filters, the default selector, and no consumer
    /// registration. The names are checked here ([`Error::InvalidName`] when
    /// bad); pass a [`PoolName`] and a [`ConsumerName`] to skip that.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use lighthouse_lease::{AcquireRequest, Error};
    /// let request = AcquireRequest::new("latam-residential", "worker-1", Duration::from_secs(60))?;
    /// assert_eq!(request.pool_name, "latam-residential");
    /// assert!(matches!(
    ///     AcquireRequest::new("a{b}", "worker-1", Duration::from_secs(60)),
    ///     Err(Error::InvalidName { kind: "pool", .. })
    /// ));
    /// # Ok::<(), Error>(())
    /// ```
    pub fn new(
        pool_name: impl IntoPoolName,
        consumer_name: impl IntoConsumerName,
        duration: Duration,
    ) -> Result<Self> {
        Ok(AcquireRequest {
            pool_name: pool_name.into_pool_name()?,
            consumer_name: consumer_name.into_consumer_name()?,
            duration,
            filters: Arc::default(),
            selector: SelectorStrategy::default(),
            register_consumer: false,
            request_id: None,
            session: None,
            site: None,
            ticket: None,
        })
    }

    /// Acquires as the holder of this wait ticket; see [`AcquireRequest::ticket`].
    #[must_use]
    pub fn with_ticket(mut self, ticket: WaitTicket) -> Self {
        self.ticket = Some(ticket);
        self
    }

    /// Acquires for this site; see [`AcquireRequest::site`].
    #[must_use]
    pub fn with_site(mut self, site: Site) -> Self {
        self.site = Some(site);
        self
    }

    /// Acquires in this sticky session; see [`AcquireRequest::session`].
    #[must_use]
    pub fn with_session(mut self, session: impl Into<StickySession>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// Makes the acquire idempotent under this id; see [`AcquireRequest::request_id`].
    #[must_use]
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Sets the filters.
    #[must_use]
    pub fn with_filters(mut self, filters: impl Into<Arc<ProxyFilters>>) -> Self {
        self.filters = filters.into();
        self
    }

    /// Sets the selector.
    #[must_use]
    pub fn with_selector(mut self, selector: SelectorStrategy) -> Self {
        self.selector = selector;
        self
    }

    /// Registers the consumer when it is unknown.
    #[must_use]
    pub fn registering_consumer(mut self, yes: bool) -> Self {
        self.register_consumer = yes;
        self
    }

    /// Checks the duration, the request id and the filters (the names were
    /// checked when they were made). Storages call it before touching state.
    ///
    /// Filters shared by many requests (the `Arc` of the options a worker
    /// clones for every acquire) are checked once per thread, not once per
    /// call.
    // Always: the manager and the storage each check the request of every
    // acquire, and as a call (with the registers it saves) it was about 35
    // instructions for a few comparisons.
    #[inline(always)]
    pub fn validate(&self) -> Result<()> {
        validate_lease_duration(self.duration)?;
        if let Some(id) = &self.request_id {
            validate_request_id(id)?;
        }
        if let Some(session) = &self.session {
            session.validate()?;
        }
        if let Some(ticket) = &self.ticket {
            ticket.validate_for(&self.pool_name)?;
        }
        validate_shared_filters(&self.filters)
    }
}

thread_local! {
    /// The address of the filters this thread found valid last (0: none).
    /// Read by every check, so it is a plain `Cell` with no destructor (a
    /// thread-local with one is reached through a registration check).
    static VALID_FILTERS_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Those filters. The clone held here keeps them alive and shared: their
    /// address is not reused, and they cannot be changed in place
    /// (`Arc::get_mut` and `Arc::make_mut` change only an unshared value), so
    /// the same address is the same, valid, filter.
    static VALID_FILTERS: std::cell::RefCell<KeptFilters> =
        const { std::cell::RefCell::new(KeptFilters { _alive: None }) };
}

/// The filters kept by `VALID_FILTERS`; the address is forgotten with them.
struct KeptFilters {
    /// Held only to keep it alive and shared.
    _alive: Option<Arc<ProxyFilters>>,
}

impl Drop for KeptFilters {
    fn drop(&mut self) {
        let _ = VALID_FILTERS_AT.try_with(|at| at.set(0));
    }
}

/// [`ProxyFilters::validate`], skipped for the `Arc` this thread checked last
/// (the manager checks a request, then the storage does again; a worker sends
/// the same filters with every acquire).
#[inline]
fn validate_shared_filters(filters: &Arc<ProxyFilters>) -> Result<()> {
    let at = Arc::as_ptr(filters) as usize;
    if VALID_FILTERS_AT.get() == at {
        return Ok(());
    }
    filters.validate()?;
    // Replacing the kept filters forgets their address first.
    let kept = VALID_FILTERS.try_with(|valid| {
        *valid.borrow_mut() = KeptFilters {
            _alive: Some(Arc::clone(filters)),
        };
    });
    if kept.is_ok() {
        VALID_FILTERS_AT.set(at);
    }
    Ok(())
}

/// Where pools, proxies, consumers and leases live (the original's `IStorage`):
/// the administration of [`AdminStorage`] and the lease protocol of
/// [`LeaseStorage`]. It has no methods of its own; every type with both is a
/// `Storage`, and the manager takes any.
///
/// Every method is one atomic step: it either fails and changes nothing, or does
/// all it says. In particular [`LeaseStorage::acquire`] reclaims the pool's
/// expired leases, selects a proxy, counts the lease and records it in one step,
/// so that a distributed storage can do it in one round trip and no two callers
/// anywhere can both take a proxy's last slot.
///
/// Implementations must pass the conformance suite in `lighthouse_lease::testkit`
/// (feature `testkit`). An adapter writes the 15 methods of [`AdminStorage`] and
/// the 10 required ones of [`LeaseStorage`]; waiting (notifications, the next
/// expiry) and `rotate` have defaults.
///
/// Names arrive typed ([`PoolName`], [`ConsumerName`], and in the
/// [`AcquireRequest`], [`Lease`] and [`ProxyPool`] they carry), so they were
/// checked where they entered: a storage uses them as keys without checking
/// them again.
///
/// The methods return `Send` futures so a manager can be used from any tokio task.
/// Bring the two traits into scope to call them on a concrete storage
/// (`use lighthouse_lease::{AdminStorage, LeaseStorage}`, or `use lighthouse_lease::*`).
pub trait Storage: AdminStorage + LeaseStorage {}

impl<T: AdminStorage + LeaseStorage> Storage for T {}

/// Pools, proxies and consumers: what operators and imports change.
pub trait AdminStorage: Send + Sync + 'static {
    /// Creates a pool. Fails with [`Error::PoolAlreadyExists`] if the name is taken.
    fn create_pool(&self, pool: ProxyPool) -> impl Future<Output = Result<ProxyPool>> + Send;

    /// The pool with this name, if any.
    fn get_pool(&self, name: &PoolName) -> impl Future<Output = Result<Option<ProxyPool>>> + Send;

    /// Every pool, sorted by name.
    fn list_pools(&self) -> impl Future<Output = Result<Vec<ProxyPool>>> + Send;

    /// Updates a pool's description (pools are found by name; names never change).
    fn update_pool(&self, pool: ProxyPool) -> impl Future<Output = Result<ProxyPool>> + Send;

    /// Removes a pool with its proxies and leases. Returns whether it existed.
    /// Releasing one of its leases afterwards reports [`ReleaseOutcome::NotFound`].
    fn remove_pool(&self, name: &PoolName) -> impl Future<Output = Result<bool>> + Send;

    /// Adds a proxy to the pool named by its `pool_id`, with `current_leases` 0.
    fn add_proxy(&self, proxy: Proxy) -> impl Future<Output = Result<Proxy>> + Send;

    /// Adds many proxies at once: all of them, or none if any is invalid.
    fn add_proxies(&self, proxies: Vec<Proxy>) -> impl Future<Output = Result<Vec<Proxy>>> + Send;

    /// Replaces a proxy's fields (not its pool, not its lease count). Lowering
    /// `max_concurrency` below the live leases keeps them; the proxy is full until
    /// enough are released.
    fn update_proxy(&self, proxy: Proxy) -> impl Future<Output = Result<Proxy>> + Send;

    /// Sets a proxy's status. Live leases stay; only `active` proxies get new ones.
    fn set_proxy_status(
        &self,
        proxy_id: Uuid,
        status: ProxyStatus,
    ) -> impl Future<Output = Result<Proxy>> + Send;

    /// Removes a proxy and its leases. Returns whether it existed.
    fn remove_proxy(&self, proxy_id: Uuid) -> impl Future<Output = Result<bool>> + Send;

    /// The proxy with this id, if any.
    fn get_proxy(&self, proxy_id: Uuid) -> impl Future<Output = Result<Option<Proxy>>> + Send;

    /// Every proxy of a pool, in the order they were added.
    fn list_proxies(&self, pool_name: &PoolName)
        -> impl Future<Output = Result<Vec<Proxy>>> + Send;

    /// The consumer with this name, created if it does not exist yet.
    fn ensure_consumer(&self, name: &ConsumerName)
        -> impl Future<Output = Result<Consumer>> + Send;

    /// The consumer with this name, if any.
    fn get_consumer(
        &self,
        name: &ConsumerName,
    ) -> impl Future<Output = Result<Option<Consumer>>> + Send;

    /// Every consumer, sorted by name.
    fn list_consumers(&self) -> impl Future<Output = Result<Vec<Consumer>>> + Send;
}

/// The lease protocol (acquire, release, rotate, extend, read, clean up), the
/// feedback that steers selection (reports, health checks) and the waiting
/// machinery, whose defaults make a minimal adapter small: no notifications
/// (waiters poll every 5 s) and no expiry hint.
pub trait LeaseStorage: Send + Sync + 'static {
    /// Atomically reclaims the pool's expired leases, selects an available proxy
    /// that matches, counts the lease against its `max_concurrency` and records it.
    /// `Ok(None)` when no matching proxy has a free slot.
    fn acquire(
        &self,
        request: &AcquireRequest,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// [`LeaseStorage::acquire`] done at once, by a storage that never waits
    /// (the in-memory one): `Poll::Ready` with what `acquire` would have
    /// given, or `Poll::Pending` (the default; no waker is kept) when the
    /// caller must await `acquire` instead. The manager tries it first, so
    /// such a storage's usual acquire builds no future of its own and its
    /// lease is handed straight back (in the manager's own poll result).
    fn acquire_now(&self, request: &AcquireRequest) -> std::task::Poll<Result<Option<Lease>>> {
        let _ = request;
        std::task::Poll::Pending
    }

    /// Releases a lease, at most once; see [`ReleaseOutcome`].
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<ReleaseOutcome>> + Send;

    /// Releases `lease`, then acquires for `request`, in one atomic step where the
    /// storage can (Redis: one script call and one round trip, when both are on
    /// the same pool): the crawler loop that gives a proxy back and takes the
    /// next. Bad input, or a selector the pool cannot serve (`lowest_latency`
    /// without the latency order), fails before anything is released. The
    /// default checks the request, releases, then acquires: an adapter whose
    /// pools can refuse a selector should check it first, as both storages of
    /// this crate do.
    fn rotate(
        &self,
        lease: &Lease,
        request: &AcquireRequest,
    ) -> impl Future<Output = Result<Rotation>> + Send {
        async move {
            request.validate()?;
            let released = self.release(lease).await?;
            let next = self.acquire(request).await?;
            Ok(Rotation::new(released, next))
        }
    }

    /// Renews a live lease atomically: it now expires `duration` from now
    /// (storage time). Fails with [`Error::LeaseLost`] when the lease was released,
    /// has expired (even if not reclaimed yet) or is unknown: the holder must stop
    /// using the proxy. The returned lease has the new `expires_at`.
    fn extend(
        &self,
        lease: &Lease,
        duration: std::time::Duration,
    ) -> impl Future<Output = Result<Lease>> + Send;

    /// A lease record (live, or finished within the record grace period).
    fn get_lease(
        &self,
        pool_name: &PoolName,
        lease_id: Uuid,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// The live leases of a pool, oldest first.
    fn list_leases(&self, pool_name: &PoolName) -> impl Future<Output = Result<Vec<Lease>>> + Send;

    /// The proxy sticky session `session` keeps in a pool, and until when
    /// (`None`: it keeps none). [`Error::PoolNotFound`] for an unknown pool. The
    /// default keeps no sessions: a storage that does not override it answers
    /// `None`, and its acquires select as if they had no session.
    fn session(
        &self,
        pool_name: &PoolName,
        session: &str,
    ) -> impl Future<Output = Result<Option<SessionBinding>>> + Send {
        let _ = (pool_name, session);
        async { Ok(None) }
    }

    /// Records a failure of a proxy with one site: counts it, and rests the
    /// proxy for that site for `policy.delay_ms(n, policy.draw_keep(id))` after
    /// the n-th failure in a row, or bans it for the site at `policy.ban_after`
    /// (see [`crate::site`]). Returns its standing with the site. The default
    /// keeps no site state: an error saying so.
    fn report_site_failure(
        &self,
        proxy_id: Uuid,
        site: &Site,
        reason: &str,
        policy: &crate::cooldown::CooldownPolicy,
    ) -> impl Future<Output = Result<SiteStanding>> + Send {
        let _ = (proxy_id, site, reason, policy);
        async { Err(no_sites()) }
    }

    /// Records a success of a proxy with one site: its failures for the site
    /// are forgotten, and a rest or a ban for it lifted. The default keeps no
    /// site state: an error saying so.
    fn report_site_success(
        &self,
        proxy_id: Uuid,
        site: &Site,
    ) -> impl Future<Output = Result<SiteStanding>> + Send {
        let _ = (proxy_id, site);
        async { Err(no_sites()) }
    }

    /// The proxies of a pool with something counted against them for `site`
    /// (failures, a rest, a ban), by proxy id. The default keeps no site
    /// state: none.
    fn site_standings(
        &self,
        pool_name: &PoolName,
        site: &Site,
    ) -> impl Future<Output = Result<Vec<SiteStanding>>> + Send {
        let _ = (pool_name, site);
        async { Ok(Vec::new()) }
    }

    /// The success scores of a pool's proxies with at least one report, best
    /// first (see [`crate::success`]); empty for a pool that does not keep the
    /// success order. [`Error::PoolNotFound`] for an unknown pool. The default
    /// keeps no scores: none.
    fn success_scores(
        &self,
        pool_name: &PoolName,
    ) -> impl Future<Output = Result<Vec<crate::success::SuccessScore>>> + Send {
        let _ = pool_name;
        async { Ok(Vec::new()) }
    }

    /// Gives back the slots of every expired lease in every pool. Returns how many
    /// leases it expired.
    fn cleanup_expired_leases(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Occupancy of a pool.
    fn pool_stats(&self, pool_name: &PoolName) -> impl Future<Output = Result<PoolStats>> + Send;

    /// Records a success with a proxy: resets its failure count and lifts a
    /// cooldown. Returns the proxy as stored.
    fn report_success(&self, proxy_id: Uuid) -> impl Future<Output = Result<Proxy>> + Send;

    /// Records a failure with a proxy: counts it, and either puts the proxy in
    /// cooldown for `policy.delay(n, random)` (it is not leased meanwhile and
    /// comes back by itself) or, at `policy.ban_after` failures in a row, sets its
    /// status to `banned`. Returns the proxy as stored.
    fn report_failure(
        &self,
        proxy_id: Uuid,
        reason: &str,
        policy: &crate::cooldown::CooldownPolicy,
    ) -> impl Future<Output = Result<Proxy>> + Send;

    /// Subscribes to a pool's "capacity may have freed" notifications (a release,
    /// a cleanup, a cooldown lifted, a proxy added or made active). Waiting
    /// acquires use them to retry at once instead of polling. A notification can
    /// be lost (a Redis outage); waiters also retry at the nearest expiry.
    /// The default never notifies (waiters then retry at the next expiry, or
    /// every 5 s).
    fn subscribe_freed(
        &self,
        pool_name: &PoolName,
    ) -> impl Future<Output = Result<tokio::sync::broadcast::Receiver<()>>> + Send {
        let _ = pool_name;
        async { Ok(never_notified()) }
    }

    /// Says that an acquire on this pool will wait up to `wait` for a slot, so that
    /// the storage notifies freed slots meanwhile (Redis publishes only while
    /// someone waits). The default does nothing.
    fn announce_waiter(
        &self,
        pool_name: &PoolName,
        wait: std::time::Duration,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (pool_name, wait);
        async { Ok(()) }
    }

    /// How long until the pool's next live lease expires (storage time), if any
    /// lease is live. An expiry publishes nothing, so waiters poll then. The
    /// default knows none (waiters poll every 5 s).
    fn next_expiry(
        &self,
        pool_name: &PoolName,
    ) -> impl Future<Output = Result<Option<std::time::Duration>>> + Send {
        let _ = pool_name;
        async { Ok(None) }
    }

    /// Takes a ticket at the end of the pool's queue of fair waiters (see
    /// [`crate::fair`]), honoured `ttl` after each refresh, and says, as
    /// [`LeaseStorage::announce_waiter`] does, that its holder waits up to
    /// `wait`. [`Error::PoolNotFound`] for an unknown pool. The default keeps
    /// no queue: `None` (the manager then waits as for a plain wait).
    fn take_ticket(
        &self,
        pool_name: &PoolName,
        ttl: std::time::Duration,
        wait: std::time::Duration,
    ) -> impl Future<Output = Result<Option<WaitTicket>>> + Send {
        let _ = (pool_name, ttl, wait);
        async { Ok(None) }
    }

    /// Takes a ticket out of its pool's queue (its waiter gave up). A ticket no
    /// longer queued, or of a pool that no longer exists, is no error. The
    /// default keeps no queue: nothing to do.
    fn drop_ticket(&self, ticket: &WaitTicket) -> impl Future<Output = Result<()>> + Send {
        let _ = ticket;
        async { Ok(()) }
    }

    /// The tickets of a pool's queue that are honoured now, head first.
    /// [`Error::PoolNotFound`] for an unknown pool. The default keeps no
    /// queue: none.
    fn wait_tickets(
        &self,
        pool_name: &PoolName,
    ) -> impl Future<Output = Result<Vec<QueuedTicket>>> + Send {
        let _ = pool_name;
        async { Ok(Vec::new()) }
    }

    /// Applies a health check: sets the proxy's status and `checked_at`.
    fn apply_health_check(
        &self,
        result: &HealthCheckResult,
    ) -> impl Future<Output = Result<Proxy>> + Send;
}

/// A receiver that never gets a notification and is never closed: its sender
/// lives for the whole process and sends nothing.
fn never_notified() -> tokio::sync::broadcast::Receiver<()> {
    static NEVER: std::sync::OnceLock<tokio::sync::broadcast::Sender<()>> =
        std::sync::OnceLock::new();
    NEVER
        .get_or_init(|| tokio::sync::broadcast::channel(1).0)
        .subscribe()
}
