#![cfg(feature = "redis")]
//! Concurrent `rotate_proxy` calls on one pool go to Redis as one rotate.lua
//! call, and the usual batch (live leases of indexed proxies, least_used for
//! one index, nothing due) takes the straight way that a pool's mixed batch
//! of releases and acquires takes: the proxies given back and taken again
//! keep their index entries. Each rotate is still served as if alone, in
//! arrival order: its release just before its acquire, so an acquire does
//! not see the slot a later rotate of the same call gives back. Each test has
//! its own `redis-server` (so `INFO commandstats` counts only its calls) and
//! a current-thread runtime: every spawned call queues behind the one in
//! flight before that one's reply is read, so the batches are deterministic.

mod support;

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::{AcquireOptions, Lease, LeaseStorage, Proxy, ProxyManager, ReleaseOutcome};
use support::server::RedisServer;

const POOL: &str = "rotate-batch-pool";

type Manager = ProxyManager<RedisStorage>;

/// A manager (one call in flight per lane) with `n` proxies of
/// `max_concurrency` 2 and no country, warmed up (the library loaded). (A
/// full proxy is out of the indexes: the straight way leaves a batch that
/// gives back a slot of one to the general way.)
async fn setup(server: &RedisServer, n: usize) -> (Manager, Vec<Proxy>) {
    let config = support::counting_config(&server.url(), &support::unique_namespace());
    let (m, pool) = support::manager_with_pool(config, POOL).await;
    let proxies = support::add_proxies(m.storage(), &pool, 8, n, |_, b| b.max_concurrency(2)).await;
    let l = acquire(&m).await;
    let r = m.rotate_proxy(&l, AcquireOptions::new()).await.unwrap();
    m.release_proxy(&r.next.unwrap()).await.unwrap();
    (m, proxies)
}

async fn acquire(m: &Manager) -> Lease {
    m.acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .expect("a free proxy")
}

/// Rotates `first` alone (it takes the lane's one slot) and, queued behind
/// it, each of `rest` in order: one call of them all. Returns the queued
/// rotates' results in order.
async fn rotates_behind(
    m: &Manager,
    first: Lease,
    rest: Vec<Lease>,
) -> Vec<(ReleaseOutcome, Option<Lease>)> {
    let a = m.clone();
    let lone =
        tokio::spawn(async move { a.rotate_proxy(&first, AcquireOptions::new()).await.unwrap() });
    let queued: Vec<_> = rest
        .into_iter()
        .map(|l| {
            let b = m.clone();
            tokio::spawn(async move { b.rotate_proxy(&l, AcquireOptions::new()).await.unwrap() })
        })
        .collect();
    let lone = lone.await.unwrap();
    assert_eq!(lone.released, ReleaseOutcome::Released);
    let mut out = Vec::new();
    for t in queued {
        let r = t.await.unwrap();
        out.push((r.released, r.next));
    }
    out
}

/// The storage settings of the concurrent runs (a fleet's: calls fitted to
/// the link, 4 connections) in a fresh namespace.
fn fleet_config(server: &RedisServer) -> lighthouse_lease::redis::RedisConfig {
    lighthouse_lease::redis::RedisConfig::from_url(server.url())
        .namespace(support::unique_namespace())
        .pool_size(4)
}

