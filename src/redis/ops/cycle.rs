//! `lua/cycle.lua`: releases and then acquires of one pool in one atomic call,
//! sent when both wait in the pool's lane at once (see `storage.rs`).

use redis::{FromRedisValue, ParsingError, Value};

use super::acquire::{head, AcquireItem, AcquireReply};
use super::release::outcome;
use super::Op;
use crate::error::Result;
use crate::lease::ReleaseOutcome;
use crate::redis::conn::Conn;
use crate::redis::error::{backend, redis_err};
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new("cycle", include_str!("../../../lua/cycle.lua"), false);

/// One request of a pool's lane of acquires and releases. (Not boxed: a
/// queued release's unused bytes cost less than an allocation per acquire.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum CycleItem {
    Acquire(AcquireItem),
    /// The token of the lease to release.
    Release(u64),
}

/// The reply to one [`CycleItem`], of its kind.
#[derive(Debug, Clone)]
pub(crate) enum CycleOut {
    Acquire(AcquireReply),
    Release(ReleaseOutcome),
}

impl AcquireItem {
    /// Whether the request may go in a cycle.lua call: it names no key of
    /// its own (no request id, session, site or ticket).
    pub(crate) fn fits_cycle(&self) -> bool {
        self.request_key.is_none()
            && self.session.is_none()
            && self.site_key.is_none()
            && self.ticket.is_none()
    }
}

/// The script's reply.
#[derive(Debug)]
pub(crate) enum CycleReply {
    /// The releases' outcomes and the acquires' replies, each in order.
    Done(Vec<ReleaseOutcome>, Vec<AcquireReply>),
    PoolNotFound,
    Schema(String),
}

/// The reply's entries as sent (their meaning depends on how many releases
/// the call held).
struct Entries(Vec<String>);

impl FromRedisValue for Entries {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        Ok(Entries(
            super::entries(&v, "cycle.lua")?
                .into_iter()
                .map(str::to_owned)
                .collect(),
        ))
    }
}

/// Reads the entries of a call of `releases` releases and `acquires`
/// acquires.
fn decode(
    entries: Vec<String>,
    releases: usize,
    acquires: usize,
) -> Result<CycleReply, ParsingError> {
    if entries.len() == 1 && releases + acquires > 1 {
        let (word, rest) = entries[0].split_once(' ').unwrap_or((&entries[0], ""));
        return match word {
            "POOL_NOT_FOUND" => Ok(CycleReply::PoolNotFound),
            "SCHEMA" => Ok(CycleReply::Schema(rest.to_owned())),
            other => Err(super::bad("cycle.lua", other)),
        };
    }
    if entries.len() != releases + acquires {
        return Err(super::bad(
            "cycle.lua",
            format!("{} entries for {releases} + {acquires}", entries.len()),
        ));
    }
    let mut out = Vec::with_capacity(releases);
    for e in &entries[..releases] {
        out.push(outcome(e)?);
    }
    let mut got = Vec::with_capacity(acquires);
    for e in &entries[releases..] {
        got.push(AcquireReply::parse(e)?);
    }
    Ok(CycleReply::Done(out, got))
}

/// Runs one cycle.lua call: these releases (tokens), then these acquires
/// (each [`AcquireItem::fits_cycle`]).
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    reclaim: u32,
    grace_ms: u64,
    tokens: &[u64],
    items: &[&AcquireItem],
) -> Result<CycleReply> {
    let mut inv = OP.call();
    inv.key(pk.meta());
    inv.key(pk.live())
        .arg(pk.prefix())
        .arg(head(reclaim, grace_ms, items.len()));
    for t in tokens {
        inv.key(pk.lease(*t));
    }
    // No request names a key of its own: nothing moves past the records.
    let mut next_key = 3 + tokens.len();
    let mut prev: Option<&AcquireItem> = None;
    for it in items {
        it.push(&mut inv, &mut next_key, prev);
        prev = Some(it);
    }
    let Entries(entries) = inv
        .invoke(conn)
        .await
        .map_err(redis_err("cycle script failed"))?;
    decode(entries, tokens.len(), items.len()).map_err(backend("cycle script failed"))
}
