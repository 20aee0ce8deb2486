//! `lua/wait.lua`: a waiting acquire announces itself, so that freed slots are
//! published only while someone waits.

use std::time::Duration;

use super::Op;
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op =
    Op::new("wait", include_str!("../../../lua/wait.lua"), false).idempotent();

/// Runs wait.lua: returns whether the pool exists.
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys, wait: Duration) -> Result<bool> {
    let ms = u64::try_from(wait.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, crate::storage::MAX_LEASE_DURATION.as_millis() as u64);
    let found: i64 = OP
        .call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(ms)
        .invoke(conn)
        .await
        .map_err(redis_err("cannot announce a waiter"))?;
    Ok(found == 1)
}
