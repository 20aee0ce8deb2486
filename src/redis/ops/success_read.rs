//! `lua/success_read.lua`: the success scores of a pool's proxies (read-only).

use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "success_read",
    include_str!("../../../lua/success_read.lua"),
    true,
);

/// The script's reply.
#[derive(Debug)]
pub(crate) enum SuccessReadReply {
    /// Each proxy's JSON with its evidence (`<successes> <reports> <ms>`).
    Ok(Vec<(String, String)>),
    NotFound,
    Schema(String),
}

impl FromRedisValue for SuccessReadReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "success_read.lua")?;
        match it.text()?.as_str() {
            "OK" => {
                let mut entries = Vec::with_capacity(it.left() / 2);
                while it.left() >= 2 {
                    entries.push((it.text()?, it.text()?));
                }
                Ok(SuccessReadReply::Ok(entries))
            }
            "NOT_FOUND" => Ok(SuccessReadReply::NotFound),
            "SCHEMA" => Ok(SuccessReadReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("success_read.lua", other)),
        }
    }
}

/// Runs success_read.lua for the pool.
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys) -> Result<SuccessReadReply> {
    OP.call()
        .key(pk.meta())
        .key(pk.success())
        .arg(pk.prefix())
        .invoke(conn)
        .await
        .map_err(redis_err("cannot read the success scores"))
}
