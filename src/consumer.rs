//! Consumers: the workers that hold leases.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
use crate::names::validate_consumer_name;

/// A named lease holder, such as `worker-1`.
///
/// ```
/// use lighthouse_lease::Consumer;
/// let c = Consumer::new("worker-1")?;
/// assert_eq!(c.name, "worker-1");
/// # Ok::<(), lighthouse_lease::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// Unique id.
    pub id: Uuid,
    /// Unique name, see [`crate::names`] for the rules.
    pub name: String,
}

impl Consumer {
    /// A new consumer with a fresh id. Fails when the name breaks the naming rules.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        validate_consumer_name(&name)?;
        Ok(Consumer {
            id: Uuid::new_v4(),
            name,
        })
    }
}
