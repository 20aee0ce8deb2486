//! `lua/stats.lua`: one pool's stats, read-only (runs when Redis is out of memory).

use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;
use crate::stats::PoolStats;

pub(crate) const OP: Op = Op::new("stats", include_str!("../../../lua/stats.lua"), true);

/// The script's reply.
#[derive(Debug)]
pub(crate) enum StatsReply {
    Ok(PoolStats),
    NotFound,
    Schema(String),
}

impl FromRedisValue for StatsReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "stats.lua")?;
        match it.text()?.as_str() {
            "OK" => Ok(StatsReply::Ok(PoolStats {
                total_proxies: it.uint()?,
                active_proxies: it.uint()?,
                available_proxies: it.uint()?,
                leased_proxies: it.uint()?,
                total_leases: it.uint()?,
                cooling_proxies: it.uint()?,
                banned_proxies: it.uint()?,
            })),
            "NOT_FOUND" => Ok(StatsReply::NotFound),
            "SCHEMA" => Ok(StatsReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("stats.lua", other)),
        }
    }
}

/// Runs stats.lua.
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys) -> Result<StatsReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .invoke(conn)
        .await
        .map_err(redis_err("cannot read the pool stats"))
}
