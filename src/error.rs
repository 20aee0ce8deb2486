//! The crate's one error type.

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
#[derive(Debug, thiserror::Error)]
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
        /// `"was released"`, `"expired"` or `"is unknown"`.
        reason: &'static str,
    },
    /// A fencing token older than one already seen for the same resource.
    #[error("stale fencing token {token}: the resource has seen {highest}")]
    StaleFencingToken {
        /// The token presented.
        token: u64,
        /// The highest token the resource has seen.
        highest: u64,
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
    /// The storage backend failed (connection, timeout, protocol, corrupted state).
    #[error("storage backend error: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl Error {
    /// Builds a [`Error::Backend`] from a message and an optional cause.
    pub fn backend(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            message: message.into(),
            source,
        }
    }

    /// Whether trying the same call again may succeed: true for backend failures,
    /// false for bad input, which will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Backend { .. } | Error::ReplicationShortfall { .. }
        )
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
