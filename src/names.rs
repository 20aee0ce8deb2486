//! Naming rules for pools and consumers, and the names that keep them:
//! [`PoolName`] and [`ConsumerName`].
//!
//! Pool names become part of storage keys (in Redis, the hash tag
//! `<namespace>:{<pool>}:...`), so they are restricted to a small, readable
//! alphabet that can never move a hash tag or make two pools share a key:
//! ASCII letters, digits, `-`, `_` and `.`, 1 to [`MAX_POOL_NAME_LEN`] bytes.
//!
//! Consumer names are stored as values, never as key parts, so they are looser:
//! 1 to [`MAX_CONSUMER_NAME_LEN`] bytes of printable text without control characters
//! and without leading or trailing white space.
//!
//! A name is checked once, where it enters (a [`PoolName`] or [`ConsumerName`]
//! cannot be built otherwise, deserializing included); the manager and the
//! storages take the typed names and trust them. The manager's methods still
//! take strings ([`IntoPoolName`]), and a bad one is the same
//! [`Error::InvalidName`] as before:
//!
//! ```
//! use lighthouse_lease::{ConsumerName, Error, PoolName};
//!
//! let pool = PoolName::new("latam-residential")?;
//! assert_eq!(pool, "latam-residential");
//! assert!(matches!(PoolName::new("a{b}"), Err(Error::InvalidName { kind: "pool", .. })));
//! assert!(matches!(" worker".parse::<ConsumerName>(), Err(Error::InvalidName { kind: "consumer", .. })));
//! // Deserializing checks too.
//! assert!(serde_json::from_str::<PoolName>("\"a b\"").is_err());
//! # Ok::<(), lighthouse_lease::Error>(())
//! ```

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest pool name accepted, in bytes.
pub const MAX_POOL_NAME_LEN: usize = 64;
/// Longest consumer name accepted, in bytes.
pub const MAX_CONSUMER_NAME_LEN: usize = 128;

fn shown(name: &str) -> String {
    name.chars().take(80).collect()
}

/// The bytes that may appear in a pool name, as bits of a mask (bit `b` for
/// byte `b`): ASCII letters, digits, `-`, `_` and `.`.
const POOL_NAME_BYTES: u128 = {
    let mut mask = 0u128;
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.' {
            mask |= 1 << b;
        }
        b += 1;
    }
    mask
};

/// Whether a byte may appear in a pool name (one shift and test of a mask:
/// the check runs on every byte of the name a call passes as text).
#[inline]
fn pool_name_byte(b: u8) -> bool {
    b < 128 && (POOL_NAME_BYTES >> b) & 1 == 1
}

/// Checks a pool name against the rules above.
///
/// ```
/// use lighthouse_lease::names::validate_pool_name;
/// assert!(validate_pool_name("latam-residential").is_ok());
/// assert!(validate_pool_name("a{b}").is_err());
/// assert!(validate_pool_name("").is_err());
/// ```
pub fn validate_pool_name(name: &str) -> Result<()> {
    let fail = |reason: &str| Error::InvalidName {
        kind: "pool",
        name: shown(name),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(fail("it is empty"));
    }
    if name.len() > MAX_POOL_NAME_LEN {
        return Err(fail(&format!(
            "it is longer than {MAX_POOL_NAME_LEN} bytes"
        )));
    }
    if !name.bytes().all(pool_name_byte) {
        let c = name
            .chars()
            .find(|&c| !u8::try_from(c).is_ok_and(pool_name_byte))
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        return Err(fail(&format!(
            "character {c:?} is not allowed (use ASCII letters, digits, '-', '_' and '.')"
        )));
    }
    Ok(())
}

/// Checks a consumer name against the rules above.
///
/// ```
/// use lighthouse_lease::names::validate_consumer_name;
/// assert!(validate_consumer_name("worker-1@host-a").is_ok());
/// assert!(validate_consumer_name(" padded").is_err());
/// ```
pub fn validate_consumer_name(name: &str) -> Result<()> {
    let fail = |reason: &str| Error::InvalidName {
        kind: "consumer",
        name: shown(name),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(fail("it is empty"));
    }
    if name.len() > MAX_CONSUMER_NAME_LEN {
        return Err(fail(&format!(
            "it is longer than {MAX_CONSUMER_NAME_LEN} bytes"
        )));
    }
    // ASCII names (the usual ones) are checked byte by byte.
    let control = if name.is_ascii() {
        name.bytes().any(|b| b.is_ascii_control())
    } else {
        name.chars().any(char::is_control)
    };
    if control {
        return Err(fail("it contains a control character"));
    }
    // Only the ends can be white space that `trim` would remove.
    let ends_blank = name.chars().next().is_some_and(char::is_whitespace)
        || name.chars().next_back().is_some_and(char::is_whitespace);
    if ends_blank {
        return Err(fail("it starts or ends with white space"));
    }
    Ok(())
}

