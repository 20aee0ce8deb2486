//! `lua/report.lua`: record a success or a failure with a proxy (cooldowns, bans).

use uuid::Uuid;

use super::{Call, Op, ProxyReply};
use crate::cooldown::{CooldownPolicy, KEEP_ALL};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;

pub(crate) const OP: Op = Op::new("report", include_str!("../../../lua/report.lua"), false);

/// Appends what report.lua and site_report.lua read as ARGV[2..8]: the proxy
/// id, 'success' or 'failure', the policy's base and cap (ms), the share of
/// the cooldown kept, the ban threshold, the reason. The cooldown is
/// CooldownPolicy::delay_ms(failures, keep), which the script computes with
/// the failure count it reads; `keep` is drawn here, as the in-memory storage
/// draws it. The call is sent again only when Redis surely did not run it: a
/// failure counts, and so does a success in a pool that keeps the success
/// order (its score). A site's success does the same however often it runs:
/// site_report.rs lets its call be sent again.
pub(super) fn push_report(call: &mut Call, id: Uuid, failure: Option<(&str, &CooldownPolicy)>) {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (mode, reason, base, cap, keep, ban) = match failure {
        None => ("success", "", 1, 1, KEEP_ALL, 0),
        Some((reason, policy)) => (
            "failure",
            reason,
            ms(policy.base),
            ms(policy.cap),
            policy.draw_keep(id),
            policy.ban_after.unwrap_or(0),
        ),
    };
    call.arg(id.to_string())
        .arg(mode)
        .arg(base)
        .arg(cap)
        .arg(keep)
        .arg(ban)
        .arg(reason);
}

/// Runs report.lua: a success (`failure` None) or a failure with its reason and
/// the policy (already validated).
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    id: Uuid,
    failure: Option<(&str, &CooldownPolicy)>,
) -> Result<ProxyReply> {
    let mut call = OP.call();
    call.key(pk.meta()).arg(pk.prefix());
    push_report(&mut call, id, failure);
    call.invoke(conn)
        .await
        .map_err(redis_err("report script failed"))
}
