//! [`ProxyManager`]: the facade crawler workers call.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use crate::error::Result;
use crate::fair::WaitOptions;
use crate::filters::ProxyFilters;
use crate::hooks::{Hook, LeaseEvent, LeaseEventKind, LeaseEventOutcome};
use crate::lease::{Lease, ReleaseOutcome};
use crate::names::{ConsumerName, IntoPoolName, PoolName};
use crate::retry::RetryPolicy;
use crate::selector::SelectorStrategy;
use crate::session::StickySession;
use crate::site::{Site, SiteStanding};
use crate::storage::{AcquireRequest, Storage};
use crate::telemetry::Telemetry;
use tracing::Instrument;

/// What to ask for in an acquire; every field has a default.
///
/// Cloning is cheap (the consumer name and the filters are shared, not
/// copied), so a worker can build its options once and pass a clone to every
/// acquire. The consumer name is checked by the acquire that uses it.
///
/// ```
/// use std::time::Duration;
/// use lighthouse_lease::{AcquireOptions, ProxyFilters, SelectorStrategy};
///
/// let options = AcquireOptions::new()
///     .consumer("worker-1")
///     .duration(Duration::from_secs(120))
///     .filters(ProxyFilters::new().country("AR"))
///     .selector(SelectorStrategy::RoundRobin);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct AcquireOptions {
    /// Consumer name; `None` is [`ProxyManager::DEFAULT_CONSUMER_NAME`].
    /// Checked by the acquire ([`crate::Error::InvalidName`] when bad).
    pub consumer: Option<Arc<str>>,
    /// Lease length; `None` is the manager's default (300 s unless configured).
    pub duration: Option<Duration>,
    /// Which proxies qualify (default: all); shared with the requests made
    /// from these options.
    pub filters: Arc<ProxyFilters>,
    /// How to pick; `None` is the manager's default ([`SelectorStrategy::default`] unless configured).
    pub selector: Option<SelectorStrategy>,
    /// Idempotency key; see [`AcquireRequest::request_id`].
    pub request_id: Option<String>,
    /// Sticky session; see [`AcquireOptions::session`].
    pub session: Option<StickySession>,
    /// The site the lease is for; see [`AcquireOptions::site`].
    pub site: Option<String>,
}

impl AcquireOptions {
    /// All defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Acquire as this consumer (a `&str`, `String` or [`ConsumerName`]).
    pub fn consumer(mut self, name: impl Into<Arc<str>>) -> Self {
        self.consumer = Some(name.into());
        self
    }
    /// Lease length.
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }
    /// Lease length in seconds, like the original's `duration_seconds`.
    pub fn duration_seconds(self, secs: u64) -> Self {
        self.duration(Duration::from_secs(secs))
    }
    /// Filters (a [`ProxyFilters`], or one already shared in an `Arc`).
    pub fn filters(mut self, filters: impl Into<Arc<ProxyFilters>>) -> Self {
        self.filters = filters.into();
        self
    }
    /// Selector.
    pub fn selector(mut self, selector: SelectorStrategy) -> Self {
        self.selector = Some(selector);
        self
    }
    /// Makes the acquire idempotent: a retry with the same id returns the same
    /// lease instead of a second one (see [`AcquireRequest::request_id`]).
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
    /// Acquires in a sticky session (a name, or a [`StickySession`] with its
    /// TTL): the proxy the session had last, whenever it can serve this
    /// request, else another one, which the session keeps from then on (see
    /// [`crate::session`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lighthouse_lease::{AcquireOptions, StickySession};
    /// let cart = AcquireOptions::new().session("cart-42");
    /// let long = AcquireOptions::new()
    ///     .session(StickySession::new("login-7").with_ttl(Duration::from_secs(1800)));
    /// # let _ = (cart, long);
    /// ```
    pub fn session(mut self, session: impl Into<StickySession>) -> Self {
        self.session = Some(session.into());
        self
    }
    /// Leases for this site (`shop.example`): proxies resting or banned for
    /// it ([`ProxyManager::report_site_failure`]) are skipped; see
    /// [`crate::site`]. Checked by the acquire ([`crate::Error::InvalidArgument`]
    /// when bad).
    pub fn site(mut self, site: impl Into<String>) -> Self {
        self.site = Some(site.into());
        self
    }
}

/// The future of [`ProxyManager::acquire_proxy`]. Its first poll asks the
/// storage to acquire at once ([`crate::LeaseStorage::acquire_now`]); a
/// storage that does (the in-memory one) gives the lease straight back,
/// with no storage future and no async block to copy it out of (about 200
/// bytes, twice, each a stall on what was just written). Otherwise, and for
/// a call with its span on or hooks that read stats, the call goes on in a
/// boxed future that owns the request.
struct Acquire<'a, S: Storage> {
    manager: &'a ProxyManager<S>,
    state: AcquireState<'a>,
}

enum AcquireState<'a> {
    /// Not polled yet.
    Start(Result<AcquireRequest>),
    /// Waiting for the storage.
    Waiting(std::pin::Pin<Box<dyn Future<Output = Result<Option<Lease>>> + Send + 'a>>),
    /// Done (polled again only by mistake).
    Done,
}

