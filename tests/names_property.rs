#![cfg(feature = "redis")]
//! Hostile names and values against the key schema.
//!
//! Every input that reaches a Redis key (pool names, namespaces, attribute
//! values, request ids) is either rejected by the public API with a clear
//! error, or accepted and encoded so that
//!
//! - (a) no two different pools (in the same or different namespaces) ever
//!   share a key, and no pool's prefix `<ns>:{<pool>}:` is a prefix of another
//!   pool's key (so `SCAN MATCH '<ns>:{<pool>}:*'` only ever finds that pool);
//! - (b) all keys of a pool hash to one Redis Cluster slot: the slot of the
//!   pool name (CRC16/XMODEM and the hash-tag rule are implemented below).
//!
//! The pure properties are checked on a model of the README's "Key schema"
//! table written here independently of `src/redis/keys.rs` (whose builders are
//! crate-private); the Redis property then runs real operations with hostile
//! values and checks that every key Redis holds afterwards is one the model
//! predicts, hashes to the pool's slot and has no raw `{`, `}` or space after
//! the pool prefix. So the code follows the model, and the model has the
//! properties for every generated input.
//!
//! Not tested here, by design: that the Lua scripts are never built from input.
//! They are `include_str!` constants joined at compile time (`src/redis/scripts.rs`)
//! and invoked by SHA with input only in `KEYS`/`ARGV`.

mod support;
use support::{cn, pn};

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use lighthouse_lease::cooldown::CooldownPolicy;
use lighthouse_lease::names::{validate_consumer_name, MAX_POOL_NAME_LEN};
use lighthouse_lease::proxy::MAX_ATTRIBUTE_LEN;
use lighthouse_lease::redis::{validate_namespace, RedisConfig, RedisStorage, MAX_NAMESPACE_LEN};
use lighthouse_lease::storage::MAX_REQUEST_ID_LEN;
use lighthouse_lease::{
    AcquireRequest, AdminStorage, Error, LeaseStorage, PoolIndexes, Proxy, ProxyFilters, ProxyPool,
};
use proptest::prelude::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Redis Cluster slots: CRC16/XMODEM of the hash tag (or of the whole key).

/// CRC16/XMODEM (poly 0x1021, init 0), the checksum Redis Cluster uses.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of a key: the first `{` and the first `}` after it delimit
/// the hash tag when there is at least one byte between them; otherwise the
/// whole key is hashed.
fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &rest[..len])
        })
        .unwrap_or(key);
    crc16(hashed) % 16384
}

#[test]
fn slot_function_matches_redis() {
    assert_eq!(crc16(b"123456789"), 0x31C3, "CRC16/XMODEM check value");
    assert_eq!(key_slot(b"foo"), 12182, "CLUSTER KEYSLOT foo");
    assert_eq!(key_slot(b"bar"), 5061, "CLUSTER KEYSLOT bar");
    assert_eq!(
        key_slot(b"{user1000}.following"),
        key_slot(b"{user1000}.followers")
    );
    assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    assert_eq!(key_slot(b"foo{{bar}}zap"), crc16(b"{bar") % 16384);
    assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
    assert_eq!(key_slot(b"foo{bar"), crc16(b"foo{bar") % 16384);
}

// ---------------------------------------------------------------------------
// The key schema (README "Key schema"), written out independently.

/// The four cross-pool registries of a namespace.
fn registries(ns: &str) -> [String; 3] {
    ["pools", "pool-ids", "consumers"].map(|k| format!("{ns}:{k}"))
}

/// `<ns>:{<pool>}:`.
fn pool_prefix(ns: &str, pool: &str) -> String {
    format!("{ns}:{{{pool}}}:")
}

/// Percent-encoding of attribute values and request ids: every byte but ASCII
/// letters, digits, `.`, `_` and `-` becomes `%XX`.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").unwrap();
        }
    }
    out
}

