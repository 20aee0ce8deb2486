#![cfg(feature = "redis")]
//! RedisStorage maintenance: the pool registry, bounded cleanup batches, and the
//! audit that finds and repairs drift between a proxy's recorded lease count and
//! its live leases.

mod support;
use support::{cn, pn};

use std::time::Duration;

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::{
    AcquireRequest, AdminStorage, LeaseStorage, Proxy, ProxyFilters, ProxyPool, ReleaseOutcome,
};

const POOL: &str = "latam-residential";

async fn raw() -> redis::aio::MultiplexedConnection {
    support::raw_conn(&support::redis_url()).await
}

async fn setup(max: u32) -> (RedisStorage, Proxy) {
    setup_on(support::storage(), max).await
}

/// A pool with consumer `w` and one proxy of `max_concurrency` `max` on `s`.
async fn setup_on(s: RedisStorage, max: u32) -> (RedisStorage, Proxy) {
    let pool = s.create_pool(ProxyPool::new(POOL).unwrap()).await.unwrap();
    s.ensure_consumer(&cn("w")).await.unwrap();
    let p = s
        .add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 80)
                .max_concurrency(max)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    (s, p)
}

fn req(d: Duration) -> AcquireRequest {
    AcquireRequest::new(POOL, "w", d).unwrap()
}

