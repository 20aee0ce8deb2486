//! Connections: a few multiplexed connections shared by every call, which
//! recover by themselves after Redis restarts or drops them.
//!
//! The storage keeps `pool_size` connection slots and spreads calls over them
//! round-robin. A multiplexed connection carries any number of concurrent
//! requests, so callers never wait for a free connection and no call pays for a
//! health-check `PING`.
//!
//! **Dead connections are seen before use.** This module opens the connections
//! itself (TCP, TLS or a Unix socket, then redis-rs's handshake) and runs each
//! one's I/O task, so it knows when that task ended: redis-rs ends it as soon as
//! the socket closes, also while the connection is idle (Redis restarted, or a
//! proxy in between hung up). A call that finds its slot's connection ended opens
//! a fresh one before sending anything, so after a restart no call fails on a
//! connection that was dead before it started. Checking costs one atomic load.
//!
//! **Failures are repeated when that is safe.** A command whose connection broke
//! while it was out (I/O error, connection reset or closed) may or may not have
//! run. [`Repeat`] says what a command may do then:
//!
//! - [`Repeat::Always`]: reads, and writes that do the same thing however often
//!   they run (release or extend by lease id, an acquire whose every request has
//!   a request id, pool and proxy updates, cleanup): sent again, on a fresh
//!   connection.
//! - [`Repeat::IfUnsent`]: writes that must not run twice (an acquire without a
//!   request id, a rotate, adding or removing a proxy or a pool, a failure
//!   report): sent
//!   again only after failures that prove Redis did not run them: no connection
//!   could be opened, or Redis answered `LOADING` (it refuses every command while
//!   it loads its data set after a restart).
//! - [`Repeat::Never`]: `WAIT`, which only means something on the connection
//!   that carried the write it waits for.
//!
//! Repeats stop once the response timeout has passed since the command's first
//! failure (a command that works reads no clock), with a short backoff between
//! them (10 ms doubling to 200 ms, with jitter); a timeout itself is not
//! repeated. A repeated write reports what its last attempt found: a release
//! whose first reply was lost after it ran says `AlreadyReleased`, a cleanup
//! counts only what its last attempt reclaimed.
//!
//! Redis Cluster keeps redis-rs's cluster connection, which follows
//! MOVED/ASK and reconnects by itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisError,
    RedisFuture, ServerErrorKind, Value,
};

use crate::error::Result;

use super::error::backend;

/// Whether a command may be sent again after its connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// After any connection failure: running it twice does what running it once
    /// does.
    Always,
    /// Only after failures that prove Redis did not run it.
    IfUnsent,
    /// Never, and never on another connection than the one the call started on.
    Never,
}

/// The first wait between two attempts of a command.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Connections one command may take in turn without a failure in between
/// (each found closed before anything was sent on it).
const MAX_RELINKS: u32 = 8;
/// How long a command is repeated when no response timeout is configured.
pub(crate) const DEFAULT_REPEAT_FOR: Duration = Duration::from_secs(5);

/// Opens connections: a socket, then redis-rs's handshake (AUTH, SELECT...),
/// then the connection's I/O task, run by this module so that its end is seen.
pub(crate) struct Dialer {
    info: ConnectionInfo,
    config: AsyncConnectionConfig,
    connect_timeout: Option<Duration>,
    /// For addresses this module does not open itself.
    client: redis::Client,
}

impl Dialer {
    pub(crate) fn new(
        info: ConnectionInfo,
        config: AsyncConnectionConfig,
        connect_timeout: Option<Duration>,
    ) -> redis::RedisResult<Self> {
        let client = redis::Client::open(info.clone())?;
        Ok(Dialer {
            info,
            config,
            connect_timeout,
            client,
        })
    }

