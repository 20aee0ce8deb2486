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

/// Options reused for every acquire (the same filters `Arc`): the storage
/// works out once which index serves them, and that stays right as the pool
/// changes. Here the country's index first holds the whole pool; a proxy of
/// another country added later is never handed out for it.
#[tokio::test]
async fn reused_filters_stay_exact_as_the_pool_changes() {
    let m = ProxyManager::new(InMemoryStorage::new());
    let pool = m
        .storage()
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    let add = |host: &'static str, country: &'static str| {
        let m = m.clone();
        let id = pool.id;
        async move {
            m.storage()
                .add_proxy(
                    Proxy::builder(id, host, 8080)
                        .country(country)
                        .max_concurrency(1)
                        .build()
                        .unwrap(),
                )
                .await
                .unwrap()
        }
    };
    let cl = add("10.0.0.1", "CL").await;
    let options =
        AcquireOptions::new().filters(lighthouse_lease::ProxyFilters::new().country("cl"));
    let first = m
        .acquire_proxy(POOL, options.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.proxy_id, cl.id);
    let ar = add("10.0.0.2", "AR").await;
    assert!(
        m.acquire_proxy(POOL, options.clone())
            .await
            .unwrap()
            .is_none(),
        "the only CL proxy is full; the AR one does not match"
    );
    let cl2 = add("10.0.0.3", "CL").await;
    let second = m
        .acquire_proxy(POOL, options.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.proxy_id, cl2.id);
    let any = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(any.proxy_id, ar.id);
    // A filter on a value no proxy had when first asked, then one has.
    let br = AcquireOptions::new().filters(lighthouse_lease::ProxyFilters::new().country("BR"));
    assert!(m.acquire_proxy(POOL, br.clone()).await.unwrap().is_none());
    let b = add("10.0.0.4", "BR").await;
    assert_eq!(
        m.acquire_proxy(POOL, br).await.unwrap().unwrap().proxy_id,
        b.id
    );
}

/// `least_used` after leases come and go without the by-load order being
/// moved on every one (see `InMemoryStorage`'s docs): still the proxy with the
/// fewest live leases, ties to the earliest added.
#[tokio::test]
async fn least_used_stays_exact_when_leases_come_and_go() {
    let m = ProxyManager::new(InMemoryStorage::new());
    let pool = m
        .storage()
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let p = Proxy::builder(pool.id, format!("10.0.0.{i}"), 8080)
            .max_concurrency(3)
            .build()
            .unwrap();
        ids.push(m.storage().add_proxy(p).await.unwrap().id);
    }
    let take = || async {
        m.acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .unwrap()
    };
    let a = take().await;
    let b = take().await;
    let c = take().await;
    assert_eq!(
        [a.proxy_id, b.proxy_id, c.proxy_id],
        [ids[0], ids[1], ids[2]]
    );
    // 1, 1, 1 -> release b: 1, 0, 1 -> b's proxy.
    m.release_proxy(&b).await.unwrap();
    let b2 = take().await;
    assert_eq!(b2.proxy_id, ids[1]);
    // 1, 1, 1 -> two more: 2, 2, 1 then 2, 2, 2.
    assert_eq!(take().await.proxy_id, ids[0]);
    assert_eq!(take().await.proxy_id, ids[1]);
    let last = take().await;
    assert_eq!(last.proxy_id, ids[2]);
    // Release one of the first proxy's leases: 1, 2, 2.
    m.release_proxy(&a).await.unwrap();
    let stats = m.storage().pool_stats(&pool.name).await.unwrap();
    assert_eq!(stats.total_leases, 5);
    assert_eq!(take().await.proxy_id, ids[0]);
}
