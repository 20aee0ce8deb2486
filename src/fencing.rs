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
//! # let proxy = uuid::Uuid::new_v4();
//! let guard = FencingGuard::new();
//! guard.check(proxy, 10)?;          // a holder with token 10 writes
//! guard.check(proxy, 12)?;          // the next holder
//! assert!(guard.check(proxy, 10).is_err()); // the first one woke up: refused
//! # Ok::<(), lighthouse_lease::Error>(())
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::lease::Lease;

/// Remembers the highest fencing token seen per resource (for example per proxy)
/// and refuses older ones. Thread-safe; share it with an `Arc`.
#[derive(Debug, Default)]
pub struct FencingGuard {
    highest: Mutex<HashMap<Uuid, u64>>,
}

impl FencingGuard {
    /// A guard that has seen no token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` for `resource` if it is at least the highest seen (and
    /// remembers it), else fails with [`Error::StaleFencingToken`].
    pub fn check(&self, resource: Uuid, token: u64) -> Result<()> {
        let mut map = self.highest.lock().unwrap_or_else(PoisonError::into_inner);
        let highest = map.entry(resource).or_insert(0);
        if token < *highest {
            return Err(Error::StaleFencingToken {
                token,
                highest: *highest,
            });
        }
        *highest = token;
        Ok(())
    }

    /// [`FencingGuard::check`] with the lease's proxy and token.
    pub fn check_lease(&self, lease: &Lease) -> Result<()> {
        self.check(lease.proxy_id, lease.fencing_token)
    }

    /// The highest token seen for `resource`, if any.
    pub fn highest(&self, resource: Uuid) -> Option<u64> {
        self.highest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&resource)
            .copied()
    }
}
