//! The conformance cases. Each is an `async fn(&impl Harness)` that panics with a
//! message naming the broken rule.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::Harness;
use crate::error::Error;
use crate::fencing::FencingGuard;
use crate::filters::ProxyFilters;
use crate::health::HealthCheckResult;
use crate::lease::{Lease, LeaseStatus, ReleaseOutcome};
use crate::manager::{AcquireOptions, ProxyManager};
use crate::names::{ConsumerName, PoolName};
use crate::pool::{IndexOrder, IndexedAttribute, PoolIndexes, ProxyPool};
use crate::proxy::{Proxy, ProxyBuilder, ProxyProtocol, ProxyStatus};
use crate::selector::SelectorStrategy;
use crate::stats::PoolStats;
use crate::storage::{AcquireRequest, AdminStorage, LeaseStorage, Storage};

const POOL: &str = "latam-residential";

/// A pool name the suite knows to be valid.
fn pn(name: &str) -> PoolName {
    PoolName::new(name).expect("the suite's pool names are valid")
}

/// A consumer name the suite knows to be valid.
fn cn(name: &str) -> ConsumerName {
    ConsumerName::new(name).expect("the suite's consumer names are valid")
}

/// A manager over a fresh storage with one empty pool named `latam-residential`
/// with the default indexes and the latency and success orders (so every selector works;
/// the `seq` order and most attributes are left out, so their fallbacks run).
async fn setup<H: Harness>(h: &H) -> (ProxyManager<H::Storage>, ProxyPool) {
    setup_with(h, suite_indexes()).await
}

fn suite_indexes() -> PoolIndexes {
    PoolIndexes::default()
        .order(IndexOrder::Latency)
        .order(IndexOrder::Success)
}

/// [`setup`] with a pool that keeps these indexes.
async fn setup_with<H: Harness>(
    h: &H,
    indexes: PoolIndexes,
) -> (ProxyManager<H::Storage>, ProxyPool) {
    let manager = ProxyManager::new(h.storage().await);
    let pool = manager
        .storage()
        .create_pool(
            ProxyPool::new(POOL)
                .expect("valid pool name")
                .with_indexes(indexes),
        )
        .await
        .expect("create_pool");
    manager
        .storage()
        .ensure_consumer(&cn("worker-1"))
        .await
        .expect("ensure_consumer");
    (manager, pool)
}

fn proxy(pool: &ProxyPool, last_octet: u8) -> ProxyBuilder {
    Proxy::builder(
        pool.id,
        format!("10.0.0.{last_octet}"),
        8000 + u16::from(last_octet),
    )
}

async fn add<S: Storage>(m: &ProxyManager<S>, b: ProxyBuilder) -> Proxy {
    m.storage()
        .add_proxy(b.build().expect("valid proxy"))
        .await
        .expect("add_proxy")
}

fn as_worker() -> AcquireOptions {
    AcquireOptions::new().consumer("worker-1")
}

async fn take<S: Storage>(m: &ProxyManager<S>, options: AcquireOptions) -> Option<Lease> {
    m.acquire_proxy(POOL, options).await.expect("acquire_proxy")
}

async fn take_some<S: Storage>(m: &ProxyManager<S>, options: AcquireOptions) -> Lease {
    take(m, options)
        .await
        .expect("a proxy should have been available")
}

async fn stats<S: Storage>(m: &ProxyManager<S>) -> PoolStats {
    m.storage().pool_stats(&pn(POOL)).await.expect("pool_stats")
}

async fn leases_of<S: Storage>(m: &ProxyManager<S>, id: Uuid) -> u32 {
    m.storage()
        .get_proxy(id)
        .await
        .expect("get_proxy")
        .expect("proxy exists")
        .current_leases
}

/// `ensure_consumer` creates once and then returns the same consumer.
pub async fn consumer_round_trip<H: Harness>(h: &H) {
    let s = h.storage().await;
    assert_eq!(s.get_consumer(&cn("worker-7")).await.unwrap(), None);
    let a = s.ensure_consumer(&cn("worker-7")).await.unwrap();
    assert_eq!(a.name, "worker-7");
    let b = s.ensure_consumer(&cn("worker-7")).await.unwrap();
    assert_eq!(a, b, "ensure_consumer must return the existing consumer");
    assert_eq!(
        s.get_consumer(&cn("worker-7")).await.unwrap(),
        Some(a.clone())
    );
    let all = s.list_consumers().await.unwrap();
    assert_eq!(all.iter().filter(|c| c.name == "worker-7").count(), 1);
}

/// Without a consumer name, the default consumer is used and registered.
pub async fn default_consumer_is_registered<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    add(&m, proxy(&pool, 1)).await;
    let lease = take_some(&m, AcquireOptions::new()).await;
    assert_eq!(
        lease.consumer_name,
        ProxyManager::<H::Storage>::DEFAULT_CONSUMER_NAME
    );
    let c = m.storage().get_consumer(&cn("default")).await.unwrap();
    assert_eq!(c.map(|c| c.id), Some(lease.consumer_id));
}

/// A named consumer that does not exist is an error, and nothing is written.
pub async fn unknown_named_consumer_is_an_error<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1)).await;
    let err = m
        .acquire_proxy(POOL, AcquireOptions::new().consumer("ghost"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ConsumerNotFound { ref name } if name == "ghost"),
        "{err:?}"
    );
    assert_eq!(
        leases_of(&m, p.id).await,
        0,
        "a failed acquire must not count a lease"
    );
    assert_eq!(m.storage().get_consumer(&cn("ghost")).await.unwrap(), None);
    assert!(m.storage().list_leases(&pn(POOL)).await.unwrap().is_empty());
}

/// A manager built with `auto_register_consumers` registers unknown consumers.
pub async fn auto_registered_consumer<H: Harness>(h: &H) {
    let storage = h.storage().await;
    let pool = storage
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    storage
        .add_proxy(proxy(&pool, 1).build().unwrap())
        .await
        .unwrap();
    let m = ProxyManager::builder(storage)
        .auto_register_consumers(true)
        .build();
    let lease = take_some(&m, AcquireOptions::new().consumer("newcomer")).await;
    let c = m.storage().get_consumer(&cn("newcomer")).await.unwrap();
    assert_eq!(c.map(|c| c.id), Some(lease.consumer_id));
}

/// Acquiring from a pool that does not exist is an error that writes nothing.
pub async fn unknown_pool_is_an_error<H: Harness>(h: &H) {
    let (m, _) = setup(h).await;
    let err = m
        .acquire_proxy("no-such-pool", AcquireOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PoolNotFound { ref name } if name == "no-such-pool"),
        "{err:?}"
    );
    assert_eq!(
        m.storage().get_consumer(&cn("default")).await.unwrap(),
        None,
        "a failed acquire must not register the default consumer"
    );
    let err = m
        .storage()
        .pool_stats(&pn("no-such-pool"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PoolNotFound { .. }), "{err:?}");
}

/// The lease carries everything needed to use the proxy.
pub async fn lease_carries_connection_details<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(
        &m,
        Proxy::builder(pool.id, "2001:db8::7", 1080)
            .protocol(ProxyProtocol::Socks5)
            .credentials("user", "p@ss:word"),
    )
    .await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(60);
    let lease = take_some(&m, as_worker().duration_seconds(300)).await;
    assert_eq!(lease.proxy_id, p.id);
    assert_eq!(lease.pool_id, pool.id);
    assert_eq!(lease.pool_name, POOL);
    assert_eq!(lease.consumer_name, "worker-1");
    assert_eq!(lease.status, LeaseStatus::Active);
    assert_eq!(lease.released_at, None);
    assert_eq!(*lease.proxy, p.endpoint());
    assert_eq!(
        lease.proxy_url(),
        "socks5://user:p%40ss%3Aword@[2001:db8::7]:1080"
    );
    assert!(
        lease.acquired_at > before,
        "acquired_at should be about now"
    );
    assert_eq!(
        (lease.expires_at - lease.acquired_at).num_milliseconds(),
        300_000
    );
}

async fn filter_case<H: Harness>(
    h: &H,
    tweak_match: impl Fn(ProxyBuilder) -> ProxyBuilder,
    tweak_other: impl Fn(ProxyBuilder) -> ProxyBuilder,
    filters: ProxyFilters,
) {
    // The attribute unindexed (the suite's pool), then indexed with every order.
    for indexes in [suite_indexes(), PoolIndexes::all()] {
        let (m, pool) = setup_with(h, indexes.clone()).await;
        // Non-matching proxies first, so a selector that ignored the filter would pick one.
        for i in 1..=3 {
            add(&m, tweak_other(proxy(&pool, i).max_concurrency(5))).await;
        }
        let want = add(&m, tweak_match(proxy(&pool, 9).max_concurrency(2))).await;
        for selector in SelectorStrategy::ALL {
            let lease =
                take_some(&m, as_worker().filters(filters.clone()).selector(selector)).await;
            assert_eq!(
                lease.proxy_id, want.id,
                "{selector} picked a proxy that does not match {filters:?} ({indexes:?})"
            );
            m.release_proxy(&lease).await.unwrap();
        }
        let a = take_some(&m, as_worker().filters(filters.clone())).await;
        let b = take_some(&m, as_worker().filters(filters.clone())).await;
        assert_eq!((a.proxy_id, b.proxy_id), (want.id, want.id));
        assert_eq!(
            take(&m, as_worker().filters(filters.clone())).await,
            None,
            "the only matching proxy is full: acquire must return None, not another proxy"
        );
        m.storage().remove_pool(&pn(POOL)).await.unwrap();
    }
}

/// `country` matches exactly (ignoring case).
pub async fn filter_by_country<H: Harness>(h: &H) {
    filter_case(
        h,
        |b| b.country("AR"),
        |b| b.country("BR"),
        ProxyFilters::new().country("ar"),
    )
    .await;
}

/// `source` matches exactly.
pub async fn filter_by_source<H: Harness>(h: &H) {
    filter_case(
        h,
        |b| b.source("oxylabs"),
        |b| b.source("brightdata"),
        ProxyFilters::new().source("oxylabs"),
    )
    .await;
}

/// `city` matches exactly.
pub async fn filter_by_city<H: Harness>(h: &H) {
    filter_case(
        h,
        |b| b.city("Córdoba"),
        |b| b.city("Rosario"),
        ProxyFilters::new().city("Córdoba"),
    )
    .await;
}

/// `isp` matches exactly.
pub async fn filter_by_isp<H: Harness>(h: &H) {
    filter_case(
        h,
        |b| b.isp("Telecom Argentina"),
        |b| b.isp("Claro"),
        ProxyFilters::new().isp("Telecom Argentina"),
    )
    .await;
}

/// `asn` matches exactly.
pub async fn filter_by_asn<H: Harness>(h: &H) {
    filter_case(
        h,
        |b| b.asn(7303),
        |b| b.asn(10318),
        ProxyFilters::new().asn(7303),
    )
    .await;
}

/// Latitude and longitude without a radius match that exact point.
pub async fn filter_by_exact_location<H: Harness>(h: &H) {
    filter_case(
        h,
        |b| b.location(-34.6037, -58.3816),
        |b| b.location(-34.6038, -58.3816),
        ProxyFilters::new().at(-34.6037, -58.3816),
    )
    .await;
}

/// A radius matches every proxy within that great-circle distance.
pub async fn filter_by_radius<H: Harness>(h: &H) {
    // Buenos Aires (match) vs Santiago (~1,140 km away); the radius is 50 km around
    // a point ~10 km from Buenos Aires' centre.
    filter_case(
        h,
        |b| b.location(-34.6037, -58.3816),
        |b| b.location(-33.4489, -70.6693),
        ProxyFilters::new().near(-34.52, -58.45, 50.0),
    )
    .await;
    let (m, pool) = setup(h).await;
    add(&m, proxy(&pool, 1).location(-33.4489, -70.6693)).await;
    add(&m, proxy(&pool, 2)).await; // no location: never matches a location filter
    assert_eq!(
        take(
            &m,
            as_worker().filters(ProxyFilters::new().near(-34.6, -58.4, 1000.0))
        )
        .await,
        None
    );
    assert!(take(
        &m,
        as_worker().filters(ProxyFilters::new().near(-34.6, -58.4, 1200.0))
    )
    .await
    .is_some());
}

/// `any_of` matches when at least one alternative does.
pub async fn filter_any_of<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let br = add(&m, proxy(&pool, 1).country("BR")).await;
    let cl = add(&m, proxy(&pool, 2).country("CL")).await;
    let ar = add(&m, proxy(&pool, 3).country("AR")).await;
    let f = ProxyFilters::new().any_of([
        ProxyFilters::new().country("AR"),
        ProxyFilters::new().country("CL"),
    ]);
    let mut got = HashSet::new();
    for _ in 0..2 {
        got.insert(
            take_some(
                &m,
                as_worker()
                    .filters(f.clone())
                    .selector(SelectorStrategy::LeastUsed),
            )
            .await
            .proxy_id,
        );
    }
    assert_eq!(got, HashSet::from([cl.id, ar.id]));
    assert!(!got.contains(&br.id));
}

/// `all_of` requires every sub-filter.
pub async fn filter_all_of<H: Harness>(h: &H) {
    let f = ProxyFilters::new().all_of([
        ProxyFilters::new().country("AR"),
        ProxyFilters::new().source("oxylabs"),
    ]);
    filter_case(
        h,
        |b| b.country("AR").source("oxylabs"),
        |b| b.country("AR").source("iproyal"),
        f,
    )
    .await;
}

/// `none_of` excludes every proxy that matches a sub-filter.
pub async fn filter_none_of<H: Harness>(h: &H) {
    let f = ProxyFilters::new()
        .country("AR")
        .none_of([ProxyFilters::new().isp("Claro"), ProxyFilters::new().asn(1)]);
    filter_case(
        h,
        |b| b.country("AR").isp("Telecom"),
        |b| b.country("AR").isp("Claro"),
        f,
    )
    .await;
}

/// A filter that no proxy matches gives `Ok(None)` and writes nothing.
pub async fn filter_without_match_returns_none<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).country("AR")).await;
    assert_eq!(
        take(&m, as_worker().filters(ProxyFilters::new().country("US"))).await,
        None
    );
    assert_eq!(
        take(
            &m,
            as_worker().filters(ProxyFilters::new().country("AR").source("x"))
        )
        .await,
        None
    );
    assert_eq!(leases_of(&m, p.id).await, 0);
}

