//! `lua/proxy_update.lua`: replace a proxy's fields and move it between indexes.

use uuid::Uuid;

use super::{Op, ProxyReply};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "proxy_update",
    include_str!("../../../lua/proxy_update.lua"),
    false,
)
.idempotent();

/// Runs proxy_update.lua with the proxy's new JSON.
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    pool_id: Uuid,
    json: &str,
) -> Result<ProxyReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(pool_id.to_string())
        .arg(json)
        .invoke(conn)
        .await
        .map_err(redis_err("proxy update script failed"))
}
