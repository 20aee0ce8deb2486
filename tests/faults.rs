#![cfg(all(feature = "redis", unix))]
//! Fault tests of `RedisStorage` against `redis-server` processes this file
//! spawns itself (never the shared test server, never one on :6379): scripts
//! flushed under load, restarts with and without persistence, a holder paused
//! with SIGSTOP past its lease, Redis unreachable for a few seconds, a reply lost
//! after the script ran, and memory pressure.
//!
//! Every test ends with the same checks: no proxy was ever over-leased, and once
//! every lease is released or expired no capacity is left taken (every counter
//! 0, no live lease, no active lease record, nothing for `audit_pool` to repair).
//!
//! The SIGSTOP test runs its holder in another OS process: this test binary run
//! again as `<exe> worker_entry --exact` with `LIGHTHOUSE_FAULT_WORKER` set.

mod support;
use support::{cn, pn};

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{
    AcquireOptions, AdminStorage, Error, LeaseStatus, LeaseStorage, Proxy, ProxyManager, ProxyPool,
    ReleaseOutcome,
};
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

/// Set (to the worker's role) in a worker process; unset in the test process.
const WORKER_ENV: &str = "LIGHTHOUSE_FAULT_WORKER";
/// Prefix of the lines a worker prints for its parent.
const REPORT: &str = "LHF";

// ---------------------------------------------------------------------------
// Servers this file owns.

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// What `PING` gets on this port: `Some("+PONG")`, `Some("-LOADING ...")`, or
/// `None` when nothing answers.
fn ping_reply(port: u16) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"PING\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim_end().to_string())
}

/// A `redis-server` child of this test: restartable on the same port (with its
/// AOF directory, when it has one), killed with SIGKILL when dropped.
struct FaultServer {
    port: u16,
    /// `Some` when the server persists with AOF (`appendfsync always`).
    dir: Option<PathBuf>,
    extra: Vec<String>,
    child: Option<Child>,
    watchdog: Option<Child>,
}

impl FaultServer {
    /// A server without persistence.
    fn start(extra: &[&str]) -> FaultServer {
        Self::start_with(false, extra)
    }

    /// A server with AOF, fsync on every write.
    fn start_aof(extra: &[&str]) -> FaultServer {
        Self::start_with(true, extra)
    }

    fn start_with(aof: bool, extra: &[&str]) -> FaultServer {
        let dir = aof.then(|| {
            let d = std::env::temp_dir().join(format!("lh-faults-{}", Uuid::new_v4().simple()));
            std::fs::create_dir_all(&d).expect("AOF directory");
            d
        });
        let mut server = FaultServer {
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            watchdog: None,
        };
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("cannot start redis-server: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.dir {
            Some(dir) => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"])
                    .arg("--dir")
                    .arg(dir);
            }
            None => {
                cmd.args(["--appendonly", "no"]);
            }
        }
        let mut child = cmd
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server from PATH: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Up means PONG: a server still loading its AOF answers -LOADING.
            if ping_reply(self.port).as_deref() == Some("+PONG") {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {} exited: {status}",
                    self.port
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-server on port {} did not answer", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Kills the server if this test process dies without unwinding.
        let me = std::process::id();
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {} 2>/dev/null",
            child.id()
        );
        self.watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        self.child = Some(child);
        Ok(())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: a crash, no clean shutdown.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        assert!(
            ping_reply(self.port).is_none(),
            "something still answers on port {} after the kill",
            self.port
        );
    }

    /// Starts it again on the same port, with the same settings and AOF.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running server");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The port may linger for a moment after the kill.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart on port {}: {e}; trying again", self.port);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot restart redis-server: {e}"),
            }
        }
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn config(url: &str, ns: &str) -> RedisConfig {
    RedisConfig::from_url(url)
        .namespace(ns)
        .pool_size(4)
        .response_timeout(Duration::from_secs(5))
}

fn storage_on(url: &str, ns: &str) -> RedisStorage {
    RedisStorage::new(config(url, ns)).expect("valid Redis config")
}

/// Redis's clock (the one lease expiry is measured with), in ms.
async fn redis_time_ms(conn: &mut MultiplexedConnection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1000 + micros / 1000
}

