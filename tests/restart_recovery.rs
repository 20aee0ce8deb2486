#![cfg(all(feature = "redis", unix))]
//! Connections recover by themselves (issue 11, item 3), against `redis-server`
//! processes this file spawns and restarts on the same port, with AOF.
//!
//! - After a restart, once Redis answers `PING`, every kind of call succeeds on
//!   its first try, with enough of them at once to meet every pooled
//!   connection (each of which the restart closed).
//! - A call made while Redis is down waits for it within the response timeout,
//!   reads and non-idempotent writes alike (nothing was sent), and fails once
//!   the timeout is spent.
//! - A reply lost after the script ran: an acquire with a request id is sent
//!   again and returns the lease the lost attempt took; one without is not sent
//!   again (it fails, and Redis holds one lease, not two); nor does
//!   `acquire_proxy_with_retry` take a second lease.

mod support;
use support::{cn, pn};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{
    AcquireRequest, AdminStorage, BackendErrorKind, CooldownPolicy, Lease, LeaseStatus,
    LeaseStorage, Proxy, ProxyPool, ProxyStatus, ReleaseOutcome,
};
use support::server::RedisServer;
use uuid::Uuid;

/// Connections the storage keeps (the default).
const POOL_SIZE: usize = RedisConfig::DEFAULT_POOL_SIZE;
/// Calls of one kind made at once after a restart: every connection meets two.
const CALLS: usize = 2 * POOL_SIZE;
/// The pool that leases.
const POOL: &str = "restarts";
/// The pool whose proxy takes reports (a failure cools it down).
const REPORTS: &str = "restart-reports";
const CONSUMER: &str = "restart-worker";

/// A `redis-server` with AOF (`appendfsync always`) in a directory of its own,
/// restartable on the same port.
struct Restartable {
    port: u16,
    dir: PathBuf,
    server: Option<RedisServer>,
}

