//! The smallest adapter: a storage that writes only the required methods of
//! `AdminStorage` and `LeaseStorage` (here by delegating to the in-memory
//! storage) works with the manager through the traits' defaults: `rotate`
//! releases then acquires, and a waiting acquire without notifications or an
//! expiry hint polls every 5 s instead of spinning.

#[path = "support/delegate.rs"]
#[macro_use]
mod delegate;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lighthouse_lease::cooldown::CooldownPolicy;
use lighthouse_lease::storage::AcquireRequest;
use lighthouse_lease::{
    AcquireOptions, AdminStorage, HealthCheckResult, InMemoryStorage, Lease, LeaseStorage,
    PoolName, PoolStats, Proxy, ProxyManager, ProxyPool, ReleaseOutcome, Result,
};
use uuid::Uuid;

/// Required methods only; counts acquire calls.
#[derive(Default)]
struct Minimal {
    inner: InMemoryStorage,
    acquires: Arc<AtomicU32>,
}

delegate_admin_storage!(Minimal);

impl LeaseStorage for Minimal {
    async fn acquire(&self, request: &AcquireRequest) -> Result<Option<Lease>> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        self.inner.acquire(request).await
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.inner.release(lease).await
    }
    async fn extend(&self, lease: &Lease, duration: Duration) -> Result<Lease> {
        self.inner.extend(lease, duration).await
    }
    async fn get_lease(&self, pool: &PoolName, id: Uuid) -> Result<Option<Lease>> {
        self.inner.get_lease(pool, id).await
    }
    async fn list_leases(&self, pool: &PoolName) -> Result<Vec<Lease>> {
        self.inner.list_leases(pool).await
    }
    async fn cleanup_expired_leases(&self) -> Result<u64> {
        self.inner.cleanup_expired_leases().await
    }
    async fn pool_stats(&self, pool: &PoolName) -> Result<PoolStats> {
        self.inner.pool_stats(pool).await
    }
    async fn report_success(&self, id: Uuid) -> Result<Proxy> {
        self.inner.report_success(id).await
    }
    async fn report_failure(
        &self,
        id: Uuid,
        reason: &str,
        policy: &CooldownPolicy,
    ) -> Result<Proxy> {
        self.inner.report_failure(id, reason, policy).await
    }
    async fn apply_health_check(&self, result: &HealthCheckResult) -> Result<Proxy> {
        self.inner.apply_health_check(result).await
    }
}

async fn manager() -> (ProxyManager<Minimal>, Arc<AtomicU32>) {
    let storage = Minimal::default();
    let acquires = storage.acquires.clone();
    let m = ProxyManager::new(storage);
    let pool = m
        .storage()
        .create_pool(ProxyPool::new("p").unwrap())
        .await
        .unwrap();
    let proxy = Proxy::builder(pool.id, "10.0.0.1", 80)
        .max_concurrency(1)
        .build()
        .unwrap();
    m.storage().add_proxy(proxy).await.unwrap();
    (m, acquires)
}

#[tokio::test(start_paused = true)]
async fn a_waiting_acquire_polls_every_5_seconds_without_notifications() {
    let (m, acquires) = manager().await;
    let held = m
        .acquire_proxy("p", AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    acquires.store(0, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let got = m
        .acquire_proxy_wait("p", AcquireOptions::new(), Duration::from_secs(12))
        .await
        .unwrap();
    assert!(got.is_none());
    assert_eq!(started.elapsed(), Duration::from_secs(12));
    // At 0, 5, 10 and 12 s: no spinning on a receiver that never fires.
    assert_eq!(acquires.load(Ordering::SeqCst), 4);
    m.release_proxy(&held).await.unwrap();
}

#[tokio::test]
async fn rotate_by_default_releases_then_acquires() {
    let (m, _) = manager().await;
    let first = m
        .acquire_proxy("p", AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    let r = m.rotate_proxy(&first, AcquireOptions::new()).await.unwrap();
    assert_eq!(r.released, ReleaseOutcome::Released);
    let next = r.next.expect("the proxy just given back");
    assert_eq!(next.proxy_id, first.proxy_id);
    assert_ne!(next.id, first.id);
    assert_eq!(
        m.release_proxy(&next).await.unwrap(),
        ReleaseOutcome::Released
    );
}

#[tokio::test]
async fn bad_names_are_refused_at_the_manager_before_the_adapter_is_called() {
    let (m, acquires) = manager().await;
    acquires.store(0, Ordering::SeqCst);
    for (pool, consumer, kind) in [("a{b}", "w", "pool"), ("p", " w", "consumer")] {
        let err = m
            .acquire_proxy(pool, AcquireOptions::new().consumer(consumer))
            .await
            .unwrap_err();
        assert!(
            matches!(err, lighthouse_lease::Error::InvalidName { kind: k, .. } if k == kind),
            "{pool:?}/{consumer:?}: {err:?}"
        );
    }
    // The adapter takes typed names, so it never sees a bad one: the manager
    // refused both before calling it.
    assert_eq!(acquires.load(Ordering::SeqCst), 0);
    assert!(PoolName::new("a{b}").is_err());
}