/// A proxy never has more live leases than `max_concurrency`.
pub async fn max_concurrency_never_exceeded<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(2)).await;
    let a = take_some(&m, as_worker()).await;
    let b = take_some(&m, as_worker()).await;
    assert_eq!((a.proxy_id, b.proxy_id), (p.id, p.id));
    assert_ne!(a.id, b.id);
    for selector in SelectorStrategy::ALL {
        assert_eq!(
            take(&m, as_worker().selector(selector)).await,
            None,
            "{selector} over-leased"
        );
    }
    assert_eq!(leases_of(&m, p.id).await, 2);
}

/// Many concurrent callers never push a proxy past its maximum, and every slot is used.
pub async fn max_concurrency_never_exceeded_under_contention<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let mut max = HashMap::new();
    for i in 1..=6u8 {
        let limit = u32::from(i % 3 + 1);
        max.insert(
            add(&m, proxy(&pool, i).max_concurrency(limit)).await.id,
            limit,
        );
    }
    let capacity: u32 = max.values().sum();
    let holders: Arc<Mutex<HashMap<Uuid, u32>>> = Arc::default();
    let max = Arc::new(max);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (m, holders, max) = (m.clone(), holders.clone(), max.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = 0u32;
            for i in 0..25 {
                let selector = SelectorStrategy::ALL[(t + i) % SelectorStrategy::ALL.len()];
                if let Some(lease) = take(&m, as_worker().selector(selector)).await {
                    got += 1;
                    {
                        let mut hs = holders.lock().unwrap();
                        let n = hs.entry(lease.proxy_id).or_default();
                        *n += 1;
                        assert!(
                            *n <= max[&lease.proxy_id],
                            "proxy {} has {} holders, max {}",
                            lease.proxy_id,
                            n,
                            max[&lease.proxy_id]
                        );
                    }
                    tokio::task::yield_now().await;
                    *holders.lock().unwrap().get_mut(&lease.proxy_id).unwrap() -= 1;
                    assert_eq!(
                        m.release_proxy(&lease).await.unwrap(),
                        ReleaseOutcome::Released
                    );
                }
            }
            got
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task panicked");
    }
    assert!(total > 0);
    let st = stats(&m).await;
    assert_eq!(st.total_leases, 0, "every lease was released");
    // Fill to capacity: exactly `capacity` leases fit, not one more.
    let mut held = Vec::new();
    while let Some(l) = take(&m, as_worker()).await {
        held.push(l);
        assert!(
            held.len() as u32 <= capacity,
            "more leases than total capacity"
        );
    }
    assert_eq!(held.len() as u32, capacity);
}

/// A proxy without `max_concurrency` takes any number of leases.
pub async fn unlimited_concurrency<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1)).await;
    for _ in 0..50 {
        assert_eq!(take_some(&m, as_worker()).await.proxy_id, p.id);
    }
    assert_eq!(leases_of(&m, p.id).await, 50);
    assert_eq!(stats(&m).await.available_proxies, 1);
}

/// Acquire, release, acquire again: the slot comes back.
pub async fn release_cycle<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    for _ in 0..3 {
        let lease = take_some(&m, as_worker()).await;
        assert_eq!(take(&m, as_worker()).await, None);
        assert_eq!(
            m.release_proxy(&lease).await.unwrap(),
            ReleaseOutcome::Released
        );
        assert_eq!(leases_of(&m, p.id).await, 0);
        let rec = m
            .storage()
            .get_lease(&pn(POOL), lease.id)
            .await
            .unwrap()
            .expect("record kept after release");
        assert_eq!(rec.status, LeaseStatus::Released);
        assert!(rec.released_at.is_some());
    }
    assert_eq!(stats(&m).await.total_leases, 0);
}

/// A second release changes nothing and says so.
pub async fn double_release_frees_once<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(2)).await;
    let a = take_some(&m, as_worker()).await;
    let _b = take_some(&m, as_worker()).await;
    assert_eq!(m.release_proxy(&a).await.unwrap(), ReleaseOutcome::Released);
    for _ in 0..3 {
        assert_eq!(
            m.release_proxy(&a).await.unwrap(),
            ReleaseOutcome::AlreadyReleased
        );
    }
    assert_eq!(
        leases_of(&m, p.id).await,
        1,
        "a repeated release must not free b's slot"
    );
    let _c = take_some(&m, as_worker()).await;
    assert_eq!(take(&m, as_worker()).await, None);
}

/// Releasing a lease the storage never granted changes nothing.
pub async fn release_of_unknown_lease_is_not_found<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let real = take_some(&m, as_worker()).await;
    let mut forged = real.clone();
    forged.id = Uuid::new_v4();
    assert_eq!(
        m.release_proxy(&forged).await.unwrap(),
        ReleaseOutcome::NotFound
    );
    let mut elsewhere = real.clone();
    elsewhere.pool_name = pn("other-pool");
    assert_eq!(
        m.release_proxy(&elsewhere).await.unwrap(),
        ReleaseOutcome::NotFound
    );
    assert_eq!(leases_of(&m, p.id).await, 1);
}

/// Expired leases are counted by cleanup exactly once, and their slots come back.
pub async fn expiry_and_cleanup_count<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(3)).await;
    let short = h.short_lease();
    for _ in 0..3 {
        take_some(&m, as_worker().duration(short)).await;
    }
    let long = take(&m, as_worker().duration(Duration::from_secs(3600))).await;
    assert_eq!(long, None, "proxy is full");
    assert_eq!(
        m.cleanup_expired_leases().await.unwrap(),
        0,
        "nothing has expired yet"
    );
    h.advance(m.storage(), short + short / 2).await;
    assert_eq!(m.cleanup_expired_leases().await.unwrap(), 3);
    assert_eq!(
        m.cleanup_expired_leases().await.unwrap(),
        0,
        "cleanup counts each lease once"
    );
    assert_eq!(leases_of(&m, p.id).await, 0);
    assert!(m.storage().list_leases(&pn(POOL)).await.unwrap().is_empty());
    assert_eq!(stats(&m).await.total_leases, 0);
}

/// An acquire on a full proxy whose lease expired succeeds without a cleanup call.
pub async fn acquire_reclaims_expired_leases<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let short = h.short_lease();
    let old = take_some(&m, as_worker().duration(short)).await;
    assert_eq!(take(&m, as_worker()).await, None);
    h.advance(m.storage(), short + short / 2).await;
    let new = take_some(&m, as_worker()).await;
    assert_eq!(new.proxy_id, p.id);
    assert_eq!(leases_of(&m, p.id).await, 1);
    let rec = m
        .storage()
        .get_lease(&pn(POOL), old.id)
        .await
        .unwrap()
        .expect("expired record kept for the grace period");
    assert_eq!(rec.status, LeaseStatus::Expired);
    assert_eq!(
        m.release_proxy(&old).await.unwrap(),
        ReleaseOutcome::Expired
    );
    assert_eq!(
        leases_of(&m, p.id).await,
        1,
        "releasing the lost lease must not free the new holder's slot"
    );
}

/// Releasing an expired lease says `Expired` and frees its slot once only.
pub async fn release_after_expiry_reports_expired_and_frees_once<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(2)).await;
    let short = h.short_lease();
    let lost = take_some(&m, as_worker().duration(short)).await;
    let _kept = take_some(&m, as_worker().duration(Duration::from_secs(3600))).await;
    h.advance(m.storage(), short + short / 2).await;
    assert_eq!(
        m.release_proxy(&lost).await.unwrap(),
        ReleaseOutcome::Expired
    );
    assert_eq!(leases_of(&m, p.id).await, 1);
    assert_eq!(
        m.release_proxy(&lost).await.unwrap(),
        ReleaseOutcome::Expired
    );
    assert_eq!(
        m.cleanup_expired_leases().await.unwrap(),
        0,
        "already reclaimed by the release"
    );
    assert_eq!(leases_of(&m, p.id).await, 1);
}

/// Inactive, slow and banned proxies are never leased.
pub async fn non_active_proxies_never_leased<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let mut ids = Vec::new();
    for (i, st) in [
        ProxyStatus::Inactive,
        ProxyStatus::Slow,
        ProxyStatus::Banned,
    ]
    .into_iter()
    .enumerate()
    {
        ids.push(
            add(&m, proxy(&pool, i as u8 + 1).status(st).country("AR"))
                .await
                .id,
        );
    }
    for selector in SelectorStrategy::ALL {
        assert_eq!(
            take(&m, as_worker().selector(selector)).await,
            None,
            "{selector}"
        );
        assert_eq!(
            take(
                &m,
                as_worker()
                    .selector(selector)
                    .filters(ProxyFilters::new().country("AR"))
            )
            .await,
            None
        );
    }
    let active = m
        .storage()
        .set_proxy_status(ids[2], ProxyStatus::Active)
        .await
        .unwrap();
    assert_eq!(active.status, ProxyStatus::Active);
    let lease = take_some(&m, as_worker()).await;
    assert_eq!(lease.proxy_id, ids[2]);
    m.storage()
        .set_proxy_status(ids[2], ProxyStatus::Banned)
        .await
        .unwrap();
    assert_eq!(take(&m, as_worker()).await, None);
    assert_eq!(
        leases_of(&m, ids[2]).await,
        1,
        "a status change keeps live leases"
    );
    assert_eq!(
        m.release_proxy(&lease).await.unwrap(),
        ReleaseOutcome::Released
    );
}

/// A health-check result sets status and `checked_at`.
pub async fn health_result_applied<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1)).await;
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
        .unwrap()
        .to_utc();
    let r = HealthCheckResult::new(p.id, ProxyStatus::Slow)
        .with_latency(Duration::from_millis(2500))
        .checked_at(at);
    let got = m.storage().apply_health_check(&r).await.unwrap();
    assert_eq!((got.status, got.checked_at), (ProxyStatus::Slow, Some(at)));
    assert_eq!(got.latency_ms, Some(2500), "the latency is recorded");
    let stored = m.storage().get_proxy(p.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.checked_at),
        (ProxyStatus::Slow, Some(at))
    );
    assert_eq!(take(&m, as_worker()).await, None);
    m.storage()
        .apply_health_check(&HealthCheckResult::new(p.id, ProxyStatus::Active))
        .await
        .unwrap();
    assert!(take(&m, as_worker()).await.is_some());
    let err = m
        .storage()
        .apply_health_check(&HealthCheckResult::new(Uuid::new_v4(), ProxyStatus::Active))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ProxyNotFound { .. }), "{err:?}");
}

/// Stats count proxies and leases exactly.
pub async fn pool_stats_are_exact<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    assert_eq!(stats(&m).await, PoolStats::default());
    let a = add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    add(&m, proxy(&pool, 2).max_concurrency(2)).await;
    add(&m, proxy(&pool, 3)).await;
    add(&m, proxy(&pool, 4).status(ProxyStatus::Banned)).await;
    assert_eq!(
        stats(&m).await,
        PoolStats {
            total_proxies: 4,
            active_proxies: 3,
            available_proxies: 3,
            leased_proxies: 0,
            total_leases: 0,
            cooling_proxies: 0,
            banned_proxies: 1,
        }
    );
    let l1 = take_some(&m, as_worker().selector(SelectorStrategy::FirstAvailable)).await;
    assert_eq!(l1.proxy_id, a.id);
    let _l2 = take_some(&m, as_worker().selector(SelectorStrategy::FirstAvailable)).await;
    let _l3 = take_some(&m, as_worker().selector(SelectorStrategy::FirstAvailable)).await;
    assert_eq!(
        stats(&m).await,
        PoolStats {
            total_proxies: 4,
            active_proxies: 3,
            available_proxies: 1,
            leased_proxies: 2,
            total_leases: 3,
            cooling_proxies: 0,
            banned_proxies: 1,
        }
    );
    m.release_proxy(&l1).await.unwrap();
    assert_eq!(
        stats(&m).await,
        PoolStats {
            total_proxies: 4,
            active_proxies: 3,
            available_proxies: 2,
            leased_proxies: 1,
            total_leases: 2,
            cooling_proxies: 0,
            banned_proxies: 1,
        }
    );
}

async fn three<H: Harness>(h: &H, max: Option<u32>) -> (ProxyManager<H::Storage>, Vec<Uuid>) {
    three_with(h, max, suite_indexes()).await
}

async fn three_with<H: Harness>(
    h: &H,
    max: Option<u32>,
    indexes: PoolIndexes,
) -> (ProxyManager<H::Storage>, Vec<Uuid>) {
    let (m, pool) = setup_with(h, indexes).await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let b = proxy(&pool, i);
        let b = match max {
            Some(n) => b.max_concurrency(n),
            None => b,
        };
        ids.push(add(&m, b).await.id);
    }
    (m, ids)
}

/// `first_available` fills proxies in the order they were added.
pub async fn selector_first_available_order<H: Harness>(h: &H) {
    let (m, ids) = three(h, Some(2)).await;
    let o = || as_worker().selector(SelectorStrategy::FirstAvailable);
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(take_some(&m, o()).await.proxy_id);
    }
    assert_eq!(got, vec![ids[0], ids[0], ids[1], ids[1], ids[2], ids[2]]);
}

/// `least_used` picks the proxy with the fewest leases (ties: earliest added).
pub async fn selector_least_used_order<H: Harness>(h: &H) {
    let (m, ids) = three(h, None).await;
    let o = || as_worker().selector(SelectorStrategy::LeastUsed);
    let mut got = Vec::new();
    let mut leases = Vec::new();
    for _ in 0..6 {
        let l = take_some(&m, o()).await;
        got.push(l.proxy_id);
        leases.push(l);
    }
    assert_eq!(got, vec![ids[0], ids[1], ids[2], ids[0], ids[1], ids[2]]);
    // Free two slots of the second proxy: it becomes the least used.
    m.release_proxy(&leases[1]).await.unwrap();
    m.release_proxy(&leases[4]).await.unwrap();
    assert_eq!(take_some(&m, o()).await.proxy_id, ids[1]);
}

