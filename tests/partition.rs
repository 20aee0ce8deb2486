#![cfg(all(feature = "redis", target_os = "linux"))]
//! Leases across a real network, cut and healed: Linux network namespaces
//! joined by a bridge (`tests/support/netns.rs`), Redis in one namespace,
//! workers in others, a link taken down with `ip link set ... down` (packets
//! dropped silently, as in a partition; no reset, no error).
//!
//! - [`a_cut_off_holder_loses_its_leases_and_the_other_worker_gets_them_only_after_expiry`]:
//!   worker A holds every slot of a pool with renewing leases; B keeps trying to
//!   acquire. A is cut off. A must signal loss no later than the leases expire
//!   by storage time; B must get each slot only after its lease expired by
//!   storage time; an independent witness must never see more holders of a
//!   proxy than its `max_concurrency`. Healed, A's late releases say `Expired`
//!   and give nothing back a second time.
//! - [`sweeper_healthz_is_unhealthy_while_redis_is_cut_off_and_healthy_after`]:
//!   `lighthouse-sweeper` in a namespace; its link to Redis is cut and healed
//!   while `/healthz` is polled over a second link.
//!
//! The witness is a second `redis-server` on a Unix socket, which every
//! namespace reaches whatever link is cut: each holder INCRs a per-proxy
//! counter when it starts using a proxy and DECRs it when it stops (A: when
//! its lease signals lost; B: before releasing), and the witness keeps each
//! counter's maximum and a timeline stamped with its own `TIME`. Both servers
//! run on this machine, so the witness's clock is the storage's clock.
//!
//! Where namespaces cannot be made (not root, no `ip`, `unshare` denied) or
//! `redis-server` is not on PATH, each test prints why and passes. Worker
//! processes are this test binary run again inside a namespace (`ip netns
//! exec <ns> <exe> worker_entry --exact`) with `LIGHTHOUSE_NET_WORKER` set.

#[path = "support/netns.rs"]
mod netns;
mod support;
use support::pn;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{
    AcquireOptions, AdminStorage, Lease, LeaseStorage, Proxy, ProxyManager, ProxyPool,
};
use netns::{Lab, LabRedis, Proc};
use uuid::Uuid;

/// Set (to the worker's role) in a worker process.
const WORKER_ENV: &str = "LIGHTHOUSE_NET_WORKER";
/// Prefix of the lines a worker prints for the test.
const MARK: &str = "LHN";
/// The Redis port inside its namespace (the server is alone there).
const REDIS_PORT: u16 = 7379;
const POOL: &str = "partition";
/// Lease duration of A's renewing leases.
const LEASE_MS: i64 = 3_000;

// ---------------------------------------------------------------------------
// Shared by the test and the workers.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn storage_on(url: &str, ns: &str, timeout: Duration) -> RedisStorage {
    RedisStorage::new(
        RedisConfig::from_url(url)
            .namespace(ns)
            .pool_size(2)
            .connect_timeout(timeout)
            .response_timeout(timeout),
    )
    .expect("valid Redis config")
}

async fn witness_conn(url: &str) -> redis::aio::MultiplexedConnection {
    support::raw_conn(url).await
}

/// Witness: `who` starts using `lease`'s proxy. Returns the witness's time, ms.
const HOLD_LUA: &str = r"
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('RPUSH', KEYS[3], ms .. ' ' .. ARGV[1] .. ' holds ' .. ARGV[2] .. ' on ' .. ARGV[3] .. ': ' .. n .. ' holder(s)')
return ms
";

/// Witness: `who` stops using `lease`'s proxy. Returns the witness's time, ms.
const DROP_LUA: &str = r"
local n = redis.call('DECR', KEYS[1])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('RPUSH', KEYS[3], ms .. ' ' .. ARGV[1] .. ' drops ' .. ARGV[2] .. ' on ' .. ARGV[3] .. ': ' .. n .. ' holder(s)')
return ms
";

