#![cfg(feature = "redis")]
//! Hooks cost nothing they do not ask for: a plain hook adds no storage call to
//! an acquire or a release (counted by `INFO commandstats` on a private
//! `redis-server`), and a hook that asks for stats adds one stats read per call.

mod support;
use support::pn;

use std::sync::{Arc, Mutex};

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{
    AcquireOptions, AdminStorage, LeaseEvent, LeaseStorage, Proxy, ProxyManager, ProxyPool,
};
use support::server::RedisServer;

const POOL: &str = "hooked";

type Events = Arc<Mutex<Vec<LeaseEvent>>>;

/// Script calls so far (every operation is one `FCALL` or `FCALL_RO`).
async fn script_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    support::command_calls(conn, "fcall").await + support::command_calls(conn, "fcall_ro").await
}

/// `cycles` acquire→release cycles; the script calls they took.
async fn cycles(
    m: &ProxyManager<RedisStorage>,
    conn: &mut redis::aio::MultiplexedConnection,
    cycles: usize,
) -> u64 {
    let before = script_calls(conn).await;
    for _ in 0..cycles {
        let lease = m
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .expect("a free proxy");
        m.release_proxy(&lease).await.unwrap();
    }
    script_calls(conn).await - before
}

#[tokio::test]
async fn a_hook_that_does_not_ask_for_stats_costs_no_storage_call() {
    let server = RedisServer::spawn().expect("a private redis-server");
    let config = RedisConfig::from_url(server.url()).namespace(support::unique_namespace());
    let storage = RedisStorage::new(config.clone()).unwrap();
    let pool = storage
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    storage
        .add_proxy(Proxy::builder(pool.id, "10.0.0.1", 8080).build().unwrap())
        .await
        .unwrap();
    let mut conn = support::raw_conn(&server.url()).await;

    // Three managers on the same pool, each with its own storage handle.
    let handle = || RedisStorage::new(config.clone()).unwrap();
    let bare = ProxyManager::new(storage);
    let plain: Events = Arc::default();
    let sink = plain.clone();
    let hooked = ProxyManager::builder(handle())
        .hook(move |e| sink.lock().unwrap().push(e.clone()))
        .build();
    let stats: Events = Arc::default();
    let sink = stats.clone();
    let with_stats = ProxyManager::builder(handle())
        .hook_with_stats(move |e| sink.lock().unwrap().push(e.clone()))
        .build();
    // Warm: scripts loaded, consumer registered, connections open.
    cycles(&bare, &mut conn, 1).await;
    cycles(&hooked, &mut conn, 1).await;
    cycles(&with_stats, &mut conn, 1).await;
    plain.lock().unwrap().clear();
    stats.lock().unwrap().clear();

    assert_eq!(
        cycles(&bare, &mut conn, 5).await,
        10,
        "no hook: 2 calls a cycle"
    );
    assert_eq!(
        cycles(&hooked, &mut conn, 5).await,
        10,
        "a plain hook adds no storage call"
    );
    let plain = plain.lock().unwrap().clone();
    assert_eq!(plain.len(), 10);
    assert!(plain.iter().all(|e| e.pool_stats.is_none()));
    // What one stats read costs (on Redis: a reclaim, then the read).
    let before = script_calls(&mut conn).await;
    bare.storage().pool_stats(&pn(POOL)).await.unwrap();
    let per_read = script_calls(&mut conn).await - before;
    assert!(per_read >= 1);
    assert_eq!(
        cycles(&with_stats, &mut conn, 5).await,
        10 + 10 * per_read,
        "a hook with stats reads them once per call"
    );
    let stats = stats.lock().unwrap().clone();
    assert_eq!(stats.len(), 10);
    assert_eq!(stats[0].pool_stats.map(|s| s.total_leases), Some(1));
    assert_eq!(stats[1].pool_stats.map(|s| s.total_leases), Some(0));
}
