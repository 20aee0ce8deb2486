//! `lua/proxy_status.lua`: set a proxy's status, or apply a health check.

use std::sync::LazyLock;

use redis::Script;
use uuid::Uuid;

use super::{script, ProxyReply, LIB, LIB_PROXY};
use crate::error::Result;
use crate::proxy::ProxyStatus;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) static SCRIPT: LazyLock<Script> = script!("proxy_status.lua", LIB, LIB_PROXY);

/// Runs proxy_status.lua: the status, and `checked_at` / latency ms to record
/// (empty to keep them).
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    id: Uuid,
    status: ProxyStatus,
    checked_at: &str,
    latency_ms: Option<u32>,
) -> Result<ProxyReply> {
    SCRIPT
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(id.to_string())
        .arg(status.as_str())
        .arg(checked_at)
        .arg(latency_ms.map(|l| l.to_string()).unwrap_or_default())
        .invoke_async(conn)
        .await
        .map_err(redis_err("proxy status script failed"))
}
