//! `lua/ticket_read.lua`: the honoured tickets of a pool's queue (read-only).

use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "ticket_read",
    include_str!("../../../lua/ticket_read.lua"),
    true,
);

/// Most tickets listed, from the head.
pub(crate) const MAX_LISTED: u32 = 1000;

/// The script's reply.
#[derive(Debug)]
pub(crate) enum TicketsReply {
    /// (number, honoured until ms), head first.
    Ok(Vec<(u64, i64)>),
    PoolNotFound,
    Schema(String),
}

impl FromRedisValue for TicketsReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "ticket_read.lua")?;
        match it.text()?.as_str() {
            "OK" => {
                let mut out = Vec::with_capacity(it.left() / 2);
                while it.left() > 0 {
                    out.push((it.uint()?, it.int()?));
                }
                Ok(TicketsReply::Ok(out))
            }
            "POOL_NOT_FOUND" => Ok(TicketsReply::PoolNotFound),
            "SCHEMA" => Ok(TicketsReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("ticket_read.lua", other)),
        }
    }
}

/// Runs ticket_read.lua on the pool's queue.
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys) -> Result<TicketsReply> {
    OP.call()
        .key(pk.meta())
        .key(pk.tickets())
        .key(pk.ticket_ends())
        .arg(pk.prefix())
        .arg(MAX_LISTED)
        .invoke(conn)
        .await
        .map_err(redis_err("cannot read the wait tickets"))
}
