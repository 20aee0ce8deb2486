//! Consumers: the workers that hold leases.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
use crate::names::{ConsumerName, IntoConsumerName};

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
    pub name: ConsumerName,
}

impl Consumer {
    /// A new consumer with a fresh id. Fails with [`crate::Error::InvalidName`]
    /// when the name breaks the naming rules.
    pub fn new(name: impl IntoConsumerName) -> Result<Self> {
        Ok(Consumer {
            id: Uuid::new_v4(),
            name: name.into_consumer_name()?,
        })
    }
}
