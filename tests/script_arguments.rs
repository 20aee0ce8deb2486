#![cfg(feature = "redis")]
//! The scripts refuse bad arguments sent to them directly (not through the
//! library, which never sends them), with a clear error and nothing written:
//! release.lua reads each lease's token from its record key, and acquire.lua
//! reads a short block (a request that repeats the one before it) as its
//! consumer name alone. Each test has its own `redis-server`.

mod support;

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::{AcquireOptions, LeaseStatus, LeaseStorage, PoolName, ProxyManager};
use support::server::RedisServer;

const POOL: &str = "args-pool";

/// The name Redis knows operation `op` of this version's library by.
fn function(op: &str) -> String {
    let hash = RedisStorage::library_name()
        .strip_prefix("lighthouse_")
        .expect("library name");
    format!("lh_{hash}_{op}")
}

async fn setup(server: &RedisServer, ns: &str) -> ProxyManager<RedisStorage> {
    let config = support::counting_config(&server.url(), ns);
    support::one_proxy_pool(RedisStorage::new(config).unwrap(), POOL, 4).await
}

/// The error text of a call that must fail.
async fn error_of(c: &mut redis::aio::MultiplexedConnection, cmd: &redis::Cmd) -> String {
    match cmd.query_async::<redis::Value>(c).await {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn release_refuses_a_token_that_is_not_digits_and_writes_nothing() {
    let server = RedisServer::spawn().unwrap();
    let ns = support::unique_namespace();
    let m = setup(&server, &ns).await;
    let lease = m
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
        .unwrap();
    let mut c = support::raw_conn(&server.url()).await;
    let prefix = format!("{ns}:{{{POOL}}}:");
    let records = support::lease_records(&mut c, &ns, POOL).await;
    assert_eq!(records.len(), 1);
    let good = records[0].0.clone();
    let release = |keys: &[String]| {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function("release"))
            .arg(keys.len() + 2)
            .arg(format!("{prefix}meta"))
            .arg(format!("{prefix}live"))
            .arg(keys)
            .arg(&prefix)
            .arg(60_000);
        cmd
    };
    // Alone (the one-lease way), and beside a live lease (the batch way): a
    // key of the pool whose tail is not a token.
    for keys in [
        vec![format!("{prefix}meta")],
        vec![good.clone(), format!("{prefix}12x")],
        vec![format!("{prefix}live"), good.clone()],
    ] {
        let e = error_of(&mut c, &release(&keys)).await;
        assert!(e.contains("bad lease token"), "{keys:?}: {e}");
    }
    // A key of another pool.
    let e = error_of(&mut c, &release(&[format!("{ns}:{{other}}:1")])).await;
    assert!(e.contains("bad lease token"), "{e}");
    // Nothing was written: the lease is still live, then releases as usual.
    let live: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}live"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(live, 1);
    assert_eq!(
        m.storage()
            .get_lease(&PoolName::new(POOL).unwrap(), lease.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        LeaseStatus::Active
    );
    let outcome: String = release(std::slice::from_ref(&good))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(outcome, "released");
}

#[tokio::test(flavor = "current_thread")]
async fn acquire_refuses_a_bad_short_block_and_writes_nothing() {
    let server = RedisServer::spawn().unwrap();
    let ns = support::unique_namespace();
    let _m = setup(&server, &ns).await;
    let mut c = support::raw_conn(&server.url()).await;
    let prefix = format!("{ns}:{{{POOL}}}:");
    let acquire = |n: usize, blocks: &[&str]| {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function("acquire"))
            .arg(2)
            .arg(format!("{prefix}meta"))
            .arg(format!("{prefix}live"))
            .arg(&prefix)
            .arg(format!("100 60000 {n}"))
            .arg(blocks);
        cmd
    };
    // A full block: the mark, consumer, duration, TTL, selector, filter,
    // exact, random, request/session key, session ms, site, ticket (3), tags.
    let full = [
        "\u{2}",
        "worker-1",
        "60000",
        "120000",
        "least_used",
        "",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
    ];
    // A short block first (nothing to repeat), and an empty consumer name
    // where a short block stands.
    let e = error_of(&mut c, &acquire(1, &["worker-2"])).await;
    assert!(e.contains("a short request block must follow"), "{e}");
    let mut blocks = full.to_vec();
    blocks.push("");
    let e = error_of(&mut c, &acquire(2, &blocks)).await;
    assert!(e.contains("bad consumer name"), "{e}");
    let live: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}live"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(live, 0, "nothing written");
    // The same with a good consumer: two leases, the second by the short block.
    blocks.pop();
    blocks.push("worker-2");
    let got: Vec<String> = acquire(2, &blocks).query_async(&mut c).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| g.starts_with("OK ")), "{got:?}");
    let records = support::lease_records(&mut c, &ns, POOL).await;
    let mut consumers: Vec<String> = records
        .iter()
        .map(|(_, v)| v.rsplit(' ').next().unwrap_or("").to_string())
        .collect();
    consumers.sort();
    assert_eq!(consumers, ["worker-1", "worker-2"]);
}