async fn witness(
    conn: &mut redis::aio::MultiplexedConnection,
    script: &str,
    who: &str,
    lease: &Lease,
) -> i64 {
    redis::Script::new(script)
        .key(format!("count:{}", lease.proxy_id))
        .key(format!("max:{}", lease.proxy_id))
        .key("log")
        .arg(who)
        .arg(lease.id.to_string())
        .arg(lease.proxy_id.to_string())
        .invoke_async(conn)
        .await
        .expect("witness script")
}

/// Blocks until the test pushes to `key` on the witness (at most `secs`).
async fn await_signal(witness_url: &str, key: &str, secs: u64) -> bool {
    let mut c = witness_conn(witness_url).await;
    // A connection of its own, allowed to wait longer than the BLPOP.
    c.set_response_timeout(Duration::from_secs(secs + 10));
    let got: Option<(String, String)> = redis::cmd("BLPOP")
        .arg(key)
        .arg(secs)
        .query_async(&mut c)
        .await
        .expect("BLPOP on the witness");
    got.is_some()
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
    let rt = runtime();
    match role.as_str() {
        "holder" => rt.block_on(holder_worker()),
        "taker" => rt.block_on(taker_worker()),
        other => panic!("worker: unknown role {other:?}"),
    }
}

/// Worker A: takes every slot with renewing leases, reports them, tells the
/// witness when each is lost, and once the test says the link is healed,
/// releases them all and reports the outcomes.
async fn holder_worker() {
    let (url, witness_url, ns) = (env("LHN_REDIS"), env("LHN_WITNESS"), env("LHN_NS"));
    let slots: usize = env("LHN_SLOTS").parse().expect("LHN_SLOTS");
    // Short timeouts: a cut-off worker's calls fail in half a second.
    let manager = ProxyManager::builder(storage_on(&url, &ns, Duration::from_millis(500)))
        .auto_register_consumers(true)
        .build();
    let mut w = witness_conn(&witness_url).await;
    let options = AcquireOptions::new()
        .consumer("worker-a")
        .duration(Duration::from_millis(LEASE_MS as u64));
    let mut held = Vec::new();
    while held.len() < slots {
        match manager
            .acquire_renewing(POOL, options.clone())
            .await
            .expect("holder: acquire")
        {
            Some(h) => {
                witness(&mut w, HOLD_LUA, "A", &h.lease()).await;
                held.push(h);
            }
            None => break,
        }
    }
    let list: Vec<String> = held
        .iter()
        .map(|h| {
            let l = h.lease();
            format!(
                "{},{},{}",
                l.id,
                l.proxy_id,
                l.expires_at.timestamp_millis()
            )
        })
        .collect();
    println!("{MARK} HOLDING {}", list.join(";"));

    // Whether each lease is still registered with the witness as in use.
    let using: Vec<_> = held
        .iter()
        .map(|_| std::sync::Arc::new(tokio::sync::Mutex::new(true)))
        .collect();
    for (h, using) in held.iter().zip(&using) {
        let (lost, lease, using) = (h.lost(), h.lease(), using.clone());
        let mut w = w.clone();
        tokio::spawn(async move {
            let reason = lost.await;
            let mut using = using.lock().await;
            if *using {
                // Stop using the proxy, as the lost signal asks.
                let ms = witness(&mut w, DROP_LUA, "A", &lease).await;
                *using = false;
                let _: () = redis::pipe()
                    .hset("lost", lease.id.to_string(), ms)
                    .ignore()
                    .hset("lost-why", lease.id.to_string(), &reason)
                    .ignore()
                    .query_async(&mut w)
                    .await
                    .expect("witness: record the loss");
            }
        });
    }

    assert!(
        await_signal(&witness_url, "healed", 90).await,
        "holder: the test never said the link was healed"
    );
    for (h, using) in held.into_iter().zip(using) {
        let lease = h.lease();
        let was_lost = h.is_lost();
        {
            let mut using = using.lock().await;
            if *using {
                witness(&mut w, DROP_LUA, "A (never told)", &lease).await;
                *using = false;
            }
        }
        // The connections cut off may need a while to come back: retry.
        let mut outcome = h.release().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = &outcome {
            if Instant::now() > deadline {
                break;
            }
            eprintln!("holder: release of {} failed ({e}); retrying", lease.id);
            tokio::time::sleep(Duration::from_millis(200)).await;
            outcome = manager.release_proxy(&lease).await;
        }
        match outcome {
            Ok(o) => println!("{MARK} RELEASED {} {o} lost={was_lost}", lease.id),
            Err(e) => println!("{MARK} RELEASED {} error:{e} lost={was_lost}", lease.id),
        }
    }
}

