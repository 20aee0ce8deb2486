//! `lua/proxy_read.lua`: proxies of one pool with their live lease counts (read-only).

use redis::{FromRedisValue, ParsingError, Value};
use uuid::Uuid;

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "proxy_read",
    include_str!("../../../lua/proxy_read.lua"),
    true,
);

/// A proxy as stored: its seq, JSON and live leases.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) json: String,
    pub(crate) leases: u64,
}

/// The script's reply.
#[derive(Debug)]
pub(crate) enum ReadReply {
    /// The next HSCAN cursor ("0" when done) and the proxies read.
    Ok(String, Vec<Stored>),
    NotFound,
    Schema(String),
}

impl FromRedisValue for ReadReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "proxy_read.lua")?;
        match it.text()?.as_str() {
            "OK" => {
                let cursor = it.text()?;
                let mut out = Vec::with_capacity(it.left() / 3);
                while it.left() > 0 {
                    out.push(Stored {
                        seq: it.uint()?,
                        json: it.text()?,
                        leases: it.uint()?,
                    });
                }
                Ok(ReadReply::Ok(cursor, out))
            }
            "NOT_FOUND" => Ok(ReadReply::NotFound),
            "SCHEMA" => Ok(ReadReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("proxy_read.lua", other)),
        }
    }
}

/// The proxies of this pool with these ids (those not in the pool are left out).
pub(crate) async fn by_ids(conn: &mut Conn<'_>, pk: &PoolKeys, ids: &[Uuid]) -> Result<ReadReply> {
    let mut inv = OP.call();
    inv.key(pk.meta());
    inv.arg(pk.prefix()).arg("ids");
    for id in ids {
        inv.arg(id.to_string());
    }
    inv.invoke(conn)
        .await
        .map_err(redis_err("cannot read proxies"))
}

/// One HSCAN page of the pool's proxies.
pub(crate) async fn scan(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    cursor: &str,
    count: u32,
) -> Result<ReadReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg("scan")
        .arg(cursor)
        .arg(count)
        .invoke(conn)
        .await
        .map_err(redis_err("cannot list proxies"))
}
