//! `impl Storage for RedisStorage`: each operation is one script of
//! [`super::ops`]; this file resolves names and ids, batches, and turns the
//! scripts' typed replies into the crate's types.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use redis::AsyncConnectionConfig;
use redis::IntoConnectionInfo;
use uuid::Uuid;

use crate::consumer::Consumer;
use crate::error::{BackendErrorKind, Error, LostReason, Result};
use crate::fair::{QueuedTicket, WaitTicket};
use crate::health::HealthCheckResult;
use crate::lease::{Lease, LeaseStatus, ReleaseOutcome, Rotation};
use crate::names::{validate_pool_name, ConsumerName, PoolName};
use crate::pool::ProxyPool;
use crate::proxy::{Proxy, ProxyStatus};
use crate::session::{SessionBinding, StickySession};
use crate::site::{Site, SiteStanding};
use crate::stats::PoolStats;
use crate::storage::{AcquireRequest, AdminStorage, LeaseStorage};
use crate::success::SuccessScore;

use super::batch::{Batcher, Exec};
use super::codec::{self, corrupt, parse_uuid};
use super::config::RedisConfig;
use super::conn::{Conn as Connection, Connections, Dialer, Repeat};
use super::error::redis_err;
use super::keys::{self, Keys, PoolKeys, MAX_ADD, SCHEMA};
use super::ops::cycle::{self, CycleItem, CycleOut, CycleReply};
use super::ops::{self, acquire, lease_read, proxy_read, release, rotate, ProxyReply};

/// Commands per pipeline when reading many hashes.
const READ_CHUNK: usize = 500;
/// Live leases `pool_remove.lua` deletes per call.
const REMOVE_BATCH: u32 = 1000;
/// Proxies and leases read per script call when listing.
const LIST_PAGE: u32 = 1000;

/// The production storage: pools, proxies, consumers and leases in Redis, changed
/// only by the Lua scripts in `lua/`, so any number of managers on any number of
/// hosts share one consistent view.
///
/// See the [module docs](crate::redis) for the key schema, costs and guarantees.
pub struct RedisStorage {
    conns: Arc<Connections>,
    /// Concurrent acquires, rotates and releases, batched per pool (see
    /// [`RedisConfig::max_batch`] and [`RedisConfig::max_in_flight`]).
    /// A pool's acquires and releases share a lane: a batch of both kinds is
    /// one cycle.lua call (see [`cycle_exec`]).
    cycles: Arc<Batcher<CycleItem, Result<CycleOut>>>,
    rotates: Arc<Batcher<rotate::RotateItem, (ReleaseOutcome, acquire::AcquireReply)>>,
    pub(super) keys: Keys,
    pub(super) config: RedisConfig,
    pub(super) grace_ms: u64,
    notifier: std::sync::Arc<super::notify::Notifier>,
    /// Consumer name → id. Consumers are never removed, so a cached id stays right.
    consumers: Mutex<HashMap<String, Uuid>>,
    /// Proxy id → pool name (proxies never move; a stale entry is dropped when
    /// its pool no longer has the proxy).
    proxy_pools: Mutex<HashMap<Uuid, String>>,
    /// Acquire specs sent before (a spec goes as such from its second use on).
    specs_seen: acquire::SpecsSeen,
}

impl std::fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStorage")
            .field("namespace", &self.config.namespace)
            .field("pool_size", &self.config.pool_size)
            .finish_non_exhaustive()
    }
}

/// `WAIT` for `wanted` replicas (at most `timeout`) when configured.
async fn wait_for_replicas(
    conn: &mut Connection<'_>,
    wait: Option<(u32, std::time::Duration)>,
) -> Result<()> {
    let Some((wanted, timeout)) = wait else {
        return Ok(());
    };
    // WAIT counts the replicas that acknowledged this connection's writes: it
    // must run on the connection that carried them, and never again elsewhere.
    let before = conn.set_repeat(Repeat::Never);
    let acknowledged: redis::RedisResult<u32> = redis::cmd("WAIT")
        .arg(wanted)
        .arg(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        )
        .query_async(&mut *conn)
        .await;
    conn.set_repeat(before);
    let acknowledged = acknowledged.map_err(redis_err("WAIT failed"))?;
    if acknowledged < wanted {
        return Err(Error::ReplicationShortfall {
            wanted,
            acknowledged,
        });
    }
    Ok(())
}

fn schema_error(pool: &str, found: String) -> Error {
    Error::SchemaMismatch {
        pool: pool.to_string(),
        found: if found.is_empty() { "1".into() } else { found },
        expected: SCHEMA,
    }
}

/// Runs one batch of rotates on one pool: one rotate.lua call.
fn rotate_exec(
    conns: Arc<Connections>,
    keys: Keys,
    config: &RedisConfig,
    grace_ms: u64,
) -> Exec<rotate::RotateItem, (ReleaseOutcome, acquire::AcquireReply)> {
    let reclaim = config.reclaim_batch;
    let wait = config.wait_replicas;
    Arc::new(move |pool: String, items: Vec<rotate::RotateItem>| {
        let conns = Arc::clone(&conns);
        let pk = keys.pool(&pool);
        Box::pin(async move {
            let mut conn = conns.get().await?;
            let replies = rotate::run(&mut conn, &pk, reclaim, grace_ms, &items).await?;
            if replies.iter().any(|(o, r)| {
                *o == ReleaseOutcome::Released || matches!(r, acquire::AcquireReply::Granted(_))
            }) {
                wait_for_replicas(&mut conn, wait).await?;
            }
            Ok(replies)
        })
    })
}

/// `lighthouse_redis_batch_size{op}`: the requests of each script call a
/// pool's lane of acquires and releases makes, by the script it runs.
struct CycleSizes {
    acquire: metrics::Histogram,
    release: metrics::Histogram,
    cycle: metrics::Histogram,
}

