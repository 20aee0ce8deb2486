//! The crate's one error type.

use std::sync::Arc;

use uuid::Uuid;

/// Everything that can go wrong in `lighthouse-lease`.
///
/// Input errors (`Invalid*`, `*NotFound`, `*AlreadyExists`) are raised before any
/// write: a call that returns one of them changed nothing. [`Error::Backend`] is a
/// storage failure (a lost connection, a timeout); the operation may or may not
/// have taken effect, see [`Error::is_retryable`].
///
/// ```
/// use lighthouse_lease::{Error, ProxyPool};
///
/// let err = ProxyPool::new("bad name{}").unwrap_err();
/// assert!(matches!(err, Error::InvalidName { .. }));
/// assert!(!err.is_retryable());
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A pool or consumer name breaks the naming rules.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What was being named: `"pool"` or `"consumer"`.
        kind: &'static str,
        /// The offending name (truncated to 80 characters).
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A proxy field has an invalid value.
    #[error("invalid proxy field `{field}`: {reason}")]
    InvalidProxy {
        /// The field at fault, for example `"port"`.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The filters are contradictory or out of range.
    #[error("invalid filters: {0}")]
    InvalidFilter(String),
    /// A lease duration is zero or longer than allowed.
    #[error("invalid lease duration {duration:?}: {reason}")]
    InvalidDuration {
        /// The rejected duration.
        duration: std::time::Duration,
        /// Why it was rejected.
        reason: String,
    },
    /// Any other invalid argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No pool has this name.
    #[error("pool {name:?} does not exist")]
    PoolNotFound {
        /// The pool name that was looked up.
        name: String,
    },
    /// A pool with this name already exists.
    #[error("pool {name:?} already exists")]
    PoolAlreadyExists {
        /// The pool name.
        name: String,
    },
    /// No proxy has this id.
    #[error("proxy {id} does not exist")]
    ProxyNotFound {
        /// The proxy id that was looked up.
        id: Uuid,
    },
    /// A proxy with this id already exists.
    #[error("proxy {id} already exists")]
    ProxyAlreadyExists {
        /// The proxy id.
        id: Uuid,
    },
    /// No consumer has this name, and the manager does not register consumers on the fly.
    #[error("consumer {name:?} does not exist (register it with ensure_consumer, or build the manager with auto_register_consumers)")]
    ConsumerNotFound {
        /// The consumer name that was looked up.
        name: String,
    },
    /// The lease is no longer held: it was released, it expired (its slot may
    /// already serve someone else), or no record of it is left.
    #[error("lease {id} is lost: it {reason}")]
    LeaseLost {
        /// The lease.
        id: Uuid,
        /// Why: it was released, it expired, or no record of it is left.
        reason: LostReason,
    },
    /// A fencing token older than one already seen for the same resource.
    #[error("stale fencing token {token}: the resource has seen {highest}")]
    StaleFencingToken {
        /// The token presented.
        token: u64,
        /// The highest token the resource has seen.
        highest: u64,
    },
    /// A lease presented to a [`crate::fencing::FencingGuard::multi_slot`] guard
    /// that had expired by storage time: the guard has seen a lease on the same
    /// proxy granted at or after that expiry, so the storage had passed it, and
    /// the slot may serve someone else.
    #[error(
        "lease with fencing token {token} expired at {expired_at}: the resource has seen a lease granted at {seen_granted_at}"
    )]
    StaleLease {
        /// The presented lease's token.
        token: u64,
        /// The presented lease's expiry (storage time).
        expired_at: chrono::DateTime<chrono::Utc>,
        /// The latest grant the resource has seen on the same proxy (storage time).
        seen_granted_at: chrono::DateTime<chrono::Utc>,
    },
    /// The change was applied on the Redis primary, but fewer replicas than
    /// configured acknowledged it before the timeout (`WAIT`): a failover now could
    /// lose it. For an acquire, retry with the same request id to get the same
    /// lease back instead of a second one.
    #[error("only {acknowledged} of {wanted} replicas acknowledged the change in time")]
    ReplicationShortfall {
        /// Replicas asked for.
        wanted: u32,
        /// Replicas that acknowledged.
        acknowledged: u32,
    },
    /// A pool was written by another storage key layout than this version's
    /// (an older `lighthouse-lease`): this version does not read or change it.
    /// Remove the pool and create it again (its proxies can be exported with
    /// `lighthouse proxy list --json` and imported again), or keep using the
    /// version that wrote it.
    #[error("pool {pool:?} was written by storage layout {found:?}, this version uses layout {expected}: remove the pool and create it again (re-import its proxies), or use the version that wrote it")]
    SchemaMismatch {
        /// The pool.
        pool: String,
        /// The layout found (`"1"` for the first layout, which had no marker).
        found: String,
        /// The layout this version reads and writes.
        expected: u32,
    },
    /// The storage backend failed (connection, timeout, protocol, corrupted state).
    #[error("storage backend error: {message}")]
    Backend {
        /// What kind of failure, so callers and [`Error::is_retryable`] need not
        /// read the message.
        kind: BackendErrorKind,
        /// What failed.
        message: String,
        /// The underlying error, when there is one (shared, so that every caller
        /// of a batched call gets the same error).
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

/// Why a lease is lost ([`Error::LeaseLost`]); every storage says it the same
/// way. Displays as the end of "lease … is lost: it …".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// It was released (by this holder or, with its id, by another process).
    Released,
    /// It expired: its slot may already serve someone else.
    Expired,
    /// No record of it is left (never granted here, its grace is over, or its
    /// proxy or pool was removed).
    Unknown,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LostReason::Released => "was released",
            LostReason::Expired => "expired",
            LostReason::Unknown => "is unknown",
        })
    }
}

