//! `lua/site_report.lua`: record a failure or a success of a proxy with one site.

use redis::{FromRedisValue, ParsingError, Value};
use uuid::Uuid;

use super::{bad, Items, Op};
use crate::cooldown::CooldownPolicy;
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;
use crate::site::{Site, SITE_MEMORY};

pub(crate) const OP: Op = Op::new(
    "site_report",
    include_str!("../../../lua/site_report.lua"),
    false,
);

/// The script's reply.
#[derive(Debug)]
pub(crate) enum SiteReply {
    /// The proxy's standing with the site now.
    Ok {
        failures: u32,
        /// Resting until then (ms); 0 when not resting.
        until_ms: i64,
        banned: bool,
        reason: String,
    },
    NotFound,
    Schema(String),
}

impl FromRedisValue for SiteReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "site_report.lua")?;
        match it.text()?.as_str() {
            "OK" => Ok(SiteReply::Ok {
                failures: u32::try_from(it.uint()?).unwrap_or(u32::MAX),
                until_ms: it.int()?,
                banned: it.uint()? == 1,
                reason: it.text()?,
            }),
            "NOT_FOUND" => Ok(SiteReply::NotFound),
            "SCHEMA" => Ok(SiteReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("site_report.lua", other)),
        }
    }
}

/// Runs site_report.lua: a success (`failure` None) or a failure with its
/// reason and the policy (already validated).
pub(crate) async fn run(
    conn: &mut Conn<'_>,
    pk: &PoolKeys,
    id: Uuid,
    site: &Site,
    failure: Option<(&str, &CooldownPolicy)>,
) -> Result<SiteReply> {
    let mut call = OP.call();
    call.key(pk.meta())
        .key(pk.site(site.as_str()))
        .arg(pk.prefix());
    super::report::push_report(&mut call, id, failure);
    if failure.is_none() {
        // A site's success does the same however often it runs.
        call.repeat(crate::redis::conn::Repeat::Always);
    }
    call.arg(u64::try_from(SITE_MEMORY.as_millis()).unwrap_or(u64::MAX))
        .invoke(conn)
        .await
        .map_err(redis_err("site report script failed"))
}
