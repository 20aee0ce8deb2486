//! Site-scoped cooldowns and bans: a proxy that one site blocks is rested for
//! that site only.
//!
//! A crawler that hits many sites learns that `shop.example` answers 403 to a
//! proxy which every other site still serves. [`crate::ProxyManager::report_site_failure`]
//! counts failures of a proxy *for one site*: each failure in a row rests the
//! proxy for that site for the manager's [`crate::CooldownPolicy`] delay (the
//! same rule as [`crate::ProxyManager::report_failure`]), and at the policy's
//! `ban_after` failures in a row bans it for that site until a success is
//! reported ([`crate::ProxyManager::report_site_success`]). An acquire that
//! names its site ([`crate::AcquireOptions::site`]) skips the proxies resting or
//! banned for it; acquires for other sites, and acquires that name none, still
//! get them. The state of every storage's managers is shared (on Redis, one
//! hash per site, read inside the acquire's one atomic script).
//!
//! A site's state is forgotten [`SITE_MEMORY`] after the last report about it
//! (bans included), so sites a fleet stopped crawling cost nothing.
//!
//! Cost: an acquire with a site takes the general path and reads the site's
//! state for the candidates it looks at (on Redis one `HMGET` per batch of up
//! to 32 candidates), so it stays flat in pool size while few of the proxies
//! it would pick are blocked for the site; with k blocked proxies ahead of the
//! first usable one in the selector's order, it reads about k more entries. An
//! acquire without a site pays nothing for sites.
//!
//! ```
//! # use lighthouse_lease::{AcquireOptions, InMemoryStorage, ProxyManager, Proxy, ProxyPool, AdminStorage};
//! # async fn demo() -> lighthouse_lease::Result<()> {
//! let manager = ProxyManager::new(InMemoryStorage::new());
//! let pool = manager.storage().create_pool(ProxyPool::new("web")?).await?;
//! let p = Proxy::builder(pool.id, "10.0.0.1", 8080).max_concurrency(4).build()?;
//! manager.storage().add_proxy(p).await?;
//! let lease = manager.acquire_proxy("web", AcquireOptions::new()).await?.expect("a proxy");
//! manager.report_site_failure(&lease, "shop.example", "403").await?;
//! let shop = AcquireOptions::new().site("shop.example");
//! assert!(manager.acquire_proxy("web", shop).await?.is_none(), "rested for shop.example");
//! let news = AcquireOptions::new().site("news.example");
//! assert!(manager.acquire_proxy("web", news).await?.is_some(), "still good for news.example");
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest site name accepted, in bytes (a DNS name's length).
pub const MAX_SITE_LEN: usize = 253;

/// How long a site's cooldowns, bans and failure counts are kept after the
/// last report about that site.
pub const SITE_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A site name, checked and lower-cased: 1 to [`MAX_SITE_LEN`] printable ASCII
/// bytes without spaces (`shop.example`, `api.example:8443`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site(String);

impl Site {
    /// Checks and lower-cases a site name ([`Error::InvalidArgument`] when bad).
    ///
    /// ```
    /// use lighthouse_lease::site::Site;
    /// assert_eq!(Site::new("Shop.Example")?.as_str(), "shop.example");
    /// assert!(Site::new("").is_err());
    /// assert!(Site::new("two words").is_err());
    /// # Ok::<(), lighthouse_lease::Error>(())
    /// ```
    pub fn new(name: impl AsRef<str>) -> Result<Site> {
        let name = name.as_ref();
        if name.is_empty()
            || name.len() > MAX_SITE_LEN
            || !name.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::InvalidArgument(format!(
                "site must be 1 to {MAX_SITE_LEN} printable ASCII bytes without spaces"
            )));
        }
        Ok(Site(name.to_ascii_lowercase()))
    }

    /// The name, lower-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Site {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A proxy's standing with one site, as a report returns it and
/// [`crate::LeaseStorage::site_standings`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SiteStanding {
    /// The proxy.
    pub proxy_id: Uuid,
    /// Failures with the site in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Resting for the site until then (storage time); `None` when not resting.
    pub cooldown_until: Option<DateTime<Utc>>,
    /// Banned for the site until a success is reported.
    pub banned: bool,
    /// The last failure's reason, while failures are counted.
    pub last_failure: Option<String>,
}

impl SiteStanding {
    /// A standing.
    pub fn new(
        proxy_id: Uuid,
        consecutive_failures: u32,
        cooldown_until: Option<DateTime<Utc>>,
        banned: bool,
        last_failure: Option<String>,
    ) -> Self {
        SiteStanding {
            proxy_id,
            consecutive_failures,
            cooldown_until,
            banned,
            last_failure,
        }
    }

    /// A proxy with nothing counted against it for the site.
    pub fn clear(proxy_id: Uuid) -> Self {
        SiteStanding::new(proxy_id, 0, None, false, None)
    }

    /// Whether an acquire for the site skips the proxy at `now`.
    pub fn blocks(&self, now: DateTime<Utc>) -> bool {
        self.banned || self.cooldown_until.is_some_and(|t| t > now)
    }
}
