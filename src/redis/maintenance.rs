//! Maintenance operations for the sweeper and ops: pool registry, bounded cleanup
//! batches, counter audits, server configuration checks.

use std::collections::HashMap;

use serde::Serialize;
use uuid::Uuid;

use super::error::redis_err;
use super::ops;
use super::storage::RedisStorage;
use crate::error::{Error, Result};
use crate::names::{IntoPoolName, PoolName};

/// Live leases read per page when the audit counts them.
const AUDIT_LIVE_PAGE: isize = 5_000;
/// Proxies one recount call takes.
const RECOUNT_BATCH: usize = 1_000;

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
    pub async fn pool_names(&self) -> Result<Vec<PoolName>> {
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
            .filter_map(|n| PoolName::new(&n).ok())
            .collect())
    }

    /// Expires at most `batch` due leases of one pool in one script call (so Redis
    /// is never blocked for long) and gives their slots back, each exactly once even
    /// when several sweepers run at the same time.
    pub async fn cleanup_batch(&self, pool: impl IntoPoolName, batch: u32) -> Result<CleanupBatch> {
        let pool = pool.into_pool_name()?;
        if batch == 0 || batch > 100_000 {
            return Err(Error::InvalidArgument(
                "cleanup batch size must be in 1..=100000".into(),
            ));
        }
        let pk = self.keys.pool(&pool);
        let mut conn = self.conn().await?;
        let (reclaimed, more) = ops::cleanup::run(&mut conn, &pk, batch, self.grace_ms).await?;
        if reclaimed > 0 {
            self.replicated(&mut conn).await?;
        }
        Ok(CleanupBatch { reclaimed, more })
    }

    /// Audits one pool and repairs drift (a counter edited by hand, a bug), in
    /// bounded script calls, and returns the repairs.
    ///
    /// 1. Each batch of `batch` proxies is checked atomically: a proxy is in the
    ///    indexes exactly when it is available, and its live lease count lives
    ///    in one place (its load-index score, or `held`); entries that disagree
    ///    are rebuilt.
    /// 2. The live set is read in pages and each proxy's leases counted; a proxy
    ///    whose recorded count differs (also because leases came and went while
    ///    the pages were read) is recounted atomically from the whole live set,
    ///    O(L) per call of up to 1,000 proxies, and repaired only if the count
    ///    is wrong there too.
    pub async fn audit_pool(&self, pool: impl IntoPoolName, batch: u32) -> Result<Vec<CounterFix>> {
        let pool = pool.into_pool_name()?;
        if batch == 0 || batch > 10_000 {
            return Err(Error::InvalidArgument(
                "audit batch size must be in 1..=10000".into(),
            ));
        }
        let pk = self.keys.pool(&pool);
        let mut conn = self.conn().await?;
        let fix = |(proxy_id, recorded, actual): (Uuid, i64, i64)| CounterFix {
            pool: pool.to_string(),
            proxy_id,
            recorded,
            actual,
        };
        // Live leases per proxy, from the live set read in pages.
        let mut tally: HashMap<u64, u64> = HashMap::new();
        let mut start: isize = 0;
        loop {
            let page: Vec<String> = redis::cmd("ZRANGE")
                .arg(pk.live())
                .arg(start)
                .arg(start + AUDIT_LIVE_PAGE - 1)
                .query_async(&mut conn)
                .await
                .map_err(redis_err("cannot read the live leases"))?;
            for member in &page {
                if let Some(seq) = member.split(':').next().and_then(|s| s.parse().ok()) {
                    *tally.entry(seq).or_default() += 1;
                }
            }
            if (page.len() as isize) < AUDIT_LIVE_PAGE {
                break;
            }
            start += AUDIT_LIVE_PAGE;
        }
        let mut fixes = Vec::new();
        let mut suspects: Vec<u64> = Vec::new();
        let mut after = 0u64;
        loop {
            let reply = ops::audit::check(&mut conn, &pk, after, batch).await?;
            fixes.extend(reply.fixes.into_iter().map(fix));
            for (seq, recorded) in reply.counts {
                if tally.remove(&seq) != Some(recorded) {
                    suspects.push(seq);
                }
            }
            match reply.next {
                Some(next) => after = next,
                None => break,
            }
        }
        // Proxies the live set names but whose recorded count is 0.
        suspects.extend(tally.into_keys());
        suspects.sort_unstable();
        suspects.dedup();
        for chunk in suspects.chunks(RECOUNT_BATCH) {
            let reply = ops::audit::recount(&mut conn, &pk, chunk).await?;
            fixes.extend(reply.fixes.into_iter().map(fix));
        }
        Ok(fixes)
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