/// After a concurrent run: every proxy counts exactly the leases in `held`
/// on it, at most `max`; the audit finds nothing to repair; each lease then
/// releases once and the pool is empty.
async fn check_and_release(m: &Manager, proxies: &[Proxy], held: &[Lease], max: u32) {
    for p in proxies {
        let want = held.iter().filter(|l| l.proxy_id == p.id).count() as u32;
        assert_eq!(
            support::leases_of(m.storage(), p.id).await,
            want,
            "{}",
            p.host
        );
        assert!(want <= max, "{} over its limit", p.host);
    }
    let fixes = m.storage().audit_pool(POOL, 100).await.unwrap();
    assert!(fixes.is_empty(), "{fixes:?}");
    for l in held {
        assert_eq!(m.release_proxy(l).await.unwrap(), ReleaseOutcome::Released);
    }
    let stats = m.storage().pool_stats(&support::pn(POOL)).await.unwrap();
    assert_eq!(stats.total_leases, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_of_rotates_releases_each_lease_just_before_its_acquire() {
    let server = RedisServer::spawn().unwrap();
    let (m, proxies) = setup(&server, 4).await;
    // Each proxy holds one lease (of two).
    let l0 = acquire(&m).await;
    let l1 = acquire(&m).await;
    let l2 = acquire(&m).await;
    let l3 = acquire(&m).await;
    assert_eq!(
        [l0.proxy_id, l1.proxy_id, l2.proxy_id, l3.proxy_id],
        [proxies[0].id, proxies[1].id, proxies[2].id, proxies[3].id]
    );
    let mut admin = support::raw_conn(&server.url()).await;
    support::reset_stats(&mut admin).await;
    // l2's rotate goes alone (back to proxy 2, the one least used); then
    // l1's and l0's rotates in one call. Each as if alone: l1's rotate frees
    // a slot of proxy 1 and takes it again (proxy 0 still counts one then),
    // l0's frees one of proxy 0 and takes it. Releasing both first would hand
    // proxy 0 (the lower sequence number) to l1's rotate.
    let got = rotates_behind(&m, l2, vec![l1, l0]).await;
    let ids: Vec<_> = got
        .iter()
        .map(|(o, l)| (*o, l.as_ref().map(|l| l.proxy_id)))
        .collect();
    assert_eq!(
        ids,
        [
            (ReleaseOutcome::Released, Some(proxies[1].id)),
            (ReleaseOutcome::Released, Some(proxies[0].id)),
        ]
    );
    let stats = support::commandstats(&mut admin).await;
    assert_eq!(stats.get("fcall"), Some(&2), "{stats:?}");
    // The call of two writes the live set once and no index entry (every
    // proxy it gave back it took again), and reads the released proxies'
    // scores with one ZMSCORE of the live set and one of the index (the lone
    // rotate reads none). (The general way runs the same commands here; what
    // the straight way saves is Lua work: callgrind, README.)
    assert_eq!(stats.get("zadd"), Some(&2), "{stats:?}");
    assert_eq!(stats.get("zmscore"), Some(&2), "{stats:?}");
    for p in &proxies {
        assert_eq!(support::leases_of(m.storage(), p.id).await, 1, "{}", p.host);
    }
    // The index entries are right: four more acquires fill the pool in
    // sequence order, then none is left.
    let mut more = Vec::new();
    for p in &proxies {
        let l = acquire(&m).await;
        assert_eq!(l.proxy_id, p.id);
        more.push(l);
    }
    assert!(m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .is_none());
    // Everything releases once.
    more.push(l3);
    more.extend(got.into_iter().filter_map(|(_, l)| l));
    for l in &more {
        assert_eq!(m.release_proxy(l).await.unwrap(), ReleaseOutcome::Released);
    }
    let pool = m.storage().pool_stats(&support::pn(POOL)).await.unwrap();
    assert_eq!(
        pool.total_leases, 1,
        "proxy 2's lease, from the lone rotate"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_rotate_batch_moves_the_counts_of_proxies_it_does_not_take_again() {
    let server = RedisServer::spawn().unwrap();
    let (m, proxies) = setup(&server, 6).await;
    // Proxies 0..=4 hold a lease (of two); proxy 5 none.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(acquire(&m).await);
    }
    // A lease on proxy 5 too, released first: the lone rotate (of proxy 4's
    // lease) then takes proxy 4 back (the lowest count, then sequence);
    // behind it, proxy 3's rotate takes 3 back, and proxy 0's takes 0 back.
    // Then one more rotate, of a lease already released, goes the general way
    // with the right outcome.
    let l5 = acquire(&m).await;
    assert_eq!(l5.proxy_id, proxies[5].id);
    m.release_proxy(&l5).await.unwrap();
    let l4 = held.pop().unwrap();
    let l3 = held.pop().unwrap();
    let l0 = held.remove(0);
    let got = rotates_behind(&m, l4, vec![l3, l0]).await;
    assert_eq!(got[0].1.as_ref().map(|l| l.proxy_id), Some(proxies[3].id));
    assert_eq!(got[1].1.as_ref().map(|l| l.proxy_id), Some(proxies[0].id));
    // A batch that is not straight (a lease already released) answers the
    // same way the general way always did: that rotate's outcome, and a new
    // lease for both.
    let again = got[0].1.clone().unwrap();
    m.release_proxy(&again).await.unwrap();
    let first = held.remove(0); // proxy 1
    let more = rotates_behind(&m, first, vec![again, got[1].1.clone().unwrap()]).await;
    assert_eq!(more[0].0, ReleaseOutcome::AlreadyReleased);
    assert_eq!(more[1].0, ReleaseOutcome::Released);
    assert!(more.iter().all(|(_, l)| l.is_some()));
    let total: u32 = {
        let mut t = 0;
        for p in &proxies {
            t += support::leases_of(m.storage(), p.id).await;
        }
        t
    };
    let pool = m.storage().pool_stats(&support::pn(POOL)).await.unwrap();
    assert_eq!(u64::from(total), pool.total_leases);
    // Proxy 2's lease, the lone rotates' two new leases, and the two of the
    // last call.
    assert_eq!(pool.total_leases, 5);
}

/// Many callers rotating at once on a small pool, unfiltered for the first
/// half of their rounds and with a `country` filter for the second (so most
/// batches take the straight way, for `load:all` and then a country's index,
/// and some the general one: a proxy full, both kinds of request in a call).
/// Every proxy then counts exactly the leases its holders hold, never more
/// than its limit, and the audit finds nothing to repair.
#[test]
fn concurrent_rotates_keep_every_count() {
    const TASKS: usize = 24;
    const ROUNDS: usize = 80;
    let server = RedisServer::spawn().unwrap();
    support::runtime().block_on(async {
        let (m, pool) = support::manager_with_pool(fleet_config(&server), POOL).await;
        let proxies = support::add_proxies(m.storage(), &pool, 9, 24, |i, b| {
            b.max_concurrency(3).country(["AR", "CL"][i % 2])
        })
        .await;
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move {
                    let options = |round: usize| {
                        let o = AcquireOptions::new();
                        if round < ROUNDS / 2 {
                            o
                        } else {
                            o.filters(lighthouse_lease::ProxyFilters::new().country("CL"))
                        }
                    };
                    let mut held = m.acquire_proxy(POOL, options(0)).await.unwrap();
                    for round in 0..ROUNDS {
                        held = match held {
                            Some(l) => {
                                let r = m.rotate_proxy(&l, options(round)).await.unwrap();
                                assert_eq!(r.released, ReleaseOutcome::Released);
                                r.next
                            }
                            None => m.acquire_proxy(POOL, options(round)).await.unwrap(),
                        };
                    }
                    held
                })
            })
            .collect();
        let mut held = Vec::new();
        for t in tasks {
            held.extend(t.await.unwrap());
        }
        // 36 slots in `CL` for 24 callers: each holds a lease at the end.
        assert_eq!(held.len(), TASKS);
        check_and_release(&m, &proxies, &held, 3).await;
    });
}

