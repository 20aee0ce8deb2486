//! Fair waiting across hosts: waiting acquires served in arrival order, fleet-wide.
//!
//! A plain [`crate::ProxyManager::acquire_proxy_wait`] is FIFO only among the
//! waiters of one manager: across managers and hosts, a freed slot goes to
//! whichever waiter's acquire reaches the storage first. A *fair* wait
//! ([`WaitOptions::fair`]) takes a ticket in the pool's queue, kept by the
//! storage ([`crate::LeaseStorage::take_ticket`]): tickets are numbered in the
//! order the storage issued them, and an acquire that carries a ticket may take
//! a proxy only while its ticket is the head of the queue. The check is part of
//! the acquire's one atomic storage step (on Redis, of the acquire script's
//! call), so no host can slip in between the check and the grant.
//!
//! A waiter refreshes its ticket with every attempt (it attempts at least every
//! quarter of [`WaitOptions::ticket_ttl`]). A ticket that nobody refreshed for
//! its TTL is *lapsed*: the next attempt of any fair waiter of the pool drops
//! it, so a waiter that died (a killed process, a lost host) holds the queue
//! back for its ticket's TTL, and at most a quarter of the next waiter's TTL
//! more (until that one attempts again). A waiter that was only slow (a pause
//! longer than its TTL) and attempts again gets its ticket back, in its old
//! place. A waiter that gets a lease, gives up at its timeout or is dropped
//! leaves the queue (the last two best effort: the TTL is the bound when that
//! fails).
//!
//! # What is guaranteed, and what is not
//!
//! - Among fair waiters of a pool, on every host, a grant goes to the oldest
//!   live ticket: a later ticket never takes a proxy while an earlier one is
//!   live, whether or not a proxy it could use is free.
//! - **Strict FIFO, head-of-line blocking included.** The head's filters are
//!   the ones that count: while the head waits for a proxy that matches its
//!   filters, a later waiter whose filters match a freed proxy waits too (for
//!   at most the head's own timeout, after which it leaves the queue). Fair
//!   waiting is for waiters that ask alike; waiters with different needs
//!   should wait in different pools, or not fairly.
//! - **Fair waiters only.** Plain acquires ([`crate::ProxyManager::acquire_proxy`],
//!   retries, rotates) and waits without `fair` do not look at the queue: they
//!   take a free proxy as before, ahead of the queue. Mix them on a pool only
//!   when that is acceptable.
//! - The order is the storage's: on Redis, the order in which ticket calls
//!   reached Redis (numbers are the later of the last ticket plus one and
//!   Redis's clock in microseconds, so a pool created again never reuses one).
//!   Two waiters that start at the same instant on two hosts are ordered by
//!   whichever reached Redis first.
//! - A storage that keeps no queue ([`crate::LeaseStorage::take_ticket`]'s
//!   default) serves a fair wait as a plain one.
//!
//! Cost: a notification (a release, say) wakes every fair waiter of the pool,
//! and each attempts once; only the head can be served. Plain waiters of one
//! manager leave that to their oldest.
//!
//! ```
//! use std::time::Duration;
//! use lighthouse_lease::{AcquireOptions, WaitOptions};
//! # async fn demo(manager: lighthouse_lease::ProxyManager<lighthouse_lease::InMemoryStorage>)
//! #     -> lighthouse_lease::Result<()> {
//! let wait = WaitOptions::new(Duration::from_secs(30))
//!     .fair(true)
//!     .ticket_ttl(Duration::from_secs(5)); // a dead waiter blocks the queue 5 s at most
//! let lease = manager
//!     .acquire_proxy_wait("latam-residential", AcquireOptions::new(), wait)
//!     .await?; // Ok(None) if its turn did not come within 30 s
//! # let _ = lease;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::names::PoolName;
use crate::storage::Storage;

/// How long a storage honours a ticket that is not refreshed, by default.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(5);
/// The shortest [`WaitOptions::ticket_ttl`] accepted.
pub const MIN_TICKET_TTL: Duration = Duration::from_millis(100);
/// The longest [`WaitOptions::ticket_ttl`] accepted.
pub const MAX_TICKET_TTL: Duration = Duration::from_secs(3600);

