//! Redis for the integration tests.
//!
//! [`redis_url`] picks, once per test binary, the first of these that works
//! (the tiers are tried in this order, and a later one only when the earlier
//! ones are not there):
//!
//! 1. `REDIS_URL`, when set (and not empty): an existing server. Tests never
//!    flush it; each storage gets its own namespace (`lhtest-<uuid>`) instead.
//! 2. Else a private `redis-server` from PATH on a free loopback port, without
//!    persistence, shared by the binary's tests and killed when they end.
//! 3. Else a `redis:7-alpine` container started with the `testcontainers`
//!    crate ([`container`]), when a Docker daemon answers; where none does, the
//!    tier is skipped with a line saying so.
//!
//! `LIGHTHOUSE_TEST_FORCE_CONTAINER=1` skips tiers 1 and 2 and goes straight to
//! the container (to run the suite on it, or to test that tier).
//!
//! When none works, tests panic with a message naming the three options.
//! Tests run in parallel: isolation is by namespace.

#![allow(dead_code)]

pub mod cluster;
pub mod container;
pub mod server;

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use lighthouse_lease::redis::{RedisConfig, RedisStorage};

/// The environment variable that sends the harness straight to tier 3.
pub const FORCE_CONTAINER: &str = "LIGHTHOUSE_TEST_FORCE_CONTAINER";

/// What decides where the tests' Redis comes from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources {
    /// `REDIS_URL` (an empty value counts as unset).
    pub redis_url: Option<String>,
    /// [`FORCE_CONTAINER`] is `1` (or `true`, `yes`).
    pub force_container: bool,
}

impl Sources {
    /// From `REDIS_URL` and [`FORCE_CONTAINER`].
    pub fn from_env() -> Sources {
        Sources::from_vars(
            std::env::var("REDIS_URL").ok(),
            std::env::var(FORCE_CONTAINER).ok(),
        )
    }

    /// From the two variables' values.
    pub fn from_vars(redis_url: Option<String>, force_container: Option<String>) -> Sources {
        Sources {
            redis_url: redis_url.filter(|u| !u.trim().is_empty()),
            force_container: force_container.is_some_and(|v| {
                matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
            }),
        }
    }
}

/// The tier that gave the Redis.
#[derive(Debug)]
pub enum Picked<S, C> {
    /// 1: `REDIS_URL`.
    External(String),
    /// 2: a spawned `redis-server`.
    Spawned(S),
    /// 3: a container.
    Container(C),
}

/// No tier gave a Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct NoRedis {
    /// Why `redis-server` could not run (`None` when it was not tried).
    pub spawn: Option<String>,
    /// Why the container tier gave none.
    pub container: container::Unavailable,
}

impl NoRedis {
    /// Whether the only thing missing for the container tier is a Docker daemon.
    pub fn no_daemon(&self) -> bool {
        matches!(self.container, container::Unavailable::NoDaemon(_))
    }
}

impl fmt::Display for NoRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no Redis for the tests. Either (1) set REDIS_URL to a Redis the tests may \
             write to (they use their own namespaces and never flush it), or (2) install \
             redis-server on PATH (e.g. `apt-get install redis-server`), or (3) make a \
             Docker engine available (the harness then starts {}:{} with testcontainers). ",
            container::IMAGE.0,
            container::IMAGE.1
        )?;
        match &self.spawn {
            Some(e) => write!(f, "redis-server: {e}; ")?,
            None => write!(f, "redis-server: not tried ({FORCE_CONTAINER} is set); ")?,
        }
        write!(f, "container tier: {}", self.container)
    }
}

/// Tries the tiers in order: `REDIS_URL`, then `spawn` (a `redis-server`),
/// then `contain` (a container); [`Sources::force_container`] goes straight to
/// the container. A tier is tried only when the ones before it gave nothing.
pub fn pick<S, C>(
    sources: &Sources,
    spawn: impl FnOnce() -> Result<S, String>,
    contain: impl FnOnce() -> Result<C, container::Unavailable>,
) -> Result<Picked<S, C>, NoRedis> {
    let mut spawn_err = None;
    if !sources.force_container {
        if let Some(url) = &sources.redis_url {
            return Ok(Picked::External(url.clone()));
        }
        match spawn() {
            Ok(s) => return Ok(Picked::Spawned(s)),
            Err(e) => spawn_err = Some(e),
        }
    }
    match contain() {
        Ok(c) => Ok(Picked::Container(c)),
        Err(container) => Err(NoRedis {
            spawn: spawn_err,
            container,
        }),
    }
}

type Backend = Picked<server::RedisServer, container::RedisContainer>;

impl Backend {
    fn url(&self) -> String {
        match self {
            Picked::External(u) => u.clone(),
            Picked::Spawned(s) => s.url(),
            Picked::Container(c) => c.url(),
        }
    }
}

