//! Naming rules for pools and consumers.
//!
//! Pool names become part of storage keys (in Redis, the hash tag
//! `<namespace>:{<pool>}:...`), so they are restricted to a small, readable
//! alphabet that can never move a hash tag or make two pools share a key:
//! ASCII letters, digits, `-`, `_` and `.`, 1 to [`MAX_POOL_NAME_LEN`] bytes.
//!
//! Consumer names are stored as values, never as key parts, so they are looser:
//! 1 to [`MAX_CONSUMER_NAME_LEN`] bytes of printable text without control characters
//! and without leading or trailing white space.

use crate::error::{Error, Result};

/// Longest pool name accepted, in bytes.
pub const MAX_POOL_NAME_LEN: usize = 64;
/// Longest consumer name accepted, in bytes.
pub const MAX_CONSUMER_NAME_LEN: usize = 128;

fn shown(name: &str) -> String {
    name.chars().take(80).collect()
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
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
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
    if name.chars().any(char::is_control) {
        return Err(fail("it contains a control character"));
    }
    if name.trim() != name {
        return Err(fail("it starts or ends with white space"));
    }
    Ok(())
}
