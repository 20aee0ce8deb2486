//! `lua/pool_remove.lua`: remove a pool in bounded batches.

use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "pool_remove",
    include_str!("../../../lua/pool_remove.lua"),
    false,
);

/// Where the removal is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RemoveState {
    NotFound,
    More,
    Done,
}

/// One call's reply: its state, the pool id, and (first layout only) the ids of
/// the proxies it removed.
#[derive(Debug)]
pub(crate) struct RemoveReply {
    pub(crate) state: RemoveState,
    pub(crate) pool_id: String,
    pub(crate) legacy_proxies: Vec<String>,
}

impl FromRedisValue for RemoveReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "pool_remove.lua")?;
        let state = match it.text()?.as_str() {
            "NOT_FOUND" => RemoveState::NotFound,
            "MORE" => RemoveState::More,
            "DONE" => RemoveState::Done,
            other => return Err(bad("pool_remove.lua", other)),
        };
        let pool_id = it.text()?;
        let mut legacy_proxies = Vec::new();
        while it.left() > 0 {
            legacy_proxies.push(it.text()?);
        }
        Ok(RemoveReply {
            state,
            pool_id,
            legacy_proxies,
        })
    }
}

/// Runs one pool_remove.lua call (`start` for the first).
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    start: bool,
    batch: u32,
) -> Result<RemoveReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg(if start { "start" } else { "continue" })
        .arg(batch)
        .invoke(conn)
        .await
        .map_err(redis_err("pool remove script failed"))
}
