//! Redis for the integration tests.
//!
//! [`redis_url`] picks, once per test binary:
//!
//! 1. `REDIS_URL`, when set: an existing server. Tests never flush it; each
//!    storage gets its own namespace (`lhtest-<uuid>`) instead.
//! 2. Else a private `redis-server` from PATH on a free loopback port, without
//!    persistence, shared by the binary's tests and killed when they end.
//! 3. Else a `redis:7-alpine` container through Docker, when a Docker engine
//!    answers.
//!
//! When none works, tests panic with a message naming the three options.
//! Tests run in parallel: isolation is by namespace.

#![allow(dead_code)]

pub mod cluster;
pub mod server;

use std::sync::OnceLock;
use std::time::Duration;

use lighthouse_lease::redis::{RedisConfig, RedisStorage};

enum Backend {
    External(String),
    Spawned(server::RedisServer),
    Docker(server::DockerRedis),
}

impl Backend {
    fn url(&self) -> String {
        match self {
            Backend::External(u) => u.clone(),
            Backend::Spawned(s) => s.url(),
            Backend::Docker(d) => d.url(),
        }
    }
}

static BACKEND: OnceLock<Result<Backend, String>> = OnceLock::new();

fn start() -> Result<Backend, String> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        if !url.trim().is_empty() {
            return Ok(Backend::External(url));
        }
    }
    let spawn_err = match server::RedisServer::spawn() {
        Ok(s) => return Ok(Backend::Spawned(s)),
        Err(e) => e,
    };
    let docker_err = match server::DockerRedis::start() {
        Ok(d) => return Ok(Backend::Docker(d)),
        Err(e) => e,
    };
    Err(format!(
        "no Redis for the tests. Either (1) set REDIS_URL to a Redis the tests may \
         write to (they use their own namespaces and never flush it), or (2) install \
         redis-server on PATH (e.g. `apt-get install redis-server`), or (3) make a \
         Docker engine available. redis-server: {spawn_err}; docker: {docker_err}"
    ))
}

/// The URL of the Redis these tests use (see the module docs).
pub fn redis_url() -> String {
    match BACKEND.get_or_init(start) {
        Ok(b) => b.url(),
        Err(e) => panic!("{e}"),
    }
}

/// Whether the tests run on a server they started (so they may restart it,
/// flush it, and so on).
pub fn owns_server() -> bool {
    matches!(
        BACKEND.get_or_init(start),
        Ok(Backend::Spawned(_) | Backend::Docker(_))
    )
}

/// A namespace no other test uses.
pub fn unique_namespace() -> String {
    format!("lhtest-{}", uuid::Uuid::new_v4().simple())
}

/// Settings for a fresh, isolated storage on the test Redis.
pub fn test_config() -> RedisConfig {
    RedisConfig::from_url(redis_url())
        .namespace(unique_namespace())
        .pool_size(8)
        .response_timeout(Duration::from_secs(10))
}

/// A fresh, isolated storage on the test Redis.
pub fn storage() -> RedisStorage {
    RedisStorage::new(test_config()).expect("valid test config")
}

/// A manager over `storage` with one pool, `latam-residential`, holding one proxy
/// with `max` slots.
pub async fn one_proxy_manager<S: lighthouse_lease::Storage>(
    storage: S,
    max: u32,
) -> lighthouse_lease::ProxyManager<S> {
    use lighthouse_lease::{Proxy, ProxyManager, ProxyPool};
    let m = ProxyManager::new(storage);
    let pool = m
        .storage()
        .create_pool(ProxyPool::new("latam-residential").unwrap())
        .await
        .unwrap();
    m.storage()
        .add_proxy(
            Proxy::builder(pool.id, "10.0.0.1", 80)
                .max_concurrency(max)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    m
}

/// A plain connection to the Redis at `url`, for raw commands the library does
/// not offer (inspecting keys, injecting faults).
pub async fn raw_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("raw Redis connection")
}

/// Every key of the test Redis under `<ns>:`, sorted (SCAN, never KEYS).
pub async fn keys_under(ns: &str) -> Vec<String> {
    let mut c = raw_conn(&redis_url()).await;
    let mut out: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .expect("SCAN");
        out.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort();
    out
}

/// Every lease record of a pool: (key, value). Records are the keys
/// `<ns>:{<pool>}:<token>` (digits only); the value starts with the state.
pub async fn lease_records(
    conn: &mut redis::aio::MultiplexedConnection,
    ns: &str,
    pool: &str,
) -> Vec<(String, String)> {
    let prefix = format!("{ns}:{{{pool}}}:");
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        for key in batch {
            let tail = &key[prefix.len()..];
            if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
                let v: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .expect("GET record");
                if let Some(v) = v {
                    out.push((key, v));
                }
            }
        }
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// How many lease records of a pool are in each state (`active`, `released`).
pub async fn lease_record_states(
    conn: &mut redis::aio::MultiplexedConnection,
    ns: &str,
    pool: &str,
) -> std::collections::HashMap<String, u64> {
    let mut counts = std::collections::HashMap::new();
    for (_, v) in lease_records(conn, ns, pool).await {
        let state = v.split(' ').next().unwrap_or("").to_string();
        *counts.entry(state).or_insert(0) += 1;
    }
    counts
}

/// `calls` of one command in `INFO commandstats` (0 when absent).
pub async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Redis's clock, ms.
pub async fn redis_now_ms(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    s * 1000 + us / 1000
}

/// Lease records of a pool that are still live: `active` and not past their
/// expiry (`active <seq> <acquired-ms> <duration-ms> <consumer>`). An active
/// record past its expiry is an expired lease (reclaim does not rewrite it).
pub async fn live_lease_records(
    conn: &mut redis::aio::MultiplexedConnection,
    ns: &str,
    pool: &str,
) -> Vec<String> {
    let now = redis_now_ms(conn).await;
    lease_records(conn, ns, pool)
        .await
        .into_iter()
        .filter(|(_, v)| {
            let w: Vec<&str> = v.split(' ').collect();
            w.first() == Some(&"active")
                && w.get(2).and_then(|a| a.parse::<i64>().ok()).unwrap_or(0)
                    + w.get(3).and_then(|d| d.parse::<i64>().ok()).unwrap_or(0)
                    > now
        })
        .map(|(k, _)| k)
        .collect()
}
