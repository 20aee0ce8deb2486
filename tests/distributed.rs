#![cfg(all(feature = "redis", unix))]
//! Distributed correctness of `RedisStorage`, with real OS processes.
//!
//! - [`no_over_lease_across_processes`]: several worker processes, each with many
//!   tokio tasks, hammer acquire → hold → release on one pool. While holding, every
//!   holder registers itself in a per-proxy Redis set written by the test, not by
//!   the library, and checks the set's size against the proxy's `max_concurrency`
//!   (a Jepsen-style independent observer). Afterwards every counter must be 0 and
//!   no lease may be live.
//! - [`sigkill_loses_leases_only_at_expiry`]: a worker fills two pools and is
//!   killed with SIGKILL. Its capacity must stay taken until the leases expire,
//!   then come back through acquire (pool B) and cleanup (pool A).
//!
//! Worker processes are this test binary run again: `<exe> worker_entry --exact`
//! with `LIGHTHOUSE_WORKER=<role>` and `REDIS_URL` pointing at the parent's Redis
//! (see `tests/support`), so a child never starts a server of its own.

mod support;
use support::pn;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lighthouse_lease::{
    AcquireOptions, AdminStorage, LeaseStatus, LeaseStorage, Proxy, ProxyManager, ProxyPool,
    ReleaseOutcome, SelectorStrategy,
};
use uuid::Uuid;

/// Set (to the worker's role) in a child process; unset in the test process.
const WORKER_ENV: &str = "LIGHTHOUSE_WORKER";
/// Prefix of the lines a worker prints for its parent.
const REPORT: &str = "LHW";

const SELECTORS: [SelectorStrategy; 4] = [
    SelectorStrategy::LeastUsed,
    SelectorStrategy::FirstAvailable,
    SelectorStrategy::RoundRobin,
    SelectorStrategy::Random,
];

// ---------------------------------------------------------------------------
// Helpers shared by parent and workers.

use support::{runtime, storage_on};

/// Keys the test writes itself (never through the library), next to the
/// library's namespace but not inside it.
fn check_ns(ns: &str) -> String {
    format!("{ns}-check")
}

fn holders_key(ns: &str, proxy: Uuid) -> String {
    format!("{}:holders:{proxy}", check_ns(ns))
}

/// Redis's clock, the one lease expiry is measured with, in ms.
async fn redis_time_ms(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * 1000 + micros / 1000
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("worker: {name} is not set"))
}

fn env_num<T: std::str::FromStr>(name: &str) -> T {
    env(name)
        .parse()
        .unwrap_or_else(|_| panic!("worker: {name} is not a number"))
}

// ---------------------------------------------------------------------------
// Worker processes.

/// The entry point of worker processes. In a normal test run it does nothing.
#[test]
fn worker_entry() {
    let Ok(role) = std::env::var(WORKER_ENV) else {
        return;
    };
    // A worker must use the parent's Redis, never start one of its own.
    let url = std::env::var("REDIS_URL").unwrap_or_default();
    assert!(
        !url.trim().is_empty(),
        "worker: REDIS_URL must be set by the parent"
    );
    let rt = runtime();
    match role.as_str() {
        "hammer" => rt.block_on(hammer_worker(url)),
        "holder" => rt.block_on(holder_worker(url)),
        other => panic!("worker: unknown role {other:?}"),
    }
}

