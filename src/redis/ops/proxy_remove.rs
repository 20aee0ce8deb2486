//! `lua/proxy_remove.lua`: remove a proxy, its index entries and its live leases.

use uuid::Uuid;

use super::Op;
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "proxy_remove",
    include_str!("../../../lua/proxy_remove.lua"),
    false,
);

/// Runs proxy_remove.lua: whether the proxy existed in this pool.
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys, id: Uuid) -> Result<bool> {
    let removed: i64 = OP
        .call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(id.to_string())
        .invoke(conn)
        .await
        .map_err(redis_err("proxy remove script failed"))?;
    Ok(removed == 1)
}
