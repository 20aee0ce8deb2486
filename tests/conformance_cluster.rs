#![cfg(feature = "cli")]
//! Redis Cluster: the whole conformance suite on a 3-master cluster of
//! `redis-server` processes (built with `redis-cli --cluster create`), pools
//! spread over the masters, and the CLI and the sweeper against the cluster.

mod support;
use support::cn;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::testkit::Harness;
use lighthouse_lease::{
    AcquireRequest, AdminStorage, LeaseStorage, Proxy, ProxyPool, ReleaseOutcome,
};
use support::cluster::RedisCluster;

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        RedisCluster::spawn(3).unwrap_or_else(|e| panic!("cannot build a test cluster: {e}"))
    })
}

fn config() -> RedisConfig {
    RedisConfig::from_url(cluster().url())
        .namespace(support::unique_namespace())
        .response_timeout(Duration::from_secs(10))
}

fn storage() -> RedisStorage {
    RedisStorage::new(config()).expect("cluster config")
}

/// The record grace of the suite's storages (the default, 60 s, would make the
/// cases that outlive it wait a minute).
const RECORD_GRACE: Duration = Duration::from_secs(1);

struct ClusterHarness;

impl Harness for ClusterHarness {
    type Storage = RedisStorage;

    async fn storage(&self) -> RedisStorage {
        RedisStorage::new(config().record_grace(RECORD_GRACE)).expect("cluster config")
    }

    async fn advance(&self, _: &RedisStorage, by: Duration) {
        tokio::time::sleep(by).await;
    }

    fn short_lease(&self) -> Duration {
        Duration::from_millis(300)
    }

    fn record_grace(&self) -> Duration {
        RECORD_GRACE
    }
}

lighthouse_lease::conformance_suite!(ClusterHarness);

/// Pools land on different masters (each pool's keys share one slot), and each
/// one leases and releases normally.
#[tokio::test]
async fn pools_spread_over_the_masters() {
    let s = storage();
    assert!(RedisConfig::from_url(cluster().url()).is_cluster());
    s.ensure_consumer(&cn("w")).await.unwrap();
    let names: Vec<String> = (0..12).map(|i| format!("pool-{i}")).collect();
    for name in &names {
        let pool = s
            .create_pool(ProxyPool::new(name.clone()).unwrap())
            .await
            .unwrap();
        s.add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 80)
                .max_concurrency(1)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
        let lease = s
            .acquire(&AcquireRequest::new(name.clone(), "w", Duration::from_secs(60)).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.acquire(&AcquireRequest::new(name.clone(), "w", Duration::from_secs(60)).unwrap())
                .await
                .unwrap(),
            None
        );
        assert_eq!(s.release(&lease).await.unwrap(), ReleaseOutcome::Released);
    }
    assert_eq!(s.list_pools().await.unwrap().len(), 12);
    // Which master holds each pool's meta hash?
    let mut masters_used = std::collections::HashSet::new();
    for name in &names {
        let key = format!("{}:{{{name}}}:meta", s.config().get_namespace());
        for port in cluster().ports() {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "exists", &key])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "1" {
                masters_used.insert(*port);
            }
        }
    }
    assert!(
        masters_used.len() >= 2,
        "12 pools all on one master: {masters_used:?}"
    );
    assert_eq!(s.cleanup_expired_leases().await.unwrap(), 0);
}

/// The CLI and the sweeper take a `redis+cluster://` URL.
#[test]
fn cli_and_sweeper_work_against_the_cluster() {
    let ns = support::unique_namespace();
    let run = |bin: &str, args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .env("REDIS_URL", cluster().url())
            .env("LIGHTHOUSE_NAMESPACE", &ns)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let cli = env!("CARGO_BIN_EXE_lighthouse");
    run(cli, &["pool", "create", "latam-residential"]);
    run(cli, &["pool", "create", "eu-datacenter"]);
    run(
        cli,
        &[
            "proxy",
            "add",
            "--pool",
            "latam-residential",
            "--host",
            "1.1.1.1",
            "--port",
            "8080",
        ],
    );
    run(
        cli,
        &[
            "proxy",
            "add",
            "--pool",
            "eu-datacenter",
            "--host",
            "2.2.2.2",
            "--port",
            "8080",
        ],
    );
    assert!(run(
        cli,
        &["acquire", "--pool", "eu-datacenter", "--duration", "1"]
    )
    .contains("proxy http://2.2.2.2:8080"));
    std::thread::sleep(Duration::from_millis(1200));
    run(env!("CARGO_BIN_EXE_lighthouse-sweeper"), &["--once"]);
    let stats = run(cli, &["stats"]);
    assert!(
        stats.contains("eu-datacenter: 1 proxies, 1 active, 1 available, 0 leased, 0 leases"),
        "{stats}"
    );
}

/// After `SCRIPT FLUSH` on every node, each pool's scripts are loaded again on
/// the node that owns its slot, and nothing is lost or double-counted.
#[tokio::test]
async fn scripts_reload_on_the_owning_node_after_script_flush() {
    let s = storage();
    s.ensure_consumer(&cn("w")).await.unwrap();
    let mut proxies = Vec::new();
    for i in 0..6 {
        let name = format!("flush-{i}");
        let pool = s
            .create_pool(ProxyPool::new(name.clone()).unwrap())
            .await
            .unwrap();
        proxies.push((
            name,
            s.add_proxy(
                Proxy::builder(pool.id, "10.0.0.1", 80)
                    .max_concurrency(2)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap(),
        ));
    }
    for port in cluster().ports() {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "script", "flush"])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    for (name, proxy) in &proxies {
        let lease = s
            .acquire(&AcquireRequest::new(name.clone(), "w", Duration::from_secs(60)).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            s.get_proxy(proxy.id).await.unwrap().unwrap().current_leases,
            1
        );
        assert_eq!(s.release(&lease).await.unwrap(), ReleaseOutcome::Released);
        assert_eq!(
            s.get_proxy(proxy.id).await.unwrap().unwrap().current_leases,
            0
        );
    }
}