/// Acquire → hold → release, `LHW_CYCLES` successful cycles in each of
/// `LHW_TASKS` tasks, checking the holders sets while holding.
async fn hammer_worker(url: String) {
    let ns = env("LHW_NS");
    let pool = env("LHW_POOL");
    let proc_idx: usize = env_num("LHW_PROC");
    let procs: i64 = env_num("LHW_PROCS");
    let tasks: usize = env_num("LHW_TASKS");
    let cycles: u64 = env_num("LHW_CYCLES");
    let lease_ms: u64 = env_num("LHW_LEASE_MS");
    let maxes: Arc<HashMap<Uuid, usize>> = Arc::new(
        env("LHW_PROXIES")
            .split(',')
            .map(|entry| {
                let (id, max) = entry.split_once('=').expect("id=max");
                (id.parse().expect("proxy id"), max.parse().expect("max"))
            })
            .collect(),
    );
    let check = check_ns(&ns);
    let me = std::process::id();

    let manager = ProxyManager::builder(storage_on(&url, &ns))
        .auto_register_consumers(true)
        .build();
    let mut conn = support::raw_conn(&url).await;

    // Start barrier, so that every process hammers at the same time.
    let _: i64 = redis::cmd("INCR")
        .arg(format!("{check}:ready"))
        .query_async(&mut conn)
        .await
        .expect("INCR ready");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready: i64 = redis::cmd("GET")
            .arg(format!("{check}:ready"))
            .query_async(&mut conn)
            .await
            .expect("GET ready");
        if ready >= procs {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker {proc_idx}: only {ready} of {procs} workers started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut handles = Vec::new();
    for t in 0..tasks {
        let manager = manager.clone();
        let maxes = Arc::clone(&maxes);
        let mut conn = conn.clone();
        let pool = pool.clone();
        let ns = ns.clone();
        let check = check.clone();
        handles.push(tokio::spawn(async move {
            let options = AcquireOptions::new()
                .consumer(format!("p{proc_idx}-t{t}"))
                .duration(Duration::from_millis(lease_ms))
                .selector(SELECTORS[t % SELECTORS.len()]);
            let (mut done, mut exhausted, mut cross, mut violations) = (0u64, 0u64, 0u64, 0u64);
            while done < cycles {
                let Some(lease) = manager
                    .acquire_proxy(&pool, options.clone())
                    .await
                    .expect("acquire")
                else {
                    exhausted += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let max = *maxes
                    .get(&lease.proxy_id)
                    .unwrap_or_else(|| panic!("leased an unknown proxy {}", lease.proxy_id));
                let key = holders_key(&ns, lease.proxy_id);
                let member = format!("{me}:{}", lease.id);
                // SADD and SMEMBERS in one MULTI: the holders right after joining.
                let (added, members): (i64, Vec<String>) = redis::pipe()
                    .atomic()
                    .sadd(&key, &member)
                    .smembers(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("SADD/SMEMBERS holders");
                assert_eq!(added, 1, "lease id {} handed out twice", lease.id);
                if members.len() > max {
                    violations += 1;
                    let what = format!(
                        "proxy {} (max {max}) held by {} at once: {members:?}",
                        lease.proxy_id,
                        members.len()
                    );
                    eprintln!("VIOLATION: {what}");
                    let _: () = redis::pipe()
                        .incr(format!("{check}:violations"), 1)
                        .ignore()
                        .rpush(format!("{check}:violation-log"), &what)
                        .ignore()
                        .query_async(&mut conn)
                        .await
                        .expect("record violation");
                }
                let pids: HashSet<&str> = members
                    .iter()
                    .filter_map(|m| m.split_once(':').map(|(pid, _)| pid))
                    .collect();
                if pids.len() > 1 {
                    cross += 1;
                }
                let hold = fastrand::u64(0..=2);
                if hold > 0 {
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                } else {
                    tokio::task::yield_now().await;
                }
                let removed: i64 = redis::cmd("SREM")
                    .arg(&key)
                    .arg(&member)
                    .query_async(&mut conn)
                    .await
                    .expect("SREM holders");
                assert_eq!(removed, 1, "holder entry {member} vanished");
                let outcome = manager.release_proxy(&lease).await.expect("release");
                assert_eq!(
                    outcome,
                    ReleaseOutcome::Released,
                    "release of live lease {}",
                    lease.id
                );
                done += 1;
            }
            (done, exhausted, cross, violations)
        }));
    }
    let (mut done, mut exhausted, mut cross, mut violations) = (0u64, 0u64, 0u64, 0u64);
    for h in handles {
        let (d, e, c, v) = h.await.expect("worker task");
        done += d;
        exhausted += e;
        cross += c;
        violations += v;
    }
    let _: () = redis::pipe()
        .incr(format!("{check}:cycles"), done)
        .ignore()
        .incr(format!("{check}:exhausted"), exhausted)
        .ignore()
        .incr(format!("{check}:cross"), cross)
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("report counts");
    println!(
        "{REPORT} DONE cycles={done} exhausted={exhausted} cross={cross} violations={violations}"
    );
    assert_eq!(
        violations, 0,
        "worker {proc_idx}: over-lease observed {violations} times"
    );
}

/// Fills every pool in `LHW_POOLS` with `LHW_LEASE_MS` leases, reports them and
/// waits to be killed.
async fn holder_worker(url: String) {
    let ns = env("LHW_NS");
    let pools = env("LHW_POOLS");
    let lease_ms: u64 = env_num("LHW_LEASE_MS");
    let manager = ProxyManager::new(storage_on(&url, &ns));
    let options = AcquireOptions::new().duration(Duration::from_millis(lease_ms));
    let mut leases = Vec::new();
    for pool in pools.split(',') {
        while let Some(lease) = manager
            .acquire_proxy(pool, options.clone())
            .await
            .expect("acquire")
        {
            leases.push(lease);
        }
    }
    let first = leases.iter().map(|l| l.expires_at.timestamp_millis()).min();
    let last = leases.iter().map(|l| l.expires_at.timestamp_millis()).max();
    let ids: Vec<String> = leases.iter().map(|l| l.id.to_string()).collect();
    println!(
        "{REPORT} HOLDING {} {} {} {}",
        leases.len(),
        first.unwrap_or(0),
        last.unwrap_or(0),
        ids.join(",")
    );
    // The parent kills us here. Being alive after a minute is a failure.
    tokio::time::sleep(Duration::from_secs(60)).await;
    panic!("holder: never killed");
}

// ---------------------------------------------------------------------------
// Parent side.

/// Kills the child on drop, so a failing test leaves no worker behind.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn worker_command(role: &str, url: &str, env: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("current test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["worker_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, role)
        .env("REDIS_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn describe(name: &str, out: &Output) -> String {
    format!(
        "{name} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn get_count(conn: &mut redis::aio::MultiplexedConnection, key: String) -> i64 {
    let v: Option<i64> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET");
    v.unwrap_or(0)
}

/// Invariant 1 across OS processes: no proxy ever has more holders than its
/// `max_concurrency`, as seen by an observer independent of the library; and
/// invariant 2: when everyone has released, every counter is 0 and no lease is live.
#[test]
fn no_over_lease_across_processes() {
    const PROCS: usize = 4;
    const TASKS: usize = 16;
    const CYCLES: u64 = 40; // per task: 4 × 16 × 40 = 2560 cycles
    const POOL: &str = "dist-hammer";

    let url = support::redis_url();
    let ns = support::unique_namespace();
    let check = check_ns(&ns);
    let rt = runtime();
    let storage = storage_on(&url, &ns);
    let proxies: Vec<Proxy> = rt.block_on(async {
        let pool = storage
            .create_pool(ProxyPool::new(POOL).unwrap())
            .await
            .unwrap();
        let proxies = (0..8u32)
            .map(|i| {
                Proxy::builder(pool.id, format!("10.20.0.{i}"), 8000)
                    .max_concurrency(1 + i % 3)
                    .build()
                    .unwrap()
            })
            .collect();
        storage.add_proxies(proxies).await.unwrap()
    });
    let capacity: u32 = proxies.iter().filter_map(|p| p.max_concurrency).sum();
    let proxies_env = proxies
        .iter()
        .map(|p| format!("{}={}", p.id, p.max_concurrency.unwrap()))
        .collect::<Vec<_>>()
        .join(",");

    let mut children = Vec::new();
    for i in 0..PROCS {
        let child = worker_command(
            "hammer",
            &url,
            &[
                ("LHW_NS", ns.clone()),
                ("LHW_POOL", POOL.to_string()),
                ("LHW_PROC", i.to_string()),
                ("LHW_PROCS", PROCS.to_string()),
                ("LHW_TASKS", TASKS.to_string()),
                ("LHW_CYCLES", CYCLES.to_string()),
                ("LHW_LEASE_MS", "60000".to_string()),
                ("LHW_PROXIES", proxies_env.clone()),
            ],
        )
        .spawn()
        .expect("spawn worker process");
        children.push(child);
    }
    // Read every child's output on its own thread, so no pipe fills up.
    let waiters: Vec<_> = children
        .into_iter()
        .map(|c| std::thread::spawn(move || c.wait_with_output()))
        .collect();
    let outputs: Vec<Output> = waiters
        .into_iter()
        .map(|w| w.join().expect("waiter thread").expect("wait for worker"))
        .collect();

    rt.block_on(async {
        let mut conn = support::raw_conn(&url).await;
        let violations = get_count(&mut conn, format!("{check}:violations")).await;
        let log: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{check}:violation-log"))
            .arg(0)
            .arg(20)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            violations, 0,
            "over-lease observed {violations} times, e.g. {log:#?}"
        );
        for (i, out) in outputs.iter().enumerate() {
            assert!(
                out.status.success(),
                "{}",
                describe(&format!("worker {i}"), out)
            );
        }
        let cycles = get_count(&mut conn, format!("{check}:cycles")).await;
        let exhausted = get_count(&mut conn, format!("{check}:exhausted")).await;
        let cross = get_count(&mut conn, format!("{check}:cross")).await;
        eprintln!(
            "{PROCS} processes × {TASKS} tasks on {capacity} slots: {cycles} cycles, \
             {exhausted} acquires found the pool full, {cross} holds shared a proxy \
             with another process"
        );
        assert_eq!(cycles, (PROCS * TASKS) as i64 * CYCLES as i64);
        assert!(cycles > 500, "too few cycles to mean anything: {cycles}");
        // The pool really was contended, across processes.
        assert!(
            exhausted > 0,
            "no acquire ever found the pool full: no contention"
        );
        assert!(cross > 0, "no proxy was ever held by two processes at once");

        // Everything was released, not expired: counters are 0, nothing is live.
        for p in &proxies {
            let now = storage.get_proxy(p.id).await.unwrap().expect("proxy");
            assert_eq!(now.current_leases, 0, "proxy {} still counts leases", p.id);
            let holders: i64 = redis::cmd("SCARD")
                .arg(holders_key(&ns, p.id))
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(holders, 0, "holders left on {}", p.id);
        }
        let stats = storage.pool_stats(&pn(POOL)).await.unwrap();
        assert_eq!(stats.total_leases, 0, "{stats:?}");
        assert_eq!(stats.leased_proxies, 0, "{stats:?}");
        assert_eq!(stats.available_proxies, proxies.len() as u64, "{stats:?}");
        assert!(storage.list_leases(&pn(POOL)).await.unwrap().is_empty());
        assert_eq!(storage.cleanup_expired_leases().await.unwrap(), 0);
        let live: i64 = redis::cmd("ZCARD")
            .arg(format!("{ns}:{{{POOL}}}:live"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(live, 0, "live lease index not empty");
        // One record per cycle (records outlive the lease by the grace period),
        // every one of them released, none active.
        let statuses = support::lease_record_states(&mut conn, &ns, POOL).await;
        assert_eq!(
            statuses.get("active"),
            None,
            "lease records left active: {statuses:?}"
        );
        assert_eq!(
            statuses.get("released").copied(),
            Some(cycles as u64),
            "every acquired lease has a released record: {statuses:?}"
        );
        assert_eq!(statuses.len(), 1, "{statuses:?}");

        assert!(storage.remove_pool(&pn(POOL)).await.unwrap());
        let mut del = redis::cmd("DEL");
        for suffix in [
            "ready",
            "violations",
            "violation-log",
            "cycles",
            "exhausted",
            "cross",
        ] {
            del.arg(format!("{check}:{suffix}"));
        }
        let _: i64 = del.query_async(&mut conn).await.unwrap();
    });
}

/// Invariant 2 for a dead worker: SIGKILL gives nothing back early, and
/// everything back at expiry, through acquire (pool B) and cleanup (pool A).
#[test]
fn sigkill_loses_leases_only_at_expiry() {
    const POOL_A: &str = "dist-killed-a";
    const POOL_B: &str = "dist-killed-b";
    const PER_POOL: usize = 4;
    const LEASE_MS: i64 = 2500;

    let url = support::redis_url();
    let ns = support::unique_namespace();
    let rt = runtime();
    let storage = storage_on(&url, &ns);
    let manager = ProxyManager::new(storage);
    let mut proxies: HashMap<&str, Vec<Uuid>> = HashMap::new();
    rt.block_on(async {
        for (n, name) in [POOL_A, POOL_B].into_iter().enumerate() {
            let pool = manager
                .storage()
                .create_pool(ProxyPool::new(name).unwrap())
                .await
                .unwrap();
            let batch = (0..PER_POOL)
                .map(|i| {
                    Proxy::builder(pool.id, format!("10.30.{n}.{i}"), 8000)
                        .max_concurrency(1)
                        .build()
                        .unwrap()
                })
                .collect();
            let added = manager.storage().add_proxies(batch).await.unwrap();
            proxies.insert(name, added.iter().map(|p| p.id).collect());
        }
    });

    let child = worker_command(
        "holder",
        &url,
        &[
            ("LHW_NS", ns.clone()),
            ("LHW_POOLS", format!("{POOL_A},{POOL_B}")),
            ("LHW_LEASE_MS", LEASE_MS.to_string()),
        ],
    )
    .spawn()
    .expect("spawn worker process");
    let mut guard = ChildGuard(Some(child));
    let child = guard.0.as_mut().unwrap();

    // Wait for the worker to say it holds its leases (or to die).
    let stdout = child.stdout.take().unwrap();
    let mut holding = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("worker stdout");
        // libtest may print `test worker_entry ... ` on the same line first.
        let marker = format!("{REPORT} HOLDING ");
        if let Some(at) = line.find(&marker) {
            holding = Some(line[at + marker.len()..].to_string());
            break;
        }
    }
    let Some(holding) = holding else {
        let status = child.wait().unwrap();
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("holder worker exited ({status}) before holding:\n{err}");
    };
    let fields: Vec<&str> = holding.split(' ').collect();
    let count: usize = fields[0].parse().unwrap();
    let first_expiry: i64 = fields[1].parse().unwrap();
    let last_expiry: i64 = fields[2].parse().unwrap();
    let held: HashSet<Uuid> = fields[3].split(',').map(|s| s.parse().unwrap()).collect();
    assert_eq!(count, 2 * PER_POOL, "the worker filled both pools");
    assert_eq!(held.len(), count);

    child.kill().expect("SIGKILL the worker");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "worker died of SIGKILL: {status}");
    guard.0 = None;

    rt.block_on(async {
        let mut conn = support::raw_conn(&url).await;
        let storage = manager.storage();

        // Right after the kill: the dead worker's capacity is still taken.
        for pool in [POOL_A, POOL_B] {
            let got = manager
                .acquire_proxy(pool, AcquireOptions::new())
                .await
                .unwrap();
            assert!(got.is_none(), "{pool}: a slot came back before expiry");
            let stats = storage.pool_stats(&pn(pool)).await.unwrap();
            assert_eq!(stats.total_leases, PER_POOL as u64, "{pool}: {stats:?}");
            assert_eq!(stats.available_proxies, 0, "{pool}: {stats:?}");
            let live: HashSet<Uuid> = storage
                .list_leases(&pn(pool))
                .await
                .unwrap()
                .iter()
                .map(|l| l.id)
                .collect();
            assert_eq!(live.len(), PER_POOL);
            assert!(
                live.is_subset(&held),
                "{pool}: live leases are the worker's"
            );
            for id in &proxies[pool] {
                let p = storage.get_proxy(*id).await.unwrap().unwrap();
                assert_eq!(p.current_leases, 1, "{pool}: proxy {id}");
            }
        }
        assert_eq!(storage.cleanup_expired_leases().await.unwrap(), 0);
        // The checks above only mean something if they ran before any expiry.
        let checked_at = redis_time_ms(&mut conn).await;
        assert!(
            checked_at < first_expiry,
            "the machine is too slow for this test: the checks ended {} ms after \
             the first lease expired",
            checked_at - first_expiry
        );

        // Wait, on Redis's clock, until every lease has expired.
        let deadline = std::time::Instant::now() + Duration::from_millis(LEASE_MS as u64 + 15_000);
        while redis_time_ms(&mut conn).await <= last_expiry {
            assert!(
                std::time::Instant::now() < deadline,
                "Redis's clock did not reach the leases' expiry"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Pool B: acquire itself reclaims the expired leases.
        let mut again = Vec::new();
        for _ in 0..PER_POOL {
            let lease = manager
                .acquire_proxy(POOL_B, AcquireOptions::new())
                .await
                .unwrap()
                .expect("an expired slot is free again");
            again.push(lease);
        }
        assert!(manager
            .acquire_proxy(POOL_B, AcquireOptions::new())
            .await
            .unwrap()
            .is_none());
        for lease in &again {
            assert_eq!(
                manager.release_proxy(lease).await.unwrap(),
                ReleaseOutcome::Released
            );
        }

        // Pool A: the sweeper reclaims them.
        assert_eq!(
            storage.cleanup_expired_leases().await.unwrap(),
            PER_POOL as u64,
            "cleanup reclaims pool A's expired leases (pool B's went to acquire)"
        );
        assert_eq!(storage.cleanup_expired_leases().await.unwrap(), 0);

        for pool in [POOL_A, POOL_B] {
            let stats = storage.pool_stats(&pn(pool)).await.unwrap();
            assert_eq!(stats.total_leases, 0, "{pool}: {stats:?}");
            assert_eq!(stats.leased_proxies, 0, "{pool}: {stats:?}");
            assert_eq!(
                stats.available_proxies, PER_POOL as u64,
                "{pool}: {stats:?}"
            );
            assert!(storage.list_leases(&pn(pool)).await.unwrap().is_empty());
            for id in &proxies[pool] {
                let p = storage.get_proxy(*id).await.unwrap().unwrap();
                assert_eq!(p.current_leases, 0, "{pool}: proxy {id}");
            }
            let live = support::live_lease_records(&mut conn, &ns, pool).await;
            assert!(live.is_empty(), "{pool}: live records left: {live:?}");
        }
        for id in &held {
            let pool = if storage.get_lease(&pn(POOL_A), *id).await.unwrap().is_some() {
                POOL_A
            } else {
                POOL_B
            };
            let record = storage
                .get_lease(&pn(pool), *id)
                .await
                .unwrap()
                .expect("record");
            assert_eq!(record.status, LeaseStatus::Expired, "lease {id}");
        }

        // Pool A is whole again.
        let mut again = Vec::new();
        while let Some(lease) = manager
            .acquire_proxy(POOL_A, AcquireOptions::new())
            .await
            .unwrap()
        {
            again.push(lease);
        }
        assert_eq!(again.len(), PER_POOL);
        for lease in &again {
            manager.release_proxy(lease).await.unwrap();
        }

        for pool in [POOL_A, POOL_B] {
            assert!(storage.remove_pool(&pn(pool)).await.unwrap());
        }
    });
}
