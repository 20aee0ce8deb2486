#![cfg(feature = "redis")]
//! The fleet-wide features on Redis (issue "Beyond every peer"): what a pool
//! that uses none of them pays (nothing: the same commands per acquire and
//! release as before they existed), and what each costs when used. Each test
//! has its own `redis-server`, so `INFO commandstats` counts only its calls.

mod support;

use std::collections::BTreeMap;

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::{AcquireOptions, AdminStorage, Proxy, ProxyManager, ProxyPool};
use support::server::RedisServer;

const POOL: &str = "fleet-pool";

type Manager = ProxyManager<RedisStorage>;

/// A manager on `server` (its own namespace) with 16 proxies of
/// `max_concurrency` 4 in four countries, in a pool with the default indexes
/// (the load order, and `country`), warmed up: the library loaded, the pool's
/// settings and the request's spec known to the script.
async fn setup(server: &RedisServer, ns: &str) -> Manager {
    let config = support::counting_config(&server.url(), ns);
    let m = ProxyManager::new(RedisStorage::new(config).unwrap());
    let pool = match m.storage().create_pool(ProxyPool::new(POOL).unwrap()).await {
        Ok(pool) => pool,
        Err(_) => m
            .storage()
            .get_pool(&support::pn(POOL))
            .await
            .unwrap()
            .unwrap(),
    };
    if m.storage()
        .list_proxies(&support::pn(POOL))
        .await
        .unwrap()
        .is_empty()
    {
        let proxies: Vec<Proxy> = (0..16)
            .map(|i| {
                Proxy::builder(pool.id, format!("10.9.0.{i}"), 8080)
                    .max_concurrency(4)
                    .country(["AR", "BR", "CL", "MX"][i % 4])
                    .build()
                    .unwrap()
            })
            .collect();
        m.storage().add_proxies(proxies).await.unwrap();
    }
    for _ in 0..3 {
        cycle(&m, AcquireOptions::new()).await;
    }
    m
}

/// One acquire and its release.
async fn cycle(m: &Manager, options: AcquireOptions) -> uuid::Uuid {
    let lease = m.acquire_proxy(POOL, options).await.unwrap().unwrap();
    m.release_proxy(&lease).await.unwrap();
    lease.proxy_id
}

fn table(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The hot path of a pool that uses no fleet feature, pinned command by
/// command: an acquire (HMGET meta, TIME, ZRANGE of the load index, SET
/// record, ZADD per load key of the proxy, ZADD live) and a release (HMGET
/// meta, TIME, GET record, ZREM live, SET record, ZADD XX INCR of load:all,
/// ZADD of the country key). Sessions (and every later feature) must leave
/// this unchanged: a feature a pool does not use costs it no call.
#[tokio::test(flavor = "current_thread")]
async fn a_pool_using_no_fleet_feature_pays_the_same_commands_as_before() {
    let server = RedisServer::spawn().unwrap();
    let m = setup(&server, &support::unique_namespace()).await;
    let mut admin = support::raw_conn(&server.url()).await;
    support::reset_stats(&mut admin).await;
    for _ in 0..10 {
        cycle(&m, AcquireOptions::new()).await;
    }
    let per_cycle: BTreeMap<String, u64> = support::commandstats(&mut admin)
        .await
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v % 10, 0, "{k}: {v} calls in 10 cycles");
            (k, v / 10)
        })
        .collect();
    assert_eq!(
        per_cycle,
        table(&[
            ("fcall", 2),
            ("hmget", 2),
            ("time", 2),
            ("zrange", 1),
            ("set", 2),
            ("get", 1),
            ("zadd", 5),
            ("zrem", 1),
        ]),
        "one acquire and one release of a plain pool, per cycle"
    );
}

/// A sticky session costs the acquires that use it a GET and a SET of its key
/// (and the general path's reads): and two storages (two hosts) share it, so
/// a session moves for both at once.
#[tokio::test(flavor = "current_thread")]
async fn a_session_costs_its_own_acquires_two_commands_and_is_shared_by_every_host() {
    let server = RedisServer::spawn().unwrap();
    let ns = support::unique_namespace();
    let a = setup(&server, &ns).await;
    let b = setup(&server, &ns).await;
    let mut admin = support::raw_conn(&server.url()).await;

    let cart = || AcquireOptions::new().session("cart-42");
    let first = a.acquire_proxy(POOL, cart()).await.unwrap().unwrap();
    let on_b = b.acquire_proxy(POOL, cart()).await.unwrap().unwrap();
    assert_eq!(
        on_b.proxy_id, first.proxy_id,
        "another host acquiring in the session gets its proxy"
    );
    b.release_proxy(&on_b).await.unwrap();
    a.release_proxy(&first).await.unwrap();

    support::reset_stats(&mut admin).await;
    let lease = a.acquire_proxy(POOL, cart()).await.unwrap().unwrap();
    let counts = support::commandstats(&mut admin).await;
    assert_eq!(lease.proxy_id, first.proxy_id);
    assert_eq!(counts.get("fcall"), Some(&1));
    assert_eq!(counts.get("get"), Some(&1), "the session's GET: {counts:?}");
    assert_eq!(
        counts.get("set"),
        Some(&2),
        "the lease record and the session's SET: {counts:?}"
    );
    let key = format!("{ns}:{{{POOL}}}:sess:cart-42");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        ttl > 290_000 && ttl <= 300_000,
        "the session lasts the lease's 300 s: {ttl} ms"
    );
    a.release_proxy(&lease).await.unwrap();
}