/// Runs one batch of a pool's acquires and releases, in one script call:
/// acquire.lua for acquires alone, release.lua for releases alone, and for
/// both cycle.lua (the releases first, then the acquires). When an acquire
/// names a key of its own (a request id, a session, a site, a ticket), the
/// releases go first by release.lua and the acquires then by acquire.lua.
fn cycle_exec(
    conns: Arc<Connections>,
    keys: Keys,
    config: &RedisConfig,
    grace_ms: u64,
) -> Exec<CycleItem, Result<CycleOut>> {
    let reclaim = config.reclaim_batch;
    let wait = config.wait_replicas;
    let sizes = Arc::new(CycleSizes {
        acquire: metrics::histogram!("lighthouse_redis_batch_size", "op" => "acquire"),
        release: metrics::histogram!("lighthouse_redis_batch_size", "op" => "release"),
        cycle: metrics::histogram!("lighthouse_redis_batch_size", "op" => "cycle"),
    });
    Arc::new(move |pool: String, items: Vec<CycleItem>| {
        let conns = Arc::clone(&conns);
        let pk = keys.pool(&pool);
        let sizes = Arc::clone(&sizes);
        Box::pin(async move {
            let mut tokens = Vec::new();
            let mut acquires = Vec::new();
            for it in &items {
                match it {
                    CycleItem::Release(t) => tokens.push(*t),
                    CycleItem::Acquire(a) => acquires.push(a),
                }
            }
            let mut conn = conns.get().await?;
            let (released, got) = if acquires.is_empty() {
                sizes.release.record(tokens.len() as f64);
                let out = run_releases(&mut conn, &pk, &pool, grace_ms, &tokens).await?;
                (out.into_iter().map(Ok).collect(), Vec::new())
            } else if tokens.is_empty() {
                sizes.acquire.record(acquires.len() as f64);
                let got = acquire::run(&mut conn, &pk, reclaim, grace_ms, &acquires).await?;
                (Vec::new(), got.into_iter().map(Ok).collect())
            } else if acquires.iter().all(|a| a.fits_cycle()) {
                sizes.cycle.record((tokens.len() + acquires.len()) as f64);
                let reply = cycle::run(&mut conn, &pk, reclaim, grace_ms, &tokens, &acquires).await;
                match reply {
                    Ok(CycleReply::Done(out, got)) => (
                        out.into_iter().map(Ok).collect(),
                        got.into_iter().map(Ok).collect(),
                    ),
                    Ok(CycleReply::PoolNotFound) => (
                        tokens
                            .iter()
                            .map(|_| Ok(ReleaseOutcome::NotFound))
                            .collect(),
                        acquires
                            .iter()
                            .map(|_| Ok(acquire::AcquireReply::PoolNotFound))
                            .collect(),
                    ),
                    Ok(CycleReply::Schema(found)) => return Err(schema_error(&pool, found)),
                    // The call may have run: the acquires get the error (an
                    // acquire without a request id is not sent again), the
                    // releases, which may go again, go again by release.lua.
                    Err(e) if e.backend_kind() == Some(BackendErrorKind::Connection) => {
                        conn = conns.get().await?;
                        let out = run_releases(&mut conn, &pk, &pool, grace_ms, &tokens).await;
                        let released = match out {
                            Ok(out) => out.into_iter().map(Ok).collect(),
                            Err(e2) => tokens.iter().map(|_| Err(e2.clone())).collect(),
                        };
                        (released, acquires.iter().map(|_| Err(e.clone())).collect())
                    }
                    Err(e) => return Err(e),
                }
            } else {
                sizes.release.record(tokens.len() as f64);
                sizes.acquire.record(acquires.len() as f64);
                let out = run_releases(&mut conn, &pk, &pool, grace_ms, &tokens).await?;
                let got = acquire::run(&mut conn, &pk, reclaim, grace_ms, &acquires).await?;
                (
                    out.into_iter().map(Ok).collect(),
                    got.into_iter().map(Ok).collect(),
                )
            };
            let wrote = released.iter().any(|o: &Result<ReleaseOutcome>| {
                matches!(o, Ok(ReleaseOutcome::Released | ReleaseOutcome::Expired))
            }) || got
                .iter()
                .any(|r| matches!(r, Ok(acquire::AcquireReply::Granted(_))));
            if wrote {
                wait_for_replicas(&mut conn, wait).await?;
            }
            // Each reply to its request, in the batch's order.
            let mut released = released.into_iter();
            let mut got = got.into_iter();
            let mut out = Vec::with_capacity(items.len());
            for it in &items {
                let reply = match it {
                    CycleItem::Release(_) => released.next().map(|r| r.map(CycleOut::Release)),
                    CycleItem::Acquire(_) => got.next().map(|r| r.map(CycleOut::Acquire)),
                };
                out.push(
                    reply.unwrap_or_else(|| {
                        Err(Error::backend("batched call: too few replies", None))
                    }),
                );
            }
            Ok(out)
        })
    })
}

/// One release.lua call for these leases (their tokens): their outcomes.
async fn run_releases(
    conn: &mut Connection<'_>,
    pk: &PoolKeys,
    pool: &str,
    grace_ms: u64,
    tokens: &[u64],
) -> Result<Vec<ReleaseOutcome>> {
    match release::run(conn, pk, grace_ms, tokens).await? {
        release::ReleaseReply::Outcomes(out) => Ok(out),
        release::ReleaseReply::PoolNotFound => Ok(vec![ReleaseOutcome::NotFound; tokens.len()]),
        release::ReleaseReply::Schema(found) => Err(schema_error(pool, found)),
    }
}

/// The connection info of a URL, with `TCP_NODELAY` on. redis-rs leaves Nagle's
/// algorithm on, which holds a request back while an earlier one on the same
/// connection is unacknowledged: measured through a forwarder adding 2 ms, 8
/// concurrent callers took 8.4 ms per acquire→release cycle with it, against
/// 5.4 ms for redis-semaphore (ioredis turns it off).
fn connection_info(url: &str) -> Result<redis::ConnectionInfo> {
    let info = url
        .into_connection_info()
        .map_err(redis_err("invalid connection URL"))?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    Ok(info.set_tcp_settings(tcp))
}

