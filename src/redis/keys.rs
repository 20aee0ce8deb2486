//! Every Redis key the storage uses is built here, and the Lua scripts get the
//! same names from here: [`lua_prelude`] writes these constants into the text
//! every script starts with, so Rust and Lua share one key table.
//!
//! | key | type | contents |
//! |-----|------|----------|
//! | `<ns>:pools` | zset | pool names (score 0, so listed by name) |
//! | `<ns>:pool-ids` | hash | pool id → pool name |
//! | `<ns>:consumers` | hash | consumer name → consumer id |
//! | `<ns>:{<pool>}:meta` | hash | schema, id, name, description, indexes, counters, fence, cursor, hints |
//! | `<ns>:{<pool>}:proxies` | hash | proxy seq → the proxy as JSON |
//! | `<ns>:{<pool>}:ids:<xx>` | hash | proxy id → seq (256 shards by the id's first two hex digits) |
//! | `<ns>:{<pool>}:idx:<order>:<tag>` | zset | available proxies (seq members) in an order |
//! | `<ns>:{<pool>}:held` | hash | seq → live leases, for proxies with leases that are not indexed |
//! | `<ns>:{<pool>}:live` | zset | live leases `<seq>:<token>` by expiry (ms) |
//! | `<ns>:{<pool>}:<lease-id>` | string | one lease record (no TTL while the lease is live; the record grace once it is not) |
//! | `<ns>:{<pool>}:req:<id>` | string | the lease an idempotent acquire got |
//! | `<ns>:{<pool>}:sess:<id>` | string | `<seq> <pool id>`: the proxy a sticky session keeps, with a TTL |
//! | `<ns>:{<pool>}:site:<site>` | hash | `pool` → pool id; seq → `<failures> <until-ms or ban> <reason>` for one site, with a TTL |
//! | `<ns>:{<pool>}:cooldown` | zset | cooling proxies by cooldown end (ms) |
//! | `<ns>:{<pool>}:tickets` | zset | fair waiters' tickets, by number (the queue, head first) |
//! | `<ns>:{<pool>}:tickets:until` | zset | the same tickets by when each lapses unless refreshed (ms) |
//! | `<ns>:{<pool>}:geo`, `…:polar` | geo, zset | available proxies with a location |
//! | `<ns>:{<pool>}:tags` | set | index tags in use |
//! | `<ns>:{<pool>}:freed` | channel | a slot freed while someone waited |
//!
//! Every key of a pool carries the pool's hash tag, so a pool's scripts touch
//! one Redis Cluster slot. Pool names are validated to `[A-Za-z0-9._-]{1,64}`
//! before they get here, so they can never move a hash tag. Attribute values
//! (country, city, ...) become index tags `<attribute>=<value>` with the value
//! percent-encoded: every byte but ASCII letters, digits, `.`, `_` and `-` is
//! written `%XX`, so braces, colons, spaces and Unicode never reach a key raw and
//! two different values never share a key. (The scripts encode proxies' values
//! the same way; `tests/names_property.rs` checks that both agree.)

use std::fmt::Write as _;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::filters::FilterAttribute;
use crate::storage::MAX_LEASE_DURATION;

/// Longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// The storage layout this version reads and writes (the pool meta's `schema`).
pub const SCHEMA: u32 = 2;

/// Pool key suffixes: (Lua constant, suffix). The one key table of Rust and Lua.
pub(crate) const SUFFIXES: [(&str, &str); 15] = [
    ("K_META", "meta"),
    ("K_PROXIES", "proxies"),
    ("K_IDS", "ids:"),
    ("K_IDX", "idx:"),
    ("K_HELD", "held"),
    ("K_LIVE", "live"),
    ("K_REQ", "req:"),
    ("K_SESS", "sess:"),
    ("K_SITE", "site:"),
    ("K_COOLDOWN", "cooldown"),
    ("K_SUCC", "succ"),
    ("K_GEO", "geo"),
    ("K_POLAR", "polar"),
    ("K_TAGS", "tags"),
    ("K_FREED", "freed"),
];

/// Pool key suffixes the scripts read as fields of the library's `STRAIGHT`
/// table instead of as locals (`STRAIGHT.K_TICKETS`): the library's chunk has
/// spent Lua's 200 locals. (Lua constant, suffix), as [`SUFFIXES`].
pub(crate) const FIELD_SUFFIXES: [(&str, &str); 2] =
    [("K_TICKETS", "tickets"), ("K_TICKET_ENDS", "tickets:until")];