/// An index tag `<attribute>=<encoded value>`.
fn tag(attr: &str, value: &str) -> String {
    format!("{attr}={}", encode(value))
}

/// What a pool holds, as far as its keys go.
#[derive(Debug, Clone, Default)]
struct Contents {
    proxies: Vec<Uuid>,
    /// Lease tokens (records are keyed by them).
    leases: Vec<u64>,
    /// Index tags (`<attribute>=<encoded value>`), without `all`.
    tags: Vec<String>,
    /// Raw request ids.
    requests: Vec<String>,
}

/// Keys (and the `freed` channel) of one pool with these contents (a pool that
/// indexes every attribute and order).
fn pool_keys(ns: &str, pool: &str, c: &Contents) -> Vec<String> {
    let p = pool_prefix(ns, pool);
    let mut keys: Vec<String> = [
        "meta",
        "proxies",
        "live",
        "held",
        "tags",
        "cooldown",
        "freed",
        "geo",
        "polar",
        "succ",
        "tickets",
        "tickets:until",
    ]
    .iter()
    .map(|s| format!("{p}{s}"))
    .collect();
    // The id shards (`ids:<first two hex digits>`) are shared by design: one
    // key per shard, however many proxies fall in it.
    let shards: std::collections::BTreeSet<String> = c
        .proxies
        .iter()
        .map(|id| format!("{p}ids:{}", &id.simple().to_string()[..2]))
        .collect();
    keys.extend(shards);
    keys.extend(c.leases.iter().map(|t| format!("{p}{t}")));
    keys.extend(c.requests.iter().map(|r| format!("{p}req:{}", encode(r))));
    for t in std::iter::once("all").chain(c.tags.iter().map(String::as_str)) {
        for order in ["load", "seq", "lat", "succ"] {
            keys.push(format!("{p}idx:{order}:{t}"));
        }
    }
    keys
}

// ---------------------------------------------------------------------------
// The rules, as the docs state them (the API must agree).

fn pool_name_ok(s: &str) -> bool {
    (1..=MAX_POOL_NAME_LEN).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn namespace_ok(s: &str) -> bool {
    (1..=MAX_NAMESPACE_LEN).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn attribute_ok(s: &str) -> bool {
    (1..=MAX_ATTRIBUTE_LEN).contains(&s.len()) && !s.chars().any(char::is_control)
}

fn request_id_ok(s: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&s.len()) && !s.chars().any(char::is_control)
}

/// An error message is "clear": it names what was wrong and never echoes a
/// huge input back.
fn clear(err: &Error, mentions: &str) -> Result<(), TestCaseError> {
    let msg = err.to_string();
    prop_assert!(
        msg.contains(mentions),
        "error {msg:?} does not mention {mentions:?}"
    );
    prop_assert!(msg.len() < 2048, "error message of {} bytes", msg.len());
    Ok(())
}

// ---------------------------------------------------------------------------
// Strategies.

/// Pieces that break naive key building, plus a few ordinary ones.
const PIECES: &[&str] = &[
    "{",
    "}",
    "{}",
    ":",
    " ",
    "\0",
    "\t",
    "\n",
    "\r",
    "\u{7f}",
    "\u{85}",
    "%",
    "%7B",
    "*",
    "?",
    "[",
    "]",
    "\\",
    "\"",
    "'",
    "=",
    "/",
    "é",
    "日本",
    "\u{1F600}",
    "\u{200B}",
    "\u{FEFF}",
    "\u{202E}",
    "a",
    "Z",
    "0",
    "-",
    "_",
    ".",
];

/// Printable pieces only (valid in attribute values and request ids).
const PRINTABLE: &[&str] = &[
    "{",
    "}",
    "{}",
    ":",
    " ",
    "%",
    "%7B",
    "%20",
    "*",
    "?",
    "[",
    "]",
    "\\",
    "\"",
    "'",
    "=",
    "/",
    "é",
    "日本",
    "\u{1F600}",
    "\u{200B}",
    "\u{FEFF}",
    "\u{202E}",
    "a",
    "Z",
    "0",
    "-",
    "_",
    ".",
    "all",
    "seq:",
];

fn concat(pieces: &'static [&'static str], len: std::ops::Range<usize>) -> BoxedStrategy<String> {
    prop::collection::vec(prop::sample::select(pieces), len)
        .prop_map(|v| v.concat())
        .boxed()
}