/// `round_robin` hands proxies out in turn, even when earlier ones are free again.
pub async fn selector_round_robin_order<H: Harness>(h: &H) {
    let (m, ids) = three(h, Some(1)).await;
    let o = || as_worker().selector(SelectorStrategy::RoundRobin);
    let mut got = Vec::new();
    for _ in 0..7 {
        let l = take_some(&m, o()).await;
        got.push(l.proxy_id);
        m.release_proxy(&l).await.unwrap();
    }
    assert_eq!(
        got,
        vec![ids[0], ids[1], ids[2], ids[0], ids[1], ids[2], ids[0]]
    );
    // A full proxy is skipped in turn.
    let hold = take_some(&m, o()).await; // ids[1]
    assert_eq!(hold.proxy_id, ids[1]);
    let next = take_some(&m, o()).await;
    assert_eq!(next.proxy_id, ids[2]);
    m.release_proxy(&next).await.unwrap();
    assert_eq!(take_some(&m, o()).await.proxy_id, ids[0]);
    assert_eq!(
        take_some(&m, o()).await.proxy_id,
        ids[2],
        "ids[1] is still held"
    );
}

/// `random` reaches every available proxy and never a full one.
pub async fn selector_random_spreads_and_respects_capacity<H: Harness>(h: &H) {
    let (m, ids) = three(h, None).await;
    let o = || as_worker().selector(SelectorStrategy::Random);
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let l = take_some(&m, o()).await;
        seen.insert(l.proxy_id);
        m.release_proxy(&l).await.unwrap();
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "random should reach every proxy");
    let (m, ids2) = three(h, Some(1)).await;
    let _ = ids;
    let mut got = HashSet::new();
    for _ in 0..3 {
        got.insert(take_some(&m, o()).await.proxy_id);
    }
    assert_eq!(got, ids2.into_iter().collect());
    assert_eq!(take(&m, o()).await, None);
}

/// Live leases are listed; records are fetched by id.
pub async fn list_and_get_leases<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    add(&m, proxy(&pool, 1)).await;
    let a = take_some(&m, as_worker()).await;
    let b = take_some(&m, as_worker()).await;
    let listed: HashSet<Uuid> = m
        .storage()
        .list_leases(&pn(POOL))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(listed, HashSet::from([a.id, b.id]));
    let got = m.storage().get_lease(&pn(POOL), a.id).await.unwrap();
    assert_eq!(
        got.as_ref().map(|l| (&l.id, &l.proxy, l.status)),
        Some((&a.id, &a.proxy, LeaseStatus::Active))
    );
    m.release_proxy(&a).await.unwrap();
    let listed: Vec<Uuid> = m
        .storage()
        .list_leases(&pn(POOL))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(listed, vec![b.id]);
    assert_eq!(
        m.storage()
            .get_lease(&pn(POOL), Uuid::new_v4())
            .await
            .unwrap(),
        None
    );
}

/// Updating a proxy keeps its leases and moves it between filter indexes.
pub async fn update_proxy_keeps_leases_and_reindexes<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).country("AR").max_concurrency(3)).await;
    let _l = take_some(&m, as_worker()).await;
    let _l2 = take_some(&m, as_worker()).await;
    let mut changed = p.clone();
    changed.country = Some("CL".into());
    changed.max_concurrency = Some(2);
    changed.current_leases = 99; // ignored: the storage owns the count
    let updated = m.storage().update_proxy(changed).await.unwrap();
    assert_eq!(updated.current_leases, 2);
    assert_eq!(updated.country.as_deref(), Some("CL"));
    assert_eq!(
        take(&m, as_worker().filters(ProxyFilters::new().country("AR"))).await,
        None
    );
    assert_eq!(
        take(&m, as_worker()).await,
        None,
        "max lowered to the live count: full"
    );
    let mut wider = updated.clone();
    wider.max_concurrency = None;
    m.storage().update_proxy(wider).await.unwrap();
    assert_eq!(
        take_some(&m, as_worker().filters(ProxyFilters::new().country("CL")))
            .await
            .proxy_id,
        p.id
    );
    let mut moved = updated.clone();
    moved.pool_id = Uuid::new_v4();
    assert!(matches!(
        m.storage().update_proxy(moved).await,
        Err(Error::InvalidProxy {
            field: "pool_id",
            ..
        })
    ));
    let mut ghost = updated;
    ghost.id = Uuid::new_v4();
    assert!(matches!(
        m.storage().update_proxy(ghost).await,
        Err(Error::ProxyNotFound { .. })
    ));
}

/// Removing a proxy or a pool removes their leases too.
pub async fn remove_proxy_and_pool<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1)).await;
    let q = add(&m, proxy(&pool, 2)).await;
    let lease = take_some(&m, as_worker().selector(SelectorStrategy::FirstAvailable)).await;
    assert_eq!(lease.proxy_id, p.id);
    assert!(m.storage().remove_proxy(p.id).await.unwrap());
    assert!(!m.storage().remove_proxy(p.id).await.unwrap());
    assert_eq!(m.storage().get_proxy(p.id).await.unwrap(), None);
    assert_eq!(
        m.release_proxy(&lease).await.unwrap(),
        ReleaseOutcome::NotFound
    );
    assert_eq!(stats(&m).await.total_proxies, 1);
    assert_eq!(take_some(&m, as_worker()).await.proxy_id, q.id);
    assert!(m.storage().remove_pool(&pn(POOL)).await.unwrap());
    assert!(!m.storage().remove_pool(&pn(POOL)).await.unwrap());
    assert_eq!(m.storage().get_pool(&pn(POOL)).await.unwrap(), None);
    assert_eq!(m.storage().get_proxy(q.id).await.unwrap(), None);
    assert!(matches!(
        m.acquire_proxy(POOL, as_worker()).await,
        Err(Error::PoolNotFound { .. })
    ));
    // The name can be used again.
    m.storage()
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    assert!(m
        .storage()
        .list_proxies(&pn(POOL))
        .await
        .unwrap()
        .is_empty());
}

/// Bad pool names are rejected before anything is written.
pub async fn bad_pool_name_is_rejected<H: Harness>(h: &H) {
    let (m, _) = setup(h).await;
    let long = "p".repeat(65);
    for bad in [
        "",
        "a{b}",
        "a:b",
        "a b",
        "pool\n",
        long.as_str(),
        "pöol",
        "{latam}",
    ] {
        assert!(
            matches!(
                ProxyPool::new(bad),
                Err(Error::InvalidName { kind: "pool", .. })
            ),
            "{bad:?}"
        );
        // No pool with a bad name reaches a storage: it cannot be built,
        // not even by deserializing one.
        let forged = serde_json::json!({
            "id": Uuid::new_v4(),
            "name": bad,
            "description": null,
        });
        assert!(
            serde_json::from_value::<ProxyPool>(forged).is_err(),
            "{bad:?}"
        );
        let err = m
            .acquire_proxy(bad, AcquireOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidName { kind: "pool", .. }),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(m.storage().list_pools().await.unwrap().len(), 1);
    assert_eq!(
        m.storage().get_consumer(&cn("default")).await.unwrap(),
        None
    );
}

/// Bad consumer names are rejected before anything is written.
pub async fn bad_consumer_name_is_rejected<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1)).await;
    let long = "c".repeat(129);
    for bad in ["", " worker", "worker\t", "a\u{0}b", long.as_str()] {
        let err = m
            .acquire_proxy(POOL, AcquireOptions::new().consumer(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidName {
                    kind: "consumer",
                    ..
                }
            ),
            "{bad:?}: {err:?}"
        );
        assert!(matches!(
            ConsumerName::new(bad),
            Err(Error::InvalidName {
                kind: "consumer",
                ..
            })
        ));
    }
    assert_eq!(leases_of(&m, p.id).await, 0);
    assert_eq!(m.storage().list_consumers().await.unwrap().len(), 1);
}

/// Zero and absurd durations are rejected, by the manager and by the storage.
pub async fn bad_duration_is_rejected<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1)).await;
    for d in [
        Duration::ZERO,
        Duration::from_micros(999),
        Duration::from_secs(8 * 24 * 3600),
        Duration::MAX,
    ] {
        let err = m
            .acquire_proxy(POOL, as_worker().duration(d))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidDuration { .. }),
            "{d:?}: {err:?}"
        );
        let req = AcquireRequest::new(POOL, "worker-1", d).expect("valid names");
        assert!(matches!(
            m.storage().acquire(&req).await,
            Err(Error::InvalidDuration { .. })
        ));
    }
    assert_eq!(leases_of(&m, p.id).await, 0);
}

/// Contradictory or out-of-range filters are rejected before storage is touched.
pub async fn bad_filters_are_rejected<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).location(0.0, 0.0)).await;
    let lat_only = ProxyFilters {
        latitude: Some(1.0),
        ..Default::default()
    };
    let lon_only = ProxyFilters {
        longitude: Some(1.0),
        ..Default::default()
    };
    let radius_only = ProxyFilters {
        radius_km: Some(5.0),
        ..Default::default()
    };
    let mut deep = ProxyFilters::new().country("AR");
    for _ in 0..6 {
        deep = ProxyFilters::new().all_of([deep]);
    }
    let bad = [
        lat_only,
        lon_only,
        radius_only,
        ProxyFilters::new().near(0.0, 0.0, 0.0),
        ProxyFilters::new().near(0.0, 0.0, -3.0),
        ProxyFilters::new().near(0.0, 0.0, f64::NAN),
        ProxyFilters::new().at(91.0, 0.0),
        ProxyFilters::new().at(0.0, -180.5),
        ProxyFilters::new().country(""),
        ProxyFilters::new().any_of([ProxyFilters {
            latitude: Some(1.0),
            ..Default::default()
        }]),
        deep,
        ProxyFilters::new().any_of(vec![ProxyFilters::new().asn(1); 70]),
    ];
    for f in bad {
        let err = m
            .acquire_proxy(POOL, as_worker().filters(f.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidFilter(_)), "{f:?}: {err:?}");
        let req = AcquireRequest::new(POOL, "worker-1", Duration::from_secs(1))
            .expect("valid names")
            .with_filters(f);
        assert!(matches!(
            m.storage().acquire(&req).await,
            Err(Error::InvalidFilter(_))
        ));
    }
    assert_eq!(leases_of(&m, p.id).await, 0);
}

fn corrupt(p: &Proxy, f: impl FnOnce(&mut Proxy)) -> Proxy {
    let mut p = p.clone();
    p.id = Uuid::new_v4();
    f(&mut p);
    p
}

/// Proxies with invalid fields are rejected with the field named, and not stored.
pub async fn bad_proxy_fields_are_rejected<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let good = proxy(&pool, 1).build().unwrap();
    let cases: Vec<(&str, Proxy)> = vec![
        ("port", corrupt(&good, |p| p.port = 0)),
        ("host", corrupt(&good, |p| p.host = String::new())),
        ("host", corrupt(&good, |p| p.host = "bad host".into())),
        ("host", corrupt(&good, |p| p.host = "-bad.example".into())),
        ("host", corrupt(&good, |p| p.host = "1::2::3".into())),
        (
            "max_concurrency",
            corrupt(&good, |p| p.max_concurrency = Some(0)),
        ),
        (
            "latitude",
            corrupt(&good, |p| {
                p.latitude = Some(95.0);
                p.longitude = Some(0.0)
            }),
        ),
        (
            "longitude",
            corrupt(&good, |p| {
                p.latitude = Some(0.0);
                p.longitude = Some(181.0)
            }),
        ),
        ("longitude", corrupt(&good, |p| p.latitude = Some(1.0))),
        ("latitude", corrupt(&good, |p| p.longitude = Some(1.0))),
        (
            "country",
            corrupt(&good, |p| p.country = Some(String::new())),
        ),
        ("city", corrupt(&good, |p| p.city = Some("x".repeat(300)))),
        (
            "credentials",
            corrupt(&good, |p| {
                p.credentials = Some(crate::proxy::ProxyCredentials::new("", "pw"))
            }),
        ),
        ("pool_id", corrupt(&good, |p| p.pool_id = Uuid::new_v4())),
    ];
    for (field, bad) in cases {
        let err = m.storage().add_proxy(bad.clone()).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidProxy { field: f, .. } if f == field),
            "want {field}: {err:?}"
        );
        assert_eq!(m.storage().get_proxy(bad.id).await.unwrap(), None);
    }
    assert!(matches!(
        Proxy::builder(pool.id, "h.example", 0).build(),
        Err(Error::InvalidProxy { field: "port", .. })
    ));
    assert!(matches!(
        "ftp".parse::<ProxyProtocol>(),
        Err(Error::InvalidProxy {
            field: "protocol",
            ..
        })
    ));
    assert!(matches!(
        "dead".parse::<ProxyStatus>(),
        Err(Error::InvalidProxy {
            field: "status",
            ..
        })
    ));
    let added = m.storage().add_proxy(good.clone()).await.unwrap();
    assert!(matches!(
        m.storage().add_proxy(added).await,
        Err(Error::ProxyAlreadyExists { .. })
    ));
    assert_eq!(stats(&m).await.total_proxies, 1);
}

/// `add_proxies` adds all or nothing.
pub async fn bulk_add_is_all_or_nothing<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let mut batch: Vec<Proxy> = (1..=5).map(|i| proxy(&pool, i).build().unwrap()).collect();
    batch[3].port = 0;
    let err = m.storage().add_proxies(batch.clone()).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidProxy { field: "port", .. }),
        "{err:?}"
    );
    assert!(
        m.storage()
            .list_proxies(&pn(POOL))
            .await
            .unwrap()
            .is_empty(),
        "nothing from a bad batch is stored"
    );
    let mut dup = batch.clone();
    dup[3].port = 8080;
    dup[4].id = dup[0].id;
    assert!(matches!(
        m.storage().add_proxies(dup).await,
        Err(Error::ProxyAlreadyExists { .. })
    ));
    assert!(m
        .storage()
        .list_proxies(&pn(POOL))
        .await
        .unwrap()
        .is_empty());
    batch[3].port = 8080;
    let added = m.storage().add_proxies(batch.clone()).await.unwrap();
    assert_eq!(added.len(), 5);
    let listed: Vec<Uuid> = m
        .storage()
        .list_proxies(&pn(POOL))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(
        listed,
        batch.iter().map(|p| p.id).collect::<Vec<_>>(),
        "listed in insertion order"
    );
}

