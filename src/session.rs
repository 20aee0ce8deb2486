//! Sticky sessions: a name under which acquires keep getting the same proxy.
//!
//! A crawler that logs in, fills a cart or walks a paginated listing wants its
//! requests to leave from one address. An acquire with a session
//! ([`crate::AcquireOptions::session`]) gets the proxy its session had last,
//! whenever that proxy can serve it (active, not cooling down, a free slot, and
//! matching the acquire's filters); otherwise the storage picks one as usual
//! and the session moves there. The binding lives [`StickySession::ttl`] after
//! the last acquire in the session (by default the lease's duration), on the
//! storage's clock, and is shared by every manager of the storage: on Redis
//! the check and the move are part of the acquire's one atomic script, so two
//! hosts acquiring in one session never see it in two places at once.
//!
//! Reporting a failure of the session's proxy (a 403 or a 429, say) cools it
//! down; the next acquire in the session then moves to another proxy.
//!
//! A pool that never sees a session pays nothing for them: an acquire without
//! one runs exactly the same storage steps as before sessions existed.
//!
//! ```
//! # use lighthouse_lease::{AcquireOptions, InMemoryStorage, ProxyManager, Proxy, ProxyPool, AdminStorage};
//! # async fn demo() -> lighthouse_lease::Result<()> {
//! let manager = ProxyManager::new(InMemoryStorage::new());
//! let pool = manager.storage().create_pool(ProxyPool::new("shop")?).await?;
//! for i in 1..=3 {
//!     let p = Proxy::builder(pool.id, format!("10.0.0.{i}"), 8080).max_concurrency(4).build()?;
//!     manager.storage().add_proxy(p).await?;
//! }
//! let cart = AcquireOptions::new().session("cart-42");
//! let first = manager.acquire_proxy("shop", cart.clone()).await?.expect("a proxy");
//! let again = manager.acquire_proxy("shop", cart).await?.expect("a proxy");
//! assert_eq!(first.proxy_id, again.proxy_id, "the session kept its proxy");
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::limits::MAX_LEASE_DURATION;

/// Longest [`StickySession::id`] accepted, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A sticky session of an acquire: its name, and how long it keeps its proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct StickySession {
    /// The session's name, unique within a pool: 1 to [`MAX_SESSION_ID_LEN`]
    /// bytes without control characters.
    pub id: String,
    /// How long after an acquire in the session its proxy stays bound to it;
    /// `None` is the lease's duration. At most the longest lease (7 days).
    pub ttl: Option<Duration>,
}

impl StickySession {
    /// A session named `id` that keeps its proxy as long as its last lease lasts.
    pub fn new(id: impl Into<String>) -> Self {
        StickySession {
            id: id.into(),
            ttl: None,
        }
    }

    /// Keeps the session's proxy bound this long after each acquire in it.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long the binding lasts after an acquire whose lease lasts `lease`.
    pub fn ttl_for(&self, lease: Duration) -> Duration {
        self.ttl.unwrap_or(lease)
    }

    /// Checks the name and the TTL ([`Error::InvalidArgument`] when bad).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lighthouse_lease::session::StickySession;
    /// assert!(StickySession::new("cart-42").validate().is_ok());
    /// assert!(StickySession::new("").validate().is_err());
    /// assert!(StickySession::new("a\nb").validate().is_err());
    /// assert!(StickySession::new("s").with_ttl(Duration::ZERO).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let id = &self.id;
        if id.is_empty() || id.len() > MAX_SESSION_ID_LEN || id.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "session id must be 1 to {MAX_SESSION_ID_LEN} bytes without control characters"
            )));
        }
        if let Some(ttl) = self.ttl {
            if ttl < Duration::from_millis(1) || ttl > MAX_LEASE_DURATION {
                return Err(Error::InvalidArgument(
                    "session ttl must be 1 ms to 7 days".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The proxy a sticky session keeps, as [`crate::LeaseStorage::session`]
/// reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionBinding {
    /// The proxy the session's next acquire gets, when it can serve it.
    pub proxy_id: Uuid,
    /// When the session ends unless an acquire in it renews it (storage time).
    pub until: DateTime<Utc>,
}

impl SessionBinding {
    /// A binding of the proxy `proxy_id` until `until`.
    pub fn new(proxy_id: Uuid, until: DateTime<Utc>) -> Self {
        SessionBinding { proxy_id, until }
    }
}

impl From<&str> for StickySession {
    fn from(id: &str) -> Self {
        StickySession::new(id)
    }
}

impl From<String> for StickySession {
    fn from(id: String) -> Self {
        StickySession::new(id)
    }
}
