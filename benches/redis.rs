//! Redis acquire→release cycles/s through `ProxyManager<RedisStorage>`, beside two
//! same-run baselines on the same private `redis-server`:
//!
//! - **A**: `redis-benchmark` running `EVALSHA` of a minimal acquire-plus-release
//!   Lua script (check a counter < max, `HINCRBY`, `ZADD` the lease with its
//!   expiry, then `ZREM` and `HINCRBY -1`): one round trip per cycle, no
//!   selection, no record, no client library. The floor a Lua lease can reach.
//! - **B**: the npm package `redis-semaphore` (`Semaphore.acquire()` then
//!   `release()`, one `ioredis` connection), run by `benches/peer/semaphore.js`
//!   after an `npm install` into `target/peer/`. Skipped, with a line saying
//!   why, when node or npm is missing or the install fails.
//!
//! ```text
//! cargo bench --bench redis
//! ```
//!
//! It spawns its own `redis-server` from PATH on a free loopback port (no
//! persistence) and kills it at the end; it never touches another Redis. Pools
//! of 1,000 and 100,000 proxies (`max_concurrency` 4, 16 countries, half of the
//! proxies holding a lease), unfiltered and with a country filter, at 1 and 64
//! concurrent tokio tasks; c=1 runs on both a current-thread and a multi-thread
//! runtime. Each case runs `LIGHTHOUSE_BENCH_SECS` (default 3) seconds after a
//! `LIGHTHOUSE_BENCH_WARMUP` (default 0.5) second warm-up. The cases and the
//! baselines run in `LIGHTHOUSE_BENCH_ROUNDS` (default 3) interleaved rounds
//! (baselines after ours, then before, ...); each ratio is taken within a round,
//! and the table shows medians (this machine is shared, and single runs drift by
//! tens of percent). `LIGHTHOUSE_BENCH_SIZES=1000` and
//! `LIGHTHOUSE_BENCH_BASELINES=0` narrow a quick tuning run. `CONFIG RESETSTAT`
//! before each case and `INFO commandstats` after it give Redis's own time per
//! `EVALSHA` (acquire and release averaged); a last step splits it into acquire
//! and release. Results also go to `target/bench-redis.json`.
//!
//! Under `cargo test --benches` (no `--bench` argument) it only says so and exits.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{
    AcquireOptions, Lease, Proxy, ProxyFilters, ProxyManager, ProxyPool, ReleaseOutcome, Storage,
};
use serde_json::{json, Value};
use tokio::task::JoinSet;

#[allow(dead_code)]
#[path = "../tests/support/server.rs"]
mod server;

const NAMESPACE: &str = "lhbench";
const SIZES: [usize; 2] = [1_000, 100_000];

/// The pool sizes to run: `LIGHTHOUSE_BENCH_SIZES` (comma-separated, each one of
/// [`SIZES`]) narrows a quick run; unset, every size.
fn sizes() -> Vec<usize> {
    match std::env::var("LIGHTHOUSE_BENCH_SIZES") {
        Ok(list) => SIZES
            .into_iter()
            .filter(|n| {
                list.split(',')
                    .any(|s| s.trim().parse::<usize>().ok() == Some(*n))
            })
            .collect(),
        Err(_) => SIZES.to_vec(),
    }
}

/// `LIGHTHOUSE_BENCH_BASELINES=0` skips both baselines (a quick run for tuning;
/// its ratios are then missing, so never report one).
fn baselines_wanted() -> bool {
    std::env::var("LIGHTHOUSE_BENCH_BASELINES").map_or(true, |v| v != "0")
}
const MAX_CONCURRENCY: u32 = 4;
const COUNTRIES: [&str; 16] = [
    "AR", "BR", "CL", "CO", "PE", "MX", "UY", "PY", "BO", "EC", "VE", "CR", "PA", "GT", "HN", "SV",
];
/// Proxies per `add_proxies` call when loading a pool, and calls in flight.
const LOAD_CHUNK: usize = 5_000;
const LOAD_IN_FLIGHT: usize = 4;
/// Tasks that take the standing leases (half the proxies) before the runs.
const HOLDERS: usize = 64;
/// Leases taken (then released) per case by the per-call cost step.
const COST_LEASES: usize = 200;
/// Keyspace of baseline A's random proxy field.
const BASELINE_FIELDS: usize = 1_000;
/// Baseline B's semaphore limit: above any concurrency, so acquire never waits.
const SEMAPHORE_LIMIT: usize = 1_000;

type Manager = ProxyManager<RedisStorage>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// One baseline's runner: the admin connection, the server's port, the timing.
type BaselineRun = fn(&mut redis::Connection, u16, Timing) -> Result<Vec<Baseline>, String>;

/// Baseline A's script: acquire (counter < max, count, record the lease by
/// expiry) then release (forget the lease, uncount), in one call.
const BASELINE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
return 1
";

#[derive(Debug, Clone, Copy)]
struct Timing {
    warmup: Duration,
    secs: Duration,
}

