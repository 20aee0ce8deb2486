//! `lua/wait.lua`: a waiting acquire announces itself, so that freed slots are
//! published only while someone waits.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{script, LIB};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) static SCRIPT: LazyLock<Script> = script!("wait.lua", LIB);

/// Runs wait.lua: returns whether the pool exists.
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys, wait: Duration) -> Result<bool> {
    let ms = u64::try_from(wait.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, crate::storage::MAX_LEASE_DURATION.as_millis() as u64);
    let found: i64 = SCRIPT
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(ms)
        .invoke_async(conn)
        .await
        .map_err(redis_err("cannot announce a waiter"))?;
    Ok(found == 1)
}
