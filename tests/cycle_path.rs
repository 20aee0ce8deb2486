#![cfg(feature = "redis")]
//! A pool's acquires and releases share one lane in `RedisStorage`: when both
//! wait at once they go in one cycle.lua call, the releases first, and a proxy
//! given back and taken again in that call keeps its index entries. Each test
//! has its own `redis-server` (so `INFO commandstats` counts only its calls)
//! and a current-thread runtime: every spawned call queues behind the one in
//! flight before that one's reply is read, so the batches are deterministic.

mod support;
use support::pn;

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::{
    AcquireOptions, Lease, LeaseStorage, Proxy, ProxyManager, ReleaseOutcome, SelectorStrategy,
};
use support::server::RedisServer;

const POOL: &str = "cycle-pool";

type Manager = ProxyManager<RedisStorage>;

/// A manager (one call in flight per lane) with `n` proxies of
/// `max_concurrency` 1 and no country, warmed up (the library loaded).
async fn setup(server: &RedisServer, n: usize) -> (Manager, Vec<Proxy>) {
    let config = support::counting_config(&server.url(), &support::unique_namespace());
    let (m, pool) = support::manager_with_pool(config, POOL).await;
    let proxies = support::add_proxies(m.storage(), &pool, 9, n, |_, b| b.max_concurrency(1)).await;
    let l = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    m.release_proxy(&l).await.unwrap();
    (m, proxies)
}

/// The pool's live leases.
async fn total_leases(m: &Manager) -> u64 {
    m.storage()
        .pool_stats(&pn(POOL))
        .await
        .unwrap()
        .total_leases
}

async fn acquire(m: &Manager, options: AcquireOptions) -> Lease {
    m.acquire_proxy(POOL, options)
        .await
        .unwrap()
        .expect("a free proxy")
}

