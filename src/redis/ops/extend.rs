//! `lua/extend.lua`: renew a live lease.

use crate::error::LostReason;
use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op =
    Op::new("extend", include_str!("../../../lua/extend.lua"), false).idempotent();

/// The script's reply.
#[derive(Debug)]
pub(crate) enum ExtendReply {
    /// Renewed: the new expiry, ms.
    Ok(i64),
    /// Not held any more: `released`, `expired` or `unknown`.
    Lost(LostReason),
    Schema(String),
}

impl FromRedisValue for ExtendReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "extend.lua")?;
        match it.text()?.as_str() {
            "OK" => Ok(ExtendReply::Ok(it.int()?)),
            "LOST" => Ok(ExtendReply::Lost(match it.text()?.as_str() {
                "released" => LostReason::Released,
                "expired" => LostReason::Expired,
                _ => LostReason::Unknown,
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
    token: u64,
    duration_ms: u64,
    grace_ms: u64,
) -> Result<ExtendReply> {
    OP.call()
        .key(pk.meta())
        .key(pk.live())
        .key(pk.lease(token))
        .arg(pk.prefix())
        .arg(token)
        .arg(duration_ms)
        .arg(grace_ms)
        .invoke(conn)
        .await
        .map_err(redis_err("extend script failed"))
}
