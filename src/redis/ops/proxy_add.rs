//! `lua/proxy_add.lua`: add proxies to one pool, all or none.

use redis::{FromRedisValue, ParsingError, Value};
use uuid::Uuid;

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "proxy_add",
    include_str!("../../../lua/proxy_add.lua"),
    false,
);

/// The script's reply.
#[derive(Debug)]
pub(crate) enum AddReply {
    /// Added; the first one got this seq, the others the next ones.
    Ok,
    PoolNotFound,
    /// The pool has another id.
    PoolMismatch,
    /// This proxy id is in the pool already.
    Exists(Uuid),
    Schema(String),
}

impl FromRedisValue for AddReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "proxy_add.lua")?;
        match it.text()?.as_str() {
            "OK" => Ok(AddReply::Ok),
            "POOL_NOT_FOUND" => Ok(AddReply::PoolNotFound),
            "POOL_MISMATCH" => Ok(AddReply::PoolMismatch),
            "EXISTS" => Ok(AddReply::Exists(it.uuid()?)),
            "SCHEMA" => Ok(AddReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("proxy_add.lua", other)),
        }
    }
}

/// Runs proxy_add.lua for these proxies (their JSON, see `codec::proxy_json`).
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    pool_id: Uuid,
    jsons: &[String],
) -> Result<AddReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(pool_id.to_string())
        .arg(jsons)
        .invoke(conn)
        .await
        .map_err(redis_err("proxy add script failed"))
}