/// What kind of storage failure an [`Error::Backend`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The connection failed or broke (I/O, refused, reset, closed).
    Connection,
    /// The storage did not answer in time.
    Timeout,
    /// Redis is loading its dataset after a restart.
    BusyLoading,
    /// Redis is out of memory (`maxmemory` with `noeviction`): writes are refused.
    OutOfMemory,
    /// Redis does not know a script (it is reloaded by itself; seen only when
    /// that failed).
    NoScript,
    /// The server is a read-only replica.
    ReadOnly,
    /// Redis Cluster moved the slot or is reconfiguring (MOVED, ASK, TRYAGAIN,
    /// CLUSTERDOWN).
    Cluster,
    /// The server refused the command for lack of permission (ACL).
    Permission,
    /// The stored state or a reply is not what this version writes.
    Corrupt,
    /// Anything else.
    Other,
}

impl Error {
    /// Builds a [`Error::Backend`] of kind [`BackendErrorKind::Other`] from a
    /// message and an optional cause.
    pub fn backend(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self::backend_of(BackendErrorKind::Other, message, source)
    }

    /// Builds a [`Error::Backend`] of this kind.
    pub fn backend_of(
        kind: BackendErrorKind,
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            kind,
            message: message.into(),
            source: source.map(Arc::from),
        }
    }

    /// The kind of a backend failure; `None` for every other error.
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            Error::Backend { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether trying the same call again may succeed: true for backend failures
    /// that pass (connection, timeout, loading, out of memory, cluster moves...)
    /// and for a replication shortfall; false for bad input, which fails the same
    /// way every time, and for corrupted state and missing permissions.
    ///
    /// The Redis storage has already sent again, within its response timeout,
    /// what was safe to send again (see the `redis` module, "Connections"). An
    /// acquire without a request id that failed this way may still have taken
    /// a lease: retry it with a request id to get that lease back, not a second.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Backend { kind, .. } => !matches!(
                kind,
                BackendErrorKind::Corrupt | BackendErrorKind::Permission
            ),
            Error::ReplicationShortfall { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn invalid_proxy(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidProxy {
            field,
            reason: reason.into(),
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