    /// A new connection, within the connect timeout.
    async fn dial(&self) -> redis::RedisResult<Link> {
        match self.connect_timeout {
            Some(t) => match tokio::time::timeout(t, self.open()).await {
                Ok(r) => r,
                Err(_) => Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting took longer than {t:?}"),
                ))),
            },
            None => self.open().await,
        }
    }

    async fn open(&self) -> redis::RedisResult<Link> {
        match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let tcp = tcp(host, *port, self.info.tcp_settings()).await?;
                self.start(tcp).await
            }
            #[cfg(feature = "tls")]
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            } => {
                let tcp = tcp(host, *port, self.info.tcp_settings()).await?;
                self.start(tls::wrap(host, tcp).await?).await
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                let unix = tokio::net::UnixStream::connect(path).await?;
                self.start(unix).await
            }
            // Anything else (TLS without hostname checks, TLS parameters set in
            // code): redis-rs opens it and runs its task; its end is then seen
            // only when a command fails.
            _ => Ok(Link {
                conn: self
                    .client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?,
                alive: None,
                task: None,
            }),
        }
    }

    /// The handshake on an open stream, then the connection's task.
    async fn start<S>(&self, stream: S) -> redis::RedisResult<Link>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (conn, driver) = MultiplexedConnection::new_with_config(
            self.info.redis_settings(),
            stream,
            self.config.clone(),
        )
        .await?;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&alive);
        let task = tokio::spawn(async move {
            driver.await;
            flag.store(false, Ordering::Release);
        });
        Ok(Link {
            conn,
            alive: Some(alive),
            task: Some(task.abort_handle()),
        })
    }
}

/// A TCP connection to the first address of `host` that accepts one, with the
/// URL's TCP settings (`TCP_NODELAY`, keepalive).
async fn tcp(
    host: &str,
    port: u16,
    settings: &redis::io::tcp::TcpSettings,
) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(settings.nodelay())?;
                let socket = redis::io::tcp::socket2::SockRef::from(&stream);
                if let Some(keepalive) = settings.keepalive() {
                    socket.set_tcp_keepalive(keepalive)?;
                }
                #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
                if settings.user_timeout().is_some() {
                    socket.set_tcp_user_timeout(settings.user_timeout())?;
                }
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host}:{port} resolves to no address"),
        )
    }))
}

#[cfg(feature = "tls")]
mod tls {
    //! `rediss://`: rustls with the system's root certificates, as redis-rs
    //! does it.

    use std::sync::Arc;

    use redis::{ErrorKind, RedisError, RedisResult};

    fn config_error(what: &'static str, detail: String) -> RedisError {
        RedisError::from((ErrorKind::InvalidClientConfig, what, detail))
    }

    /// The TLS session over `tcp`, checking the server's certificate for `host`.
    pub(super) async fn wrap(
        host: &str,
        tcp: tokio::net::TcpStream,
    ) -> RedisResult<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        let mut native = rustls_native_certs::load_native_certs();
        if let Some(e) = native.errors.pop() {
            return Err(config_error(
                "cannot load the system's root certificates",
                e.to_string(),
            ));
        }
        for cert in native.certs {
            roots
                .add(cert)
                .map_err(|e| config_error("bad root certificate", e.to_string()))?;
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| config_error("bad TLS server name", e.to_string()))?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?)
    }
}

/// One open connection.
struct Link {
    conn: MultiplexedConnection,
    /// Cleared when the connection's task ends: the connection is closed and
    /// nothing sent on it goes out. `None` when redis-rs runs the task.
    alive: Option<Arc<AtomicBool>>,
    /// The task, stopped when the last user of the connection is gone.
    task: Option<tokio::task::AbortHandle>,
}

