//! `lua/ticket.lua`: a fair waiter takes a ticket in its pool's queue, or leaves it.

use std::time::Duration;

use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new("ticket", include_str!("../../../lua/ticket.lua"), false);

/// The script's reply.
#[derive(Debug)]
pub(crate) enum TicketReply {
    /// Taken: the ticket's number (dropping answers 0).
    Ok(u64),
    PoolNotFound,
    Schema(String),
}

impl FromRedisValue for TicketReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "ticket.lua")?;
        match it.text()?.as_str() {
            "OK" if it.left() == 0 => Ok(TicketReply::Ok(0)),
            "OK" => Ok(TicketReply::Ok(it.uint()?)),
            "POOL_NOT_FOUND" => Ok(TicketReply::PoolNotFound),
            "SCHEMA" => Ok(TicketReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("ticket.lua", other)),
        }
    }
}

/// Whole milliseconds, within what the script accepts (1 ms to the longest lease).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, crate::storage::MAX_LEASE_DURATION.as_millis() as u64)
}

fn call(pk: &PoolKeys) -> super::Call {
    let mut call = OP.call();
    call.key(pk.meta())
        .key(pk.tickets())
        .key(pk.ticket_ends())
        .arg(pk.prefix());
    call
}

/// Takes a ticket honoured `ttl` after each refresh, for a waiter that waits
/// up to `wait`.
pub(crate) async fn take(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    ttl: Duration,
    wait: Duration,
) -> Result<TicketReply> {
    call(pk)
        .arg("take")
        .arg(ms(ttl))
        .arg(ms(wait))
        .invoke(conn)
        .await
        .map_err(redis_err("cannot take a wait ticket"))
}

/// Takes ticket `number` out of the queue. Idempotent: may be sent again.
pub(crate) async fn drop(conn: &mut Conn<'_>, pk: &PoolKeys, number: u64) -> Result<TicketReply> {
    call(pk)
        .arg("drop")
        .arg(number)
        .repeat(crate::redis::conn::Repeat::Always)
        .invoke(conn)
        .await
        .map_err(redis_err("cannot drop a wait ticket"))
}
