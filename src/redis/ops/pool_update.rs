//! `lua/pool_update.lua`: set or clear a pool's description.

use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::pool::ProxyPool;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "pool_update",
    include_str!("../../../lua/pool_update.lua"),
    false,
)
.idempotent();

/// The script's reply.
#[derive(Debug)]
pub(crate) enum PoolUpdateReply {
    Ok,
    NotFound,
    /// The pool has another id (this one).
    IdMismatch(String),
    Schema(String),
}

impl FromRedisValue for PoolUpdateReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "pool_update.lua")?;
        match it.text()?.as_str() {
            "OK" => Ok(PoolUpdateReply::Ok),
            "NOT_FOUND" => Ok(PoolUpdateReply::NotFound),
            "ID_MISMATCH" => Ok(PoolUpdateReply::IdMismatch(it.text()?)),
            "SCHEMA" => Ok(PoolUpdateReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("pool_update.lua", other)),
        }
    }
}

/// Runs pool_update.lua.
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    pool: &ProxyPool,
) -> Result<PoolUpdateReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(pool.id.to_string())
        .arg(if pool.description.is_some() { "1" } else { "0" })
        .arg(pool.description.as_deref().unwrap_or(""))
        .invoke(conn)
        .await
        .map_err(redis_err("pool update script failed"))
}