fn suffix(name: &str) -> &'static str {
    SUFFIXES
        .iter()
        .chain(FIELD_SUFFIXES.iter())
        .find(|(n, _)| *n == name)
        .map_or("", |(_, s)| s)
}

/// A lease count and a seq share one score: `count * 2^32 + seq`.
pub(crate) const LOAD_SHIFT: u64 = 1 << 32;
/// Most requests (acquires, releases, rotates) one script call serves.
pub(crate) const MAX_REQUESTS: usize = 1000;
/// Most due leases one script call reclaims.
pub(crate) const MAX_RECLAIM: u32 = 100_000;
/// Most proxies one add (or read by id) script call takes.
pub(crate) const MAX_ADD: usize = 1000;
/// Longest record grace accepted, ms (10 years).
pub(crate) const MAX_GRACE_MS: u64 = 315_360_000_000;
/// Time a cleanup call may spend reclaiming, µs: it reclaims in chunks of
/// [`CLEANUP_CHUNK`] leases and stops after the chunk that passes this, so no
/// call blocks Redis much longer whatever the batch size or the machine's load.
/// 1 ms: calls of 1.2-1.3 ms (median) and 2.1-2.3 ms (p99) at the default batch
/// in `cargo bench --bench sweeper` on a loaded 2-core machine, against 2.1-2.3
/// and 3.6-6.4 ms with 2 ms, at the same throughput.
pub(crate) const CLEANUP_BUDGET_US: u64 = 1_000;
/// Leases a cleanup call reclaims between two looks at the clock.
pub(crate) const CLEANUP_CHUNK: u32 = 40;

/// The Lua text every script starts with: the key table and the limits, from
/// the constants above (so the two languages cannot disagree).
pub(crate) fn lua_prelude() -> String {
    let mut out = String::from("-- generated from src/redis/keys.rs\n");
    for (name, suffix) in SUFFIXES {
        let _ = writeln!(out, "local {name} = '{suffix}'");
    }
    let _ = writeln!(out, "local SCHEMA = '{SCHEMA}'");
    let _ = writeln!(out, "local LOAD_SHIFT = {LOAD_SHIFT}");
    let _ = writeln!(out, "local MAX_REQUESTS = {MAX_REQUESTS}");
    let _ = writeln!(out, "local MAX_RECLAIM = {MAX_RECLAIM}");
    let _ = writeln!(out, "local MAX_GRACE_MS = {MAX_GRACE_MS}");
    // Constants one or two operations read, as fields of one table: the
    // library's chunk may have 200 locals, and its helpers use most of them.
    let _ = writeln!(
        out,
        "local LIMITS = {{ MAX_ADD = {MAX_ADD}, CLEANUP_BUDGET_US = {CLEANUP_BUDGET_US}, \
         CLEANUP_CHUNK = {CLEANUP_CHUNK} }}"
    );
    let _ = writeln!(out, "local MAX_U32 = {}", u32::MAX);
    let _ = writeln!(
        out,
        "local MAX_LEASE_MS = {}",
        MAX_LEASE_DURATION.as_millis()
    );
    out
}

/// The Lua text that follows the shared helpers: [`FIELD_SUFFIXES`] as fields
/// of `STRAIGHT` (which `lua/_lib.lua` makes), set once when the library loads.
pub(crate) fn lua_fields() -> String {
    let mut out = String::from("-- generated from src/redis/keys.rs\n");
    for (name, suffix) in FIELD_SUFFIXES {
        let _ = writeln!(out, "STRAIGHT.{name} = '{suffix}'");
    }
    out
}

/// Bytes kept as they are in an index tag's value.
const TAG_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

/// Checks a namespace: 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-`
/// and `:` (so it never contains a brace and never moves a hash tag).
pub fn validate_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN {
        return Err(Error::InvalidArgument(format!(
            "Redis namespace must be 1 to {MAX_NAMESPACE_LEN} bytes, got {}",
            ns.len()
        )));
    }
    if let Some(c) = ns
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(Error::InvalidArgument(format!(
            "Redis namespace {ns:?}: character {c:?} is not allowed (use ASCII letters, digits, '.', '_', '-', ':')"
        )));
    }
    Ok(())
}

