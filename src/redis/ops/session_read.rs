//! `lua/session_read.lua`: the proxy a sticky session keeps (read-only).

use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "session_read",
    include_str!("../../../lua/session_read.lua"),
    true,
);

/// The script's reply.
#[derive(Debug)]
pub(crate) enum SessionReply {
    /// The session keeps the proxy of this JSON until this time (ms).
    Bound {
        proxy_json: String,
        until_ms: i64,
    },
    /// It keeps none.
    None,
    NotFound,
    Schema(String),
}

impl FromRedisValue for SessionReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "session_read.lua")?;
        match it.text()?.as_str() {
            "OK" => Ok(SessionReply::Bound {
                proxy_json: it.text()?,
                until_ms: it.int()?,
            }),
            "NONE" => Ok(SessionReply::None),
            "NOT_FOUND" => Ok(SessionReply::NotFound),
            "SCHEMA" => Ok(SessionReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("session_read.lua", other)),
        }
    }
}

/// Runs session_read.lua for session `id` of the pool.
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys, id: &str) -> Result<SessionReply> {
    OP.call()
        .key(pk.meta())
        .key(pk.session(id))
        .arg(pk.prefix())
        .invoke(conn)
        .await
        .map_err(redis_err("cannot read the session"))
}