impl Link {
    fn alive(&self) -> bool {
        self.alive
            .as_ref()
            .is_none_or(|a| a.load(Ordering::Acquire))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One connection slot.
struct Slot {
    link: Mutex<Option<Arc<Link>>>,
    /// Held while a connection for this slot is opened, so that concurrent calls
    /// open one, not one each.
    dialing: tokio::sync::Mutex<()>,
}

impl Slot {
    fn current(&self) -> Option<Arc<Link>> {
        self.link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The connection slots.
pub(crate) struct Connections {
    dialer: Dialer,
    slots: Vec<Slot>,
    next: AtomicUsize,
    /// How long to wait for another call that opens the slot's connection.
    wait_timeout: Option<Duration>,
    /// How long a command is repeated after connection failures.
    repeat_for: Duration,
    /// Redis Cluster: one multiplexed cluster connection (it routes each command
    /// to the node owning its key's slot and follows MOVED/ASK by itself).
    cluster: Option<(
        redis::cluster::ClusterClient,
        Mutex<Option<ClusterConnection>>,
    )>,
}

impl Connections {
    pub(crate) fn new(
        dialer: Dialer,
        slots: usize,
        wait_timeout: Option<Duration>,
        response_timeout: Option<Duration>,
        cluster: Option<redis::cluster::ClusterClient>,
    ) -> Self {
        Connections {
            dialer,
            slots: (0..slots.max(1))
                .map(|_| Slot {
                    link: Mutex::new(None),
                    dialing: tokio::sync::Mutex::new(()),
                })
                .collect(),
            next: AtomicUsize::new(0),
            wait_timeout,
            repeat_for: response_timeout.unwrap_or(DEFAULT_REPEAT_FOR),
            cluster: cluster.map(|c| (c, Mutex::new(None))),
        }
    }

    /// A connection for one call (cheap: a clone of a shared one). Opening it,
    /// when its slot has none that works, waits for the first command.
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
                conns: self,
                inner: Inner::Cluster(conn),
                repeat: Repeat::Always,
            });
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let link = self.slots[slot].current();
        let conn = link.as_ref().map(|l| l.conn.clone());
        Ok(Conn {
            conns: self,
            inner: Inner::Single { slot, link, conn },
            repeat: Repeat::Always,
        })
    }

    /// A working connection for `slot` in place of `stale` (none, or one that
    /// ended or failed): the one another call put there meanwhile, or a new one.
    async fn relink(
        &self,
        slot: usize,
        stale: Option<&Arc<Link>>,
    ) -> redis::RedisResult<Arc<Link>> {
        let s = &self.slots[slot];
        let usable = |l: &Arc<Link>| l.alive() && stale.is_none_or(|st| !Arc::ptr_eq(l, st));
        if let Some(l) = s.current().filter(usable) {
            return Ok(l);
        }
        let _turn = match self.wait_timeout {
            Some(t) => tokio::time::timeout(t, s.dialing.lock())
                .await
                .map_err(|_| {
                    RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("waited longer than {t:?} for a connection"),
                    ))
                })?,
            None => s.dialing.lock().await,
        };
        if let Some(l) = s.current().filter(usable) {
            return Ok(l);
        }
        let fresh = Arc::new(self.dialer.dial().await?);
        *s.link.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&fresh));
        Ok(fresh)
    }

    /// Empties `slot` if it still holds `link` (which failed).
    fn discard(&self, slot: usize, link: &Arc<Link>) {
        let mut held = self.slots[slot]
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            *held = None;
        }
    }
}

enum Inner {
    Single {
        slot: usize,
        /// The slot's connection when the call took it (`None`: it had none).
        link: Option<Arc<Link>>,
        conn: Option<MultiplexedConnection>,
    },
    Cluster(ClusterConnection),
}

/// One call's connection.
pub(crate) struct Conn<'s> {
    conns: &'s Connections,
    inner: Inner,
    repeat: Repeat,
}

/// What one attempt sends.
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

enum Reply {
    One(Value),
    Many(Vec<Value>),
}

/// The failure a command on a closed connection gets.
fn closed() -> RedisError {
    RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
}

/// Whether Redis refused the command without running it (`LOADING`).
fn refused_unrun(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading)
}

/// Whether the connection broke while the command was out (it may or may not
/// have run). A response timeout is not counted: the command may still be
/// running, and its time is spent.
fn link_broke(e: &RedisError) -> bool {
    !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
}

/// Whether a failure leaves the connection unusable.
fn link_unusable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

/// Whether opening a connection failed in a way that may pass (refused, reset,
/// timed out, Redis loading), as opposed to bad credentials or settings.
fn dial_may_pass(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || refused_unrun(e)
}

/// The wait before the attempt after failure number `failures` (from 1).
fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(MAX_BACKOFF);
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}

