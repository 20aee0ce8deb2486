//! `lua/pool_create.lua`: create a pool's meta hash with its declared indexes.

use std::sync::LazyLock;

use redis::Script;

use super::{script, LIB};
use crate::error::Result;
use crate::pool::ProxyPool;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) static SCRIPT: LazyLock<Script> = script!("pool_create.lua", LIB);

/// Runs pool_create.lua: whether the pool was created (false: the name is taken).
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys, pool: &ProxyPool) -> Result<bool> {
    let created: i64 = SCRIPT
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(pool.id.to_string())
        .arg(&pool.name)
        .arg(pool.indexes.attributes_text())
        .arg(pool.indexes.orders_text())
        .arg(if pool.description.is_some() { "1" } else { "0" })
        .arg(pool.description.as_deref().unwrap_or(""))
        .invoke_async(conn)
        .await
        .map_err(redis_err("pool create script failed"))?;
    Ok(created == 1)
}
