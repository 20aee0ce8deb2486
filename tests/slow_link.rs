#![cfg(feature = "redis")]
//! `RedisStorage` through a slow link: a forwarder in the test
//! (`tests/support/forwarder.rs`) holds every chunk 2 ms, then 20 ms, each
//! way between the library and a private `redis-server` (this machine's
//! kernel has no `netem`). Acquire and release work through it, and natural
//! batching still sends one script call (`FCALL` in `INFO commandstats`) per
//! batch. Timing figures are not asserted here: `benches/redis.rs` measures
//! them (README, Performance).
//!
//! The runtime is current-thread, so every spawned call queues before the
//! first reply is read; each test has its own server, so the call counts are
//! its own.

#[path = "support/forwarder.rs"]
mod forwarder;
mod support;
use support::pn;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use forwarder::Forwarder;
use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{
    AcquireOptions, AdminStorage, Lease, LeaseStorage, Proxy, ProxyManager, ProxyPool,
    ReleaseOutcome,
};
use support::server::RedisServer;
use tokio::task::JoinSet;

const POOL: &str = "slow-pool";
/// Concurrent callers, and proxies of one slot each: every caller gets one.
const CALLERS: usize = 40;

type Manager = ProxyManager<RedisStorage>;

async fn acquire_all(m: &Manager, n: usize) -> Vec<Lease> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let m = m.clone();
        set.spawn(async move { m.acquire_proxy(POOL, AcquireOptions::new()).await });
    }
    let mut leases = Vec::new();
    while let Some(done) = set.join_next().await {
        leases.push(
            done.unwrap()
                .unwrap()
                .expect("a free proxy for every caller"),
        );
    }
    leases
}

async fn release_all(m: &Manager, leases: Vec<Lease>) -> Vec<ReleaseOutcome> {
    let mut set = JoinSet::new();
    for lease in leases {
        let m = m.clone();
        set.spawn(async move { m.release_proxy(&lease).await });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        out.push(done.unwrap().unwrap());
    }
    out
}

async fn reset_stats(c: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(c)
        .await
        .unwrap();
}

/// A manager through the forwarder, with the script and consumer caches warm.
async fn manager(config: RedisConfig) -> Manager {
    let m = ProxyManager::new(RedisStorage::new(config).unwrap());
    for _ in 0..3 {
        let warm = m
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .expect("a free proxy");
        assert_eq!(
            m.release_proxy(&warm).await.unwrap(),
            ReleaseOutcome::Released
        );
    }
    m
}

/// Every caller gets its own proxy, nothing more is free, and everything
/// comes back. Returns the script calls of the acquires and of the releases.
async fn burst(m: &Manager, admin: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    reset_stats(admin).await;
    let leases = acquire_all(m, CALLERS).await;
    let acquires = support::command_calls(admin, "fcall").await;
    let proxies: HashSet<_> = leases.iter().map(|l| l.proxy_id).collect();
    assert_eq!(
        proxies.len(),
        CALLERS,
        "max_concurrency 1: one lease per proxy"
    );
    assert!(
        m.acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .is_none(),
        "every slot is taken"
    );
    reset_stats(admin).await;
    let outcomes = release_all(m, leases).await;
    let releases = support::command_calls(admin, "fcall").await;
    assert!(outcomes.iter().all(|o| *o == ReleaseOutcome::Released));
    let stats = m.storage().pool_stats(&pn(POOL)).await.unwrap();
    assert_eq!(stats.total_leases, 0, "{stats:?}");
    assert_eq!(stats.available_proxies, CALLERS as u64, "{stats:?}");
    (acquires, releases)
}

async fn through_a_slow_link(delay: Duration) {
    let server = RedisServer::spawn().unwrap();
    let target = SocketAddr::from(([127, 0, 0, 1], server.port()));
    let link = Forwarder::start(target, delay).expect("start the forwarder");

    // The link is slow: a PING round trip through it takes both delays.
    let mut through = support::raw_conn(&link.redis_url()).await;
    for _ in 0..5 {
        let t = Instant::now();
        let pong: String = redis::cmd("PING").query_async(&mut through).await.unwrap();
        assert_eq!(pong, "PONG");
        assert!(
            t.elapsed() >= 2 * delay,
            "a PING through the link took {:?}, less than twice {delay:?}",
            t.elapsed()
        );
    }

    let ns = support::unique_namespace();
    let config = RedisConfig::from_url(link.redis_url()).namespace(ns.clone());
    let setup = RedisStorage::new(config.clone()).unwrap();
    let pool = setup
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (0..CALLERS)
        .map(|i| {
            Proxy::builder(pool.id, format!("10.7.0.{i}"), 8080)
                .max_concurrency(1)
                .build()
                .unwrap()
        })
        .collect();
    setup.add_proxies(proxies).await.unwrap();
    let mut admin = support::raw_conn(&server.url()).await;

    // One call in flight per lane, not fitted to the link: the first acquire
    // goes alone and the 39 queued behind it go as 32 + 7, as on loopback
    // (tests/batching.rs). Releases the same.
    let fixed = manager(
        config
            .clone()
            .max_batch(32)
            .max_in_flight(1)
            .fit_in_flight(false),
    )
    .await;
    let (acquires, releases) = burst(&fixed, &mut admin).await;
    assert_eq!(acquires, 3, "{CALLERS} acquires in {acquires} script calls");
    assert_eq!(releases, 3, "{CALLERS} releases in {releases} script calls");

    // The defaults, fitted to the link: at most 16 calls in flight (see
    // `RedisConfig::max_in_flight`), each alone, then the queue in batches of
    // up to 32: at most 17 calls for 40 callers, never one per caller.
    let fitted = manager(config).await;
    let (acquires, releases) = burst(&fitted, &mut admin).await;
    eprintln!(
        "{delay:?} each way, default lanes: {CALLERS} acquires in {acquires} script calls, \
         {CALLERS} releases in {releases}"
    );
    assert!(
        (2..=17).contains(&acquires),
        "{CALLERS} acquires in {acquires} script calls"
    );
    assert!(
        (2..=17).contains(&releases),
        "{CALLERS} releases in {releases} script calls"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn acquire_release_and_batching_through_a_2ms_link() {
    through_a_slow_link(Duration::from_millis(2)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn acquire_release_and_batching_through_a_20ms_link() {
    through_a_slow_link(Duration::from_millis(20)).await;
}
