//! A crawler fleet in one process: three `ProxyManager`s, each with its own
//! `RedisStorage` connection (standing for three hosts), share one pool whose
//! proxies allow 1 to 3 workers at once. Each host runs four workers that lease,
//! "crawl" for a moment and release. The summary shows, per proxy, the most
//! workers that held it at once next to its limit, and that every lease came back.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example fleet
//! ```
//!
//! It writes only under its own namespace (`fleet-example-<random>`) and deletes
//! it at the end, so it never touches other data on that Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{
    AcquireOptions, AdminStorage, LeaseStorage, PoolName, Proxy, ProxyManager, ProxyPool,
    ReleaseOutcome, RetryPolicy,
};
use uuid::Uuid;

const POOL: &str = "fleet-demo";
const HOSTS: usize = 3;
const WORKERS_PER_HOST: usize = 4;
const JOBS_PER_WORKER: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the example itself sees of one proxy (independently of the storage).
#[derive(Debug, Default)]
struct Occupancy {
    label: String,
    max: u32,
    holding: u32,
    peak: u32,
    leases: u32,
}

type Tracker = Arc<Mutex<HashMap<Uuid, Occupancy>>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let Some(url) = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        println!(
            "fleet needs a Redis: run it as `REDIS_URL=redis://127.0.0.1:6379 cargo run --example fleet` \
             (it only writes under its own fleet-example-* namespace and removes it at the end)"
        );
        return Ok(());
    };
    let ns = format!("fleet-example-{:012x}", fastrand::u64(..) >> 16);
    println!("Redis {url}, namespace {ns}");

    // One manager per "host", each with its own connections.
    let mut hosts = Vec::new();
    for _ in 0..HOSTS {
        let storage = RedisStorage::new(RedisConfig::from_url(&url).namespace(&ns))?;
        hosts.push(
            ProxyManager::builder(storage)
                .auto_register_consumers(true)
                .build(),
        );
    }

    let result = run(&hosts).await;
    let teardown = teardown(&hosts[0], &url, &ns).await;
    result?;
    teardown
}

async fn run(hosts: &[ProxyManager<RedisStorage>]) -> Result<(), BoxError> {
    // Set up the shared pool from host 1 (any host would do).
    let admin = hosts[0].storage();
    let pool = admin.create_pool(ProxyPool::new(POOL)?).await?;
    let specs = [("AR", 1), ("AR", 2), ("BR", 3), ("CL", 1), ("MX", 2)];
    let proxies = specs
        .iter()
        .enumerate()
        .map(|(i, (country, max))| {
            Proxy::builder(pool.id, format!("10.0.0.{}", i + 1), 8000)
                .country(*country)
                .max_concurrency(*max)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let proxies = admin.add_proxies(proxies).await?;
    let slots: u32 = proxies.iter().filter_map(|p| p.max_concurrency).sum();
    println!(
        "pool {POOL}: {} proxies, {slots} slots, for {} workers on {HOSTS} hosts\n",
        proxies.len(),
        HOSTS * WORKERS_PER_HOST
    );
    let tracker: Tracker = Arc::new(Mutex::new(
        proxies
            .iter()
            .map(|p| {
                let occupancy = Occupancy {
                    label: format!("{}:{}", p.host, p.port),
                    max: p.max_concurrency.unwrap_or(u32::MAX),
                    ..Occupancy::default()
                };
                (p.id, occupancy)
            })
            .collect(),
    ));

    // Every host runs its workers; all of them lease from the same pool.
    let mut tasks = Vec::new();
    for (h, manager) in hosts.iter().enumerate() {
        for w in 0..WORKERS_PER_HOST {
            let manager = manager.clone();
            let tracker = Arc::clone(&tracker);
            let name = format!("host-{}/worker-{}", h + 1, w + 1);
            tasks.push(tokio::spawn(worker(manager, name, tracker)));
        }
    }
    for task in tasks {
        task.await??;
    }

    // The summary: what the example saw, and what the storage says now.
    println!(
        "\n{:<14} {:>4} {:>6} {:>7}",
        "proxy", "max", "peak", "leases"
    );
    let mut ok = true;
    {
        let tracker = tracker.lock().unwrap();
        let mut rows: Vec<_> = tracker.values().collect();
        rows.sort_by(|a, b| a.label.cmp(&b.label));
        for o in rows {
            let verdict = if o.peak <= o.max {
                "ok"
            } else {
                ok = false;
                "OVER LIMIT"
            };
            println!(
                "{:<14} {:>4} {:>6} {:>7}  {verdict}",
                o.label, o.max, o.peak, o.leases
            );
        }
    }
    let stats = admin.pool_stats(&pool.name).await?;
    let live = admin.list_leases(&pool.name).await?;
    let mut counted = 0;
    for p in &proxies {
        counted += admin.get_proxy(p.id).await?.map_or(0, |p| p.current_leases);
    }
    println!(
        "\nafter the run: {} live leases, {} leases counted on proxies, pool stats total_leases {}",
        live.len(),
        counted,
        stats.total_leases
    );
    let released = live.is_empty() && counted == 0 && stats.total_leases == 0;
    if ok && released {
        println!("OK: no proxy ever had more holders than its max_concurrency, and every lease was released");
        Ok(())
    } else {
        Err(format!("limits held: {ok}; every lease released: {released}").into())
    }
}

/// One crawler worker: lease (waiting with backoff when the pool is full),
/// crawl, release.
async fn worker(
    manager: ProxyManager<RedisStorage>,
    name: String,
    tracker: Tracker,
) -> Result<(), BoxError> {
    let retry = RetryPolicy::new(30).max_backoff(Duration::from_millis(200));
    for job in 1..=JOBS_PER_WORKER {
        let options = AcquireOptions::new()
            .consumer(name.as_str())
            .duration(Duration::from_secs(30));
        let Some(lease) = manager
            .acquire_proxy_with_retry(POOL, options, &retry)
            .await?
        else {
            println!("{name}: job {job}: no proxy free, giving up on it");
            continue;
        };
        let (label, holding, max) = {
            let mut tracker = tracker.lock().unwrap();
            let o = tracker
                .get_mut(&lease.proxy_id)
                .ok_or("leased a proxy that is not in the pool")?;
            o.holding += 1;
            o.peak = o.peak.max(o.holding);
            o.leases += 1;
            (o.label.clone(), o.holding, o.max)
        };
        println!("{name}: job {job}: leased {label} ({holding}/{max} in use)");

        // The crawl.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(20..60))).await;

        // Stop counting ourselves before the slot is given back.
        tracker
            .lock()
            .unwrap()
            .get_mut(&lease.proxy_id)
            .ok_or("leased a proxy that is not in the pool")?
            .holding -= 1;
        let outcome = manager.release_proxy(&lease).await?;
        if outcome != ReleaseOutcome::Released {
            return Err(format!("{name}: release of {} said {outcome}", lease.id).into());
        }
    }
    Ok(())
}

/// Removes the pool, then whatever else the example left under its namespace
/// (the consumers registry, finished lease records kept for late releases).
async fn teardown(admin: &ProxyManager<RedisStorage>, url: &str, ns: &str) -> Result<(), BoxError> {
    admin.storage().remove_pool(&PoolName::new(POOL)?).await?;
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len();
            let _: i64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    println!("removed pool {POOL} and the {deleted} other keys of namespace {ns}");
    Ok(())
}
