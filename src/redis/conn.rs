//! Connections: a few multiplexed connections shared by every call.
//!
//! deadpool-redis creates the connections (with the configured connect and
//! wait timeouts); the storage then keeps `pool_size` of them and spreads calls
//! over them round-robin. A multiplexed connection carries any number of
//! concurrent requests, so callers never wait for a free connection and no call
//! pays for the pool's health-check `PING`. A connection that fails with an I/O
//! error, a timeout or a dropped link is discarded, and the next call on its slot
//! opens a fresh one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use deadpool_redis::Pool;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::error::Result;

use super::storage::backend;

/// The connection slots.
pub(crate) struct Connections {
    pool: Pool,
    slots: Vec<Mutex<Option<MultiplexedConnection>>>,
    next: AtomicUsize,
}

impl Connections {
    pub(crate) fn new(pool: Pool, slots: usize) -> Self {
        Connections {
            pool,
            slots: (0..slots.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A connection for one call (cheap: a clone of a shared one).
    pub(crate) async fn get(&self) -> Result<Conn<'_>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        let cached = slot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let inner = match cached {
            Some(c) => c,
            None => {
                let obj = self
                    .pool
                    .get()
                    .await
                    .map_err(backend("cannot open a connection"))?;
                let c = deadpool_redis::Connection::take(obj);
                let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
                // Another call may have filled the slot meanwhile: keep one.
                guard.get_or_insert(c).clone()
            }
        };
        Ok(Conn { inner, slot })
    }
}

/// One call's connection; failures that break the link empty its slot.
pub(crate) struct Conn<'s> {
    inner: MultiplexedConnection,
    slot: &'s Mutex<Option<MultiplexedConnection>>,
}

impl Conn<'_> {
    fn check<T>(&self, r: &std::result::Result<T, RedisError>) {
        if let Err(e) = r {
            if e.is_unrecoverable_error()
                || e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
            {
                self.slot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
            }
        }
    }
}

impl ConnectionLike for Conn<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.inner.req_packed_command(cmd).await;
            self.check(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self.inner.req_packed_commands(cmd, offset, count).await;
            self.check(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
