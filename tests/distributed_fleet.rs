#![cfg(all(feature = "redis", unix))]
//! The fleet-wide features across real OS processes.
//!
//! [`rate_limit_holds_across_processes`]: four worker processes, each with
//! eight tokio tasks, acquire and release as fast as they can from one pool
//! whose rate limit allows one lease per proxy per 150 ms. Each worker writes
//! down, for every lease it got, the proxy, the lease's start (Redis's clock,
//! from the granting script) and its own reading of Redis's `TIME` just before
//! the acquire and just after it. The parent then checks, per proxy over every
//! process, that leases started at least 150 ms apart, and (with the workers'
//! own clock readings only, independent of the library) that no two leases of a
//! proxy fit in one 150 ms window.
//!
//! Worker processes are this test binary run again (`<exe> worker_entry
//! --exact` with `LIGHTHOUSE_WORKER` and the parent's `REDIS_URL`).

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lighthouse_lease::{
    AcquireOptions, AdminStorage, LeaseStorage, Proxy, ProxyManager, ProxyPool, RateLimit,
};
use uuid::Uuid;

const WORKER_ENV: &str = "LIGHTHOUSE_WORKER";
const REPORT: &str = "LHW";
const SPACING_MS: i64 = 150;
const POOL: &str = "fleet-rate";

use support::{runtime, storage_on};

async fn redis_time_ms(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1000 + micros / 1000
}

#[test]
fn worker_entry() {
    let Ok(role) = std::env::var(WORKER_ENV) else {
        return;
    };
    let url = std::env::var("REDIS_URL").unwrap_or_default();
    assert!(
        !url.trim().is_empty(),
        "worker: REDIS_URL must be set by the parent"
    );
    match role.as_str() {
        "rate" => runtime().block_on(rate_worker(url)),
        other => panic!("worker: unknown role {other:?}"),
    }
}

/// Acquire → release in 8 tasks for `LHW_MS`; prints one line per lease:
/// `LHW <proxy> <acquired ms> <before ms> <after ms>`.
async fn rate_worker(url: String) {
    let ns = std::env::var("LHW_NS").expect("LHW_NS");
    let run_ms: u64 = std::env::var("LHW_MS")
        .expect("LHW_MS")
        .parse()
        .expect("ms");
    let m = ProxyManager::new(storage_on(&url, &ns));
    let until = Instant::now() + Duration::from_millis(run_ms);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let m = m.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = redis::Client::open(url).expect("client");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connection");
            let options = AcquireOptions::new();
            let mut lines = Vec::new();
            while Instant::now() < until {
                let before = redis_time_ms(&mut conn).await;
                let got = m
                    .acquire_proxy(POOL, options.clone())
                    .await
                    .expect("acquire");
                let after = redis_time_ms(&mut conn).await;
                match got {
                    Some(lease) => {
                        lines.push(format!(
                            "{REPORT} {} {} {before} {after}",
                            lease.proxy_id,
                            lease.acquired_at.timestamp_millis()
                        ));
                        m.release_proxy(&lease).await.expect("release");
                    }
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
            lines
        }));
    }
    for t in tasks {
        for line in t.await.expect("task") {
            println!("{line}");
        }
    }
}

/// Fleet-wide rate limit: 4 processes, leases of one proxy never closer than
/// the limit's spacing.
#[test]
fn rate_limit_holds_across_processes() {
    const PROCS: usize = 4;
    let url = support::redis_url();
    let ns = support::unique_namespace();
    let rt = runtime();
    let storage = storage_on(&url, &ns);
    let limit = RateLimit::new(1, Duration::from_millis(SPACING_MS as u64)).unwrap();
    rt.block_on(async {
        let pool = storage
            .create_pool(ProxyPool::new(POOL).unwrap().with_rate_limit(limit))
            .await
            .unwrap();
        let proxies = (0..6u32)
            .map(|i| {
                Proxy::builder(pool.id, format!("10.30.0.{i}"), 8000)
                    .max_concurrency(4)
                    .build()
                    .unwrap()
            })
            .collect();
        storage.add_proxies(proxies).await.unwrap();
    });
    let exe = std::env::current_exe().expect("current test binary");
    let children: Vec<_> = (0..PROCS)
        .map(|_| {
            Command::new(&exe)
                .args(["worker_entry", "--exact", "--nocapture", "--test-threads=1"])
                .env(WORKER_ENV, "rate")
                .env("REDIS_URL", &url)
                .env("LHW_NS", &ns)
                .env("LHW_MS", "2500")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut by_proxy: HashMap<Uuid, Vec<(i64, i64, i64)>> = HashMap::new();
    for child in children {
        let out = child.wait_with_output().expect("worker output");
        assert!(
            out.status.success(),
            "worker failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rest) = line.strip_prefix(REPORT) else {
                continue;
            };
            let w: Vec<&str> = rest.split_whitespace().collect();
            let proxy: Uuid = w[0].parse().unwrap();
            let (at, before, after) = (
                w[1].parse().unwrap(),
                w[2].parse().unwrap(),
                w[3].parse().unwrap(),
            );
            by_proxy.entry(proxy).or_default().push((at, before, after));
        }
    }
    let total: usize = by_proxy.values().map(Vec::len).sum();
    // 6 proxies × 2.5 s / 150 ms ≈ 100 leases at most; the fleet asks far more
    // often, so the limit, not the workload, must be what bounds them.
    assert!(
        total >= 30,
        "the run must exercise the limit: only {total} leases"
    );
    println!(
        "{total} leases over {} proxies from {PROCS} processes",
        by_proxy.len()
    );
    for (proxy, mut leases) in by_proxy {
        leases.sort();
        for pair in leases.windows(2) {
            let ((a, a_before, _), (b, _, b_after)) = (pair[0], pair[1]);
            assert!(
                b - a >= SPACING_MS,
                "proxy {proxy}: leases started {a} and {b}, {} ms apart (limit {SPACING_MS} ms)",
                b - a
            );
            // Independent of the library's stamps: each grant happened between
            // the worker's two TIME readings, so two grants at least 150 ms
            // apart leave the later one's `after` at least 150 ms past the
            // earlier one's `before`.
            assert!(
                b_after - a_before >= SPACING_MS,
                "proxy {proxy}: two leases within {} ms by the workers' own clock readings",
                b_after - a_before
            );
        }
    }
    // Every lease was released: the pool is idle again.
    let stats = rt.block_on(storage.pool_stats(&support::pn(POOL))).unwrap();
    assert_eq!(stats.total_leases, 0);
}
