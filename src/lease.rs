//! Leases: who holds which proxy, until when.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::names::{ConsumerName, PoolName};
use crate::proxy::ProxyEndpoint;

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseStatus {
    /// Held; counts against the proxy's `max_concurrency` until released or expired.
    Active,
    /// Given back by its holder.
    Released,
    /// Passed its `expires_at` before being released; its slot was given back.
    Expired,
}

impl LeaseStatus {
    /// `active`, `released` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseStatus::Active => "active",
            LeaseStatus::Released => "released",
            LeaseStatus::Expired => "expired",
        }
    }
}

impl fmt::Display for LeaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The right to use one proxy until `expires_at`, with everything needed to use it.
///
/// ```no_run
/// # async fn demo(lease: lighthouse_lease::Lease) {
/// // No second lookup: the lease carries the proxy's connection details.
/// let url = lease.proxy_url();
/// println!("crawl through {url} until {}", lease.expires_at);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Unique id.
    pub id: Uuid,
    /// The leased proxy.
    pub proxy_id: Uuid,
    /// The holder.
    pub consumer_id: Uuid,
    /// The holder's name.
    pub consumer_name: ConsumerName,
    /// The pool the proxy belongs to.
    pub pool_id: Uuid,
    /// The pool's name.
    pub pool_name: PoolName,
    /// Status when this value was produced (a lease returned by acquire is `Active`).
    pub status: LeaseStatus,
    /// When it was granted (storage time).
    pub acquired_at: DateTime<Utc>,
    /// When it lapses unless released first (storage time).
    pub expires_at: DateTime<Utc>,
    /// When it was released, if it was.
    pub released_at: Option<DateTime<Utc>>,
    /// How to connect to the leased proxy (shared with the storage and the
    /// other leases of the proxy: a lease does not copy it).
    pub proxy: Arc<ProxyEndpoint>,
    /// Fencing token: strictly greater than the token of every lease granted
    /// before it on the same proxy. Pass it to the resources you touch so they can
    /// turn away a holder whose lease was lost ([`crate::fencing::FencingGuard`]).
    #[serde(default)]
    pub fencing_token: u64,
}

impl Lease {
    /// The leased proxy's URL, credentials included; see [`ProxyEndpoint::url`].
    pub fn proxy_url(&self) -> String {
        self.proxy.url()
    }

    /// A compact MessagePack form of the lease, to hand it to another process (a
    /// dispatcher leases, a worker uses and releases). It holds the proxy's
    /// credentials: treat it as a secret.
    ///
    /// ```
    /// # use lighthouse_lease::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<()> {
    /// # let m = ProxyManager::new(InMemoryStorage::new());
    /// # let pool = m.storage().create_pool(ProxyPool::new("p")?).await?;
    /// # m.storage().add_proxy(Proxy::builder(pool.id, "1.1.1.1", 80).build()?).await?;
    /// let lease = m.acquire_proxy("p", AcquireOptions::new()).await?.expect("free proxy");
    /// let bytes = lease.to_msgpack()?;          // dispatcher: send these bytes
    /// let received = Lease::from_msgpack(&bytes)?; // worker: use, then release
    /// assert_eq!(received, lease);
    /// assert_eq!(m.release_proxy(&received).await?, ReleaseOutcome::Released);
    /// # Ok(())
    /// # }
    /// ```
    pub fn to_msgpack(&self) -> crate::Result<Vec<u8>> {
        rmp_serde::to_vec(self)
            .map_err(|e| crate::Error::InvalidArgument(format!("cannot encode lease: {e}")))
    }

    /// Reads a lease written by [`Lease::to_msgpack`]. Fails with
    /// [`crate::Error::InvalidArgument`] on bytes that are not such a lease.
    pub fn from_msgpack(bytes: &[u8]) -> crate::Result<Lease> {
        rmp_serde::from_slice(bytes)
            .map_err(|e| crate::Error::InvalidArgument(format!("not a MessagePack lease: {e}")))
    }
}

/// What [`crate::ProxyManager::release_proxy`] found. Releasing is idempotent: only
/// [`ReleaseOutcome::Released`] gave a slot back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReleaseOutcome {
    /// The lease was live and is released now; its slot is free again.
    Released,
    /// It had been released before; nothing changed.
    AlreadyReleased,
    /// It had expired (the holder lost it); its slot was, or is now, given back once,
    /// and the proxy may already serve someone else.
    Expired,
    /// No record of it is left: it expired long ago, its proxy or pool was removed,
    /// or it never existed. Nothing changed.
    NotFound,
}

impl ReleaseOutcome {
    /// `released`, `already_released`, `expired` or `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseOutcome::Released => "released",
            ReleaseOutcome::AlreadyReleased => "already_released",
            ReleaseOutcome::Expired => "expired",
            ReleaseOutcome::NotFound => "not_found",
        }
    }
}

impl fmt::Display for ReleaseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`crate::ProxyManager::rotate_proxy`] did: gave a lease back, then
/// acquired the next proxy, in one storage step where the storage can.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rotation {
    /// How the release of the old lease ended.
    pub released: ReleaseOutcome,
    /// The new lease, or `None` when no matching proxy was free.
    pub next: Option<Lease>,
}

impl Rotation {
    /// A rotation's result.
    pub fn new(released: ReleaseOutcome, next: Option<Lease>) -> Self {
        Rotation { released, next }
    }
}
