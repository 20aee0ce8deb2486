//! Fencing tokens: how a resource turns away a holder whose lease was lost.
//!
//! Every lease carries a [`crate::Lease::fencing_token`] that is strictly greater
//! than the token of every lease granted before it on the same proxy (tokens come
//! from one counter per pool, with the storage's clock in microseconds as a floor).
//! A holder that paused past its expiry (a GC pause, a stopped VM) still believes
//! it holds the proxy, while the storage has handed it to someone else with a
//! higher token. A resource that remembers the highest token it has seen for a
//! proxy, and refuses lower ones, is safe from such a holder.
//!
//! # Proxies with `max_concurrency` above 1
//!
//! A token orders *grants*; it does not name a slot. On a proxy that admits
//! several holders at once, a live holder's token is routinely lower than a
//! newer live holder's, so the highest-token rule of [`FencingGuard::new`]
//! would turn away holders that are perfectly live. For such proxies use
//! [`FencingGuard::multi_slot`]: it refuses a lease that is *known expired by
//! storage time*, that is, whose expiry is not after the grant time
//! ([`crate::Lease::acquired_at`], storage time) of a lease on the same proxy it
//! has already seen. That is exactly when a stale holder can overlap the
//! holders the storage counted: the storage gives a slot away again only at or
//! after the lost lease's expiry, so the grant that could over-use the proxy is
//! stamped at or after it, and the stale holder is refused from the moment the
//! resource sees that grant. Holders present their lease as last renewed
//! ([`crate::RenewingLease::lease`]): a renewal moves the expiry on. What it does
//! not catch, and the exclusive guard does: a holder that keeps using a lease it
//! released itself before its expiry (a bug in the holder, not a pause).
//!
//! | proxy's `max_concurrency` | guard | refuses |
//! |---|---|---|
//! | 1 | [`FencingGuard::new`] | any token below the highest seen |
//! | above 1 | [`FencingGuard::multi_slot`] | a lease whose expiry is not after the latest grant seen |
//! | unlimited | none needed | nothing to fence: the storage admits every holder |
//!
//! # Guarantees and limits
//!
//! - Tokens never repeat and only grow for a given proxy: across releases,
//!   expiries, sweeps, and (Redis) across a restart with persistence (AOF or RDB
//!   with the last write saved). Without persistence, or after a pool is removed
//!   and created again, the storage-time floor keeps them growing as long as the
//!   Redis clock does not go back.
//! - Tokens only help resources that check them. The proxy itself does not; use
//!   them for what your workers write (a results table, a queue, a ledger).
//! - After a Redis failover, a replica that missed the last writes can grant a
//!   lease again with a token it never saw; the time floor still makes it larger
//!   than tokens granted more than the replication lag earlier.
//!
//! ```
//! use lighthouse_lease::fencing::FencingGuard;
//! // Exclusive proxies (max_concurrency 1): the highest token wins.
//! # let proxy = uuid::Uuid::new_v4();
//! let guard = FencingGuard::new();
//! guard.check(proxy, 10)?;          // a holder with token 10 writes
//! guard.check(proxy, 12)?;          // the next holder
//! assert!(guard.check(proxy, 10).is_err()); // the first one woke up: refused
//! # Ok::<(), lighthouse_lease::Error>(())
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::lease::Lease;

/// Which rule [`FencingGuard::check_lease`] applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Rule {
    /// One holder per proxy: the highest token wins.
    #[default]
    Exclusive,
    /// Several holders per proxy: a lease known expired by storage time loses.
    MultiSlot,
}

/// What a guard remembers of one resource.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// The highest token seen.
    highest: u64,
    /// The latest grant time seen (storage time), multi-slot rule only.
    latest_grant: Option<DateTime<Utc>>,
}

/// Remembers, per resource (for example per proxy), what it has seen of the
/// leases presented to it, and refuses the holders that lost theirs.
/// Thread-safe; share it with an `Arc`.
///
/// [`FencingGuard::new`] is for proxies with `max_concurrency` 1 (highest token
/// wins); [`FencingGuard::multi_slot`] for proxies that admit several holders at
/// once (see the [module docs](self)).
#[derive(Debug, Default)]
pub struct FencingGuard {
    rule: Rule,
    seen: Mutex<HashMap<Uuid, Seen>>,
}