impl Restartable {
    fn start() -> Restartable {
        let dir = std::env::temp_dir().join(format!("lh-restart-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("AOF directory");
        let mut last = String::new();
        for _ in 0..5 {
            let port = RedisServer::free_port();
            match RedisServer::spawn_with(port, &Self::args(&dir)) {
                Ok(server) => {
                    return Restartable {
                        port,
                        dir,
                        server: Some(server),
                    }
                }
                Err(e) => last = e,
            }
        }
        panic!("cannot start redis-server: {last}");
    }

    fn args(dir: &std::path::Path) -> Vec<&str> {
        vec![
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir.to_str().expect("UTF-8 temp dir"),
        ]
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL (the server's sockets close with it).
    fn kill(&mut self) {
        drop(self.server.take());
    }

    /// Starts it again on its port, from its AOF; returns once it answers PING.
    fn start_again(&mut self) {
        assert!(self.server.is_none(), "start_again of a running server");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match RedisServer::spawn_with(self.port, &Self::args(&self.dir)) {
                Ok(server) => {
                    self.server = Some(server);
                    return;
                }
                // The port may linger for a moment after the kill.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart on port {}: {e}; trying again", self.port);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot restart redis-server: {e}"),
            }
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.start_again();
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn storage_on(url: &str, ns: &str, response_timeout: Duration) -> RedisStorage {
    RedisStorage::new(
        RedisConfig::from_url(url)
            .namespace(ns)
            .pool_size(POOL_SIZE)
            .connect_timeout(Duration::from_secs(2))
            .response_timeout(response_timeout),
    )
    .expect("valid Redis config")
}

/// `PING` from a connection of its own, until Redis answers `PONG`.
async fn wait_for_pong(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = match redis::Client::open(url)
            .expect("Redis URL")
            .get_multiplexed_async_connection()
            .await
        {
            Ok(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(pong) if pong == "PONG" => return,
            other => assert!(
                Instant::now() < deadline,
                "Redis did not answer PING: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request(pool: &str) -> AcquireRequest {
    AcquireRequest::new(pool, CONSUMER, Duration::from_secs(600))
        .unwrap()
        .registering_consumer(true)
}

/// `n` leases on `POOL` (set-up, not under test: a failed attempt is made again).
async fn acquire_n(storage: &RedisStorage, n: usize) -> Vec<Lease> {
    let mut out = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        match storage.acquire(&request(POOL)).await {
            Ok(lease) => out.push(lease.expect("a free slot")),
            Err(e) => assert!(Instant::now() < deadline, "acquire: {e}"),
        }
    }
    out
}

/// The live leases of `POOL`, after checking that its proxy counts them all.
async fn live_leases(storage: &RedisStorage, proxy: Uuid) -> Vec<Lease> {
    let live = storage.list_leases(&pn(POOL)).await.expect("list_leases");
    let proxy = storage
        .get_proxy(proxy)
        .await
        .expect("get_proxy")
        .expect("the proxy");
    assert_eq!(
        proxy.current_leases as usize,
        live.len(),
        "the proxy counts its live leases"
    );
    live
}

/// Opens a connection on every slot (calls go round-robin over the slots):
/// `PING`s until twice as many in a row as there are slots worked.
async fn open_every_connection(storage: &RedisStorage) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 2 * POOL_SIZE {
        match storage.ping().await {
            Ok(()) => in_a_row += 1,
            Err(e) => {
                in_a_row = 0;
                assert!(Instant::now() < deadline, "PING before the restart: {e}");
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    AcquireWithRequestId,
    AcquireWithoutRequestId,
    Rotate,
    GetLease,
    ListLeases,
    Release,
    Extend,
    PoolStats,
    ListPools,
    ListProxies,
    GetProxy,
    Cleanup,
    ReportSuccess,
    ReportFailure,
    SetProxyStatus,
    AddProxy,
    CreatePool,
}

const KINDS: [Kind; 17] = [
    Kind::AcquireWithRequestId,
    Kind::AcquireWithoutRequestId,
    Kind::Rotate,
    Kind::GetLease,
    Kind::ListLeases,
    Kind::Release,
    Kind::Extend,
    Kind::PoolStats,
    Kind::ListPools,
    Kind::ListProxies,
    Kind::GetProxy,
    Kind::Cleanup,
    Kind::ReportSuccess,
    Kind::ReportFailure,
    Kind::SetProxyStatus,
    Kind::AddProxy,
    Kind::CreatePool,
];

impl Kind {
    /// Whether its calls each need a lease held from before the restart.
    fn needs_leases(self) -> bool {
        matches!(
            self,
            Kind::Rotate | Kind::GetLease | Kind::Release | Kind::Extend
        )
    }
}

/// What a call gave back, for the checks after it.
#[derive(Debug)]
enum Outcome {
    Leased(Box<Lease>),
    Released(ReleaseOutcome),
    Other,
}

/// Call number `i` of `kind`.
async fn call(
    storage: &RedisStorage,
    kind: Kind,
    i: usize,
    held: &[Lease],
    proxies: (Uuid, Uuid),
    pool_id: Uuid,
) -> lighthouse_lease::Result<Outcome> {
    let (leased_proxy, reported_proxy) = proxies;
    let round = Uuid::new_v4().simple().to_string();
    Ok(match kind {
        Kind::AcquireWithRequestId => Outcome::Leased(Box::new(
            storage
                .acquire(&request(POOL).with_request_id(format!("restart-{round}-{i}")))
                .await?
                .expect("a free slot"),
        )),
        Kind::AcquireWithoutRequestId => Outcome::Leased(Box::new(
            storage.acquire(&request(POOL)).await?.expect("a free slot"),
        )),
        Kind::Rotate => {
            let r = storage.rotate(&held[i], &request(POOL)).await?;
            assert_eq!(r.released, ReleaseOutcome::Released, "rotate {i}");
            Outcome::Leased(Box::new(r.next.expect("a free slot")))
        }
        Kind::GetLease => {
            let l = storage
                .get_lease(&pn(POOL), held[i].id)
                .await?
                .expect("record");
            assert_eq!(l.fencing_token, held[i].fencing_token);
            Outcome::Other
        }
        Kind::ListLeases => {
            storage.list_leases(&pn(POOL)).await?;
            Outcome::Other
        }
        Kind::Release => Outcome::Released(storage.release(&held[i]).await?),
        Kind::Extend => {
            let l = storage.extend(&held[i], Duration::from_secs(900)).await?;
            assert!(l.expires_at > held[i].expires_at, "extend {i}");
            Outcome::Other
        }
        Kind::PoolStats => {
            storage.pool_stats(&pn(POOL)).await?;
            Outcome::Other
        }
        Kind::ListPools => {
            assert!(storage.list_pools().await?.len() >= 2);
            Outcome::Other
        }
        Kind::ListProxies => {
            assert!(!storage.list_proxies(&pn(POOL)).await?.is_empty());
            Outcome::Other
        }
        Kind::GetProxy => {
            assert!(storage.get_proxy(leased_proxy).await?.is_some());
            Outcome::Other
        }
        Kind::Cleanup => {
            storage.cleanup_expired_leases().await?;
            Outcome::Other
        }
        Kind::ReportSuccess => {
            storage.report_success(reported_proxy).await?;
            Outcome::Other
        }
        Kind::ReportFailure => {
            storage
                .report_failure(reported_proxy, "restart", &CooldownPolicy::default())
                .await?;
            Outcome::Other
        }
        Kind::SetProxyStatus => {
            storage
                .set_proxy_status(reported_proxy, ProxyStatus::Active)
                .await?;
            Outcome::Other
        }
        Kind::AddProxy => {
            let p = Proxy::builder(pool_id, format!("10.9.{}.{}", i / 200, i % 200 + 1), 9000)
                .id(Uuid::new_v4())
                .build()
                .expect("proxy");
            storage.add_proxy(p).await?;
            Outcome::Other
        }
        Kind::CreatePool => {
            storage
                .create_pool(ProxyPool::new(format!("restart-new-{round}")).expect("pool name"))
                .await?;
            Outcome::Other
        }
    })
}

/// For each kind of call: open every pooled connection, restart Redis, wait
/// until it answers PING on a connection of its own, then make `CALLS` calls of
/// that kind at once. Every one succeeds on its first try, and does what it
/// would have done without the restart (no acquire counted twice, each release
/// released).
#[test]
fn every_kind_of_call_succeeds_on_the_first_try_after_a_restart() {
    let mut server = Restartable::start();
    let url = server.url();
    let rt = runtime();
    let storage = storage_on(&url, "restart-recovery", Duration::from_secs(5));
    let (proxies, pool_id) = rt.block_on(async {
        let pool = storage
            .create_pool(ProxyPool::new(POOL).unwrap())
            .await
            .unwrap();
        let leased = storage
            .add_proxy(
                Proxy::builder(pool.id, "10.8.0.1", 8000)
                    .max_concurrency(10_000)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let reports = storage
            .create_pool(ProxyPool::new(REPORTS).unwrap())
            .await
            .unwrap();
        let reported = storage
            .add_proxy(
                Proxy::builder(reports.id, "10.8.1.1", 8000)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        ((leased.id, reported.id), pool.id)
    });
    // Kinds some of whose calls failed, with the first failure.
    let mut failures: Vec<String> = Vec::new();
    for kind in KINDS {
        let (held, before) = rt.block_on(async {
            let held = if kind.needs_leases() {
                acquire_n(&storage, CALLS).await
            } else {
                Vec::new()
            };
            open_every_connection(&storage).await;
            (held, live_leases(&storage, proxies.0).await.len())
        });
        server.restart();
        let outcomes = rt.block_on(async {
            wait_for_pong(&url).await;
            join_all((0..CALLS).map(|i| call(&storage, kind, i, &held, proxies, pool_id))).await
        });
        let failed: Vec<String> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().err().map(|e| format!("call {i}: {e}")))
            .collect();
        if let Some(first) = failed.first() {
            failures.push(format!(
                "{kind:?}: {} of {CALLS} calls failed ({first})",
                failed.len()
            ));
            continue;
        }
        // Each call did what it does without a restart, once: an acquire adds
        // one lease, a rotate swaps one, a release takes one away.
        let mut delta: isize = 0;
        for o in outcomes.into_iter().flatten() {
            match o {
                Outcome::Leased(l) => {
                    assert_eq!(l.status, LeaseStatus::Active, "{kind:?}");
                    if kind != Kind::Rotate {
                        delta += 1;
                    }
                }
                Outcome::Released(r) => {
                    assert_eq!(r, ReleaseOutcome::Released, "{kind:?}");
                    delta -= 1;
                }
                Outcome::Other => {}
            }
        }
        let after = rt.block_on(live_leases(&storage, proxies.0)).len();
        assert_eq!(
            after as isize,
            before as isize + delta,
            "{kind:?}: live leases before {before}, after {after}"
        );
    }
    assert!(
        failures.is_empty(),
        "calls failed after a restart although Redis answered PING: {failures:#?}"
    );
    rt.block_on(async {
        for l in live_leases(&storage, proxies.0).await {
            assert_eq!(storage.release(&l).await.unwrap(), ReleaseOutcome::Released);
        }
        assert_eq!(storage.pool_stats(&pn(POOL)).await.unwrap().total_leases, 0);
    });
}

/// Redis is down when the calls start and back within their response timeout:
/// a read, an acquire without a request id (a write that must not run twice)
/// and a release all wait for it and succeed, since nothing could be sent.
/// With Redis down for good, a read fails once the response timeout is spent.
#[test]
fn calls_wait_for_redis_within_the_response_timeout() {
    let mut server = Restartable::start();
    let url = server.url();
    let rt = runtime();
    let storage = Arc::new(storage_on(&url, "restart-outage", Duration::from_secs(10)));
    let held = rt.block_on(async {
        let pool = storage
            .create_pool(ProxyPool::new(POOL).unwrap())
            .await
            .unwrap();
        storage
            .add_proxy(
                Proxy::builder(pool.id, "10.8.2.1", 8000)
                    .max_concurrency(10)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let held = acquire_n(&storage, 1).await;
        open_every_connection(&storage).await;
        held
    });
    server.kill();
    // The connections' tasks see their sockets close (an acquire sent on a
    // connection in the instant it closes may have run, and is rightly not sent
    // again: that race is not what this test is about).
    std::thread::sleep(Duration::from_millis(200));
    let calls = {
        let storage = Arc::clone(&storage);
        let lease = held[0].clone();
        rt.spawn(async move {
            let acquire = request(POOL);
            let pool = pn(POOL);
            tokio::join!(
                storage.pool_stats(&pool),
                storage.acquire(&acquire),
                storage.release(&lease),
            )
        })
    };
    // Down for a while: the calls meet closed connections and refused connects.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !calls.is_finished(),
        "the calls gave up while Redis was down"
    );
    server.start_again();
    let (stats, acquired, released) = rt.block_on(calls).expect("calls task");
    let stats = stats.expect("pool_stats across the outage");
    let lease = acquired
        .expect("acquire across the outage")
        .expect("a free slot");
    assert_eq!(
        released.expect("release across the outage"),
        ReleaseOutcome::Released
    );
    assert!(stats.total_leases <= 2, "{stats:?}");
    rt.block_on(async {
        let live = storage.list_leases(&pn(POOL)).await.unwrap();
        assert_eq!(live.len(), 1, "only the new lease is live: {live:#?}");
        assert_eq!(live[0].id, lease.id);
    });

    // Down for good: the call fails, as a connection failure, once its response
    // timeout (here 500 ms) is spent.
    let short = storage_on(&url, "restart-outage", Duration::from_millis(500));
    rt.block_on(open_every_connection(&short));
    server.kill();
    let started = Instant::now();
    let err = rt
        .block_on(short.pool_stats(&pn(POOL)))
        .expect_err("pool_stats with Redis down");
    let took = started.elapsed();
    assert_eq!(
        err.backend_kind(),
        Some(BackendErrorKind::Connection),
        "{err}"
    );
    assert!(err.is_retryable());
    assert!(
        took >= Duration::from_millis(250),
        "gave up after {took:?}, before the response timeout"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// A TCP forwarder to Redis that swallows the reply to the next `FCALL` whose
/// request carries a marker, then closes that client connection: the script ran,
/// the caller never hears of it.
struct LosesOneReply {
    port: u16,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    swallowed: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl LosesOneReply {
    async fn start(upstream: u16) -> LosesOneReply {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let marker: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let swallowed: Arc<Mutex<usize>> = Arc::default();
        let (m, s) = (Arc::clone(&marker), Arc::clone(&swallowed));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                    tokio::spawn(Self::forward(
                        client,
                        server,
                        Arc::clone(&m),
                        Arc::clone(&s),
                    ));
                }
            }
        });
        LosesOneReply {
            port,
            marker,
            swallowed,
            task,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn arm(&self, marker: &str) {
        *self.marker.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    async fn forward(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        marker: Arc<Mutex<Option<Vec<u8>>>>,
        swallowed: Arc<Mutex<usize>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut swallow = false;
        loop {
            tokio::select! {
                n = cr.read(&mut up) => {
                    let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                    {
                        let mut armed = marker.lock().unwrap();
                        if armed.as_deref().is_some_and(|m| has(&up[..n], b"FCALL") && has(&up[..n], m)) {
                            swallow = true;
                            *armed = None;
                        }
                    }
                    if sw.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
                n = sr.read(&mut down) => {
                    let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                    if swallow {
                        // Both sockets close: the caller's connection breaks.
                        *swallowed.lock().unwrap() += 1;
                        return;
                    }
                    if cw.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for LosesOneReply {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to an acquire is lost after its script ran. With a request id the
/// call is sent again on a fresh connection and returns the lease the lost
/// attempt took (one lease counted); without one it fails and is not sent again
/// (else the proxy would count two leases).
#[test]
fn a_lost_acquire_is_repeated_only_with_a_request_id() {
    let server = Restartable::start();
    let rt = runtime();
    rt.block_on(async {
        let ns = "restart-lost-reply";
        let direct = storage_on(&server.url(), ns, Duration::from_secs(5));
        let pool = direct
            .create_pool(ProxyPool::new(POOL).unwrap())
            .await
            .unwrap();
        let proxy = direct
            .add_proxy(
                Proxy::builder(pool.id, "10.8.3.1", 8000)
                    .max_concurrency(10)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let forwarder = LosesOneReply::start(server.port).await;
        let storage = storage_on(&forwarder.url(), ns, Duration::from_secs(5));
        // Functions loaded, consumers known: the armed FCALL is the acquire.
        storage.load_scripts().await.unwrap();
        let with_id = "lost-with-id";
        let without_id = "lost-without-id";
        for c in [with_id, without_id] {
            storage.ensure_consumer(&cn(c)).await.unwrap();
        }

        let request_id = format!("lost-{}", Uuid::new_v4().simple());
        forwarder.arm(&request_id);
        let lease = storage
            .acquire(
                &AcquireRequest::new(POOL, with_id, Duration::from_secs(60))
                    .unwrap()
                    .with_request_id(&request_id),
            )
            .await
            .expect("the acquire with a request id is sent again")
            .expect("a free slot");
        assert_eq!(*forwarder.swallowed.lock().unwrap(), 1, "a reply was lost");
        let live = direct.list_leases(&pn(POOL)).await.unwrap();
        assert_eq!(live.len(), 1, "{live:#?}");
        assert_eq!(live[0].id, lease.id, "the lease the lost attempt took");
        let p = direct.get_proxy(proxy.id).await.unwrap().unwrap();
        assert_eq!(p.current_leases, 1, "one lease counted, not two");

        forwarder.arm(without_id);
        let lost = storage
            .acquire(&AcquireRequest::new(POOL, without_id, Duration::from_secs(60)).unwrap())
            .await;
        assert_eq!(*forwarder.swallowed.lock().unwrap(), 2, "a reply was lost");
        let err = lost.expect_err("an acquire without a request id is not sent again");
        assert_eq!(
            err.backend_kind(),
            Some(BackendErrorKind::Connection),
            "{err}"
        );
        let live = direct.list_leases(&pn(POOL)).await.unwrap();
        assert_eq!(
            live.len(),
            2,
            "the lost attempt's lease, and no third: {live:#?}"
        );
        let p = direct.get_proxy(proxy.id).await.unwrap().unwrap();
        assert_eq!(p.current_leases, 2);
        for l in &live {
            assert_eq!(direct.release(l).await.unwrap(), ReleaseOutcome::Released);
        }
    });
}

/// `acquire_proxy_with_retry` without a request id, whose first attempt's reply
/// is lost after the script ran: the call returns the lease that attempt took,
/// and the proxy counts one lease, not two (a blind retry would take a second
/// slot and leave the first taken until it expires).
#[test]
fn acquire_with_retry_takes_one_lease_when_a_reply_is_lost() {
    let server = Restartable::start();
    let rt = runtime();
    rt.block_on(async {
        let ns = "restart-retry-policy";
        let direct = storage_on(&server.url(), ns, Duration::from_secs(5));
        let pool = direct
            .create_pool(ProxyPool::new(POOL).unwrap())
            .await
            .unwrap();
        let proxy = direct
            .add_proxy(
                Proxy::builder(pool.id, "10.8.4.1", 8000)
                    .max_concurrency(10)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let forwarder = LosesOneReply::start(server.port).await;
        let manager = lighthouse_lease::ProxyManager::builder(storage_on(
            &forwarder.url(),
            ns,
            Duration::from_secs(5),
        ))
        .auto_register_consumers(true)
        .build();
        let consumer = "retry-policy-worker";
        manager.storage().load_scripts().await.unwrap();
        manager
            .storage()
            .ensure_consumer(&cn(consumer))
            .await
            .unwrap();

        forwarder.arm(consumer);
        let lease = manager
            .acquire_proxy_with_retry(
                POOL,
                lighthouse_lease::AcquireOptions::new().consumer(consumer),
                &lighthouse_lease::RetryPolicy::new(3).initial_backoff(Duration::from_millis(10)),
            )
            .await
            .expect("acquire_proxy_with_retry")
            .expect("a free slot");
        assert_eq!(*forwarder.swallowed.lock().unwrap(), 1, "a reply was lost");
        let live = direct.list_leases(&pn(POOL)).await.unwrap();
        assert_eq!(live.len(), 1, "one lease, not two: {live:#?}");
        assert_eq!(live[0].id, lease.id);
        let p = direct.get_proxy(proxy.id).await.unwrap().unwrap();
        assert_eq!(p.current_leases, 1);
        assert_eq!(
            direct.release(&lease).await.unwrap(),
            ReleaseOutcome::Released
        );
    });
}

/// Over a Unix socket (`redis+unix://`) too, the connections the storage opens
/// itself see the restart: every call after it succeeds.
#[test]
fn connections_over_a_unix_socket_recover_too() {
    let dir = std::env::temp_dir().join(format!("lh-unix-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("socket directory");
    let socket = dir.join("redis.sock");
    let socket_arg = socket.to_str().expect("UTF-8 temp dir").to_string();
    let args = [
        "--unixsocket",
        socket_arg.as_str(),
        "--appendonly",
        "yes",
        "--dir",
        dir.to_str().expect("UTF-8 temp dir"),
    ];
    let port = RedisServer::free_port();
    let server = RedisServer::spawn_with(port, &args).expect("redis-server with a Unix socket");
    let url = format!("redis+unix://{socket_arg}");
    let rt = runtime();
    let storage = storage_on(&url, "restart-unix", Duration::from_secs(5));
    rt.block_on(async {
        let pool = storage
            .create_pool(ProxyPool::new(POOL).unwrap())
            .await
            .unwrap();
        storage
            .add_proxy(
                Proxy::builder(pool.id, "10.8.5.1", 8000)
                    .max_concurrency(100)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        open_every_connection(&storage).await;
    });
    drop(server);
    let server = RedisServer::spawn_with(port, &args).expect("redis-server again");
    let results = rt.block_on(async {
        let req = request(POOL);
        join_all((0..CALLS).map(|_| storage.acquire(&req))).await
    });
    for (i, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("call {i} after the restart: {e}"))
            .expect("a free slot");
    }
    let stats = rt.block_on(storage.pool_stats(&pn(POOL))).unwrap();
    assert_eq!(stats.total_leases, CALLS as u64);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