/// The tier these sources give, with the real `redis-server` and container;
/// says on stderr when the container tier is skipped for want of a daemon.
pub fn start_from(sources: &Sources) -> Result<Backend, NoRedis> {
    let picked = pick(
        sources,
        server::RedisServer::spawn,
        container::RedisContainer::start,
    );
    if let Err(e) = &picked {
        if e.no_daemon() {
            eprintln!("lighthouse-lease tests: container tier {}", e.container);
        }
    }
    picked
}

static BACKEND: OnceLock<Result<Backend, NoRedis>> = OnceLock::new();

fn start() -> Result<Backend, NoRedis> {
    start_from(&Sources::from_env())
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
        Ok(Picked::Spawned(_) | Picked::Container(_))
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
    one_proxy_pool(storage, "latam-residential", max).await
}

/// A manager over `storage` with pool `pool` holding one proxy of
/// `max_concurrency` `max`.
pub async fn one_proxy_pool<S: lighthouse_lease::Storage>(
    storage: S,
    pool: &str,
    max: u32,
) -> lighthouse_lease::ProxyManager<S> {
    use lighthouse_lease::{Proxy, ProxyManager, ProxyPool};
    let m = ProxyManager::new(storage);
    let pool = m
        .storage()
        .create_pool(ProxyPool::new(pool).unwrap())
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

/// A manager over a `RedisStorage` made from `config`, and its new pool `pool`.
pub async fn manager_with_pool(
    config: RedisConfig,
    pool: &str,
) -> (
    lighthouse_lease::ProxyManager<RedisStorage>,
    lighthouse_lease::ProxyPool,
) {
    use lighthouse_lease::AdminStorage;
    let m = lighthouse_lease::ProxyManager::new(RedisStorage::new(config).unwrap());
    let pool = m
        .storage()
        .create_pool(lighthouse_lease::ProxyPool::new(pool).unwrap())
        .await
        .unwrap();
    (m, pool)
}

/// The live leases proxy `id` counts, as `storage` reports it.
pub async fn leases_of<S: lighthouse_lease::AdminStorage>(storage: &S, id: uuid::Uuid) -> u32 {
    storage
        .get_proxy(id)
        .await
        .unwrap()
        .expect("the proxy exists")
        .current_leases
}

/// Adds `n` proxies to `pool` on `storage`: proxy `i` at `10.<net>.<i / 256>.<i
/// % 256>:8080`, shaped by `shape(i, builder)`. Returns them as added.
pub async fn add_proxies<S: lighthouse_lease::AdminStorage>(
    storage: &S,
    pool: &lighthouse_lease::ProxyPool,
    net: u8,
    n: usize,
    shape: impl Fn(usize, lighthouse_lease::ProxyBuilder) -> lighthouse_lease::ProxyBuilder,
) -> Vec<lighthouse_lease::Proxy> {
    let proxies = (0..n)
        .map(|i| {
            let host = format!("10.{net}.{}.{}", i / 256, i % 256);
            shape(i, lighthouse_lease::Proxy::builder(pool.id, host, 8080))
                .build()
                .unwrap()
        })
        .collect();
    storage.add_proxies(proxies).await.unwrap()
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
    commandstats(conn).await.get(command).copied().unwrap_or(0)
}

/// Every command Redis ran since the last `CONFIG RESETSTAT`, with its calls
/// (`INFO commandstats`; scripts' own commands included, `CONFIG` and `INFO`
/// left out).
pub async fn commandstats(
    conn: &mut redis::aio::MultiplexedConnection,
) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(":calls=")?;
            Some((name.to_string(), rest.split(',').next()?.parse().ok()?))
        })
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect()
}

/// `CONFIG RESETSTAT`: [`commandstats`] and [`command_calls`] count from now.
pub async fn reset_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("CONFIG RESETSTAT");
}

/// A storage config for tests that count Redis calls: namespace `ns` on
/// `url`, one call in flight per lane, not fitted to the link (slow first
/// calls, a cold debug build or the library loading, must not earn the lanes
/// more calls in flight).
pub fn counting_config(url: &str, ns: &str) -> lighthouse_lease::redis::RedisConfig {
    lighthouse_lease::redis::RedisConfig::from_url(url)
        .namespace(ns)
        .max_in_flight(1)
        .fit_in_flight(false)
}

/// The runtime of a multi-process test's processes (2 workers).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A multi-process test's storage: namespace `ns` on `url`, 4 connections,
/// a 10 s response timeout (processes start under load).
pub fn storage_on(url: &str, ns: &str) -> lighthouse_lease::redis::RedisStorage {
    lighthouse_lease::redis::RedisStorage::new(
        lighthouse_lease::redis::RedisConfig::from_url(url)
            .namespace(ns)
            .pool_size(4)
            .response_timeout(Duration::from_secs(10)),
    )
    .expect("valid Redis config")
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

/// A pool name the test knows to be valid.
pub fn pn(name: &str) -> lighthouse_lease::PoolName {
    lighthouse_lease::PoolName::new(name).expect("a valid pool name")
}

/// A consumer name the test knows to be valid.
pub fn cn(name: &str) -> lighthouse_lease::ConsumerName {
    lighthouse_lease::ConsumerName::new(name).expect("a valid consumer name")
}
