//! Redis failures as [`Error`]s with a [`BackendErrorKind`], decided from
//! redis-rs's error kinds and codes, never from message text.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::{BackendErrorKind, Error};

/// The kind of a redis-rs error.
pub(crate) fn kind_of(e: &RedisError) -> BackendErrorKind {
    if e.is_timeout() {
        return BackendErrorKind::Timeout;
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return BackendErrorKind::Connection;
    }
    if e.code() == Some("OOM") {
        return BackendErrorKind::OutOfMemory;
    }
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::BusyLoading) => BackendErrorKind::BusyLoading,
        ErrorKind::Server(ServerErrorKind::NoScript) => BackendErrorKind::NoScript,
        ErrorKind::Server(ServerErrorKind::ReadOnly) => BackendErrorKind::ReadOnly,
        ErrorKind::Server(
            ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::CrossSlot,
        )
        | ErrorKind::ClusterConnectionNotFound => BackendErrorKind::Cluster,
        ErrorKind::Server(ServerErrorKind::NoPerm) | ErrorKind::AuthenticationFailed => {
            BackendErrorKind::Permission
        }
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendErrorKind::Corrupt,
        ErrorKind::Io => BackendErrorKind::Connection,
        _ => BackendErrorKind::Other,
    }
}

/// Wraps a redis-rs error: `Redis: <what>: <error>`, with its kind.
pub(crate) fn redis_err(what: &'static str) -> impl FnOnce(RedisError) -> Error {
    move |e| {
        let kind = kind_of(&e);
        Error::backend_of(kind, format!("Redis: {what}: {e}"), Some(Box::new(e)))
    }
}

/// Wraps any other failure of the Redis layer.
pub(crate) fn backend<E>(what: &'static str) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| Error::backend(format!("Redis: {what}: {e}"), Some(Box::new(e)))
}

/// State or a reply that is not what this version writes.
pub(crate) fn corrupt(what: impl Into<String>) -> Error {
    Error::backend_of(
        BackendErrorKind::Corrupt,
        format!("corrupted Redis state: {}", what.into()),
        None,
    )
}
