#![cfg(feature = "redis")]
//! The `wait_for_replicas` option against a primary and a replica on loopback:
//! acknowledged changes are on the replica; a missing replica is reported as a
//! shortfall, and a retry with the request id gets the same lease, not a second.

mod support;
use support::{cn, pn};

use std::time::{Duration, Instant};

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{AcquireRequest, AdminStorage, Error, LeaseStorage, Proxy, ProxyPool};
use support::server::RedisServer;

fn free_port() -> u16 {
    RedisServer::free_port()
}

fn start(port: u16, replica_of: Option<u16>) -> RedisServer {
    let primary = replica_of.map(|p| p.to_string());
    let mut args = vec!["--appendonly", "no"];
    if let Some(p) = &primary {
        args.extend(["--replicaof", "127.0.0.1", p.as_str()]);
    }
    RedisServer::spawn_with(port, &args).expect("redis-server on PATH")
}

async fn raw(port: u16) -> redis::aio::MultiplexedConnection {
    support::raw_conn(&format!("redis://127.0.0.1:{port}")).await
}

async fn wait_linked(replica: u16) {
    let mut c = raw(replica).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .unwrap();
        if info.contains("master_link_status:up") {
            return;
        }
        assert!(Instant::now() < deadline, "replica never linked: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_replicas_confirms_and_reports_a_shortfall() {
    let (p_port, r_port) = (free_port(), free_port());
    let _primary = start(p_port, None);
    let replica = start(r_port, Some(p_port));
    wait_linked(r_port).await;
    let url = format!("redis://127.0.0.1:{p_port}");
    let s = RedisStorage::new(
        RedisConfig::from_url(url.clone())
            .namespace("wait")
            .wait_for_replicas(1, Duration::from_millis(500)),
    )
    .unwrap();
    let pool = s.create_pool(ProxyPool::new("p1").unwrap()).await.unwrap();
    let proxy = s
        .add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 80)
                .max_concurrency(5)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    s.ensure_consumer(&cn("w")).await.unwrap();
    let req = AcquireRequest::new("p1", "w", Duration::from_secs(600)).unwrap();

    // Acknowledged: the lease record is on the replica when acquire returns.
    let first = s.acquire(&req).await.unwrap().unwrap();
    let mut on_replica = raw(r_port).await;
    let record: Option<String> = redis::cmd("GET")
        .arg(format!("wait:{{p1}}:{}", first.fencing_token))
        .query_async(&mut on_replica)
        .await
        .unwrap();
    assert!(
        record.as_deref().is_some_and(|r| r.starts_with("active ")),
        "{record:?}"
    );

    // The replica goes away: the change stands on the primary, reported short.
    drop(replica);
    let retry = req.clone().with_request_id("job-7");
    let err = s.acquire(&retry).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ReplicationShortfall {
                wanted: 1,
                acknowledged: 0
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let _replica = start(r_port, Some(p_port));
    wait_linked(r_port).await;
    let again = s.acquire(&retry).await.unwrap().expect("the same lease");
    assert_eq!(
        s.get_proxy(proxy.id).await.unwrap().unwrap().current_leases,
        2,
        "one lease for job-7, not two"
    );
    assert_eq!(
        s.get_lease(&pn("p1"), again.id).await.unwrap().unwrap().id,
        again.id
    );

    // Asking for more replicas than exist is a shortfall too.
    let greedy = RedisStorage::new(
        RedisConfig::from_url(url)
            .namespace("wait")
            .wait_for_replicas(2, Duration::from_millis(300)),
    )
    .unwrap();
    let lease = s.acquire(&req).await.unwrap().unwrap();
    let err = greedy.release(&lease).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ReplicationShortfall {
                wanted: 2,
                acknowledged: 1
            }
        ),
        "{err:?}"
    );
}