/// Checks a ticket TTL: from [`MIN_TICKET_TTL`] to [`MAX_TICKET_TTL`].
pub fn validate_ticket_ttl(ttl: Duration) -> Result<()> {
    if !(MIN_TICKET_TTL..=MAX_TICKET_TTL).contains(&ttl) {
        return Err(Error::InvalidDuration {
            duration: ttl,
            reason: format!(
                "a wait ticket's TTL must be {} ms to {} s",
                MIN_TICKET_TTL.as_millis(),
                MAX_TICKET_TTL.as_secs()
            ),
        });
    }
    Ok(())
}

/// How [`crate::ProxyManager::acquire_proxy_wait`] waits: how long, and
/// whether in the pool's fleet-wide queue. A [`Duration`] converts into one
/// (a plain wait of that long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
#[non_exhaustive]
pub struct WaitOptions {
    /// How long to wait for a proxy before giving up with `Ok(None)`.
    pub timeout: Duration,
    /// Wait in the pool's queue, served in ticket order with the fair waiters
    /// of every host (see the [module docs](self)); `false` (the default):
    /// FIFO within this manager only.
    pub fair: bool,
    /// How long the storage honours this waiter's ticket without a refresh:
    /// the longest a dead waiter holds the queue back. The waiter refreshes it
    /// at least every quarter of it. Default [`DEFAULT_TICKET_TTL`].
    pub ticket_ttl: Duration,
}

impl WaitOptions {
    /// A plain wait of up to `timeout`.
    pub fn new(timeout: Duration) -> Self {
        WaitOptions {
            timeout,
            fair: false,
            ticket_ttl: DEFAULT_TICKET_TTL,
        }
    }

    /// Waits in the pool's fleet-wide queue (`true`), or FIFO within this
    /// manager only (`false`, the default).
    pub fn fair(mut self, yes: bool) -> Self {
        self.fair = yes;
        self
    }

    /// How long the storage honours the ticket without a refresh
    /// ([`MIN_TICKET_TTL`] to [`MAX_TICKET_TTL`]).
    pub fn ticket_ttl(mut self, ttl: Duration) -> Self {
        self.ticket_ttl = ttl;
        self
    }

    /// Checks the ticket TTL (the timeout may be anything; zero tries once).
    pub fn validate(&self) -> Result<()> {
        validate_ticket_ttl(self.ticket_ttl)
    }

    /// How often a fair waiter attempts at least, so that its ticket never
    /// lapses while it lives: a quarter of the TTL.
    pub(crate) fn refresh_every(&self) -> Duration {
        self.ticket_ttl / 4
    }
}

impl From<Duration> for WaitOptions {
    fn from(timeout: Duration) -> Self {
        WaitOptions::new(timeout)
    }
}

/// A fair waiter's place in a pool's queue, as the storage issued it
/// ([`crate::LeaseStorage::take_ticket`]). An acquire that carries it
/// ([`crate::AcquireRequest::ticket`]) refreshes it, and takes a proxy only
/// while it is the head of the queue. Shared, not copied, when cloned: a
/// request that carries none stays one pointer larger, no more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WaitTicket(Arc<Ticket>);

#[derive(Debug, PartialEq, Eq, Hash)]
struct Ticket {
    pool_name: PoolName,
    number: u64,
    ttl: Duration,
}

impl WaitTicket {
    /// A ticket numbered `number` in `pool_name`'s queue, honoured `ttl` after
    /// each refresh. Storages make them; the manager only carries them.
    pub fn new(pool_name: PoolName, number: u64, ttl: Duration) -> Self {
        WaitTicket(Arc::new(Ticket {
            pool_name,
            number,
            ttl,
        }))
    }

    /// The pool whose queue it is in.
    pub fn pool_name(&self) -> &PoolName {
        &self.0.pool_name
    }

    /// Its number: the queue is in increasing number order.
    pub fn number(&self) -> u64 {
        self.0.number
    }