/// A pool name that follows the rules above: built only through
/// [`PoolName::new`] (or `parse`, `TryFrom`, deserializing), which check them.
///
/// It lives inline (at most [`MAX_POOL_NAME_LEN`] bytes, no heap), so making
/// one, cloning it and putting it in a [`crate::Lease`] allocate nothing, and
/// it compares and hashes as bytes. It reads as a `&str` (`Deref`,
/// `AsRef<str>`, `Display`) and compares with strings.
#[derive(Clone)]
pub struct PoolName {
    len: u8,
    bytes: [u8; MAX_POOL_NAME_LEN],
}

impl PoolName {
    /// Checks `name` and keeps it. Fails with [`Error::InvalidName`] (kind
    /// `"pool"`) when it breaks the naming rules.
    #[inline]
    pub fn new(name: &str) -> Result<PoolName> {
        // Checked and copied in one pass; the rest stays zero (equality
        // compares whole arrays). `validate_pool_name` words the error.
        let mut bytes = [0; MAX_POOL_NAME_LEN];
        let fits = !name.is_empty()
            && name.len() <= MAX_POOL_NAME_LEN
            && name.bytes().zip(bytes.iter_mut()).all(|(b, slot)| {
                *slot = b;
                pool_name_byte(b)
            });
        if !fits {
            validate_pool_name(name)?;
        }
        Ok(PoolName {
            // At most MAX_POOL_NAME_LEN (64), checked above.
            len: u8::try_from(name.len()).unwrap_or(u8::MAX),
            bytes,
        })
    }

    /// The name.
    #[inline]
    pub fn as_str(&self) -> &str {
        // Always ASCII (checked when built), so always UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The name's bytes (ASCII).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Deref for PoolName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for PoolName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Eight bytes at a time, as far as the name goes (past it both are zero):
/// no call to `memcmp` (comparing the whole arrays was one, twice a cycle
/// in the in-memory storage's pool look-ups and once in the telemetry's).
impl PartialEq for PoolName {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let word = |b: &[u8; MAX_POOL_NAME_LEN], i: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        let words = usize::from(self.len).div_ceil(8);
        self.len == other.len && (0..words).all(|i| word(&self.bytes, i) == word(&other.bytes, i))
    }
}

impl Eq for PoolName {}

impl PartialOrd for PoolName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// In the order of the text (ASCII: byte order).
impl Ord for PoolName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for PoolName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
        state.write_u8(0xff);
    }
}

impl PartialEq<str> for PoolName {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for PoolName {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<String> for PoolName {
    fn eq(&self, other: &String) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<PoolName> for str {
    fn eq(&self, other: &PoolName) -> bool {
        other == self
    }
}

impl PartialEq<PoolName> for &str {
    fn eq(&self, other: &PoolName) -> bool {
        other == *self
    }
}

impl PartialEq<PoolName> for String {
    fn eq(&self, other: &PoolName) -> bool {
        other == self
    }
}

impl fmt::Debug for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PoolName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        PoolName::new(s)
    }
}

impl TryFrom<&str> for PoolName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        PoolName::new(s)
    }
}

impl TryFrom<String> for PoolName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        PoolName::new(&s)
    }
}

impl TryFrom<&String> for PoolName {
    type Error = Error;
    fn try_from(s: &String) -> Result<Self> {
        PoolName::new(s)
    }
}

impl From<PoolName> for String {
    fn from(name: PoolName) -> String {
        name.as_str().to_string()
    }
}

impl Serialize for PoolName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PoolName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        PoolName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A consumer name that follows the rules above: built only through
/// [`ConsumerName::new`] (or `parse`, `TryFrom`, deserializing), which check
/// them. Cloning it shares the text (no copy).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsumerName(Arc<str>);