impl<'a, S: Storage> Future for Acquire<'a, S> {
    type Output = Result<Option<Lease>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = &mut *self;
        let m = this.manager;
        let request = match &mut this.state {
            AcquireState::Start(Ok(request)) => request,
            AcquireState::Waiting(call) => {
                let out = call.as_mut().poll(cx);
                if out.is_ready() {
                    this.state = AcquireState::Done;
                }
                return out;
            }
            AcquireState::Start(Err(_)) | AcquireState::Done => {
                return match std::mem::replace(&mut this.state, AcquireState::Done) {
                    AcquireState::Start(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Ready(Err(crate::Error::backend(
                        "acquire polled after it completed",
                        None,
                    ))),
                };
            }
        };
        let observed = {
            let span = tracing::debug_span!("lighthouse.acquire", pool = %request.pool_name, outcome = tracing::field::Empty);
            (!span.is_disabled() || m.config.hooks_want_stats).then_some(span)
        };
        let timer = m.storage_timer();
        if observed.is_none() {
            // The request is read where it is, and the storage's result is
            // this poll's result.
            let out = m.storage.acquire_now(request);
            if let Poll::Ready(result) = &out {
                let took = timer.stop(&m.telemetry.storage_reads_clock);
                m.acquired(request, result, took);
                this.state = AcquireState::Done;
                return out;
            }
        }
        // The rest owns the request, in a box.
        let AcquireState::Start(Ok(request)) =
            std::mem::replace(&mut this.state, AcquireState::Done)
        else {
            return Poll::Pending;
        };
        let mut call: std::pin::Pin<Box<dyn Future<Output = Result<Option<Lease>>> + Send + 'a>> =
            match observed {
                Some(span) => Box::pin(async move { m.acquire_observed(&request, span).await }),
                None => Box::pin(async move {
                    let result = m.storage.acquire(&request).await;
                    let took = timer.stop(&m.telemetry.storage_reads_clock);
                    m.acquired(&request, &result, took);
                    result
                }),
            };
        let out = call.as_mut().poll(cx);
        if out.is_pending() {
            this.state = AcquireState::Waiting(call);
        }
        out
    }
}

/// The hooks' event for an acquire of `request` that gave `result` after `took`.
fn acquire_event(
    request: &AcquireRequest,
    result: &Result<Option<Lease>>,
    took: Duration,
) -> LeaseEvent {
    let outcome = match result {
        Ok(Some(_)) => LeaseEventOutcome::Acquired,
        Ok(None) => LeaseEventOutcome::Exhausted,
        Err(e) => LeaseEventOutcome::Failed(e.to_string()),
    };
    let lease = result.as_ref().ok().and_then(Option::as_ref);
    LeaseEvent {
        kind: LeaseEventKind::Acquire,
        pool: request.pool_name.clone(),
        consumer: request.consumer_name.clone(),
        outcome,
        elapsed: took,
        lease_id: lease.map(|l| l.id),
        proxy_id: lease.map(|l| l.proxy_id),
        pool_stats: None,
    }
}

/// A call's result once the hooks have seen its events ([`ProxyManager::emit`]).
enum Emitted<'a, T> {
    /// No hook asked for stats: here it is.
    Done(T),
    /// Reading the stats first; the future gives the result.
    Reading(std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>),
}

/// Anything that names a proxy: a [`Lease`], a [`crate::Proxy`] or a proxy id.
pub trait ProxyRef {
    /// The proxy's id.
    fn proxy_id(&self) -> uuid::Uuid;
}

impl ProxyRef for Lease {
    fn proxy_id(&self) -> uuid::Uuid {
        self.proxy_id
    }
}

impl ProxyRef for crate::proxy::Proxy {
    fn proxy_id(&self) -> uuid::Uuid {
        self.id
    }
}

impl ProxyRef for uuid::Uuid {
    fn proxy_id(&self) -> uuid::Uuid {
        *self
    }
}