    /// How long it is honoured after each refresh.
    pub fn ttl(&self) -> Duration {
        self.0.ttl
    }

    /// Checks it against the pool of the request it rides with.
    pub(crate) fn validate_for(&self, pool_name: &PoolName) -> Result<()> {
        if self.pool_name() != pool_name {
            return Err(Error::InvalidArgument(format!(
                "a wait ticket of pool {} cannot be used on pool {pool_name}",
                self.pool_name()
            )));
        }
        if self.number() == 0 || self.number() > MAX_TICKET {
            return Err(Error::InvalidArgument(format!(
                "wait ticket number {} is out of range",
                self.number()
            )));
        }
        validate_ticket_ttl(self.ttl())
    }
}

/// Ticket numbers stay below 2^53 (they are Lua numbers in the Redis scripts).
pub const MAX_TICKET: u64 = (1 << 53) - 1;

/// A ticket in a pool's queue, as [`crate::LeaseStorage::wait_tickets`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueuedTicket {
    /// Its number (the queue is in increasing number order).
    pub number: u64,
    /// When it lapses unless its waiter refreshes it first.
    pub honoured_until: DateTime<Utc>,
}

impl QueuedTicket {
    /// A ticket numbered `number`, honoured until `honoured_until`.
    pub fn new(number: u64, honoured_until: DateTime<Utc>) -> Self {
        QueuedTicket {
            number,
            honoured_until,
        }
    }
}

/// A ticket the manager holds while it waits: handed back to the storage when
/// the wait ends without a lease (the grant itself takes it out of the queue).
/// Dropped while armed (the wait's future was dropped, or an attempt failed),
/// it leaves the queue from a task spawned on the current runtime; where that
/// cannot run, the ticket lapses at its TTL.
pub(crate) struct TicketHold<S: Storage> {
    storage: Arc<S>,
    ticket: Option<WaitTicket>,
}

impl<S: Storage> TicketHold<S> {
    pub(crate) fn new(storage: Arc<S>, ticket: WaitTicket) -> Self {
        TicketHold {
            storage,
            ticket: Some(ticket),
        }
    }

    /// The ticket was used up by a grant: nothing to hand back.
    pub(crate) fn served(mut self) {
        self.ticket = None;
    }

    /// Leaves the queue now (best effort: a failure leaves the ticket to lapse).
    pub(crate) async fn leave(mut self) {
        if let Some(ticket) = self.ticket.take() {
            let _ = self.storage.drop_ticket(&ticket).await;
        }
    }
}

impl<S: Storage> Drop for TicketHold<S> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let storage = Arc::clone(&self.storage);
                handle.spawn(async move {
                    let _ = storage.drop_ticket(&ticket).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_ttls_are_checked_and_waits_convert_from_durations() {
        assert!(WaitOptions::new(Duration::from_secs(1)).validate().is_ok());
        assert!(WaitOptions::new(Duration::ZERO)
            .ticket_ttl(Duration::from_millis(99))
            .validate()
            .is_err());
        assert!(WaitOptions::new(Duration::ZERO)
            .ticket_ttl(Duration::from_secs(3601))
            .validate()
            .is_err());
        let w: WaitOptions = Duration::from_secs(3).into();
        assert_eq!(w.timeout, Duration::from_secs(3));
        assert!(!w.fair);
        assert_eq!(w.refresh_every(), DEFAULT_TICKET_TTL / 4);
    }

    #[test]
    fn a_ticket_rides_only_with_requests_of_its_pool() {
        let a = PoolName::new("a").unwrap();
        let b = PoolName::new("b").unwrap();
        let t = WaitTicket::new(a.clone(), 7, DEFAULT_TICKET_TTL);
        assert!(t.validate_for(&a).is_ok());
        assert!(matches!(t.validate_for(&b), Err(Error::InvalidArgument(_))));
        let zero = WaitTicket::new(a.clone(), 0, DEFAULT_TICKET_TTL);
        assert!(zero.validate_for(&a).is_err());
    }
}