/// Callers with different `country` filters share a pool's calls: a batch of
/// requests for several countries (one attribute, so no proxy is in two of
/// their indexes) takes the straight way too, one page and one heap per
/// country. Half the callers rotate, half acquire and release. Every lease is
/// on a proxy of its caller's country, every proxy counts exactly the leases
/// its holders hold, within its limit, and the audit finds nothing to repair.
#[test]
fn callers_of_several_countries_keep_every_count() {
    const TASKS: usize = 24;
    const ROUNDS: usize = 60;
    const COUNTRIES: [&str; 3] = ["AR", "CL", "UY"];
    let server = RedisServer::spawn().unwrap();
    support::runtime().block_on(async {
        let (m, pool) = support::manager_with_pool(fleet_config(&server), POOL).await;
        let proxies = support::add_proxies(m.storage(), &pool, 10, 30, |i, b| {
            b.max_concurrency(2).country(COUNTRIES[i % 3])
        })
        .await;
        let country_of = |id: uuid::Uuid| {
            let i = proxies
                .iter()
                .position(|p| p.id == id)
                .expect("a proxy of the pool");
            COUNTRIES[i % 3]
        };
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let m = m.clone();
                tokio::spawn(async move {
                    let country = COUNTRIES[t % 3];
                    let options = || {
                        AcquireOptions::new()
                            .filters(lighthouse_lease::ProxyFilters::new().country(country))
                    };
                    let mut got = Vec::new();
                    let mut held = m.acquire_proxy(POOL, options()).await.unwrap();
                    for _ in 0..ROUNDS {
                        held = match held {
                            Some(l) if t % 2 == 0 => {
                                got.push(l.proxy_id);
                                let r = m.rotate_proxy(&l, options()).await.unwrap();
                                assert_eq!(r.released, ReleaseOutcome::Released);
                                r.next
                            }
                            Some(l) => {
                                got.push(l.proxy_id);
                                let o = m.release_proxy(&l).await.unwrap();
                                assert_eq!(o, ReleaseOutcome::Released);
                                m.acquire_proxy(POOL, options()).await.unwrap()
                            }
                            None => m.acquire_proxy(POOL, options()).await.unwrap(),
                        };
                    }
                    (country, got, held)
                })
            })
            .collect();
        let mut held = Vec::new();
        for t in tasks {
            let (country, got, last) = t.await.unwrap();
            for id in got.iter().chain(last.iter().map(|l| &l.proxy_id)) {
                assert_eq!(
                    country_of(*id),
                    country,
                    "a lease on a proxy of another country"
                );
            }
            held.extend(last);
        }
        // 20 slots a country for 8 callers each: every caller holds one.
        assert_eq!(held.len(), TASKS);
        check_and_release(&m, &proxies, &held, 2).await;
    });
}
