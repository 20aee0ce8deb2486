//! `lua/rotate.lua`: release a lease and acquire the next proxy, for n requests
//! on one pool, in one atomic call.

use redis::{FromRedisValue, ParsingError, Value};

use super::acquire::{AcquireItem, AcquireReply};
use super::release::outcome;
use super::Op;
use crate::error::Result;
use crate::lease::ReleaseOutcome;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new("rotate", include_str!("../../../lua/rotate.lua"), false);

/// One rotate request: the lease to give back (its token) and what to
/// acquire next.
#[derive(Debug, Clone)]
pub(crate) struct RotateItem {
    pub(crate) token: u64,
    pub(crate) acquire: AcquireItem,
}

struct Replies(Vec<(ReleaseOutcome, AcquireReply)>);

impl FromRedisValue for Replies {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut out = Vec::new();
        for entry in super::entries(&v, "rotate.lua")? {
            let (word, rest) = entry.split_once(' ').unwrap_or((entry, ""));
            match word {
                // Nothing released: the pool is gone, of another layout, or
                // lacks the order the selector needs.
                "POOL_NOT_FOUND" | "SCHEMA" | "NO_ORDER" => {
                    out.push((ReleaseOutcome::NotFound, AcquireReply::parse(entry)?));
                }
                _ => out.push((outcome(word)?, AcquireReply::parse(rest)?)),
            }
        }
        Ok(Replies(out))
    }
}

/// Runs one rotate.lua call for these requests.
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    reclaim: u32,
    grace_ms: u64,
    items: &[RotateItem],
) -> Result<Vec<(ReleaseOutcome, AcquireReply)>> {
    let mut inv = OP.call();
    inv.key(pk.meta());
    inv.key(pk.live())
        .arg(pk.prefix())
        .arg(super::acquire::head(reclaim, grace_ms, items.len()));
    let mut next_key =
        super::acquire::push_ticket_keys(&mut inv, pk, items.iter().map(|it| &it.acquire));
    let mut prev = None;
    for it in items {
        inv.arg(it.token);
        it.acquire.push(&mut inv, &mut next_key, prev);
        prev = Some(&it.acquire);
    }
    let Replies(out) = inv
        .invoke(conn)
        .await
        .map_err(redis_err("rotate script failed"))?;
    Ok(out)
}
