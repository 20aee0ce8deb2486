//! `lua/cleanup.lua`: give back the slots of one pool's due leases, in a bounded batch.

use super::Op;
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op =
    Op::new("cleanup", include_str!("../../../lua/cleanup.lua"), false).idempotent();

/// Runs cleanup.lua once: (leases reclaimed, whether more are due). A
/// reclaimed lease's record is kept `grace_ms` more.
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    batch: u32,
    grace_ms: u64,
) -> Result<(u64, bool)> {
    let (n, more): (u64, u64) = OP
        .call()
        .key(pk.meta())
        .key(pk.live())
        .arg(pk.prefix())
        .arg(batch)
        .arg(grace_ms)
        .invoke(conn)
        .await
        .map_err(redis_err("cleanup script failed"))?;
    Ok((n, more != 0))
}
