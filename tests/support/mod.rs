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