impl FencingGuard {
    /// A guard for exclusive proxies (`max_concurrency` 1): it accepts a token at
    /// least as high as any seen for the resource, and refuses lower ones.
    pub fn new() -> Self {
        Self::default()
    }

    /// A guard for proxies with `max_concurrency` above 1: [`Self::check_lease`]
    /// accepts every live holder, concurrent ones included, and refuses a lease
    /// whose expiry is not after the latest grant seen on the same proxy (it had
    /// expired by storage time, and its slot may serve someone else).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use lighthouse_lease::*;
    /// # use lighthouse_lease::fencing::FencingGuard;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<()> {
    /// let clock = ManualClock::new();
    /// let manager = ProxyManager::new(InMemoryStorage::with_clock(clock.clone()));
    /// let pool = manager.storage().create_pool(ProxyPool::new("p")?).await?;
    /// let proxy = Proxy::builder(pool.id, "10.0.0.1", 8080).max_concurrency(2).build()?;
    /// manager.storage().add_proxy(proxy).await?;
    ///
    /// let resource = FencingGuard::multi_slot();
    /// let short = AcquireOptions::new().duration(Duration::from_secs(10));
    /// let long = AcquireOptions::new().duration(Duration::from_secs(60));
    /// let a = manager.acquire_proxy("p", short.clone()).await?.expect("a slot");
    /// let b = manager.acquire_proxy("p", long).await?.expect("the other slot");
    /// resource.check_lease(&b)?;
    /// resource.check_lease(&a)?; // a lower token, yet live: accepted
    ///
    /// clock.advance(Duration::from_secs(11)); // `a` expires while its holder sleeps
    /// let c = manager.acquire_proxy("p", short).await?.expect("a's slot again");
    /// resource.check_lease(&c)?;
    /// assert!(resource.check_lease(&a).is_err()); // the sleeper wakes: refused
    /// resource.check_lease(&b)?; // still live
    /// # Ok(())
    /// # }
    /// ```
    pub fn multi_slot() -> Self {
        FencingGuard {
            rule: Rule::MultiSlot,
            seen: Mutex::default(),
        }
    }

    /// Accepts `token` for `resource` if it is at least the highest seen (and
    /// remembers it), else fails with [`Error::StaleFencingToken`]. This is the
    /// exclusive rule whatever the guard was made for: a multi-slot resource
    /// checks whole leases with [`Self::check_lease`].
    pub fn check(&self, resource: Uuid, token: u64) -> Result<()> {
        let mut map = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = map.entry(resource).or_default();
        if token < seen.highest {
            return Err(Error::StaleFencingToken {
                token,
                highest: seen.highest,
            });
        }
        seen.highest = token;
        Ok(())
    }

    /// Checks a lease presented for its proxy with the guard's rule: the
    /// highest token ([`Self::new`], fails with [`Error::StaleFencingToken`]) or
    /// known expiry ([`Self::multi_slot`], fails with [`Error::StaleLease`]).
    pub fn check_lease(&self, lease: &Lease) -> Result<()> {
        match self.rule {
            Rule::Exclusive => self.check(lease.proxy_id, lease.fencing_token),
            Rule::MultiSlot => self.check_window(
                lease.proxy_id,
                lease.fencing_token,
                lease.acquired_at,
                lease.expires_at,
            ),
        }
    }

    /// The multi-slot rule on a lease's parts (storage times): refuses the lease
    /// when `expires_at` is not after the latest grant seen for `resource`, else
    /// remembers `acquired_at` as a grant and accepts.
    pub fn check_window(
        &self,
        resource: Uuid,
        token: u64,
        acquired_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut map = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = map.entry(resource).or_default();
        if let Some(latest) = seen.latest_grant {
            if expires_at <= latest {
                return Err(Error::StaleLease {
                    token,
                    expired_at: expires_at,
                    seen_granted_at: latest,
                });
            }
        }
        if seen.latest_grant.is_none_or(|latest| acquired_at > latest) {
            seen.latest_grant = Some(acquired_at);
        }
        seen.highest = seen.highest.max(token);
        Ok(())
    }

    /// The highest token seen for `resource`, if any.
    pub fn highest(&self, resource: Uuid) -> Option<u64> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&resource)
            .map(|seen| seen.highest)
    }
}
