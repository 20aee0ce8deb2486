//! `lua/site_read.lua`: the proxies with a standing for one site (read-only).

use redis::{FromRedisValue, ParsingError, Value};

use super::{bad, Items, Op};
use crate::error::Result;
use crate::redis::conn::Conn;
use crate::redis::error::redis_err;
use crate::redis::keys::PoolKeys;
use crate::site::Site;

pub(crate) const OP: Op = Op::new(
    "site_read",
    include_str!("../../../lua/site_read.lua"),
    true,
);

/// The script's reply.
#[derive(Debug)]
pub(crate) enum SiteReadReply {
    /// Redis's now (ms), and each proxy's JSON with its state for the site
    /// (`<failures> <until-ms | ban> <reason>`).
    Ok {
        now_ms: i64,
        entries: Vec<(String, String)>,
    },
    NotFound,
    Schema(String),
}

impl FromRedisValue for SiteReadReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "site_read.lua")?;
        match it.text()?.as_str() {
            "OK" => {
                let now_ms = it.int()?;
                let mut entries = Vec::with_capacity(it.left() / 2);
                while it.left() >= 2 {
                    entries.push((it.text()?, it.text()?));
                }
                Ok(SiteReadReply::Ok { now_ms, entries })
            }
            "NOT_FOUND" => Ok(SiteReadReply::NotFound),
            "SCHEMA" => Ok(SiteReadReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("site_read.lua", other)),
        }
    }
}

/// Runs site_read.lua for `site` in the pool.
pub(crate) async fn run(conn: &mut Conn<'_>, pk: &PoolKeys, site: &Site) -> Result<SiteReadReply> {
    OP.call()
        .key(pk.meta())
        .key(pk.site(site.as_str()))
        .arg(pk.prefix())
        .invoke(conn)
        .await
        .map_err(redis_err("cannot read the site's state"))
}
