//! InMemoryStorage specifics beyond the shared contract: record retention,
//! injected time, sharing across threads.

use std::sync::Arc;
use std::time::Duration;

use lighthouse_lease::clock::ManualClock;
use lighthouse_lease::storage::DEFAULT_RECORD_GRACE;
use lighthouse_lease::{
    AcquireOptions, AdminStorage, InMemoryStorage, LeaseStorage, Proxy, ProxyManager, ProxyPool,
    ReleaseOutcome,
};

const POOL: &str = "latam-residential";

async fn setup(clock: &ManualClock) -> ProxyManager<InMemoryStorage> {
    let m = ProxyManager::new(InMemoryStorage::with_clock(clock.clone()));
    let pool = m
        .storage()
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    m.storage()
        .add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 8080)
                .max_concurrency(1)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    m
}

#[tokio::test]
async fn finished_records_are_kept_for_the_grace_period_then_forgotten() {
    let clock = ManualClock::new();
    let m = setup(&clock).await;
    let released = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.release_proxy(&released).await.unwrap(),
        ReleaseOutcome::Released
    );
    clock.advance(DEFAULT_RECORD_GRACE - Duration::from_secs(1));
    assert_eq!(
        m.release_proxy(&released).await.unwrap(),
        ReleaseOutcome::AlreadyReleased
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        m.release_proxy(&released).await.unwrap(),
        ReleaseOutcome::NotFound
    );
    assert_eq!(
        m.storage().get_lease(&pn(POOL), released.id).await.unwrap(),
        None
    );

    let expired = m
        .acquire_proxy(
            POOL,
            AcquireOptions::new().duration(Duration::from_secs(10)),
        )
        .await
        .unwrap()
        .unwrap();
    clock.advance(Duration::from_secs(10) + DEFAULT_RECORD_GRACE - Duration::from_secs(1));
    assert_eq!(
        m.release_proxy(&expired).await.unwrap(),
        ReleaseOutcome::Expired
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        m.release_proxy(&expired).await.unwrap(),
        ReleaseOutcome::NotFound
    );
    assert_eq!(
        m.storage()
            .pool_stats(&pn(POOL))
            .await
            .unwrap()
            .total_leases,
        0
    );
}

#[tokio::test]
async fn record_grace_is_configurable() {
    let clock = ManualClock::new();
    let m = ProxyManager::new(
        InMemoryStorage::with_clock(clock.clone()).with_record_grace(Duration::from_secs(5)),
    );
    let pool = m
        .storage()
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    m.storage()
        .add_proxy(Proxy::builder(pool.id, "10.0.0.1", 80).build().unwrap())
        .await
        .unwrap();
    let lease = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    m.release_proxy(&lease).await.unwrap();
    clock.advance(Duration::from_secs(6));
    assert_eq!(
        m.release_proxy(&lease).await.unwrap(),
        ReleaseOutcome::NotFound
    );
}

#[tokio::test]
async fn expiry_follows_the_injected_clock_only() {
    let clock = ManualClock::new();
    let m = setup(&clock).await;
    let lease = m
        .acquire_proxy(
            POOL,
            AcquireOptions::new().duration(Duration::from_secs(300)),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.acquired_at, clock.now_utc());
    clock.advance(Duration::from_secs(299));
    assert_eq!(m.cleanup_expired_leases().await.unwrap(), 0);
    assert!(m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .is_none());
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        m.cleanup_expired_leases().await.unwrap(),
        1,
        "expires at exactly expires_at"
    );
}

#[test]
fn many_threads_share_one_storage_without_over_leasing() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let m = ProxyManager::new(InMemoryStorage::new());
        let pool = m
            .storage()
            .create_pool(ProxyPool::new(POOL).unwrap())
            .await
            .unwrap();
        for i in 0..4 {
            m.storage()
                .add_proxy(
                    Proxy::builder(pool.id, format!("10.0.0.{i}"), 80)
                        .max_concurrency(2)
                        .build()
                        .unwrap(),
                )
                .await
                .unwrap();
        }
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (m, peak) = (m.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..500 {
                    if let Some(l) = m.acquire_proxy(POOL, AcquireOptions::new()).await.unwrap() {
                        let live = m
                            .storage()
                            .pool_stats(&pn(POOL))
                            .await
                            .unwrap()
                            .total_leases;
                        peak.fetch_max(live, std::sync::atomic::Ordering::Relaxed);
                        m.release_proxy(&l).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(
            peak.load(std::sync::atomic::Ordering::Relaxed) <= 8,
            "4 proxies x 2 slots"
        );
        assert_eq!(
            m.storage()
                .pool_stats(&pn(POOL))
                .await
                .unwrap()
                .total_leases,
            0
        );
    });
}

/// A pool name the test knows to be valid.
fn pn(name: &str) -> lighthouse_lease::PoolName {
    lighthouse_lease::PoolName::new(name).expect("a valid pool name")
}
