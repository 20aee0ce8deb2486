//! Sweeper throughput: leases reclaimed per second with 100,000 expired leases in
//! one pool, and the longest single Redis call of that sweep (timed by the client
//! per cleanup batch, and by Redis's SLOWLOG). Each batch size runs in 3
//! interleaved rounds (a sweep's rate moves by half with this shared machine's
//! load), then their medians are printed.
//!
//! ```text
//! cargo bench --bench sweeper                                 # about 2 minutes
//! LIGHTHOUSE_SWEEP_BATCHES=200 cargo bench --bench sweeper   # only the default batch
//! LIGHTHOUSE_SWEEP_ROUNDS=5 cargo bench --bench sweeper      # more rounds
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
#[derive(Clone)]
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

/// One sweep measured: what [`sweep_run`] found.
#[derive(Clone)]
struct SweepRun {
    reclaimed: u64,
    secs: f64,
    leases_per_sec: f64,
    calls: u64,
    longest_client: Duration,
    slow: SlowCalls,
}

impl SweepRun {
    fn line(&self, batch: u32) -> String {
        format!(
            "sweep (batch {batch}): reclaimed {} expired leases in {:.2} s = {:.0} leases/s; {} cleanup calls; \
             longest call {:.1} ms (client) / {:.1} ms (SLOWLOG, call #{}; {} script calls over 1 ms, their median {:.1} ms, p99 {:.1} ms)",
            self.reclaimed,
            self.secs,
            self.leases_per_sec,
            self.calls,
            self.longest_client.as_secs_f64() * 1e3,
            self.slow.max as f64 / 1e3,
            self.slow.rank,
            self.slow.n,
            self.slow.median as f64 / 1e3,
            self.slow.p99 as f64 / 1e3,
        )
    }
}

/// Takes [`LEASES`] leases, waits until they are all due, and sweeps them
/// with cleanup calls of `batch` leases.
async fn sweep_run(
    storage: &std::sync::Arc<RedisStorage>,
    url: &str,
    raw: &mut redis::aio::MultiplexedConnection,
    batch: u32,
) -> SweepRun {
    // 100,000 leases that all expire together, after the last one is taken
    // (an acquire would otherwise reclaim the earliest ones itself).
    // Acquiring takes 1-2 s here (the assert below says when it did not fit).
    let lease = Duration::from_secs(6);
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
            .query_async(raw)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(raw)
        .await
        .unwrap();
    let sweeper = Sweeper::new(
        RedisStorage::new(RedisConfig::from_url(url).namespace("sweepbench")).unwrap(),
        SweeperConfig {
            batch_size: batch,
            ..SweeperConfig::default()
        },
    );
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let report = sweeper.sweep_once(&rx).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let slow = slowlog_fcalls(raw).await;
    assert_eq!(
        report.reclaimed as usize, taken,
        "every lease reclaimed exactly once"
    );
    SweepRun {
        reclaimed: report.reclaimed,
        secs,
        leases_per_sec: report.reclaimed as f64 / secs,
        calls: report.batches,
        longest_client: report.longest_batch,
        slow,
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
    // LIGHTHOUSE_SWEEP_ROUNDS=3: rounds of every batch size, interleaved, so
    // a change in the machine's load falls on all of them; the medians follow.
    let rounds: usize = std::env::var("LIGHTHOUSE_SWEEP_ROUNDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(3);
    let mut runs: Vec<Vec<SweepRun>> = vec![Vec::new(); batches.len()];
    for round in 1..=rounds {
        for (k, &batch) in batches.iter().enumerate() {
            let run = sweep_run(&storage, &url, &mut raw, batch).await;
            println!("round {round}: {}", run.line(batch));
            runs[k].push(run);
        }
    }
    for (k, &batch) in batches.iter().enumerate() {
        let median = |f: &dyn Fn(&SweepRun) -> f64| {
            let mut v: Vec<f64> = runs[k].iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let max = runs[k].iter().map(|r| r.slow.max).max().unwrap_or(0);
        println!(
            "batch {batch}, median of {rounds}: {:.0} leases/s; longest call (SLOWLOG) {:.1} ms \
             (the longest of all rounds {:.1} ms); p99 {:.1} ms",
            median(&|r| r.leases_per_sec),
            median(&|r| r.slow.max as f64) / 1e3,
            max as f64 / 1e3,
            median(&|r| r.slow.p99 as f64) / 1e3,
        );
    }
    let stats = storage.pool_stats(&pool.name).await.unwrap();
    assert_eq!(stats.total_leases, 0);
    println!(
        "pool after the sweep: {} live leases, {} proxies available",
        stats.total_leases, stats.available_proxies
    );
}