impl ConsumerName {
    /// Checks `name` and keeps it. Fails with [`Error::InvalidName`] (kind
    /// `"consumer"`) when it breaks the naming rules.
    pub fn new(name: &str) -> Result<ConsumerName> {
        validate_consumer_name(name)?;
        Ok(ConsumerName(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both share the same text (are clones of one name): then they
    /// are equal, whatever else may be.
    pub(crate) fn same_text(&self, other: &ConsumerName) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for ConsumerName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ConsumerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ConsumerName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ConsumerName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for ConsumerName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for ConsumerName {
    fn eq(&self, other: &String) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<ConsumerName> for str {
    fn eq(&self, other: &ConsumerName) -> bool {
        self == &*other.0
    }
}

impl PartialEq<ConsumerName> for &str {
    fn eq(&self, other: &ConsumerName) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<ConsumerName> for String {
    fn eq(&self, other: &ConsumerName) -> bool {
        self == &*other.0
    }
}

impl fmt::Debug for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ConsumerName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ConsumerName::new(s)
    }
}

impl TryFrom<&str> for ConsumerName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        ConsumerName::new(s)
    }
}

impl TryFrom<String> for ConsumerName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        validate_consumer_name(&s)?;
        Ok(ConsumerName(Arc::from(s)))
    }
}

impl TryFrom<&String> for ConsumerName {
    type Error = Error;
    fn try_from(s: &String) -> Result<Self> {
        ConsumerName::new(s)
    }
}

thread_local! {
    /// The address of the shared text this thread found to be a valid
    /// consumer name last (0: none). Read by every check, so it is a plain
    /// `Cell` with no destructor (a thread-local with one is reached through
    /// a registration check).
    static VALID_CONSUMER_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// That text. The clone held here keeps it alive and shared, so its
    /// address is not reused and the text cannot change (`Arc::get_mut` needs
    /// it unshared): the same address is the same, valid, name.
    static VALID_CONSUMER: std::cell::RefCell<KeptName> =
        const { std::cell::RefCell::new(KeptName { _alive: None }) };
}

/// The text kept by `VALID_CONSUMER`; its address is forgotten with it.
struct KeptName {
    /// Held only to keep it alive and shared.
    _alive: Option<Arc<str>>,
}

impl Drop for KeptName {
    fn drop(&mut self) {
        let _ = VALID_CONSUMER_AT.try_with(|at| at.set(0));
    }
}

/// Checks shared text without copying it; the text this thread checked last
/// (the consumer of the options a worker clones for every acquire) is not
/// checked again.
impl TryFrom<Arc<str>> for ConsumerName {
    type Error = Error;
    #[inline]
    fn try_from(s: Arc<str>) -> Result<Self> {
        let at = Arc::as_ptr(&s) as *const u8 as usize;
        if VALID_CONSUMER_AT.get() != at {
            validate_consumer_name(&s)?;
            // Replacing the kept text forgets its address first.
            let kept = VALID_CONSUMER.try_with(|valid| {
                *valid.borrow_mut() = KeptName {
                    _alive: Some(Arc::clone(&s)),
                };
            });
            if kept.is_ok() {
                VALID_CONSUMER_AT.set(at);
            }
        }
        Ok(ConsumerName(s))
    }
}

impl From<ConsumerName> for Arc<str> {
    fn from(name: ConsumerName) -> Arc<str> {
        name.0
    }
}

impl From<ConsumerName> for String {
    fn from(name: ConsumerName) -> String {
        name.0.to_string()
    }
}

impl Serialize for ConsumerName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConsumerName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        ConsumerName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A name is one Redis argument: its text.
#[cfg(feature = "redis")]
impl redis::ToRedisArgs for PoolName {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.as_str().as_bytes());
    }
}

#[cfg(feature = "redis")]
impl redis::ToSingleRedisArg for PoolName {}

/// A name is one Redis argument: its text.
#[cfg(feature = "redis")]
impl redis::ToRedisArgs for ConsumerName {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.0.as_bytes());
    }
}

#[cfg(feature = "redis")]
impl redis::ToSingleRedisArg for ConsumerName {}

/// The manager's default consumer name, `"default"` (checked by a test).
pub(crate) fn default_consumer() -> ConsumerName {
    static DEFAULT: std::sync::OnceLock<ConsumerName> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| ConsumerName(Arc::from("default")))
        .clone()
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for &str {}
    impl Sealed for String {}
    impl Sealed for &String {}
    impl Sealed for super::PoolName {}
    impl Sealed for &super::PoolName {}
    impl Sealed for super::ConsumerName {}
    impl Sealed for &super::ConsumerName {}
}

/// What the manager's methods take for a pool: a [`PoolName`] (used as it is)
/// or a string (`&str`, `String`, `&String`), checked on the way in, so a bad
/// one fails with [`Error::InvalidName`] before anything is read or written.
pub trait IntoPoolName: sealed::Sealed {
    /// The checked name.
    fn into_pool_name(self) -> Result<PoolName>;
}