#[derive(Clone)]
struct Config {
    cooldown: crate::cooldown::CooldownPolicy,
    auto_register_consumers: bool,
    default_duration: Duration,
    default_selector: SelectorStrategy,
    hooks: Vec<Hook>,
    /// Whether some hook asked for the pool's stats in its events.
    hooks_want_stats: bool,
    /// [`ProxyManager::DEFAULT_CONSUMER_NAME`], checked once.
    default_consumer: ConsumerName,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("auto_register_consumers", &self.auto_register_consumers)
            .field("default_duration", &self.default_duration)
            .field("default_selector", &self.default_selector)
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

/// The high-level API for leasing and releasing proxies.
///
/// The manager holds no lease state: everything lives in its [`Storage`], so any
/// number of managers (in one process, or on many hosts sharing a Redis) can
/// lease from the same pools. Cloning is cheap and shares the storage.
///
/// ```
/// use lighthouse_lease::{AcquireOptions, AdminStorage, ConsumerName, InMemoryStorage, Proxy, ProxyManager, ProxyPool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> lighthouse_lease::Result<()> {
/// let manager = ProxyManager::new(InMemoryStorage::new());
/// let pool = manager.storage().create_pool(ProxyPool::new("latam-residential")?).await?;
/// manager
///     .storage()
///     .add_proxy(Proxy::builder(pool.id, "1.1.1.1", 8080).max_concurrency(2).build()?)
///     .await?;
/// manager.storage().ensure_consumer(&ConsumerName::new("worker-1")?).await?; // named consumers must exist
///
/// let options = AcquireOptions::new().consumer("worker-1").duration_seconds(300);
/// if let Some(lease) = manager.acquire_proxy("latam-residential", options).await? {
///     println!("leased {} via {}", lease.proxy_id, lease.proxy_url());
///     manager.release_proxy(&lease).await?;
/// } else {
///     println!("no proxy available");
/// }
/// # Ok(())
/// # }
/// ```
pub struct ProxyManager<S> {
    storage: Arc<S>,
    config: Arc<Config>,
    /// One FIFO queue per pool for waiting acquires (tokio's mutex is fair).
    waiters:
        Arc<std::sync::Mutex<std::collections::HashMap<PoolName, Arc<tokio::sync::Mutex<()>>>>>,
    /// Metric handles by pool ([`crate::telemetry`]).
    telemetry: Arc<Telemetry>,
}

impl<S> Clone for ProxyManager<S> {
    fn clone(&self) -> Self {
        ProxyManager {
            storage: Arc::clone(&self.storage),
            config: Arc::clone(&self.config),
            waiters: Arc::clone(&self.waiters),
            telemetry: Arc::clone(&self.telemetry),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for ProxyManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyManager")
            .field("storage", &self.storage)
            .field("config", &self.config)
            .finish()
    }
}

/// Configures a [`ProxyManager`]; see [`ProxyManager::builder`].
#[must_use]
pub struct ProxyManagerBuilder<S> {
    storage: Arc<S>,
    config: Config,
}

impl<S: Storage> ProxyManagerBuilder<S> {
    /// Register unknown named consumers on their first acquire instead of failing
    /// with [`crate::Error::ConsumerNotFound`] (default: off; the default consumer is
    /// always registered).
    pub fn auto_register_consumers(mut self, yes: bool) -> Self {
        self.config.auto_register_consumers = yes;
        self
    }
    /// Lease length when [`AcquireOptions::duration`] is unset (default 300 s).
    pub fn default_duration(mut self, d: Duration) -> Self {
        self.config.default_duration = d;
        self
    }
    /// Selector when [`AcquireOptions::selector`] is unset.
    pub fn default_selector(mut self, s: SelectorStrategy) -> Self {
        self.config.default_selector = s;
        self
    }
    /// How proxies rest after reported failures (default [`CooldownPolicy::default`]).
    ///
    /// [`CooldownPolicy::default`]: crate::cooldown::CooldownPolicy
    pub fn cooldown_policy(mut self, policy: crate::cooldown::CooldownPolicy) -> Self {
        self.config.cooldown = policy;
        self
    }
    /// Calls `hook` after every acquire and release, with what the call itself
    /// knows: no storage call is added ([`LeaseEvent::pool_stats`] is `None`
    /// unless another hook asked for stats).
    ///
    /// ```
    /// # use lighthouse_lease::*;
    /// let manager = ProxyManager::builder(InMemoryStorage::new())
    ///     .hook(|event| eprintln!("{:?} {:?} in {:?}", event.kind, event.outcome, event.elapsed))
    ///     .build();
    /// ```
    pub fn hook(mut self, hook: impl Fn(&LeaseEvent) + Send + Sync + 'static) -> Self {
        self.config.hooks.push(Arc::new(hook));
        self
    }
    /// Like [`Self::hook`], and the events carry the pool's stats read right
    /// after the call: one more storage call per acquire and release (on Redis a
    /// round trip that also reclaims expired leases), for every hook.
    pub fn hook_with_stats(mut self, hook: impl Fn(&LeaseEvent) + Send + Sync + 'static) -> Self {
        self.config.hooks.push(Arc::new(hook));
        self.config.hooks_want_stats = true;
        self
    }
    /// The manager.
    pub fn build(self) -> ProxyManager<S> {
        ProxyManager {
            storage: self.storage,
            config: Arc::new(self.config),
            waiters: Arc::default(),
            telemetry: Arc::default(),
        }
    }
}

impl<S: Storage> ProxyManager<S> {
    /// The consumer used when an acquire names none. It is registered automatically.
    pub const DEFAULT_CONSUMER_NAME: &'static str = "default";
    /// Lease length when none is given: 300 s, like the original.
    pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(300);

    /// A manager with default settings.
    pub fn new(storage: S) -> Self {
        Self::builder(storage).build()
    }

    /// A manager over a storage shared with others.
    pub fn from_arc(storage: Arc<S>) -> Self {
        Self::builder_from_arc(storage).build()
    }

    /// Starts configuring a manager.
    pub fn builder(storage: S) -> ProxyManagerBuilder<S> {
        Self::builder_from_arc(Arc::new(storage))
    }

    /// Starts configuring a manager over a shared storage.
    pub fn builder_from_arc(storage: Arc<S>) -> ProxyManagerBuilder<S> {
        ProxyManagerBuilder {
            storage,
            config: Config {
                cooldown: crate::cooldown::CooldownPolicy::default(),
                auto_register_consumers: false,
                default_duration: Self::DEFAULT_LEASE_DURATION,
                default_selector: SelectorStrategy::default(),
                hooks: Vec::new(),
                hooks_want_stats: false,
                default_consumer: crate::names::default_consumer(),
            },
        }
    }

