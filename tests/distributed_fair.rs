#![cfg(all(feature = "redis", unix))]
//! Fair waiting across real OS processes, and what a fair waiter costs Redis.
//!
//! [`fair_waiters_are_served_in_ticket_order_across_processes`]: one pool, one
//! proxy with one slot, held by the parent. Four worker processes start three
//! fair waiters each, one at a time and in turns across the processes (worker
//! 0's first, worker 1's first, ..., worker 0's second, ...), so the tickets
//! are interleaved across processes in a known order; a fifth process takes
//! one ticket in the middle of the queue and is killed (SIGKILL) while it
//! waits. The parent then gives the slot up; each waiter that gets it holds it
//! 40 ms and gives it back. Every grant is written down with its ticket and the
//! lease's fencing token (issued by the granting script, strictly increasing
//! per pool): sorted by token, the grants must be the tickets in order, the
//! dead waiter's excepted, and the dead ticket must hold the queue back no
//! longer than its TTL.
//!
//! Worker processes are this test binary run again (`<exe> worker_entry
//! --exact` with `LIGHTHOUSE_WORKER` and the parent's `REDIS_URL`). They take
//! turns through two keys of the test's namespace: `turn` (how many tickets
//! were taken) and `last` (the newest ticket's number).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lighthouse_lease::fair::DEFAULT_TICKET_TTL;
use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{
    AcquireOptions, AdminStorage, LeaseStorage, Proxy, ProxyManager, ProxyPool, WaitOptions,
};
use support::server::RedisServer;

const WORKER_ENV: &str = "LIGHTHOUSE_WORKER";
const REPORT: &str = "LHF";
const POOL: &str = "fleet-fair";
const PROCS: usize = 4;
const PER_PROC: usize = 3;
/// Where the killed waiter's ticket is, among all the tickets (0-based).
const DEAD_AT: usize = 5;
/// The killed waiter's ticket TTL: the longest it may hold the queue back.
const DEAD_TTL: Duration = Duration::from_millis(1000);
/// How long a waiter that got the slot holds it.
const HOLD: Duration = Duration::from_millis(40);

use support::{runtime, storage_on};

fn turn_key(ns: &str) -> String {
    format!("{ns}:test:turn")
}

fn last_key(ns: &str) -> String {
    format!("{ns}:test:last")
}

async fn get_u64(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    let v: Option<u64> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET");
    v.unwrap_or(0)
}

/// Writes a line straight to the process's stdout and flushes it (not
/// through `println!`, which the test harness may capture until the test
/// ends: the doomed worker never ends by itself).
fn report(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout");
    out.flush().expect("stdout");
}

/// What follows `marker` in a worker's output line. Not only at the start: the
/// test harness writes `test worker_entry ... ` before the test's first line.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

#[test]
fn worker_entry() {
    let Ok(role) = std::env::var(WORKER_ENV) else {
        return;
    };
    let url = std::env::var("REDIS_URL").unwrap_or_default();
    assert!(
        !url.trim().is_empty(),
        "worker: REDIS_URL must be set by the parent"
    );
    match role.as_str() {
        "fair" => runtime().block_on(fair_worker(url, false)),
        "doomed" => runtime().block_on(fair_worker(url, true)),
        other => panic!("worker: unknown role {other:?}"),
    }
}

