//! Maintenance operations for the sweeper and ops: pool registry, bounded cleanup
//! batches, counter audits, server configuration checks.

use std::collections::HashMap;

use serde::Serialize;
use uuid::Uuid;

use super::scripts;
use super::storage::{redis_err, RedisStorage};
use crate::error::{Error, Result};
use crate::names::validate_pool_name;

/// What one cleanup batch on one pool did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CleanupBatch {
    /// Expired leases whose slot was given back.
    pub reclaimed: u64,
    /// More due leases remain: call again.
    pub more: bool,
}

/// A lease counter the audit found wrong and repaired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CounterFix {
    /// Pool name.
    pub pool: String,
    /// The proxy.
    pub proxy_id: Uuid,
    /// Its `current_leases` before the repair.
    pub recorded: i64,
    /// Its live leases, the value it has now.
    pub actual: i64,
}

impl RedisStorage {
    /// The names in the pool registry (`<ns>:pools`), sorted. One command.
    pub async fn pool_names(&self) -> Result<Vec<String>> {
        let mut conn = self.conn().await?;
        let names: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.pools())
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(redis_err("cannot read the pool registry"))?;
        Ok(names
            .into_iter()
            .filter(|n| validate_pool_name(n).is_ok())
            .collect())
    }

    /// Expires at most `batch` due leases of one pool in one script call (so Redis
    /// is never blocked for long) and gives their slots back, each exactly once even
    /// when several sweepers run at the same time.
    pub async fn cleanup_batch(&self, pool: &str, batch: u32) -> Result<CleanupBatch> {
        validate_pool_name(pool)?;
        if batch == 0 || batch > 100_000 {
            return Err(Error::InvalidArgument(
                "cleanup batch size must be in 1..=100000".into(),
            ));
        }
        let pk = self.keys.pool(pool);
        let mut conn = self.conn().await?;
        let (reclaimed, more): (u64, u64) = scripts::CLEANUP
            .key(pk.meta())
            .key(pk.leases())
            .arg(pk.prefix())
            .arg(batch)
            .arg(self.grace_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err("cleanup script failed"))?;
        if reclaimed > 0 {
            self.replicated(&mut conn).await?;
        }
        Ok(CleanupBatch {
            reclaimed,
            more: more != 0,
        })
    }

    /// Compares every proxy's `current_leases` in a pool with its live lease
    /// records, `batch` proxies per script call, and repairs the counters that
    /// drifted (with the pool counters and indexes). Returns the repairs.
    pub async fn audit_pool(&self, pool: &str, batch: u32) -> Result<Vec<CounterFix>> {
        validate_pool_name(pool)?;
        if batch == 0 || batch > 10_000 {
            return Err(Error::InvalidArgument(
                "audit batch size must be in 1..=10000".into(),
            ));
        }
        let pk = self.keys.pool(pool);
        let mut conn = self.conn().await?;
        let mut after: i64 = -1;
        let mut fixes = Vec::new();
        loop {
            let reply: Vec<redis::Value> = scripts::AUDIT
                .key(pk.meta())
                .key(pk.proxies())
                .arg(pk.prefix())
                .arg(after)
                .arg(batch)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err("audit script failed"))?;
            let text = |v: &redis::Value| -> Result<String> {
                redis::from_redis_value_ref::<String>(v)
                    .map_err(|e| Error::backend(format!("bad audit reply: {e}"), None))
            };
            let num = |v: &redis::Value| -> Result<i64> {
                redis::from_redis_value_ref::<i64>(v)
                    .map_err(|e| Error::backend(format!("bad audit reply: {e}"), None))
            };
            let Some(first) = reply.first() else {
                return Err(Error::backend("empty audit reply", None));
            };
            let next = num(first)?;
            for fix in reply[1..].chunks(3) {
                if let [id, recorded, actual] = fix {
                    let id = text(id)?;
                    fixes.push(CounterFix {
                        pool: pool.to_string(),
                        proxy_id: Uuid::parse_str(&id).map_err(|e| {
                            Error::backend(format!("bad proxy id {id:?} in audit reply: {e}"), None)
                        })?,
                        recorded: num(recorded)?,
                        actual: num(actual)?,
                    });
                }
            }
            if next < 0 {
                return Ok(fixes);
            }
            after = next;
        }
    }

    /// Checks the server's configuration for settings that break the lease
    /// guarantees, and returns one human-readable warning per problem (empty
    /// when all is well). One `CONFIG GET`.
    ///
    /// - `maxmemory-policy` other than `noeviction`: once Redis reaches
    ///   `maxmemory` it may evict lease records, lease counters or indexes (the
    ///   `volatile-*` policies evict lease records and idempotency keys, which
    ///   carry a TTL), so a proxy could be leased beyond its `max_concurrency` or
    ///   lose capacity. With `noeviction`, writes fail instead and the scripts
    ///   write nothing.
    /// - A server that refuses `CONFIG GET` (managed Redis, renamed command):
    ///   the policy cannot be checked, which is a warning too.
    ///
    /// `maxmemory 0` (no limit) is fine and gives no warning.
    ///
    /// Fails with [`Error::Backend`] only when Redis cannot be reached.
    pub async fn server_warnings(&self) -> Result<Vec<String>> {
        let mut conn = self.conn().await?;
        let reply: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        let mut warnings = Vec::new();
        match reply {
            Ok(config) => match config.get("maxmemory-policy").map(String::as_str) {
                Some("noeviction") => {}
                Some(policy) => warnings.push(format!(
                    "maxmemory-policy is {policy:?}, not \"noeviction\": when Redis reaches \
                     maxmemory it may evict lease records, lease counters or indexes, so a \
                     proxy could be leased beyond its max_concurrency or lose capacity; set \
                     `maxmemory-policy noeviction`"
                )),
                None => warnings.push(
                    "cannot check maxmemory-policy (CONFIG GET returned nothing): make sure \
                     it is `noeviction`"
                        .to_string(),
                ),
            },
            Err(e)
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error() =>
            {
                return Err(redis_err("cannot read the server configuration")(e));
            }
            Err(e) => warnings.push(format!(
                "cannot check maxmemory-policy (CONFIG GET failed: {e}): make sure it is \
                 `noeviction`"
            )),
        }
        Ok(warnings)
    }
}
