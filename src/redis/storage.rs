//! `impl Storage for RedisStorage`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use redis::{AsyncConnectionConfig, RedisError};
use uuid::Uuid;

use crate::consumer::Consumer;
use crate::error::{Error, Result};
use crate::filters::ProxyFilters;
use crate::health::HealthCheckResult;
use crate::lease::{Lease, LeaseStatus, ReleaseOutcome};
use crate::names::{validate_consumer_name, validate_pool_name};
use crate::pool::ProxyPool;
use crate::proxy::{Proxy, ProxyEndpoint, ProxyStatus};
use crate::stats::PoolStats;
use crate::storage::{AcquireRequest, Storage};

use super::batch::{Batcher, Exec};
use super::codec::{self, corrupt, parse_uuid};
use super::config::RedisConfig;
use super::conn::{Conn as Connection, Connections};
use super::keys::{self, Keys, PoolKeys};
use super::scripts;

/// Proxies sent to `proxy_add.lua` per call.
const ADD_CHUNK: usize = 1000;
/// Commands per pipeline when reading many hashes.
const READ_CHUNK: usize = 500;
/// Proxies and leases `pool_remove.lua` deletes per call.
const REMOVE_BATCH: u32 = 1000;
/// Most required index tags passed to the acquire script (more only narrow less).
const MAX_TAGS: usize = 64;

/// The production storage: pools, proxies, consumers and leases in Redis, changed
/// only by the Lua scripts in `lua/`, so any number of managers on any number of
/// hosts share one consistent view.
///
/// See the [module docs](crate::redis) for the key schema, costs and guarantees.
pub struct RedisStorage {
    conns: Arc<Connections>,
    /// Concurrent acquires and releases, batched per pool (see
    /// [`RedisConfig::max_batch`]).
    acquires: Arc<Batcher<AcquireItem, Vec<String>>>,
    releases: Arc<Batcher<Uuid, String>>,
    pub(super) keys: Keys,
    pub(super) config: RedisConfig,
    pub(super) grace_ms: u64,
    notifier: std::sync::Arc<super::notify::Notifier>,
    /// Consumer name → id. Consumers are never removed, so a cached id stays right.
    consumers: Mutex<HashMap<String, Uuid>>,
}

impl std::fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStorage")
            .field("namespace", &self.config.namespace)
            .field("pool_size", &self.config.pool_size)
            .finish_non_exhaustive()
    }
}

pub(crate) fn backend<E>(what: &'static str) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| Error::backend(format!("Redis: {what}: {e}"), Some(Box::new(e)))
}

pub(super) fn redis_err(what: &'static str) -> impl FnOnce(RedisError) -> Error {
    backend(what)
}

fn reply_error(what: &str, reply: &[String]) -> Error {
    corrupt(format!("unexpected reply from {what}: {reply:?}"))
}

/// `WAIT` for `wanted` replicas (at most `timeout`) when configured.
async fn wait_for_replicas(
    conn: &mut Connection<'_>,
    wait: Option<(u32, std::time::Duration)>,
) -> Result<()> {
    let Some((wanted, timeout)) = wait else {
        return Ok(());
    };
    let acknowledged: u32 = redis::cmd("WAIT")
        .arg(wanted)
        .arg(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        )
        .query_async(conn)
        .await
        .map_err(redis_err("WAIT failed"))?;
    if acknowledged < wanted {
        return Err(Error::ReplicationShortfall {
            wanted,
            acknowledged,
        });
    }
    Ok(())
}

/// One acquire request as acquire.lua reads it (one block of its ARGV).
struct AcquireItem {
    lease_id: Uuid,
    consumer_id: Uuid,
    consumer: String,
    duration_ms: u64,
    selector: &'static str,
    filter: String,
    request_id: Option<String>,
    tags: Vec<String>,
}

/// Runs one batch of acquires on one pool: one acquire.lua call.
fn acquire_exec(
    conns: Arc<Connections>,
    keys: Keys,
    config: &RedisConfig,
    grace_ms: u64,
) -> Exec<AcquireItem, Vec<String>> {
    let reclaim_batch = config.reclaim_batch;
    let wait = config.wait_replicas;
    Arc::new(move |pool: String, items: Vec<AcquireItem>| {
        let conns = Arc::clone(&conns);
        let pk = keys.pool(&pool);
        Box::pin(async move {
            let mut conn = conns.get().await?;
            let mut inv = scripts::ACQUIRE.key(pk.meta());
            inv.key(pk.leases())
                .arg(pk.prefix())
                .arg(reclaim_batch)
                .arg(grace_ms)
                .arg(items.len());
            for it in &items {
                inv.key(pk.lease(it.lease_id))
                    .key(pk.request(it.request_id.as_deref().unwrap_or("")))
                    .arg(it.lease_id.to_string())
                    .arg(it.consumer_id.to_string())
                    .arg(&it.consumer)
                    .arg(it.duration_ms)
                    .arg(it.selector)
                    .arg(&it.filter)
                    .arg(fastrand::u32(..1 << 31))
                    .arg(if it.request_id.is_some() { "1" } else { "0" })
                    .arg(it.tags.len())
                    .arg(&it.tags);
            }
            let replies: Vec<Vec<String>> = inv
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err("acquire script failed"))?;
            if replies
                .iter()
                .any(|r| r.first().map(String::as_str) == Some("OK"))
            {
                wait_for_replicas(&mut conn, wait).await?;
            }
            Ok(replies)
        })
    })
}