impl RedisStorage {
    /// Sends one acquire through its pool's lane of acquires and releases.
    async fn submit_acquire(
        &self,
        pool: &str,
        item: acquire::AcquireItem,
    ) -> Result<acquire::AcquireReply> {
        match self.cycles.submit(pool, CycleItem::Acquire(item)).await?? {
            CycleOut::Acquire(reply) => Ok(reply),
            CycleOut::Release(_) => Err(Error::backend("batched acquire: a release's reply", None)),
        }
    }

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
        let info = connection_info(config.url.as_str())?;
        let dialer = Dialer::new(info.clone(), conn_config, config.connect_timeout)
            .map_err(redis_err("invalid connection URL"))?;
        let grace_ms = u64::try_from(config.record_grace.as_millis())
            .unwrap_or(u64::MAX)
            .min(super::keys::MAX_GRACE_MS);
        let client = redis::Client::open(info).map_err(redis_err("invalid connection URL"))?;
        let cluster = if config.cluster_nodes.is_empty() {
            None
        } else {
            let nodes = config
                .cluster_nodes
                .iter()
                .map(|url| connection_info(url))
                .collect::<Result<Vec<_>>>()?;
            let mut builder = redis::cluster::ClusterClient::builder(nodes);
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
        let conns = Arc::new(Connections::new(
            dialer,
            config.pool_size,
            config.wait_timeout,
            config.response_timeout,
            cluster,
        ));
        let keys = Keys::new(&config.namespace);
        let (batch, in_flight) = (config.max_batch, config.max_in_flight);
        Ok(RedisStorage {
            notifier: super::notify::Notifier::new(client),
            cycles: Batcher::new(
                batch,
                in_flight,
                config.fit_in_flight,
                cycle_exec(Arc::clone(&conns), keys.clone(), &config, grace_ms),
            ),
            rotates: Batcher::named(
                "rotate",
                batch,
                in_flight,
                config.fit_in_flight,
                rotate_exec(Arc::clone(&conns), keys.clone(), &config, grace_ms),
            ),
            conns,
            keys,
            config,
            grace_ms,
            consumers: Mutex::new(HashMap::new()),
            proxy_pools: Mutex::new(HashMap::new()),
            specs_seen: acquire::SpecsSeen::new(),
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

    /// Loads the library of Lua functions into Redis (`FUNCTION LOAD REPLACE`;
    /// to every master of a Cluster). Optional: it is loaded on first use, and
    /// again whenever Redis has lost it.
    pub async fn load_scripts(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        ops::load(&mut conn)
            .await
            .map_err(redis_err("FUNCTION LOAD failed"))
    }

    /// The name of the Redis Functions library this version loads
    /// (`lighthouse_<hash of its text>`).
    pub fn library_name() -> &'static str {
        &ops::LIBRARY.name
    }

    /// How long a call is repeated after connection failures (the response
    /// timeout).
    fn repeat_for(&self) -> std::time::Duration {
        self.config
            .response_timeout
            .unwrap_or(super::conn::DEFAULT_REPEAT_FOR)
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

    /// The id of a consumer named in a lease record (registered by the acquire
    /// that wrote it; a nil id if the registry lost it).
    async fn consumer_id_of(&self, conn: &mut Connection<'_>, name: &str) -> Result<Uuid> {
        if let Some(id) = self.cached_consumer(name) {
            return Ok(id);
        }
        let id: Option<String> = redis::cmd("HGET")
            .arg(self.keys.consumers())
            .arg(name)
            .query_async(conn)
            .await
            .map_err(redis_err("cannot read the consumer"))?;
        match id {
            Some(id) => {
                let id = parse_uuid(&id)?;
                self.cache_consumer(name, id);
                Ok(id)
            }
            None => Ok(Uuid::nil()),
        }
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
                name: request.pool_name.to_string(),
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
                name: request.consumer_name.to_string(),
            }),
        }
    }

