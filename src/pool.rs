//! Proxy pools.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::names::validate_pool_name;

/// Longest pool description accepted, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// A named group of proxies that workers lease from, such as `latam-residential`.
///
/// ```
/// use lighthouse_lease::ProxyPool;
///
/// let pool = ProxyPool::new("latam-residential")?.with_description("LATAM residential IPs");
/// assert_eq!(pool.name, "latam-residential");
/// # Ok::<(), lighthouse_lease::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyPool {
    /// Unique id.
    pub id: Uuid,
    /// Unique name, see [`crate::names`] for the rules.
    pub name: String,
    /// Free text for humans.
    pub description: Option<String>,
}

impl ProxyPool {
    /// A new pool with a fresh id. Fails when the name breaks the naming rules.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let pool = ProxyPool {
            id: Uuid::new_v4(),
            name: name.into(),
            description: None,
        };
        pool.validate()?;
        Ok(pool)
    }

    /// Sets the description.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Checks every field; storages call it before they write.
    pub fn validate(&self) -> Result<()> {
        validate_pool_name(&self.name)?;
        if let Some(d) = &self.description {
            if d.len() > MAX_DESCRIPTION_LEN {
                return Err(Error::InvalidArgument(format!(
                    "pool description is longer than {MAX_DESCRIPTION_LEN} bytes"
                )));
            }
        }
        Ok(())
    }
}