/// The cross-pool keys of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    ns: String,
}

impl Keys {
    /// Keys under a namespace that [`validate_namespace`] accepted.
    pub(crate) fn new(ns: &str) -> Self {
        Keys { ns: ns.to_string() }
    }

    /// `<ns>:pools`: zset of pool names.
    pub(crate) fn pools(&self) -> String {
        format!("{}:pools", self.ns)
    }

    /// `<ns>:pool-ids`: hash pool id → name.
    pub(crate) fn pool_ids(&self) -> String {
        format!("{}:pool-ids", self.ns)
    }

    /// `<ns>:proxy-pool`: the first layout's registry (proxy id → pool name);
    /// only removing a first-layout pool still writes it.
    pub(crate) fn legacy_proxy_pool(&self) -> String {
        format!("{}:proxy-pool", self.ns)
    }

    /// `<ns>:consumers`: hash consumer name → id.
    pub(crate) fn consumers(&self) -> String {
        format!("{}:consumers", self.ns)
    }

    /// The keys of one pool. `pool` must have passed `validate_pool_name`.
    pub(crate) fn pool(&self, pool: &str) -> PoolKeys {
        PoolKeys {
            prefix: format!("{}:{{{}}}:", self.ns, pool),
        }
    }
}

/// The keys of one pool, all under the prefix `<ns>:{<pool>}:`.
#[derive(Debug, Clone)]
pub(crate) struct PoolKeys {
    prefix: String,
}

impl PoolKeys {
    /// `<ns>:{<pool>}:`, which the scripts get as `ARGV[1]`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, suffix(name))
    }

    /// Pool hash: schema, id, name, description, indexes, counters, fence, hints.
    pub(crate) fn meta(&self) -> String {
        self.key("K_META")
    }

    /// Live leases `<seq>:<token>` by expiry ms.
    pub(crate) fn live(&self) -> String {
        self.key("K_LIVE")
    }

    /// One lease record: the pool prefix and the lease's fencing token.
    pub(crate) fn lease(&self, token: u64) -> String {
        format!("{}{token}", self.prefix)
    }

    /// Pub/sub channel of "a slot freed while someone waited" notifications.
    pub(crate) fn freed(&self) -> String {
        self.key("K_FREED")
    }

    /// Proxies cooling down after a failure, scored by the end of the cooldown (ms).
    pub(crate) fn cooldown(&self) -> String {
        self.key("K_COOLDOWN")
    }

    /// Success evidence of the proxies (pools that keep the success order):
    /// seq → `<successes> <reports> <ms of the last report>`.
    pub(crate) fn success(&self) -> String {
        self.key("K_SUCC")
    }

    /// The queue of fair waiters: tickets by number.
    pub(crate) fn tickets(&self) -> String {
        self.key("K_TICKETS")
    }

    /// The same tickets by when each lapses unless refreshed (ms).
    pub(crate) fn ticket_ends(&self) -> String {
        self.key("K_TICKET_ENDS")
    }

    /// Idempotency key of an acquire: `req:<percent-encoded request id>`.
    pub(crate) fn request(&self, request_id: &str) -> String {
        format!(
            "{}{}{}",
            self.prefix,
            suffix("K_REQ"),
            utf8_percent_encode(request_id, TAG_VALUE)
        )
    }

    /// A sticky session's key: `sess:<percent-encoded session id>`.
    pub(crate) fn session(&self, session_id: &str) -> String {
        format!(
            "{}{}{}",
            self.prefix,
            suffix("K_SESS"),
            utf8_percent_encode(session_id, TAG_VALUE)
        )
    }

    /// A site's cooldowns and bans: `site:<percent-encoded site>`.
    pub(crate) fn site(&self, site: &str) -> String {
        format!(
            "{}{}{}",
            self.prefix,
            suffix("K_SITE"),
            utf8_percent_encode(site, TAG_VALUE)
        )
    }

    /// An index: available proxies of `tag` (from [`tag`], or `all`) in `order`
    /// (`load`, `seq` or `lat`).
    #[cfg(test)]
    pub(crate) fn index(&self, order: &str, tag: &str) -> String {
        format!("{}{}{order}:{tag}", self.prefix, suffix("K_IDX"))
    }

    /// The ids shard of a proxy id.
    pub(crate) fn ids(&self, id: Uuid) -> String {
        let hex = id.simple().to_string();
        format!("{}{}{}", self.prefix, suffix("K_IDS"), &hex[..2])
    }
}

