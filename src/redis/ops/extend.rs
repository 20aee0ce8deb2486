//! `lua/extend.lua`: renew a live lease.

use std::sync::LazyLock;

use redis::{FromRedisValue, ParsingError, Script, Value};
use uuid::Uuid;

use super::{bad, script, Items, LIB};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) static SCRIPT: LazyLock<Script> = script!("extend.lua", LIB);

/// The script's reply.
#[derive(Debug)]
pub(crate) enum ExtendReply {
    /// Renewed: the new expiry, ms.
    Ok(i64),
    /// Not held any more: `released`, `expired` or `unknown`.
    Lost(&'static str),
    Schema(String),
}

impl FromRedisValue for ExtendReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "extend.lua")?;
        match it.text()?.as_str() {
            "OK" => Ok(ExtendReply::Ok(it.int()?)),
            "LOST" => Ok(ExtendReply::Lost(match it.text()?.as_str() {
                "released" => "was released",
                "expired" => "expired",
                _ => "is unknown",
            })),
            "SCHEMA" => Ok(ExtendReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("extend.lua", other)),
        }
    }
}

/// Runs extend.lua.
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    id: Uuid,
    duration_ms: u64,
    grace_ms: u64,
) -> Result<ExtendReply> {
    SCRIPT
        .key(pk.meta())
        .key(pk.live())
        .key(pk.lease(id))
        .arg(pk.prefix())
        .arg(id.to_string())
        .arg(duration_ms)
        .arg(grace_ms)
        .invoke_async(conn)
        .await
        .map_err(redis_err("extend script failed"))
}
