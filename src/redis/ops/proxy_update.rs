//! `lua/proxy_update.lua`: replace a proxy's fields and move it between indexes.

use std::sync::LazyLock;

use redis::Script;
use uuid::Uuid;

use super::{script, ProxyReply, LIB, LIB_PROXY};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) static SCRIPT: LazyLock<Script> = script!("proxy_update.lua", LIB, LIB_PROXY);

/// Runs proxy_update.lua with the proxy's new JSON.
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    pool_id: Uuid,
    json: &str,
) -> Result<ProxyReply> {
    SCRIPT
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(pool_id.to_string())
        .arg(json)
        .invoke_async(conn)
        .await
        .map_err(redis_err("proxy update script failed"))
}