    /// Starts timing a call of the storage (see [`crate::telemetry::StorageTimer`]).
    fn storage_timer(&self) -> crate::telemetry::StorageTimer {
        let storage = Arc::as_ptr(&self.storage) as *const () as usize;
        crate::telemetry::StorageTimer::start(storage, &self.telemetry.storage_reads_clock)
    }

    /// The storage, for administration (pools, proxies, consumers, stats).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage as a shared handle.
    pub fn storage_arc(&self) -> Arc<S> {
        Arc::clone(&self.storage)
    }

    /// The request for `options`, checked: where names and options enter.
    /// The options are taken apart, not copied.
    fn request(&self, pool_name: PoolName, options: AcquireOptions) -> Result<AcquireRequest> {
        // Taken apart first: each field is read where it is (a partly moved
        // struct was copied whole).
        let AcquireOptions {
            consumer,
            duration,
            filters,
            selector,
            request_id,
            session,
            site,
        } = options;
        let (consumer, register) = match consumer {
            Some(name) => (
                ConsumerName::try_from(name)?,
                self.config.auto_register_consumers,
            ),
            None => (self.config.default_consumer.clone(), true),
        };
        let request = AcquireRequest {
            pool_name,
            consumer_name: consumer,
            duration: duration.unwrap_or(self.config.default_duration),
            filters,
            selector: selector.unwrap_or(self.config.default_selector),
            register_consumer: register,
            request_id,
            session,
            site: site.map(Site::new).transpose()?,
            ticket: None,
        };
        request.validate()?;
        Ok(request)
    }

    /// Leases a proxy from a pool.
    ///
    /// In one atomic storage step it reclaims the pool's expired leases, picks an
    /// available proxy that matches the filters and records the lease.
    ///
    /// - `Ok(Some(lease))`: the lease, with the proxy's connection details.
    /// - `Ok(None)`: every matching proxy is full, or none matches.
    /// - `Err`: bad input (names, duration, filters), an unknown pool, an unknown
    ///   named consumer (unless built with
    ///   [`ProxyManagerBuilder::auto_register_consumers`]), or a storage failure.
    ///   Nothing is written on error.
    ///
    /// `pool_name` is a [`PoolName`] or a string ([`IntoPoolName`]); a bad one
    /// fails with [`crate::Error::InvalidName`].
    pub fn acquire_proxy(
        &self,
        pool_name: impl IntoPoolName,
        options: AcquireOptions,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send + '_ {
        // Checked now, so the future holds only the request (not the options
        // and the name it came from): small futures are cheap to move.
        // Not moved into a closure on the way to `request` (the options, 136
        // bytes, were copied twice).
        let request = match pool_name.into_pool_name() {
            Ok(pool) => self.request(pool, options),
            Err(e) => Err(e),
        };
        Acquire {
            manager: self,
            state: AcquireState::Start(request),
        }
    }

    /// One acquire of a checked request (owned, or borrowed by the retrying
    /// and waiting loops), as one future: no inner future to move into it.
    /// (A block, not an `async fn`, whose arguments would be kept twice.)
    ///
    /// The usual call (no span on, no hook that reads stats) awaits the
    /// storage and hands its result straight back; the metrics and any hooks
    /// see it by reference. The lease (about 200 bytes) is then copied once on
    /// its way out instead of three times (into the result's slot, the
    /// block's return and the future's output), and each copy of it was a
    /// store-forwarding stall.
    #[allow(clippy::manual_async_fn)]
    fn acquire_request<'a, R>(
        &'a self,
        request: Result<R>,
    ) -> impl Future<Output = Result<Option<Lease>>> + Send + 'a
    where
        R: std::borrow::Borrow<AcquireRequest> + Send + 'a,
    {
        async move {
            // Borrowed where it is, not moved into a second place.
            let request: &AcquireRequest = match request {
                Ok(ref request) => request.borrow(),
                Err(e) => return Err(e),
            };
            let observed = {
                let span = tracing::debug_span!("lighthouse.acquire", pool = %request.pool_name, outcome = tracing::field::Empty);
                (!span.is_disabled() || self.config.hooks_want_stats)
                    .then(|| Box::pin(self.acquire_observed(request, span)))
            };
            if let Some(observed) = observed {
                // In a box of its own: the usual call's future keeps no span
                // and no stats-reading state (smaller, so cheaper to move).
                return observed.await;
            }
            let timer = self.storage_timer();
            let result = self.storage.acquire(request).await;
            let took = timer.stop(&self.telemetry.storage_reads_clock);
            self.acquired(request, &result, took);
            result
        }
    }