/// A pool name can only be used once.
pub async fn duplicate_pool_is_rejected<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let err = m
        .storage()
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PoolAlreadyExists { ref name } if name == POOL),
        "{err:?}"
    );
    let pools = m.storage().list_pools().await.unwrap();
    assert_eq!(pools, vec![pool]);
}

/// Fencing tokens strictly increase for a proxy across releases, expiries and
/// cleanups, and are never reused across proxies of a pool.
pub async fn fencing_tokens_strictly_increase<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(2)).await;
    add(&m, proxy(&pool, 2).max_concurrency(2)).await;
    let mut last_for_p = 0;
    let mut seen = HashSet::new();
    let short = h.short_lease();
    for round in 0..3 {
        let a = take_some(&m, as_worker().selector(SelectorStrategy::FirstAvailable)).await;
        let b = take_some(&m, as_worker().selector(SelectorStrategy::FirstAvailable)).await;
        let c = take_some(&m, as_worker().duration(short)).await;
        for l in [&a, &b, &c] {
            assert!(l.fencing_token > 0);
            assert!(
                seen.insert(l.fencing_token),
                "token {} reused",
                l.fencing_token
            );
        }
        assert_eq!((a.proxy_id, b.proxy_id), (p.id, p.id));
        assert!(
            a.fencing_token > last_for_p && b.fencing_token > a.fencing_token,
            "round {round}"
        );
        last_for_p = b.fencing_token;
        m.release_proxy(&a).await.unwrap();
        m.release_proxy(&b).await.unwrap();
        if round == 1 {
            h.advance(m.storage(), short + short / 2).await;
            assert_eq!(m.cleanup_expired_leases().await.unwrap(), 1);
        } else {
            m.release_proxy(&c).await.unwrap();
        }
    }
    let listed = m
        .storage()
        .get_lease(&pn(POOL), take_some(&m, as_worker()).await.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        listed.fencing_token > last_for_p,
        "stored records carry the token"
    );
}

/// `extend` keeps a live lease past its first expiry.
pub async fn extend_renews_a_live_lease<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let short = h.short_lease();
    let lease = take_some(&m, as_worker().duration(short)).await;
    let renewed = m.extend_lease(&lease, short * 4).await.unwrap();
    assert!(renewed.expires_at > lease.expires_at);
    assert_eq!(
        (renewed.id, renewed.fencing_token),
        (lease.id, lease.fencing_token)
    );
    h.advance(m.storage(), short + short / 2).await;
    assert_eq!(
        m.cleanup_expired_leases().await.unwrap(),
        0,
        "renewed: not expired"
    );
    assert_eq!(take(&m, as_worker()).await, None, "still held");
    assert_eq!(leases_of(&m, p.id).await, 1);
    let rec = m
        .storage()
        .get_lease(&pn(POOL), lease.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.expires_at, renewed.expires_at);
    assert_eq!(
        m.release_proxy(&renewed).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert!(matches!(
        m.extend_lease(&lease, std::time::Duration::ZERO).await,
        Err(Error::InvalidDuration { .. })
    ));
}

/// `extend` of a released, expired or unknown lease fails with `LeaseLost`.
pub async fn extend_of_a_lost_lease_fails<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    add(&m, proxy(&pool, 1).max_concurrency(2)).await;
    let short = h.short_lease();
    let released = take_some(&m, as_worker()).await;
    m.release_proxy(&released).await.unwrap();
    let err = m.extend_lease(&released, short).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::LeaseLost {
                reason: crate::error::LostReason::Released,
                ..
            }
        ),
        "{err:?}"
    );
    let expired = take_some(&m, as_worker().duration(short)).await;
    h.advance(m.storage(), short + short / 2).await;
    let err = m.extend_lease(&expired, short).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::LeaseLost {
                reason: crate::error::LostReason::Expired,
                ..
            }
        ),
        "{err:?}"
    );
    let mut unknown = expired.clone();
    unknown.id = Uuid::new_v4();
    assert!(matches!(
        m.extend_lease(&unknown, short).await,
        Err(Error::LeaseLost { .. })
    ));
    // The lost lease's slot comes back once: by the extend (if the storage
    // reclaims there) or by this cleanup.
    assert!(m.cleanup_expired_leases().await.unwrap() <= 1);
    assert_eq!(m.cleanup_expired_leases().await.unwrap(), 0);
    assert_eq!(stats(&m).await.total_leases, 0);
}

/// A holder that paused past its expiry while another worker took the proxy:
/// its extend and release report the loss, and its token is stale.
pub async fn lost_lease_is_reported_and_its_token_is_stale<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let short = h.short_lease();
    let resource = FencingGuard::new();
    let first = take_some(&m, as_worker().duration(short)).await;
    resource.check_lease(&first).unwrap();
    h.advance(m.storage(), short + short / 2).await; // the first holder "pauses"
    let second = take_some(&m, as_worker()).await;
    assert_eq!(second.proxy_id, p.id);
    assert!(second.fencing_token > first.fencing_token);
    resource.check_lease(&second).unwrap();
    // The first holder wakes up.
    assert!(matches!(
        m.extend_lease(&first, short).await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(
        m.release_proxy(&first).await.unwrap(),
        ReleaseOutcome::Expired
    );
    let err = resource.check_lease(&first).unwrap_err();
    assert!(
        matches!(err, Error::StaleFencingToken { token, highest } if token == first.fencing_token && highest == second.fencing_token)
    );
    assert_eq!(
        leases_of(&m, p.id).await,
        1,
        "the second holder keeps its slot"
    );
    assert_eq!(
        m.release_proxy(&second).await.unwrap(),
        ReleaseOutcome::Released
    );
}

/// A proxy with two slots: the multi-slot guard accepts both live holders,
/// although one's token is lower, and refuses a holder once a lease granted
/// after its expiry has been seen; the exclusive guard refuses a live holder.
pub async fn multi_slot_guard_refuses_only_expired_holders<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(2)).await;
    let short = h.short_lease();
    let resource = FencingGuard::multi_slot();
    let exclusive = FencingGuard::new();
    let a = take_some(&m, as_worker().duration(short)).await;
    let b = take_some(&m, as_worker().duration(short * 20)).await;
    assert_eq!((a.proxy_id, b.proxy_id), (p.id, p.id));
    assert!(a.fencing_token < b.fencing_token);
    resource.check_lease(&b).unwrap();
    resource.check_lease(&a).unwrap();
    resource.check_lease(&b).unwrap();
    exclusive.check_lease(&b).unwrap();
    assert!(
        matches!(
            exclusive.check_lease(&a),
            Err(Error::StaleFencingToken { .. })
        ),
        "the exclusive rule turns away a live holder of a multi-slot proxy"
    );
    h.advance(m.storage(), short + short / 2).await; // `a`'s holder "pauses"
    let c = take_some(&m, as_worker()).await;
    assert_eq!(c.proxy_id, p.id, "a's slot serves someone else");
    resource.check_lease(&c).unwrap();
    let err = resource.check_lease(&a).unwrap_err();
    assert!(
        matches!(err, Error::StaleLease { token, expired_at, seen_granted_at }
            if token == a.fencing_token && expired_at == a.expires_at && seen_granted_at == c.acquired_at),
        "{err}"
    );
    resource.check_lease(&b).unwrap();
    resource.check_lease(&c).unwrap();
    assert_eq!(m.release_proxy(&a).await.unwrap(), ReleaseOutcome::Expired);
    for lease in [&b, &c] {
        assert_eq!(
            m.release_proxy(lease).await.unwrap(),
            ReleaseOutcome::Released
        );
    }
}

/// A request id lives exactly as long as its lease's record, renewals included:
/// past the original expiry plus the record grace, a retry of a renewed lease's
/// request returns that lease (same id and token, no second slot), while the id
/// of a lease that was not renewed is forgotten with its record (the retry gets
/// a new lease).
pub async fn request_id_lives_as_long_as_its_lease_record<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(3)).await;
    let short = h.short_lease();
    // Past the original expiry plus the grace, with room to spare.
    let past = short + h.record_grace() + short / 2;
    let renewed_request = || as_worker().duration(short).request_id("job-7/renewed");
    let forgotten_request = || as_worker().duration(short).request_id("job-8/expired");
    let first = take_some(&m, renewed_request()).await;
    let other = take_some(&m, forgotten_request()).await;
    let renewed = m.extend_lease(&first, past * 2).await.unwrap();
    h.advance(m.storage(), past).await;
    let again = take_some(&m, renewed_request()).await;
    assert_eq!(
        (again.id, again.fencing_token, again.status),
        (first.id, first.fencing_token, LeaseStatus::Active),
        "a retry of a renewed lease's request returns that lease"
    );
    assert_eq!(again.expires_at, renewed.expires_at);
    assert_eq!(
        leases_of(&m, p.id).await,
        1,
        "the retry took no second slot"
    );
    let new = take_some(&m, forgotten_request()).await;
    assert_ne!(
        new.id, other.id,
        "the id of a lease whose record is gone is forgotten with it"
    );
    assert_eq!(leases_of(&m, p.id).await, 2);
    assert_eq!(
        m.release_proxy(&again).await.unwrap(),
        ReleaseOutcome::Released
    );
    let after = take_some(&m, renewed_request()).await;
    assert_eq!(
        (after.id, after.status),
        (first.id, LeaseStatus::Released),
        "released, the record (and the id) stay for the grace"
    );
    assert_eq!(leases_of(&m, p.id).await, 1);
}