/// Runs one batch of releases on one pool: one release.lua call.
fn release_exec(
    conns: Arc<Connections>,
    keys: Keys,
    config: &RedisConfig,
    grace_ms: u64,
) -> Exec<Uuid, String> {
    let wait = config.wait_replicas;
    Arc::new(move |pool: String, ids: Vec<Uuid>| {
        let conns = Arc::clone(&conns);
        let pk = keys.pool(&pool);
        Box::pin(async move {
            let mut conn = conns.get().await?;
            let mut inv = scripts::RELEASE.key(pk.meta());
            inv.key(pk.leases()).arg(pk.prefix()).arg(grace_ms);
            for id in &ids {
                inv.key(pk.lease(*id)).arg(id.to_string());
            }
            let outcomes: Vec<String> = inv
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err("release script failed"))?;
            if outcomes.iter().any(|o| o == "released" || o == "expired") {
                wait_for_replicas(&mut conn, wait).await?;
            }
            Ok(outcomes)
        })
    })
}

/// Whether `filters` is exactly one attribute compared for equality (`country`,
/// `source`, `city`, `isp` or `asn`): then a proxy matches it if and only if it
/// is in that attribute value's index (proxies' countries are stored upper-case,
/// as the tag is built), so acquire.lua need not read and test each candidate.
fn single_tag_filter(f: &ProxyFilters) -> bool {
    let exact = [
        f.country.is_some(),
        f.source.is_some(),
        f.city.is_some(),
        f.isp.is_some(),
        f.asn.is_some(),
    ];
    exact.iter().filter(|set| **set).count() == 1
        && f.latitude.is_none()
        && f.longitude.is_none()
        && f.radius_km.is_none()
        && f.any_of.is_empty()
        && f.all_of.is_empty()
        && f.none_of.is_empty()
}

impl RedisStorage {
    /// A storage with these settings. Connections are opened lazily, on first use.
    ///
    /// Fails with [`Error::InvalidArgument`] for a bad namespace or pool size, and
    /// with [`Error::Backend`] for a URL redis-rs cannot parse.
    pub fn new(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let mut conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(config.connect_timeout)
            .set_response_timeout(config.response_timeout);
        if config.response_timeout.is_none() {
            conn_config = conn_config.set_response_timeout(None);
        }
        let manager = deadpool_redis::Manager::new_with_config(config.url.as_str(), conn_config)
            .map_err(redis_err("invalid connection URL"))?;
        let mut pool_config = PoolConfig::new(config.pool_size);
        pool_config.timeouts = Timeouts {
            wait: config.wait_timeout,
            create: config.connect_timeout,
            recycle: config.response_timeout,
        };
        let pool = Pool::builder(manager)
            .config(pool_config)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(backend("cannot build the connection pool"))?;
        let grace_ms = u64::try_from(config.record_grace.as_millis()).unwrap_or(u64::MAX / 4);
        let client = redis::Client::open(config.url.as_str())
            .map_err(redis_err("invalid connection URL"))?;
        let cluster = if config.cluster_nodes.is_empty() {
            None
        } else {
            let mut builder = redis::cluster::ClusterClient::builder(config.cluster_nodes.clone());
            if let Some(t) = config.connect_timeout {
                builder = builder.connection_timeout(t);
            }
            if let Some(t) = config.response_timeout {
                builder = builder.response_timeout(t);
            }
            Some(
                builder
                    .build()
                    .map_err(redis_err("invalid cluster node URLs"))?,
            )
        };
        let conns = Arc::new(Connections::new(pool, config.pool_size, cluster));
        let keys = Keys::new(&config.namespace);
        Ok(RedisStorage {
            notifier: super::notify::Notifier::new(client),
            acquires: Batcher::new(
                config.max_batch,
                acquire_exec(Arc::clone(&conns), keys.clone(), &config, grace_ms),
            ),
            releases: Batcher::new(
                config.max_batch,
                release_exec(Arc::clone(&conns), keys.clone(), &config, grace_ms),
            ),
            conns,
            keys,
            config,
            grace_ms,
            consumers: Mutex::new(HashMap::new()),
        })
    }

    /// A storage on this URL with the default settings.
    pub fn connect(url: impl Into<String>) -> Result<Self> {
        Self::new(RedisConfig::from_url(url))
    }

    /// A storage configured from the environment ([`RedisConfig::from_env`]).
    pub fn from_env() -> Result<Self> {
        Self::new(RedisConfig::from_env())
    }

