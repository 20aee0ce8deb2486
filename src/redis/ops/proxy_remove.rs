//! `lua/proxy_remove.lua`: remove a proxy, its index entries and its live leases.

use std::sync::LazyLock;

use redis::Script;
use uuid::Uuid;

use super::{script, LIB, LIB_PROXY};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) static SCRIPT: LazyLock<Script> = script!("proxy_remove.lua", LIB, LIB_PROXY);

/// Runs proxy_remove.lua: whether the proxy existed in this pool.
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys, id: Uuid) -> Result<bool> {
    let removed: i64 = SCRIPT
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(id.to_string())
        .invoke_async(conn)
        .await
        .map_err(redis_err("proxy remove script failed"))?;
    Ok(removed == 1)
}