/// A retry with the same request id returns the same lease, not a second one.
pub async fn idempotent_acquire_returns_the_same_lease<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(3)).await;
    let first = take_some(&m, as_worker().request_id("job-42/attempt")).await;
    let retry = take_some(&m, as_worker().request_id("job-42/attempt")).await;
    assert_eq!(
        (retry.id, retry.fencing_token, &retry.proxy),
        (first.id, first.fencing_token, &first.proxy)
    );
    assert_eq!(
        leases_of(&m, p.id).await,
        1,
        "the retry took no second slot"
    );
    let other = take_some(&m, as_worker().request_id("job-43")).await;
    assert_ne!(other.id, first.id);
    assert_eq!(leases_of(&m, p.id).await, 2);
    m.release_proxy(&first).await.unwrap();
    let after = take_some(&m, as_worker().request_id("job-42/attempt")).await;
    assert_eq!(after.id, first.id, "still the same lease, now released");
    assert_eq!(after.status, LeaseStatus::Released);
    assert_eq!(leases_of(&m, p.id).await, 1);
    for bad in ["", "a\nb"] {
        let err = m
            .acquire_proxy(POOL, as_worker().request_id(bad))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err:?}");
    }
    let long = "r".repeat(crate::storage::MAX_REQUEST_ID_LEN + 1);
    assert!(matches!(
        m.acquire_proxy(POOL, as_worker().request_id(long)).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(leases_of(&m, p.id).await, 1);
}

fn rest(h: &impl Harness) -> crate::cooldown::CooldownPolicy {
    crate::cooldown::CooldownPolicy::default()
        .base(h.short_lease())
        .cap(h.short_lease() * 3)
        .jitter(0.0)
        .ban_after(None)
}

async fn with_policy<H: Harness>(
    h: &H,
    policy: crate::cooldown::CooldownPolicy,
) -> (ProxyManager<H::Storage>, ProxyPool) {
    let (m, pool) = setup(h).await;
    let m = ProxyManager::builder_from_arc(m.storage_arc())
        .cooldown_policy(policy)
        .build();
    (m, pool)
}

/// A reported failure rests the proxy: it is not leased until its cooldown is
/// over, then it comes back by itself.
pub async fn failure_cools_a_proxy_down_until_it_returns<H: Harness>(h: &H) {
    let (m, pool) = with_policy(h, rest(h)).await;
    let p = add(&m, proxy(&pool, 1).max_concurrency(2)).await;
    let lease = take_some(&m, as_worker()).await;
    let cooled = m.report_failure(&lease, "403 from target").await.unwrap();
    assert_eq!(cooled.consecutive_failures, 1);
    assert_eq!(cooled.last_failure.as_deref(), Some("403 from target"));
    let until = cooled.cooldown_until.expect("cooling down");
    assert!(until > lease.acquired_at);
    for selector in SelectorStrategy::ALL {
        assert_eq!(
            take(&m, as_worker().selector(selector)).await,
            None,
            "{selector} leased a cooling proxy"
        );
    }
    assert_eq!(stats(&m).await.available_proxies, 0);
    assert_eq!(
        m.release_proxy(&lease).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(
        take(&m, as_worker()).await,
        None,
        "a release does not end the cooldown"
    );
    h.advance(m.storage(), h.short_lease() + h.short_lease() / 2)
        .await;
    let back = take_some(&m, as_worker()).await;
    assert_eq!(back.proxy_id, p.id);
    let now = m.storage().get_proxy(p.id).await.unwrap().unwrap();
    assert_eq!((now.cooldown_until, now.consecutive_failures), (None, 1));
    assert_eq!(stats(&m).await.available_proxies, 1);
}

/// One cooldown rule: with jitter drawn from a fixed seed, every failure in a
/// row cools the proxy for exactly `CooldownPolicy::delay_ms(n, draw_keep(id))`
/// of storage time, on every storage (so both storages agree to the ms; the
/// reports are bracketed by leases whose grant times are storage time).
pub async fn cooldown_delay_is_the_policys_on_every_storage<H: Harness>(h: &H) {
    let policy = crate::cooldown::CooldownPolicy::default()
        .base(Duration::from_millis(1_000))
        .cap(Duration::from_millis(6_000))
        .jitter(0.5)
        .jitter_seed(42)
        .ban_after(None);
    let (m, pool) = with_policy(h, policy.clone()).await;
    let p = add(&m, proxy(&pool, 1)).await;
    add(&m, proxy(&pool, 2).max_concurrency(100)).await; // a clock to read
    let keep = policy.draw_keep(p.id);
    assert_eq!(keep, policy.draw_keep(p.id), "a seeded draw is stable");
    assert!(
        keep < crate::cooldown::KEEP_ALL,
        "the seed takes some jitter off"
    );
    for n in 1..=4u32 {
        let before = take_some(&m, as_worker()).await;
        let until = m
            .report_failure(&p, "timeout")
            .await
            .unwrap()
            .cooldown_until
            .expect("cooling down");
        let after = take_some(&m, as_worker()).await;
        for lease in [&before, &after] {
            m.release_proxy(lease).await.unwrap();
        }
        let want = chrono::Duration::milliseconds(policy.delay_ms(n, keep) as i64);
        assert!(
            until >= before.acquired_at + want && until <= after.acquired_at + want,
            "failure {n}: cooled until {until}, want {want} after a time in {}..={}",
            before.acquired_at,
            after.acquired_at
        );
    }
    // 1 s, 2 s, 4 s, then the 6 s cap, each with the same share kept.
    assert_eq!(
        (1..=4)
            .map(|n| policy.delay_ms(n, 1_000_000))
            .collect::<Vec<_>>(),
        [1_000, 2_000, 4_000, 6_000]
    );
}

/// Each failure in a row doubles the cooldown, up to the cap.
pub async fn cooldown_backs_off_exponentially_to_its_cap<H: Harness>(h: &H) {
    let (m, pool) = with_policy(h, rest(h)).await;
    let p = add(&m, proxy(&pool, 1)).await;
    let mut until = Vec::new();
    for _ in 0..4 {
        until.push(
            m.report_failure(&p, "timeout")
                .await
                .unwrap()
                .cooldown_until
                .unwrap(),
        );
    }
    let short = chrono::Duration::from_std(h.short_lease()).unwrap();
    let tolerance = chrono::Duration::milliseconds(150);
    let near = |got: chrono::Duration, want: chrono::Duration| (got - want).abs() <= tolerance;
    // Cooldowns base, 2 base, 3 base (cap), 3 base: compare their ends.
    assert!(
        near(until[1] - until[0], short),
        "{:?}",
        until[1] - until[0]
    );
    assert!(
        near(until[2] - until[0], short * 2),
        "{:?}",
        until[2] - until[0]
    );
    assert!(
        near(until[3] - until[2], chrono::Duration::zero()),
        "capped: {:?}",
        until[3] - until[2]
    );
    assert_eq!(
        m.storage()
            .get_proxy(p.id)
            .await
            .unwrap()
            .unwrap()
            .consecutive_failures,
        4
    );
}

/// Failures in a row ban a proxy; a success in between resets the count.
pub async fn failures_in_a_row_ban_a_proxy_and_success_resets<H: Harness>(h: &H) {
    let (m, pool) = with_policy(h, rest(h).ban_after(Some(3))).await;
    let p = add(&m, proxy(&pool, 1)).await;
    m.report_failure(&p, "captcha").await.unwrap();
    m.report_failure(&p, "captcha").await.unwrap();
    let ok = m.report_success(&p.id).await.unwrap();
    assert_eq!(
        (ok.consecutive_failures, ok.cooldown_until),
        (0, None),
        "success resets and lifts"
    );
    assert!(
        take(&m, as_worker()).await.is_some(),
        "back in service at once"
    );
    m.report_failure(&p, "captcha").await.unwrap();
    let second = m.report_failure(&p, "captcha").await.unwrap();
    assert_eq!(
        (second.status, second.consecutive_failures),
        (ProxyStatus::Active, 2)
    );
    let banned = m.report_failure(&p, "403 forbidden").await.unwrap();
    assert_eq!(banned.status, ProxyStatus::Banned);
    assert_eq!(banned.cooldown_until, None);
    assert_eq!(banned.last_failure.as_deref(), Some("403 forbidden"));
    h.advance(m.storage(), h.short_lease() * 4).await;
    assert_eq!(
        take(&m, as_worker()).await,
        None,
        "banned proxies never come back by themselves"
    );
    assert_eq!(stats(&m).await.active_proxies, 0);
}

/// The stats count the banned proxies however they got there (failures in a
/// row at the ban threshold, the status API, an update, an add) and count them
/// out when they leave (removed, or their status set again), and the proxies
/// cooling down until their cooldown is over on the storage's clock.
pub async fn pool_stats_count_cooling_and_banned<H: Harness>(h: &H) {
    // Long enough that no cooldown ends by itself while the steps run.
    let cool = h.short_lease() * 5;
    let policy = crate::cooldown::CooldownPolicy::default()
        .base(cool)
        .cap(cool * 3)
        .jitter(0.0)
        .ban_after(Some(3));
    let (m, pool) = with_policy(h, policy).await;
    let a = add(&m, proxy(&pool, 1)).await;
    let b = add(&m, proxy(&pool, 2)).await;
    let c = add(&m, proxy(&pool, 3)).await;
    let d = add(&m, proxy(&pool, 4)).await;
    // (cooling, banned, total, active)
    async fn counts<S: Storage>(m: &ProxyManager<S>) -> (u64, u64, u64, u64) {
        let s = stats(m).await;
        (
            s.cooling_proxies,
            s.banned_proxies,
            s.total_proxies,
            s.active_proxies,
        )
    }
    assert_eq!(counts(&m).await, (0, 0, 4, 4));

    m.report_failure(&a, "captcha").await.unwrap();
    assert_eq!(counts(&m).await, (1, 0, 4, 4), "a failure cools a down");
    m.report_failure(&a, "captcha").await.unwrap();
    assert_eq!(counts(&m).await, (1, 0, 4, 4), "a second one too");
    let banned = m.report_failure(&a, "403 forbidden").await.unwrap();
    assert_eq!(banned.status, ProxyStatus::Banned);
    assert_eq!(
        counts(&m).await,
        (0, 1, 4, 3),
        "the third bans a, which ends its cooldown"
    );

    m.storage()
        .set_proxy_status(c.id, ProxyStatus::Banned)
        .await
        .unwrap();
    assert_eq!(counts(&m).await, (0, 2, 4, 2), "c banned by the status API");
    m.storage()
        .set_proxy_status(c.id, ProxyStatus::Banned)
        .await
        .unwrap();
    assert_eq!(counts(&m).await, (0, 2, 4, 2), "banned twice counts once");
    let mut d_banned = d.clone();
    d_banned.status = ProxyStatus::Banned;
    m.storage().update_proxy(d_banned).await.unwrap();
    assert_eq!(counts(&m).await, (0, 3, 4, 1), "d banned by an update");
    let e = add(&m, proxy(&pool, 5).status(ProxyStatus::Banned)).await;
    assert_eq!(counts(&m).await, (0, 4, 5, 1), "e added banned");

    assert!(m.storage().remove_proxy(a.id).await.unwrap());
    assert_eq!(counts(&m).await, (0, 3, 4, 1), "a banned proxy removed");
    m.storage()
        .set_proxy_status(c.id, ProxyStatus::Inactive)
        .await
        .unwrap();
    assert_eq!(counts(&m).await, (0, 2, 4, 1), "c no longer banned");
    m.storage().update_proxy(d).await.unwrap();
    assert_eq!(
        counts(&m).await,
        (0, 1, 4, 2),
        "d active again by an update"
    );
    assert!(m.storage().remove_proxy(e.id).await.unwrap());
    assert_eq!(counts(&m).await, (0, 0, 3, 2));

    let cooled = m.report_failure(&b, "timeout").await.unwrap();
    assert!(cooled.cooldown_until.is_some());
    assert_eq!(counts(&m).await, (1, 0, 3, 2), "b cooling down");
    m.storage()
        .set_proxy_status(b.id, ProxyStatus::Banned)
        .await
        .unwrap();
    assert_eq!(
        counts(&m).await,
        (1, 1, 3, 1),
        "banned while cooling: counted in both until the cooldown is over"
    );
    h.advance(m.storage(), cool + h.short_lease()).await;
    assert_eq!(
        counts(&m).await,
        (0, 1, 3, 1),
        "the cooldown is over on the storage's clock"
    );
    m.storage()
        .set_proxy_status(b.id, ProxyStatus::Active)
        .await
        .unwrap();
    let s = stats(&m).await;
    assert_eq!(counts(&m).await, (0, 0, 3, 2));
    assert_eq!(s.available_proxies, 2, "b and d; c is inactive");
}

/// Reports on unknown proxies, with a bad policy or a bad reason, are errors
/// that change nothing.
pub async fn bad_reports_are_rejected<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let p = add(&m, proxy(&pool, 1)).await;
    assert!(matches!(
        m.report_failure(&Uuid::new_v4(), "x").await,
        Err(Error::ProxyNotFound { .. })
    ));
    assert!(matches!(
        m.report_success(&Uuid::new_v4()).await,
        Err(Error::ProxyNotFound { .. })
    ));
    let bad = crate::cooldown::CooldownPolicy::default().jitter(2.0);
    assert!(matches!(
        m.storage().report_failure(p.id, "x", &bad).await,
        Err(Error::InvalidArgument(_))
    ));
    let ok = crate::cooldown::CooldownPolicy::default();
    assert!(matches!(
        m.storage().report_failure(p.id, "a\u{7}b", &ok).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        m.storage()
            .report_failure(p.id, &"x".repeat(300), &ok)
            .await,
        Err(Error::InvalidArgument(_))
    ));
    let stored = m.storage().get_proxy(p.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.consecutive_failures, stored.cooldown_until),
        (0, None)
    );
    assert!(take(&m, as_worker()).await.is_some());
}

/// A waiting acquire is woken by a release, well before any poll would run.
pub async fn waiting_acquire_is_woken_by_a_release<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let held = take_some(&m, as_worker().duration_seconds(3600)).await;
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move {
            let got = m
                .acquire_proxy_wait(POOL, as_worker(), std::time::Duration::from_secs(20))
                .await
                .unwrap();
            (got, std::time::Instant::now())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "nothing is free yet");
    let released_at = std::time::Instant::now();
    m.release_proxy(&held).await.unwrap();
    let (got, woke_at) = waiter.await.unwrap();
    let lease = got.expect("the freed proxy");
    assert_eq!(lease.proxy_id, held.proxy_id);
    // The next expiry is an hour away and the safety poll 5 s: only the release
    // notification explains a wake-up this soon.
    let delay = woke_at - released_at;
    assert!(
        delay < std::time::Duration::from_millis(1000),
        "woken {delay:?} after the release"
    );
}

/// A waiting acquire gives up at its timeout with `Ok(None)`.
pub async fn waiting_acquire_gives_up_at_its_timeout<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let _held = take_some(&m, as_worker().duration_seconds(3600)).await;
    let started = std::time::Instant::now();
    let got = m
        .acquire_proxy_wait(POOL, as_worker(), std::time::Duration::from_millis(300))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(got, None);
    assert!(
        took >= std::time::Duration::from_millis(300),
        "gave up early: {took:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(3),
        "gave up late: {took:?}"
    );
    assert!(matches!(
        m.acquire_proxy_wait(
            "no-such-pool",
            as_worker(),
            std::time::Duration::from_millis(10)
        )
        .await,
        Err(Error::PoolNotFound { .. })
    ));
}

/// Releases `held`, then each lease a waiter reports on `rx` in turn, `n`
/// times: the waiters' names in the order they were served.
async fn release_in_turn<S: Storage>(
    m: &ProxyManager<S>,
    mut held: Lease,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(&'static str, Lease)>,
    n: usize,
) -> Vec<&'static str> {
    let mut order = Vec::new();
    for _ in 0..n {
        m.release_proxy(&held).await.unwrap();
        let (name, lease) = rx.recv().await.unwrap();
        order.push(name);
        held = lease;
    }
    order
}

/// Waiters in one manager are served in the order they started waiting.
pub async fn waiting_acquires_are_served_in_fifo_order<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let held = take_some(&m, as_worker().duration_seconds(3600)).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for name in ["first", "second", "third"] {
        let (m, tx) = (m.clone(), tx.clone());
        tokio::spawn(async move {
            let lease = m
                .acquire_proxy_wait(
                    POOL,
                    as_worker().duration_seconds(3600),
                    std::time::Duration::from_secs(30),
                )
                .await
                .unwrap()
                .expect("served before the timeout");
            let _ = tx.send((name, lease));
        });
        // Let it queue before the next one starts.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        release_in_turn(&m, held, &mut rx, 3).await,
        ["first", "second", "third"]
    );
}

/// A manager with `rest(h)` cooldowns over a pool that keeps the success
/// order with this scoring, and `n` proxies of max 1 (ids in order added).
async fn scored<H: Harness>(
    h: &H,
    n: u8,
    scoring: crate::success::SuccessScoring,
) -> (ProxyManager<H::Storage>, Vec<Uuid>) {
    let m = ProxyManager::builder(h.storage().await)
        .cooldown_policy(rest(h))
        .build();
    let pool = ProxyPool::new(POOL)
        .expect("valid pool name")
        .with_indexes(suite_indexes().order(IndexOrder::Success))
        .with_success_scoring(scoring);
    let pool = m.storage().create_pool(pool).await.expect("create_pool");
    let stored = m.storage().get_pool(&pn(POOL)).await.unwrap().unwrap();
    assert_eq!(
        stored.success_scoring, scoring,
        "the pool keeps its scoring"
    );
    assert!(stored.indexes.has_order(IndexOrder::Success));
    m.storage().ensure_consumer(&cn("worker-1")).await.unwrap();
    let mut ids = Vec::new();
    for i in 1..=n {
        ids.push(add(&m, proxy(&pool, i).max_concurrency(1)).await.id);
    }
    (m, ids)
}

/// Scoring that always picks the best (no exploration), whose scores do
/// not decay within a test (a half-life of 7 days).
fn never_explore() -> crate::success::SuccessScoring {
    crate::success::SuccessScoring::new(Duration::from_secs(7 * 24 * 3600), 0.0)
        .expect("good scoring")
}

async fn scores<S: Storage>(m: &ProxyManager<S>) -> Vec<crate::success::SuccessScore> {
    m.storage()
        .success_scores(&pn(POOL))
        .await
        .expect("success_scores")
}