fn env_secs(name: &str, default: f64) -> Duration {
    let v = std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(default);
    Duration::from_secs_f64(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    CurrentThread,
    MultiThread,
}

impl Flavor {
    fn label(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current",
            Flavor::MultiThread => "multi",
        }
    }
    fn runtime(self) -> tokio::runtime::Runtime {
        match self {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .expect("a tokio runtime")
    }
}

/// The runtime whose c=1 numbers stand in the ratios' headline (what
/// `#[tokio::main]` gives a crawler, and what c=64 uses).
const DEFAULT_FLAVOR: Flavor = Flavor::MultiThread;

#[derive(Debug, Clone)]
struct Case {
    size: usize,
    filter: &'static str,
    flavor: Flavor,
    concurrency: usize,
}

impl Case {
    fn options(&self) -> AcquireOptions {
        let options = AcquireOptions::new().consumer("worker-1");
        match self.filter {
            "country" => options.filters(ProxyFilters::new().country("CL")),
            _ => options,
        }
    }
    fn name(&self) -> String {
        format!("{} {}", size_label(self.size), self.filter)
    }
}

fn size_label(n: usize) -> String {
    if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn pool_name(n: usize) -> String {
    format!("bench-{}", size_label(n))
}

#[derive(Debug, Default)]
struct WorkerOut {
    cycles: u64,
    all_cycles: u64,
    exhausted: u64,
    latencies_ns: Vec<u64>,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct CaseResult {
    case: Case,
    cycles: u64,
    cycles_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    exhausted: u64,
    error: Option<String>,
    evalsha: Option<CmdStat>,
    redis_cpu_pct: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct CmdStat {
    calls: u64,
    usec_per_call: f64,
}

#[derive(Debug, Clone)]
struct Baseline {
    name: &'static str,
    concurrency: usize,
    pipeline: usize,
    cycles_per_sec: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    evalsha: Option<CmdStat>,
    detail: String,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "redis bench: run it with `cargo bench --bench redis` (nothing to do in test mode)"
        );
        return;
    }
    let timing = Timing {
        warmup: env_secs("LIGHTHOUSE_BENCH_WARMUP", 0.5),
        secs: env_secs("LIGHTHOUSE_BENCH_SECS", 3.0).max(Duration::from_millis(100)),
    };
    let server = match server::RedisServer::spawn() {
        Ok(s) => s,
        Err(e) => {
            println!("redis bench skipped: no private redis-server: {e}");
            return;
        }
    };
    let outcome = run(&server, timing);
    drop(server); // kills the redis-server
    if let Err(e) = outcome {
        eprintln!("redis bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(server: &server::RedisServer, timing: Timing) -> Result<(), BoxError> {
    let url = server.url();
    let port = server.port();
    let loadavg_start = loadavg();
    let mut admin = redis::Client::open(url.as_str())?.get_connection()?;
    let version = info_field(&mut admin, "server", "redis_version").unwrap_or_default();
    println!(
        "redis bench: private redis-server {version} on 127.0.0.1:{port}; {} s per case after a {} s warm-up; load average {loadavg_start}",
        timing.secs.as_secs_f64(),
        timing.warmup.as_secs_f64()
    );

    // ------------------------------------------------------------ setup
    let setup_rt = Flavor::MultiThread.runtime();
    for n in sizes() {
        let started = Instant::now();
        let (held, loaded, per_proxy, per_lease) = setup_rt.block_on(setup_pool(&url, n))?;
        println!(
            "  pool {}: {n} proxies loaded in {:.1} s, then {held} standing leases taken; {:.1} s in all",
            pool_name(n),
            loaded.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        println!(
            "  memory (INFO used_memory deltas): {per_proxy:.0} B per proxy, {per_lease:.0} B per active lease"
        );
    }
    drop(setup_rt);

    // ------------------------------------------------------------ ours
    let mut cases = Vec::new();
    for n in sizes() {
        for filter in ["unfiltered", "country"] {
            for (flavor, concurrency) in [
                (Flavor::CurrentThread, 1),
                (Flavor::MultiThread, 1),
                (Flavor::MultiThread, 64),
            ] {
                cases.push(Case {
                    size: n,
                    filter,
                    flavor,
                    concurrency,
                });
            }
        }
    }
    // ------------------------------------------------------------ rounds
    // Each round runs every case of ours and both baselines, the order swapped
    // every other round; ratios are taken within a round, then the median over
    // the rounds is reported (this machine is shared: single runs drift).
    let rounds = env_rounds();
    let mut skipped: Vec<String> = Vec::new();
    let mut all: Vec<(Vec<CaseResult>, Vec<Baseline>)> = Vec::new();
    for round in 0..rounds {
        println!("round {}/{rounds}", round + 1);
        let mut baselines = Vec::new();
        if round % 2 == 1 {
            baselines = run_baselines(&mut admin, port, timing, &mut skipped);
        }
        let mut results = Vec::new();
        for case in &cases {
            let r = run_case(&url, &mut admin, case.clone(), timing)?;
            println!(
                "  ours {:<16} {:<7} c={:<2} {:>9.0} cycles/s  p50 {:>7.1} us  p99 {:>7.1} us{}",
                r.case.name(),
                r.case.flavor.label(),
                r.case.concurrency,
                r.cycles_per_sec,
                r.p50_us,
                r.p99_us,
                r.error
                    .as_deref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
            results.push(r);
        }
        if round % 2 == 0 {
            baselines = run_baselines(&mut admin, port, timing, &mut skipped);
        }
        all.push((results, baselines));
    }
    let summaries: Vec<Summary> = (0..cases.len()).map(|i| summarize(&all, i)).collect();
    let baselines = summarize_baselines(&all);

    // ------------------------------------------------------------ cost per call
    let cost = script_cost(&url, &mut admin)?;

    let loadavg_end = loadavg();
    print_table(&summaries, &baselines, &cost, &skipped, rounds);
    println!("load average at start {loadavg_start}, at end {loadavg_end}");

    let report = json!({
        "bench": "benches/redis.rs",
        "redis_version": version,
        "warmup_s": timing.warmup.as_secs_f64(),
        "secs": timing.secs.as_secs_f64(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "default_c1_runtime": DEFAULT_FLAVOR.label(),
        "rounds": rounds,
        "ours": summaries.iter().map(summary_json).collect::<Vec<_>>(),
        "baselines": baselines.iter().map(baseline_json).collect::<Vec<_>>(),
        "per_round": all.iter().map(|(results, baselines)| json!({
            "ours": results.iter().map(|r| case_json(r, baselines)).collect::<Vec<_>>(),
            "baselines": baselines.iter().map(baseline_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "script_cost": cost.iter().map(|c| json!({
            "pool": pool_name(c.size),
            "proxies": c.size,
            "filter": c.filter,
            "acquire_usec_per_call": c.acquire,
            "release_usec_per_call": c.release,
        })).collect::<Vec<_>>(),
        "skipped": skipped,
    });
    let out = target_dir().join("bench-redis.json");
    std::fs::create_dir_all(target_dir())?;
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("results written to {}", out.display());
    Ok(())
}

/// `LIGHTHOUSE_BENCH_ROUNDS` (default 3, at least 1).
fn env_rounds() -> usize {
    std::env::var("LIGHTHOUSE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(3)
        .max(1)
}

/// Both baselines, once each (a skipped one is noted once in `skipped`).
fn run_baselines(
    admin: &mut redis::Connection,
    port: u16,
    timing: Timing,
    skipped: &mut Vec<String>,
) -> Vec<Baseline> {
    let mut baselines = Vec::new();
    let runs: [(&str, BaselineRun); 2] = [
        ("redis-benchmark EVALSHA", baseline_redis_benchmark),
        ("redis-semaphore", baseline_semaphore),
    ];
    for (name, run) in runs {
        let why = if baselines_wanted() {
            match run(admin, port, timing) {
                Ok(mut b) => {
                    baselines.append(&mut b);
                    continue;
                }
                Err(e) => e,
            }
        } else {
            "LIGHTHOUSE_BENCH_BASELINES=0".to_string()
        };
        let line = format!("baseline skipped: {name}: {why}");
        if !skipped.contains(&line) {
            println!("{line}");
            skipped.push(line);
        }
    }
    baselines
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One case over the rounds: medians, and the ratios taken within each round.
#[derive(Debug, Clone)]
struct Summary {
    case: Case,
    cycles_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    evalsha_us: Option<f64>,
    redis_cpu_pct: Option<f64>,
    vs_evalsha: Option<f64>,
    vs_semaphore: Option<f64>,
    vs_semaphore_min: Option<f64>,
    vs_semaphore_max: Option<f64>,
    exhausted: u64,
    error: Option<String>,
    rounds_cycles_per_sec: Vec<f64>,
}

fn summarize(all: &[(Vec<CaseResult>, Vec<Baseline>)], i: usize) -> Summary {
    let rs: Vec<(&CaseResult, &Vec<Baseline>)> = all.iter().map(|(r, b)| (&r[i], b)).collect();
    let pick = |f: &dyn Fn(&CaseResult) -> Option<f64>| -> Option<f64> {
        median(rs.iter().filter_map(|(r, _)| f(r)).collect())
    };
    let vs = |name: &str| -> Vec<f64> {
        rs.iter()
            .filter_map(|(r, b)| ratio(r.cycles_per_sec, baseline_for(b, name, r.case.concurrency)))
            .collect()
    };
    let sem = vs("redis-semaphore");
    Summary {
        case: rs[0].0.case.clone(),
        cycles_per_sec: pick(&|r| Some(r.cycles_per_sec)).unwrap_or(0.0),
        p50_us: pick(&|r| Some(r.p50_us)).unwrap_or(0.0),
        p99_us: pick(&|r| Some(r.p99_us)).unwrap_or(0.0),
        evalsha_us: pick(&|r| r.evalsha.map(|s| s.usec_per_call)),
        redis_cpu_pct: pick(&|r| r.redis_cpu_pct),
        vs_evalsha: median(vs("redis-benchmark EVALSHA")),
        vs_semaphore: median(sem.clone()),
        vs_semaphore_min: sem.iter().copied().reduce(f64::min),
        vs_semaphore_max: sem.iter().copied().reduce(f64::max),
        exhausted: rs.iter().map(|(r, _)| r.exhausted).sum(),
        error: rs.iter().find_map(|(r, _)| r.error.clone()),
        rounds_cycles_per_sec: rs.iter().map(|(r, _)| r.cycles_per_sec).collect(),
    }
}

/// Each baseline (name, concurrency, pipeline) over the rounds: medians.
fn summarize_baselines(all: &[(Vec<CaseResult>, Vec<Baseline>)]) -> Vec<Baseline> {
    let mut out: Vec<Baseline> = Vec::new();
    let Some((_, first)) = all.first() else {
        return out;
    };
    for b in first {
        let same: Vec<&Baseline> = all
            .iter()
            .filter_map(|(_, bs)| {
                bs.iter().find(|x| {
                    x.name == b.name && x.concurrency == b.concurrency && x.pipeline == b.pipeline
                })
            })
            .collect();
        let pick = |f: &dyn Fn(&Baseline) -> Option<f64>| -> Option<f64> {
            median(same.iter().filter_map(|x| f(x)).collect())
        };
        let evalsha_us = pick(&|x| x.evalsha.map(|s| s.usec_per_call));
        out.push(Baseline {
            name: b.name,
            concurrency: b.concurrency,
            pipeline: b.pipeline,
            cycles_per_sec: pick(&|x| Some(x.cycles_per_sec)).unwrap_or(0.0),
            p50_us: pick(&|x| x.p50_us),
            p99_us: pick(&|x| x.p99_us),
            evalsha: evalsha_us.map(|u| CmdStat {
                calls: same.iter().filter_map(|x| x.evalsha.map(|s| s.calls)).sum(),
                usec_per_call: u,
            }),
            detail: format!(
                "median of {}: {}",
                same.len(),
                same.iter()
                    .map(|x| format!("{:.0}", x.cycles_per_sec))
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
        });
    }
    out
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "pool": pool_name(s.case.size),
        "proxies": s.case.size,
        "filter": s.case.filter,
        "runtime": s.case.flavor.label(),
        "default": s.case.concurrency > 1 || s.case.flavor == DEFAULT_FLAVOR,
        "concurrency": s.case.concurrency,
        "cycles_per_sec_median": s.cycles_per_sec,
        "cycles_per_sec_rounds": s.rounds_cycles_per_sec,
        "p50_us": s.p50_us,
        "p99_us": s.p99_us,
        "evalsha_usec_per_call": s.evalsha_us,
        "redis_cpu_pct": s.redis_cpu_pct,
        "exhausted": s.exhausted,
        "error": s.error,
        "ratio_vs_redis_benchmark_evalsha_median": s.vs_evalsha,
        "ratio_vs_redis_semaphore_median": s.vs_semaphore,
        "ratio_vs_redis_semaphore_min": s.vs_semaphore_min,
        "ratio_vs_redis_semaphore_max": s.vs_semaphore_max,
    })
}

/// `<crate>/target`, whatever `CARGO_TARGET_DIR` says (the report's fixed place).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn manager(url: &str) -> Result<Manager, BoxError> {
    let config = RedisConfig::from_url(url)
        .namespace(NAMESPACE)
        .response_timeout(Duration::from_secs(30))
        .tuned_from_env();
    Ok(ProxyManager::new(RedisStorage::new(config)?))
}

fn proxies(pool_id: uuid::Uuid, n: usize) -> Result<Vec<Proxy>, BoxError> {
    (0..n)
        .map(|i| {
            Ok(Proxy::builder(
                pool_id,
                format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                8080,
            )
            .max_concurrency(MAX_CONCURRENCY)
            .country(COUNTRIES[i % COUNTRIES.len()])
            .build()?)
        })
        .collect()
}

/// Creates the pool, loads its proxies in concurrent chunks, and has one lease
/// (2 h long) held on every other proxy. Returns the standing leases and the
/// time the proxies took to load.
async fn setup_pool(url: &str, n: usize) -> Result<(u64, Duration, f64, f64), BoxError> {
    let m = manager(url)?;
    let mut mem = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let used = |text: String| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let before: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut mem)
        .await?;
    let before = used(before);
    m.storage().load_scripts().await?;
    let name = pool_name(n);
    let started = Instant::now();
    let pool = m.storage().create_pool(ProxyPool::new(&name)?).await?;
    m.storage().ensure_consumer("worker-1").await?;
    let mut chunks: Vec<Vec<Proxy>> = proxies(pool.id, n)?
        .chunks(LOAD_CHUNK)
        .map(<[Proxy]>::to_vec)
        .collect();
    let mut set: JoinSet<lighthouse_lease::Result<Vec<Proxy>>> = JoinSet::new();
    while !chunks.is_empty() || !set.is_empty() {
        while set.len() < LOAD_IN_FLIGHT {
            let Some(chunk) = chunks.pop() else { break };
            let m = m.clone();
            set.spawn(async move { m.storage().add_proxies(chunk).await });
        }
        if let Some(done) = set.join_next().await {
            done??;
        }
    }
    let loaded = started.elapsed();
    let after_proxies: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut mem)
        .await?;
    let after_proxies = used(after_proxies);
    let left = Arc::new(AtomicUsize::new(n / 2));
    let mut set: JoinSet<Result<(), String>> = JoinSet::new();
    for _ in 0..HOLDERS {
        let (m, left, name) = (m.clone(), Arc::clone(&left), name.clone());
        set.spawn(async move {
            let options = AcquireOptions::new()
                .consumer("worker-1")
                .duration(Duration::from_secs(7_200));
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
                .is_ok()
            {
                match m.acquire_proxy(&name, options.clone()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("no free proxy while taking standing leases".into()),
                    Err(e) => return Err(format!("standing lease: {e}")),
                }
            }
            Ok(())
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    let after_leases: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut mem)
        .await?;
    let after_leases = used(after_leases);
    let stats = m.storage().pool_stats(&name).await?;
    if stats.total_proxies != n as u64 || stats.total_leases != (n / 2) as u64 {
        return Err(format!("pool {name} is not as set up: {stats:?}").into());
    }
    let per_proxy = (after_proxies - before) / n as f64;
    let per_lease = (after_leases - after_proxies) / (n / 2).max(1) as f64;
    Ok((stats.total_leases, loaded, per_proxy, per_lease))
}

// ---------------------------------------------------------------- our cycles

async fn worker(
    m: Manager,
    pool: String,
    options: AcquireOptions,
    warm_end: Instant,
    end: Instant,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        match m.acquire_proxy(&pool, options.clone()).await {
            Ok(Some(lease)) => match m.release_proxy(&lease).await {
                Ok(ReleaseOutcome::Released) => {}
                Ok(other) => {
                    out.error = Some(format!("release answered {other:?}"));
                    break;
                }
                Err(e) => {
                    out.error = Some(format!("release: {e}"));
                    break;
                }
            },
            Ok(None) => {
                out.exhausted += 1;
                continue;
            }
            Err(e) => {
                out.error = Some(format!("acquire: {e}"));
                break;
            }
        }
        let t1 = Instant::now();
        out.all_cycles += 1;
        // A cycle counts when it completes inside the measured window.
        if t1 >= warm_end && t1 <= end {
            out.cycles += 1;
            out.latencies_ns
                .push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
        }
    }
    out
}

async fn drive(url: String, case: Case, timing: Timing) -> Result<WorkerOut, BoxError> {
    let m = manager(&url)?;
    let pool = pool_name(case.size);
    let options = case.options();
    let start = Instant::now();
    let warm_end = start + timing.warmup;
    let end = warm_end + timing.secs;
    let mut set = JoinSet::new();
    for _ in 0..case.concurrency {
        set.spawn(worker(
            m.clone(),
            pool.clone(),
            options.clone(),
            warm_end,
            end,
        ));
    }
    let mut total = WorkerOut::default();
    while let Some(done) = set.join_next().await {
        let w = done?;
        total.cycles += w.cycles;
        total.all_cycles += w.all_cycles;
        total.exhausted += w.exhausted;
        total.latencies_ns.extend(w.latencies_ns);
        if total.error.is_none() {
            total.error = w.error;
        }
    }
    Ok(total)
}

fn run_case(
    url: &str,
    admin: &mut redis::Connection,
    case: Case,
    timing: Timing,
) -> Result<CaseResult, BoxError> {
    reset_stats(admin)?;
    let cpu0 = redis_cpu(admin);
    let wall = Instant::now();
    let rt = case.flavor.runtime();
    let mut out = rt.block_on(drive(url.to_string(), case.clone(), timing))?;
    drop(rt);
    let wall = wall.elapsed().as_secs_f64();
    let cpu = match (cpu0, redis_cpu(admin)) {
        (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall * 100.0),
        _ => None,
    };
    out.latencies_ns.sort_unstable();
    Ok(CaseResult {
        cycles: out.cycles,
        cycles_per_sec: out.cycles as f64 / timing.secs.as_secs_f64(),
        p50_us: percentile_us(&out.latencies_ns, 0.50),
        p99_us: percentile_us(&out.latencies_ns, 0.99),
        exhausted: out.exhausted,
        error: out.error,
        evalsha: cmdstat(admin, "evalsha"),
        redis_cpu_pct: cpu,
        case,
    })
}

fn percentile_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let i = ((sorted_ns.len() as f64 * q) as usize).min(sorted_ns.len() - 1);
    sorted_ns[i] as f64 / 1_000.0
}

// ---------------------------------------------------------------- Redis stats

fn reset_stats(admin: &mut redis::Connection) -> redis::RedisResult<()> {
    redis::cmd("CONFIG").arg("RESETSTAT").query(admin)
}

fn info(admin: &mut redis::Connection, section: &str) -> Option<String> {
    redis::cmd("INFO").arg(section).query::<String>(admin).ok()
}

fn info_field(admin: &mut redis::Connection, section: &str, field: &str) -> Option<String> {
    let text = info(admin, section)?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Redis's CPU seconds so far (user + system).
fn redis_cpu(admin: &mut redis::Connection) -> Option<f64> {
    let user: f64 = info_field(admin, "cpu", "used_cpu_user")?.parse().ok()?;
    let sys: f64 = info_field(admin, "cpu", "used_cpu_sys")?.parse().ok()?;
    Some(user + sys)
}

/// `calls` and `usec_per_call` of one command in `INFO commandstats`.
fn cmdstat(admin: &mut redis::Connection, command: &str) -> Option<CmdStat> {
    let text = info(admin, "commandstats")?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:")))?;
    let fields: BTreeMap<&str, &str> = line
        .trim()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    Some(CmdStat {
        calls: fields.get("calls")?.parse().ok()?,
        usec_per_call: fields.get("usec_per_call")?.parse().ok()?,
    })
}

// ---------------------------------------------------------------- baseline A

fn baseline_redis_benchmark(
    admin: &mut redis::Connection,
    port: u16,
    timing: Timing,
) -> Result<Vec<Baseline>, String> {
    let probe = Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run redis-benchmark from PATH: {e}"))?;
    if !probe.status.success() {
        return Err("redis-benchmark --version failed".into());
    }
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(BASELINE_LUA)
        .query(admin)
        .map_err(|e| format!("SCRIPT LOAD: {e}"))?;
    let mut out = Vec::new();
    for (concurrency, pipeline) in [(1, 1), (64, 1), (64, 8)] {
        // Calibrate (and warm up) with a short run, then size the real one to
        // last about `timing.secs`.
        let probe_n = 2_000 * concurrency.clamp(1, 8) * pipeline.min(2);
        let (probe_rps, _, _) = redis_benchmark(port, &sha, concurrency, pipeline, probe_n)?;
        let n = ((probe_rps * timing.secs.as_secs_f64()) as usize).max(1_000);
        reset_stats(admin).map_err(|e| format!("CONFIG RESETSTAT: {e}"))?;
        let started = Instant::now();
        let (rps, p50_ms, p99_ms) = redis_benchmark(port, &sha, concurrency, pipeline, n)?;
        let took = started.elapsed().as_secs_f64();
        let b = Baseline {
            name: "redis-benchmark EVALSHA",
            concurrency,
            pipeline,
            cycles_per_sec: rps,
            p50_us: Some(p50_ms * 1_000.0),
            p99_us: Some(p99_ms * 1_000.0),
            evalsha: cmdstat(admin, "evalsha"),
            detail: format!("{n} calls in {took:.1} s"),
        };
        println!(
            "  redis-benchmark EVALSHA c={concurrency:<2} P={pipeline}: {rps:>9.0} cycles/s ({})",
            b.detail
        );
        out.push(b);
    }
    Ok(out)
}

/// One `redis-benchmark` run: (rps, p50 ms, p99 ms) from its CSV output.
fn redis_benchmark(
    port: u16,
    sha: &str,
    concurrency: usize,
    pipeline: usize,
    n: usize,
) -> Result<(f64, f64, f64), String> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &concurrency.to_string()])
        .args(["-P", &pipeline.to_string()])
        .args(["-n", &n.to_string()])
        .args(["-r", &BASELINE_FIELDS.to_string()])
        .arg("--csv")
        .args([
            "EVALSHA",
            sha,
            "2",
            "bench-a:{a}:count",
            "bench-a:{a}:leases",
        ])
        .args(["p:__rand_int__", &MAX_CONCURRENCY.to_string()])
        .args(["l:__rand_int__", "300000"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let mut lines = stdout.lines().filter(|l| l.starts_with('"'));
    let header: Vec<String> = lines.next().map(csv_fields).unwrap_or_default();
    let row: Vec<String> = lines
        .next()
        .map(csv_fields)
        .ok_or_else(|| format!("no result row in redis-benchmark's output: {stdout:?}"))?;
    let column = |name: &str| -> Result<f64, String> {
        let i = header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("no {name} column in {header:?}"))?;
        row.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad {name} in {row:?}"))
    };
    Ok((
        column("rps")?,
        column("p50_latency_ms")?,
        column("p99_latency_ms")?,
    ))
}

/// The fields of one line of redis-benchmark's CSV (quoted, no inner quotes).
fn csv_fields(line: &str) -> Vec<String> {
    line.split("\",\"")
        .map(|f| f.trim().trim_matches('"').to_string())
        .collect()
}

// ---------------------------------------------------------------- baseline B

fn baseline_semaphore(
    admin: &mut redis::Connection,
    port: u16,
    timing: Timing,
) -> Result<Vec<Baseline>, String> {
    let dir = prepare_peer()?;
    let script = dir.join("semaphore.js");
    let mut out = Vec::new();
    for concurrency in [1usize, 64] {
        reset_stats(admin).map_err(|e| format!("CONFIG RESETSTAT: {e}"))?;
        let mut cmd = Command::new("node");
        cmd.arg(&script)
            .args(["--port", &port.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--warmup", &timing.warmup.as_secs_f64().to_string()])
            .args(["--secs", &timing.secs.as_secs_f64().to_string()])
            .args(["--limit", &SEMAPHORE_LIMIT.to_string()])
            .current_dir(&dir);
        let limit = timing.warmup + timing.secs + Duration::from_secs(30);
        let (stdout, _) = run_bounded(cmd, limit, "node semaphore.js")?;
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .ok_or_else(|| format!("no JSON line in the node script's output: {stdout:?}"))?;
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("bad JSON from node: {e}: {line}"))?;
        let cps = v["cycles_per_sec"]
            .as_f64()
            .ok_or_else(|| format!("no cycles_per_sec in {line}"))?;
        let b = Baseline {
            name: "redis-semaphore",
            concurrency,
            pipeline: 1,
            cycles_per_sec: cps,
            p50_us: v["p50_us"].as_f64(),
            p99_us: v["p99_us"].as_f64(),
            evalsha: cmdstat(admin, "evalsha"),
            detail: format!("{} cycles", v["cycles"]),
        };
        println!(
            "  redis-semaphore c={concurrency:<2}: {cps:>9.0} cycles/s ({})",
            b.detail
        );
        out.push(b);
    }
    Ok(out)
}

/// Copies `benches/peer/` into `target/peer/` and installs its pinned
/// packages there with npm. Returns the directory.
fn prepare_peer() -> Result<PathBuf, String> {
    for tool in ["node", "npm"] {
        match Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("`{tool} --version` exited with {}", o.status)),
            Err(e) => return Err(format!("{tool} is not on PATH ({e})")),
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer");
    let dir = target_dir().join("peer");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for file in ["package.json", "semaphore.js"] {
        std::fs::copy(src.join(file), dir.join(file))
            .map_err(|e| format!("cannot copy benches/peer/{file}: {e}"))?;
    }
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-audit", "--no-fund", "--no-package-lock"])
        .current_dir(&dir);
    let started = Instant::now();
    run_bounded(npm, Duration::from_secs(120), "npm install")?;
    if !dir
        .join("node_modules/redis-semaphore/package.json")
        .exists()
    {
        return Err("npm install left no node_modules/redis-semaphore".into());
    }
    println!(
        "  npm install in {}: {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(dir)
}

/// Runs a command with a time limit; its stdout and stderr, or why not.
fn run_bounded(mut cmd: Command, limit: Duration, what: &str) -> Result<(String, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let mut pipe_out = child.stdout.take().expect("piped stdout");
    let mut pipe_err = child.stderr.take().expect("piped stderr");
    let read_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe_out.read_to_string(&mut s);
        s
    });
    let read_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe_err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("{what} took over {} s; stopped", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("waiting for {what}: {e}")),
        }
    };
    let stdout = read_out.join().unwrap_or_default();
    let stderr = read_err.join().unwrap_or_default();
    let status = status?;
    if !status.success() {
        let tail: String = stderr
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(format!("{what} exited with {status}: {tail}"));
    }
    Ok((stdout, stderr))
}

// ---------------------------------------------------------------- cost per call

#[derive(Debug)]
struct Cost {
    size: usize,
    filter: &'static str,
    acquire: Option<f64>,
    release: Option<f64>,
}

/// Redis's time per acquire and per release script call, apart: `COST_LEASES`
/// acquires after one `CONFIG RESETSTAT`, then their releases after another.
fn script_cost(url: &str, admin: &mut redis::Connection) -> Result<Vec<Cost>, BoxError> {
    let rt = Flavor::CurrentThread.runtime();
    let m = manager(url)?;
    let mut out = Vec::new();
    for size in sizes() {
        for filter in ["unfiltered", "country"] {
            let case = Case {
                size,
                filter,
                flavor: Flavor::CurrentThread,
                concurrency: 1,
            };
            let pool = pool_name(size);
            let options = case.options();
            // Warm the consumer cache and the script cache outside the counts.
            rt.block_on(async {
                let lease = m.acquire_proxy(&pool, options.clone()).await?;
                if let Some(l) = lease {
                    m.release_proxy(&l).await?;
                }
                Ok::<_, lighthouse_lease::Error>(())
            })?;
            reset_stats(admin)?;
            let leases: Vec<Lease> = rt.block_on(async {
                let mut v = Vec::with_capacity(COST_LEASES);
                for _ in 0..COST_LEASES {
                    match m.acquire_proxy(&pool, options.clone()).await? {
                        Some(l) => v.push(l),
                        None => break,
                    }
                }
                Ok::<_, lighthouse_lease::Error>(v)
            })?;
            let acquire = cmdstat(admin, "evalsha").map(|s| s.usec_per_call);
            reset_stats(admin)?;
            rt.block_on(async {
                for l in &leases {
                    m.release_proxy(l).await?;
                }
                Ok::<_, lighthouse_lease::Error>(())
            })?;
            let release = cmdstat(admin, "evalsha").map(|s| s.usec_per_call);
            if leases.len() < COST_LEASES {
                println!(
                    "  note: only {} of {COST_LEASES} cost-step leases were free in {}",
                    leases.len(),
                    case.name()
                );
            }
            out.push(Cost {
                size,
                filter,
                acquire,
                release,
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- report

fn baseline_for<'a>(
    baselines: &'a [Baseline],
    name: &str,
    concurrency: usize,
) -> Option<&'a Baseline> {
    baselines
        .iter()
        .find(|b| b.name == name && b.concurrency == concurrency && b.pipeline == 1)
}

fn ratio(ours: f64, base: Option<&Baseline>) -> Option<f64> {
    base.filter(|b| b.cycles_per_sec > 0.0)
        .map(|b| ours / b.cycles_per_sec)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn print_table(
    results: &[Summary],
    baselines: &[Baseline],
    cost: &[Cost],
    skipped: &[String],
    rounds: usize,
) {
    println!();
    println!("acquire→release cycles/s, median of {rounds} round(s) (one cycle = acquire_proxy + release_proxy; * = the default c=1 runtime)");
    println!("ratios are taken within each round against that round's baseline, then the median (and the range, for redis-semaphore)");
    println!(
        "{:<18} {:<8} {:>3} {:>10} {:>9} {:>9} {:>10} {:>8} {:>10} {:>11} {:>11}",
        "ours",
        "runtime",
        "c",
        "cycles/s",
        "p50 us",
        "p99 us",
        "evalsha us",
        "redis %",
        "/ EVALSHA",
        "/ semaphore",
        "range"
    );
    for r in results {
        let mark = if r.case.concurrency == 1 && r.case.flavor == DEFAULT_FLAVOR {
            "*"
        } else {
            ""
        };
        let failed = match (&r.error, r.exhausted) {
            (Some(e), _) => format!("  FAILED: {e}"),
            (None, 0) => String::new(),
            (None, x) => format!("  ({x} acquires found no proxy)"),
        };
        let range = match (r.vs_semaphore_min, r.vs_semaphore_max) {
            (Some(a), Some(b)) => format!("{a:.2}–{b:.2}"),
            _ => "-".to_string(),
        };
        println!(
            "{:<18} {:<8} {:>3} {:>10.0} {:>9.1} {:>9.1} {:>10} {:>8} {:>10} {:>11} {:>11}{failed}",
            r.case.name(),
            format!("{}{mark}", r.case.flavor.label()),
            r.case.concurrency,
            r.cycles_per_sec,
            r.p50_us,
            r.p99_us,
            opt(r.evalsha_us, 2),
            opt(r.redis_cpu_pct, 0),
            opt(r.vs_evalsha, 2),
            opt(r.vs_semaphore, 2),
            range,
        );
    }
    println!();
    println!(
        "{:<26} {:>3} {:>3} {:>10} {:>9} {:>9} {:>10}  notes",
        "baseline", "c", "P", "cycles/s", "p50 us", "p99 us", "evalsha us"
    );
    for b in baselines {
        println!(
            "{:<26} {:>3} {:>3} {:>10.0} {:>9} {:>9} {:>10}  {}",
            b.name,
            b.concurrency,
            b.pipeline,
            b.cycles_per_sec,
            opt(b.p50_us, 1),
            opt(b.p99_us, 1),
            opt(b.evalsha.map(|s| s.usec_per_call), 2),
            b.detail
        );
    }
    for line in skipped {
        println!("{line}");
    }
    println!();
    println!("server-side cost of our scripts (INFO commandstats usec_per_call for evalsha, {COST_LEASES} calls each)");
    println!(
        "{:<18} {:>12} {:>12}",
        "pool / filter", "acquire us", "release us"
    );
    for c in cost {
        println!(
            "{:<18} {:>12} {:>12}",
            format!("{} {}", size_label(c.size), c.filter),
            opt(c.acquire, 2),
            opt(c.release, 2)
        );
    }
    println!();
    println!("evalsha us: Redis's time per script call (acquire and release averaged); redis %: redis-server CPU over the case's wall time.");
    println!("Baseline A does acquire+release in ONE call (one round trip per cycle); ours and redis-semaphore take two.");
}

fn case_json(r: &CaseResult, baselines: &[Baseline]) -> Value {
    json!({
        "pool": pool_name(r.case.size),
        "proxies": r.case.size,
        "filter": r.case.filter,
        "runtime": r.case.flavor.label(),
        "default": r.case.concurrency > 1 || r.case.flavor == DEFAULT_FLAVOR,
        "concurrency": r.case.concurrency,
        "cycles": r.cycles,
        "cycles_per_sec": r.cycles_per_sec,
        "p50_us": r.p50_us,
        "p99_us": r.p99_us,
        "exhausted": r.exhausted,
        "error": r.error,
        "evalsha_calls": r.evalsha.map(|s| s.calls),
        "evalsha_usec_per_call": r.evalsha.map(|s| s.usec_per_call),
        "redis_cpu_pct": r.redis_cpu_pct,
        "ratio_vs_redis_benchmark_evalsha": ratio(
            r.cycles_per_sec,
            baseline_for(baselines, "redis-benchmark EVALSHA", r.case.concurrency),
        ),
        "ratio_vs_redis_semaphore": ratio(
            r.cycles_per_sec,
            baseline_for(baselines, "redis-semaphore", r.case.concurrency),
        ),
    })
}

fn baseline_json(b: &Baseline) -> Value {
    json!({
        "name": b.name,
        "concurrency": b.concurrency,
        "pipeline": b.pipeline,
        "cycles_per_sec": b.cycles_per_sec,
        "p50_us": b.p50_us,
        "p99_us": b.p99_us,
        "evalsha_calls": b.evalsha.map(|s| s.calls),
        "evalsha_usec_per_call": b.evalsha.map(|s| s.usec_per_call),
        "detail": b.detail,
    })
}