/// Starts a fair waiter at each of its turns (`LHF_TURNS`, global ticket
/// positions), once the tickets before it were taken, and learns its number;
/// prints `LHF <ticket> <fencing token> <acquired ms>` for every grant. The
/// doomed worker prints `LHF-QUEUED <ticket>` and then waits to be killed.
async fn fair_worker(url: String, doomed: bool) {
    let ns = std::env::var("LHF_NS").expect("LHF_NS");
    let turns: Vec<u64> = std::env::var("LHF_TURNS")
        .expect("LHF_TURNS")
        .split(',')
        .map(|t| t.parse().expect("turn"))
        .collect();
    let m = ProxyManager::new(storage_on(&url, &ns));
    let mut conn = support::raw_conn(&url).await;
    let wait = WaitOptions::new(Duration::from_secs(60)).fair(true);
    let wait = if doomed {
        wait.ticket_ttl(DEAD_TTL)
    } else {
        wait
    };
    let mut waiters = Vec::new();
    for turn in turns {
        while get_u64(&mut conn, &turn_key(&ns)).await != turn {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let last = get_u64(&mut conn, &last_key(&ns)).await;
        let waiter = {
            let m = m.clone();
            tokio::spawn(async move {
                let lease = m
                    .acquire_proxy_wait(POOL, AcquireOptions::new().duration_seconds(60), wait)
                    .await
                    .expect("acquire_proxy_wait")
                    .expect("served within the minute");
                tokio::time::sleep(HOLD).await;
                m.release_proxy(&lease).await.expect("release");
                lease
            })
        };
        // Its ticket is the newest in the queue: nobody else takes one until
        // this worker moves the turn on.
        let ticket = loop {
            let queued = m
                .storage()
                .wait_tickets(&support::pn(POOL))
                .await
                .expect("wait_tickets");
            if let Some(t) = queued.iter().map(|t| t.number).filter(|&n| n > last).max() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let _: () = redis::cmd("SET")
            .arg(last_key(&ns))
            .arg(ticket)
            .query_async(&mut conn)
            .await
            .expect("SET");
        let _: u64 = redis::cmd("INCR")
            .arg(turn_key(&ns))
            .query_async(&mut conn)
            .await
            .expect("INCR");
        if doomed {
            report(&format!("{REPORT}-QUEUED {ticket}"));
            std::future::pending::<()>().await;
        }
        waiters.push((ticket, waiter));
    }
    for (ticket, waiter) in waiters {
        let lease = waiter.await.expect("waiter task");
        report(&format!(
            "{REPORT} {ticket} {} {}",
            lease.fencing_token,
            lease.acquired_at.timestamp_millis()
        ));
    }
}

/// Fair waiters in 4 processes are served in the order of their tickets,
/// interleaved across the processes, and a killed waiter's ticket is skipped
/// after its TTL.
#[test]
fn fair_waiters_are_served_in_ticket_order_across_processes() {
    let url = support::redis_url();
    let ns = support::unique_namespace();
    let rt = runtime();
    let m = rt.block_on(support::one_proxy_pool(storage_on(&url, &ns), POOL, 1));
    let held = rt.block_on(async {
        m.acquire_proxy(POOL, AcquireOptions::new().duration_seconds(600))
            .await
            .unwrap()
            .expect("the parent holds the one slot")
    });
    // Global positions: the dead waiter's at DEAD_AT, the others in turns
    // across the processes.
    let total = PROCS * PER_PROC + 1;
    let mut turns: Vec<Vec<usize>> = vec![Vec::new(); PROCS];
    let mut k = 0;
    for at in 0..total {
        if at != DEAD_AT {
            turns[k % PROCS].push(at);
            k += 1;
        }
    }
    let exe = std::env::current_exe().expect("current test binary");
    let spawn = |role: &str, turns: &[usize]| {
        let list: Vec<String> = turns.iter().map(usize::to_string).collect();
        Command::new(&exe)
            .args(["worker_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(WORKER_ENV, role)
            .env("REDIS_URL", &url)
            .env("LHF_NS", &ns)
            .env("LHF_TURNS", list.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn worker")
    };
    let workers: Vec<_> = turns.iter().map(|t| spawn("fair", t)).collect();
    let mut doomed = spawn("doomed", &[DEAD_AT]);
    // The doomed waiter says when it holds its ticket; then it dies.
    let dead_ticket: u64 = {
        let out = doomed.stdout.take().expect("doomed stdout");
        let line = BufReader::new(out)
            .lines()
            .map(|l| l.expect("doomed output"))
            .find_map(|l| after(&l, &format!("{REPORT}-QUEUED ")).map(str::to_string))
            .expect("the doomed waiter queued");
        line.trim().parse().expect("ticket number")
    };
    doomed.kill().expect("SIGKILL the doomed waiter");
    let _ = doomed.wait();
    rt.block_on(async {
        let mut conn = support::raw_conn(&url).await;
        let mut waited = 0;
        while get_u64(&mut conn, &turn_key(&ns)).await != total as u64 {
            assert!(waited < 30_000, "the workers never took all their tickets");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 10;
        }
        let queued = queued(m.storage()).await;
        assert_eq!(queued.len(), total, "every ticket waits: {queued:?}");
        assert!(queued.contains(&dead_ticket));
        m.release_proxy(&held).await.unwrap();
    });
    // ticket -> (fencing token, acquired ms), from every worker.
    let mut grants: BTreeMap<u64, (u64, i64)> = BTreeMap::new();
    for child in workers {
        let out = child.wait_with_output().expect("worker output");
        assert!(
            out.status.success(),
            "worker failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(rest) = after(line, &format!("{REPORT} ")) else {
                continue;
            };
            let w: Vec<&str> = rest.split_whitespace().collect();
            let ticket: u64 = w[0].parse().unwrap();
            let grant = (w[1].parse().unwrap(), w[2].parse().unwrap());
            assert!(
                grants.insert(ticket, grant).is_none(),
                "ticket {ticket} granted twice"
            );
        }
    }
    assert_eq!(grants.len(), PROCS * PER_PROC, "every live waiter served");
    assert!(
        !grants.contains_key(&dead_ticket),
        "the dead waiter got nothing"
    );
    let mut by_token: Vec<(u64, u64, i64)> = grants
        .iter()
        .map(|(&ticket, &(token, at))| (token, ticket, at))
        .collect();
    by_token.sort_unstable();
    let served: Vec<u64> = by_token.iter().map(|&(_, t, _)| t).collect();
    let tickets: Vec<u64> = grants.keys().copied().collect();
    assert_eq!(
        served, tickets,
        "grants (by fencing token) in ticket order across the processes"
    );
    // The dead ticket held the queue back at most its TTL, and the waiter
    // behind it found it lapsed at its next attempt (a quarter of its own TTL
    // later at most); plus the hold and some slack for a loaded machine.
    let longest_gap = by_token
        .windows(2)
        .map(|w| w[1].2 - w[0].2)
        .max()
        .unwrap_or(0);
    let bound = DEAD_TTL + DEFAULT_TICKET_TTL / 4 + HOLD + Duration::from_millis(1000);
    assert!(
        longest_gap < bound.as_millis() as i64,
        "a grant waited {longest_gap} ms for the one before it (bound {bound:?})"
    );
    println!(
        "{} grants in ticket order from {PROCS} processes; the dead ticket skipped; longest gap {longest_gap} ms",
        grants.len()
    );
    let left = rt
        .block_on(m.storage().wait_tickets(&support::pn(POOL)))
        .unwrap();
    assert!(left.is_empty(), "the queue is empty at the end: {left:?}");
    let stats = rt
        .block_on(m.storage().pool_stats(&support::pn(POOL)))
        .unwrap();
    assert_eq!(stats.total_leases, 0);
}

/// What a fair waiter costs Redis: taking a ticket is one `FCALL` (6
/// commands); an attempt that is not its turn is the acquire's `FCALL` with
/// three commands of its own (ZRANGEBYSCORE, ZADD and ZRANGE) and writes no
/// lease; the grant takes the ticket out of both keys (ZREM ×2) and, with
/// another ticket behind it, publishes on `P freed`.
#[tokio::test(flavor = "current_thread")]
async fn a_fair_attempt_costs_three_commands_and_its_grant_takes_the_ticket_out() {
    let server = RedisServer::spawn().unwrap();
    let ns = support::unique_namespace();
    let m = support::one_proxy_pool(storage_on(&server.url(), &ns), POOL, 1).await;
    let mut admin = support::raw_conn(&server.url()).await;
    let stats = |admin: &mut redis::aio::MultiplexedConnection| {
        let mut admin = admin.clone();
        async move {
            let counts = support::commandstats(&mut admin).await;
            support::reset_stats(&mut admin).await;
            counts
        }
    };
    let ttl = Duration::from_secs(60);
    let request = || {
        lighthouse_lease::AcquireRequest::new(POOL, "default", Duration::from_secs(60))
            .unwrap()
            .registering_consumer(true)
    };
    // Warm up: the library loaded, the consumer registered.
    let warm = m.storage().acquire(&request()).await.unwrap().unwrap();
    m.storage().release(&warm).await.unwrap();
    stats(&mut admin).await;

    let first = m
        .storage()
        .take_ticket(&support::pn(POOL), ttl, ttl)
        .await
        .unwrap()
        .unwrap();
    let second = m
        .storage()
        .take_ticket(&support::pn(POOL), ttl, ttl)
        .await
        .unwrap()
        .unwrap();
    let took = stats(&mut admin).await;
    let per_take: BTreeMap<String, u64> = took.iter().map(|(k, v)| (k.clone(), v / 2)).collect();
    assert_eq!(
        per_take,
        BTreeMap::from(
            [
                ("fcall", 1),
                ("hmget", 1),
                ("time", 1),
                ("zrangebyscore", 1),
                ("hset", 1),
                ("zadd", 2)
            ]
            .map(|(k, v)| (k.to_string(), v))
        ),
        "taking a ticket: {took:?}"
    );

    let not_yet = m
        .storage()
        .acquire(&request().with_ticket(second.clone()))
        .await
        .unwrap();
    assert_eq!(not_yet, None, "not the head");
    let queued = stats(&mut admin).await;
    assert_eq!(queued.get("fcall"), Some(&1));
    assert_eq!(queued.get("zrangebyscore"), Some(&1), "{queued:?}");
    assert_eq!(queued.get("zadd"), Some(&1), "the refresh: {queued:?}");
    assert_eq!(queued.get("zrange"), Some(&1), "the head: {queued:?}");
    assert_eq!(queued.get("set"), None, "no lease written: {queued:?}");

    let granted = m
        .storage()
        .acquire(&request().with_ticket(first.clone()))
        .await
        .unwrap()
        .expect("the head gets the free proxy");
    let served = stats(&mut admin).await;
    assert_eq!(served.get("fcall"), Some(&1));
    assert_eq!(served.get("set"), Some(&1), "the lease record: {served:?}");
    assert_eq!(
        served.get("zrangebyscore"),
        Some(&1),
        "the lapse check: {served:?}"
    );
    assert_eq!(
        served.get("zrange"),
        Some(&2),
        "the head, and the general path's walk of the index: {served:?}"
    );
    assert_eq!(
        served.get("zrem"),
        Some(&3),
        "the ticket out of both keys, the full proxy out of its index: {served:?}"
    );
    assert_eq!(
        served.get("publish"),
        Some(&1),
        "another ticket waits: woken: {served:?}"
    );
    let queue = format!("{ns}:{{{POOL}}}:tickets");
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg(&queue)
        .arg(0)
        .arg(-1)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, [second.number().to_string()]);
    m.storage().release(&granted).await.unwrap();
    m.storage().drop_ticket(&second).await.unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg(&queue)
        .arg(format!("{ns}:{{{POOL}}}:tickets:until"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(exists, 0, "an empty queue leaves no key");
}

/// Fair requests batched into one script call with plain ones are each served
/// by their ticket, in the call's order: a later ticket gets nothing though a
/// proxy is free, the head gets it, and a plain request ignores the queue. The
/// queue's keys go once per call.
#[tokio::test(flavor = "current_thread")]
async fn fair_requests_in_one_batch_are_served_by_their_tickets() {
    let server = RedisServer::spawn().unwrap();
    let ns = support::unique_namespace();
    let storage = std::sync::Arc::new(
        RedisStorage::new(
            RedisConfig::from_url(server.url())
                .namespace(&ns)
                .max_in_flight(1)
                .fit_in_flight(false),
        )
        .unwrap(),
    );
    let pool = storage
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    let proxies = (1..=3)
        .map(|i| {
            Proxy::builder(pool.id, format!("10.40.1.{i}"), 8000)
                .max_concurrency(1)
                .build()
                .unwrap()
        })
        .collect();
    storage.add_proxies(proxies).await.unwrap();
    let request = || {
        lighthouse_lease::AcquireRequest::new(POOL, "default", Duration::from_secs(60))
            .unwrap()
            .registering_consumer(true)
    };
    let warm = storage.acquire(&request()).await.unwrap().unwrap();
    storage.release(&warm).await.unwrap();
    let ttl = Duration::from_secs(60);
    let mut tickets = Vec::new();
    for _ in 0..3 {
        tickets.push(
            storage
                .take_ticket(&support::pn(POOL), ttl, ttl)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let (t1, t2, t3) = (tickets[0].clone(), tickets[1].clone(), tickets[2].clone());
    let mut admin = support::raw_conn(&server.url()).await;
    support::reset_stats(&mut admin).await;
    // Every command into the slow log, to read the calls' key counts.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut admin)
        .await
        .unwrap();
    // The first call goes alone; the four behind it go together, in this order.
    let spawn = |r: lighthouse_lease::AcquireRequest| {
        let s = std::sync::Arc::clone(&storage);
        tokio::spawn(async move { s.acquire(&r).await.unwrap() })
    };
    let opener = spawn(request());
    let third = spawn(request().with_ticket(t3.clone()));
    let plain = spawn(request());
    let second = spawn(request().with_ticket(t2.clone()));
    let first = spawn(request().with_ticket(t1.clone()));
    assert!(opener.await.unwrap().is_some());
    assert_eq!(third.await.unwrap(), None, "not the head");
    assert!(
        plain.await.unwrap().is_some(),
        "a plain request ignores the queue"
    );
    assert_eq!(
        second.await.unwrap(),
        None,
        "not the head, though a proxy is still free"
    );
    let head = first
        .await
        .unwrap()
        .expect("the head takes the last free proxy");
    assert_eq!(
        support::command_calls(&mut admin, "fcall").await,
        2,
        "one lone call, one batch"
    );
    // FCALL <function> <numkeys> ...: the batch names P meta, P live and the
    // queue's two keys once, for its three tickets.
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100)
        .query_async(&mut admin)
        .await
        .unwrap();
    let numkeys: Vec<String> = log
        .iter()
        .filter_map(|entry| match entry {
            redis::Value::Array(fields) => match fields.get(3) {
                Some(redis::Value::Array(args)) => Some(args.clone()),
                _ => None,
            },
            _ => None,
        })
        .filter_map(|args| {
            let text = |v: &redis::Value| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            let name = args.get(1).map(text)?;
            (args.first().map(text)? == "FCALL" && name.ends_with("_acquire"))
                .then(|| args.get(2).map(text))?
        })
        .collect();
    assert_eq!(numkeys.len(), 2, "{numkeys:?}");
    assert!(
        numkeys.contains(&"4".to_string()) && numkeys.contains(&"2".to_string()),
        "the lone plain call names 2 keys, the batch 4: {numkeys:?}"
    );
    let queued = queued(&storage).await;
    assert_eq!(queued, [t2.number(), t3.number()]);
    storage.release(&head).await.unwrap();
    assert_eq!(
        storage
            .acquire(&request().with_ticket(t3.clone()))
            .await
            .unwrap(),
        None
    );
    assert!(storage
        .acquire(&request().with_ticket(t2))
        .await
        .unwrap()
        .is_some());
    // Removing the pool takes its queue's keys with it.
    assert!(storage.remove_pool(&support::pn(POOL)).await.unwrap());
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:*tickets*"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// The numbers of the tickets the pool's queue honours, head first.
async fn queued(storage: &RedisStorage) -> Vec<u64> {
    storage
        .wait_tickets(&support::pn(POOL))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.number)
        .collect()
}