/// `best_success` picks the available proxy with the best score,
/// `(successes + 1) / (reports + 2)` (never reported: 1/2); a report moves a
/// proxy in the order whether it is available, held to its limit, or
/// cooling; `success_scores` lists the scores, best first.
pub async fn best_success_picks_the_best_scoring_proxy<H: Harness>(h: &H) {
    let (m, ids) = scored(h, 4, never_explore()).await;
    let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
    m.report_success(&a).await.unwrap(); // 2/3
    for _ in 0..3 {
        m.report_success(&b).await.unwrap(); // 4/5
    }
    m.report_failure(&d, "timeout").await.unwrap(); // 1/3, cooling
    h.advance(m.storage(), h.short_lease() + h.short_lease() / 2)
        .await;
    let best = || as_worker().selector(SelectorStrategy::BestSuccess);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(take_some(&m, best()).await);
    }
    let order: Vec<Uuid> = held.iter().map(|l| l.proxy_id).collect();
    assert_eq!(
        order,
        vec![b, a, c, d],
        "best first, never reported (c) at 1/2"
    );
    assert_eq!(take(&m, best()).await, None, "every proxy is full");
    let listed = scores(&m).await;
    let by: Vec<Uuid> = listed.iter().map(|s| s.proxy_id).collect();
    assert_eq!(by, vec![b, a, d], "reported proxies, best first");
    let near = |x: f64, y: f64| (x - y).abs() < 1e-4;
    assert!(near(listed[0].score, 0.8) && near(listed[0].successes, 3.0));
    assert!(near(listed[0].reports, 3.0));
    assert!(near(listed[1].score, 2.0 / 3.0) && near(listed[2].score, 1.0 / 3.0));
    for l in held {
        m.release_proxy(&l).await.unwrap();
    }
    // An available proxy moves: c passes b.
    for _ in 0..4 {
        m.report_success(&c).await.unwrap(); // 5/6
    }
    let lc = take_some(&m, best()).await;
    assert_eq!(lc.proxy_id, c, "c (5/6) passed b (4/5)");
    let lb = take_some(&m, best()).await;
    assert_eq!(lb.proxy_id, b);
    // A held proxy is out of the order; reports count, and it comes back
    // with its new score.
    for _ in 0..4 {
        m.report_success(&b).await.unwrap(); // 8/9
    }
    m.release_proxy(&lb).await.unwrap();
    m.release_proxy(&lc).await.unwrap();
    let lb = take_some(&m, best()).await;
    assert_eq!(lb.proxy_id, b, "b came back at 8/9, ahead of c (5/6)");
    // A failure cools it down, and it comes back below c.
    m.release_proxy(&lb).await.unwrap();
    m.report_failure(&b, "403").await.unwrap(); // 8/10
    h.advance(m.storage(), h.short_lease() + h.short_lease() / 2)
        .await;
    assert_eq!(
        take_some(&m, best()).await.proxy_id,
        c,
        "b (4/5) below c (5/6)"
    );
    assert_eq!(take_some(&m, best()).await.proxy_id, b);
}

/// A report's weight halves every half-life; scores belong to pools that
/// keep the success order (`best_success` elsewhere is an error naming it);
/// a removed proxy's score goes with it; the scoring is fixed at creation;
/// an exploration share of 1 picks at random.
pub async fn success_scores_decay_and_belong_to_the_success_order<H: Harness>(h: &H) {
    let half = h.short_lease() * 2;
    let scoring = crate::success::SuccessScoring::new(half, 0.0).expect("good scoring");
    let (m, ids) = scored(h, 3, scoring).await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    m.report_success(&ids[0]).await.unwrap();
    h.advance(m.storage(), half).await;
    m.report_failure(&ids[0], "timeout").await.unwrap();
    let s = scores(&m).await;
    assert_eq!(s.len(), 1);
    // Exactly 0.5 and 1.5 on a clock that moves by `half`; a little less
    // where advancing sleeps (the report comes later).
    assert!(
        (0.3..=0.5 + 1e-9).contains(&s[0].successes),
        "the success weighs half after a half-life: {}",
        s[0].successes
    );
    assert!(
        (1.3..=1.5 + 1e-9).contains(&s[0].reports),
        "{}",
        s[0].reports
    );
    let expect = (s[0].successes + 1.0) / (s[0].reports + 2.0);
    assert!((s[0].score - expect).abs() < 1e-12);
    assert!(s[0].updated_at > before);
    assert!(m.storage().remove_proxy(ids[0]).await.unwrap());
    assert!(scores(&m).await.is_empty(), "a removed proxy's score goes");
    let stored = m.storage().get_pool(&pn(POOL)).await.unwrap().unwrap();
    let mut changed = stored.clone();
    changed.success_scoring = never_explore();
    assert!(
        matches!(
            m.storage().update_pool(changed).await,
            Err(Error::InvalidArgument(_))
        ),
        "the scoring is fixed when the pool is created"
    );

    // Pools without the success order keep no scores.
    let (plain, pool) = setup_with(h, PoolIndexes::default().order(IndexOrder::Latency)).await;
    let p = add(&plain, proxy(&pool, 1)).await;
    plain.report_success(&p.id).await.unwrap();
    assert!(scores(&plain).await.is_empty());
    let err = plain
        .acquire_proxy(POOL, as_worker().selector(SelectorStrategy::BestSuccess))
        .await
        .expect_err("best_success needs the success order");
    assert!(
        matches!(&err, Error::InvalidArgument(msg) if msg.contains("IndexOrder::Success")),
        "{err}"
    );

    // Exploration 1: every best_success acquire picks at random.
    let always = crate::success::SuccessScoring::new(half, 1.0).expect("good scoring");
    let (m, ids) = scored(h, 3, always).await;
    for _ in 0..5 {
        m.report_success(&ids[2]).await.unwrap();
    }
    let mut got = HashSet::new();
    for _ in 0..30 {
        let l = take_some(&m, as_worker().selector(SelectorStrategy::BestSuccess)).await;
        got.insert(l.proxy_id);
        m.release_proxy(&l).await.unwrap();
    }
    assert!(got.len() >= 2, "exploring, not always the best: {got:?}");
}

/// `lowest_latency` picks the fastest proxy by its last health check; proxies
/// never measured come last.
pub async fn selector_lowest_latency_order<H: Harness>(h: &H) {
    let (m, ids) = three(h, Some(1)).await;
    let measured = |id: Uuid, ms: u64| {
        HealthCheckResult::new(id, ProxyStatus::Active).with_latency(Duration::from_millis(ms))
    };
    m.storage()
        .apply_health_check(&measured(ids[0], 900))
        .await
        .unwrap();
    m.storage()
        .apply_health_check(&measured(ids[2], 40))
        .await
        .unwrap();
    let o = || as_worker().selector(SelectorStrategy::LowestLatency);
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(take_some(&m, o()).await.proxy_id);
    }
    assert_eq!(order, vec![ids[2], ids[0], ids[1]]);
    assert_eq!(take(&m, o()).await, None);
    // A new measurement moves a proxy in the order.
    let (m, ids) = three(h, None).await;
    m.storage()
        .apply_health_check(&measured(ids[0], 500))
        .await
        .unwrap();
    m.storage()
        .apply_health_check(&measured(ids[1], 100))
        .await
        .unwrap();
    assert_eq!(take_some(&m, o()).await.proxy_id, ids[1]);
    m.storage()
        .apply_health_check(&measured(ids[1], 800))
        .await
        .unwrap();
    assert_eq!(take_some(&m, o()).await.proxy_id, ids[0]);
    // A failed check (no latency) keeps the last measurement.
    m.storage()
        .apply_health_check(&HealthCheckResult::new(ids[0], ProxyStatus::Active))
        .await
        .unwrap();
    assert_eq!(
        m.storage()
            .get_proxy(ids[0])
            .await
            .unwrap()
            .unwrap()
            .latency_ms,
        Some(500)
    );
}

/// `rotate_proxy` gives the lease back and acquires the next one in one step:
/// the outcome and the new lease, which may be the proxy just given back; a
/// lease already released is reported so and a lease is still acquired; bad
/// input fails before anything is released.
pub async fn rotate_releases_then_acquires<H: Harness>(h: &H) {
    let (m, ids) = three(h, Some(1)).await;
    let first = take_some(&m, as_worker()).await;
    assert_eq!(first.proxy_id, ids[0]);
    let r = m.rotate_proxy(&first, as_worker()).await.unwrap();
    assert_eq!(r.released, ReleaseOutcome::Released);
    let second = r.next.expect("a proxy is free");
    assert_eq!(
        second.proxy_id, ids[0],
        "least_used takes the proxy given back"
    );
    assert!(second.fencing_token > first.fencing_token);
    assert_eq!(leases_of(&m, ids[0]).await, 1);
    // The old lease again: already released, and a second proxy is leased.
    let r = m.rotate_proxy(&first, as_worker()).await.unwrap();
    assert_eq!(r.released, ReleaseOutcome::AlreadyReleased);
    assert_eq!(r.next.expect("two proxies are free").proxy_id, ids[1]);
    // Filters and selectors of the next lease are the caller's.
    let r = m
        .rotate_proxy(
            &second,
            as_worker().selector(SelectorStrategy::FirstAvailable),
        )
        .await
        .unwrap();
    assert_eq!(r.released, ReleaseOutcome::Released);
    let third = r.next.unwrap();
    assert_eq!(third.proxy_id, ids[0]);
    // Nothing free (every proxy held) gives the release and no lease.
    let held = take_some(&m, as_worker()).await;
    assert_eq!(held.proxy_id, ids[2]);
    let bad = m
        .rotate_proxy(&third, as_worker().duration(Duration::ZERO))
        .await;
    assert!(matches!(bad, Err(Error::InvalidDuration { .. })), "{bad:?}");
    assert_eq!(leases_of(&m, ids[0]).await, 1, "bad input released nothing");
    let s = stats(&m).await;
    assert_eq!((s.total_leases, s.available_proxies), (3, 0), "{s:?}");
    // Rotating with a filter nothing matches: released, and no lease.
    let r = m
        .rotate_proxy(
            &third,
            as_worker().filters(ProxyFilters::new().country("ZZ")),
        )
        .await
        .unwrap();
    assert_eq!(r.released, ReleaseOutcome::Released);
    assert_eq!(r.next, None);
    assert_eq!(stats(&m).await.total_leases, 2);
}

/// A pool keeps the indexes it was created with; they cannot change later, and
/// `lowest_latency` on a pool without the latency order is a clear error that
/// writes nothing, also when rotating: the lease given is not released.
pub async fn pools_keep_their_declared_indexes<H: Harness>(h: &H) {
    let indexes = PoolIndexes::new()
        .attribute(IndexedAttribute::City)
        .attribute(IndexedAttribute::Asn)
        .order(IndexOrder::Sequence);
    let (m, pool) = setup_with(h, indexes.clone()).await;
    let stored = m.storage().get_pool(&pn(POOL)).await.unwrap().unwrap();
    assert_eq!(stored.indexes, indexes);
    let mut changed = stored.clone();
    changed.indexes = PoolIndexes::default();
    assert!(matches!(
        m.storage().update_pool(changed).await,
        Err(Error::InvalidArgument(_))
    ));
    add(&m, proxy(&pool, 1)).await;
    let err = m
        .acquire_proxy(POOL, as_worker().selector(SelectorStrategy::LowestLatency))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(msg) if msg.contains("latency")),
        "{err}"
    );
    assert_eq!(stats(&m).await.total_leases, 0);
    let lease = take_some(&m, as_worker()).await;
    let err = m
        .rotate_proxy(
            &lease,
            as_worker().selector(SelectorStrategy::LowestLatency),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(msg) if msg.contains("latency")),
        "{err}"
    );
    assert_eq!(stats(&m).await.total_leases, 1, "the lease was kept");
    assert_eq!(
        m.release_proxy(&lease).await.unwrap(),
        ReleaseOutcome::Released
    );
}

/// Filters on attributes the pool does not index, and selectors whose order it
/// does not keep, still pick exactly what they would on a pool that indexes
/// everything.
pub async fn undeclared_indexes_select_the_same<H: Harness>(h: &H) {
    for indexes in [PoolIndexes::new(), PoolIndexes::all()] {
        let (m, pool) = setup_with(h, indexes.clone()).await;
        let mut ids = Vec::new();
        for (i, (country, city)) in [
            ("AR", "Córdoba"),
            ("CL", "Santiago"),
            ("AR", "Rosario"),
            ("AR", "Córdoba"),
        ]
        .into_iter()
        .enumerate()
        {
            let p = proxy(&pool, u8::try_from(i + 1).unwrap())
                .max_concurrency(3)
                .country(country)
                .city(city)
                .asn(7303 + u32::try_from(i % 2).unwrap());
            ids.push(add(&m, p).await.id);
        }
        let pick = |f: ProxyFilters, s: SelectorStrategy| as_worker().filters(f).selector(s);
        // Uneven counts: 2, 0, 1, 0 leases.
        for id in [ids[0], ids[0], ids[2]] {
            let l = take_some(
                &m,
                pick(
                    ProxyFilters::new().city(if id == ids[0] { "Córdoba" } else { "Rosario" }),
                    SelectorStrategy::FirstAvailable,
                ),
            )
            .await;
            assert_eq!(l.proxy_id, id, "{indexes:?}");
        }
        let city = ProxyFilters::new().city("Córdoba");
        let l = take_some(&m, pick(city.clone(), SelectorStrategy::LeastUsed)).await;
        assert_eq!(l.proxy_id, ids[3], "least used Córdoba, {indexes:?}");
        let l = take_some(&m, pick(city, SelectorStrategy::FirstAvailable)).await;
        assert_eq!(
            l.proxy_id, ids[0],
            "first Córdoba with a free slot, {indexes:?}"
        );
        let ar = ProxyFilters::new()
            .country("AR")
            .none_of([ProxyFilters::new().asn(7304)]);
        let l = take_some(&m, pick(ar, SelectorStrategy::LeastUsed)).await;
        assert_eq!(
            l.proxy_id, ids[2],
            "AR, ASN 7303, fewest leases: {indexes:?}"
        );
        // Round robin starts at the first proxy with a free slot (the first is full).
        let l = take_some(&m, pick(ProxyFilters::new(), SelectorStrategy::RoundRobin)).await;
        assert_eq!(l.proxy_id, ids[1], "{indexes:?}");
        let l = take_some(&m, pick(ProxyFilters::new(), SelectorStrategy::RoundRobin)).await;
        assert_eq!(l.proxy_id, ids[2], "{indexes:?}");
        let s = stats(&m).await;
        assert_eq!(s.total_leases, 8, "{indexes:?}: {s:?}");
        assert_eq!(s.available_proxies, 2, "{indexes:?}: {s:?}");
        m.storage().remove_pool(&pn(POOL)).await.unwrap();
    }
}

