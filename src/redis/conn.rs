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
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::error::Result;

use super::error::backend;

/// The connection slots.
pub(crate) struct Connections {
    pool: Pool,
    slots: Vec<Mutex<Option<MultiplexedConnection>>>,
    next: AtomicUsize,
    /// Redis Cluster: one multiplexed cluster connection (it routes each command
    /// to the node owning its key's slot and follows MOVED/ASK by itself).
    cluster: Option<(
        redis::cluster::ClusterClient,
        Mutex<Option<ClusterConnection>>,
    )>,
}

impl Connections {
    pub(crate) fn new(
        pool: Pool,
        slots: usize,
        cluster: Option<redis::cluster::ClusterClient>,
    ) -> Self {
        Connections {
            pool,
            slots: (0..slots.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            cluster: cluster.map(|c| (c, Mutex::new(None))),
        }
    }

    /// A connection for one call (cheap: a clone of a shared one).
    pub(crate) async fn get(&self) -> Result<Conn<'_>> {
        if let Some((client, cached)) = &self.cluster {
            let existing = cached
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let conn = match existing {
                Some(c) => c,
                None => {
                    let c = client
                        .get_async_connection()
                        .await
                        .map_err(backend("cannot connect to the cluster"))?;
                    cached
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(c)
                        .clone()
                }
            };
            return Ok(Conn {
                inner: Inner::Cluster(conn),
                slot: None,
            });
        }
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
        Ok(Conn {
            inner: Inner::Single(inner),
            slot: Some(slot),
        })
    }
}

enum Inner {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// One call's connection; failures that break the link empty its slot.
pub(crate) struct Conn<'s> {
    inner: Inner,
    slot: Option<&'s Mutex<Option<MultiplexedConnection>>>,
}

impl Conn<'_> {
    fn check<T>(&self, r: &std::result::Result<T, RedisError>) {
        if let (Err(e), Some(slot)) = (r, self.slot) {
            if e.is_unrecoverable_error()
                || e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
            {
                slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            }
        }
    }
}

impl ConnectionLike for Conn<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = match &mut self.inner {
                Inner::Single(c) => c.req_packed_command(cmd).await,
                Inner::Cluster(c) => c.req_packed_command(cmd).await,
            };
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
            let r = match &mut self.inner {
                Inner::Single(c) => c.req_packed_commands(cmd, offset, count).await,
                // A cluster pipeline must stay in one slot, and the storage's
                // pipelines mix a pool's keys with the cross-pool registries: send
                // the commands one by one, each to its own node. (None of them is
                // a MULTI transaction.)
                Inner::Cluster(c) if !cmd.is_transaction() => {
                    let mut out = Vec::new();
                    let mut failed = None;
                    for one in cmd.cmd_iter() {
                        match c.req_packed_command(one).await {
                            Ok(v) => out.push(v),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    match failed {
                        Some(e) => Err(e),
                        None => Ok(out.into_iter().skip(offset).take(count).collect()),
                    }
                }
                Inner::Cluster(c) => c.req_packed_commands(cmd, offset, count).await,
            };
            self.check(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}
