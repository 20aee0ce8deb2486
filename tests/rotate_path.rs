#![cfg(feature = "redis")]
//! `rotate_proxy`'s straight path on Redis: when least_used gives the slot
//! just released back to the proxy that had it, the proxy's count ends where
//! it was and no index is written (9 commands in the script instead of 12);
//! otherwise the rotate is the release and the acquire it stands for. Each
//! test has its own `redis-server`, so `INFO commandstats` counts only its
//! calls.

mod support;

use std::collections::BTreeMap;

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::{
    AcquireOptions, LeaseStatus, LeaseStorage, Proxy, ProxyManager, ReleaseOutcome,
    SelectorStrategy,
};
use support::server::RedisServer;

const POOL: &str = "rotate-pool";

type Manager = ProxyManager<RedisStorage>;

/// A manager with 8 proxies of `max_concurrency` 4 in two countries (the
/// default indexes: load order, `country`), warmed up.
async fn setup(server: &RedisServer, ns: &str) -> (Manager, Vec<Proxy>) {
    let config = support::counting_config(&server.url(), ns);
    let (m, pool) = support::manager_with_pool(config, POOL).await;
    let proxies = support::add_proxies(m.storage(), &pool, 7, 8, |i, b| {
        b.max_concurrency(4).country(["AR", "CL"][i % 2])
    })
    .await;
    for _ in 0..3 {
        let l = m
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .unwrap();
        m.release_proxy(&l).await.unwrap();
    }
    (m, proxies)
}

/// The index entries of every proxy (`load:all` and its country's key), as
/// Redis holds them.
async fn load_scores(
    c: &mut redis::aio::MultiplexedConnection,
    ns: &str,
) -> Vec<(String, Option<f64>, Option<f64>)> {
    let mut out = Vec::new();
    for seq in 0..8 {
        let all: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{ns}:{{{POOL}}}:idx:load:all"))
            .arg(seq)
            .query_async(c)
            .await
            .unwrap();
        let country = ["AR", "CL"][seq % 2];
        let by_country: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{ns}:{{{POOL}}}:idx:load:country={country}"))
            .arg(seq)
            .query_async(c)
            .await
            .unwrap();
        out.push((seq.to_string(), all, by_country));
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn a_rotate_back_to_the_same_proxy_writes_no_index() {
    let server = RedisServer::spawn().unwrap();
    let ns = support::unique_namespace();
    let (m, proxies) = setup(&server, &ns).await;
    let mut admin = support::raw_conn(&server.url()).await;
    let mut lease = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.proxy_id, proxies[0].id);
    let before = load_scores(&mut admin, &ns).await;
    support::reset_stats(&mut admin).await;
    let mut old = Vec::new();
    for _ in 0..10 {
        let r = m.rotate_proxy(&lease, AcquireOptions::new()).await.unwrap();
        assert_eq!(r.released, ReleaseOutcome::Released);
        let next = r.next.expect("a proxy");
        assert_eq!(
            next.proxy_id, proxies[0].id,
            "released, proxy 0 is again the least used (ties: lowest seq)"
        );
        assert!(next.fencing_token > lease.fencing_token);
        old.push(std::mem::replace(&mut lease, next));
    }
    let per_rotate: BTreeMap<String, u64> = support::commandstats(&mut admin)
        .await
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v % 10, 0, "{k}: {v} calls in 10 rotates");
            (k, v / 10)
        })
        .collect();
    let want: BTreeMap<String, u64> = [
        ("fcall", 1),
        ("time", 1),
        ("hmget", 1),
        ("get", 1),
        ("zscore", 1),
        ("zrange", 1),
        ("zrem", 1),
        ("set", 2),
        ("zadd", 1),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    assert_eq!(per_rotate, want, "one rotate back to the same proxy");
    // The state is what a release and an acquire leave.
    assert_eq!(load_scores(&mut admin, &ns).await, before, "no index moved");
    assert_eq!(support::leases_of(m.storage(), proxies[0].id).await, 1);
    let live = m.storage().list_leases(&support::pn(POOL)).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, lease.id);
    for l in &old {
        let got = m
            .storage()
            .get_lease(&support::pn(POOL), l.id)
            .await
            .unwrap()
            .expect("a released record, kept for the grace");
        assert_eq!(got.status, LeaseStatus::Released);
        assert_eq!(
            m.release_proxy(l).await.unwrap(),
            ReleaseOutcome::AlreadyReleased
        );
    }
    assert_eq!(
        m.release_proxy(&lease).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(support::leases_of(m.storage(), proxies[0].id).await, 0);
    let stats = m.storage().pool_stats(&support::pn(POOL)).await.unwrap();
    assert_eq!(stats.total_leases, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_rotate_to_another_proxy_moves_both_counts() {
    let server = RedisServer::spawn().unwrap();
    let (m, proxies) = setup(&server, &support::unique_namespace()).await;
    let first = AcquireOptions::new().selector(SelectorStrategy::FirstAvailable);
    let a = m.acquire_proxy(POOL, first.clone()).await.unwrap().unwrap();
    let b = m.acquire_proxy(POOL, first).await.unwrap().unwrap();
    assert_eq!((a.proxy_id, b.proxy_id), (proxies[0].id, proxies[0].id));
    // Released, proxy 0 still holds one lease: least_used picks proxy 1.
    let r = m.rotate_proxy(&a, AcquireOptions::new()).await.unwrap();
    assert_eq!(r.released, ReleaseOutcome::Released);
    let next = r.next.expect("a proxy");
    assert_eq!(next.proxy_id, proxies[1].id);
    assert_eq!(support::leases_of(m.storage(), proxies[0].id).await, 1);
    assert_eq!(support::leases_of(m.storage(), proxies[1].id).await, 1);
    // With a country filter the released proxy must match: proxy 0 (AR)
    // is not CL, so a CL rotate goes to a CL proxy (3, the least used).
    let cl = AcquireOptions::new().filters(lighthouse_lease::ProxyFilters::new().country("CL"));
    let r = m.rotate_proxy(&b, cl).await.unwrap();
    assert_eq!(r.released, ReleaseOutcome::Released);
    assert_eq!(r.next.expect("a CL proxy").proxy_id, proxies[3].id);
    assert_eq!(support::leases_of(m.storage(), proxies[0].id).await, 0);
}