fn in_session(id: &str) -> AcquireOptions {
    as_worker().session(id)
}

async fn session_of<S: Storage>(
    m: &ProxyManager<S>,
    id: &str,
) -> Option<crate::session::SessionBinding> {
    m.storage().session(&pn(POOL), id).await.expect("session")
}

/// A sticky session gets the proxy it had last while that proxy has a free
/// slot, even when least_used would pick another; other sessions and plain
/// acquires select as usual; a rotate in the session stays on its proxy.
pub async fn sticky_session_keeps_its_proxy<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(3)).await;
    let y = add(&m, proxy(&pool, 2).max_concurrency(3)).await;
    assert_eq!(session_of(&m, "cart-42").await, None, "no session yet");
    let first = take_some(&m, in_session("cart-42")).await;
    assert_eq!(first.proxy_id, x.id, "least_used, ties by seq");
    let bound = session_of(&m, "cart-42")
        .await
        .expect("the session keeps a proxy");
    assert_eq!(bound.proxy_id, x.id);
    let off = (bound.until - first.expires_at).num_milliseconds().abs();
    assert!(
        off < 2_000,
        "the session lasts as long as its lease by default ({off} ms apart)"
    );
    assert!(matches!(
        m.storage().session(&pn("no-such-pool"), "cart-42").await,
        Err(Error::PoolNotFound { .. })
    ));
    let again = take_some(&m, in_session("cart-42")).await;
    assert_eq!(
        again.proxy_id, x.id,
        "the session keeps its proxy though least_used would pick the idle one"
    );
    let other = take_some(&m, in_session("cart-43")).await;
    assert_eq!(other.proxy_id, y.id, "another session selects as usual");
    let plain = take_some(&m, as_worker()).await;
    assert_eq!(plain.proxy_id, y.id, "a plain acquire ignores sessions");
    let rotated = m
        .rotate_proxy(&again, in_session("cart-42"))
        .await
        .expect("rotate_proxy");
    assert_eq!(rotated.released, ReleaseOutcome::Released);
    let next = rotated.next.expect("a lease");
    assert_eq!(
        next.proxy_id, x.id,
        "rotating in the session keeps its proxy"
    );
    assert_eq!(leases_of(&m, x.id).await, 2);
    assert_eq!(leases_of(&m, y.id).await, 2);
}

/// A session whose proxy cannot serve the acquire (full, cooling down, or not
/// matching its filters) gets another proxy, and keeps that one from then on.
pub async fn sticky_session_moves_when_its_proxy_cannot_serve<H: Harness>(h: &H) {
    let (m, pool) = with_policy(h, rest(h)).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(1).country("AR")).await;
    let y = add(&m, proxy(&pool, 2).max_concurrency(3).country("BR")).await;
    let z = add(&m, proxy(&pool, 3).max_concurrency(3).country("BR")).await;
    let a = take_some(&m, in_session("s")).await;
    assert_eq!(a.proxy_id, x.id);
    let b = take_some(&m, in_session("s")).await;
    assert_eq!(b.proxy_id, y.id, "its proxy is full: the session moves");
    m.release_proxy(&a).await.unwrap();
    let c = take_some(&m, in_session("s")).await;
    assert_eq!(
        c.proxy_id, y.id,
        "it stays where it moved, though x is free again"
    );
    m.report_failure(&c, "429 from target").await.unwrap();
    let d = take_some(&m, in_session("s")).await;
    assert_eq!(d.proxy_id, x.id, "its proxy cools down: the session moves");
    let e = take_some(
        &m,
        in_session("s").filters(ProxyFilters::new().country("BR")),
    )
    .await;
    assert_eq!(
        e.proxy_id, z.id,
        "its proxy does not match the filter (and y cools): the session moves"
    );
    let f = take_some(&m, in_session("s")).await;
    assert_eq!(f.proxy_id, z.id);
}

/// A session keeps its proxy for its TTL after its last acquire (on the
/// storage's clock), then selects afresh.
pub async fn sticky_session_ends_after_its_ttl<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(3)).await;
    let y = add(&m, proxy(&pool, 2).max_concurrency(3)).await;
    let short = crate::session::StickySession::new("login-7").with_ttl(h.short_lease());
    let first = take_some(&m, as_worker().session(short.clone())).await;
    assert_eq!(first.proxy_id, x.id);
    let held = take_some(&m, as_worker().session(short.clone())).await;
    assert_eq!(held.proxy_id, x.id, "within its TTL the session keeps x");
    h.advance(m.storage(), h.short_lease() + h.short_lease() / 2)
        .await;
    assert_eq!(session_of(&m, "login-7").await, None, "ended");
    let after = take_some(&m, as_worker().session(short)).await;
    assert_eq!(
        after.proxy_id, y.id,
        "the session ended: least_used picks the idle proxy"
    );
    let again = take_some(&m, in_session("login-7")).await;
    assert_eq!(again.proxy_id, y.id, "and the session now keeps y");
}

/// A bad session (empty, a control character, too long, a TTL of zero) is an
/// InvalidArgument, and writes nothing.
pub async fn bad_sessions_are_rejected<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(3)).await;
    let long = "s".repeat(crate::session::MAX_SESSION_ID_LEN + 1);
    let bad = [
        crate::session::StickySession::new(""),
        crate::session::StickySession::new("a\nb"),
        crate::session::StickySession::new(long),
        crate::session::StickySession::new("ok").with_ttl(Duration::ZERO),
    ];
    for session in bad {
        let err = m
            .acquire_proxy(POOL, as_worker().session(session.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_)),
            "{session:?}: {err:?}"
        );
    }
    assert_eq!(leases_of(&m, x.id).await, 0, "nothing was leased");
    assert!(matches!(
        m.storage().session(&pn(POOL), "").await,
        Err(Error::InvalidArgument(_))
    ));
    let ok = take_some(
        &m,
        in_session(&"s".repeat(crate::session::MAX_SESSION_ID_LEN)),
    )
    .await;
    assert_eq!(ok.proxy_id, x.id, "the longest name is accepted");
}

async fn site_standings<S: Storage>(
    m: &ProxyManager<S>,
    site: &str,
) -> Vec<crate::site::SiteStanding> {
    let site = crate::site::Site::new(site).expect("a good site");
    m.storage()
        .site_standings(&pn(POOL), &site)
        .await
        .expect("site_standings")
}

/// A failure reported for one site rests the proxy for that site only (site
/// names compare case-insensitively), on every selector and for a session
/// that had it; other sites and plain acquires still get it; the rest ends by
/// itself on the storage's clock.
pub async fn site_failure_rests_a_proxy_for_that_site_only<H: Harness>(h: &H) {
    let (m, pool) = with_policy(h, rest(h)).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(20)).await;
    let y = add(&m, proxy(&pool, 2).max_concurrency(20)).await;
    let first = take_some(&m, in_session("s").site("shop.example")).await;
    assert_eq!(first.proxy_id, x.id);
    let standing = m
        .report_site_failure(&first, "shop.example", "403 from target")
        .await
        .expect("report_site_failure");
    assert_eq!(standing.proxy_id, x.id);
    assert_eq!(standing.consecutive_failures, 1);
    assert!(!standing.banned);
    assert!(standing.cooldown_until.expect("resting") > first.acquired_at);
    assert_eq!(standing.last_failure.as_deref(), Some("403 from target"));
    for selector in SelectorStrategy::ALL {
        for site in ["shop.example", "SHOP.Example"] {
            let l = take_some(&m, as_worker().selector(selector).site(site)).await;
            assert_eq!(
                l.proxy_id, y.id,
                "{selector} for {site} leased a proxy resting for it"
            );
        }
    }
    let moved = take_some(&m, in_session("s").site("shop.example")).await;
    assert_eq!(
        moved.proxy_id, y.id,
        "the session's proxy rests for the site: it moves"
    );
    let other = take_some(
        &m,
        as_worker()
            .selector(SelectorStrategy::FirstAvailable)
            .site("news.example"),
    )
    .await;
    assert_eq!(other.proxy_id, x.id, "another site still gets it");
    let plain = take_some(&m, as_worker().selector(SelectorStrategy::FirstAvailable)).await;
    assert_eq!(
        plain.proxy_id, x.id,
        "an acquire naming no site still gets it"
    );
    let listed = site_standings(&m, "shop.example").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].proxy_id, x.id);
    assert!(listed[0].cooldown_until.is_some());
    assert!(site_standings(&m, "news.example").await.is_empty());
    h.advance(m.storage(), h.short_lease() + h.short_lease() / 2)
        .await;
    let back = take_some(
        &m,
        as_worker()
            .selector(SelectorStrategy::FirstAvailable)
            .site("shop.example"),
    )
    .await;
    assert_eq!(
        back.proxy_id, x.id,
        "the rest is over on the storage's clock"
    );
    let listed = site_standings(&m, "shop.example").await;
    assert_eq!(
        (listed[0].consecutive_failures, listed[0].cooldown_until),
        (1, None),
        "the count stays until a success"
    );
}

/// At the policy's `ban_after` failures in a row a proxy is banned for the
/// site until a success is reported; a success forgets the count.
pub async fn site_failures_in_a_row_ban_for_that_site_until_a_success<H: Harness>(h: &H) {
    let (m, pool) = with_policy(h, rest(h).ban_after(Some(2))).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(20)).await;
    let lease = take_some(&m, as_worker()).await;
    let one = m
        .report_site_failure(&lease, "shop.example", "403")
        .await
        .unwrap();
    assert_eq!((one.consecutive_failures, one.banned), (1, false));
    let two = m
        .report_site_failure(&lease, "shop.example", "403")
        .await
        .unwrap();
    assert_eq!((two.consecutive_failures, two.banned), (2, true));
    assert_eq!(two.cooldown_until, None, "a ban is not a rest");
    h.advance(m.storage(), h.short_lease() * 4).await;
    assert_eq!(
        take(&m, as_worker().site("shop.example")).await,
        None,
        "banned for the site past any cooldown"
    );
    assert_eq!(
        m.storage().get_proxy(x.id).await.unwrap().unwrap().status,
        ProxyStatus::Active,
        "a site ban leaves the proxy's status alone"
    );
    assert!(take(&m, as_worker().site("news.example")).await.is_some());
    let cleared = m.report_site_success(&lease, "shop.example").await.unwrap();
    assert_eq!((cleared.consecutive_failures, cleared.banned), (0, false));
    assert!(site_standings(&m, "shop.example").await.is_empty());
    assert!(take(&m, as_worker().site("shop.example")).await.is_some());
    let again = m
        .report_site_failure(&lease, "shop.example", "403")
        .await
        .unwrap();
    assert_eq!(again.consecutive_failures, 1, "the success reset the count");
}