    /// The settings in use.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Checks that Redis answers (`PING`).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(redis_err("PING failed"))?;
        Ok(())
    }

    /// Loads every script into Redis's script cache (`SCRIPT LOAD`). Optional:
    /// scripts are loaded on first use, and again whenever Redis has lost them.
    pub async fn load_scripts(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        for s in scripts::all() {
            s.prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(redis_err("SCRIPT LOAD failed"))?;
        }
        Ok(())
    }

    pub(super) async fn conn(&self) -> Result<Connection<'_>> {
        self.conns.get().await
    }

    fn cached_consumer(&self, name: &str) -> Option<Uuid> {
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
    }

    fn cache_consumer(&self, name: &str, id: Uuid) {
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), id);
    }

    /// `HSETNX` then `HGET`: the consumer's id, created if needed.
    async fn ensure_consumer_on(&self, conn: &mut Connection<'_>, name: &str) -> Result<Uuid> {
        let fresh = Uuid::new_v4().to_string();
        let key = self.keys.consumers();
        let (id,): (String,) = redis::pipe()
            .hset_nx(&key, name, &fresh)
            .ignore()
            .hget(&key, name)
            .query_async(conn)
            .await
            .map_err(redis_err("cannot register the consumer"))?;
        let id = parse_uuid(&id)?;
        self.cache_consumer(name, id);
        Ok(id)
    }

    /// The id of the request's consumer, registering it if the request allows.
    /// The pool is checked first: a failed acquire registers nobody.
    async fn consumer_for(
        &self,
        conn: &mut Connection<'_>,
        request: &AcquireRequest,
        pk: &PoolKeys,
    ) -> Result<Uuid> {
        if let Some(id) = self.cached_consumer(&request.consumer_name) {
            return Ok(id);
        }
        let (pool_id, removing, id): (Option<String>, Option<String>, Option<String>) =
            redis::pipe()
                .hget(pk.meta(), "id")
                .hget(pk.meta(), "removing")
                .hget(self.keys.consumers(), &request.consumer_name)
                .query_async(conn)
                .await
                .map_err(redis_err("cannot read the consumer"))?;
        if pool_id.is_none() || removing.is_some() {
            return Err(Error::PoolNotFound {
                name: request.pool_name.clone(),
            });
        }
        match id {
            Some(id) => {
                let id = parse_uuid(&id)?;
                self.cache_consumer(&request.consumer_name, id);
                Ok(id)
            }
            None if request.register_consumer => {
                self.ensure_consumer_on(conn, &request.consumer_name).await
            }
            None => Err(Error::ConsumerNotFound {
                name: request.consumer_name.clone(),
            }),
        }
    }

    /// Runs `cleanup.lua` on one pool until no due lease is left; returns how
    /// many leases gave their slot back.
    async fn reclaim_pool(&self, conn: &mut Connection<'_>, pk: &PoolKeys) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let (n, more): (u64, u64) = scripts::CLEANUP
                .key(pk.meta())
                .key(pk.leases())
                .arg(pk.prefix())
                .arg(self.config.cleanup_batch)
                .arg(self.grace_ms)
                .invoke_async(conn)
                .await
                .map_err(redis_err("cleanup script failed"))?;
            total += n;
            if more == 0 {
                return Ok(total);
            }
        }
    }

    /// Fails with [`Error::PoolNotFound`] unless the pool exists.
    async fn require_pool(&self, conn: &mut Connection<'_>, name: &str) -> Result<PoolKeys> {
        validate_pool_name(name)?;
        let pk = self.keys.pool(name);
        let (id, removing): (Option<String>, Option<String>) = redis::pipe()
            .hget(pk.meta(), "id")
            .hget(pk.meta(), "removing")
            .query_async(conn)
            .await
            .map_err(redis_err("cannot read the pool"))?;
        if id.is_none() || removing.is_some() {
            return Err(Error::PoolNotFound {
                name: name.to_string(),
            });
        }
        Ok(pk)
    }

    /// The keys of the pool a proxy belongs to; [`Error::ProxyNotFound`] if none.
    async fn keys_of_proxy(&self, conn: &mut Connection<'_>, proxy_id: Uuid) -> Result<PoolKeys> {
        let pool = self
            .pool_of_proxy(conn, proxy_id)
            .await?
            .ok_or(Error::ProxyNotFound { id: proxy_id })?;
        Ok(self.keys.pool(&pool))
    }

    /// The pool a proxy belongs to, from the proxy registry.
    async fn pool_of_proxy(&self, conn: &mut Connection<'_>, id: Uuid) -> Result<Option<String>> {
        redis::cmd("HGET")
            .arg(self.keys.proxy_pool())
            .arg(id.to_string())
            .query_async(conn)
            .await
            .map_err(redis_err("cannot read the proxy registry"))
    }

    /// Reads many hashes with pipelined `HGETALL`s.
    async fn hgetall_many(
        &self,
        conn: &mut Connection<'_>,
        keys: &[String],
    ) -> Result<Vec<HashMap<String, String>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READ_CHUNK) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.hgetall(k);
            }
            let part: Vec<HashMap<String, String>> = pipe
                .query_async(conn)
                .await
                .map_err(redis_err("cannot read hashes"))?;
            out.extend(part);
        }
        Ok(out)
    }

    async fn set_status(
        &self,
        proxy_id: Uuid,
        status: ProxyStatus,
        checked_at: Option<DateTime<Utc>>,
        latency: Option<std::time::Duration>,
    ) -> Result<Proxy> {
        let mut conn = self.conn().await?;
        let pk = self.keys_of_proxy(&mut conn, proxy_id).await?;
        let reply: Vec<String> = scripts::PROXY_STATUS
            .key(pk.meta())
            .key(pk.proxy(proxy_id))
            .arg(pk.prefix())
            .arg(proxy_id.to_string())
            .arg(status.as_str())
            .arg(checked_at.map(codec::format_time).unwrap_or_default())
            .arg(
                latency
                    .map(|l| u32::try_from(l.as_millis()).unwrap_or(u32::MAX).to_string())
                    .unwrap_or_default(),
            )
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("proxy status script failed"))?;
        match reply.first().map(String::as_str) {
            Some("OK") => {
                self.replicated(&mut conn).await?;
                codec::proxy_from_reply(&reply)
            }
            Some("NOT_FOUND") => Err(Error::ProxyNotFound { id: proxy_id }),
            _ => Err(reply_error("proxy_status.lua", &reply)),
        }
    }

    /// With [`RedisConfig::wait_for_replicas`]: `WAIT` for the replicas to
    /// acknowledge this connection's writes, or report the shortfall.
    pub(super) async fn replicated(&self, conn: &mut Connection<'_>) -> Result<()> {
        wait_for_replicas(conn, self.config.wait_replicas).await
    }

    /// Runs `report.lua` for a success (`policy` = None) or a failure.
    async fn report(
        &self,
        proxy_id: Uuid,
        failure: Option<(&str, &crate::cooldown::CooldownPolicy)>,
    ) -> Result<Proxy> {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (mode, reason, base, cap, jitter, ban) = match failure {
            None => ("success", "", 1, 1, 0, 0),
            Some((reason, policy)) => {
                policy.validate()?;
                crate::storage::validate_failure_reason(reason)?;
                (
                    "failure",
                    reason,
                    ms(policy.base),
                    ms(policy.cap),
                    (policy.jitter * 1000.0).round() as u64,
                    policy.ban_after.unwrap_or(0),
                )
            }
        };
        let mut conn = self.conn().await?;
        let pk = self.keys_of_proxy(&mut conn, proxy_id).await?;
        let reply: Vec<String> = scripts::REPORT
            .key(pk.meta())
            .key(pk.proxy(proxy_id))
            .key(pk.cooldown())
            .arg(pk.prefix())
            .arg(proxy_id.to_string())
            .arg(mode)
            .arg(base)
            .arg(cap)
            .arg(jitter)
            .arg(fastrand::u32(0..=1_000_000))
            .arg(ban)
            .arg(reason)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("report script failed"))?;
        match reply.first().map(String::as_str) {
            Some("OK") => {}
            Some("NOT_FOUND") => return Err(Error::ProxyNotFound { id: proxy_id }),
            _ => return Err(reply_error("report.lua", &reply)),
        }
        self.replicated(&mut conn).await?;
        drop(conn);
        self.get_proxy(proxy_id)
            .await?
            .ok_or(Error::ProxyNotFound { id: proxy_id })
    }

    /// Validates, checks and adds proxies (`bulk` decorates field errors with the
    /// proxy's position, like [`crate::InMemoryStorage::add_proxies`]).
    async fn add_many(&self, mut proxies: Vec<Proxy>, bulk: bool) -> Result<Vec<Proxy>> {
        // The first proxy that fails to normalize: no proxy after it matters.
        let mut bad: Option<(usize, Error)> = None;
        for (i, p) in proxies.iter_mut().enumerate() {
            if let Err(e) = p.normalize() {
                bad = Some((i, e));
                break;
            }
            p.current_leases = 0;
        }
        let checked = bad.as_ref().map_or(proxies.len(), |(i, _)| *i);
        let decorate = |i: usize, p: &Proxy, e: Error| match e {
            Error::InvalidProxy { field, reason } if bulk => Error::InvalidProxy {
                field,
                reason: format!("proxy #{i} ({}:{}): {reason}", p.host, p.port),
            },
            other => other,
        };
        let mut conn = self.conn().await?;
        let (registered, pools) = if checked == 0 {
            (Vec::new(), Vec::new())
        } else {
            let ids: Vec<String> = proxies[..checked]
                .iter()
                .map(|p| p.id.to_string())
                .collect();
            let pool_ids: Vec<String> = proxies[..checked]
                .iter()
                .map(|p| p.pool_id.to_string())
                .collect();
            redis::pipe()
                .cmd("HMGET")
                .arg(self.keys.proxy_pool())
                .arg(&ids)
                .cmd("HMGET")
                .arg(self.keys.pool_ids())
                .arg(&pool_ids)
                .query_async::<(Vec<Option<String>>, Vec<Option<String>>)>(&mut conn)
                .await
                .map_err(redis_err("cannot read the registries"))?
        };
        let mut seen = HashSet::with_capacity(checked);
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, p) in proxies.iter().enumerate() {
            if bad.as_ref().is_some_and(|(b, _)| *b == i) {
                if let Some((_, e)) = bad.take() {
                    return Err(decorate(i, p, e));
                }
            }
            if registered.get(i).is_some_and(Option::is_some) || !seen.insert(p.id) {
                return Err(Error::ProxyAlreadyExists { id: p.id });
            }
            let Some(Some(pool)) = pools.get(i) else {
                let e = Error::invalid_proxy("pool_id", format!("no pool has id {}", p.pool_id));
                return Err(decorate(i, p, e));
            };
            match groups.iter_mut().find(|(name, _)| name == pool) {
                Some((_, members)) => members.push(i),
                None => groups.push((pool.clone(), vec![i])),
            }
        }
        if proxies.is_empty() {
            return Ok(proxies);
        }
        // Claim the ids in the registry (HSETNX: a concurrent add of the same id loses).
        let mut pipe = redis::pipe();
        for (pool, members) in &groups {
            for &i in members {
                pipe.hset_nx(self.keys.proxy_pool(), proxies[i].id.to_string(), pool);
            }
        }
        let claimed: Vec<bool> = pipe
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot write the proxy registry"))?;
        let order: Vec<usize> = groups.iter().flat_map(|(_, m)| m.iter().copied()).collect();
        if let Some(pos) = claimed.iter().position(|c| !c) {
            let mine: Vec<String> = order
                .iter()
                .zip(&claimed)
                .filter(|(_, c)| **c)
                .map(|(i, _)| proxies[*i].id.to_string())
                .collect();
            self.unregister(&mut conn, &mine).await?;
            return Err(Error::ProxyAlreadyExists {
                id: proxies[order[pos]].id,
            });
        }
        for (g, (pool, members)) in groups.iter().enumerate() {
            let pk = self.keys.pool(pool);
            for (c, chunk) in members.chunks(ADD_CHUNK).enumerate() {
                let mut inv = scripts::PROXY_ADD.key(pk.meta());
                inv.key(pk.proxies())
                    .arg(pk.prefix())
                    .arg(proxies[chunk[0]].pool_id.to_string())
                    .arg(chunk.len());
                for &i in chunk {
                    push_proxy_args(&mut inv, &proxies[i]);
                }
                let reply: Vec<String> = inv
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_err("proxy add script failed"))?;
                if reply.first().map(String::as_str) != Some("OK") {
                    // Give back the registry entries of everything not added.
                    let rest: Vec<String> = groups[g..]
                        .iter()
                        .enumerate()
                        .flat_map(|(k, (_, m))| {
                            let skip = if k == 0 { c * ADD_CHUNK } else { 0 };
                            m[skip..].iter().map(|&i| proxies[i].id.to_string())
                        })
                        .collect();
                    self.unregister(&mut conn, &rest).await?;
                    let first = &proxies[chunk[0]];
                    return Err(match reply.first().map(String::as_str) {
                        Some("EXISTS") => Error::ProxyAlreadyExists {
                            id: reply
                                .get(1)
                                .and_then(|s| Uuid::parse_str(s).ok())
                                .unwrap_or(first.id),
                        },
                        Some("POOL_NOT_FOUND") | Some("POOL_MISMATCH") => Error::invalid_proxy(
                            "pool_id",
                            format!("no pool has id {}", first.pool_id),
                        ),
                        _ => reply_error("proxy_add.lua", &reply),
                    });
                }
            }
        }
        Ok(proxies)
    }

    async fn unregister(&self, conn: &mut Connection<'_>, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(READ_CHUNK) {
            redis::cmd("HDEL")
                .arg(self.keys.proxy_pool())
                .arg(chunk)
                .query_async::<()>(conn)
                .await
                .map_err(redis_err("cannot clean the proxy registry"))?;
        }
        Ok(())
    }

    /// Redis's clock, in ms.
    async fn redis_now_ms(&self, conn: &mut Connection<'_>) -> Result<i64> {
        let (s, us): (i64, i64) = redis::cmd("TIME")
            .query_async(conn)
            .await
            .map_err(redis_err("TIME failed"))?;
        Ok(s * 1000 + us / 1000)
    }
}