/// Anything: hostile pieces, empty, NUL and control characters, arbitrary
/// Unicode, strings around the length limits and 10 KB strings.
fn hostile() -> BoxedStrategy<String> {
    prop_oneof![
        4 => concat(PIECES, 0..12),
        2 => prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        2 => any::<String>(),
        1 => Just(String::new()),
        2 => "[A-Za-z0-9._-]{1,80}",
        1 => "[A-Za-z0-9._:-]{50,80}",
        1 => "[^\u{0}-\u{1f}]{120,300}",
        1 => (prop::sample::select(PIECES), 10_200usize..10_300).prop_map(|(p, n)| {
            let mut s = "x".repeat(n);
            s.insert_str(n / 2, p);
            s
        }),
        1 => Just("a".repeat(10 * 1024)),
    ]
    .boxed()
}

/// Valid pool names, often short and alike (so pairs nearly collide).
fn pool_name() -> BoxedStrategy<String> {
    prop_oneof![3 => "[a.-]{1,3}", 1 => "[A-Za-z0-9._-]{1,64}"].boxed()
}

/// Valid namespaces, often short and alike, with `:`.
fn namespace() -> BoxedStrategy<String> {
    prop_oneof![3 => "[a:.]{1,4}", 1 => "[A-Za-z0-9._:-]{1,64}"].boxed()
}

/// Valid but hostile attribute values.
fn attribute() -> BoxedStrategy<String> {
    prop_oneof![
        4 => concat(PRINTABLE, 1..10),
        1 => "\\PC{1,20}",
        1 => "[^\u{0}-\u{1f}\u{7f}-\u{9f}]{200,256}",
    ]
    .prop_filter("a valid attribute value", |s| attribute_ok(s))
    .boxed()
}

/// Valid but hostile request ids.
fn request_id() -> BoxedStrategy<String> {
    prop_oneof![4 => concat(PRINTABLE, 1..10), 1 => "\\PC{1,20}"]
        .prop_filter("a valid request id", |s| request_id_ok(s))
        .boxed()
}

/// Sample contents of a pool, with index tags of these values.
fn contents() -> BoxedStrategy<Contents> {
    (
        prop::collection::vec(any::<u128>(), 0..3),
        prop::collection::vec(0u64..(1 << 53), 0..3),
        prop::collection::vec(attribute(), 0..4),
        any::<u32>(),
        prop::collection::vec(request_id(), 0..3),
    )
        .prop_map(|(proxies, leases, values, asn, requests)| {
            let attrs = ["country", "source", "city", "isp"];
            let mut tags: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| tag(attrs[i % 4], v))
                .collect();
            tags.push(tag("asn", &asn.to_string()));
            // Distinct ids, as in a real pool (the generators may repeat one).
            let distinct = |v: Vec<u128>| -> Vec<Uuid> {
                let set: BTreeSet<u128> = v.into_iter().collect();
                set.into_iter().map(Uuid::from_u128).collect()
            };
            let requests: BTreeSet<String> = requests.into_iter().collect();
            let leases: BTreeSet<u64> = leases.into_iter().collect();
            Contents {
                proxies: distinct(proxies),
                leases: leases.into_iter().collect(),
                tags,
                requests: requests.into_iter().collect(),
            }
        })
        .boxed()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

