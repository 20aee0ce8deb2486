//! The user guide's walkthrough: create a pool, add proxies, lease, filter, run out
//! of slots, release, clean up.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! It runs in memory and needs no services. With `REDIS_URL` set it tells the same
//! story through `RedisStorage`, in its own namespace (`quickstart-<random>`),
//! which it removes at the end:
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart
//! ```

use std::time::Duration;

use lighthouse_lease::{
    AcquireOptions, AdminStorage, ConsumerName, InMemoryStorage, PoolName, Proxy, ProxyFilters,
    ProxyManager, ProxyPool, Storage,
};

const POOL: &str = "latam-residential";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("REDIS_URL") {
        #[cfg(feature = "redis")]
        Ok(url) if !url.is_empty() => {
            use lighthouse_lease::redis::{RedisConfig, RedisStorage};
            let namespace = format!(
                "quickstart-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            println!("storage: Redis at {url}, namespace {namespace}");
            let storage =
                RedisStorage::new(RedisConfig::from_url(url.clone()).namespace(namespace.clone()))?;
            let manager = ProxyManager::new(storage);
            let result = run(&manager).await;
            // Leave nothing behind: the pool, then the namespace's other keys
            // (consumer registry, finished lease records waiting for their TTL).
            manager.storage().remove_pool(&PoolName::new(POOL)?).await?;
            let mut conn = redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await?;
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{namespace}:*"))
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<()>(&mut conn)
                        .await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            result
        }
        _ => {
            println!("storage: in memory (set REDIS_URL to run this on Redis)");
            run(&ProxyManager::new(InMemoryStorage::new())).await
        }
    }
}

async fn run<S: Storage>(manager: &ProxyManager<S>) -> Result<(), Box<dyn std::error::Error>> {
    let storage = manager.storage();

    // 1. A pool with three proxies; the first allows two workers at once.
    let pool = storage
        .create_pool(ProxyPool::new(POOL)?.with_description("LATAM residential IPs"))
        .await?;
    println!("created pool {} ({})", pool.name, pool.id);
    let proxies = vec![
        Proxy::builder(pool.id, "1.1.1.1", 8080)
            .max_concurrency(2)
            .country("AR")
            .source("oxylabs")
            .city("Buenos Aires")
            .location(-34.6037, -58.3816)
            .build()?,
        Proxy::builder(pool.id, "2.2.2.2", 8080)
            .max_concurrency(1)
            .country("CL")
            .source("brightdata")
            .credentials("crawler", "s3cr3t:pass")
            .location(-33.4489, -70.6693)
            .build()?,
        Proxy::builder(pool.id, "3.3.3.3", 1080)
            .protocol(lighthouse_lease::ProxyProtocol::Socks5)
            .max_concurrency(1)
            .country("BR")
            .source("oxylabs")
            .build()?,
    ];
    for p in storage.add_proxies(proxies).await? {
        let limit = p
            .max_concurrency
            .map_or("unlimited".to_string(), |m| m.to_string());
        println!("  added {} (max_concurrency {limit})", p.url());
    }
    storage
        .ensure_consumer(&ConsumerName::new("worker-1")?)
        .await?;
    println!("registered consumer worker-1");

    // 2. Lease as worker-1 for 300 s.
    let worker = || {
        AcquireOptions::new()
            .consumer("worker-1")
            .duration(Duration::from_secs(300))
    };
    let mut held = Vec::new();
    match manager.acquire_proxy(POOL, worker()).await? {
        Some(lease) => {
            println!(
                "leased proxy {} -> {} until {}",
                lease.proxy_id,
                lease.proxy_url(),
                lease.expires_at.format("%H:%M:%S")
            );
            held.push(lease);
        }
        None => println!("no proxy available"),
    }

    // 3. With filters: an Argentinian oxylabs proxy, then anything near Santiago.
    let filters = ProxyFilters::new().country("AR").source("oxylabs");
    if let Some(lease) = manager
        .acquire_proxy(POOL, worker().filters(filters))
        .await?
    {
        println!(
            "leased with country=AR source=oxylabs -> {}",
            lease.proxy_url()
        );
        held.push(lease);
    }
    let near_santiago = ProxyFilters::new().near(-33.45, -70.66, 50.0);
    if let Some(lease) = manager
        .acquire_proxy(POOL, worker().filters(near_santiago))
        .await?
    {
        println!("leased within 50 km of Santiago -> {}", lease.proxy_url());
        held.push(lease);
    }

    // 4. Exhaust the slots: every proxy is now full, so acquire returns None.
    while let Some(lease) = manager.acquire_proxy(POOL, worker()).await? {
        println!("leased {}", lease.proxy_url());
        held.push(lease);
    }
    println!("all slots in use: acquire_proxy returned None");
    let stats = storage.pool_stats(&pool.name).await?;
    println!(
        "stats: {} proxies, {} available, {} leases",
        stats.total_proxies, stats.available_proxies, stats.total_leases
    );

    // 5. Release: the first release frees a slot, a second one changes nothing.
    let first = held.remove(0);
    println!(
        "release lease {} -> {}",
        first.id,
        manager.release_proxy(&first).await?
    );
    println!("release again -> {}", manager.release_proxy(&first).await?);
    for lease in &held {
        manager.release_proxy(lease).await?;
    }
    println!("released the other {} leases", held.len());

    // 6. A worker that dies never releases: its lease expires and cleanup gives
    //    the slot back.
    let crashed = manager
        .acquire_proxy(POOL, worker().duration(Duration::from_millis(200)))
        .await?
        .ok_or("a proxy should be free")?;
    println!(
        "worker-1 leased {} for 200 ms and crashed",
        crashed.proxy_url()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = manager.cleanup_expired_leases().await?;
    println!("Expired leases released: {released}");
    let stats = storage.pool_stats(&pool.name).await?;
    println!(
        "stats: {} proxies, {} available, {} leases",
        stats.total_proxies, stats.available_proxies, stats.total_leases
    );
    Ok(())
}