/// Waits until Redis's clock has passed `ms`.
async fn wait_redis_time_past(conn: &mut MultiplexedConnection, ms: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis_time_ms(conn).await <= ms {
        assert!(
            Instant::now() < deadline,
            "Redis's clock did not reach {ms}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a restart (the server answers PING), `pool_size` calls in a row work,
/// none failing: each pooled connection the restart closed is replaced before a
/// call uses it (and `PING` is sent again after a broken connection).
async fn wait_recovered(storage: &RedisStorage, pool_size: usize) {
    let mut failed = Vec::new();
    for _ in 0..2 * pool_size {
        if let Err(e) = storage.ping().await {
            failed.push(e.to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "calls failed after the restart: {failed:?}"
    );
}

/// A pool with proxies of these `max_concurrency` values.
async fn make_pool(storage: &RedisStorage, pool: &str, maxes: &[u32]) -> Vec<Proxy> {
    let p = storage
        .create_pool(ProxyPool::new(pool).unwrap())
        .await
        .expect("create pool");
    let proxies = maxes
        .iter()
        .enumerate()
        .map(|(i, max)| {
            Proxy::builder(p.id, format!("10.77.0.{i}"), 8000)
                .max_concurrency(*max)
                .build()
                .unwrap()
        })
        .collect();
    storage.add_proxies(proxies).await.expect("add proxies")
}

/// Counters agree with the live leases: every proxy's `current_leases` is its
/// number of live leases (as listed), never above its `max_concurrency`, the
/// pool's stats say the same, and the audit has nothing to repair.
async fn assert_consistent(
    storage: &RedisStorage,
    pool: &str,
    proxies: &[Proxy],
    expected_live: usize,
) {
    let leased = assert_counts_match(storage, pool, proxies, expected_live).await;
    let stats = storage.pool_stats(&pn(pool)).await.expect("pool stats");
    assert_eq!(stats.total_leases, expected_live as u64, "{stats:?}");
    assert_eq!(stats.leased_proxies, leased, "{stats:?}");
}

/// [`assert_consistent`] without the pool stats (which need `MULTI`); returns
/// how many proxies hold a lease.
async fn assert_counts_match(
    storage: &RedisStorage,
    pool: &str,
    proxies: &[Proxy],
    expected_live: usize,
) -> u64 {
    let leases = storage.list_leases(&pn(pool)).await.expect("list leases");
    assert_eq!(leases.len(), expected_live, "live leases: {leases:#?}");
    let mut per_proxy: HashMap<Uuid, i64> = HashMap::new();
    for l in &leases {
        assert_eq!(l.status, LeaseStatus::Active);
        *per_proxy.entry(l.proxy_id).or_default() += 1;
    }
    for p in proxies {
        let now = storage.get_proxy(p.id).await.unwrap().expect("proxy");
        let live = per_proxy.get(&p.id).copied().unwrap_or(0);
        assert_eq!(
            i64::from(now.current_leases),
            live,
            "proxy {}: current_leases against its live leases",
            p.id
        );
        assert!(
            i64::from(now.current_leases) <= i64::from(p.max_concurrency.unwrap()),
            "proxy {} over-leased: {} > {:?}",
            p.id,
            now.current_leases,
            p.max_concurrency
        );
    }
    // The audit may repair, so Redis refuses it while out of memory (it refuses
    // every function that may write then); otherwise it finds nothing to repair.
    match storage.audit_pool(pool, 100).await {
        Ok(fixes) => assert!(fixes.is_empty(), "the audit had to repair: {fixes:?}"),
        Err(e) => assert_eq!(
            e.backend_kind(),
            Some(lighthouse_lease::BackendErrorKind::OutOfMemory),
            "audit: {e}"
        ),
    }
    per_proxy.len() as u64
}

/// Nothing is held any more: every counter is 0, no lease is live, no record
/// is live (active and not past its expiry), cleanup finds nothing, the audit repairs nothing.
async fn assert_no_leak(
    storage: &RedisStorage,
    conn: &mut MultiplexedConnection,
    ns: &str,
    pool: &str,
    proxies: &[Proxy],
) {
    assert_eq!(storage.cleanup_expired_leases().await.unwrap(), 0);
    assert_consistent(storage, pool, proxies, 0).await;
    let stats = storage.pool_stats(&pn(pool)).await.unwrap();
    assert_eq!(stats.available_proxies, proxies.len() as u64, "{stats:?}");
    let n: i64 = redis::cmd("ZCARD")
        .arg(format!("{ns}:{{{pool}}}:live"))
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(n, 0, "the live set is not empty");
    let live = support::live_lease_records(conn, ns, pool).await;
    assert!(live.is_empty(), "records still live: {live:?}");
}

/// `INFO errorstats` count of one error code (`NOSCRIPT`, `OOM`).
async fn error_count(conn: &mut MultiplexedConnection, code: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("errorstats")
        .query_async(conn)
        .await
        .expect("INFO errorstats");
    let prefix = format!("errorstat_{code}:count=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|n| n.trim().parse().expect("error count"))
        .unwrap_or(0)
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("worker: {name} is not set"))
}

// ---------------------------------------------------------------------------
// Worker processes.

/// The entry point of worker processes. In a normal test run it does nothing.
#[test]
fn worker_entry() {
    let Ok(role) = std::env::var(WORKER_ENV) else {
        return;
    };
    match role.as_str() {
        "renewing-holder" => runtime().block_on(renewing_holder()),
        other => panic!("worker: unknown role {other:?}"),
    }
}

/// Acquires one lease and renews it every fifth of its duration, the way a
/// crawler keeps its proxy, until a renewal fails; then releases it and reports
/// what both calls said.
async fn renewing_holder() {
    let url = env("LHF_URL");
    let ns = env("LHF_NS");
    let pool = env("LHF_POOL");
    let lease_ms: u64 = env("LHF_LEASE_MS").parse().expect("LHF_LEASE_MS");
    let duration = Duration::from_millis(lease_ms);
    let manager = ProxyManager::new(storage_on(&url, &ns));
    let mut lease = manager
        .acquire_proxy(&pool, AcquireOptions::new().duration(duration))
        .await
        .expect("acquire")
        .expect("a free proxy");
    println!(
        "{REPORT} HOLDING {} {} {}",
        lease.id, lease.fencing_token, lease.proxy_id
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(duration / 5).await;
        match manager.extend_lease(&lease, duration).await {
            Ok(renewed) => lease = renewed,
            Err(e) => {
                let extend = match &e {
                    Error::LeaseLost { id, reason } if *id == lease.id => format!("lost:{reason}"),
                    other => format!("error:{other}"),
                };
                let release = match manager.release_proxy(&lease).await {
                    Ok(outcome) => outcome.as_str().to_string(),
                    Err(e) => format!("error:{e}"),
                };
                println!("{REPORT} RESULT extend={extend} release={release}");
                return;
            }
        }
        assert!(Instant::now() < deadline, "holder: never lost its lease");
    }
}

/// Kills the worker on drop, so a failing test leaves none behind (and never a
/// stopped one).
struct WorkerGuard(Option<Child>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed: {status}");
}

/// The state of a process from `/proc/<pid>/stat` (`T` when stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

// ---------------------------------------------------------------------------
// 1. FUNCTION FLUSH under load.

/// The function library flushed several times while tasks hammer one small
/// pool: a call that finds it gone loads it again (Redis counts each
/// `ERR Function not found`), no error reaches a caller, an independent holder
/// set never sees a proxy over its limit, and everything is given back at the end.
#[test]
fn function_flush_under_load() {
    const POOL: &str = "flush";
    const TASKS: usize = 12;
    const FLUSHES: usize = 6;
    let server = FaultServer::start(&[]);
    let url = server.url();
    let ns = "faults-flush";
    let rt = runtime();
    rt.block_on(async {
        let storage = storage_on(&url, ns);
        let proxies = make_pool(&storage, POOL, &[1, 1, 2, 2]).await;
        let maxes: Arc<HashMap<Uuid, usize>> = Arc::new(
            proxies
                .iter()
                .map(|p| (p.id, p.max_concurrency.unwrap() as usize))
                .collect(),
        );
        let manager = ProxyManager::builder(storage)
            .auto_register_consumers(true)
            .build();
        let conn = support::raw_conn(&url).await;
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(Mutex::new(Vec::<String>::new()));
        let (cycles, exhausted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let manager = manager.clone();
            let maxes = Arc::clone(&maxes);
            let mut conn = conn.clone();
            let (stop, violations) = (Arc::clone(&stop), Arc::clone(&violations));
            let (cycles, exhausted) = (Arc::clone(&cycles), Arc::clone(&exhausted));
            tasks.push(tokio::spawn(async move {
                let options = AcquireOptions::new()
                    .consumer(format!("t{t}"))
                    .duration(Duration::from_secs(30));
                while !stop.load(Ordering::Relaxed) {
                    let lease = match manager.acquire_proxy(POOL, options.clone()).await {
                        Ok(Some(lease)) => lease,
                        Ok(None) => {
                            exhausted.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                        Err(e) => panic!("task {t}: acquire failed: {e:?}"),
                    };
                    // The independent observer: who holds this proxy right now.
                    let key = format!("{ns}-check:holders:{}", lease.proxy_id);
                    let (added, members): (i64, Vec<String>) = redis::pipe()
                        .atomic()
                        .sadd(&key, lease.id.to_string())
                        .smembers(&key)
                        .query_async(&mut conn)
                        .await
                        .expect("SADD/SMEMBERS");
                    assert_eq!(added, 1, "lease id {} handed out twice", lease.id);
                    if members.len() > maxes[&lease.proxy_id] {
                        violations.lock().unwrap().push(format!(
                            "proxy {} (max {}) held by {members:?}",
                            lease.proxy_id, maxes[&lease.proxy_id]
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=2))).await;
                    let removed: i64 = redis::cmd("SREM")
                        .arg(&key)
                        .arg(lease.id.to_string())
                        .query_async(&mut conn)
                        .await
                        .expect("SREM");
                    assert_eq!(removed, 1);
                    match manager.release_proxy(&lease).await {
                        Ok(ReleaseOutcome::Released) => {}
                        other => panic!("task {t}: release of a live lease: {other:?}"),
                    }
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let mut flusher = conn.clone();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..FLUSHES {
            let mode = if i % 2 == 0 { "SYNC" } else { "ASYNC" };
            let _: () = redis::cmd("FUNCTION")
                .arg("FLUSH")
                .arg(mode)
                .query_async(&mut flusher)
                .await
                .expect("FUNCTION FLUSH");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("no task failed");
        }
        let violations = violations.lock().unwrap().clone();
        assert!(violations.is_empty(), "over-lease: {violations:#?}");
        let (cycles, exhausted) = (
            cycles.load(Ordering::Relaxed),
            exhausted.load(Ordering::Relaxed),
        );
        // `ERR Function not found` (no other error happens here).
        let noscript = error_count(&mut flusher, "ERR").await;
        eprintln!(
            "{TASKS} tasks, {FLUSHES} flushes: {cycles} cycles, {exhausted} acquires found \
             the pool full, {noscript} missing-function replies recovered"
        );
        assert!(cycles >= 200, "too few cycles to mean anything: {cycles}");
        assert!(exhausted > 0, "the pool was never full: no contention");
        // The flushes really hit calls in flight (at least one per flush).
        assert!(
            noscript >= FLUSHES as u64,
            "only {noscript} missing-function replies for {FLUSHES} flushes"
        );
        let mut conn = conn.clone();
        assert_no_leak(manager.storage(), &mut conn, ns, POOL, &proxies).await;
        let statuses = support::lease_record_states(&mut conn, ns, POOL).await;
        assert_eq!(
            statuses.get("released").copied(),
            Some(cycles),
            "{statuses:?}"
        );
    });
}

// ---------------------------------------------------------------------------
// 2. Restarts.

/// A crash (SIGKILL) and restart with AOF, fsync always: the acknowledged leases
/// and their counts survive, the full proxy stays full, and the same manager
/// (its scripts gone from the new server's cache) releases them.
#[test]
fn restart_with_aof_keeps_acknowledged_leases() {
    const POOL: &str = "aof";
    let mut server = FaultServer::start_aof(&[]);
    let url = server.url();
    let ns = "faults-aof";
    let rt = runtime();
    let manager = ProxyManager::new(storage_on(&url, ns));
    let (proxies, held) = rt.block_on(async {
        let proxies = make_pool(manager.storage(), POOL, &[2]).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(
                manager
                    .acquire_proxy(POOL, AcquireOptions::new().duration_seconds(600))
                    .await
                    .unwrap()
                    .expect("a free slot"),
            );
        }
        (proxies, held)
    });
    server.kill();
    server.restart();
    rt.block_on(async {
        let storage = manager.storage();
        // The pooled connections died with the server: they are replaced.
        wait_recovered(storage, 4).await;
        let listed = storage.list_leases(&pn(POOL)).await.unwrap();
        let ids: HashSet<Uuid> = listed.iter().map(|l| l.id).collect();
        let want: HashSet<Uuid> = held.iter().map(|l| l.id).collect();
        assert_eq!(ids, want, "the acknowledged leases survived");
        for l in &held {
            let now = storage
                .get_lease(&pn(POOL), l.id)
                .await
                .unwrap()
                .expect("record");
            assert_eq!(
                (now.status, now.fencing_token, now.expires_at),
                (LeaseStatus::Active, l.fencing_token, l.expires_at)
            );
        }
        assert_consistent(storage, POOL, &proxies, 2).await;
        // Still full: the restart gave no capacity away.
        assert!(manager
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .is_none());
        for l in &held {
            assert_eq!(
                manager.release_proxy(l).await.unwrap(),
                ReleaseOutcome::Released
            );
            assert_eq!(
                manager.release_proxy(l).await.unwrap(),
                ReleaseOutcome::AlreadyReleased
            );
        }
        let mut conn = support::raw_conn(&url).await;
        assert_no_leak(storage, &mut conn, ns, POOL, &proxies).await;
        // And it leases again after the restart.
        let again = manager
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .expect("a free slot");
        assert!(again.fencing_token > held[1].fencing_token);
        manager.release_proxy(&again).await.unwrap();
        assert_no_leak(storage, &mut conn, ns, POOL, &proxies).await;
    });
}

/// A restart without persistence loses everything, by design of such a
/// deployment: the pool is unknown (`PoolNotFound`), the old lease's release says
/// `NotFound` and its extension `LeaseLost`, the proxy is gone. The same manager
/// works again as soon as the pool is created again.
#[test]
fn restart_without_persistence_forgets_everything() {
    const POOL: &str = "volatile";
    let mut server = FaultServer::start(&[]);
    let url = server.url();
    let ns = "faults-volatile";
    let rt = runtime();
    let manager = ProxyManager::new(storage_on(&url, ns));
    let (proxies, held) = rt.block_on(async {
        let proxies = make_pool(manager.storage(), POOL, &[1]).await;
        let held = manager
            .acquire_proxy(POOL, AcquireOptions::new().duration_seconds(600))
            .await
            .unwrap()
            .expect("a free slot");
        (proxies, held)
    });
    server.kill();
    server.restart();
    rt.block_on(async {
        let storage = manager.storage();
        // The pooled connections died with the server: they are replaced.
        wait_recovered(storage, 4).await;
        let err = manager.acquire_proxy(POOL, AcquireOptions::new()).await;
        assert!(
            matches!(&err, Err(Error::PoolNotFound { name }) if name == POOL),
            "{err:?}"
        );
        assert_eq!(
            manager.release_proxy(&held).await.unwrap(),
            ReleaseOutcome::NotFound
        );
        let extended = manager.extend_lease(&held, Duration::from_secs(60)).await;
        assert!(
            matches!(extended, Err(Error::LeaseLost { id, .. }) if id == held.id),
            "{extended:?}"
        );
        assert!(storage.get_proxy(proxies[0].id).await.unwrap().is_none());
        assert!(storage.pool_names().await.unwrap().is_empty());
        let dbsize: i64 = redis::cmd("DBSIZE")
            .query_async(&mut support::raw_conn(&url).await)
            .await
            .unwrap();
        assert_eq!(dbsize, 0, "a restart without persistence keeps nothing");

        // Created again, the pool works with the same manager.
        let proxies = make_pool(storage, POOL, &[1]).await;
        let lease = manager
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .expect("a free slot");
        assert_eq!(lease.proxy_id, proxies[0].id);
        assert!(manager
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            manager.release_proxy(&lease).await.unwrap(),
            ReleaseOutcome::Released
        );
        let mut conn = support::raw_conn(&url).await;
        assert_no_leak(storage, &mut conn, ns, POOL, &proxies).await;
    });
}

// ---------------------------------------------------------------------------
// 3. A holder paused past its lease.

/// A holder process that renews its lease is stopped (SIGSTOP) past the lease's
/// expiry; meanwhile the test acquires the proxy. Resumed (SIGCONT), the holder's
/// next renewal fails with `LeaseLost`, its release says `Expired`, and its
/// fencing token is lower than the new holder's.
#[test]
fn sigstopped_holder_loses_its_lease() {
    const POOL: &str = "paused";
    const LEASE_MS: u64 = 1500;
    let server = FaultServer::start(&[]);
    let url = server.url();
    let ns = "faults-paused";
    let rt = runtime();
    let manager = ProxyManager::new(storage_on(&url, ns));
    let proxies = rt.block_on(make_pool(manager.storage(), POOL, &[1]));

    let exe = std::env::current_exe().expect("current test binary");
    let child = Command::new(exe)
        .args(["worker_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, "renewing-holder")
        .env("LHF_URL", &url)
        .env("LHF_NS", ns)
        .env("LHF_POOL", POOL)
        .env("LHF_LEASE_MS", LEASE_MS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the holder process");
    let mut guard = WorkerGuard(Some(child));
    let child = guard.0.as_mut().unwrap();
    let pid = child.id();
    // Its report lines, read on a thread so the test can wait with a timeout.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(at) = line.find(REPORT) {
                let _ = tx.send(line[at + REPORT.len() + 1..].to_string());
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let mut next_line = |what: &str| -> String {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let mut err = String::new();
                let _ = stderr.read_to_string(&mut err);
                panic!("the holder never reported {what}:\n{err}");
            }
        }
    };
    let holding = next_line("HOLDING");
    let fields: Vec<&str> = holding
        .strip_prefix("HOLDING ")
        .unwrap_or_else(|| panic!("unexpected report {holding:?}"))
        .split(' ')
        .collect();
    let old_id: Uuid = fields[0].parse().unwrap();
    let old_token: u64 = fields[1].parse().unwrap();
    let proxy_id: Uuid = fields[2].parse().unwrap();
    assert_eq!(proxy_id, proxies[0].id);

    rt.block_on(async {
        let storage = manager.storage();
        let mut conn = support::raw_conn(&url).await;
        // Let it renew at least once, then freeze it.
        tokio::time::sleep(Duration::from_millis(LEASE_MS / 2)).await;
        signal(pid, "STOP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_state(pid) != Some('T') {
            assert!(Instant::now() < deadline, "the holder did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A renewal already on the wire still lands: read the expiry after it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = storage
            .get_lease(&pn(POOL), old_id)
            .await
            .unwrap()
            .expect("record");
        assert_eq!(before.status, LeaseStatus::Active);
        assert!(
            before.expires_at
                > before.acquired_at + chrono::Duration::milliseconds(LEASE_MS as i64),
            "the holder renewed its lease before being stopped"
        );
        // While the lease runs, the proxy is taken.
        assert!(manager
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .is_none());
        assert!(
            redis_time_ms(&mut conn).await < before.expires_at.timestamp_millis(),
            "the machine is too slow for this test"
        );
        wait_redis_time_past(&mut conn, before.expires_at.timestamp_millis()).await;
        assert_eq!(proc_state(pid), Some('T'), "the holder is still stopped");
        // The expired slot goes to someone else.
        let new = manager
            .acquire_proxy(POOL, AcquireOptions::new().duration_seconds(60))
            .await
            .unwrap()
            .expect("the expired lease's slot is free");
        assert_eq!(new.proxy_id, proxy_id);
        assert!(
            new.fencing_token > old_token,
            "fencing: new {} against old {old_token}",
            new.fencing_token
        );
        let old = storage
            .get_lease(&pn(POOL), old_id)
            .await
            .unwrap()
            .expect("record");
        assert_eq!(old.status, LeaseStatus::Expired);
        assert_consistent(storage, POOL, &proxies, 1).await;

        signal(pid, "CONT");
        let result = next_line("RESULT");
        assert_eq!(
            result, "RESULT extend=lost:expired release=expired",
            "what the resumed holder was told"
        );
        // Its late release gave nothing back: the new holder still has the slot.
        assert_consistent(storage, POOL, &proxies, 1).await;
        assert!(manager
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
            .is_none());
        let status = guard.0.as_mut().unwrap().wait().unwrap();
        assert!(status.success(), "holder exited with {status}");
        guard.0 = None;

        assert_eq!(
            manager.release_proxy(&new).await.unwrap(),
            ReleaseOutcome::Released
        );
        assert_no_leak(storage, &mut conn, ns, POOL, &proxies).await;
    });
}

// ---------------------------------------------------------------------------
// 4. Redis unreachable for a while.

/// Redis is killed, stays down for a few seconds, and comes back (AOF) on the
/// same port. Calls during the outage fail fast (connect and response timeouts
/// of 500 ms); after it the same manager works again on every pooled connection
/// with no help, and the lease acquired before the outage is still there.
#[test]
fn redis_unreachable_then_back() {
    const POOL: &str = "outage";
    const POOL_SIZE: usize = 4;
    const TIMEOUT: Duration = Duration::from_millis(500);
    let mut server = FaultServer::start_aof(&[]);
    let url = server.url();
    let ns = "faults-outage";
    let rt = runtime();
    let manager = ProxyManager::new(
        RedisStorage::new(
            RedisConfig::from_url(&url)
                .namespace(ns)
                .pool_size(POOL_SIZE)
                .connect_timeout(TIMEOUT)
                .response_timeout(TIMEOUT)
                .wait_timeout(TIMEOUT),
        )
        .unwrap(),
    );
    let (proxies, held) = rt.block_on(async {
        let proxies = make_pool(manager.storage(), POOL, &[1, 3]).await;
        let held = manager
            .acquire_proxy(POOL, AcquireOptions::new().duration_seconds(600))
            .await
            .unwrap()
            .expect("a free slot");
        // Use every pooled connection before the outage.
        for _ in 0..2 * POOL_SIZE {
            manager.storage().pool_stats(&pn(POOL)).await.unwrap();
        }
        (proxies, held)
    });
    server.kill();
    rt.block_on(async {
        let outage = Instant::now();
        let mut failures = 0;
        // At least 3 s of outage, and every pooled connection tried at least
        // twice (a loaded machine may fit fewer rounds in the 3 s).
        while outage.elapsed() < Duration::from_secs(3) || failures < 2 * POOL_SIZE {
            let started = Instant::now();
            let got = manager.acquire_proxy(POOL, AcquireOptions::new()).await;
            let took = started.elapsed();
            assert!(
                matches!(got, Err(Error::Backend { .. })),
                "acquire with Redis down: {got:?}"
            );
            assert!(
                took < Duration::from_secs(2),
                "a call with Redis down took {took:?}"
            );
            let released = manager.release_proxy(&held).await;
            assert!(
                matches!(released, Err(Error::Backend { .. })),
                "release with Redis down: {released:?}"
            );
            failures += 2;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    server.restart();
    rt.block_on(async {
        let storage = manager.storage();
        // The first call that works marks the recovery...
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut failed_after_restart = 0;
        while let Err(e) = storage.pool_stats(&pn(POOL)).await {
            failed_after_restart += 1;
            assert!(Instant::now() < deadline, "never recovered: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Every slot's dead connection was discarded during the outage, and the
        // server answers PING before `restart` returns: nothing fails.
        assert_eq!(failed_after_restart, 0, "calls failed after the restart");
        // ...after which every pooled connection works: no call fails.
        let mut leases = Vec::new();
        for i in 0..3 * POOL_SIZE {
            match manager.acquire_proxy(POOL, AcquireOptions::new()).await {
                Ok(Some(lease)) => leases.push(lease),
                Ok(None) => {}
                Err(e) => panic!("call {i} after the recovery failed: {e}"),
            }
            if leases.len() == 3 {
                for l in leases.drain(..) {
                    assert_eq!(
                        manager.release_proxy(&l).await.unwrap(),
                        ReleaseOutcome::Released
                    );
                }
            }
        }
        for l in leases {
            manager.release_proxy(&l).await.unwrap();
        }
        // The lease from before the outage survived (AOF) and releases once.
        let still = storage
            .get_lease(&pn(POOL), held.id)
            .await
            .unwrap()
            .expect("record");
        assert_eq!(still.status, LeaseStatus::Active);
        assert_consistent(storage, POOL, &proxies, 1).await;
        assert_eq!(
            manager.release_proxy(&held).await.unwrap(),
            ReleaseOutcome::Released
        );
        let mut conn = support::raw_conn(&url).await;
        assert_no_leak(storage, &mut conn, ns, POOL, &proxies).await;
    });
}

// ---------------------------------------------------------------------------
// 5. A reply lost after the script ran.

/// A TCP proxy between the client and Redis that forwards everything, except
/// that it can be told to swallow the reply to the next `EVALSHA` whose request
/// carries a marker, and then close that client connection.
struct LossyProxy {
    port: u16,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    swallowed: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    async fn start(upstream: u16) -> LossyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let marker: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let swallowed: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (m, s) = (Arc::clone(&marker), Arc::clone(&swallowed));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                tokio::spawn(Self::pipe(client, server, Arc::clone(&m), Arc::clone(&s)));
            }
        });
        LossyProxy {
            port,
            marker,
            swallowed,
            task,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Swallow the reply to the next `FCALL` that contains `marker`.
    fn arm(&self, marker: &str) {
        *self.marker.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    async fn pipe(
        client: tokio::net::TcpStream,
        server: tokio::net::TcpStream,
        marker: Arc<Mutex<Option<Vec<u8>>>>,
        swallowed: Arc<Mutex<Vec<Vec<u8>>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let (mut cbuf, mut sbuf) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut swallow = false;
        loop {
            tokio::select! {
                n = cr.read(&mut cbuf) => {
                    let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                    let chunk = &cbuf[..n];
                    {
                        let mut armed = marker.lock().unwrap();
                        if let Some(m) = armed.as_deref() {
                            if contains(chunk, b"FCALL") && contains(chunk, m) {
                                swallow = true;
                                *armed = None;
                            }
                        }
                    }
                    if sw.write_all(chunk).await.is_err() {
                        return;
                    }
                }
                n = sr.read(&mut sbuf) => {
                    let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                    if swallow {
                        // Redis ran the command; its reply never reaches the
                        // client, whose connection closes (both sockets drop).
                        swallowed.lock().unwrap().push(sbuf[..n].to_vec());
                        return;
                    }
                    if cw.write_all(&sbuf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to an idempotent acquire is lost after the script ran: the
/// storage sends it again by itself (it has a request id) and the call returns
/// the lease the lost attempt took, not a second one; so does a later retry by
/// the caller with the same request id.
#[test]
fn lost_acquire_reply_retry_returns_the_same_lease() {
    const POOL: &str = "lossy";
    let server = FaultServer::start(&[]);
    let ns = "faults-lossy";
    let rt = runtime();
    rt.block_on(async {
        let direct = storage_on(&server.url(), ns);
        // Room for two leases: a retry that is not idempotent would get a second.
        let proxies = make_pool(&direct, POOL, &[2]).await;
        let proxy = LossyProxy::start(server.port).await;
        let manager = ProxyManager::new(storage_on(&proxy.url(), ns));
        // Functions loaded and the consumer known: the armed FCALL is the acquire.
        manager.storage().load_scripts().await.unwrap();
        manager
            .storage()
            .ensure_consumer(&cn("lossy"))
            .await
            .unwrap();
        let request_id = format!("lostreply{}", Uuid::new_v4().simple());
        let options = AcquireOptions::new()
            .consumer("lossy")
            .duration_seconds(60)
            .request_id(&request_id);

        proxy.arm(&request_id);
        let started = Instant::now();
        let first = manager
            .acquire_proxy(POOL, options.clone())
            .await
            .expect("the acquire whose reply was lost is sent again")
            .expect("and returns the lease");
        assert!(started.elapsed() < Duration::from_secs(5));
        let swallowed = proxy.swallowed.lock().unwrap().concat();
        assert!(
            // One request's reply is one string: `OK <token> ...`.
            swallowed.starts_with(b"$") && swallowed.windows(4).any(|w| w == b"\nOK "),
            "the swallowed reply is the script's success: {:?}",
            String::from_utf8_lossy(&swallowed)
        );
        // The script ran once: Redis holds one lease, the one the call returned.
        let live = direct.list_leases(&pn(POOL)).await.unwrap();
        assert_eq!(live.len(), 1, "{live:#?}");
        assert_eq!(first.id, live[0].id, "the lease the lost attempt took");

        let retry = manager
            .acquire_proxy(POOL, options.clone())
            .await
            .expect("the retry works")
            .expect("the retry returns the lease");
        assert_eq!(retry.id, live[0].id, "the retry returns the same lease");
        assert_eq!(retry.fencing_token, live[0].fencing_token);
        assert_eq!(retry.status, LeaseStatus::Active);
        let p = direct.get_proxy(proxies[0].id).await.unwrap().unwrap();
        assert_eq!(p.current_leases, 1, "one lease counted, not two");
        assert_consistent(&direct, POOL, &proxies, 1).await;
        // A third call with the same id still gets the same lease.
        let again = manager.acquire_proxy(POOL, options).await.unwrap().unwrap();
        assert_eq!(again.id, retry.id);

        assert_eq!(
            manager.release_proxy(&retry).await.unwrap(),
            ReleaseOutcome::Released
        );
        let mut conn = support::raw_conn(&server.url()).await;
        assert_no_leak(&direct, &mut conn, ns, POOL, &proxies).await;
    });
}

// ---------------------------------------------------------------------------
// 6. Memory pressure.

/// `server_warnings` flags an eviction policy (lease keys could be evicted) and
/// a server that will not say, and is quiet for `noeviction`.
#[test]
fn server_warnings_flag_eviction_policies() {
    let server = FaultServer::start(&["--maxmemory-policy", "allkeys-lru"]);
    let locked = FaultServer::start(&["--rename-command", "CONFIG", ""]);
    let rt = runtime();
    rt.block_on(async {
        let storage = storage_on(&server.url(), "faults-warn");
        let warnings = storage.server_warnings().await.unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("allkeys-lru") && warnings[0].contains("noeviction"),
            "{warnings:?}"
        );
        let mut conn = support::raw_conn(&server.url()).await;
        for (policy, warns) in [
            ("volatile-ttl", true),
            ("noeviction", false),
            ("allkeys-random", true),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg(policy)
                .query_async(&mut conn)
                .await
                .unwrap();
            let warnings = storage.server_warnings().await.unwrap();
            assert_eq!(!warnings.is_empty(), warns, "{policy}: {warnings:?}");
        }
        // maxmemory 0 (the default) with noeviction: nothing to say.
        let fine = FaultServer::start(&[]);
        let warnings = storage_on(&fine.url(), "faults-warn")
            .server_warnings()
            .await
            .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        // CONFIG disabled: a warning that the policy could not be checked.
        let warnings = storage_on(&locked.url(), "faults-warn")
            .server_warnings()
            .await
            .unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("cannot check"), "{warnings:?}");
    });
}

/// Redis out of memory (`noeviction`, a tiny `maxmemory`, filled until writes
/// fail): acquire and release fail with an error and write nothing; once memory
/// is raised, counts match live leases, the audit repairs nothing, and the held
/// leases release normally.
#[test]
fn out_of_memory_fails_cleanly() {
    const POOL: &str = "oom";
    let server = FaultServer::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let url = server.url();
    let ns = "faults-oom";
    let rt = runtime();
    rt.block_on(async {
        let storage = storage_on(&url, ns);
        let proxies = make_pool(&storage, POOL, &[2, 2, 2]).await;
        let manager = ProxyManager::new(storage);
        let storage = manager.storage();
        let options = AcquireOptions::new().duration_seconds(60);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                manager
                    .acquire_proxy(POOL, options.clone())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let mut conn = support::raw_conn(&url).await;
        // Fill Redis until a write fails.
        let value = vec![b'x'; 16 * 1024];
        let mut filled = 0;
        let oom = loop {
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("{ns}-filler:{filled}"))
                .arg(&value)
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => filled += 1,
                Err(e) => break e,
            }
            assert!(filled < 10_000, "Redis never ran out of memory");
        };
        assert!(oom.to_string().contains("OOM"), "{oom}");
        let oom_before = error_count(&mut conn, "OOM").await;

        for _ in 0..5 {
            let got = manager.acquire_proxy(POOL, options.clone()).await;
            assert!(
                matches!(&got, Err(e @ Error::Backend { .. }) if e.to_string().contains("OOM")),
                "acquire out of memory: {got:?}"
            );
        }
        let released = manager.release_proxy(&held[0]).await;
        assert!(
            matches!(&released, Err(e @ Error::Backend { .. }) if e.to_string().contains("OOM")),
            "release out of memory: {released:?}"
        );
        let extended = manager
            .extend_lease(&held[1], Duration::from_secs(120))
            .await;
        assert!(
            matches!(&extended, Err(Error::Backend { .. })),
            "extend out of memory: {extended:?}"
        );
        // Redis refused them (the scripts' first write hit the limit).
        assert!(error_count(&mut conn, "OOM").await >= oom_before + 7);
        // Reads still work, and nothing was half-written.
        assert_counts_match(storage, POOL, &proxies, held.len()).await;
        let stats = storage.pool_stats(&pn(POOL)).await;
        eprintln!("pool_stats out of memory: {stats:?}");

        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("0")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_consistent(storage, POOL, &proxies, held.len()).await;
        for l in &held {
            let record = storage.get_lease(&pn(POOL), l.id).await.unwrap().unwrap();
            assert_eq!(
                (record.status, record.expires_at),
                (LeaseStatus::Active, l.expires_at),
                "the failed calls changed nothing"
            );
            assert_eq!(
                manager.release_proxy(l).await.unwrap(),
                ReleaseOutcome::Released
            );
        }
        // Room again: it leases.
        let lease = manager.acquire_proxy(POOL, options).await.unwrap().unwrap();
        manager.release_proxy(&lease).await.unwrap();
        assert_no_leak(storage, &mut conn, ns, POOL, &proxies).await;
    });
}

/// Pool stats stay readable while Redis is out of memory (Redis 7 refuses MULTI
/// then, so they are read by a read-only `no-writes` script), so the sweeper's
/// gauges and the manager's hooks keep working exactly when ops need them.
#[test]
fn pool_stats_readable_out_of_memory() {
    const POOL: &str = "oom-stats";
    let server = FaultServer::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let url = server.url();
    let ns = "faults-oom-stats";
    runtime().block_on(async {
        let storage = storage_on(&url, ns);
        make_pool(&storage, POOL, &[1, 1]).await;
        let mut conn = support::raw_conn(&url).await;
        let value = vec![b'x'; 16 * 1024];
        for i in 0..10_000 {
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("{ns}-filler:{i}"))
                .arg(&value)
                .query_async(&mut conn)
                .await;
            if r.is_err() {
                break;
            }
        }
        let stats = storage.pool_stats(&pn(POOL)).await;
        assert!(
            matches!(&stats, Ok(s) if s.total_proxies == 2 && s.total_leases == 0),
            "{stats:?}"
        );
    });
}