/// Worker B: tries to acquire every 20 ms until it holds `slots` leases,
/// registering each with the witness, reports them, and releases them when
/// the test says so.
async fn taker_worker() {
    let (url, witness_url, ns) = (env("LHN_REDIS"), env("LHN_WITNESS"), env("LHN_NS"));
    let slots: usize = env("LHN_SLOTS").parse().expect("LHN_SLOTS");
    let manager = ProxyManager::builder(storage_on(&url, &ns, Duration::from_secs(2)))
        .auto_register_consumers(true)
        .build();
    let mut w = witness_conn(&witness_url).await;
    let options = AcquireOptions::new()
        .consumer("worker-b")
        .duration(Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got: Vec<Lease> = Vec::new();
    while got.len() < slots {
        assert!(
            Instant::now() < deadline,
            "taker: only {} of {slots} slots after 60 s",
            got.len()
        );
        match manager.acquire_proxy(POOL, options.clone()).await {
            Ok(Some(lease)) => {
                witness(&mut w, HOLD_LUA, "B", &lease).await;
                got.push(lease);
                continue;
            }
            Ok(None) => {
                let _: i64 = redis::cmd("INCR")
                    .arg("b-full")
                    .query_async(&mut w)
                    .await
                    .expect("witness INCR");
            }
            Err(e) => eprintln!("taker: acquire failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list: Vec<String> = got
        .iter()
        .map(|l| {
            format!(
                "{},{},{}",
                l.id,
                l.proxy_id,
                l.acquired_at.timestamp_millis()
            )
        })
        .collect();
    println!("{MARK} HOLDING {}", list.join(";"));
    assert!(
        await_signal(&witness_url, "release", 90).await,
        "taker: the test never said to release"
    );
    for lease in &got {
        witness(&mut w, DROP_LUA, "B", lease).await;
        let outcome = manager.release_proxy(lease).await.expect("taker: release");
        println!("{MARK} RELEASED {} {outcome}", lease.id);
    }
}

// ---------------------------------------------------------------------------
// Test side.

/// A lab with these hosts, or `None` (after saying why) where this machine
/// cannot make one.
fn lab_or_skip(test: &str, roles: &[&str]) -> Option<Lab> {
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status();
    if redis.is_err() {
        eprintln!("SKIP {test}: no redis-server on PATH to run inside a namespace");
        return None;
    }
    match Lab::new(roles) {
        Ok(lab) => Some(lab),
        Err(why) => {
            eprintln!("SKIP {test}: network namespaces unavailable: {why}");
            None
        }
    }
}

fn worker(lab: &Lab, host: &str, role: &str, vars: &[(&str, String)]) -> Proc {
    let exe = std::env::current_exe().expect("current test binary");
    let mut cmd = lab.command(host, exe);
    cmd.args(["worker_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, role)
        .env("RUST_BACKTRACE", "1");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    Proc::spawn(&format!("worker {host}"), cmd).expect("spawn a worker")
}

/// `id,proxy,ms;...` as printed by the workers.
fn parse_leases(line: &str) -> Vec<(Uuid, Uuid, i64)> {
    line.trim()
        .split(';')
        .map(|item| {
            let f: Vec<&str> = item.split(',').collect();
            (
                f[0].parse().expect("lease id"),
                f[1].parse().expect("proxy id"),
                f[2].parse().expect("ms"),
            )
        })
        .collect()
}

async fn witness_get(c: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    let v: Option<i64> = redis::cmd("GET").arg(key).query_async(c).await.unwrap();
    v.unwrap_or(0)
}

/// Worker A holds every slot with renewing leases and is cut off from Redis;
/// worker B keeps trying to acquire. A must signal loss no later than its
/// leases expire by storage time, B must get each slot only after the lease
/// on it expired by storage time, and the witness must never see more
/// holders of a proxy than its `max_concurrency`. Healed, A's late releases
/// say `Expired` and the capacity comes back exactly once.
#[test]
fn a_cut_off_holder_loses_its_leases_and_the_other_worker_gets_them_only_after_expiry() {
    let test = "a_cut_off_holder_loses_its_leases_and_the_other_worker_gets_them_only_after_expiry";
    let Some(lab) = lab_or_skip(test, &["redis", "a", "b"]) else {
        return;
    };
    let redis = LabRedis::in_namespace(&lab, "redis", REDIS_PORT).expect("Redis in its namespace");
    let witness_srv =
        LabRedis::on_unix_socket(&format!("lh-net-{}-witness", lab.id())).expect("witness Redis");
    let (url, witness_url) = (redis.url().to_string(), witness_srv.url().to_string());
    let ns = format!("lhnet-{}", lab.id());
    let rt = runtime();
    // The test's own connection to the witness, cloned for each use.
    let w0 = rt.block_on(witness_conn(&witness_url));
    let manager = ProxyManager::new(storage_on(&url, &ns, Duration::from_secs(5)));
    let storage = manager.storage();

    // One proxy of one slot, one of two: all three slots are A's.
    let maxes: HashMap<Uuid, u32> = rt.block_on(async {
        let pool = storage
            .create_pool(ProxyPool::new(POOL).unwrap())
            .await
            .unwrap();
        let proxies = vec![
            Proxy::builder(pool.id, "10.99.0.1", 8080)
                .max_concurrency(1)
                .build()
                .unwrap(),
            Proxy::builder(pool.id, "10.99.0.2", 8080)
                .max_concurrency(2)
                .build()
                .unwrap(),
        ];
        let added = storage.add_proxies(proxies).await.unwrap();
        added
            .iter()
            .map(|p| (p.id, p.max_concurrency.unwrap()))
            .collect()
    });
    let slots: u32 = maxes.values().sum();
    let vars = vec![
        ("LHN_REDIS", url.clone()),
        ("LHN_WITNESS", witness_url.clone()),
        ("LHN_NS", ns.clone()),
        ("LHN_SLOTS", slots.to_string()),
    ];

    // A takes every slot.
    let mut a = worker(&lab, "a", "holder", &vars);
    let a_leases = parse_leases(
        &a.wait_for(
            &format!("{MARK} HOLDING "),
            Instant::now() + Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(a_leases.len(), slots as usize, "A holds every slot");

    // Its leases renew: every expiry moves past the one acquire gave.
    let deadline = Instant::now() + Duration::from_millis(LEASE_MS as u64 + 5_000);
    loop {
        let renewed = rt.block_on(async {
            let mut all = true;
            for (id, _, first_expiry) in &a_leases {
                let l = storage
                    .get_lease(&pn(POOL), *id)
                    .await
                    .unwrap()
                    .expect("A's lease");
                all &= l.expires_at.timestamp_millis() > *first_expiry;
            }
            all
        });
        if renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's leases were never renewed\n{}",
            a.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // B starts trying, and finds the pool full.
    let mut b = worker(&lab, "b", "taker", &vars);
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(async {
        let mut w = w0.clone();
        witness_get(&mut w, "b-full").await
    }) < 1
    {
        assert!(
            Instant::now() < deadline,
            "B never tried to acquire\n{}",
            b.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Cut A off.
    lab.cut("a").expect("cut A's link");
    let cut_at = Instant::now();
    let expiry_at_cut: HashMap<Uuid, i64> = rt.block_on(async {
        let mut out = HashMap::new();
        for (id, _, _) in &a_leases {
            let l = storage
                .get_lease(&pn(POOL), *id)
                .await
                .unwrap()
                .expect("A's lease");
            out.insert(*id, l.expires_at.timestamp_millis());
        }
        out
    });
    let last_expiry = *expiry_at_cut.values().max().unwrap();

    // Wait (bounded) for A to report every loss and for B to hold every slot.
    let now_ms =
        rt.block_on(async { support::redis_now_ms(&mut support::raw_conn(&url).await).await });
    let deadline =
        Instant::now() + Duration::from_millis((last_expiry - now_ms).max(0) as u64 + 10_000);
    let mut b_line = None;
    loop {
        let lost: usize = rt.block_on(async {
            let mut w = w0.clone();
            redis::cmd("HLEN")
                .arg("lost")
                .query_async(&mut w)
                .await
                .unwrap()
        });
        if b_line.is_none() {
            b_line = b.all(&format!("{MARK} HOLDING ")).into_iter().next();
        }
        if (lost == a_leases.len() && b_line.is_some()) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let partition = cut_at.elapsed();

    // Heal, and let A release what it held.
    lab.heal("a").expect("heal A's link");
    rt.block_on(async {
        let mut w = w0.clone();
        let _: i64 = redis::cmd("RPUSH")
            .arg("healed")
            .arg(1)
            .query_async(&mut w)
            .await
            .unwrap();
    });
    let a_exit = a.wait_exit(Instant::now() + Duration::from_secs(40));
    let a_released: HashMap<Uuid, String> = a
        .all(&format!("{MARK} RELEASED "))
        .iter()
        .map(|l| {
            let mut f = l.split_whitespace();
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap_or("").to_string(),
            )
        })
        .collect();

    let mut failures: Vec<String> = Vec::new();
    let mut fail = |what: String| {
        eprintln!("FAILED: {what}");
        failures.push(what);
    };
    if let Err(e) = a_exit {
        fail(format!("worker A: {e}"));
    }

    // The facts: storage expiries (the records, read now: what the storage
    // went by), A's loss times and B's grants.
    let (expiry, lost_ms, lost_why, log) = rt.block_on(async {
        let mut expiry = HashMap::new();
        for (id, _, _) in &a_leases {
            let l = storage.get_lease(&pn(POOL), *id).await.unwrap();
            let e = l.map_or(expiry_at_cut[id], |l| l.expires_at.timestamp_millis());
            expiry.insert(*id, e);
        }
        let mut w = w0.clone();
        let lost: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg("lost")
            .query_async(&mut w)
            .await
            .unwrap();
        let why: HashMap<String, String> = redis::cmd("HGETALL")
            .arg("lost-why")
            .query_async(&mut w)
            .await
            .unwrap();
        let log: Vec<String> = redis::cmd("LRANGE")
            .arg("log")
            .arg(0)
            .arg(-1)
            .query_async(&mut w)
            .await
            .unwrap();
        (expiry, lost, why, log)
    });
    let b_leases = b_line.as_deref().map(parse_leases).unwrap_or_default();

    eprintln!("partition: A cut off for {partition:?}");
    for (id, proxy, _) in &a_leases {
        let lost = lost_ms.get(&id.to_string());
        eprintln!(
            "  A lease {id} on {proxy}: storage expiry {} (read at the cut {}), lost signalled at {} ({}), late release {}",
            expiry[id],
            expiry_at_cut[id],
            lost.map_or("never".to_string(), |m| m.to_string()),
            lost.map_or(String::new(), |m| format!("{:+} ms from expiry", m - expiry[id])),
            a_released.get(id).map_or("none", String::as_str),
        );
    }
    for (id, proxy, at) in &b_leases {
        eprintln!("  B lease {id} on {proxy}: granted at {at}");
    }
    eprintln!("witness timeline:\n  {}", log.join("\n  "));

    // 1. A learned it lost each lease no later than the storage expired it.
    for (id, _, _) in &a_leases {
        match lost_ms.get(&id.to_string()) {
            None => fail(format!("A never signalled the loss of lease {id}")),
            Some(&at) if at > expiry[id] => fail(format!(
                "A signalled the loss of lease {id} {} ms after it expired by storage time \
                 (lost at {at}, expiry {}; {})",
                at - expiry[id],
                expiry[id],
                lost_why.get(&id.to_string()).map_or("", String::as_str)
            )),
            Some(_) => {}
        }
    }
    // 2. B got every slot, each only once enough of A's leases on that proxy
    //    had expired by storage time.
    if b_leases.len() != slots as usize {
        fail(format!(
            "B holds {} of {slots} slots after the partition\n{}",
            b_leases.len(),
            b.describe()
        ));
    }
    for (&proxy, &max) in &maxes {
        let mut grants: Vec<i64> = b_leases
            .iter()
            .filter(|(_, p, _)| *p == proxy)
            .map(|(_, _, at)| *at)
            .collect();
        grants.sort_unstable();
        for (j, at) in grants.iter().enumerate() {
            let a_live = a_leases
                .iter()
                .filter(|(id, p, _)| *p == proxy && expiry[id] > *at)
                .count();
            if a_live + j + 1 > max as usize {
                fail(format!(
                    "B was granted a slot of proxy {proxy} (max {max}) at {at} while {a_live} of \
                     A's leases on it had not expired by storage time"
                ));
            }
        }
    }
    // 3. The witness never saw more holders than slots.
    let witness_max: HashMap<Uuid, i64> = rt.block_on(async {
        let mut w = w0.clone();
        let mut out = HashMap::new();
        for proxy in maxes.keys() {
            out.insert(*proxy, witness_get(&mut w, &format!("max:{proxy}")).await);
        }
        out
    });
    for (proxy, seen) in &witness_max {
        if *seen > maxes[proxy] as i64 {
            fail(format!(
                "over-lease: the witness saw {seen} holders of proxy {proxy} (max {})",
                maxes[proxy]
            ));
        }
    }
    // 4. A's late releases: each says Expired.
    for (id, _, _) in &a_leases {
        match a_released.get(id).map(String::as_str) {
            Some("expired") => {}
            other => fail(format!(
                "A's late release of {id} answered {other:?}, not Some(\"expired\")"
            )),
        }
    }
    // 5. Nothing was given back twice: with B holding every slot, the pool is
    //    still full and every counter matches the live leases.
    if b_leases.len() == slots as usize {
        rt.block_on(async {
            let stats = storage.pool_stats(&pn(POOL)).await.unwrap();
            if stats.total_leases != slots as u64 || stats.available_proxies != 0 {
                fail(format!(
                    "after A's late releases, with B holding every slot: {stats:?}"
                ));
            }
            if let Some(extra) = manager
                .acquire_proxy(POOL, AcquireOptions::new())
                .await
                .unwrap()
            {
                fail(format!(
                    "a slot was given back twice: acquired {} on {} while B holds every slot",
                    extra.id, extra.proxy_id
                ));
                let _ = manager.release_proxy(&extra).await;
            }
            let fixes = storage.audit_pool(POOL, 100).await.unwrap();
            if !fixes.is_empty() {
                fail(format!("lease counters drifted: {fixes:?}"));
            }
        });
    }

    // B releases; then the pool is whole, exactly.
    rt.block_on(async {
        let mut w = w0.clone();
        let _: i64 = redis::cmd("RPUSH")
            .arg("release")
            .arg(1)
            .query_async(&mut w)
            .await
            .unwrap();
    });
    if let Err(e) = b.wait_exit(Instant::now() + Duration::from_secs(30)) {
        fail(format!("worker B: {e}"));
    }
    for line in b.all(&format!("{MARK} RELEASED ")) {
        if !line.trim_end().ends_with(" released") {
            fail(format!("B's release: {line}"));
        }
    }
    rt.block_on(async {
        let stats = storage.pool_stats(&pn(POOL)).await.unwrap();
        if stats.total_leases != 0 || stats.available_proxies != maxes.len() as u64 {
            fail(format!("after every release: {stats:?}"));
        }
        for proxy in maxes.keys() {
            let p = storage.get_proxy(*proxy).await.unwrap().expect("proxy");
            if p.current_leases != 0 {
                fail(format!(
                    "proxy {proxy} still counts {} leases",
                    p.current_leases
                ));
            }
        }
        let fixes = storage.audit_pool(POOL, 100).await.unwrap();
        if !fixes.is_empty() {
            fail(format!("lease counters drifted: {fixes:?}"));
        }
        let reclaimed = storage.cleanup_expired_leases().await.unwrap();
        if reclaimed != 0 {
            fail(format!(
                "cleanup found {reclaimed} leases to reclaim at the end"
            ));
        }
        let mut again = Vec::new();
        while let Some(l) = manager
            .acquire_proxy(POOL, AcquireOptions::new())
            .await
            .unwrap()
        {
            again.push(l);
            if again.len() > slots as usize {
                break;
            }
        }
        if again.len() != slots as usize {
            fail(format!(
                "the pool has {} slots at the end, not {slots}",
                again.len()
            ));
        }
        for l in &again {
            manager.release_proxy(l).await.unwrap();
        }
    });
    rt.block_on(async {
        let mut w = w0.clone();
        for proxy in maxes.keys() {
            let now = witness_get(&mut w, &format!("count:{proxy}")).await;
            if now != 0 {
                fail(format!("the witness still counts {now} holders of {proxy}"));
            }
        }
    });
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}

/// A metric's value in a Prometheus text page.
#[cfg(feature = "cli")]
fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `/healthz` until it answers `want`, at most until `deadline`; the
/// last answer (or `None`: no answer) on failure.
#[cfg(feature = "cli")]
fn wait_health(
    addr: std::net::SocketAddr,
    want: u16,
    deadline: Instant,
) -> Result<String, Option<(u16, String)>> {
    let mut last = None;
    loop {
        let got = netns::http_get(addr, "/healthz");
        if let Some((code, body)) = &got {
            if *code == want {
                return Ok(body.clone());
            }
        }
        last = got.or(last);
        if Instant::now() > deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `lighthouse-sweeper` runs in a namespace of its own; `/healthz` is polled
/// over a second link that the cut leaves alone. Cut off from Redis it says
/// 503 (its calls time out: no error comes back), healed it says 200 again,
/// and it sweeps again: a lease that expired during the cut is reclaimed by it.
#[cfg(feature = "cli")]
#[test]
fn sweeper_healthz_is_unhealthy_while_redis_is_cut_off_and_healthy_after() {
    let test = "sweeper_healthz_is_unhealthy_while_redis_is_cut_off_and_healthy_after";
    let Some(mut lab) = lab_or_skip(test, &["redis", "sweeper"]) else {
        return;
    };
    let mgmt = lab.mgmt_link("sweeper").expect("management link");
    let redis = LabRedis::in_namespace(&lab, "redis", REDIS_PORT).expect("Redis in its namespace");
    let url = redis.url().to_string();
    let ns = format!("lhnet-{}", lab.id());
    let rt = runtime();
    let manager = ProxyManager::new(storage_on(&url, &ns, Duration::from_secs(5)));
    let storage = manager.storage();
    let proxy = rt.block_on(async {
        let pool = storage
            .create_pool(ProxyPool::new(POOL).unwrap())
            .await
            .unwrap();
        storage
            .add_proxy(Proxy::builder(pool.id, "10.99.0.1", 8080).build().unwrap())
            .await
            .unwrap()
    });

    let mut cmd = lab.command("sweeper", env!("CARGO_BIN_EXE_lighthouse-sweeper"));
    cmd.args(["--redis-url", &url, "--namespace", &ns])
        .args(["--interval", "200ms", "--audit-interval", "0s"])
        .args(["--response-timeout", "1s", "--connect-timeout", "1s"])
        .args(["--metrics-addr", "0.0.0.0:9464"])
        .env("RUST_LOG", "info");
    let mut sweeper = Proc::spawn("lighthouse-sweeper", cmd).expect("start the sweeper");
    let addr = std::net::SocketAddr::from((mgmt, 9464));
    let reclaimed = format!("lighthouse_sweeper_leases_reclaimed_total{{pool=\"{POOL}\"}}");

    if let Err(last) = wait_health(addr, 200, Instant::now() + Duration::from_secs(20)) {
        panic!(
            "the sweeper never got healthy: {last:?}\n{}",
            sweeper.describe()
        );
    }

    // A lease that expires while the sweeper is cut off.
    let lease = rt.block_on(async {
        manager
            .acquire_proxy(
                POOL,
                AcquireOptions::new().duration(Duration::from_millis(1_000)),
            )
            .await
            .unwrap()
            .expect("a free proxy")
    });
    lab.cut("sweeper").expect("cut the sweeper's link");
    let cut = Instant::now();
    match wait_health(addr, 503, Instant::now() + Duration::from_secs(30)) {
        Ok(body) => eprintln!(
            "/healthz said 503 {:?} after the cut: {}",
            cut.elapsed(),
            body.trim()
        ),
        Err(last) => panic!(
            "/healthz never said 503 while Redis was cut off: last answer {last:?}\n{}",
            sweeper.describe()
        ),
    }
    let page = netns::http_get(addr, "/metrics")
        .expect("/metrics answers")
        .1;
    assert_eq!(
        metric(&page, "lighthouse_sweeper_redis_up"),
        Some(0.0),
        "{page}"
    );
    assert!(
        metric(&page, "lighthouse_sweeper_errors_total").unwrap_or(0.0) >= 1.0,
        "{page}"
    );
    // The lease expired (storage time) while the sweeper could not see it.
    let deadline = Instant::now() + Duration::from_secs(10);
    rt.block_on(async {
        let mut c = support::raw_conn(&url).await;
        while support::redis_now_ms(&mut c).await <= lease.expires_at.timestamp_millis() {
            assert!(
                Instant::now() < deadline,
                "Redis's clock did not pass the expiry"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    lab.heal("sweeper").expect("heal the sweeper's link");
    let healed = Instant::now();
    match wait_health(addr, 200, Instant::now() + Duration::from_secs(40)) {
        Ok(_) => eprintln!("/healthz said 200 {:?} after the heal", healed.elapsed()),
        Err(last) => panic!(
            "/healthz did not recover after the heal: last answer {last:?}\n{}",
            sweeper.describe()
        ),
    }
    // And it sweeps again: the expired lease is reclaimed by it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = netns::http_get(addr, "/metrics")
            .map(|(_, p)| p)
            .unwrap_or_default();
        if metric(&page, &reclaimed) == Some(1.0) {
            assert_eq!(
                metric(&page, "lighthouse_sweeper_redis_up"),
                Some(1.0),
                "{page}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sweeper did not reclaim the lease that expired during the cut:\n{page}\n{}",
            sweeper.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(async {
        let p = storage.get_proxy(proxy.id).await.unwrap().expect("proxy");
        assert_eq!(p.current_leases, 0, "the reclaimed slot is free");
        assert_eq!(storage.pool_stats(&pn(POOL)).await.unwrap().total_leases, 0);
    });
}
