//! `lua/proxy_status.lua`: set a proxy's status, or apply a health check.

use uuid::Uuid;

use super::{Op, ProxyReply};
use crate::error::Result;
use crate::proxy::ProxyStatus;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "proxy_status",
    include_str!("../../../lua/proxy_status.lua"),
    false,
)
.idempotent();

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
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(id.to_string())
        .arg(status.as_str())
        .arg(checked_at)
        .arg(latency_ms.map(|l| l.to_string()).unwrap_or_default())
        .invoke(conn)
        .await
        .map_err(redis_err("proxy status script failed"))
}
