//! Every Redis key the storage uses is built here, and nowhere else in Rust.
//!
//! Layout (`<ns>` is the namespace, `lighthouse` by default):
//!
//! | key | type | contents |
//! |-----|------|----------|
//! | `<ns>:pools` | zset | pool names (score 0, so listed by name) |
//! | `<ns>:pool-ids` | hash | pool id → pool name |
//! | `<ns>:proxy-pool` | hash | proxy id → pool name |
//! | `<ns>:consumers` | hash | consumer name → consumer id |
//! | `<ns>:{<pool>}:meta` | hash | pool id, name, description, counters, cursors |
//! | `<ns>:{<pool>}:proxies` | zset | proxy ids by insertion sequence |
//! | `<ns>:{<pool>}:leases` | zset | live leases `<lease-id>:<proxy-seq>` by expiry (ms) |
//! | `<ns>:{<pool>}:tags` | set | index tags in use |
//! | `<ns>:{<pool>}:proxy:<id>` | hash | one proxy |
//! | `<ns>:{<pool>}:lease:<id>` | hash | one lease record |
//! | `<ns>:{<pool>}:avail:seq:<tag>` | zset | available proxies by insertion sequence |
//! | `<ns>:{<pool>}:avail:load:<tag>` | zset | available proxies by load |
//! | `<ns>:{<pool>}:avail:geo` | geo | available proxies with a location |
//! | `<ns>:{<pool>}:avail:polar` | zset | available proxies beyond GEO's latitude range |
//!
//! The Lua scripts receive the pool prefix `<ns>:{<pool>}:` built here, check
//! that the `KEYS` they were given are built from it, and append the suffixes
//! above (see `lua/_lib.lua`). Every key of a pool carries the pool's hash tag,
//! so a pool's scripts touch one Redis Cluster slot.
//!
//! Pool names are validated to `[A-Za-z0-9._-]{1,64}` before they get here, so
//! they can never move a hash tag. Attribute values (country, city, ...) become
//! index tags `<attribute>=<value>` with the value percent-encoded: every byte
//! but ASCII letters, digits, `.`, `_` and `-` is written `%XX`, so braces,
//! colons, spaces and Unicode never reach a key raw and two different values
//! never share a key.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::filters::FilterAttribute;
use crate::proxy::Proxy;

/// Longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

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

    /// `<ns>:proxy-pool`: hash proxy id → pool name.
    pub(crate) fn proxy_pool(&self) -> String {
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

    /// Pool hash: id, name, description, counters, cursors, fence, `cool_next` hint.
    pub(crate) fn meta(&self) -> String {
        format!("{}meta", self.prefix)
    }

    /// Every proxy id, by insertion sequence.
    pub(crate) fn proxies(&self) -> String {
        format!("{}proxies", self.prefix)
    }

    /// Live leases `<lease-id>:<proxy-seq>` by expiry ms.
    pub(crate) fn leases(&self) -> String {
        format!("{}leases", self.prefix)
    }

    /// One proxy hash.
    pub(crate) fn proxy(&self, id: Uuid) -> String {
        format!("{}proxy:{}", self.prefix, id)
    }

    /// One lease record hash.
    pub(crate) fn lease(&self, id: Uuid) -> String {
        format!("{}lease:{}", self.prefix, id)
    }

    /// Live lease ids scored by their proxy's sequence (a proxy's live leases).
    pub(crate) fn holders(&self) -> String {
        format!("{}holders", self.prefix)
    }

    /// Pub/sub channel of "capacity may have freed" notifications.
    pub(crate) fn freed(&self) -> String {
        format!("{}freed", self.prefix)
    }

    /// Proxies cooling down after a failure, scored by the end of the cooldown (ms).
    pub(crate) fn cooldown(&self) -> String {
        format!("{}cooldown", self.prefix)
    }

    /// Proxies whose status is active.
    pub(crate) fn active(&self) -> String {
        format!("{}active", self.prefix)
    }

    /// Proxies with at least one live lease.
    pub(crate) fn leased(&self) -> String {
        format!("{}leased", self.prefix)
    }

    /// Idempotency key of an acquire: `request:<percent-encoded request id>`.
    pub(crate) fn request(&self, request_id: &str) -> String {
        format!(
            "{}request:{}",
            self.prefix,
            utf8_percent_encode(request_id, TAG_VALUE)
        )
    }

    /// Available proxies of an index by insertion sequence (`tag` from [`tag`], or `all`).
    pub(crate) fn avail_seq(&self, tag: &str) -> String {
        format!("{}avail:seq:{}", self.prefix, tag)
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

/// The index tags of a proxy, space-separated (the scripts store them in the
/// proxy hash's `tags` field).
pub(crate) fn proxy_tags(proxy: &Proxy) -> String {
    FilterAttribute::ALL
        .into_iter()
        .filter_map(|a| a.value_of(proxy).map(|v| tag(a, &v)))
        .collect::<Vec<_>>()
        .join(" ")
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
            k.avail_seq("all"),
            "lighthouse:{latam-residential}:avail:seq:all"
        );
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(validate_namespace("lighthouse").is_ok());
        assert!(validate_namespace("t:1.a_b-c").is_ok());
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("a{b}").is_err());
        assert!(validate_namespace("a b").is_err());
    }
}