// ---------------------------------------------------------------------------
// Rejected with a clear error, or accepted: the public API.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn pool_names_are_accepted_only_when_safe(name in hostile()) {
        let expected = pool_name_ok(&name);
        match ProxyPool::new(name.clone()) {
            Ok(pool) => {
                prop_assert!(expected, "accepted {name:?}");
                prop_assert_eq!(&pool.name, &name);
            }
            Err(e) => {
                prop_assert!(!expected, "rejected {name:?}: {e}");
                let is_invalid_pool_name = matches!(e, Error::InvalidName { kind: "pool", .. });
                prop_assert!(is_invalid_pool_name, "{e:?}");
                clear(&e, "invalid pool name")?;
            }
        }
        // Every other way in checks the same rule.
        let req = AcquireRequest::new(name.clone(), "worker-1", Duration::from_secs(60));
        prop_assert_eq!(req.is_ok(), expected);
        if let Err(e) = req {
            clear(&e, "invalid pool name")?;
        }
        let typed = lighthouse_lease::PoolName::new(&name);
        prop_assert_eq!(typed.is_ok(), expected);
        let decoded = serde_json::from_value::<lighthouse_lease::PoolName>(serde_json::json!(name));
        prop_assert_eq!(decoded.is_ok(), expected);
    }

    #[test]
    fn attribute_values_are_accepted_only_when_printable(
        value in hostile(),
        which in 0usize..4,
    ) {
        let b = Proxy::builder(Uuid::new_v4(), "10.0.0.1", 8080);
        let (field, b) = match which {
            0 => ("country", b.country(value.clone())),
            1 => ("source", b.source(value.clone())),
            2 => ("city", b.city(value.clone())),
            _ => ("isp", b.isp(value.clone())),
        };
        let expected = attribute_ok(&value);
        match b.build() {
            Ok(p) => {
                prop_assert!(expected, "{field} {value:?} accepted");
                let stored = match which {
                    0 => p.country,
                    1 => p.source,
                    2 => p.city,
                    _ => p.isp,
                };
                let want = if which == 0 { value.to_ascii_uppercase() } else { value.clone() };
                prop_assert_eq!(stored, Some(want));
            }
            Err(e) => {
                prop_assert!(!expected, "{field} {value:?} rejected: {e}");
                let right_field = matches!(&e, Error::InvalidProxy { field: f, .. } if *f == field);
                prop_assert!(right_field, "{e:?}");
                clear(&e, field)?;
            }
        }
    }

    #[test]
    fn request_ids_are_accepted_only_when_printable(id in hostile()) {
        let req = AcquireRequest::new("latam-residential", "worker-1", Duration::from_secs(60)).unwrap()
            .with_request_id(id.clone());
        let expected = request_id_ok(&id);
        match req.validate() {
            Ok(()) => prop_assert!(expected, "request id {id:?} accepted"),
            Err(e) => {
                prop_assert!(!expected, "request id {id:?} rejected: {e}");
                prop_assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
                clear(&e, "request id")?;
            }
        }
    }

    #[test]
    fn namespaces_are_accepted_only_when_brace_free(ns in hostile()) {
        let expected = namespace_ok(&ns);
        prop_assert_eq!(validate_namespace(&ns).is_ok(), expected);
        let _rt = runtime().enter();
        // Port 9 (discard): nothing connects, storages open connections lazily.
        match RedisStorage::new(RedisConfig::from_url("redis://127.0.0.1:9").namespace(ns.clone())) {
            Ok(s) => {
                prop_assert!(expected, "namespace {ns:?} accepted");
                prop_assert_eq!(s.config().get_namespace(), ns.as_str());
            }
            Err(e) => {
                prop_assert!(!expected, "namespace {ns:?} rejected: {e}");
                prop_assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
                clear(&e, "namespace")?;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Accepted inputs are encoded safely (pure, on the schema model).

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) Two different pools never share a key, and neither pool's prefix is
    /// a prefix of the other's keys (or of a registry).
    #[test]
    fn distinct_pools_never_share_a_key(
        a in (namespace(), pool_name()),
        b in (namespace(), pool_name()),
        c in contents(),
    ) {
        prop_assume!(a != b);
        for (ns, pool) in [&a, &b] {
            prop_assert!(validate_namespace(ns).is_ok());
            prop_assert!(ProxyPool::new(pool.clone()).is_ok());
        }
        let (pa, pb) = (pool_prefix(&a.0, &a.1), pool_prefix(&b.0, &b.1));
        prop_assert_ne!(&pa, &pb);
        // Both pools hold the same contents: only the prefix can keep them apart.
        let ka: BTreeSet<String> = pool_keys(&a.0, &a.1, &c).into_iter().collect();
        let kb: BTreeSet<String> = pool_keys(&b.0, &b.1, &c).into_iter().collect();
        prop_assert!(ka.is_disjoint(&kb));
        for k in &kb {
            prop_assert!(!k.starts_with(&pa), "{k} starts with {pa}");
        }
        for k in &ka {
            prop_assert!(!k.starts_with(&pb), "{k} starts with {pb}");
        }
        for r in registries(&a.0).iter().chain(&registries(&b.0)) {
            prop_assert!(!ka.contains(r) && !kb.contains(r), "{r} is a pool key");
            prop_assert!(!r.starts_with(&pa) && !r.starts_with(&pb));
        }
        if a.0 != b.0 {
            let ra: BTreeSet<String> = registries(&a.0).into_iter().collect();
            prop_assert!(ra.is_disjoint(&registries(&b.0).into_iter().collect()));
        }
        // `SCAN MATCH '<prefix>*'` means what it says: no glob character in it.
        for p in [&pa, &pb] {
            prop_assert!(!p.contains(['*', '?', '[', ']', '\\']), "{p}");
        }
    }

    /// Encoding is injective and leaves only `[A-Za-z0-9._%-]`.
    #[test]
    fn different_values_get_different_keys(v in attribute(), w in attribute()) {
        let (ev, ew) = (encode(&v), encode(&w));
        prop_assert!(ev.chars().all(|c| c.is_ascii_alphanumeric() || "._%-".contains(c)), "{ev}");
        if v != w {
            prop_assert_ne!(&ev, &ew);
            prop_assert_ne!(tag("city", &v), tag("city", &w));
        }
        // Different attributes never share an index either.
        prop_assert_ne!(tag("city", &v), tag("isp", &v));
    }

    /// (b) Every key of a pool (index keys with encoded values and request keys
    /// included) hashes to the pool name's slot.
    #[test]
    fn every_key_of_a_pool_hashes_to_one_slot(
        ns in namespace(),
        pool in pool_name(),
        c in contents(),
    ) {
        let slot = key_slot(pool.as_bytes());
        let prefix = pool_prefix(&ns, &pool);
        let keys = pool_keys(&ns, &pool, &c);
        let unique: BTreeSet<&String> = keys.iter().collect();
        prop_assert_eq!(unique.len(), keys.len(), "two pool keys coincide");
        for k in &keys {
            prop_assert_eq!(key_slot(k.as_bytes()), slot, "{}", k);
            prop_assert!(k.starts_with(&prefix));
            let rest = &k[prefix.len()..];
            prop_assert!(
                rest.chars().all(|c| c.is_ascii_graphic() && !"{} ".contains(c)),
                "{k}: raw input after the prefix"
            );
        }
        for r in registries(&ns) {
            prop_assert!(!r.contains(['{', '}']), "{r}");
        }
    }
}

// ---------------------------------------------------------------------------
// Real operations on the test Redis.

async fn scan(ns: &str) -> BTreeSet<String> {
    support::keys_under(ns).await.into_iter().collect()
}

async fn pttl(key: &str) -> i64 {
    let mut c = redis::Client::open(support::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// Index tags of a proxy as stored (country upper-cased by the builder).
fn tags_of(p: &Proxy) -> Vec<String> {
    let mut t = Vec::new();
    for (attr, v) in [
        ("country", &p.country),
        ("source", &p.source),
        ("city", &p.city),
        ("isp", &p.isp),
    ] {
        if let Some(v) = v {
            t.push(tag(attr, v));
        }
    }
    if let Some(asn) = p.asn {
        t.push(tag("asn", &asn.to_string()));
    }
    t
}

/// Every key Redis holds for `ns` is a registry or a key the model predicts
/// for exactly one of the pools, with the pool's slot and no raw input.
fn check_keys(
    ns: &str,
    found: &BTreeSet<String>,
    pools: &[(&str, &Contents)],
) -> Result<(), TestCaseError> {
    let registries = registries(ns);
    for key in found {
        if registries.contains(key) {
            continue;
        }
        let owners: Vec<&(&str, &Contents)> = pools
            .iter()
            .filter(|(pool, _)| key.starts_with(&pool_prefix(ns, pool)))
            .collect();
        prop_assert_eq!(owners.len(), 1, "{} belongs to {} pools", key, owners.len());
        let (pool, c) = owners[0];
        let prefix = pool_prefix(ns, pool);
        let rest = &key[prefix.len()..];
        prop_assert!(
            !rest.contains(['{', '}', ' ']) && rest.chars().all(|c| c.is_ascii_graphic()),
            "{key}: raw input after the prefix"
        );
        prop_assert_eq!(
            key_slot(key.as_bytes()),
            key_slot(pool.as_bytes()),
            "{}",
            key
        );
        prop_assert!(
            pool_keys(ns, pool, c).contains(key),
            "{key} is not in the key schema"
        );
    }
    Ok(())
}

struct Case {
    pools: (String, String),
    ns_suffix: Option<String>,
    values: Vec<String>,
    asn: u32,
    request_id: String,
    consumer: String,
}

async fn run_case(case: Case) -> Result<(), TestCaseError> {
    let ns = match &case.ns_suffix {
        Some(s) => format!("{}:{s}", support::unique_namespace()),
        None => support::unique_namespace(),
    };
    let s = RedisStorage::new(support::test_config().namespace(ns.clone())).unwrap();
    s.ensure_consumer(&cn(&case.consumer)).await.unwrap();
    let v = &case.values;
    let mut contents = [Contents::default(), Contents::default()];
    let names = [case.pools.0.as_str(), case.pools.1.as_str()];
    let mut first_proxy = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let pool = s
            .create_pool(
                ProxyPool::new(*name)
                    .unwrap()
                    .with_description(&v[i])
                    .with_indexes(PoolIndexes::all()),
            )
            .await
            .unwrap();
        let a = Proxy::builder(pool.id, "10.0.0.1", 8001)
            .max_concurrency(2)
            .country(&v[0])
            .source(&v[1])
            .city(&v[2])
            .isp(&v[3])
            .asn(case.asn)
            .location(-34.6, -58.4)
            .credentials("user{1}", &v[4])
            .build()
            .unwrap();
        let b = Proxy::builder(pool.id, "10.0.0.2", 8002)
            .country(&v[4])
            .source(&v[5])
            .city(&v[6])
            .isp(&v[7])
            .location(89.5, 10.0)
            .build()
            .unwrap();
        let added = s.add_proxies(vec![a, b]).await.unwrap();
        for p in &added {
            contents[i].proxies.push(p.id);
            contents[i].tags.extend(tags_of(p));
        }
        first_proxy.push(added);
    }
    // An idempotent, filtered acquire on the first pool, twice.
    let pa = &first_proxy[0][0];
    let req = AcquireRequest::new(names[0], case.consumer.clone(), Duration::from_secs(60))
        .unwrap()
        .with_filters(
            ProxyFilters::new()
                .city(pa.city.clone().unwrap())
                .isp(pa.isp.clone().unwrap())
                .country(pa.country.clone().unwrap().to_ascii_lowercase()),
        )
        .with_request_id(case.request_id.clone());
    let lease = s.acquire(&req).await.unwrap();
    prop_assert!(lease.is_some(), "the proxy matches its own attributes");
    let lease = lease.unwrap();
    prop_assert_eq!(s.acquire(&req).await.unwrap().map(|l| l.id), Some(lease.id));
    contents[0].leases.push(lease.fencing_token);
    contents[0].requests.push(case.request_id.clone());
    // A radius acquire on the second pool, a failure, a re-index, a release.
    let pb = &first_proxy[1][0];
    let near = AcquireRequest::new(names[1], case.consumer.clone(), Duration::from_secs(60))
        .unwrap()
        .with_filters(
            ProxyFilters::new()
                .source(pb.source.clone().unwrap())
                .near(-34.6, -58.4, 10.0),
        );
    let other = s.acquire(&near).await.unwrap();
    prop_assert!(other.is_some(), "near its own location");
    contents[1].leases.push(other.unwrap().fencing_token);
    s.report_failure(
        first_proxy[0][1].id,
        "{boom} at 10.0.0.2:8002",
        &CooldownPolicy::default(),
    )
    .await
    .unwrap();
    let mut moved = pa.clone();
    moved.city = Some(v[5].clone());
    moved.isp = None;
    let moved = s.update_proxy(moved).await.unwrap();
    contents[0].tags.extend(tags_of(&moved));
    s.release(&lease).await.unwrap();

    let found = scan(&ns).await;
    let pools = [(names[0], &contents[0]), (names[1], &contents[1])];
    check_keys(&ns, &found, &pools)?;
    let p0 = pool_prefix(&ns, names[0]);
    for expected in [
        format!("{p0}req:{}", encode(&case.request_id)),
        format!("{p0}idx:seq:{}", tag("city", &v[5])),
        format!("{p0}{}", lease.fencing_token),
        format!("{p0}cooldown"),
    ] {
        prop_assert!(found.contains(&expected), "{expected} missing");
    }

    // Removing the first pool leaves every key of the second one alone.
    let p1 = pool_prefix(&ns, names[1]);
    let second: BTreeSet<&String> = found.iter().filter(|k| k.starts_with(&p1)).collect();
    prop_assert!(s.remove_pool(&pn(names[0])).await.unwrap());
    let after = scan(&ns).await;
    // Only finished lease records and request keys stay, until their TTL
    // (pool_remove.lua leaves them; a pool created again under the name starts
    // its tokens after them).
    for k in after.iter().filter(|k| k.starts_with(&p0)) {
        let rest = &k[p0.len()..];
        prop_assert!(
            rest.bytes().all(|b| b.is_ascii_digit()) || rest.starts_with("req:"),
            "{k} left behind"
        );
        let ttl = pttl(k).await;
        prop_assert!(ttl > 0, "{k} left behind without a TTL ({ttl})");
    }
    let second_after: BTreeSet<&String> = after.iter().filter(|k| k.starts_with(&p1)).collect();
    prop_assert_eq!(second, second_after);
    check_keys(&ns, &after, &pools)?;
    Ok(())
}

fn distinct_pool_names() -> BoxedStrategy<(String, String)> {
    (pool_name(), pool_name())
        .prop_filter("distinct pools", |(a, b)| a != b)
        .boxed()
}

fn consumer_name() -> BoxedStrategy<String> {
    concat(PRINTABLE, 1..8)
        .prop_filter("a valid consumer name", |s| {
            validate_consumer_name(s).is_ok()
        })
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn real_operations_keep_every_key_under_its_pool(
        pools in distinct_pool_names(),
        ns_suffix in prop::option::of("[A-Za-z0-9._:-]{1,12}"),
        values in prop::collection::vec(attribute(), 8),
        asn in any::<u32>(),
        request_id in request_id(),
        consumer in consumer_name(),
    ) {
        runtime().block_on(run_case(Case {
            pools,
            ns_suffix,
            values,
            asn,
            request_id,
            consumer,
        }))?;
    }
}