impl IntoPoolName for &str {
    #[inline]
    fn into_pool_name(self) -> Result<PoolName> {
        PoolName::new(self)
    }
}

impl IntoPoolName for String {
    fn into_pool_name(self) -> Result<PoolName> {
        PoolName::new(&self)
    }
}

impl IntoPoolName for &String {
    fn into_pool_name(self) -> Result<PoolName> {
        PoolName::new(self)
    }
}

impl IntoPoolName for PoolName {
    fn into_pool_name(self) -> Result<PoolName> {
        Ok(self)
    }
}

impl IntoPoolName for &PoolName {
    fn into_pool_name(self) -> Result<PoolName> {
        Ok(self.clone())
    }
}

/// What takes a consumer: a [`ConsumerName`] (used as it is) or a string,
/// checked on the way in ([`Error::InvalidName`] when bad).
pub trait IntoConsumerName: sealed::Sealed {
    /// The checked name.
    fn into_consumer_name(self) -> Result<ConsumerName>;
}

impl IntoConsumerName for &str {
    fn into_consumer_name(self) -> Result<ConsumerName> {
        ConsumerName::new(self)
    }
}

impl IntoConsumerName for String {
    fn into_consumer_name(self) -> Result<ConsumerName> {
        ConsumerName::try_from(self)
    }
}

impl IntoConsumerName for &String {
    fn into_consumer_name(self) -> Result<ConsumerName> {
        ConsumerName::new(self)
    }
}

impl IntoConsumerName for ConsumerName {
    fn into_consumer_name(self) -> Result<ConsumerName> {
        Ok(self)
    }
}

impl IntoConsumerName for &ConsumerName {
    fn into_consumer_name(self) -> Result<ConsumerName> {
        Ok(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_name_cannot_be_built_by_any_way_in() {
        for bad in ["", "a{b}", "a b", "pöol", &"p".repeat(65)] {
            for err in [
                PoolName::new(bad).err(),
                bad.parse::<PoolName>().err(),
                PoolName::try_from(bad.to_string()).err(),
                bad.into_pool_name().err(),
            ] {
                assert!(
                    matches!(err, Some(Error::InvalidName { kind: "pool", .. })),
                    "{bad:?}: {err:?}"
                );
            }
            let json = serde_json::to_string(bad).expect("a string");
            assert!(serde_json::from_str::<PoolName>(&json).is_err(), "{bad:?}");
            let packed = rmp_serde::to_vec(bad).expect("a string");
            assert!(
                rmp_serde::from_slice::<PoolName>(&packed).is_err(),
                "{bad:?}"
            );
        }
        for bad in ["", " w", "w\t", "a\u{0}b", &"c".repeat(129)] {
            for err in [
                ConsumerName::new(bad).err(),
                ConsumerName::try_from(Arc::<str>::from(bad)).err(),
                bad.into_consumer_name().err(),
            ] {
                assert!(
                    matches!(
                        err,
                        Some(Error::InvalidName {
                            kind: "consumer",
                            ..
                        })
                    ),
                    "{bad:?}: {err:?}"
                );
            }
            let json = serde_json::to_string(bad).expect("a string");
            assert!(
                serde_json::from_str::<ConsumerName>(&json).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_default_consumer_name_is_a_valid_one() {
        assert_eq!(
            ConsumerName::new("default").expect("valid"),
            default_consumer()
        );
    }

    #[test]
    fn a_good_name_reads_back_the_same_and_sorts_and_hashes_as_its_text() {
        let long = "p".repeat(MAX_POOL_NAME_LEN);
        for good in ["p", "latam-residential", "a.b_c-1", long.as_str()] {
            let name = PoolName::new(good).expect("valid");
            assert_eq!(name.as_str(), good);
            assert_eq!(name, good);
            assert_eq!(name.to_string(), good);
            let json = serde_json::to_string(&name).expect("serializes");
            assert_eq!(json, serde_json::to_string(good).expect("a string"));
            assert_eq!(
                serde_json::from_str::<PoolName>(&json).expect("valid"),
                name
            );
        }
        let (a, b) = (PoolName::new("b").unwrap(), PoolName::new("ab").unwrap());
        assert!(b < a, "ordered as text, not by length");
        let mut map = std::collections::HashMap::new();
        map.insert(a.clone(), 1);
        assert_eq!(map.get(&PoolName::new("b").unwrap()), Some(&1));
        let c = ConsumerName::new("worker-1@host a").unwrap();
        assert_eq!(c, "worker-1@host a");
        assert_eq!(c.clone().as_str(), c.as_str());
    }
}