    /// Runs `cleanup.lua` on one pool until no due lease is left; returns how
    /// many leases gave their slot back.
    async fn reclaim_pool(&self, conn: &mut Connection<'_>, pk: &PoolKeys) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let (n, more) =
                ops::cleanup::run(conn, pk, self.config.cleanup_batch, self.grace_ms).await?;
            total += n;
            if !more {
                return Ok(total);
            }
        }
    }

    /// Reclaims due leases before a read; when Redis is out of memory (it then
    /// refuses every function that may write), reads go on without it: expired
    /// leases keep counting until Redis can write again.
    async fn reclaim_for_reading(&self, conn: &mut Connection<'_>, pk: &PoolKeys) -> Result<()> {
        match self.reclaim_pool(conn, pk).await {
            Err(e) if e.backend_kind() == Some(BackendErrorKind::OutOfMemory) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Fails with [`Error::PoolNotFound`] unless the pool exists (and with
    /// [`Error::SchemaMismatch`] when another layout wrote it).
    async fn require_pool(&self, conn: &mut Connection<'_>, name: &str) -> Result<PoolKeys> {
        validate_pool_name(name)?;
        let pk = self.keys.pool(name);
        let (id, removing, schema): (Option<String>, Option<String>, Option<String>) =
            redis::pipe()
                .hget(pk.meta(), "id")
                .hget(pk.meta(), "removing")
                .hget(pk.meta(), "schema")
                .query_async(conn)
                .await
                .map_err(redis_err("cannot read the pool"))?;
        if id.is_none() || removing.is_some() {
            return Err(Error::PoolNotFound {
                name: name.to_string(),
            });
        }
        if schema.as_deref() != Some(&SCHEMA.to_string()) {
            return Err(schema_error(name, schema.unwrap_or_default()));
        }
        Ok(pk)
    }

    fn cached_pool_of(&self, id: Uuid) -> Option<String> {
        self.proxy_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    fn cache_pool_of(&self, id: Uuid, pool: Option<&str>) {
        let mut cache = self
            .proxy_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match pool {
            Some(p) => {
                cache.insert(id, p.to_string());
            }
            None => {
                cache.remove(&id);
            }
        }
    }

    /// The pools holding these proxy ids: each pool's ids shards, read with one
    /// pipeline per pool (a proxy belongs to one pool).
    async fn find_pools(
        &self,
        conn: &mut Connection<'_>,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, String>> {
        let mut found = HashMap::new();
        if ids.is_empty() {
            return Ok(found);
        }
        for pool in self.pool_names().await? {
            let pk = self.keys.pool(&pool);
            let mut shards: HashMap<String, Vec<Uuid>> = HashMap::new();
            for id in ids {
                shards.entry(pk.ids(*id)).or_default().push(*id);
            }
            let shards: Vec<(String, Vec<Uuid>)> = shards.into_iter().collect();
            for chunk in shards.chunks(READ_CHUNK) {
                let mut pipe = redis::pipe();
                for (key, members) in chunk {
                    let args: Vec<String> = members.iter().map(Uuid::to_string).collect();
                    pipe.cmd("HMGET").arg(key).arg(args);
                }
                let got: Vec<Vec<Option<String>>> = pipe
                    .query_async(conn)
                    .await
                    .map_err(redis_err("cannot look up proxy ids"))?;
                for ((_, members), values) in chunk.iter().zip(got) {
                    for (id, v) in members.iter().zip(values) {
                        if v.is_some() {
                            found.insert(*id, pool.to_string());
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// The pool a proxy belongs to: the cache, else a look-up in every pool.
    async fn pool_of_proxy(&self, conn: &mut Connection<'_>, id: Uuid) -> Result<Option<String>> {
        if let Some(p) = self.cached_pool_of(id) {
            return Ok(Some(p));
        }
        let found = self.find_pools(conn, &[id]).await?.remove(&id);
        if let Some(p) = &found {
            self.cache_pool_of(id, Some(p));
        }
        Ok(found)
    }

    /// Runs a proxy-writing script on the proxy's pool; when the cached pool
    /// no longer has the proxy, looks it up again once.
    async fn on_proxy<F>(&self, proxy_id: Uuid, mut run: F) -> Result<(String, ProxyReply)>
    where
        F: for<'c> FnMut(
            &'c mut Connection<'_>,
            PoolKeys,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<ProxyReply>> + Send + 'c>,
        >,
    {
        let mut conn = self.conn().await?;
        for attempt in 0..2 {
            let Some(pool) = self.pool_of_proxy(&mut conn, proxy_id).await? else {
                return Err(Error::ProxyNotFound { id: proxy_id });
            };
            let reply = run(&mut conn, self.keys.pool(&pool)).await?;
            match reply {
                ProxyReply::NotFound if attempt == 0 => self.cache_pool_of(proxy_id, None),
                ProxyReply::NotFound => return Err(Error::ProxyNotFound { id: proxy_id }),
                ProxyReply::Schema(found) => return Err(schema_error(&pool, found)),
                other => {
                    self.replicated(&mut conn).await?;
                    return Ok((pool, other));
                }
            }
        }
        Err(Error::ProxyNotFound { id: proxy_id })
    }

    /// The proxy a write script answered.
    async fn proxy_of(&self, pool: &str, reply: ProxyReply, id: Uuid) -> Result<Proxy> {
        match reply {
            ProxyReply::Ok { json, leases } => {
                let pool_id = self.pool_id(pool).await?;
                codec::proxy_from_json(&json, pool_id, leases)
            }
            ProxyReply::NotFound => Err(Error::ProxyNotFound { id }),
            ProxyReply::PoolMismatch => Err(Error::invalid_proxy(
                "pool_id",
                "a proxy cannot move to another pool (remove it and add it there)",
            )),
            ProxyReply::Schema(found) => Err(schema_error(pool, found)),
        }
    }

    /// A pool's id (one HGET).
    async fn pool_id(&self, pool: &str) -> Result<Uuid> {
        let mut conn = self.conn().await?;
        let id: Option<String> = redis::cmd("HGET")
            .arg(self.keys.pool(pool).meta())
            .arg("id")
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the pool"))?;
        id.map(|id| parse_uuid(&id))
            .transpose()?
            .ok_or_else(|| Error::PoolNotFound {
                name: pool.to_string(),
            })
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
        let checked = checked_at.map(codec::format_time).unwrap_or_default();
        let latency = latency.map(|l| u32::try_from(l.as_millis()).unwrap_or(u32::MAX));
        let (pool, reply) = self
            .on_proxy(proxy_id, |conn, pk| {
                let checked = checked.clone();
                Box::pin(async move {
                    ops::proxy_status::run(conn, &pk, proxy_id, status, &checked, latency).await
                })
            })
            .await?;
        self.proxy_of(&pool, reply, proxy_id).await
    }

    /// With [`RedisConfig::wait_for_replicas`]: `WAIT` for the replicas to
    /// acknowledge this connection's writes, or report the shortfall.
    pub(super) async fn replicated(&self, conn: &mut Connection<'_>) -> Result<()> {
        wait_for_replicas(conn, self.config.wait_replicas).await
    }

    /// Runs `report.lua` for a success (`failure` None) or a failure.
    async fn report(
        &self,
        proxy_id: Uuid,
        failure: Option<(&str, &crate::cooldown::CooldownPolicy)>,
    ) -> Result<Proxy> {
        if let Some((reason, policy)) = failure {
            crate::storage::validate_failure(reason, policy)?;
        }
        let failure = failure.map(|(r, p)| (r.to_string(), p.clone()));
        let (pool, reply) = self
            .on_proxy(proxy_id, |conn, pk| {
                let failure = failure.clone();
                Box::pin(async move {
                    let f = failure.as_ref().map(|(r, p)| (r.as_str(), p));
                    ops::report::run(conn, &pk, proxy_id, f).await
                })
            })
            .await?;
        self.proxy_of(&pool, reply, proxy_id).await
    }

    /// Validates, checks and adds proxies (`bulk` decorates field errors with the
    /// proxy's position, like [`crate::InMemoryStorage::add_proxies`]).
    async fn add_many(&self, mut proxies: Vec<Proxy>, bulk: bool) -> Result<Vec<Proxy>> {
        let decorate = |i: usize, p: &Proxy, e: Error| match e {
            Error::InvalidProxy { field, reason } if bulk => Error::InvalidProxy {
                field,
                reason: format!("proxy #{i} ({}:{}): {reason}", p.host, p.port),
            },
            other => other,
        };
        let mut seen = HashSet::with_capacity(proxies.len());
        for (i, p) in proxies.iter_mut().enumerate() {
            if let Err(e) = p.normalize() {
                return Err(decorate(i, p, e));
            }
            p.current_leases = 0;
            p.consecutive_failures = 0;
            p.cooldown_until = None;
            p.last_failure = None;
            p.latency_ms = None;
            if !seen.insert(p.id) {
                return Err(Error::ProxyAlreadyExists { id: p.id });
            }
        }
        if proxies.is_empty() {
            return Ok(proxies);
        }
        let mut conn = self.conn().await?;
        // Pool names of the pool ids, and ids already in some pool.
        let pool_ids: Vec<String> = {
            let mut v: Vec<String> = proxies.iter().map(|p| p.pool_id.to_string()).collect();
            v.sort();
            v.dedup();
            v
        };
        let names: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.pool_ids())
            .arg(&pool_ids)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the pool registry"))?;
        let name_of: HashMap<String, String> = pool_ids
            .into_iter()
            .zip(names)
            .filter_map(|(id, n)| n.map(|n| (id, n)))
            .collect();
        let ids: Vec<Uuid> = proxies.iter().map(|p| p.id).collect();
        let taken = self.find_pools(&mut conn, &ids).await?;
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, p) in proxies.iter().enumerate() {
            if taken.contains_key(&p.id) {
                return Err(Error::ProxyAlreadyExists { id: p.id });
            }
            let Some(pool) = name_of.get(&p.pool_id.to_string()) else {
                let e = Error::invalid_proxy("pool_id", format!("no pool has id {}", p.pool_id));
                return Err(decorate(i, p, e));
            };
            match groups.iter_mut().find(|(name, _)| name == pool) {
                Some((_, members)) => members.push(i),
                None => groups.push((pool.clone(), vec![i])),
            }
        }
        for (pool, members) in &groups {
            let pk = self.keys.pool(pool);
            for chunk in members.chunks(MAX_ADD) {
                let jsons: Vec<String> = chunk
                    .iter()
                    .map(|&i| codec::proxy_json(&proxies[i]))
                    .collect();
                let first = &proxies[chunk[0]];
                match ops::proxy_add::run(&mut conn, &pk, first.pool_id, &jsons).await? {
                    ops::proxy_add::AddReply::Ok => {}
                    ops::proxy_add::AddReply::Exists(id) => {
                        return Err(Error::ProxyAlreadyExists { id })
                    }
                    ops::proxy_add::AddReply::PoolNotFound
                    | ops::proxy_add::AddReply::PoolMismatch => {
                        return Err(Error::invalid_proxy(
                            "pool_id",
                            format!("no pool has id {}", first.pool_id),
                        ))
                    }
                    ops::proxy_add::AddReply::Schema(found) => {
                        return Err(schema_error(pool, found))
                    }
                }
                for &i in chunk {
                    self.cache_pool_of(proxies[i].id, Some(pool));
                }
            }
        }
        Ok(proxies)
    }

    /// A lease from what acquire.lua or rotate.lua granted.
    fn lease_from_grant(
        g: &acquire::Granted,
        consumer_id: Uuid,
        request: &AcquireRequest,
    ) -> Result<Lease> {
        let (proxy_id, endpoint) = codec::endpoint_from_json(&g.proxy_json)?;
        Ok(Lease {
            id: keys::lease_id(g.token, g.pool_id)
                .ok_or_else(|| corrupt(format!("lease token {}", g.token)))?,
            proxy_id,
            consumer_id,
            consumer_name: request.consumer_name.clone(),
            pool_id: g.pool_id,
            pool_name: request.pool_name.clone(),
            status: LeaseStatus::Active,
            acquired_at: codec::ms_to_time(g.acquired_ms)?,
            expires_at: codec::ms_to_time(g.expires_ms)?,
            released_at: None,
            proxy: endpoint.into(),
            fencing_token: g.token,
        })
    }

    /// What an acquire reply means for the caller: `Ok(Some(..))` a lease (or the
    /// id of the one its request id got), `Ok(None)` none, or retry after cleanup.
    fn settle(
        reply: acquire::AcquireReply,
        consumer_id: Uuid,
        request: &AcquireRequest,
    ) -> Result<Settled> {
        match reply {
            acquire::AcquireReply::Granted(g) => Ok(Settled::Lease(Box::new(
                Self::lease_from_grant(&g, consumer_id, request)?,
            ))),
            acquire::AcquireReply::Existing(token) => Ok(Settled::Existing(token)),
            acquire::AcquireReply::None | acquire::AcquireReply::Queued => Ok(Settled::None),
            acquire::AcquireReply::Retry => Ok(Settled::Retry),
            acquire::AcquireReply::NoOrder(order) => Err(Error::missing_order(
                &request.pool_name,
                order.parse().unwrap_or(crate::pool::IndexOrder::Latency),
            )),
            acquire::AcquireReply::PoolNotFound => Err(Error::PoolNotFound {
                name: request.pool_name.to_string(),
            }),
            acquire::AcquireReply::Schema(found) => Err(schema_error(&request.pool_name, found)),
        }
    }
}

/// An acquire reply, settled.
enum Settled {
    Lease(Box<Lease>),
    /// The token of the lease its request id got.
    Existing(u64),
    None,
    Retry,
}

impl AdminStorage for RedisStorage {
    async fn create_pool(&self, pool: ProxyPool) -> Result<ProxyPool> {
        pool.validate()?;
        let pool = pool.into_stored();
        let pk = self.keys.pool(&pool.name);
        let mut conn = self.conn().await?;
        let (exists, owner): (bool, Option<String>) = redis::pipe()
            .exists(pk.meta())
            .hget(self.keys.pool_ids(), pool.id.to_string())
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the pool registry"))?;
        if exists {
            return Err(Error::PoolAlreadyExists {
                name: pool.name.to_string(),
            });
        }
        if owner.is_some() {
            return Err(Error::InvalidArgument(format!(
                "another pool already has id {}",
                pool.id
            )));
        }
        if !ops::pool_create::run(&mut conn, &pk, &pool).await? {
            return Err(Error::PoolAlreadyExists {
                name: pool.name.to_string(),
            });
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

    async fn get_pool(&self, name: &PoolName) -> Result<Option<ProxyPool>> {
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
        if let Some(current) = self.get_pool(&pool.name).await? {
            if current.id == pool.id {
                current.check_fixed_settings(&pool)?;
            }
        }
        let pk = self.keys.pool(&pool.name);
        let mut conn = self.conn().await?;
        match ops::pool_update::run(&mut conn, &pk, &pool).await? {
            ops::pool_update::PoolUpdateReply::Ok => Ok(pool.into_stored()),
            ops::pool_update::PoolUpdateReply::NotFound => Err(Error::PoolNotFound {
                name: pool.name.to_string(),
            }),
            ops::pool_update::PoolUpdateReply::IdMismatch(id) => Err(Error::InvalidArgument(
                format!("pool {:?} has id {id}, not {}", pool.name, pool.id),
            )),
            ops::pool_update::PoolUpdateReply::Schema(found) => {
                Err(schema_error(&pool.name, found))
            }
        }
    }

    async fn remove_pool(&self, name: &PoolName) -> Result<bool> {
        let pk = self.keys.pool(name);
        let mut conn = self.conn().await?;
        let mut start = true;
        let mut pool_id = String::new();
        loop {
            let reply = ops::pool_remove::run(&mut conn, &pk, start, REMOVE_BATCH).await?;
            if reply.state == ops::pool_remove::RemoveState::NotFound {
                return Ok(false);
            }
            if !reply.pool_id.is_empty() {
                pool_id.clone_from(&reply.pool_id);
            }
            for chunk in reply.legacy_proxies.chunks(READ_CHUNK) {
                redis::cmd("HDEL")
                    .arg(self.keys.legacy_proxy_pool())
                    .arg(chunk)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(redis_err("cannot clean the first layout's proxy registry"))?;
            }
            if reply.state == ops::pool_remove::RemoveState::Done {
                break;
            }
            start = false;
        }
        let mut pipe = redis::pipe();
        pipe.zrem(self.keys.pools(), name).ignore();
        if !pool_id.is_empty() {
            pipe.hdel(self.keys.pool_ids(), &pool_id).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(redis_err("cannot unregister the pool"))?;
        self.proxy_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, p| p != name);
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
        let id = proxy.id;
        let json = codec::proxy_json(&proxy);
        let pool_id = proxy.pool_id;
        let (pool, reply) = self
            .on_proxy(id, |conn, pk| {
                let json = json.clone();
                Box::pin(async move { ops::proxy_update::run(conn, &pk, pool_id, &json).await })
            })
            .await?;
        self.proxy_of(&pool, reply, id).await
    }

    async fn set_proxy_status(&self, proxy_id: Uuid, status: ProxyStatus) -> Result<Proxy> {
        self.set_status(proxy_id, status, None, None).await
    }

    async fn remove_proxy(&self, proxy_id: Uuid) -> Result<bool> {
        let mut conn = self.conn().await?;
        for attempt in 0..2 {
            let Some(pool) = self.pool_of_proxy(&mut conn, proxy_id).await? else {
                return Ok(false);
            };
            let removed =
                ops::proxy_remove::run(&mut conn, &self.keys.pool(&pool), proxy_id).await?;
            self.cache_pool_of(proxy_id, None);
            if removed || attempt == 1 {
                return Ok(removed);
            }
        }
        Ok(false)
    }

    async fn get_proxy(&self, proxy_id: Uuid) -> Result<Option<Proxy>> {
        let mut conn = self.conn().await?;
        for attempt in 0..2 {
            let Some(pool) = self.pool_of_proxy(&mut conn, proxy_id).await? else {
                return Ok(None);
            };
            if validate_pool_name(&pool).is_err() {
                return Err(corrupt(format!("proxy look-up names pool {pool:?}")));
            }
            let pk = self.keys.pool(&pool);
            match proxy_read::by_ids(&mut conn, &pk, &[proxy_id]).await? {
                proxy_read::ReadReply::Ok(_, found) => {
                    if let Some(s) = found.first() {
                        let pool_id = self.pool_id(&pool).await?;
                        return codec::proxy_from_json(&s.json, pool_id, s.leases).map(Some);
                    }
                }
                proxy_read::ReadReply::Schema(found) => return Err(schema_error(&pool, found)),
                proxy_read::ReadReply::NotFound => {}
            }
            self.cache_pool_of(proxy_id, None);
            if attempt == 1 {
                break;
            }
        }
        Ok(None)
    }

    async fn list_proxies(&self, pool_name: &PoolName) -> Result<Vec<Proxy>> {
        let mut conn = self.conn().await?;
        let pk = self.require_pool(&mut conn, pool_name).await?;
        self.reclaim_for_reading(&mut conn, &pk).await?;
        let pool_id = self.pool_id(pool_name).await?;
        let mut cursor = "0".to_string();
        let mut out: Vec<(u64, Proxy)> = Vec::new();
        loop {
            match proxy_read::scan(&mut conn, &pk, &cursor, LIST_PAGE).await? {
                proxy_read::ReadReply::Ok(next, page) => {
                    for s in page {
                        out.push((s.seq, codec::proxy_from_json(&s.json, pool_id, s.leases)?));
                    }
                    if next == "0" {
                        break;
                    }
                    cursor = next;
                }
                proxy_read::ReadReply::NotFound => {
                    return Err(Error::PoolNotFound {
                        name: pool_name.to_string(),
                    })
                }
                proxy_read::ReadReply::Schema(found) => return Err(schema_error(pool_name, found)),
            }
        }
        out.sort_by_key(|(seq, _)| *seq);
        out.dedup_by_key(|(seq, _)| *seq);
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    async fn ensure_consumer(&self, name: &ConsumerName) -> Result<Consumer> {
        let mut conn = self.conn().await?;
        let id = self.ensure_consumer_on(&mut conn, name).await?;
        Ok(Consumer {
            id,
            name: name.clone(),
        })
    }

    async fn get_consumer(&self, name: &ConsumerName) -> Result<Option<Consumer>> {
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
                name: name.clone(),
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
                    name: ConsumerName::try_from(name)
                        .map_err(|e| corrupt(format!("consumer list: {e}")))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

impl LeaseStorage for RedisStorage {
    async fn acquire(&self, request: &AcquireRequest) -> Result<Option<Lease>> {
        request.validate()?;
        let pk = self.keys.pool(&request.pool_name);
        let consumer_id = {
            let mut conn = self.conn().await?;
            self.consumer_for(&mut conn, request, &pk).await?
        };
        let item = acquire::AcquireItem::new(&pk, request, self.grace_ms, &self.specs_seen)?;
        let started = std::time::Instant::now();
        // RETRY means "nothing free yet, but more expired leases wait": reclaim
        // them all in bounded batches and try again.
        for _ in 0..4 {
            let reply = match self.submit_acquire(&request.pool_name, item.clone()).await {
                // A request id makes this acquire safe to send again, but its
                // batch may have held requests without one, and such a batch is
                // not sent again once it may have run: send this one again (once,
                // within the response timeout).
                Err(e)
                    if request.request_id.is_some()
                        && e.backend_kind() == Some(BackendErrorKind::Connection)
                        && started.elapsed() < self.repeat_for() =>
                {
                    self.submit_acquire(&request.pool_name, item.clone())
                        .await?
                }
                other => other?,
            };
            match Self::settle(reply, consumer_id, request)? {
                Settled::Lease(lease) => return Ok(Some(*lease)),
                Settled::Existing(token) => {
                    return self.lease_by_token(&request.pool_name, token).await
                }
                Settled::None => return Ok(None),
                Settled::Retry => {
                    let mut conn = self.conn().await?;
                    self.reclaim_pool(&mut conn, &pk).await?;
                }
            }
        }
        Ok(None)
    }

    async fn rotate(&self, lease: &Lease, request: &AcquireRequest) -> Result<Rotation> {
        request.validate()?;
        let token = keys::token_of(lease.id);
        if lease.pool_name != request.pool_name
            || validate_pool_name(&lease.pool_name).is_err()
            || token.is_none()
        {
            // Another pool (or a lease id not of this storage): release, then
            // acquire, after checking the selector as the script would.
            if let Some(pool) = self.get_pool(&request.pool_name).await? {
                pool.indexes
                    .check_selector(&request.pool_name, request.selector)?;
            }
            let released = self.release(lease).await?;
            return Ok(Rotation::new(released, self.acquire(request).await?));
        }
        let pk = self.keys.pool(&request.pool_name);
        let consumer_id = {
            let mut conn = self.conn().await?;
            self.consumer_for(&mut conn, request, &pk).await?
        };
        let item = rotate::RotateItem {
            token: token.unwrap_or_default(),
            acquire: acquire::AcquireItem::new(&pk, request, self.grace_ms, &self.specs_seen)?,
        };
        let (released, reply) = self.rotates.submit(&request.pool_name, item).await?;
        let next = match Self::settle(reply, consumer_id, request)? {
            Settled::Lease(l) => Some(*l),
            Settled::Existing(token) => self.lease_by_token(&request.pool_name, token).await?,
            Settled::None => None,
            Settled::Retry => self.acquire(request).await?,
        };
        Ok(Rotation::new(released, next))
    }

    async fn extend(&self, lease: &Lease, duration: std::time::Duration) -> Result<Lease> {
        crate::storage::validate_lease_duration(duration)?;
        let lost = |reason| Error::LeaseLost {
            id: lease.id,
            reason,
        };
        let Some(token) = keys::token_of(lease.id) else {
            return Err(lost(LostReason::Unknown));
        };
        if validate_pool_name(&lease.pool_name).is_err() {
            return Err(lost(LostReason::Unknown));
        }
        let pk = self.keys.pool(&lease.pool_name);
        let mut conn = self.conn().await?;
        let duration_ms = u64::try_from(duration.as_millis())
            .map_err(|_| Error::InvalidArgument("lease duration overflows".into()))?;
        match ops::extend::run(&mut conn, &pk, token, duration_ms, self.grace_ms).await? {
            ops::extend::ExtendReply::Ok(ms) => {
                self.replicated(&mut conn).await?;
                let mut renewed = lease.clone();
                renewed.status = LeaseStatus::Active;
                renewed.expires_at = codec::ms_to_time(ms)?;
                Ok(renewed)
            }
            ops::extend::ExtendReply::Lost(reason) => Err(lost(reason)),
            ops::extend::ExtendReply::Schema(found) => Err(schema_error(&lease.pool_name, found)),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let Some(token) = keys::token_of(lease.id) else {
            return Ok(ReleaseOutcome::NotFound);
        };
        if validate_pool_name(&lease.pool_name).is_err() {
            return Ok(ReleaseOutcome::NotFound);
        }
        match self
            .cycles
            .submit(&lease.pool_name, CycleItem::Release(token))
            .await??
        {
            CycleOut::Release(outcome) => Ok(outcome),
            CycleOut::Acquire(_) => {
                Err(Error::backend("batched release: an acquire's reply", None))
            }
        }
    }

    async fn get_lease(&self, pool_name: &PoolName, lease_id: Uuid) -> Result<Option<Lease>> {
        match keys::token_of(lease_id) {
            Some(token) => self.lease_by_token(pool_name, token).await,
            None => {
                let mut conn = self.conn().await?;
                self.require_pool(&mut conn, pool_name).await?;
                Ok(None)
            }
        }
    }

    async fn list_leases(&self, pool_name: &PoolName) -> Result<Vec<Lease>> {
        let mut conn = self.conn().await?;
        let pk = self.require_pool(&mut conn, pool_name).await?;
        self.reclaim_for_reading(&mut conn, &pk).await?;
        let mut out = Vec::new();
        let mut start = 0u64;
        loop {
            match lease_read::list(&mut conn, &pk, start, LIST_PAGE).await? {
                lease_read::LeaseReadReply::Ok {
                    now_ms,
                    more,
                    pool_id,
                    leases,
                } => {
                    let pool = pool_ref(pool_id, pool_name);
                    for s in leases {
                        let r = codec::parse_record(&s.record)?;
                        let consumer_id = self.consumer_id_of(&mut conn, &r.consumer).await?;
                        let lease = codec::lease_from_record(
                            s.token,
                            &s.record,
                            &s.proxy_json,
                            &pool,
                            consumer_id,
                            now_ms,
                        )?;
                        if lease.status == LeaseStatus::Active {
                            out.push(lease);
                        }
                    }
                    if !more {
                        break;
                    }
                    start += u64::from(LIST_PAGE);
                }
                lease_read::LeaseReadReply::NotFound => {
                    return Err(Error::PoolNotFound {
                        name: pool_name.to_string(),
                    })
                }
                lease_read::LeaseReadReply::Schema(found) => {
                    return Err(schema_error(pool_name, found))
                }
            }
        }
        out.sort_by_key(|l| (l.acquired_at, l.id));
        out.dedup_by_key(|l| l.id);
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

    async fn pool_stats(&self, pool_name: &PoolName) -> Result<PoolStats> {
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        self.reclaim_for_reading(&mut conn, &pk).await?;
        self.read_stats(&mut conn, &pk, pool_name).await
    }

    async fn report_site_failure(
        &self,
        proxy_id: Uuid,
        site: &Site,
        reason: &str,
        policy: &crate::cooldown::CooldownPolicy,
    ) -> Result<SiteStanding> {
        crate::storage::validate_failure(reason, policy)?;
        self.site_report(proxy_id, site, Some((reason, policy)))
            .await
    }

    async fn report_site_success(&self, proxy_id: Uuid, site: &Site) -> Result<SiteStanding> {
        self.site_report(proxy_id, site, None).await
    }

    async fn success_scores(&self, pool_name: &PoolName) -> Result<Vec<SuccessScore>> {
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        match ops::success_read::run(&mut conn, &pk).await? {
            ops::success_read::SuccessReadReply::Ok(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (json, evidence) in entries {
                    let (proxy_id, _) = codec::endpoint_from_json(&json)?;
                    out.push(codec::success_score(proxy_id, &evidence)?);
                }
                out.sort_by(|a, b| {
                    b.score
                        .total_cmp(&a.score)
                        .then(a.proxy_id.cmp(&b.proxy_id))
                });
                Ok(out)
            }
            ops::success_read::SuccessReadReply::NotFound => Err(Error::PoolNotFound {
                name: pool_name.to_string(),
            }),
            ops::success_read::SuccessReadReply::Schema(found) => {
                Err(schema_error(pool_name, found))
            }
        }
    }

    async fn site_standings(&self, pool_name: &PoolName, site: &Site) -> Result<Vec<SiteStanding>> {
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        match ops::site_read::run(&mut conn, &pk, site).await? {
            ops::site_read::SiteReadReply::Ok { now_ms, entries } => {
                let mut out = Vec::with_capacity(entries.len());
                for (json, state) in entries {
                    let (proxy_id, _) = codec::endpoint_from_json(&json)?;
                    out.push(site_standing(proxy_id, &state, now_ms)?);
                }
                out.sort_by_key(|s| s.proxy_id);
                Ok(out)
            }
            ops::site_read::SiteReadReply::NotFound => Err(Error::PoolNotFound {
                name: pool_name.to_string(),
            }),
            ops::site_read::SiteReadReply::Schema(found) => Err(schema_error(pool_name, found)),
        }
    }

    async fn session(&self, pool_name: &PoolName, session: &str) -> Result<Option<SessionBinding>> {
        StickySession::new(session).validate()?;
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        match ops::session_read::run(&mut conn, &pk, session).await? {
            ops::session_read::SessionReply::Bound {
                proxy_json,
                until_ms,
            } => {
                let (proxy_id, _) = codec::endpoint_from_json(&proxy_json)?;
                Ok(Some(SessionBinding::new(
                    proxy_id,
                    codec::ms_to_time(until_ms)?,
                )))
            }
            ops::session_read::SessionReply::None => Ok(None),
            ops::session_read::SessionReply::NotFound => Err(Error::PoolNotFound {
                name: pool_name.to_string(),
            }),
            ops::session_read::SessionReply::Schema(found) => Err(schema_error(pool_name, found)),
        }
    }

    async fn subscribe_freed(
        &self,
        pool_name: &PoolName,
    ) -> Result<tokio::sync::broadcast::Receiver<()>> {
        let mut conn = self.conn().await?;
        let pk = self.require_pool(&mut conn, pool_name).await?;
        drop(conn);
        Ok(self.notifier.subscribe(pk.freed()).await)
    }

    async fn take_ticket(
        &self,
        pool_name: &PoolName,
        ttl: std::time::Duration,
        wait: std::time::Duration,
    ) -> Result<Option<WaitTicket>> {
        crate::fair::validate_ticket_ttl(ttl)?;
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        match ops::ticket::take(&mut conn, &pk, ttl, wait).await? {
            ops::ticket::TicketReply::Ok(number) => {
                Ok(Some(WaitTicket::new(pool_name.clone(), number, ttl)))
            }
            ops::ticket::TicketReply::PoolNotFound => Err(Error::PoolNotFound {
                name: pool_name.to_string(),
            }),
            ops::ticket::TicketReply::Schema(found) => Err(schema_error(pool_name, found)),
        }
    }

    async fn drop_ticket(&self, ticket: &WaitTicket) -> Result<()> {
        let pk = self.keys.pool(ticket.pool_name());
        let mut conn = self.conn().await?;
        match ops::ticket::drop(&mut conn, &pk, ticket.number()).await? {
            ops::ticket::TicketReply::Ok(_) | ops::ticket::TicketReply::PoolNotFound => Ok(()),
            ops::ticket::TicketReply::Schema(found) => Err(schema_error(ticket.pool_name(), found)),
        }
    }

    async fn wait_tickets(&self, pool_name: &PoolName) -> Result<Vec<QueuedTicket>> {
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        match ops::ticket_read::run(&mut conn, &pk).await? {
            ops::ticket_read::TicketsReply::Ok(all) => all
                .into_iter()
                .map(|(number, until)| Ok(QueuedTicket::new(number, codec::ms_to_time(until)?)))
                .collect(),
            ops::ticket_read::TicketsReply::PoolNotFound => Err(Error::PoolNotFound {
                name: pool_name.to_string(),
            }),
            ops::ticket_read::TicketsReply::Schema(found) => Err(schema_error(pool_name, found)),
        }
    }

    async fn announce_waiter(&self, pool_name: &PoolName, wait: std::time::Duration) -> Result<()> {
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        ops::wait::run(&mut conn, &pk, wait).await?;
        Ok(())
    }

    async fn next_expiry(&self, pool_name: &PoolName) -> Result<Option<std::time::Duration>> {
        let mut conn = self.conn().await?;
        let pk = self.require_pool(&mut conn, pool_name).await?;
        type Next = ((i64, i64), Vec<(String, f64)>, Vec<(String, f64)>);
        let ((secs, micros), lease, cooling): Next = redis::pipe()
            .cmd("TIME")
            .cmd("ZRANGE")
            .arg(pk.live())
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

/// A proxy's standing with a site from its state as site_report.lua writes it
/// (`<failures> <until-ms | ban> <reason>`), at Redis's `now_ms`.
fn site_standing(proxy_id: Uuid, state: &str, now_ms: i64) -> Result<SiteStanding> {
    let corrupt = || Error::backend(format!("unreadable site state {state:?}"), None);
    let mut parts = state.splitn(3, ' ');
    let failures: u32 = parts
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(corrupt)?;
    let until = parts.next().ok_or_else(corrupt)?;
    let reason = parts.next().unwrap_or_default().to_string();
    let (banned, until_ms) = match until {
        "ban" => (true, 0),
        ms => (false, ms.parse::<i64>().map_err(|_| corrupt())?),
    };
    let cooldown_until = if !banned && until_ms > now_ms {
        Some(codec::ms_to_time(until_ms)?)
    } else {
        None
    };
    Ok(SiteStanding::new(
        proxy_id,
        failures,
        cooldown_until,
        banned,
        Some(reason),
    ))
}

impl RedisStorage {
    /// Runs site_report.lua on the proxy's pool (a success when `failure` is None).
    async fn site_report(
        &self,
        proxy_id: Uuid,
        site: &Site,
        failure: Option<(&str, &crate::cooldown::CooldownPolicy)>,
    ) -> Result<SiteStanding> {
        let mut conn = self.conn().await?;
        for attempt in 0..2 {
            let Some(pool) = self.pool_of_proxy(&mut conn, proxy_id).await? else {
                return Err(Error::ProxyNotFound { id: proxy_id });
            };
            let pk = self.keys.pool(&pool);
            match ops::site_report::run(&mut conn, &pk, proxy_id, site, failure).await? {
                ops::site_report::SiteReply::Ok {
                    failures,
                    until_ms,
                    banned,
                    reason,
                } => {
                    self.replicated(&mut conn).await?;
                    if failures == 0 {
                        return Ok(SiteStanding::clear(proxy_id));
                    }
                    let until = if banned {
                        None
                    } else {
                        Some(codec::ms_to_time(until_ms)?)
                    };
                    return Ok(SiteStanding::new(
                        proxy_id,
                        failures,
                        until,
                        banned,
                        Some(reason),
                    ));
                }
                ops::site_report::SiteReply::NotFound if attempt == 0 => {
                    self.cache_pool_of(proxy_id, None)
                }
                ops::site_report::SiteReply::NotFound => break,
                ops::site_report::SiteReply::Schema(found) => {
                    return Err(schema_error(&pool, found))
                }
            }
        }
        Err(Error::ProxyNotFound { id: proxy_id })
    }

    /// A lease record of this pool by its token (see [`LeaseStorage::get_lease`]).
    async fn lease_by_token(&self, pool_name: &PoolName, token: u64) -> Result<Option<Lease>> {
        let pk = self.keys.pool(pool_name);
        let mut conn = self.conn().await?;
        match lease_read::get(&mut conn, &pk, token).await? {
            lease_read::LeaseReadReply::Ok {
                now_ms,
                pool_id,
                leases,
                ..
            } => {
                let Some(s) = leases.into_iter().next() else {
                    return Ok(None);
                };
                let pool = pool_ref(pool_id, pool_name);
                let r = codec::parse_record(&s.record)?;
                let consumer_id = self.consumer_id_of(&mut conn, &r.consumer).await?;
                codec::lease_from_record(
                    s.token,
                    &s.record,
                    &s.proxy_json,
                    &pool,
                    consumer_id,
                    now_ms,
                )
                .map(Some)
            }
            lease_read::LeaseReadReply::NotFound => Err(Error::PoolNotFound {
                name: pool_name.to_string(),
            }),
            lease_read::LeaseReadReply::Schema(found) => Err(schema_error(pool_name, found)),
        }
    }
}

/// A pool known by its id and name only (for building leases).
fn pool_ref(id: Uuid, name: &PoolName) -> ProxyPool {
    ProxyPool {
        id,
        name: name.clone(),
        description: None,
        indexes: crate::pool::PoolIndexes::default(),
        rate_limit: None,
        success_scoring: crate::success::SuccessScoring::default(),
    }
}

impl RedisStorage {
    /// A pool's stats as they are now, without reclaiming its expired leases first
    /// (those still count): one read-only script. [`LeaseStorage::pool_stats`]
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
        match ops::stats::run(conn, pk).await? {
            ops::stats::StatsReply::Ok(s) => Ok(s),
            ops::stats::StatsReply::NotFound => Err(Error::PoolNotFound {
                name: pool_name.to_string(),
            }),
            ops::stats::StatsReply::Schema(found) => Err(schema_error(pool_name, found)),
        }
    }
}
