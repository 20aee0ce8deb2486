//! `lua/release.lua`: release n leases of one pool, each at most once.

use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::lease::ReleaseOutcome;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op =
    Op::new("release", include_str!("../../../lua/release.lua"), false).idempotent();

/// A release outcome as the scripts spell it.
pub(crate) fn outcome(word: &str) -> Result<ReleaseOutcome, ParsingError> {
    match word {
        "released" => Ok(ReleaseOutcome::Released),
        "already_released" => Ok(ReleaseOutcome::AlreadyReleased),
        "expired" => Ok(ReleaseOutcome::Expired),
        "not_found" => Ok(ReleaseOutcome::NotFound),
        other => Err(bad("release.lua", other)),
    }
}

/// The script's reply.
#[derive(Debug)]
pub(crate) enum ReleaseReply {
    /// One outcome per lease, in order.
    Outcomes(Vec<ReleaseOutcome>),
    PoolNotFound,
    Schema(String),
}

/// The reply as sent: one outcome for every lease (a string), or an array.
enum Sent {
    Every(ReleaseOutcome),
    Reply(ReleaseReply),
}

impl FromRedisValue for Sent {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        if let Value::BulkString(b) = &v {
            let word = std::str::from_utf8(b).map_err(|e| bad("release.lua", e))?;
            return Ok(Sent::Every(outcome(word)?));
        }
        let mut it = Items::of(&v, "release.lua")?;
        Ok(Sent::Reply(match it.text()?.as_str() {
            "OK" => {
                let mut out = Vec::with_capacity(it.left());
                while it.left() > 0 {
                    out.push(outcome(&it.text()?)?);
                }
                ReleaseReply::Outcomes(out)
            }
            "POOL_NOT_FOUND" => ReleaseReply::PoolNotFound,
            "SCHEMA" => ReleaseReply::Schema(it.text().unwrap_or_default()),
            other => return Err(bad("release.lua", other)),
        }))
    }
}

/// Runs one release.lua call for these leases (their tokens).
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    grace_ms: u64,
    tokens: &[u64],
) -> Result<ReleaseReply> {
    let mut inv = OP.call();
    inv.key(pk.meta());
    inv.key(pk.live()).arg(pk.prefix()).arg(grace_ms);
    for t in tokens {
        inv.key(pk.lease(*t));
    }
    let sent: Sent = inv
        .invoke(conn)
        .await
        .map_err(redis_err("release script failed"))?;
    Ok(match sent {
        Sent::Every(o) => ReleaseReply::Outcomes(vec![o; tokens.len()]),
        Sent::Reply(r) => r,
    })
}
