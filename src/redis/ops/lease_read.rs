//! `lua/lease_read.lua`: lease records with their proxies (read-only).

use redis::{FromRedisValue, ParsingError, Value};
use uuid::Uuid;

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new(
    "lease_read",
    include_str!("../../../lua/lease_read.lua"),
    true,
);

/// A lease record as stored (by its token), with its proxy's JSON.
#[derive(Debug)]
pub(crate) struct StoredLease {
    pub(crate) token: u64,
    pub(crate) record: String,
    pub(crate) proxy_json: String,
}

/// The script's reply.
#[derive(Debug)]
pub(crate) enum LeaseReadReply {
    /// Redis time (ms), whether more live leases follow, and the leases.
    Ok {
        now_ms: i64,
        more: bool,
        pool_id: Uuid,
        leases: Vec<StoredLease>,
    },
    NotFound,
    Schema(String),
}

impl FromRedisValue for LeaseReadReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "lease_read.lua")?;
        match it.text()?.as_str() {
            "OK" => {
                let now_ms = it.int()?;
                let more = it.int()? == 1;
                let pool_id = it.uuid()?;
                let mut leases = Vec::with_capacity(it.left() / 4);
                while it.left() > 0 {
                    let token = it.uint()?;
                    let record = it.text()?;
                    let _seq = it.uint()?;
                    let proxy_json = it.text()?;
                    leases.push(StoredLease {
                        token,
                        record,
                        proxy_json,
                    });
                }
                Ok(LeaseReadReply::Ok {
                    now_ms,
                    more,
                    pool_id,
                    leases,
                })
            }
            "NOT_FOUND" => Ok(LeaseReadReply::NotFound),
            "SCHEMA" => Ok(LeaseReadReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("lease_read.lua", other)),
        }
    }
}

/// One lease record, by its token.
pub(crate) async fn get(conn: &mut Conn<'_>, pk: &PoolKeys, token: u64) -> Result<LeaseReadReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg("get")
        .arg(token)
        .invoke(conn)
        .await
        .map_err(redis_err("cannot read the lease"))
}

/// `count` live leases from rank `start` of the live set.
pub(crate) async fn list(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    start: u64,
    count: u32,
) -> Result<LeaseReadReply> {
    OP.call()
        .key(pk.meta())
        .arg(pk.prefix())
        .arg("list")
        .arg(start)
        .arg(count)
        .invoke(conn)
        .await
        .map_err(redis_err("cannot list the leases"))
}