/// Runs `first` (which goes alone and takes the lane's one slot), and, queued
/// behind it, the release of `lease` and an acquire with `options`: one
/// batch of both kinds. Returns the release's outcome and the new lease.
async fn release_and_acquire_behind(
    m: &Manager,
    first: Lease,
    lease: Lease,
    options: AcquireOptions,
) -> (ReleaseOutcome, Option<Lease>) {
    let (a, b, c) = (m.clone(), m.clone(), m.clone());
    let t1 = tokio::spawn(async move { a.release_proxy(&first).await.unwrap() });
    let t2 = tokio::spawn(async move { b.release_proxy(&lease).await.unwrap() });
    let t3 = tokio::spawn(async move { c.acquire_proxy(POOL, options).await.unwrap() });
    assert_eq!(t1.await.unwrap(), ReleaseOutcome::Released);
    (t2.await.unwrap(), t3.await.unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn a_proxy_given_back_and_taken_again_in_one_call_keeps_its_index_entries() {
    let server = RedisServer::spawn().unwrap();
    let (m, proxies) = setup(&server, 2).await;
    // The pool full: every proxy holds its one lease.
    let l1 = acquire(&m, AcquireOptions::new()).await;
    let l2 = acquire(&m, AcquireOptions::new()).await;
    assert_eq!(l1.proxy_id, proxies[0].id);
    let mut admin = support::raw_conn(&server.url()).await;
    support::reset_stats(&mut admin).await;
    // l2's release goes alone; l1's release and an acquire wait behind it and
    // go together: least_used then picks proxy 0 again (count 0, the lowest
    // seq), the proxy that call gave back.
    let (released, next) = release_and_acquire_behind(&m, l2, l1, AcquireOptions::new()).await;
    assert_eq!(released, ReleaseOutcome::Released);
    let next = next.expect("the slot given back in the same call");
    assert_eq!(next.proxy_id, proxies[0].id);
    let stats = support::commandstats(&mut admin).await;
    assert_eq!(stats.get("fcall"), Some(&2), "{stats:?}");
    // The lone release lowers proxy 1's count (one ZADD); the call of both
    // adds the new lease to the live set (one ZADD) and writes no index
    // entry: proxy 0's count ends where it was.
    assert_eq!(stats.get("zadd"), Some(&2), "{stats:?}");
    assert_eq!(total_leases(&m).await, 1);
    assert_eq!(support::leases_of(m.storage(), proxies[0].id).await, 1);
    assert_eq!(support::leases_of(m.storage(), proxies[1].id).await, 0);
    // Everything holds: the lease releases once, the pool empties.
    assert_eq!(
        m.release_proxy(&next).await.unwrap(),
        ReleaseOutcome::Released
    );
    assert_eq!(
        m.release_proxy(&next).await.unwrap(),
        ReleaseOutcome::AlreadyReleased
    );
    let pool = m.storage().pool_stats(&pn(POOL)).await.unwrap();
    assert_eq!(pool.total_leases, 0);
    assert_eq!(pool.available_proxies, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn an_acquire_in_a_call_of_both_sees_the_slot_its_releases_freed_and_others_move() {
    let server = RedisServer::spawn().unwrap();
    let (m, proxies) = setup(&server, 3).await;
    let l1 = acquire(&m, AcquireOptions::new()).await;
    let l2 = acquire(&m, AcquireOptions::new()).await;
    let l3 = acquire(&m, AcquireOptions::new()).await;
    assert_eq!(l3.proxy_id, proxies[2].id);
    // l1 alone; then l3's release and an acquire together: the acquire picks
    // proxy 0 (freed by the lone release, lowest seq), not proxy 2, whose
    // count the call lowers and writes.
    let (released, next) = release_and_acquire_behind(&m, l1, l3, AcquireOptions::new()).await;
    assert_eq!(released, ReleaseOutcome::Released);
    assert_eq!(next.as_ref().map(|l| l.proxy_id), Some(proxies[0].id));
    for (p, want) in proxies.iter().zip([1, 1, 0]) {
        assert_eq!(
            support::leases_of(m.storage(), p.id).await,
            want,
            "{}",
            p.host
        );
    }
    // The next least_used acquire finds proxy 2 (its index entry was written).
    let l4 = acquire(&m, AcquireOptions::new()).await;
    assert_eq!(l4.proxy_id, proxies[2].id);
    assert!(m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .is_none());
    for l in [l2, next.unwrap(), l4] {
        assert_eq!(m.release_proxy(&l).await.unwrap(), ReleaseOutcome::Released);
    }
    assert_eq!(total_leases(&m).await, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_of_both_that_is_not_straight_goes_the_general_way() {
    let server = RedisServer::spawn().unwrap();
    let (m, proxies) = setup(&server, 2).await;
    let l1 = acquire(&m, AcquireOptions::new()).await;
    let l2 = acquire(&m, AcquireOptions::new()).await;
    let mut admin = support::raw_conn(&server.url()).await;
    support::reset_stats(&mut admin).await;
    // round_robin is not the straight way's selector: the same call, served
    // by the general way, with the same outcome.
    let (released, next) = release_and_acquire_behind(
        &m,
        l2,
        l1,
        AcquireOptions::new().selector(SelectorStrategy::RoundRobin),
    )
    .await;
    assert_eq!(released, ReleaseOutcome::Released);
    assert!(next.is_some());
    assert_eq!(
        support::command_calls(&mut admin, "fcall").await,
        2,
        "one lone release, one call of both"
    );
    assert_eq!(total_leases(&m).await, 1);
    assert_eq!(
        support::leases_of(m.storage(), proxies[0].id).await
            + support::leases_of(m.storage(), proxies[1].id).await,
        1
    );
    assert_eq!(
        m.release_proxy(&next.unwrap()).await.unwrap(),
        ReleaseOutcome::Released
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_acquire_with_a_request_id_waits_with_releases_but_goes_by_its_own_script() {
    let server = RedisServer::spawn().unwrap();
    let (m, _) = setup(&server, 2).await;
    let l1 = acquire(&m, AcquireOptions::new()).await;
    let l2 = acquire(&m, AcquireOptions::new()).await;
    let mut admin = support::raw_conn(&server.url()).await;
    support::reset_stats(&mut admin).await;
    let (released, next) =
        release_and_acquire_behind(&m, l2, l1, AcquireOptions::new().request_id("req-1")).await;
    assert_eq!(released, ReleaseOutcome::Released);
    let next = next.expect("a proxy");
    // One lone release, then the batch: release.lua, then acquire.lua.
    assert_eq!(support::command_calls(&mut admin, "fcall").await, 3);
    // The request id answers again with the same lease.
    let again = acquire(&m, AcquireOptions::new().request_id("req-1")).await;
    assert_eq!(again.id, next.id);
}