fn push_proxy_args(inv: &mut redis::ScriptInvocation<'_>, p: &Proxy) {
    let fields = codec::proxy_fields(p);
    inv.arg(p.id.to_string())
        .arg(keys::proxy_tags(p))
        .arg(fields.len());
    for (k, v) in fields {
        inv.arg(k).arg(v);
    }
}

impl Storage for RedisStorage {
    async fn create_pool(&self, pool: ProxyPool) -> Result<ProxyPool> {
        pool.validate()?;
        let pk = self.keys.pool(&pool.name);
        let mut conn = self.conn().await?;
        let (exists, owner): (bool, Option<String>) = redis::pipe()
            .exists(pk.meta())
            .hget(self.keys.pool_ids(), pool.id.to_string())
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the pool registry"))?;
        if exists {
            return Err(Error::PoolAlreadyExists { name: pool.name });
        }
        if owner.is_some() {
            return Err(Error::InvalidArgument(format!(
                "another pool already has id {}",
                pool.id
            )));
        }
        let created: i64 = scripts::POOL_CREATE
            .key(pk.meta())
            .arg(pk.prefix())
            .arg(pool.id.to_string())
            .arg(&pool.name)
            .arg(if pool.description.is_some() { "1" } else { "0" })
            .arg(pool.description.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("pool create script failed"))?;
        if created == 0 {
            return Err(Error::PoolAlreadyExists { name: pool.name });
        }
        redis::pipe()
            .hset(self.keys.pool_ids(), pool.id.to_string(), &pool.name)
            .ignore()
            .zadd(self.keys.pools(), &pool.name, 0)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_err("cannot register the pool"))?;
        Ok(pool)
    }

    async fn get_pool(&self, name: &str) -> Result<Option<ProxyPool>> {
        validate_pool_name(name)?;
        let mut conn = self.conn().await?;
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.pool(name).meta())
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the pool"))?;
        codec::pool_from_hash(&h)
    }

    async fn list_pools(&self) -> Result<Vec<ProxyPool>> {
        let names = self.pool_names().await?;
        let mut conn = self.conn().await?;
        let metas: Vec<String> = names.iter().map(|n| self.keys.pool(n).meta()).collect();
        let mut pools = Vec::with_capacity(metas.len());
        for h in self.hgetall_many(&mut conn, &metas).await? {
            if let Some(p) = codec::pool_from_hash(&h)? {
                pools.push(p);
            }
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    async fn update_pool(&self, pool: ProxyPool) -> Result<ProxyPool> {
        pool.validate()?;
        let pk = self.keys.pool(&pool.name);
        let mut conn = self.conn().await?;
        let reply: Vec<String> = scripts::POOL_UPDATE
            .key(pk.meta())
            .arg(pk.prefix())
            .arg(pool.id.to_string())
            .arg(if pool.description.is_some() { "1" } else { "0" })
            .arg(pool.description.as_deref().unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("pool update script failed"))?;
        match reply.first().map(String::as_str) {
            Some("OK") => Ok(pool),
            Some("NOT_FOUND") => Err(Error::PoolNotFound { name: pool.name }),
            Some("ID_MISMATCH") => Err(Error::InvalidArgument(format!(
                "pool {:?} has id {}, not {}",
                pool.name,
                reply.get(1).map_or("?", String::as_str),
                pool.id
            ))),
            _ => Err(reply_error("pool_update.lua", &reply)),
        }
    }

    async fn remove_pool(&self, name: &str) -> Result<bool> {
        validate_pool_name(name)?;
        let pk = self.keys.pool(name);
        let mut conn = self.conn().await?;
        let mut phase = "start";
        let mut pool_id = String::new();
        loop {
            let reply: Vec<String> = scripts::POOL_REMOVE
                .key(pk.meta())
                .key(pk.proxies())
                .key(pk.leases())
                .arg(pk.prefix())
                .arg(phase)
                .arg(REMOVE_BATCH)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err("pool remove script failed"))?;
            let state = reply.first().map(String::as_str);
            if state == Some("NOT_FOUND") {
                return Ok(false);
            }
            if let Some(id) = reply.get(1).filter(|id| !id.is_empty()) {
                pool_id.clone_from(id);
            }
            self.unregister(&mut conn, reply.get(2..).unwrap_or_default())
                .await?;
            match state {
                Some("MORE") => phase = "continue",
                Some("DONE") => break,
                _ => return Err(reply_error("pool_remove.lua", &reply)),
            }
        }
        let mut pipe = redis::pipe();
        pipe.zrem(self.keys.pools(), name).ignore();
        if !pool_id.is_empty() {
            pipe.hdel(self.keys.pool_ids(), &pool_id).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(redis_err("cannot unregister the pool"))?;
        Ok(true)
    }

    async fn add_proxy(&self, proxy: Proxy) -> Result<Proxy> {
        let mut added = self.add_many(vec![proxy], false).await?;
        added
            .pop()
            .ok_or_else(|| Error::backend("add_proxy added nothing", None))
    }

    async fn add_proxies(&self, proxies: Vec<Proxy>) -> Result<Vec<Proxy>> {
        self.add_many(proxies, true).await
    }

    async fn update_proxy(&self, mut proxy: Proxy) -> Result<Proxy> {
        proxy.normalize()?;
        let mut conn = self.conn().await?;
        let pool = self
            .pool_of_proxy(&mut conn, proxy.id)
            .await?
            .ok_or(Error::ProxyNotFound { id: proxy.id })?;
        let pk = self.keys.pool(&pool);
        let mut inv = scripts::PROXY_UPDATE.key(pk.meta());
        inv.key(pk.proxy(proxy.id))
            .arg(pk.prefix())
            .arg(proxy.pool_id.to_string())
            .arg(1);
        push_proxy_args(&mut inv, &proxy);
        let reply: Vec<String> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("proxy update script failed"))?;
        match reply.first().map(String::as_str) {
            Some("OK") => codec::proxy_from_reply(&reply),
            Some("NOT_FOUND") => Err(Error::ProxyNotFound { id: proxy.id }),
            Some("POOL_MISMATCH") => Err(Error::invalid_proxy(
                "pool_id",
                "a proxy cannot move to another pool (remove it and add it there)",
            )),
            _ => Err(reply_error("proxy_update.lua", &reply)),
        }
    }

    async fn set_proxy_status(&self, proxy_id: Uuid, status: ProxyStatus) -> Result<Proxy> {
        self.set_status(proxy_id, status, None, None).await
    }

    async fn remove_proxy(&self, proxy_id: Uuid) -> Result<bool> {
        let mut conn = self.conn().await?;
        let Some(pool) = self.pool_of_proxy(&mut conn, proxy_id).await? else {
            return Ok(false);
        };
        let pk = self.keys.pool(&pool);
        let removed: i64 = scripts::PROXY_REMOVE
            .key(pk.meta())
            .key(pk.proxies())
            .key(pk.proxy(proxy_id))
            .arg(pk.prefix())
            .arg(proxy_id.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("proxy remove script failed"))?;
        self.unregister(&mut conn, &[proxy_id.to_string()]).await?;
        Ok(removed == 1)
    }

    async fn get_proxy(&self, proxy_id: Uuid) -> Result<Option<Proxy>> {
        let mut conn = self.conn().await?;
        let Some(pool) = self.pool_of_proxy(&mut conn, proxy_id).await? else {
            return Ok(None);
        };
        if validate_pool_name(&pool).is_err() {
            return Err(corrupt(format!("proxy registry names pool {pool:?}")));
        }
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.pool(&pool).proxy(proxy_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the proxy"))?;
        if h.is_empty() {
            return Ok(None);
        }
        codec::proxy_from_hash(&h).map(Some)
    }

    async fn list_proxies(&self, pool_name: &str) -> Result<Vec<Proxy>> {
        let mut conn = self.conn().await?;
        let pk = self.require_pool(&mut conn, pool_name).await?;
        self.reclaim_pool(&mut conn, &pk).await?;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(pk.proxies())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot list the proxies"))?;
        let keys: Vec<String> = ids
            .iter()
            .map(|id| parse_uuid(id).map(|id| pk.proxy(id)))
            .collect::<Result<_>>()?;
        self.hgetall_many(&mut conn, &keys)
            .await?
            .iter()
            .filter(|h| !h.is_empty())
            .map(codec::proxy_from_hash)
            .collect()
    }

    async fn ensure_consumer(&self, name: &str) -> Result<Consumer> {
        validate_consumer_name(name)?;
        let mut conn = self.conn().await?;
        let id = self.ensure_consumer_on(&mut conn, name).await?;
        Ok(Consumer {
            id,
            name: name.to_string(),
        })
    }

    async fn get_consumer(&self, name: &str) -> Result<Option<Consumer>> {
        validate_consumer_name(name)?;
        let mut conn = self.conn().await?;
        let id: Option<String> = redis::cmd("HGET")
            .arg(self.keys.consumers())
            .arg(name)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the consumer"))?;
        id.map(|id| {
            Ok(Consumer {
                id: parse_uuid(&id)?,
                name: name.to_string(),
            })
        })
        .transpose()
    }

    async fn list_consumers(&self) -> Result<Vec<Consumer>> {
        let mut conn = self.conn().await?;
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.consumers())
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the consumers"))?;
        let mut out = all
            .into_iter()
            .map(|(name, id)| {
                Ok(Consumer {
                    id: parse_uuid(&id)?,
                    name,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn acquire(&self, request: &AcquireRequest) -> Result<Option<Lease>> {
        request.validate()?;
        let pk = self.keys.pool(&request.pool_name);
        let mut conn = self.conn().await?;
        let consumer_id = self.consumer_for(&mut conn, request, &pk).await?;
        let duration_ms = u64::try_from(request.duration.as_millis())
            .map_err(|_| Error::InvalidArgument("lease duration overflows".into()))?;
        let mut tags: Vec<String> = Vec::new();
        for (attr, value) in request.filters.required_attributes() {
            let t = keys::tag(attr, &value);
            if !tags.contains(&t) && tags.len() < MAX_TAGS {
                tags.push(t);
            }
        }
        // The script checks each candidate against the filter, unless being in
        // the one tag's index already is the whole filter (the common case).
        let filter = if request.filters.is_empty() || single_tag_filter(&request.filters) {
            String::new()
        } else {
            codec::filter_json(&request.filters)
        };
        // RETRY means "nothing free yet, but more expired leases wait": reclaim
        // them all in bounded batches and try again.
        for _ in 0..4 {
            let lease_id = Uuid::new_v4();
            let item = AcquireItem {
                lease_id,
                consumer_id,
                consumer: request.consumer_name.clone(),
                duration_ms,
                selector: request.selector.as_str(),
                filter: filter.clone(),
                request_id: request.request_id.clone(),
                tags: tags.clone(),
            };
            let reply = self.acquires.submit(&request.pool_name, item).await?;
            match reply.first().map(String::as_str) {
                Some("OK") => {
                    return lease_from_acquire(&reply, lease_id, consumer_id, request).map(Some);
                }
                Some("NONE") => return Ok(None),
                Some("EXISTING") => {
                    let id = reply
                        .get(1)
                        .map(|s| parse_uuid(s))
                        .transpose()?
                        .ok_or_else(|| reply_error("acquire.lua", &reply))?;
                    return self.get_lease(&request.pool_name, id).await;
                }
                Some("POOL_NOT_FOUND") => {
                    return Err(Error::PoolNotFound {
                        name: request.pool_name.clone(),
                    })
                }
                Some("RETRY") => {
                    self.reclaim_pool(&mut conn, &pk).await?;
                }
                _ => return Err(reply_error("acquire.lua", &reply)),
            }
        }
        Ok(None)
    }

    async fn extend(&self, lease: &Lease, duration: std::time::Duration) -> Result<Lease> {
        crate::storage::validate_lease_duration(duration)?;
        let lost = |reason| Error::LeaseLost {
            id: lease.id,
            reason,
        };
        if validate_pool_name(&lease.pool_name).is_err() {
            return Err(lost("is unknown"));
        }
        let pk = self.keys.pool(&lease.pool_name);
        let mut conn = self.conn().await?;
        let duration_ms = u64::try_from(duration.as_millis())
            .map_err(|_| Error::InvalidArgument("lease duration overflows".into()))?;
        let reply: Vec<String> = scripts::EXTEND
            .key(pk.meta())
            .key(pk.leases())
            .key(pk.lease(lease.id))
            .arg(pk.prefix())
            .arg(lease.id.to_string())
            .arg(duration_ms)
            .arg(self.grace_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("extend script failed"))?;
        match (
            reply.first().map(String::as_str),
            reply.get(1).map(String::as_str),
        ) {
            (Some("OK"), Some(ms)) => {
                self.replicated(&mut conn).await?;
                let ms: i64 = ms.parse().map_err(|_| reply_error("extend.lua", &reply))?;
                let mut renewed = lease.clone();
                renewed.status = LeaseStatus::Active;
                renewed.expires_at = codec::ms_to_time(ms)?;
                Ok(renewed)
            }
            (Some("LOST"), Some("released")) => Err(lost("was released")),
            (Some("LOST"), Some("expired")) => Err(lost("expired")),
            (Some("LOST"), _) => Err(lost("is unknown")),
            _ => Err(reply_error("extend.lua", &reply)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        if validate_pool_name(&lease.pool_name).is_err() {
            return Ok(ReleaseOutcome::NotFound);
        }
        let outcome = self.releases.submit(&lease.pool_name, lease.id).await?;
        match outcome.as_str() {
            "released" => Ok(ReleaseOutcome::Released),
            "already_released" => Ok(ReleaseOutcome::AlreadyReleased),
            "expired" => Ok(ReleaseOutcome::Expired),
            "not_found" => Ok(ReleaseOutcome::NotFound),
            other => Err(corrupt(format!("release.lua answered {other:?}"))),
        }
    }

    async fn get_lease(&self, pool_name: &str, lease_id: Uuid) -> Result<Option<Lease>> {
        let mut conn = self.conn().await?;
        let pk = self.require_pool(&mut conn, pool_name).await?;
        let (pool_id, rec, (s, us)): (Option<String>, HashMap<String, String>, (i64, i64)) =
            redis::pipe()
                .hget(pk.meta(), "id")
                .hgetall(pk.lease(lease_id))
                .cmd("TIME")
                .query_async(&mut conn)
                .await
                .map_err(redis_err("cannot read the lease"))?;
        if rec.is_empty() || rec.get("pool_id") != pool_id.as_ref() {
            return Ok(None);
        }
        let mut lease = codec::lease_from_hash(&rec, pool_name)?;
        let seq: Option<String> = redis::cmd("HGET")
            .arg(pk.proxy(lease.proxy_id))
            .arg("seq")
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the proxy"))?;
        if seq.is_none() || seq.as_ref() != rec.get("proxy_seq") {
            return Ok(None); // its proxy was removed
        }
        if lease.status == LeaseStatus::Active
            && lease.expires_at.timestamp_millis() <= s * 1000 + us / 1000
        {
            lease.status = LeaseStatus::Expired;
        }
        Ok(Some(lease))
    }

    async fn list_leases(&self, pool_name: &str) -> Result<Vec<Lease>> {
        let mut conn = self.conn().await?;
        let pk = self.require_pool(&mut conn, pool_name).await?;
        self.reclaim_pool(&mut conn, &pk).await?;
        let (pool_id, members): (Option<String>, Vec<String>) = redis::pipe()
            .hget(pk.meta(), "id")
            .zrange(pk.leases(), 0, -1)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot list the leases"))?;
        let now = self.redis_now_ms(&mut conn).await?;
        let mut keys = Vec::with_capacity(members.len());
        for m in &members {
            let id = m.split(':').next().unwrap_or_default();
            keys.push(pk.lease(parse_uuid(id)?));
        }
        let records = self.hgetall_many(&mut conn, &keys).await?;
        let mut leases = Vec::with_capacity(records.len());
        let mut seqs = Vec::with_capacity(records.len());
        for rec in records {
            if rec.is_empty() || rec.get("pool_id") != pool_id.as_ref() {
                continue;
            }
            let lease = codec::lease_from_hash(&rec, pool_name)?;
            if lease.status != LeaseStatus::Active || lease.expires_at.timestamp_millis() <= now {
                continue;
            }
            seqs.push(rec.get("proxy_seq").cloned());
            leases.push(lease);
        }
        // Leave out the leases of removed proxies.
        let mut current: Vec<Option<String>> = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(READ_CHUNK) {
            let mut pipe = redis::pipe();
            for l in chunk {
                pipe.hget(pk.proxy(l.proxy_id), "seq");
            }
            let part: Vec<Option<String>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(redis_err("cannot read the proxies"))?;
            current.extend(part);
        }
        let mut out: Vec<Lease> = leases
            .into_iter()
            .zip(seqs.into_iter().zip(current))
            .filter(|(_, (want, have))| have.is_some() && want == have)
            .map(|(l, _)| l)
            .collect();
        out.sort_by_key(|l| (l.acquired_at, l.id));
        Ok(out)
    }

    async fn cleanup_expired_leases(&self) -> Result<u64> {
        let names = self.pool_names().await?;
        let mut conn = self.conn().await?;
        let mut total = 0;
        for name in &names {
            total += self.reclaim_pool(&mut conn, &self.keys.pool(name)).await?;
        }
        Ok(total)
    }

    async fn pool_stats(&self, pool_name: &str) -> Result<PoolStats> {
        validate_pool_name(pool_name)?;
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        match self.reclaim_pool(&mut conn, &pk).await {
            // Out of memory: expired leases keep counting until Redis can write.
            Err(e) if e.to_string().contains("OOM") => {}
            other => {
                other?;
            }
        }
        self.read_stats(&mut conn, &pk, pool_name).await
    }

    async fn subscribe_freed(
        &self,
        pool_name: &str,
    ) -> Result<tokio::sync::broadcast::Receiver<()>> {
        let mut conn = self.conn().await?;
        let pk = self.require_pool(&mut conn, pool_name).await?;
        drop(conn);
        Ok(self.notifier.subscribe(pk.freed()).await)
    }

    async fn next_expiry(&self, pool_name: &str) -> Result<Option<std::time::Duration>> {
        let mut conn = self.conn().await?;
        let pk = self.require_pool(&mut conn, pool_name).await?;
        type Next = ((i64, i64), Vec<(String, f64)>, Vec<(String, f64)>);
        let ((secs, micros), lease, cooling): Next = redis::pipe()
            .cmd("TIME")
            .cmd("ZRANGE")
            .arg(pk.leases())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .cmd("ZRANGE")
            .arg(pk.cooldown())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the next expiry"))?;
        let now_ms = secs * 1000 + micros / 1000;
        let next = lease
            .first()
            .into_iter()
            .chain(cooling.first())
            .map(|(_, at)| *at as i64)
            .min();
        Ok(
            next.map(|at| {
                std::time::Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0))
            }),
        )
    }

    async fn report_success(&self, proxy_id: Uuid) -> Result<Proxy> {
        self.report(proxy_id, None).await
    }

    async fn report_failure(
        &self,
        proxy_id: Uuid,
        reason: &str,
        policy: &crate::cooldown::CooldownPolicy,
    ) -> Result<Proxy> {
        self.report(proxy_id, Some((reason, policy))).await
    }

    async fn apply_health_check(&self, result: &HealthCheckResult) -> Result<Proxy> {
        self.set_status(
            result.proxy_id,
            result.status,
            Some(result.checked_at),
            result.latency,
        )
        .await
    }
}

fn lease_from_acquire(
    reply: &[String],
    lease_id: Uuid,
    consumer_id: Uuid,
    request: &AcquireRequest,
) -> Result<Lease> {
    let [_, proxy_id, pool_id, acquired, expires, host, port, protocol, has_cred, user, pass, token] =
        reply
    else {
        return Err(reply_error("acquire.lua", reply));
    };
    let ms = |s: &str| -> Result<DateTime<Utc>> {
        codec::ms_to_time(s.parse().map_err(|_| reply_error("acquire.lua", reply))?)
    };
    Ok(Lease {
        id: lease_id,
        proxy_id: parse_uuid(proxy_id)?,
        consumer_id,
        consumer_name: request.consumer_name.clone(),
        pool_id: parse_uuid(pool_id)?,
        pool_name: request.pool_name.clone(),
        status: LeaseStatus::Active,
        acquired_at: ms(acquired)?,
        expires_at: ms(expires)?,
        released_at: None,
        proxy: ProxyEndpoint {
            host: host.clone(),
            port: port
                .parse()
                .map_err(|_| reply_error("acquire.lua", reply))?,
            protocol: protocol
                .parse()
                .map_err(|_| reply_error("acquire.lua", reply))?,
            credentials: (has_cred == "1")
                .then(|| crate::proxy::ProxyCredentials::new(user.clone(), pass.clone())),
        },
        fencing_token: token
            .parse()
            .map_err(|_| reply_error("acquire.lua", reply))?,
    })
}

impl RedisStorage {
    /// A pool's stats as they are now, without reclaiming its expired leases first
    /// (those still count): one MULTI/EXEC of set sizes. [`Storage::pool_stats`]
    /// reclaims first.
    pub async fn pool_stats_snapshot(&self, pool_name: &str) -> Result<PoolStats> {
        validate_pool_name(pool_name)?;
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        self.read_stats(&mut conn, &pk, pool_name).await
    }

    async fn read_stats(
        &self,
        conn: &mut Connection<'_>,
        pk: &PoolKeys,
        pool_name: &str,
    ) -> Result<PoolStats> {
        // Every figure is the size of a set the scripts keep, read by one
        // read-only script: a consistent snapshot, available even when Redis is
        // out of memory (MULTI is refused then).
        let reply: Vec<redis::Value> = scripts::STATS
            .key(pk.meta())
            .key(pk.proxies())
            .key(pk.active())
            .key(pk.avail_seq("all"))
            .key(pk.leased())
            .key(pk.holders())
            .invoke_async(conn)
            .await
            .map_err(redis_err("cannot read the pool stats"))?;
        let n = |i: usize| -> Result<u64> {
            reply
                .get(i)
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                .ok_or_else(|| corrupt(format!("stats.lua answered {reply:?}")))
        };
        let ok = reply
            .first()
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
        if ok.as_deref() != Some("OK") {
            return Err(Error::PoolNotFound {
                name: pool_name.to_string(),
            });
        }
        let (total, active, available, leased, leases) = (n(1)?, n(2)?, n(3)?, n(4)?, n(5)?);
        Ok(PoolStats {
            total_proxies: total,
            active_proxies: active,
            available_proxies: available,
            leased_proxies: leased,
            total_leases: leases,
        })
    }
}