/// Sets a proxy's recorded live lease count by hand, as an operator editing keys
/// might: the count lives in the load index's score while the proxy has a free
/// slot, else in `held` (these proxies have no indexed attribute).
async fn set_counter(s: &RedisStorage, p: &Proxy, value: u64) {
    let prefix = format!("{}:{{{POOL}}}:", s.config().get_namespace());
    let mut c = raw().await;
    let seq: u64 = redis::cmd("HGET")
        .arg(format!("{prefix}ids:{}", &p.id.simple().to_string()[..2]))
        .arg(p.id.to_string())
        .query_async(&mut c)
        .await
        .unwrap();
    let full = p.max_concurrency.is_some_and(|m| value >= u64::from(m));
    let mut pipe = redis::pipe();
    pipe.zrem(format!("{prefix}idx:load:all"), seq).ignore();
    if full {
        pipe.hset(format!("{prefix}held"), seq, value).ignore();
    } else {
        pipe.hdel(format!("{prefix}held"), seq).ignore();
        pipe.zadd(format!("{prefix}idx:load:all"), seq, (value << 32) + seq)
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
}

#[tokio::test]
async fn audit_repairs_an_inflated_counter_and_frees_the_leaked_slots() {
    let (s, p) = setup(3).await;
    for _ in 0..2 {
        s.acquire(&req(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        s.audit_pool(POOL, 100).await.unwrap().is_empty(),
        "no drift yet"
    );
    set_counter(&s, &p, 3).await; // someone "fixed" it by hand: the proxy looks full
    assert_eq!(
        s.acquire(&req(Duration::from_secs(60))).await.unwrap(),
        None
    );
    let fixes = s.audit_pool(POOL, 100).await.unwrap();
    assert_eq!(fixes.len(), 1);
    assert_eq!(
        (fixes[0].proxy_id, fixes[0].recorded, fixes[0].actual),
        (p.id, 3, 2)
    );
    assert_eq!(s.get_proxy(p.id).await.unwrap().unwrap().current_leases, 2);
    // Exactly the one real free slot is usable again.
    assert!(s
        .acquire(&req(Duration::from_secs(60)))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        s.acquire(&req(Duration::from_secs(60))).await.unwrap(),
        None
    );
    assert!(
        s.audit_pool(POOL, 100).await.unwrap().is_empty(),
        "repaired once"
    );
}

#[tokio::test]
async fn audit_repairs_a_deflated_counter_so_the_limit_holds_again() {
    let (s, p) = setup(3).await;
    for _ in 0..2 {
        s.acquire(&req(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap();
    }
    set_counter(&s, &p, 0).await; // too low: the proxy would be over-leased
    let fixes = s.audit_pool(POOL, 1).await.unwrap();
    assert_eq!((fixes[0].recorded, fixes[0].actual), (0, 2));
    assert!(s
        .acquire(&req(Duration::from_secs(60)))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        s.acquire(&req(Duration::from_secs(60))).await.unwrap(),
        None,
        "max 3 holds"
    );
    assert_eq!(s.pool_stats(&pn(POOL)).await.unwrap().total_leases, 3);
}

#[tokio::test]
async fn audit_walks_large_pools_in_batches() {
    let s = support::storage();
    let pool = s.create_pool(ProxyPool::new(POOL).unwrap()).await.unwrap();
    s.ensure_consumer(&cn("w")).await.unwrap();
    let proxies: Vec<Proxy> = (0..250)
        .map(|i| {
            Proxy::builder(pool.id, format!("10.0.{}.{}", i / 200, i % 200), 80)
                .max_concurrency(1)
                .build()
                .unwrap()
        })
        .collect();
    let proxies = s.add_proxies(proxies).await.unwrap();
    for p in [&proxies[0], &proxies[120], &proxies[249]] {
        set_counter(&s, p, 1).await;
    }
    let fixes = s.audit_pool(POOL, 50).await.unwrap();
    let ids: Vec<_> = fixes.iter().map(|f| f.proxy_id).collect();
    assert_eq!(ids, vec![proxies[0].id, proxies[120].id, proxies[249].id]);
    assert_eq!(
        s.pool_stats(&pn(POOL)).await.unwrap().available_proxies,
        250
    );
}

#[tokio::test]
async fn cleanup_batches_are_bounded_and_count_each_lease_once() {
    let (s, p) = setup(100).await;
    for _ in 0..30 {
        s.acquire(&req(Duration::from_millis(200)))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(s.pool_names().await.unwrap(), vec![POOL.to_string()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut total = 0;
    let mut calls = 0;
    loop {
        let b = s.cleanup_batch(POOL, 8).await.unwrap();
        assert!(b.reclaimed <= 8);
        total += b.reclaimed;
        calls += 1;
        if !b.more {
            break;
        }
    }
    assert_eq!((total, calls), (30, 4));
    assert_eq!(s.cleanup_batch(POOL, 8).await.unwrap().reclaimed, 0);
    assert_eq!(s.get_proxy(p.id).await.unwrap().unwrap().current_leases, 0);
    assert!(s.cleanup_batch(POOL, 0).await.is_err());
}

/// Cleanup gives a slot back straight from the load index for a proxy that is
/// in the indexes, and through the proxy's full state for one that is not (full,
/// its count in `held`), also when one call's chunks meet the same proxies
/// again: afterwards every count is what the live set says (the audit finds
/// nothing to repair) and every proxy with a free slot is available again.
#[tokio::test]
async fn cleanup_frees_indexed_and_full_proxies_alike_and_leaves_no_drift() {
    let s = support::storage();
    let pool = s.create_pool(ProxyPool::new(POOL).unwrap()).await.unwrap();
    s.ensure_consumer(&cn("w")).await.unwrap();
    let proxy = |host: &str, max: Option<u32>, country: &str| {
        let b = Proxy::builder(pool.id, host, 80).country(country);
        match max {
            Some(m) => b.max_concurrency(m).build().unwrap(),
            None => b.build().unwrap(),
        }
    };
    let added = s
        .add_proxies(vec![
            proxy("10.0.0.1", Some(30), "AR"), // full after 30: `held`
            proxy("10.0.0.2", None, "AR"),     // never full: indexed throughout
            proxy("10.0.0.3", Some(1), "BR"),
            proxy("10.0.0.4", Some(2), "BR"),
        ])
        .await
        .unwrap();
    // Least used first: the four take turns until each limited one is full,
    // so the due leases of one chunk (40) mix indexed and full proxies, and
    // the next chunk meets both kinds again.
    for _ in 0..63 {
        s.acquire(&req(Duration::from_millis(300)))
            .await
            .unwrap()
            .unwrap();
    }
    let kept = s
        .acquire(&req(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kept.proxy_id, added[1].id,
        "only the unlimited proxy has room"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut total = 0;
    loop {
        let b = s.cleanup_batch(POOL, 100_000).await.unwrap();
        total += b.reclaimed;
        if !b.more {
            break;
        }
    }
    assert_eq!(total, 63, "every due lease once");
    for (p, live) in added.iter().zip([0, 1, 0, 0]) {
        let now = s.get_proxy(p.id).await.unwrap().unwrap();
        assert_eq!(now.current_leases, live, "{}", p.host);
    }
    assert!(
        s.audit_pool(POOL, 100).await.unwrap().is_empty(),
        "counts and indexes agree with the live set"
    );
    let stats = s.pool_stats(&pn(POOL)).await.unwrap();
    assert_eq!((stats.total_leases, stats.available_proxies), (1, 4));
    // Each country's index has its proxies back: one acquire per free slot in BR.
    let br = AcquireRequest::new(POOL, "w", Duration::from_secs(60))
        .unwrap()
        .with_filters(ProxyFilters::new().country("BR"));
    for _ in 0..3 {
        s.acquire(&br).await.unwrap().expect("a free BR slot");
    }
    assert_eq!(s.acquire(&br).await.unwrap(), None, "BR holds 3");
}

/// An acquire that finds due leases gives their slots back before it picks
/// (straight from the load index for proxies in it), and picks by the counts
/// as they are after that: here the proxy whose leases all expired, not the
/// one whose lease lives on, though both counted two before.
#[tokio::test]
async fn an_acquire_reclaims_due_leases_before_it_picks_and_leaves_no_drift() {
    let s = support::storage();
    let pool = s.create_pool(ProxyPool::new(POOL).unwrap()).await.unwrap();
    s.ensure_consumer(&cn("w")).await.unwrap();
    let added = s
        .add_proxies(vec![
            Proxy::builder(pool.id, "10.0.0.1", 80).build().unwrap(),
            Proxy::builder(pool.id, "10.0.0.2", 80).build().unwrap(),
        ])
        .await
        .unwrap();
    let (a, b) = (added[0].id, added[1].id);
    let short = || req(Duration::from_millis(300));
    // Least used first, ties by seq: a, b, then a (long), then b.
    let mut got = Vec::new();
    for r in [short(), short(), req(Duration::from_secs(60)), short()] {
        got.push(s.acquire(&r).await.unwrap().unwrap().proxy_id);
    }
    assert_eq!(got, [a, b, a, b]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Three leases are due (a's first, both of b's): a counts 1 after the
    // reclaim, b none, so b is the least used.
    let next = s
        .acquire(&req(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.proxy_id, b, "picked by the counts after the reclaim");
    assert_eq!(s.get_proxy(a).await.unwrap().unwrap().current_leases, 1);
    assert_eq!(s.get_proxy(b).await.unwrap().unwrap().current_leases, 1);
    assert!(
        s.audit_pool(POOL, 100).await.unwrap().is_empty(),
        "counts and indexes agree with the live set"
    );
}

/// A live-set member that names no proxy (written by hand) is taken out by
/// cleanup without an error, and counts for nothing.
#[tokio::test]
async fn cleanup_takes_out_a_live_member_that_names_no_proxy() {
    let (s, p) = setup(2).await;
    let prefix = format!("{}:{{{POOL}}}:", s.config().get_namespace());
    let mut c = raw().await;
    let _: () = redis::cmd("ZADD")
        .arg(format!("{prefix}live"))
        .arg(1)
        .arg("junk")
        .query_async(&mut c)
        .await
        .unwrap();
    // The hint that tells cleanup a lease is due.
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}meta"))
        .arg("exp")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let b = s.cleanup_batch(POOL, 100).await.unwrap();
    assert_eq!((b.reclaimed, b.more), (0, false));
    let left: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}live"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(s.get_proxy(p.id).await.unwrap().unwrap().current_leases, 0);
}

/// Index keys are made skiplists when proxies are added (in a listpack, Redis's
/// small-set encoding, every ZADD scans and moves the whole index), and the
/// member that converts them leaves no trace.
#[tokio::test]
async fn added_proxies_land_in_skiplist_indexes_without_a_trace() {
    let s = support::storage();
    let pool = s.create_pool(ProxyPool::new(POOL).unwrap()).await.unwrap();
    let proxies = (1..=3)
        .map(|i| {
            Proxy::builder(pool.id, format!("10.0.0.{i}"), 80)
                .country("AR")
                .build()
                .unwrap()
        })
        .collect();
    s.add_proxies(proxies).await.unwrap();
    let prefix = format!("{}:{{{POOL}}}:", s.config().get_namespace());
    let mut c = raw().await;
    for key in ["idx:load:all", "idx:load:country=AR"] {
        let key = format!("{prefix}{key}");
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(encoding, "skiplist", "{key}");
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(members, ["1", "2", "3"], "{key}");
    }
}

/// A cleanup call stops once it has spent its time budget (1 ms of Redis's
/// time, checked every 40 leases), whatever the batch: 3,000 due leases take
/// far longer than that to reclaim, so a batch of 100,000 comes back early,
/// says more are due, and the calls that follow finish the work, each lease
/// counted once.
#[tokio::test]
async fn a_cleanup_call_stops_at_its_time_budget_whatever_the_batch() {
    let (s, p) = setup(5000).await;
    let s = std::sync::Arc::new(s);
    let leases = futures_util::future::join_all((0..3000).map(|_| {
        let s = std::sync::Arc::clone(&s);
        async move { s.acquire(&req(Duration::from_secs(2))).await }
    }))
    .await;
    assert!(leases.iter().all(|l| matches!(l, Ok(Some(_)))));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let first = s.cleanup_batch(POOL, 100_000).await.unwrap();
    assert!(first.more, "{first:?}");
    assert!(first.reclaimed > 0 && first.reclaimed < 3000, "{first:?}");
    let mut total = first.reclaimed;
    loop {
        let b = s.cleanup_batch(POOL, 100_000).await.unwrap();
        total += b.reclaimed;
        if !b.more {
            break;
        }
    }
    assert_eq!(total, 3000);
    assert_eq!(s.get_proxy(p.id).await.unwrap().unwrap().current_leases, 0);
}

/// The library remembers proxies' JSONs between calls (the acquire and release
/// paths then skip reading them), but only while the pool's `pver` is the one
/// it read them under: an update or a removal moves it on, so a release after
/// either writes the indexes of the proxy as it is now, never as remembered.
#[tokio::test]
async fn remembered_proxies_follow_updates_and_removals() {
    let s = support::storage();
    let pool = s.create_pool(ProxyPool::new(POOL).unwrap()).await.unwrap();
    s.ensure_consumer(&cn("w")).await.unwrap();
    let p = s
        .add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 80)
                .country("AR")
                .max_concurrency(2)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let prefix = format!("{}:{{{POOL}}}:", s.config().get_namespace());
    let mut c = raw().await;
    let members = |key: &'static str| {
        let key = format!("{prefix}{key}");
        let mut c = c.clone();
        async move {
            redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async::<Vec<String>>(&mut c)
                .await
                .unwrap()
        }
    };
    let ar = || req(Duration::from_secs(60)).with_filters(ProxyFilters::new().country("AR"));
    let br = || req(Duration::from_secs(60)).with_filters(ProxyFilters::new().country("BR"));

    // Read (and remembered) as AR by an acquire, then moved to BR.
    let lease = s.acquire(&ar()).await.unwrap().expect("a lease");
    let mut moved = p.clone();
    moved.country = Some("BR".into());
    s.update_proxy(moved).await.unwrap();
    assert_eq!(s.release(&lease).await.unwrap(), ReleaseOutcome::Released);
    assert!(members("idx:load:country=AR").await.is_empty());
    assert_eq!(members("idx:load:country=BR").await, ["1"]);
    assert!(s.acquire(&ar()).await.unwrap().is_none());

    // Read again as BR by this acquire, then removed while its lease is live.
    let lease = s.acquire(&br()).await.unwrap().expect("a lease");
    assert!(s.remove_proxy(p.id).await.unwrap());
    assert_eq!(s.release(&lease).await.unwrap(), ReleaseOutcome::NotFound);
    for key in ["idx:load:all", "idx:load:country=BR"] {
        assert!(members(key).await.is_empty(), "{key}");
    }
    assert!(s.acquire(&br()).await.unwrap().is_none());
    let pver: Option<u64> = redis::cmd("HGET")
        .arg(format!("{prefix}meta"))
        .arg("pver")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        pver >= Some(2),
        "an update and a removal move pver: {pver:?}"
    );
}

/// The pool's `fence` is a reservation of tokens (written about once a second,
/// not on every acquire). Whatever this library remembers of the tokens it
/// issued, a reservation it did not write (another primary's, after a
/// failover) means any token up to it may be taken: the next token is above it.
#[tokio::test]
async fn tokens_stay_above_a_fence_reserved_elsewhere() {
    let (s, _p) = setup(100).await;
    let prefix = format!("{}:{{{POOL}}}:", s.config().get_namespace());
    let mut c = raw().await;
    let mut last = 0;
    for _ in 0..20 {
        let lease = s
            .acquire(&req(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap();
        assert!(lease.fencing_token > last, "tokens increase");
        last = lease.fencing_token;
    }
    let fence: u64 = redis::cmd("HGET")
        .arg(format!("{prefix}meta"))
        .arg("fence")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(fence >= last, "the reservation covers every token issued");
    let elsewhere = last + 1_000_000_000_000;
    redis::cmd("HSET")
        .arg(format!("{prefix}meta"))
        .arg("fence")
        .arg(elsewhere)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let lease = s
        .acquire(&req(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    assert!(
        lease.fencing_token > elsewhere,
        "{} > {elsewhere}",
        lease.fencing_token
    );
}

/// A request id answers a retry with its lease for as long as the lease lasts,
/// renewals included: past the first expiry plus the record grace, a retry of a
/// renewed lease gets that lease again, not a second slot (its request key
/// lives as long as the record). Redis's clock cannot be moved: the test waits.
#[tokio::test]
async fn a_request_id_lives_as_long_as_its_renewed_lease() {
    let config = support::test_config().record_grace(Duration::from_millis(100));
    let (s, _) = setup_on(RedisStorage::new(config).unwrap(), 2).await;
    let request = req(Duration::from_millis(300)).with_request_id("job-7");
    let first = s.acquire(&request).await.unwrap().unwrap();
    let renewed = s.extend(&first, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let again = s.acquire(&request).await.unwrap().unwrap();
    assert_eq!(again.id, first.id, "the same lease, not a second one");
    assert_eq!(again.expires_at, renewed.expires_at);
    assert_eq!(s.pool_stats(&pn(POOL)).await.unwrap().total_leases, 1);
    let lease = s.get_lease(&pn(POOL), first.id).await.unwrap().unwrap();
    assert_eq!(
        lease.consumer_name, "w",
        "the record's request part is not the consumer"
    );
    assert_eq!(s.release(&again).await.unwrap(), ReleaseOutcome::Released);
    assert_eq!(
        s.release(&again).await.unwrap(),
        ReleaseOutcome::AlreadyReleased
    );
}