/// The index tag of an attribute value: `<attribute>=<percent-encoded value>`.
pub(crate) fn tag(attr: FilterAttribute, value: &str) -> String {
    format!(
        "{}={}",
        attr.as_str(),
        utf8_percent_encode(value, TAG_VALUE)
    )
}

/// Tokens stay below 2^53 (they are Lua numbers in the scripts).
pub(crate) const MAX_TOKEN: u64 = (1 << 53) - 1;

/// The lease id of a fencing token in a pool: the token's 15 hex digits (with
/// the version nibble 8) and the pool id's last 17 characters. The scripts key
/// lease records by the token; [`token_of`] reads it back.
pub(crate) fn lease_id(token: u64, pool_id: Uuid) -> Option<Uuid> {
    if token > MAX_TOKEN {
        return None;
    }
    let h = format!("{token:015x}");
    if h.len() != 15 {
        return None;
    }
    let pool = pool_id.hyphenated().to_string();
    Uuid::parse_str(&format!(
        "{}-{}-8{}{}",
        &h[..8],
        &h[8..12],
        &h[12..15],
        &pool[18..]
    ))
    .ok()
}

/// The fencing token a lease id made by [`lease_id`] carries, or `None` for an
/// id of another shape (then no lease of this storage has it).
pub(crate) fn token_of(id: Uuid) -> Option<u64> {
    let s = id.hyphenated().to_string();
    if s.as_bytes().get(14) != Some(&b'8') {
        return None;
    }
    u64::from_str_radix(&format!("{}{}{}", &s[..8], &s[9..13], &s[15..18]), 16)
        .ok()
        .filter(|t| *t <= MAX_TOKEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_encoded() {
        assert_eq!(tag(FilterAttribute::City, "Córdoba"), "city=C%C3%B3rdoba");
        assert_eq!(
            tag(FilterAttribute::Isp, "a b{c}:d%"),
            "isp=a%20b%7Bc%7D%3Ad%25"
        );
        assert_ne!(
            tag(FilterAttribute::Isp, "a%20b"),
            tag(FilterAttribute::Isp, "a b")
        );
    }

    #[test]
    fn pool_keys_carry_the_hash_tag() {
        let k = Keys::new("lighthouse").pool("latam-residential");
        assert_eq!(k.meta(), "lighthouse:{latam-residential}:meta");
        assert_eq!(
            k.index("load", "all"),
            "lighthouse:{latam-residential}:idx:load:all"
        );
        let id = Uuid::parse_str("1b4e28ba-2fa1-11d2-883f-0016d3cca427").unwrap();
        assert_eq!(k.ids(id), "lighthouse:{latam-residential}:ids:1b");
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(validate_namespace("lighthouse").is_ok());
        assert!(validate_namespace("t:1.a_b-c").is_ok());
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("a{b}").is_err());
        assert!(validate_namespace("a b").is_err());
    }

    #[test]
    fn lease_ids_carry_token_and_pool() {
        let pool = Uuid::parse_str("1b4e28ba-2fa1-41d2-883f-0016d3cca427").unwrap();
        let id = lease_id(1_733_500_000_000_123, pool).unwrap();
        assert_eq!(id.to_string(), "006289be-bb7d-887b-883f-0016d3cca427");
        assert_eq!(token_of(id), Some(1_733_500_000_000_123));
        assert!(lease_id(1 << 60, pool).is_none());
        assert_eq!(token_of(pool), None, "a v4 id is no lease id of ours");
    }

    #[test]
    fn the_prelude_names_every_key() {
        let p = lua_prelude();
        for (name, suffix) in SUFFIXES {
            assert!(p.contains(&format!("local {name} = '{suffix}'")), "{p}");
        }
        assert!(p.contains("local MAX_LEASE_MS = 604800000"));
        let f = lua_fields();
        for (name, suffix) in FIELD_SUFFIXES {
            assert!(f.contains(&format!("STRAIGHT.{name} = '{suffix}'")), "{f}");
            assert!(!p.contains(name), "{name} is a field, not a local");
        }
        let k = Keys::new("lighthouse").pool("p");
        assert_eq!(k.tickets(), "lighthouse:{p}:tickets");
        assert_eq!(k.ticket_ends(), "lighthouse:{p}:tickets:until");
    }
}