impl Conn<'_> {
    /// Sets how the following commands may be repeated; returns the setting
    /// it replaces.
    pub(crate) fn set_repeat(&mut self, repeat: Repeat) -> Repeat {
        std::mem::replace(&mut self.repeat, repeat)
    }

    /// Sends one request: on the call's connection while it works, else on the
    /// slot's next one, repeated as [`Repeat`] allows (see the module docs).
    async fn exchange(&mut self, req: Request<'_>) -> redis::RedisResult<Reply> {
        let (slot, link, conn) = match &mut self.inner {
            Inner::Cluster(c) => return cluster_exchange(c, req).await,
            Inner::Single { slot, link, conn } => (*slot, link, conn),
        };
        // Set at the first failure: a command that works reads no clock.
        let mut first_failure: Option<Instant> = None;
        let mut failures = 0u32;
        let mut relinks = 0u32;
        loop {
            let live = match (link.as_ref(), conn.as_mut()) {
                (Some(l), Some(c)) if l.alive() => Some((l, c)),
                _ => None,
            };
            // The failure, and whether it proves the command did not run.
            let (err, unrun) = match live {
                Some((l, c)) => match send(c, req).await {
                    Ok(reply) => return Ok(reply),
                    Err(e) => {
                        if link_unusable(&e) {
                            self.conns.discard(slot, l);
                            *conn = None;
                        }
                        let unrun = refused_unrun(&e);
                        (e, unrun)
                    }
                },
                // WAIT: the connection that carried the write is gone.
                None if self.repeat == Repeat::Never => return Err(closed()),
                // No connection yet, or it ended before this command went out:
                // nothing was sent; take the slot's next one.
                None => match self.conns.relink(slot, link.as_ref()).await {
                    Ok(fresh) => {
                        *conn = Some(fresh.conn.clone());
                        *link = Some(fresh);
                        relinks += 1;
                        if relinks > MAX_RELINKS {
                            // Connections that keep ending as soon as they open.
                            return Err(closed());
                        }
                        continue;
                    }
                    Err(e) => {
                        let unrun = dial_may_pass(&e);
                        (e, unrun)
                    }
                },
            };
            let again = match self.repeat {
                Repeat::Always => unrun || link_broke(&err),
                Repeat::IfUnsent => unrun,
                Repeat::Never => false,
            };
            failures += 1;
            relinks = 0;
            let wait = backoff(failures);
            let since = first_failure.get_or_insert_with(Instant::now).elapsed();
            if !again || since + wait > self.conns.repeat_for {
                return Err(err);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

async fn send(c: &mut MultiplexedConnection, req: Request<'_>) -> redis::RedisResult<Reply> {
    match req {
        Request::One(cmd) => c.send_packed_command(cmd).await.map(Reply::One),
        Request::Many(p, offset, count) => c
            .send_packed_commands(p, offset, count)
            .await
            .map(Reply::Many),
    }
}

async fn cluster_exchange(
    c: &mut ClusterConnection,
    req: Request<'_>,
) -> redis::RedisResult<Reply> {
    match req {
        Request::One(cmd) => c.req_packed_command(cmd).await.map(Reply::One),
        // A cluster pipeline must stay in one slot, and the storage's pipelines
        // mix a pool's keys with the cross-pool registries: send the commands one
        // by one, each to its own node. (None of them is a MULTI transaction.)
        Request::Many(p, offset, count) if !p.is_transaction() => {
            let mut out = Vec::new();
            for one in p.cmd_iter() {
                out.push(c.req_packed_command(one).await?);
            }
            Ok(Reply::Many(
                out.into_iter().skip(offset).take(count).collect(),
            ))
        }
        Request::Many(p, offset, count) => c
            .req_packed_commands(p, offset, count)
            .await
            .map(Reply::Many),
    }
}

impl ConnectionLike for Conn<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.exchange(Request::One(cmd)).await? {
                Reply::One(v) => Ok(v),
                Reply::Many(v) => Ok(Value::Array(v)),
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.exchange(Request::Many(cmd, offset, count)).await? {
                Reply::Many(v) => Ok(v),
                Reply::One(v) => Ok(vec![v]),
            }
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single { .. } => self.conns.dialer.info.redis_settings().db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}