    /// An acquire with its span on, or for hooks that read the pool's stats.
    async fn acquire_observed(
        &self,
        request: &AcquireRequest,
        span: tracing::Span,
    ) -> Result<Option<Lease>> {
        let timer = self.storage_timer();
        let result = self.storage.acquire(request).instrument(span.clone()).await;
        let took = timer.stop(&self.telemetry.storage_reads_clock);
        let leased = crate::telemetry::leased(&result);
        span.record("outcome", crate::telemetry::acquire_outcome(leased));
        if !self.config.hooks_want_stats {
            self.acquired(request, &result, took);
            return result;
        }
        self.telemetry.with_pool(&request.pool_name, |m| {
            m.acquire(leased, took);
        });
        let event = acquire_event(request, &result, took);
        match self.emit(vec![event], result) {
            Emitted::Done(result) => result,
            Emitted::Reading(with_stats) => with_stats.await,
        }
    }

    /// Counts an acquire and shows it to the hooks (none of which reads
    /// stats: see [`Self::acquire_observed`]).
    fn acquired(&self, request: &AcquireRequest, result: &Result<Option<Lease>>, took: Duration) {
        let leased = crate::telemetry::leased(result);
        self.telemetry.with_pool(&request.pool_name, |m| {
            m.acquire(leased, took);
        });
        if self.config.hooks.is_empty() {
            return;
        }
        let event = acquire_event(request, result, took);
        for hook in &self.config.hooks {
            hook(&event);
        }
    }

