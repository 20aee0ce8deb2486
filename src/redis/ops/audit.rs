//! `lua/audit.lua`: find and repair drift between proxies, counts and indexes.

use redis::{FromRedisValue, ParsingError, Value};
use uuid::Uuid;

use super::{Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op =
    Op::new("audit", include_str!("../../../lua/audit.lua"), false).idempotent();

/// One call's reply.
#[derive(Debug, Default)]
pub(crate) struct AuditReply {
    /// The last seq covered, or `None` when the pool is done.
    pub(crate) next: Option<u64>,
    /// (seq, recorded live leases) of the proxies of the batch that have any.
    pub(crate) counts: Vec<(u64, u64)>,
    /// (proxy id, recorded, actual) of each repair.
    pub(crate) fixes: Vec<(Uuid, i64, i64)>,
}

impl FromRedisValue for AuditReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "audit.lua")?;
        let next = it.int()?;
        let mut counts = Vec::new();
        let mut c = Items::of(it.next()?, "audit.lua")?;
        while c.left() > 0 {
            counts.push((c.uint()?, c.uint()?));
        }
        let mut fixes = Vec::new();
        let mut f = Items::of(it.next()?, "audit.lua")?;
        while f.left() > 0 {
            fixes.push((f.uuid()?, f.int()?, f.int()?));
        }
        Ok(AuditReply {
            next: u64::try_from(next).ok(),
            counts,
            fixes,
        })
    }
}

/// A batch of proxies after seq `after`: index and count consistency.
pub(crate) async fn check(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    after: u64,
    batch: u32,
) -> Result<AuditReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg("check")
        .arg(after)
        .arg(batch)
        .invoke(conn)
        .await
        .map_err(redis_err("audit script failed"))
}

/// Recounts these proxies' live leases from the whole live set, atomically.
pub(crate) async fn recount(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    seqs: &[u64],
) -> Result<AuditReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg("recount")
        .arg(seqs)
        .invoke(conn)
        .await
        .map_err(redis_err("audit script failed"))
}
