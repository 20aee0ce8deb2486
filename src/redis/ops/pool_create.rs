//! `lua/pool_create.lua`: create a pool's meta hash with its declared indexes.

use super::Op;
use crate::error::Result;
use crate::pool::ProxyPool;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "pool_create",
    include_str!("../../../lua/pool_create.lua"),
    false,
);

/// Runs pool_create.lua: whether the pool was created (false: the name is taken).
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys, pool: &ProxyPool) -> Result<bool> {
    let created: i64 = OP
        .call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(pool.id.to_string())
        .arg(&pool.name)
        .arg(pool.indexes.attributes_text())
        .arg(pool.indexes.orders_text())
        .arg(if pool.description.is_some() { "1" } else { "0" })
        .arg(pool.description.as_deref().unwrap_or(""))
        .arg(pool.rate_limit.map_or(String::new(), |r| {
            format!("{} {}", r.leases, r.per.as_millis())
        }))
        .arg(
            if pool.indexes.has_order(crate::pool::IndexOrder::Success) {
                pool.success_scoring.to_text()
            } else {
                String::new()
            },
        )
        .invoke(conn)
        .await
        .map_err(redis_err("pool create script failed"))?;
    Ok(created == 1)
}
