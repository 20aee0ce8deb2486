//! Sweeper throughput: leases reclaimed per second with 100,000 expired leases in
//! one pool, and the longest single Redis call of that sweep (timed by the client
//! per cleanup batch, and by Redis's SLOWLOG).
//!
//! ```text
//! cargo bench --bench sweeper
//! LIGHTHOUSE_SWEEP_BATCHES=200 cargo bench --bench sweeper   # only the default batch
//! ```
//!
//! It spawns its own `redis-server` (the test harness's), never a shared one.

#[path = "../tests/support/server.rs"]
#[allow(dead_code)]
mod server;

use std::time::{Duration, Instant};

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::sweeper::{Sweeper, SweeperConfig};
use lighthouse_lease::{
    AcquireRequest, AdminStorage, ConsumerName, LeaseStorage, Proxy, ProxyPool,
};

const LEASES: usize = 100_000;
const CONCURRENCY: usize = 64;

/// The script calls SLOWLOG logged (all over 1 ms, see below).
struct SlowCalls {
    /// The longest, µs.
    max: i64,
    /// How many.
    n: usize,
    /// Their median and 99th percentile, µs.
    median: i64,
    p99: i64,
    /// Which call the longest was, counted from the first of the sweep (0: the first).
    rank: usize,
}

async fn slowlog_fcalls(conn: &mut redis::aio::MultiplexedConnection) -> SlowCalls {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100_000)
        .query_async(conn)
        .await
        .expect("SLOWLOG GET");
    // (id, µs) of each script call; SLOWLOG lists the newest first.
    let mut calls: Vec<(i64, i64)> = Vec::new();
    for e in entries {
        let redis::Value::Array(fields) = e else {
            continue;
        };
        let (Some(redis::Value::Int(id)), Some(redis::Value::Int(micros))) =
            (fields.first(), fields.get(2))
        else {
            continue;
        };
        let is_script = matches!(fields.get(3), Some(redis::Value::Array(args))
            if matches!(args.first(), Some(redis::Value::BulkString(c)) if c.eq_ignore_ascii_case(b"fcall")));
        if is_script {
            calls.push((*id, *micros));
        }
    }
    calls.sort_unstable();
    let Some(&(max_id, max)) = calls.iter().max_by_key(|c| c.1) else {
        return SlowCalls {
            max: 0,
            n: 0,
            median: 0,
            p99: 0,
            rank: 0,
        };
    };
    let rank = calls.iter().position(|c| c.0 == max_id).unwrap_or(0);
    let mut us: Vec<i64> = calls.iter().map(|c| c.1).collect();
    us.sort_unstable();
    SlowCalls {
        max,
        n: us.len(),
        median: us[us.len() / 2],
        p99: us[(us.len() * 99 / 100).min(us.len() - 1)],
        rank,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "sweeper bench: run it with `cargo bench --bench sweeper` (nothing to do in test mode)"
        );
        return;
    }
    let server = server::RedisServer::spawn().expect("spawn redis-server");
    let url = server.url();
    let storage = RedisStorage::new(RedisConfig::from_url(url.clone()).namespace("sweepbench"))
        .expect("storage");
    let pool = storage
        .create_pool(ProxyPool::new("bench").unwrap())
        .await
        .unwrap();
    storage
        .ensure_consumer(&ConsumerName::new("w").unwrap())
        .await
        .unwrap();
    let proxies: Vec<Proxy> = (0..1000)
        .map(|i| {
            Proxy::builder(pool.id, format!("10.9.{}.{}", i / 250, i % 250), 8080)
                .build()
                .unwrap()
        })
        .collect();
    storage.add_proxies(proxies).await.unwrap();

    let storage = std::sync::Arc::new(storage);
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // LIGHTHOUSE_SWEEP_BATCHES=200 (comma-separated) runs only those batch sizes.
    let batches: Vec<u32> = std::env::var("LIGHTHOUSE_SWEEP_BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 200, 500]);
    for batch in batches {
        // 100,000 leases that all expire together, after the last one is taken
        // (an acquire would otherwise reclaim the earliest ones itself).
        let lease = Duration::from_secs(12);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..CONCURRENCY {
            let s = storage.clone();
            tasks.push(tokio::spawn(async move {
                let req = AcquireRequest::new("bench", "w", lease).unwrap();
                for _ in 0..LEASES / CONCURRENCY {
                    s.acquire(&req).await.unwrap().expect("unlimited proxies");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let taken = (LEASES / CONCURRENCY) * CONCURRENCY;
        let took = started.elapsed();
        assert!(
            took < lease,
            "acquiring took {took:?}: raise the lease duration"
        );
        println!(
            "acquired {taken} leases in {:.1} s; waiting for them to expire",
            took.as_secs_f64()
        );
        // The last lease was taken `took` after the first: wait a full lease.
        tokio::time::sleep(lease + Duration::from_millis(500)).await;

        // Log every script call over 1 ms (the cleanup calls; the commands
        // inside scripts are far below that).
        for (k, v) in [
            ("slowlog-log-slower-than", 1000),
            ("slowlog-max-len", 100_000),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(&mut raw)
            .await
            .unwrap();
        let sweeper = Sweeper::new(
            RedisStorage::new(RedisConfig::from_url(url.clone()).namespace("sweepbench")).unwrap(),
            SweeperConfig {
                batch_size: batch,
                ..SweeperConfig::default()
            },
        );
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let t = Instant::now();
        let report = sweeper.sweep_once(&rx).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        let slow = slowlog_fcalls(&mut raw).await;
        println!(
            "sweep (batch {batch}): reclaimed {} expired leases in {secs:.2} s = {:.0} leases/s; {} cleanup calls; \
             longest call {:.1} ms (client) / {:.1} ms (SLOWLOG, call #{}; {} script calls over 1 ms, their median {:.1} ms, p99 {:.1} ms)",
            report.reclaimed,
            report.reclaimed as f64 / secs,
            report.batches,
            report.longest_batch.as_secs_f64() * 1e3,
            slow.max as f64 / 1e3,
            slow.rank,
            slow.n,
            slow.median as f64 / 1e3,
            slow.p99 as f64 / 1e3,
        );
        assert_eq!(
            report.reclaimed as usize, taken,
            "every lease reclaimed exactly once"
        );
    }
    let stats = storage.pool_stats(&pool.name).await.unwrap();
    assert_eq!(stats.total_leases, 0);
    println!(
        "pool after the sweep: {} live leases, {} proxies available",
        stats.total_leases, stats.available_proxies
    );
}
