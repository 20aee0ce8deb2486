#![cfg(feature = "redis")]
//! Fencing tokens keep growing across a `redis-server` crash and restart with
//! persistence (AOF, fsync always): the pool's token reservation and the lease
//! that was acknowledged survive, and the next token is above the reservation.

mod support;
use support::{cn, pn};

use std::time::{Duration, Instant};

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{AcquireRequest, AdminStorage, LeaseStatus, LeaseStorage, Proxy, ProxyPool};
use support::server::RedisServer;

fn free_port() -> u16 {
    RedisServer::free_port()
}

fn start(port: u16, dir: &std::path::Path) -> RedisServer {
    let dir = dir.to_str().expect("a UTF-8 temp dir");
    RedisServer::spawn_with(
        port,
        &[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir,
        ],
    )
    .expect("redis-server on PATH")
}

#[tokio::test]
async fn fencing_tokens_and_acknowledged_leases_survive_a_crash_with_aof() {
    let dir = std::env::temp_dir().join(format!("lh-aof-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let config = || {
        RedisConfig::from_url(url.clone())
            .namespace("aof")
            .response_timeout(Duration::from_secs(5))
    };
    let server = start(port, &dir);
    let s = RedisStorage::new(config()).unwrap();
    let pool = s.create_pool(ProxyPool::new("p1").unwrap()).await.unwrap();
    s.add_proxy(
        Proxy::builder(pool.id, "10.0.0.1", 80)
            .max_concurrency(2)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    s.ensure_consumer(&cn("w")).await.unwrap();
    let req = AcquireRequest::new("p1", "w", Duration::from_secs(600)).unwrap();
    let first = s.acquire(&req).await.unwrap().unwrap();
    drop(s);
    drop(server); // SIGKILL: a crash, not a clean shutdown
    std::thread::sleep(Duration::from_millis(200));
    let _server = start(port, &dir);
    // Loading the AOF can take a moment: the first calls may fail, then work.
    let s = RedisStorage::new(config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let survived = loop {
        match s.get_lease(&pn("p1"), first.id).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < deadline, "Redis did not come back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let survived = survived.expect("the acknowledged lease survived the crash");
    assert_eq!(
        (survived.status, survived.fencing_token),
        (LeaseStatus::Active, first.fencing_token)
    );
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let fence: u64 = redis::cmd("HGET")
        .arg("aof:{p1}:meta")
        .arg("fence")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        fence >= first.fencing_token,
        "the token reservation was persisted and covers the token issued"
    );
    let second = s.acquire(&req).await.unwrap().unwrap();
    // Redis restarted with a new Lua VM: it remembers no token, so it starts
    // above the whole reservation.
    assert!(second.fencing_token > fence);
    assert_eq!(
        s.get_proxy(first.proxy_id)
            .await
            .unwrap()
            .unwrap()
            .current_leases,
        2
    );
    let _ = std::fs::remove_dir_all(&dir);
}