    /// Hands `events` to the hooks and gives `result` back: at once, unless a
    /// hook asked for the pool's stats. That case reads them first, in a boxed
    /// future that holds `result`: awaiting it keeps only the box in the
    /// callers' futures, which stay small (and cheap to move) for managers
    /// without such hooks.
    fn emit<'a, T: Send + 'a>(&'a self, mut events: Vec<LeaseEvent>, result: T) -> Emitted<'a, T> {
        if !self.config.hooks_want_stats {
            for event in &events {
                for hook in &self.config.hooks {
                    hook(event);
                }
            }
            return Emitted::Done(result);
        }
        Emitted::Reading(Box::pin(async move {
            for event in &mut events {
                event.pool_stats = self.storage.pool_stats(&event.pool).await.ok();
                for hook in &self.config.hooks {
                    hook(event);
                }
            }
            result
        }))
    }

    /// Like [`ProxyManager::acquire_proxy`], but tries again with exponential
    /// backoff while no proxy is free or the storage fails (bad input fails at
    /// once). Returns `Ok(None)` or the last error when the attempts run out.
    ///
    /// An attempt that failed may have taken a lease all the same (its reply was
    /// lost). So that the next attempt returns that lease instead of taking a
    /// second one, a request without a request id gets one of its own here
    /// ([`AcquireOptions::request_id`]; remembered as long as the lease's record).
    ///
    /// Waiting uses tokio's timer, so tests can run it under paused time.
    pub async fn acquire_proxy_with_retry(
        &self,
        pool_name: impl IntoPoolName,
        options: AcquireOptions,
        retry: &RetryPolicy,
    ) -> Result<Option<Lease>> {
        retry.validate()?;
        let mut request = self.request(pool_name.into_pool_name()?, options)?;
        if request.request_id.is_none() {
            request.request_id = Some(format!("lh-retry-{}", uuid::Uuid::new_v4().simple()));
        }
        let mut attempt = 1;
        loop {
            let result = self.acquire_request(Ok(&request)).await;
            let again = match &result {
                Ok(Some(_)) => false,
                Ok(None) => true,
                Err(e) => e.is_retryable(),
            };
            if !again || attempt >= retry.max_attempts {
                return result;
            }
            tokio::time::sleep(retry.wait(attempt)).await;
            attempt += 1;
        }
    }

    /// Acquires, waiting up to a timeout for a matching proxy to free up when
    /// none is free now. Returns `Ok(None)` when the timeout passes first.
    /// `wait` is the timeout (a [`Duration`]) or [`WaitOptions`].
    ///
    /// The wait is not a poll loop: the storage notifies releases, cleanups,
    /// lifted cooldowns and new or re-activated proxies (Redis pub/sub on the
    /// pool's hash-tagged channel `<ns>:{<pool>}:freed`), and the waiter retries
    /// then. An expiry publishes nothing, so it also retries at the pool's
    /// nearest lease expiry or cooldown end (and at least every 5 s, in case a
    /// notification was lost).
    ///
    /// Within one manager (and its clones), waiters on a pool are served in FIFO
    /// order: only the oldest one retries. Across managers and hosts there is no
    /// queue: a freed slot goes to whichever waiter's acquire reaches the storage
    /// first (every acquire is atomic, so never to two). A fair wait
    /// ([`WaitOptions::fair`]) takes a ticket in the pool's queue in the storage
    /// instead, and is served in ticket order with the fair waiters of every
    /// host (see [`crate::fair`] for what that guarantees, and what not).
    pub async fn acquire_proxy_wait(
        &self,
        pool_name: impl IntoPoolName,
        options: AcquireOptions,
        wait: impl Into<WaitOptions>,
    ) -> Result<Option<Lease>> {
        let pool_name = pool_name.into_pool_name()?;
        let span = tracing::debug_span!("lighthouse.wait", pool = %pool_name, outcome = tracing::field::Empty);
        let started = crate::telemetry::CallTimer::start();
        let result = self
            .wait_for_proxy(&pool_name, options, wait.into())
            .instrument(span.clone())
            .await;
        let leased = crate::telemetry::leased(&result);
        span.record("outcome", crate::telemetry::acquire_outcome(leased));
        self.telemetry.with_pool(&pool_name, |m| {
            m.wait(leased, started.elapsed());
        });
        result
    }

    async fn wait_for_proxy(
        &self,
        pool_name: &PoolName,
        options: AcquireOptions,
        wait: WaitOptions,
    ) -> Result<Option<Lease>> {
        const SAFETY_POLL: Duration = Duration::from_secs(5);
        wait.validate()?;
        let timeout = wait.timeout;
        let mut request = self.request(pool_name.clone(), options)?;
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before the first attempt, so no release in between is missed.
        let mut freed = self.storage.subscribe_freed(pool_name).await?;
        // A fair waiter's turn comes from its ticket in the storage's queue
        // (taking it also announces the waiter); anyone else's from this
        // manager's queue.
        let ticket = match wait.fair {
            true => {
                self.storage
                    .take_ticket(pool_name, wait.ticket_ttl, timeout)
                    .await?
            }
            false => None,
        };
        let _turn = match &ticket {
            Some(_) => None,
            None => {
                self.storage.announce_waiter(pool_name, timeout).await?;
                let queue = {
                    let mut waiters = self
                        .waiters
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    Arc::clone(waiters.entry(pool_name.clone()).or_default())
                };
                let Ok(turn) = tokio::time::timeout_at(deadline, queue.lock_owned()).await else {
                    return Ok(None);
                };
                Some(turn)
            }
        };
        let (hold, refresh) = match ticket {
            Some(t) => {
                request.ticket = Some(t.clone());
                let hold = crate::fair::TicketHold::new(self.storage_arc(), t);
                (Some(hold), wait.refresh_every())
            }
            None => (None, SAFETY_POLL),
        };
        loop {
            if let Some(lease) = self.acquire_request(Ok(&request)).await? {
                if let Some(hold) = hold {
                    hold.served();
                }
                return Ok(Some(lease));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                if let Some(hold) = hold {
                    hold.leave().await;
                }
                return Ok(None);
            }
            let poll = match self.storage.next_expiry(pool_name).await? {
                Some(d) => (d + Duration::from_millis(2)).min(SAFETY_POLL),
                None => SAFETY_POLL,
            };
            let wake_at = (now + poll.min(refresh)).min(deadline);
            tokio::select! {
                got = freed.recv() => {
                    if matches!(got, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        freed = self.storage.subscribe_freed(pool_name).await?;
                    }
                }
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Gives a lease back. Idempotent: the slot is freed at most once, and the
    /// outcome says what happened ([`ReleaseOutcome::Released`] only the first time
    /// for a live lease; `AlreadyReleased`, `Expired` or `NotFound` otherwise).
    pub async fn release_proxy(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        // As in `acquire_request`: only the box is kept across the last await.
        let with_stats = {
            // As in `acquire_request`: a span that is on runs the call in a box.
            let traced = {
                let span = tracing::debug_span!("lighthouse.release", pool = %lease.pool_name, outcome = tracing::field::Empty);
                (!span.is_disabled()).then(|| {
                    Box::pin(async move {
                        let result = self.storage.release(lease).instrument(span.clone()).await;
                        let outcome = result.as_ref().ok().copied();
                        span.record("outcome", crate::telemetry::release_outcome(outcome));
                        result
                    })
                })
            };
            let timer = self.storage_timer();
            let result = match traced {
                None => self.storage.release(lease).await,
                Some(traced) => traced.await,
            };
            let took = timer.stop(&self.telemetry.storage_reads_clock);
            let outcome = result.as_ref().ok().copied();
            self.telemetry.with_pool(&lease.pool_name, |m| {
                m.release(outcome, Some(took));
            });
            if self.config.hooks.is_empty() {
                return result;
            }
            let outcome = match &result {
                Ok(o) => LeaseEventOutcome::Released(*o),
                Err(e) => LeaseEventOutcome::Failed(e.to_string()),
            };
            let event = LeaseEvent {
                kind: LeaseEventKind::Release,
                pool: lease.pool_name.clone(),
                consumer: lease.consumer_name.clone(),
                outcome,
                elapsed: took,
                lease_id: Some(lease.id),
                proxy_id: Some(lease.proxy_id),
                pool_stats: None,
            };
            match self.emit(vec![event], result) {
                Emitted::Done(result) => return result,
                Emitted::Reading(with_stats) => with_stats,
            }
        };
        with_stats.await
    }

    /// Gives `lease` back and acquires the next proxy of `pool_name`, in one
    /// atomic storage step and one round trip where the storage can (Redis, when
    /// the lease is of the same pool): the crawler loop that uses a proxy, gives
    /// it back and takes the next. The new lease may be the same proxy.
    ///
    /// Bad input (names, duration, filters) fails before anything is released.
    /// Hooks see a release event and an acquire event, as for the two calls.
    ///
    /// ```
    /// # use lighthouse_lease::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<()> {
    /// # let m = ProxyManager::new(InMemoryStorage::new());
    /// # let pool = m.storage().create_pool(ProxyPool::new("p")?).await?;
    /// # m.storage().add_proxy(Proxy::builder(pool.id, "1.1.1.1", 80).build()?).await?;
    /// let mut lease = m.acquire_proxy("p", AcquireOptions::new()).await?.expect("a free proxy");
    /// for _ in 0..3 {
    ///     // ... crawl through lease.proxy_url() ...
    ///     let rotation = m.rotate_proxy(&lease, AcquireOptions::new()).await?;
    ///     assert_eq!(rotation.released, ReleaseOutcome::Released);
    ///     lease = rotation.next.expect("the proxy just given back is free");
    /// }
    /// m.release_proxy(&lease).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn rotate_proxy(
        &self,
        lease: &Lease,
        options: AcquireOptions,
    ) -> Result<crate::lease::Rotation> {
        let request = self.request(lease.pool_name.clone(), options)?;
        let span = tracing::debug_span!("lighthouse.rotate", pool = %lease.pool_name, outcome = tracing::field::Empty);
        let started = crate::telemetry::CallTimer::start();
        let result = self
            .storage
            .rotate(lease, &request)
            .instrument(span.clone())
            .await;
        let elapsed = started.elapsed();
        // The release's outcome and the acquire's, without copying the lease.
        let released = result.as_ref().ok().map(|r| r.released);
        let leased = result.as_ref().ok().map(|r| r.next.is_some());
        span.record("outcome", crate::telemetry::acquire_outcome(leased));
        self.telemetry.with_pool(&lease.pool_name, |m| {
            m.rotate();
            m.release(released, None);
        });
        self.telemetry
            .with_pool(&request.pool_name, |m| m.acquire(leased, elapsed));
        if self.config.hooks.is_empty() {
            return result;
        }
        let (released, acquired) = match &result {
            Ok(r) => (
                LeaseEventOutcome::Released(r.released),
                match &r.next {
                    Some(_) => LeaseEventOutcome::Acquired,
                    None => LeaseEventOutcome::Exhausted,
                },
            ),
            Err(e) => (
                LeaseEventOutcome::Failed(e.to_string()),
                LeaseEventOutcome::Failed(e.to_string()),
            ),
        };
        let next = result.as_ref().ok().and_then(|r| r.next.as_ref());
        let events = vec![
            LeaseEvent {
                kind: LeaseEventKind::Release,
                pool: lease.pool_name.clone(),
                consumer: lease.consumer_name.clone(),
                outcome: released,
                elapsed,
                lease_id: Some(lease.id),
                proxy_id: Some(lease.proxy_id),
                pool_stats: None,
            },
            LeaseEvent {
                kind: LeaseEventKind::Acquire,
                pool: request.pool_name.clone(),
                consumer: request.consumer_name.clone(),
                outcome: acquired,
                elapsed,
                lease_id: next.map(|l| l.id),
                proxy_id: next.map(|l| l.proxy_id),
                pool_stats: None,
            },
        ];
        // The match ends before the await, so only the box is kept across it.
        let with_stats = match self.emit(events, result) {
            Emitted::Done(result) => return result,
            Emitted::Reading(with_stats) => with_stats,
        };
        with_stats.await
    }

    /// Renews a live lease: it now expires `duration` from now (storage time).
    /// Fails with [`crate::Error::LeaseLost`] if it was released, expired or is
    /// unknown; stop using the proxy then.
    pub async fn extend_lease(&self, lease: &Lease, duration: Duration) -> Result<Lease> {
        let span = tracing::debug_span!("lighthouse.extend", pool = %lease.pool_name, outcome = tracing::field::Empty);
        let result = self
            .storage
            .extend(lease, duration)
            .instrument(span.clone())
            .await;
        span.record("outcome", crate::telemetry::extend_outcome(&result));
        self.telemetry.with_pool(&lease.pool_name, |m| {
            m.extend(&result);
        });
        result
    }

    /// Counts a renewing lease of `pool` that was signalled lost.
    pub(crate) fn count_renew_lost(&self, pool: &PoolName) {
        self.telemetry.with_pool(pool, |m| {
            m.renew_lost();
        });
    }

    /// Lease length when [`AcquireOptions::duration`] is unset.
    pub(crate) fn default_duration(&self) -> Duration {
        self.config.default_duration
    }

    /// Reports that a proxy worked (after a lease, say): resets its failure count
    /// and lifts a cooldown. Returns the proxy as stored.
    pub async fn report_success(&self, target: &impl ProxyRef) -> Result<crate::proxy::Proxy> {
        self.telemetry.report(false);
        self.storage.report_success(target.proxy_id()).await
    }

    /// Reports that a proxy failed (blocked, timed out, ...): it cools down for a
    /// backoff that grows with each failure in a row, and is banned after
    /// [`CooldownPolicy::ban_after`](crate::cooldown::CooldownPolicy::ban_after)
    /// of them; see [`ProxyManagerBuilder::cooldown_policy`]. Returns the proxy as
    /// stored (`cooldown_until`, `consecutive_failures`, `status`).
    pub async fn report_failure(
        &self,
        target: &impl ProxyRef,
        reason: &str,
    ) -> Result<crate::proxy::Proxy> {
        self.telemetry.report(true);
        self.storage
            .report_failure(target.proxy_id(), reason, &self.config.cooldown)
            .await
    }

    /// Reports that a proxy failed with one site (a 403 or a 429 from
    /// `shop.example`): it rests for that site only, for the cooldown policy's
    /// delay after each failure in a row, and is banned for the site at its
    /// `ban_after`; acquires for other sites still get it (see [`crate::site`]).
    /// Returns its standing with the site.
    pub async fn report_site_failure(
        &self,
        target: &impl ProxyRef,
        site: impl AsRef<str>,
        reason: &str,
    ) -> Result<SiteStanding> {
        let site = Site::new(site)?;
        self.storage
            .report_site_failure(target.proxy_id(), &site, reason, &self.config.cooldown)
            .await
    }

    /// Reports that a proxy worked with one site: its failures for the site are
    /// forgotten and a rest or ban for the site lifted.
    pub async fn report_site_success(
        &self,
        target: &impl ProxyRef,
        site: impl AsRef<str>,
    ) -> Result<SiteStanding> {
        let site = Site::new(site)?;
        self.storage
            .report_site_success(target.proxy_id(), &site)
            .await
    }

    /// Gives back the slots of every expired lease in every pool; returns how many.
    /// Acquire already reclaims its pool's expired leases, so this is for
    /// background jobs (the sweeper) and for keeping stats exact.
    pub async fn cleanup_expired_leases(&self) -> Result<u64> {
        self.storage.cleanup_expired_leases().await
    }

    /// Acquires a lease wrapped in a [`LeaseGuard`] that releases it when dropped.
    pub async fn acquire_guard(
        &self,
        pool_name: impl IntoPoolName,
        options: AcquireOptions,
    ) -> Result<Option<LeaseGuard<S>>> {
        Ok(self
            .acquire_proxy(pool_name, options)
            .await?
            .map(|lease| LeaseGuard {
                manager: self.clone(),
                lease: Some(lease),
            }))
    }

    /// Runs `work` with a leased proxy and releases the lease on every exit path:
    /// when `work` returns, when it panics (the panic goes on after the release),
    /// and when the returned future is dropped (the release is then spawned on the
    /// current tokio runtime).
    ///
    /// Returns `Ok(None)` without calling `work` when no proxy is free. If the
    /// release itself fails, `work`'s value is still returned; the failure reaches
    /// the hooks and the lease lapses at its expiry.
    ///
    /// ```
    /// # use lighthouse_lease::{AcquireOptions, AdminStorage, InMemoryStorage, Proxy, ProxyManager, ProxyPool};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> lighthouse_lease::Result<()> {
    /// # let manager = ProxyManager::new(InMemoryStorage::new());
    /// # let pool = manager.storage().create_pool(ProxyPool::new("latam-residential")?).await?;
    /// # manager.storage().add_proxy(Proxy::builder(pool.id, "1.1.1.1", 8080).build()?).await?;
    /// let status = manager
    ///     .with_lease("latam-residential", AcquireOptions::new(), |lease| async move {
    ///         // fetch a page through lease.proxy_url() ...
    ///         200
    ///     })
    ///     .await?;
    /// assert_eq!(status, Some(200));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn with_lease<F, Fut, T>(
        &self,
        pool_name: impl IntoPoolName,
        options: AcquireOptions,
        work: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let Some(guard) = self.acquire_guard(pool_name, options).await? else {
            return Ok(None);
        };
        let outcome = AssertUnwindSafe(work(guard.lease().clone()))
            .catch_unwind()
            .await;
        // A failed release was already reported to the hooks; the lease lapses.
        let _ = guard.release().await;
        match outcome {
            Ok(value) => Ok(Some(value)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// A lease that is released when the guard is dropped.
///
/// Prefer [`LeaseGuard::release`], which reports the outcome. On drop, the release
/// is spawned on the current tokio runtime; outside a runtime it cannot run, and
/// the lease lapses at its expiry.
#[must_use = "dropping the guard releases the lease at once"]
pub struct LeaseGuard<S: Storage> {
    manager: ProxyManager<S>,
    lease: Option<Lease>,
}

impl<S: Storage> std::fmt::Debug for LeaseGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("lease", &self.lease)
            .finish()
    }
}

impl<S: Storage> LeaseGuard<S> {
    /// The lease.
    pub fn lease(&self) -> &Lease {
        // Only `release` and `into_lease`, which consume the guard, take it out.
        self.lease
            .as_ref()
            .unwrap_or_else(|| unreachable!("a live guard always holds its lease"))
    }

    /// Releases now and reports the outcome.
    pub async fn release(mut self) -> Result<ReleaseOutcome> {
        match self.lease.take() {
            Some(lease) => self.manager.release_proxy(&lease).await,
            None => Ok(ReleaseOutcome::AlreadyReleased),
        }
    }

    /// Disarms the guard and hands the lease over (for example to another process);
    /// whoever holds it must release it.
    pub fn into_lease(mut self) -> Lease {
        self.lease
            .take()
            .unwrap_or_else(|| unreachable!("a live guard always holds its lease"))
    }
}

impl<S: Storage> Drop for LeaseGuard<S> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let manager = self.manager.clone();
                handle.spawn(async move {
                    let _ = manager.release_proxy(&lease).await;
                });
            }
        }
    }
}