/// Bad site names are an InvalidArgument (nothing written); reports about an
/// unknown proxy are ProxyNotFound; standings of an unknown pool PoolNotFound.
pub async fn bad_sites_are_rejected<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(3)).await;
    let long = "s".repeat(crate::site::MAX_SITE_LEN + 1);
    for bad in ["", "two words", "tab\there", long.as_str()] {
        let err = m
            .acquire_proxy(POOL, as_worker().site(bad))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err:?}");
        let err = m.report_site_failure(&x.id, bad, "403").await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err:?}");
    }
    assert_eq!(leases_of(&m, x.id).await, 0);
    assert!(site_standings(&m, "shop.example").await.is_empty());
    assert!(matches!(
        m.report_site_failure(&Uuid::new_v4(), "shop.example", "403")
            .await,
        Err(Error::ProxyNotFound { .. })
    ));
    assert!(matches!(
        m.report_site_failure(&x.id, "shop.example", "bad\nreason")
            .await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(site_standings(&m, "shop.example").await.is_empty());
    let site = crate::site::Site::new("shop.example").unwrap();
    assert!(matches!(
        m.storage().site_standings(&pn("no-such-pool"), &site).await,
        Err(Error::PoolNotFound { .. })
    ));
}

/// A pool's rate limit holds per proxy: after each lease a proxy rests for
/// `per / leases` before its next lease (a release does not end the rest, nor
/// does a reported success), acquires meanwhile get other proxies or none, and
/// it is back by itself on the storage's clock.
pub async fn rate_limit_rests_a_proxy_between_leases<H: Harness>(h: &H) {
    let m = ProxyManager::builder(h.storage().await)
        .cooldown_policy(rest(h))
        .build();
    let limit = crate::pool::RateLimit::new(2, h.short_lease() * 2).expect("a good limit");
    assert_eq!(limit.spacing(), h.short_lease());
    let pool = m
        .storage()
        .create_pool(
            ProxyPool::new(POOL)
                .expect("valid pool name")
                .with_indexes(suite_indexes())
                .with_rate_limit(limit),
        )
        .await
        .expect("create_pool");
    assert_eq!(pool.rate_limit, Some(limit));
    let stored = m.storage().get_pool(&pn(POOL)).await.unwrap().unwrap();
    assert_eq!(stored.rate_limit, Some(limit), "the pool keeps its limit");
    m.storage().ensure_consumer(&cn("worker-1")).await.unwrap();
    let x = add(&m, proxy(&pool, 1).max_concurrency(10)).await;
    let y = add(&m, proxy(&pool, 2).max_concurrency(10)).await;
    let a = take_some(&m, as_worker()).await;
    assert_eq!(a.proxy_id, x.id);
    let resting = m.storage().get_proxy(x.id).await.unwrap().unwrap();
    let until = resting.rest_until.expect("x rests after its lease");
    assert!(
        until > a.acquired_at,
        "the rest ends after the lease started"
    );
    assert_eq!(
        resting.cooldown_until, None,
        "a rest is not a failure's cooldown"
    );
    let b = take_some(&m, as_worker()).await;
    assert_eq!(
        b.proxy_id, y.id,
        "x rests: least_used takes y though x has room"
    );
    for selector in SelectorStrategy::ALL {
        assert_eq!(
            take(&m, as_worker().selector(selector)).await,
            None,
            "{selector}: both proxies rest"
        );
    }
    m.release_proxy(&a).await.unwrap();
    m.report_success(&x.id).await.unwrap();
    assert_eq!(
        take(&m, as_worker()).await,
        None,
        "neither a release nor a success ends a rest"
    );
    m.report_failure(&y.id, "timeout").await.unwrap();
    h.advance(m.storage(), h.short_lease() + h.short_lease() / 2)
        .await;
    let c = take_some(&m, as_worker()).await;
    assert_eq!(c.proxy_id, x.id, "x is back by itself (and least used)");
    assert_eq!(leases_of(&m, x.id).await, 1);
    let mut changed = stored.clone();
    changed.rate_limit = None;
    assert!(
        matches!(
            m.storage().update_pool(changed).await,
            Err(Error::InvalidArgument(_))
        ),
        "a pool's rate limit is fixed when it is created"
    );
    assert_eq!(
        m.storage()
            .get_pool(&pn(POOL))
            .await
            .unwrap()
            .unwrap()
            .rate_limit,
        Some(limit)
    );
    assert_eq!(
        crate::pool::RateLimit::new(3, Duration::from_secs(1))
            .unwrap()
            .spacing(),
        Duration::from_millis(334),
        "rounded up: never 4 leases in a second"
    );
    let bad = ProxyPool::new("limited").unwrap();
    assert!(crate::pool::RateLimit::new(0, Duration::from_secs(1)).is_err());
    assert!(
        crate::pool::RateLimit::new(1, Duration::from_micros(500)).is_err(),
        "under 1 ms"
    );
    let mut zero = bad.clone();
    zero.rate_limit = Some(crate::pool::RateLimit {
        leases: 0,
        per: Duration::from_secs(1),
    });
    assert!(matches!(
        m.storage().create_pool(zero).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A pool with a rate limit of one lease per proxy per `short` and the suite's
/// one consumer; `policy` for the failures.
async fn rate_limited<H: Harness>(
    h: &H,
    policy: crate::cooldown::CooldownPolicy,
) -> (ProxyManager<H::Storage>, ProxyPool) {
    let m = ProxyManager::builder(h.storage().await)
        .cooldown_policy(policy)
        .build();
    let limit = crate::pool::RateLimit::new(1, h.short_lease()).expect("a good limit");
    let pool = m
        .storage()
        .create_pool(ProxyPool::new(POOL).unwrap().with_rate_limit(limit))
        .await
        .expect("create_pool");
    m.storage().ensure_consumer(&cn("worker-1")).await.unwrap();
    (m, pool)
}

/// A rest and a failure's cooldown run side by side: a success that ends the
/// cooldown after the rest is over makes the proxy available at once.
pub async fn rate_limit_rest_and_cooldown_end_independently<H: Harness>(h: &H) {
    let policy = rest(h).base(h.short_lease() * 6).cap(h.short_lease() * 6);
    let (m, pool) = rate_limited(h, policy).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(4)).await;
    let lease = take_some(&m, as_worker()).await;
    m.release_proxy(&lease).await.unwrap();
    m.report_failure(&lease, "timeout").await.unwrap();
    h.advance(m.storage(), h.short_lease() + h.short_lease() / 2)
        .await;
    assert_eq!(take(&m, as_worker()).await, None, "the cooldown goes on");
    m.report_success(&x.id).await.unwrap();
    let back = take(&m, as_worker()).await;
    assert_eq!(
        back.map(|l| l.proxy_id),
        Some(x.id),
        "the rest was over: the success makes it available at once"
    );
}

/// Every rest that is over is lifted before an acquire answers none, however
/// many there are.
pub async fn rate_limit_lifts_every_rest_that_is_over<H: Harness>(h: &H) {
    let (m, pool) = rate_limited(h, rest(h)).await;
    let n = 40u8;
    let proxies: Vec<Proxy> = {
        let mut v = Vec::new();
        for i in 1..=n {
            v.push(add(&m, proxy(&pool, i).max_concurrency(1)).await);
        }
        v
    };
    let mut leases = Vec::new();
    for _ in 0..n {
        leases.push(take_some(&m, as_worker()).await);
    }
    assert_eq!(take(&m, as_worker()).await, None, "all full and resting");
    // The last leased proxies are the ones freed; their rests are the latest.
    for l in &leases[leases.len() - 4..] {
        m.release_proxy(l).await.unwrap();
    }
    h.advance(m.storage(), h.short_lease() + h.short_lease() / 2)
        .await;
    let got = take(&m, as_worker())
        .await
        .expect("a freed proxy whose rest is over");
    assert!(proxies.iter().any(|p| p.id == got.proxy_id));
    assert!(leases[leases.len() - 4..]
        .iter()
        .any(|l| l.proxy_id == got.proxy_id));
}

/// A storage-level acquire of the suite's pool as `worker-1`, holding `ticket`.
async fn take_with_ticket<S: Storage>(
    m: &ProxyManager<S>,
    ticket: &crate::fair::WaitTicket,
) -> Option<Lease> {
    let request = AcquireRequest::new(POOL, "worker-1", Duration::from_secs(3600))
        .expect("valid request")
        .with_ticket(ticket.clone());
    m.storage()
        .acquire(&request)
        .await
        .expect("acquire with a ticket")
}

/// A ticket at the end of the suite's pool's queue.
async fn ticket<S: Storage>(m: &ProxyManager<S>, ttl: Duration) -> crate::fair::WaitTicket {
    m.storage()
        .take_ticket(&pn(POOL), ttl, Duration::from_secs(60))
        .await
        .expect("take_ticket")
        .expect("a storage with a queue of fair waiters issues tickets")
}

/// The numbers of the tickets the pool's queue honours, head first.
async fn queue<S: Storage>(m: &ProxyManager<S>) -> Vec<u64> {
    m.storage()
        .wait_tickets(&pn(POOL))
        .await
        .expect("wait_tickets")
        .into_iter()
        .map(|t| t.number)
        .collect()
}

/// Tickets are issued in increasing order, and an acquire with a ticket takes
/// a proxy only at the head of the queue: a later ticket gets nothing while an
/// earlier one is honoured, though a proxy is free; the grant takes the ticket
/// out of the queue.
pub async fn fair_tickets_are_served_in_ticket_order<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let ttl = Duration::from_secs(60);
    let first = ticket(&m, ttl).await;
    let second = ticket(&m, ttl).await;
    assert!(second.number() > first.number(), "numbers increase");
    assert_eq!(queue(&m).await, [first.number(), second.number()]);
    assert_eq!(
        take_with_ticket(&m, &second).await,
        None,
        "not the head: nothing, though x is free"
    );
    assert_eq!(leases_of(&m, x.id).await, 0);
    let a = take_with_ticket(&m, &first)
        .await
        .expect("the head gets the free proxy");
    assert_eq!(a.proxy_id, x.id);
    assert_eq!(
        queue(&m).await,
        [second.number()],
        "served: out of the queue"
    );
    assert_eq!(take_with_ticket(&m, &second).await, None, "x is full");
    m.release_proxy(&a).await.unwrap();
    let b = take_with_ticket(&m, &second)
        .await
        .expect("now the head, x free again");
    assert_eq!(b.proxy_id, x.id);
    assert!(queue(&m).await.is_empty());
    let other = pn("another-pool");
    assert!(matches!(
        m.storage()
            .take_ticket(&other, ttl, Duration::from_secs(1))
            .await,
        Err(Error::PoolNotFound { .. })
    ));
    assert!(matches!(
        m.storage().wait_tickets(&other).await,
        Err(Error::PoolNotFound { .. })
    ));
}

/// A ticket its waiter stops refreshing (a dead waiter) holds the queue back
/// for its TTL, no longer: then the next attempt of a live waiter drops it. A
/// waiter that was only slow comes back in its old place, ahead of later
/// tickets; a dropped ticket leaves the queue.
pub async fn lapsed_ticket_stops_blocking_after_its_ttl<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let ttl = h.short_lease() * 4;
    let dead = ticket(&m, ttl).await;
    let live = ticket(&m, ttl).await;
    assert_eq!(take_with_ticket(&m, &live).await, None, "the head is live");
    h.advance(m.storage(), ttl / 2).await;
    assert_eq!(
        take_with_ticket(&m, &live).await,
        None,
        "still within the head's TTL (this attempt refreshes the later ticket)"
    );
    h.advance(m.storage(), ttl / 2 + ttl / 4).await;
    let got = take_with_ticket(&m, &live)
        .await
        .expect("the dead waiter's ticket lapsed: the live one is the head");
    assert_eq!(got.proxy_id, x.id);
    assert!(queue(&m).await.is_empty(), "the lapsed ticket was dropped");
    let later = ticket(&m, ttl).await;
    m.release_proxy(&got).await.unwrap();
    let back = take_with_ticket(&m, &dead)
        .await
        .expect("a slow waiter's ticket is queued again in its place, ahead of later ones");
    assert_eq!(back.proxy_id, x.id);
    assert_eq!(queue(&m).await, [later.number()]);
    m.storage().drop_ticket(&later).await.expect("drop_ticket");
    assert!(
        queue(&m).await.is_empty(),
        "a dropped ticket leaves the queue"
    );
    m.storage()
        .drop_ticket(&later)
        .await
        .expect("dropping it again is no error");
}

/// A fair waiter whose request id already got a lease is served by it, and
/// its ticket leaves the queue as a granted one does: the next waiter is
/// not held back.
pub async fn a_fair_waiter_served_by_its_request_id_leaves_the_queue<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(2)).await;
    let first = take_some(&m, as_worker().request_id("crawl-7")).await;
    assert_eq!(first.proxy_id, x.id);
    let mine = ticket(&m, Duration::from_secs(60)).await;
    let behind = ticket(&m, Duration::from_secs(60)).await;
    let again = AcquireRequest::new(POOL, "worker-1", Duration::from_secs(60))
        .unwrap()
        .with_request_id("crawl-7")
        .with_ticket(mine.clone());
    let got = m.storage().acquire(&again).await.unwrap();
    assert_eq!(got.map(|l| l.id), Some(first.id), "its earlier lease");
    assert_eq!(
        queue(&m).await,
        [behind.number()],
        "served, its ticket left the queue"
    );
    let next = take_with_ticket(&m, &behind).await;
    assert_eq!(
        next.map(|l| l.proxy_id),
        Some(x.id),
        "the next waiter is the head"
    );
    assert!(queue(&m).await.is_empty());
}

/// Acquires without a ticket do not look at the queue: a plain acquire takes
/// a free proxy while tickets wait (the documented rule), and the waiting
/// tickets stay queued. Bad tickets are refused before anything is written.
pub async fn plain_acquires_do_not_wait_for_tickets<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    let x = add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let waiting = ticket(&m, Duration::from_secs(60)).await;
    let plain = take_some(&m, as_worker()).await;
    assert_eq!(plain.proxy_id, x.id, "a plain acquire ignores the queue");
    assert_eq!(take_with_ticket(&m, &waiting).await, None, "x is full");
    assert_eq!(
        queue(&m).await,
        [waiting.number()],
        "the ticket still waits"
    );
    m.release_proxy(&plain).await.unwrap();
    let too_short = m
        .storage()
        .take_ticket(&pn(POOL), Duration::from_millis(1), Duration::from_secs(1))
        .await;
    assert!(matches!(too_short, Err(Error::InvalidDuration { .. })));
    let elsewhere = crate::fair::WaitTicket::new(
        pn("another-pool"),
        waiting.number(),
        Duration::from_secs(60),
    );
    let request = AcquireRequest::new(POOL, "worker-1", Duration::from_secs(60))
        .unwrap()
        .with_ticket(elsewhere);
    assert!(matches!(
        m.storage().acquire(&request).await,
        Err(Error::InvalidArgument(_))
    ));
    let too_long = m
        .acquire_proxy_wait(
            POOL,
            as_worker(),
            crate::fair::WaitOptions::new(Duration::from_millis(10))
                .fair(true)
                .ticket_ttl(Duration::from_secs(7200)),
        )
        .await;
    assert!(matches!(too_long, Err(Error::InvalidDuration { .. })));
    assert_eq!(leases_of(&m, x.id).await, 0, "nothing was leased");
    assert_eq!(queue(&m).await, [waiting.number()]);
}

/// Fair waiters on two managers of one storage are served in the order they
/// took their tickets; each leaves the queue when served, and one that gives
/// up at its timeout leaves it too.
pub async fn fair_waiters_across_managers_are_served_in_ticket_order<H: Harness>(h: &H) {
    let (m, pool) = setup(h).await;
    add(&m, proxy(&pool, 1).max_concurrency(1)).await;
    let other = ProxyManager::from_arc(m.storage_arc());
    let held = take_some(&m, as_worker().duration_seconds(3600)).await;
    let fair = crate::fair::WaitOptions::new(Duration::from_secs(30)).fair(true);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (name, on) in [("first", &m), ("second", &other), ("third", &m)] {
        let (on, tx) = (on.clone(), tx.clone());
        tokio::spawn(async move {
            let lease = on
                .acquire_proxy_wait(POOL, as_worker().duration_seconds(3600), fair)
                .await
                .unwrap()
                .expect("served before the timeout");
            let _ = tx.send((name, lease));
        });
        // Let it take its ticket before the next one starts.
        let want = match name {
            "first" => 1,
            "second" => 2,
            _ => 3,
        };
        for _ in 0..100 {
            if queue(&m).await.len() == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(queue(&m).await.len(), want, "{name} queued");
    }
    assert_eq!(
        release_in_turn(&m, held, &mut rx, 3).await,
        ["first", "second", "third"]
    );
    assert!(queue(&m).await.is_empty(), "served waiters left the queue");
    let started = std::time::Instant::now();
    let none = other
        .acquire_proxy_wait(
            POOL,
            as_worker(),
            crate::fair::WaitOptions::new(Duration::from_millis(300)).fair(true),
        )
        .await
        .unwrap();
    assert_eq!(none, None);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        queue(&m).await.is_empty(),
        "a waiter that gave up left the queue"
    );
}
