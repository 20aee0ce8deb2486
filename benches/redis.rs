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
//! tens of percent). `LIGHTHOUSE_BENCH_SIZES=1000`,
//! `LIGHTHOUSE_BENCH_KINDS=slow-link` (or `cycle`, `rotate`: the cases of
//! those kinds only) and `LIGHTHOUSE_BENCH_BASELINES=0` narrow a quick tuning
//! run. `CONFIG RESETSTAT`
//! before each case and `INFO commandstats` after it give Redis's own time per
//! script call (acquire and release averaged); a last step splits it into
//! acquire, release and rotate. Results also go to `target/bench-redis.json`.
//! The last lines give the load average and the share of the machine's CPU time
//! the hypervisor took during the run (`/proc/stat` steal): above 5%, cycles/s
//! of ours and of the baselines alike are not comparable with a quiet run's.
//!
//! Ours uses Redis Functions, so its per-call time is `FCALL`'s (`cmdstat_fcall`);
//! the baselines' is `EVALSHA`'s.
//!
//! Besides the acquire→release cycles (case `cycle`):
//!
//! - **rotate**: each worker acquires once, then loops on `rotate_proxy` (release
//!   and acquire in ONE script call, one round trip); a cycle is a rotate that
//!   released the old lease and got a new one. At c=1 (multi-thread runtime) and
//!   c=64 on every pool and filter; its ratios are against the same baselines'
//!   acquire→release cycles.
//! - **slow-link**: a delaying TCP forwarder in this process (its own thread,
//!   a current-thread tokio runtime) sits between the clients and the
//!   `redis-server`, holding each chunk half of `LIGHTHOUSE_BENCH_RTT_MS`
//!   (default 2; 0 turns the run off) in each direction. Ours (1k pool,
//!   unfiltered, c=64, or `LIGHTHOUSE_BENCH_SLOW_C`) and redis-semaphore (the
//!   same c) both go through it, in the same round. Chunks are never forwarded early; tokio's timer (1 ms ticks,
//!   rounded up) is too coarse for this, so the tasks wait on a small clock
//!   thread instead. The PING round trip measured through the forwarder, and
//!   the forwarder's CPU, are printed and reported next to the set RTT. A
//!   summary after the table sets ours beside the semaphore through the
//!   forwarder: cycles/s, and the acquire's own p50/p99 (every cycle case
//!   times its acquire apart, and `semaphore.js` its `acquire()`).
//! - **steady run** (after the timed cases, on the 1k pool): released records
//!   left by earlier steps are deleted, then `LIGHTHOUSE_BENCH_STEADY` (default
//!   20000; 0 turns it off) acquire→release cycles with 300 s leases at c=64;
//!   `INFO memory` `used_memory` before and after gives the bytes left per
//!   cycle, and a `SCAN` of the pool's lease records (`<ns>:{<pool>}:<token>`)
//!   counts what is left and reads every record's `PTTL` (a released record must
//!   keep only the record grace, 60 s by default, not the lease's 300 s + 60 s).
//!
//! The memory per proxy (and per standing lease) is measured while loading
//! each pool, with the pool's declared indexes (the default: the country
//! attribute and the load order), which the output states. It counts Redis's
//! data: `MEMORY STATS` `total.allocated` (= `used_memory`) without client
//! buffers (a query buffer keeps the size of the last big `add_proxies` call
//! for seconds) and script caches, read once the key tables have settled; the
//! raw `used_memory` deltas are printed beside it.
//!
//! Under `cargo test --benches` (no `--bench` argument) it only says so and exits.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lighthouse_lease::pool::PoolIndexes;
use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::storage::DEFAULT_RECORD_GRACE;
use lighthouse_lease::{
    AcquireOptions, AdminStorage, ConsumerName, Lease, LeaseStorage, Proxy, ProxyFilters,
    ProxyManager, ProxyPool, ReleaseOutcome,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
/// The pool of the slow-link run and of the steady run.
const SMALL_POOL: usize = 1_000;
/// Concurrency of the slow-link run and of the steady run.
const WIDE: usize = 64;

/// Concurrency of the slow-link run: `LIGHTHOUSE_BENCH_SLOW_C`, default [`WIDE`].
fn slow_link_concurrency() -> usize {
    std::env::var("LIGHTHOUSE_BENCH_SLOW_C")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|c: &usize| *c >= 1)
        .unwrap_or(WIDE)
}
/// Lease length of the steady run.
const STEADY_LEASE: Duration = Duration::from_secs(300);
/// PINGs timed to measure the round trip, through the forwarder and direct.
const PING_SAMPLES: usize = 200;
/// The baselines' names (ratios look them up by name).
const EVALSHA_BASELINE: &str = "redis-benchmark EVALSHA";
const SEMAPHORE_BASELINE: &str = "redis-semaphore";
const SEMAPHORE_SLOW_BASELINE: &str = "redis-semaphore slow-link";

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

/// `LIGHTHOUSE_BENCH_RTT_MS` (default 2): the slow link's round trip; zero
/// turns the slow-link run off.
fn env_rtt() -> Duration {
    env_secs("LIGHTHOUSE_BENCH_RTT_MS", 2.0) / 1_000
}

/// `LIGHTHOUSE_BENCH_STEADY` (default 20000): the steady run's cycles; zero
/// turns it off.
/// `LIGHTHOUSE_BENCH_KINDS` (comma-separated: `cycle`, `rotate`,
/// `slow-link`): only the cases of those kinds run (a quick tuning run); unset,
/// all of them.
fn env_kinds() -> Option<Vec<String>> {
    std::env::var("LIGHTHOUSE_BENCH_KINDS")
        .ok()
        .map(|v| v.split(',').map(|k| k.trim().to_string()).collect())
}

fn env_steady() -> usize {
    std::env::var("LIGHTHOUSE_BENCH_STEADY")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(20_000)
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

/// What one of our cases times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaseKind {
    /// `acquire_proxy` then `release_proxy`: two round trips.
    Cycle,
    /// `rotate_proxy` of the lease in hand: one round trip.
    Rotate,
    /// [`CaseKind::Cycle`] through the delaying forwarder.
    SlowLink,
}

impl CaseKind {
    fn label(self) -> &'static str {
        match self {
            CaseKind::Cycle => "cycle",
            CaseKind::Rotate => "rotate",
            CaseKind::SlowLink => "slow-link",
        }
    }
    /// The case kind in the JSON report.
    fn json(self) -> &'static str {
        match self {
            CaseKind::Cycle => "acquire_release",
            CaseKind::Rotate => "rotate",
            CaseKind::SlowLink => "acquire_release_slow_link",
        }
    }
    /// The baselines this kind's ratios are taken against: (redis-benchmark,
    /// redis-semaphore). Rotate is held against the same acquire→release
    /// cycles; the slow link only against redis-semaphore through the forwarder.
    fn baselines(self) -> (Option<&'static str>, &'static str) {
        match self {
            CaseKind::Cycle | CaseKind::Rotate => (Some(EVALSHA_BASELINE), SEMAPHORE_BASELINE),
            CaseKind::SlowLink => (None, SEMAPHORE_SLOW_BASELINE),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    size: usize,
    filter: &'static str,
    flavor: Flavor,
    concurrency: usize,
    kind: CaseKind,
}

impl Case {
    fn options(&self) -> AcquireOptions {
        let options = AcquireOptions::new().consumer("worker-1");
        match self.filter {
            "country" => options.filters(ProxyFilters::new().country("CL")),
            // The fleet features on (issue "Beyond every peer"): every acquire
            // names a site; with "rate+site" on the rate-limited pool too.
            SITE_CASE | RATE_SITE_CASE => options.site("shop.example"),
            _ => options,
        }
    }
    /// The pool the case runs on: the size's pool, or its rate-limited twin.
    fn pool(&self) -> String {
        if self.filter == RATE_SITE_CASE {
            rate_pool_name(self.size)
        } else {
            pool_name(self.size)
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

/// The case whose acquires name a site (on the plain pool).
const SITE_CASE: &str = "site";
/// The case whose acquires name a site, on a pool with a rate limit of one
/// lease per proxy per ms (so the limit itself never holds the load back).
const RATE_SITE_CASE: &str = "rate+site";

/// The rate-limited twin of pool `n` (the same proxies; only [`SMALL_POOL`]).
fn rate_pool_name(n: usize) -> String {
    format!("bench-{}-rate", size_label(n))
}

/// Makes the rate-limited twin of the [`SMALL_POOL`]-proxy pool: its proxies, a
/// rest of 1 ms after each lease, no standing leases.
async fn setup_rate_pool(url: &str, n: usize) -> Result<(), BoxError> {
    let m = manager(url)?;
    let pool = ProxyPool::new(rate_pool_name(n))?.with_rate_limit(
        lighthouse_lease::RateLimit::new(1_000, Duration::from_secs(1))?,
    );
    let pool = m.storage().create_pool(pool).await?;
    for chunk in proxies(pool.id, n)?.chunks(LOAD_CHUNK) {
        m.storage().add_proxies(chunk.to_vec()).await?;
    }
    Ok(())
}

#[derive(Debug, Default)]
struct WorkerOut {
    cycles: u64,
    all_cycles: u64,
    exhausted: u64,
    latencies_ns: Vec<u64>,
    /// The acquires' own latencies (cycle cases; not rotate).
    acquire_ns: Vec<u64>,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct CaseResult {
    case: Case,
    cycles: u64,
    cycles_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// Latency of `acquire_proxy` alone (cycle cases; `None` for rotate).
    acquire_p50_us: Option<f64>,
    acquire_p99_us: Option<f64>,
    exhausted: u64,
    error: Option<String>,
    /// Redis's `FCALL` stats over the case (our operations are Redis Functions).
    script: Option<CmdStat>,
    redis_cpu_pct: Option<f64>,
    /// The forwarder's CPU (both its threads) over the case, % of a core (slow-link only).
    forwarder_cpu_pct: Option<f64>,
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
    /// Latency of the acquire alone (redis-semaphore only).
    acquire_p50_us: Option<f64>,
    acquire_p99_us: Option<f64>,
    evalsha: Option<CmdStat>,
    /// The forwarder's CPU (both its threads) over the run, % of a core (slow-link only).
    forwarder_cpu_pct: Option<f64>,
    detail: String,
}

/// What loading one pool measured.
#[derive(Debug, Clone)]
struct PoolSetup {
    size: usize,
    held: u64,
    loaded: Duration,
    /// Bytes of Redis's data ([`MemStats::data`]) per proxy loaded, and per
    /// standing lease taken.
    per_proxy: f64,
    per_lease: f64,
    /// The same from raw `used_memory` (client buffers and all).
    per_proxy_raw: f64,
    per_lease_raw: f64,
    indexes: PoolIndexes,
}

/// The pool's declared indexes in words: "country attribute + load order".
fn indexes_label(ix: &PoolIndexes) -> String {
    let words = |text: String, one: &str, many: &str| -> String {
        let n = text.split_whitespace().count();
        match n {
            0 => format!("no {many}"),
            1 => format!("{text} {one}"),
            _ => format!(
                "{} {many}",
                text.split_whitespace().collect::<Vec<_>>().join(", ")
            ),
        }
    };
    format!(
        "{} + {}",
        words(ix.attributes_text(), "attribute", "attributes"),
        words(ix.orders_text(), "order", "orders")
    )
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
    let cpu_start = cpu_times();
    let mut admin = redis::Client::open(url.as_str())?.get_connection()?;
    let version = info_field(&mut admin, "server", "redis_version").unwrap_or_default();
    println!(
        "redis bench: private redis-server {version} on 127.0.0.1:{port}; {} s per case after a {} s warm-up; load average {loadavg_start}",
        timing.secs.as_secs_f64(),
        timing.warmup.as_secs_f64()
    );

    // ------------------------------------------------------------ setup
    let setup_rt = Flavor::MultiThread.runtime();
    let mut pools = Vec::new();
    for n in sizes() {
        let started = Instant::now();
        let p = setup_rt.block_on(setup_pool(&url, n))?;
        println!(
            "  pool {}: {n} proxies loaded in {:.1} s, then {} standing leases taken; {:.1} s in all",
            pool_name(n),
            p.loaded.as_secs_f64(),
            p.held,
            started.elapsed().as_secs_f64()
        );
        println!(
            "  memory of pool {} (declared indexes: {}): {:.0} B per proxy, {:.0} B per active lease (raw used_memory deltas: {:.0} B, {:.0} B)",
            pool_name(n),
            indexes_label(&p.indexes),
            p.per_proxy,
            p.per_lease,
            p.per_proxy_raw,
            p.per_lease_raw
        );
        pools.push(p);
    }
    drop(setup_rt);
    let small_loaded = sizes().contains(&SMALL_POOL);
    let mut skipped: Vec<String> = Vec::new();

    // ------------------------------------------------------------ slow link
    let rtt = env_rtt();
    let slow = if rtt.is_zero() {
        note_skip(
            &mut skipped,
            "slow-link run skipped: LIGHTHOUSE_BENCH_RTT_MS=0".into(),
        );
        None
    } else if !small_loaded {
        note_skip(
            &mut skipped,
            format!(
                "slow-link run skipped: it runs on pool {}, which LIGHTHOUSE_BENCH_SIZES leaves out",
                pool_name(SMALL_POOL)
            ),
        );
        None
    } else {
        match SlowLink::start(port, rtt) {
            Ok(s) => {
                println!(
                    "  slow link: forwarder 127.0.0.1:{} → redis, RTT set {:.2} ms ({:.2} ms held each way); PING round trip median {} us through it, {} us direct",
                    s.port,
                    s.rtt.as_secs_f64() * 1e3,
                    s.rtt.as_secs_f64() * 1e3 / 2.0,
                    opt(s.ping_us, 0),
                    opt(s.direct_ping_us, 0)
                );
                Some(s)
            }
            Err(e) => {
                note_skip(
                    &mut skipped,
                    format!("slow-link run skipped: forwarder: {e}"),
                );
                None
            }
        }
    };

    // ------------------------------------------------------------ ours
    let mut cases = Vec::new();
    for n in sizes() {
        for filter in ["unfiltered", "country"] {
            for (flavor, concurrency, kind) in [
                (Flavor::CurrentThread, 1, CaseKind::Cycle),
                (Flavor::MultiThread, 1, CaseKind::Cycle),
                (Flavor::MultiThread, WIDE, CaseKind::Cycle),
                (Flavor::MultiThread, 1, CaseKind::Rotate),
                (Flavor::MultiThread, WIDE, CaseKind::Rotate),
            ] {
                cases.push(Case {
                    size: n,
                    filter,
                    flavor,
                    concurrency,
                    kind,
                });
            }
        }
    }
    if small_loaded {
        // The fleet features, beside the plain cases in the same rounds.
        Flavor::MultiThread
            .runtime()
            .block_on(setup_rate_pool(&url, SMALL_POOL))?;
        for filter in [SITE_CASE, RATE_SITE_CASE] {
            for concurrency in [1, WIDE] {
                cases.push(Case {
                    size: SMALL_POOL,
                    filter,
                    flavor: Flavor::MultiThread,
                    concurrency,
                    kind: CaseKind::Cycle,
                });
            }
        }
    }
    if slow.is_some() {
        cases.push(Case {
            size: SMALL_POOL,
            filter: "unfiltered",
            flavor: Flavor::MultiThread,
            concurrency: slow_link_concurrency(),
            kind: CaseKind::SlowLink,
        });
    }
    if let Some(kinds) = env_kinds() {
        cases.retain(|c| kinds.iter().any(|k| k == c.kind.label()));
    }
    // ------------------------------------------------------------ rounds
    // Each round runs every case of ours and both baselines, the order swapped
    // every other round; ratios are taken within a round, then the median over
    // the rounds is reported (this machine is shared: single runs drift).
    let rounds = env_rounds();
    let mut all: Vec<(Vec<CaseResult>, Vec<Baseline>)> = Vec::new();
    for round in 0..rounds {
        println!("round {}/{rounds}", round + 1);
        let mut baselines = Vec::new();
        if round % 2 == 1 {
            baselines = run_baselines(&mut admin, port, slow.as_ref(), timing, &mut skipped);
        }
        let mut results = Vec::new();
        for case in &cases {
            let r = run_case(&url, &mut admin, case.clone(), timing, slow.as_ref())?;
            println!(
                "  ours {:<16} {:<9} {:<7} c={:<2} {:>9.0} cycles/s  p50 {:>7.1} us  p99 {:>7.1} us{}{}{}",
                r.case.name(),
                r.case.kind.label(),
                r.case.flavor.label(),
                r.case.concurrency,
                r.cycles_per_sec,
                r.p50_us,
                r.p99_us,
                acquire_latency(r.acquire_p50_us, r.acquire_p99_us),
                r.forwarder_cpu_pct
                    .map(|c| format!("  forwarder CPU {c:.0}%"))
                    .unwrap_or_default(),
                r.error
                    .as_deref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
            results.push(r);
        }
        if round % 2 == 0 {
            baselines = run_baselines(&mut admin, port, slow.as_ref(), timing, &mut skipped);
        }
        all.push((results, baselines));
    }
    let summaries: Vec<Summary> = (0..cases.len()).map(|i| summarize(&all, i)).collect();
    let baselines = summarize_baselines(&all);

    // ------------------------------------------------------------ cost per call
    let cost = script_cost(&url, &mut admin)?;

    // ------------------------------------------------------------ steady run
    let steady_n = env_steady();
    let steady = if steady_n == 0 {
        note_skip(
            &mut skipped,
            "steady run skipped: LIGHTHOUSE_BENCH_STEADY=0".into(),
        );
        None
    } else if !small_loaded {
        note_skip(
            &mut skipped,
            format!(
                "steady run skipped: it runs on pool {}, which LIGHTHOUSE_BENCH_SIZES leaves out",
                pool_name(SMALL_POOL)
            ),
        );
        None
    } else {
        Some(steady_run(&url, &mut admin, steady_n)?)
    };

    let loadavg_end = loadavg();
    let steal = steal_share(cpu_start, cpu_times());
    print_table(&summaries, &baselines, &cost, &skipped, rounds);
    print_extras(&pools, slow.as_ref(), steady.as_ref());
    if let Some(s) = &slow {
        print_slow_link(s, &summaries, &baselines);
    }
    println!("load average at start {loadavg_start}, at end {loadavg_end}");
    match steal {
        Some(share) => println!(
            "CPU stolen by the hypervisor during the run: {:.0}% of the machine's time{}",
            share * 100.0,
            if share > 0.05 {
                " (more than 5%: cycles/s, ours and the baselines', are not comparable with a quiet run's; read the ratios, or the instruction counts of benches/redis_instructions.sh)"
            } else {
                ""
            }
        ),
        None => println!("CPU steal: unknown (no /proc/stat)"),
    }

    let report = json!({
        "bench": "benches/redis.rs",
        "redis_version": version,
        "warmup_s": timing.warmup.as_secs_f64(),
        "secs": timing.secs.as_secs_f64(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "cpu_steal_share": steal,
        "default_c1_runtime": DEFAULT_FLAVOR.label(),
        "rounds": rounds,
        "pools": pools.iter().map(|p| json!({
            "pool": pool_name(p.size),
            "proxies": p.size,
            "standing_leases": p.held,
            "load_s": p.loaded.as_secs_f64(),
            "indexed_attributes": p.indexes.attributes_text(),
            "index_orders": p.indexes.orders_text(),
            "memory_bytes_per_proxy": p.per_proxy,
            "memory_bytes_per_active_lease": p.per_lease,
            "memory_measure": "MEMORY STATS total.allocated - clients - lua/functions caches, after key tables settle",
            "used_memory_bytes_per_proxy_raw": p.per_proxy_raw,
            "used_memory_bytes_per_active_lease_raw": p.per_lease_raw,
        })).collect::<Vec<_>>(),
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
            "rotate_usec_per_call": c.rotate,
        })).collect::<Vec<_>>(),
        "slow_link": slow.as_ref().map(|s| json!({
            "rtt_ms_set": s.rtt.as_secs_f64() * 1e3,
            "delay_each_way_ms": s.rtt.as_secs_f64() * 1e3 / 2.0,
            "ping_rtt_us_through_forwarder_median": s.ping_us,
            "ping_rtt_us_direct_median": s.direct_ping_us,
            "pool": pool_name(SMALL_POOL),
            "filter": "unfiltered",
            "concurrency": slow_link_concurrency(),
            "baseline": SEMAPHORE_SLOW_BASELINE,
        })),
        "steady": steady.as_ref().map(steady_json),
        "skipped": skipped,
    });
    let out = target_dir().join("bench-redis.json");
    std::fs::create_dir_all(target_dir())?;
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("results written to {}", out.display());
    drop(slow); // stops the forwarder
    Ok(())
}

/// Prints a line saying what was skipped and why, once.
fn note_skip(skipped: &mut Vec<String>, line: String) {
    if !skipped.contains(&line) {
        println!("{line}");
        skipped.push(line);
    }
}

/// `LIGHTHOUSE_BENCH_ROUNDS` (default 3, at least 1).
fn env_rounds() -> usize {
    std::env::var("LIGHTHOUSE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(3)
        .max(1)
}

/// Both baselines, once each, then redis-semaphore through the slow link when
/// there is one (a skipped one is noted once in `skipped`).
fn run_baselines(
    admin: &mut redis::Connection,
    port: u16,
    slow: Option<&SlowLink>,
    timing: Timing,
    skipped: &mut Vec<String>,
) -> Vec<Baseline> {
    let mut baselines = Vec::new();
    let runs: [(&str, BaselineRun); 2] = [
        (EVALSHA_BASELINE, baseline_redis_benchmark),
        (SEMAPHORE_BASELINE, baseline_semaphore),
    ];
    let mut outcomes: Vec<(&str, Result<Vec<Baseline>, String>)> = Vec::new();
    for (name, run) in runs {
        outcomes.push((
            name,
            if baselines_wanted() {
                run(admin, port, timing)
            } else {
                Err("LIGHTHOUSE_BENCH_BASELINES=0".to_string())
            },
        ));
    }
    if let Some(slow) = slow {
        outcomes.push((
            SEMAPHORE_SLOW_BASELINE,
            if baselines_wanted() {
                baseline_semaphore_slow(admin, slow, timing)
            } else {
                Err("LIGHTHOUSE_BENCH_BASELINES=0".to_string())
            },
        ));
    }
    for (name, outcome) in outcomes {
        match outcome {
            Ok(mut b) => baselines.append(&mut b),
            Err(why) => note_skip(skipped, format!("baseline skipped: {name}: {why}")),
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
    acquire_p50_us: Option<f64>,
    acquire_p99_us: Option<f64>,
    script_us: Option<f64>,
    redis_cpu_pct: Option<f64>,
    forwarder_cpu_pct: Option<f64>,
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
    let vs = |name: Option<&str>| -> Vec<f64> {
        rs.iter()
            .filter_map(|(r, b)| {
                ratio(r.cycles_per_sec, baseline_for(b, name?, r.case.concurrency))
            })
            .collect()
    };
    let (evalsha_name, semaphore_name) = rs[0].0.case.kind.baselines();
    let sem = vs(Some(semaphore_name));
    Summary {
        case: rs[0].0.case.clone(),
        cycles_per_sec: pick(&|r| Some(r.cycles_per_sec)).unwrap_or(0.0),
        p50_us: pick(&|r| Some(r.p50_us)).unwrap_or(0.0),
        p99_us: pick(&|r| Some(r.p99_us)).unwrap_or(0.0),
        acquire_p50_us: pick(&|r| r.acquire_p50_us),
        acquire_p99_us: pick(&|r| r.acquire_p99_us),
        script_us: pick(&|r| r.script.map(|s| s.usec_per_call)),
        redis_cpu_pct: pick(&|r| r.redis_cpu_pct),
        forwarder_cpu_pct: pick(&|r| r.forwarder_cpu_pct),
        vs_evalsha: median(vs(evalsha_name)),
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
            acquire_p50_us: pick(&|x| x.acquire_p50_us),
            acquire_p99_us: pick(&|x| x.acquire_p99_us),
            evalsha: evalsha_us.map(|u| CmdStat {
                calls: same.iter().filter_map(|x| x.evalsha.map(|s| s.calls)).sum(),
                usec_per_call: u,
            }),
            forwarder_cpu_pct: pick(&|x| x.forwarder_cpu_pct),
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
    let (evalsha_name, semaphore_name) = s.case.kind.baselines();
    json!({
        "kind": s.case.kind.json(),
        "pool": s.case.pool(),
        "proxies": s.case.size,
        "filter": s.case.filter,
        "runtime": s.case.flavor.label(),
        "default": s.case.concurrency > 1 || s.case.flavor == DEFAULT_FLAVOR,
        "concurrency": s.case.concurrency,
        "cycles_per_sec_median": s.cycles_per_sec,
        "cycles_per_sec_rounds": s.rounds_cycles_per_sec,
        "p50_us": s.p50_us,
        "p99_us": s.p99_us,
        "acquire_p50_us": s.acquire_p50_us,
        "acquire_p99_us": s.acquire_p99_us,
        "fcall_usec_per_call": s.script_us,
        "redis_cpu_pct": s.redis_cpu_pct,
        "forwarder_cpu_pct": s.forwarder_cpu_pct,
        "exhausted": s.exhausted,
        "error": s.error,
        "ratio_baselines": {"evalsha": evalsha_name, "semaphore": semaphore_name},
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

/// The machine's CPU time so far from `/proc/stat` (all CPUs, in ticks): the
/// total and the part the hypervisor took from this VM ("steal").
fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are in user).
    let total = fields.iter().take(8).sum();
    Some((total, *fields.get(7)?))
}

/// The share of the machine's time stolen between two [`cpu_times`] readings.
fn steal_share(start: Option<(u64, u64)>, end: Option<(u64, u64)>) -> Option<f64> {
    let ((t0, s0), (t1, s1)) = (start?, end?);
    let total = t1.checked_sub(t0).filter(|t| *t > 0)?;
    Some(s1.saturating_sub(s0) as f64 / total as f64)
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

/// Creates the pool (default indexes), loads its proxies in concurrent chunks,
/// and has one lease (2 h long) held on every other proxy. Returns the standing
/// leases, the time the proxies took to load, and the memory they and the
/// leases took.
async fn setup_pool(url: &str, n: usize) -> Result<PoolSetup, BoxError> {
    let m = manager(url)?;
    let mut mem = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    // The function library first: its cache is no part of the pool.
    m.storage().load_scripts().await?;
    let before = settled_memory_async(&mut mem).await?;
    let name = pool_name(n);
    let started = Instant::now();
    let pool = m.storage().create_pool(ProxyPool::new(&name)?).await?;
    m.storage()
        .ensure_consumer(&ConsumerName::new("worker-1")?)
        .await?;
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
    let after_proxies = settled_memory_async(&mut mem).await?;
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
    let after_leases = settled_memory_async(&mut mem).await?;
    let stats = m.storage().pool_stats(&pool.name).await?;
    if stats.total_proxies != n as u64 || stats.total_leases != (n / 2) as u64 {
        return Err(format!("pool {name} is not as set up: {stats:?}").into());
    }
    let leases = (n / 2).max(1) as f64;
    Ok(PoolSetup {
        size: n,
        held: stats.total_leases,
        loaded,
        per_proxy: (after_proxies.data() - before.data()) / n as f64,
        per_lease: (after_leases.data() - after_proxies.data()) / leases,
        per_proxy_raw: (after_proxies.total - before.total) / n as f64,
        per_lease_raw: (after_leases.total - after_proxies.total) / leases,
        indexes: pool.indexes,
    })
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
        let acquired = match m.acquire_proxy(&pool, options.clone()).await {
            Ok(Some(lease)) => {
                let acquired = t0.elapsed();
                match m.release_proxy(&lease).await {
                    Ok(ReleaseOutcome::Released) => acquired,
                    Ok(other) => {
                        out.error = Some(format!("release answered {other:?}"));
                        break;
                    }
                    Err(e) => {
                        out.error = Some(format!("release: {e}"));
                        break;
                    }
                }
            }
            Ok(None) => {
                out.exhausted += 1;
                continue;
            }
            Err(e) => {
                out.error = Some(format!("acquire: {e}"));
                break;
            }
        };
        let t1 = Instant::now();
        out.all_cycles += 1;
        // A cycle counts when it completes inside the measured window.
        if t1 >= warm_end && t1 <= end {
            out.cycles += 1;
            out.latencies_ns
                .push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
            out.acquire_ns
                .push(u64::try_from(acquired.as_nanos()).unwrap_or(u64::MAX));
        }
    }
    out
}

/// A worker of the rotate case: acquires once, then rotates the lease in hand
/// (release and acquire in one script call); a cycle is a rotate that released
/// the old lease and got a new one. Releases the last lease at the end.
async fn rotate_worker(
    m: Manager,
    pool: String,
    options: AcquireOptions,
    warm_end: Instant,
    end: Instant,
) -> WorkerOut {
    let mut out = WorkerOut::default();
    let mut held: Option<Lease> = None;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let Some(lease) = held.take() else {
            // The first lease, or a new one after a rotate that found no proxy.
            match m.acquire_proxy(&pool, options.clone()).await {
                Ok(Some(lease)) => held = Some(lease),
                Ok(None) => out.exhausted += 1,
                Err(e) => {
                    out.error = Some(format!("acquire: {e}"));
                    break;
                }
            }
            continue;
        };
        match m.rotate_proxy(&lease, options.clone()).await {
            Ok(rotation) => {
                held = rotation.next;
                if rotation.released != ReleaseOutcome::Released {
                    out.error = Some(format!("rotate released {:?}", rotation.released));
                    break;
                }
                if held.is_none() {
                    out.exhausted += 1;
                    continue;
                }
            }
            Err(e) => {
                out.error = Some(format!("rotate: {e}"));
                held = Some(lease); // whatever became of it, try to give it back
                break;
            }
        }
        let t1 = Instant::now();
        out.all_cycles += 1;
        if t1 >= warm_end && t1 <= end {
            out.cycles += 1;
            out.latencies_ns
                .push(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
        }
    }
    if let Some(lease) = held {
        match m.release_proxy(&lease).await {
            Ok(ReleaseOutcome::Released) => {}
            Ok(other) if out.error.is_none() => {
                out.error = Some(format!("last release answered {other:?}"));
            }
            Err(e) if out.error.is_none() => out.error = Some(format!("last release: {e}")),
            _ => {}
        }
    }
    out
}

async fn drive(url: String, case: Case, timing: Timing) -> Result<WorkerOut, BoxError> {
    let m = manager(&url)?;
    let pool = case.pool();
    let options = case.options();
    let start = Instant::now();
    let warm_end = start + timing.warmup;
    let end = warm_end + timing.secs;
    let mut set = JoinSet::new();
    for _ in 0..case.concurrency {
        let (m, pool, options) = (m.clone(), pool.clone(), options.clone());
        match case.kind {
            CaseKind::Cycle | CaseKind::SlowLink => {
                set.spawn(worker(m, pool, options, warm_end, end));
            }
            CaseKind::Rotate => {
                set.spawn(rotate_worker(m, pool, options, warm_end, end));
            }
        }
    }
    let mut total = WorkerOut::default();
    while let Some(done) = set.join_next().await {
        let w = done?;
        total.cycles += w.cycles;
        total.all_cycles += w.all_cycles;
        total.exhausted += w.exhausted;
        total.latencies_ns.extend(w.latencies_ns);
        total.acquire_ns.extend(w.acquire_ns);
        if total.error.is_none() {
            total.error = w.error;
        }
    }
    Ok(total)
}

/// Runs one case: a slow-link case through the forwarder (and its CPU measured),
/// any other straight to Redis.
fn run_case(
    url: &str,
    admin: &mut redis::Connection,
    case: Case,
    timing: Timing,
    slow: Option<&SlowLink>,
) -> Result<CaseResult, BoxError> {
    let slow = slow.filter(|_| case.kind == CaseKind::SlowLink);
    let url = match (case.kind, slow) {
        (CaseKind::SlowLink, Some(s)) => s.url(),
        (CaseKind::SlowLink, None) => return Err("a slow-link case without a forwarder".into()),
        _ => url.to_string(),
    };
    reset_stats(admin)?;
    let cpu0 = redis_cpu(admin);
    let fwd0 = slow.and_then(SlowLink::cpu_secs);
    let wall = Instant::now();
    let rt = case.flavor.runtime();
    let mut out = rt.block_on(drive(url, case.clone(), timing))?;
    drop(rt);
    let wall = wall.elapsed().as_secs_f64();
    let cpu = match (cpu0, redis_cpu(admin)) {
        (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall * 100.0),
        _ => None,
    };
    let forwarder_cpu_pct = match (fwd0, slow.and_then(SlowLink::cpu_secs)) {
        (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall * 100.0),
        _ => None,
    };
    out.latencies_ns.sort_unstable();
    out.acquire_ns.sort_unstable();
    let acquire = |q| (!out.acquire_ns.is_empty()).then(|| percentile_us(&out.acquire_ns, q));
    Ok(CaseResult {
        cycles: out.cycles,
        cycles_per_sec: out.cycles as f64 / timing.secs.as_secs_f64(),
        p50_us: percentile_us(&out.latencies_ns, 0.50),
        p99_us: percentile_us(&out.latencies_ns, 0.99),
        acquire_p50_us: acquire(0.50),
        acquire_p99_us: acquire(0.99),
        exhausted: out.exhausted,
        error: out.error,
        script: cmdstat(admin, "fcall"),
        redis_cpu_pct: cpu,
        forwarder_cpu_pct,
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
            name: EVALSHA_BASELINE,
            concurrency,
            pipeline,
            cycles_per_sec: rps,
            p50_us: Some(p50_ms * 1_000.0),
            p99_us: Some(p99_ms * 1_000.0),
            acquire_p50_us: None,
            acquire_p99_us: None,
            evalsha: cmdstat(admin, "evalsha"),
            forwarder_cpu_pct: None,
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
    let mut out = Vec::new();
    for concurrency in [1usize, WIDE] {
        out.push(semaphore_run(
            admin,
            SEMAPHORE_BASELINE,
            port,
            concurrency,
            timing,
            None,
        )?);
    }
    Ok(out)
}

/// redis-semaphore at c=64 through the slow link's forwarder.
fn baseline_semaphore_slow(
    admin: &mut redis::Connection,
    slow: &SlowLink,
    timing: Timing,
) -> Result<Vec<Baseline>, String> {
    Ok(vec![semaphore_run(
        admin,
        SEMAPHORE_SLOW_BASELINE,
        slow.port,
        slow_link_concurrency(),
        timing,
        Some(slow),
    )?])
}

/// One run of `node semaphore.js` against `port` (Redis, or the forwarder).
fn semaphore_run(
    admin: &mut redis::Connection,
    name: &'static str,
    port: u16,
    concurrency: usize,
    timing: Timing,
    slow: Option<&SlowLink>,
) -> Result<Baseline, String> {
    let dir = prepare_peer()?;
    let script = dir.join("semaphore.js");
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
    let fwd0 = slow.and_then(SlowLink::cpu_secs);
    let wall = Instant::now();
    let (stdout, _) = run_bounded(cmd, limit, "node semaphore.js")?;
    let wall = wall.elapsed().as_secs_f64();
    let forwarder_cpu_pct = match (fwd0, slow.and_then(SlowLink::cpu_secs)) {
        (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall * 100.0),
        _ => None,
    };
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
    let through = slow
        .map(|s| {
            format!(
                " through the forwarder (RTT set {:.2} ms)",
                s.rtt.as_secs_f64() * 1e3
            )
        })
        .unwrap_or_default();
    let b = Baseline {
        name,
        concurrency,
        pipeline: 1,
        cycles_per_sec: cps,
        p50_us: v["p50_us"].as_f64(),
        p99_us: v["p99_us"].as_f64(),
        acquire_p50_us: v["acquire_p50_us"].as_f64(),
        acquire_p99_us: v["acquire_p99_us"].as_f64(),
        evalsha: cmdstat(admin, "evalsha"),
        forwarder_cpu_pct,
        detail: format!("{} cycles{through}", v["cycles"]),
    };
    println!(
        "  {name} c={concurrency:<2}: {cps:>9.0} cycles/s ({}){}{}",
        b.detail,
        acquire_latency(b.acquire_p50_us, b.acquire_p99_us),
        forwarder_cpu_pct
            .map(|c| format!("  forwarder CPU {c:.0}%"))
            .unwrap_or_default()
    );
    Ok(b)
}

/// [`install_peer`], once per bench run (its outcome is kept).
fn prepare_peer() -> Result<PathBuf, String> {
    static PEER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PEER.get_or_init(install_peer).clone()
}

/// Copies `benches/peer/` into `target/peer/` and installs its pinned
/// packages there with npm. Returns the directory.
fn install_peer() -> Result<PathBuf, String> {
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
    rotate: Option<f64>,
}

/// Redis's time per acquire, per release and per rotate call (`FCALL`), apart:
/// `COST_LEASES` acquires after one `CONFIG RESETSTAT`, then their releases
/// after another, then `COST_LEASES` rotates of one lease after a third.
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
                kind: CaseKind::Cycle,
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
            let acquire = cmdstat(admin, "fcall").map(|s| s.usec_per_call);
            reset_stats(admin)?;
            rt.block_on(async {
                for l in &leases {
                    m.release_proxy(l).await?;
                }
                Ok::<_, lighthouse_lease::Error>(())
            })?;
            let release = cmdstat(admin, "fcall").map(|s| s.usec_per_call);
            let first = rt.block_on(m.acquire_proxy(&pool, options.clone()))?;
            reset_stats(admin)?;
            let (rotates, last) = rt.block_on(async {
                let (mut done, mut held) = (0, first);
                while done < COST_LEASES {
                    let Some(lease) = held.take() else { break };
                    let rotation = m.rotate_proxy(&lease, options.clone()).await?;
                    held = rotation.next;
                    done += 1;
                }
                Ok::<_, lighthouse_lease::Error>((done, held))
            })?;
            let rotate = cmdstat(admin, "fcall").map(|s| s.usec_per_call);
            if let Some(lease) = last {
                rt.block_on(m.release_proxy(&lease))?;
            }
            if rotates < COST_LEASES {
                println!(
                    "  note: only {rotates} of {COST_LEASES} cost-step rotates got a next lease in {}",
                    case.name()
                );
            }
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
                rotate,
            });
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- slow link

/// A delaying TCP forwarder: accepts on a free loopback port, connects each
/// client to the `redis-server`, and copies both directions, holding every
/// chunk half the RTT. Its I/O runs on its own thread, on a current-thread
/// tokio runtime (so it takes at most one core, and mostly sleeps). tokio's
/// timer has 1 ms ticks and rounds every sleep up to one (a 2 ms RTT became a
/// 4.3 ms PING), so the tasks wait on a [`Clock`] thread instead, which wakes
/// them within the kernel's timer slack (~50 us) of their instant.
#[derive(Debug)]
struct SlowLink {
    rtt: Duration,
    port: u16,
    /// The forwarder's threads (I/O, clock), to read their CPU time.
    tids: Vec<u32>,
    /// Median PING round trip through the forwarder, and straight to Redis.
    ping_us: Option<f64>,
    direct_ping_us: Option<f64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    clock: Clock,
}

impl SlowLink {
    /// Starts the forwarder in front of `127.0.0.1:<target>` and times PINGs
    /// through it.
    fn start(target: u16, rtt: Duration) -> std::io::Result<SlowLink> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let delay = rtt / 2;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let clock = Clock::start(tid_tx.clone())?;
        let theirs = clock.clone();
        let thread = std::thread::Builder::new()
            .name("slow-link".into())
            .spawn(move || {
                let _ = tid_tx.send(current_tid());
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("slow link: no tokio runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("slow link: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = accept_loop(listener, target, delay, theirs) => {}
                    }
                });
                // Dropping the runtime drops every connection's tasks.
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                clock.stop();
                return Err(e);
            }
        };
        let tids = [tid_rx.recv(), tid_rx.recv()]
            .into_iter()
            .filter_map(|t| t.ok().flatten())
            .collect();
        let mut link = SlowLink {
            rtt,
            port,
            tids,
            ping_us: None,
            direct_ping_us: None,
            stop: Some(stop),
            thread: Some(thread),
            clock,
        };
        link.ping_us = ping_median_us(port);
        link.direct_ping_us = ping_median_us(target);
        if link.ping_us.is_none() {
            return Err(std::io::Error::other("PING through the forwarder failed"));
        }
        Ok(link)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The forwarder's CPU seconds so far (user + system, both threads).
    fn cpu_secs(&self) -> Option<f64> {
        if self.tids.len() < 2 {
            return None;
        }
        self.tids.iter().map(|tid| thread_cpu_secs(*tid)).sum()
    }
}

/// A thread's CPU seconds so far (user + system), from `/proc`.
fn thread_cpu_secs(tid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // After "tid (comm) ": state is field 3; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ
}

/// A wake-up the clock owes: at `due`, fire `wake`.
#[derive(Debug)]
struct Alarm {
    due: Instant,
    seq: u64,
    wake: tokio::sync::oneshot::Sender<()>,
}

impl PartialEq for Alarm {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Alarm {}
impl PartialOrd for Alarm {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Alarm {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The forwarder's precise timer: one thread that sleeps (a futex wait with a
/// timeout) until the earliest alarm and wakes its task. Setting an alarm only
/// wakes the thread when it is earlier than the one the thread sleeps toward
/// (rare: every chunk is held the same delay), so the thread wakes about once
/// per due instant, not once per chunk.
#[derive(Debug, Clone)]
struct Clock {
    shared: Arc<ClockShared>,
}

#[derive(Debug, Default)]
struct ClockShared {
    state: std::sync::Mutex<ClockState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct ClockState {
    alarms: std::collections::BinaryHeap<std::cmp::Reverse<Alarm>>,
    seq: u64,
    /// What the thread sleeps toward; `None` while it is awake.
    sleeping_until: Option<Instant>,
    stop: bool,
}

impl Clock {
    /// Starts the clock thread; it sends its thread id to `tids`, and ends at
    /// [`Clock::stop`].
    fn start(tids: std::sync::mpsc::Sender<Option<u32>>) -> std::io::Result<Clock> {
        let shared = Arc::new(ClockShared::default());
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("slow-link-clock".into())
            .spawn(move || {
                let _ = tids.send(current_tid());
                let shared = theirs;
                let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                let mut due_now = Vec::new();
                while !st.stop {
                    let now = Instant::now();
                    while st.alarms.peek().is_some_and(|a| a.0.due <= now) {
                        if let Some(a) = st.alarms.pop() {
                            due_now.push(a.0.wake);
                        }
                    }
                    if !due_now.is_empty() {
                        drop(st);
                        for wake in due_now.drain(..) {
                            let _ = wake.send(());
                        }
                        st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                        continue;
                    }
                    let until = st
                        .alarms
                        .peek()
                        .map_or(now + Duration::from_secs(3_600), |a| a.0.due);
                    st.sleeping_until = Some(until);
                    st = shared
                        .changed
                        .wait_timeout(st, until.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    st.sleeping_until = None;
                }
            })?;
        Ok(Clock { shared })
    }

    /// Ends the clock thread (alarms still set never fire).
    fn stop(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.stop = true;
        st.alarms.clear();
        drop(st);
        self.shared.changed.notify_one();
    }

    /// Returns at `due` or later (never before).
    async fn sleep_until(&self, due: Instant) {
        if Instant::now() >= due {
            return;
        }
        let (wake, woken) = tokio::sync::oneshot::channel();
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.stop {
                return;
            }
            st.seq += 1;
            let seq = st.seq;
            st.alarms.push(std::cmp::Reverse(Alarm { due, seq, wake }));
            if st.sleeping_until.is_some_and(|until| due < until) {
                self.shared.changed.notify_one();
            }
        }
        if woken.await.is_err() {
            // The clock stopped: tokio's own timer (rounded up to its 1 ms ticks).
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.clock.stop();
    }
}

/// This thread's id (Linux), from `/proc/thread-self` → `<pid>/task/<tid>`.
fn current_tid() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// The median of `PING_SAMPLES` PING round trips to a loopback port, in µs.
fn ping_median_us(port: u16) -> Option<f64> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_connection().ok()?;
    for _ in 0..10 {
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
    }
    let mut times = Vec::with_capacity(PING_SAMPLES);
    for _ in 0..PING_SAMPLES {
        let t0 = Instant::now();
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    median(times)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    target: u16,
    delay: Duration,
    clock: Clock,
) {
    loop {
        match listener.accept().await {
            Ok((inbound, _)) => {
                tokio::spawn(forward(inbound, target, delay, clock.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// One client connection: a connection to Redis, and a delayed pipe each way.
async fn forward(inbound: tokio::net::TcpStream, target: u16, delay: Duration, clock: Clock) {
    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
        return; // dropping `inbound` closes the client's connection
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (client_read, client_write) = inbound.into_split();
    let (redis_read, redis_write) = outbound.into_split();
    tokio::spawn(delayed_pipe(client_read, redis_write, delay, clock.clone()));
    tokio::spawn(delayed_pipe(redis_read, client_write, delay, clock));
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in
/// order: this task reads and timestamps chunks into an unbounded queue, a
/// writer task waits (on the clock) until the head's time and writes it. A
/// chunk is whatever one read returned (no per-byte work); at EOF the write
/// side is shut down.
async fn delayed_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    clock: Clock,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((arrived, chunk)) = rx.recv().await {
            clock.sleep_until(arrived + delay).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

// ---------------------------------------------------------------- steady run

/// What the steady run measured.
#[derive(Debug)]
struct Steady {
    asked: usize,
    cycles: u64,
    secs: f64,
    exhausted: u64,
    error: Option<String>,
    /// Released records of earlier steps deleted before the run.
    earlier_deleted: usize,
    used_before: f64,
    used_after: f64,
    /// `MEMORY STATS` next to each `used_memory` reading.
    mem_before: Option<MemStats>,
    mem_after: Option<MemStats>,
    before: Records,
    after: Records,
    grace_ms: i64,
}

/// The lease records of one pool, by state, with their PTTLs (sorted, ms).
#[derive(Debug, Default)]
struct Records {
    keys: usize,
    released_pttl: Vec<i64>,
    active_pttl: Vec<i64>,
    other: usize,
}

impl Records {
    fn released_over(&self, ms: i64) -> usize {
        self.released_pttl
            .iter()
            .filter(|t| **t > ms || **t < 0)
            .count()
    }
}

impl Steady {
    fn bytes_per_cycle(&self) -> Option<f64> {
        (self.cycles > 0).then(|| (self.used_after - self.used_before) / self.cycles as f64)
    }
    fn records_left(&self) -> i64 {
        self.after.keys as i64 - self.before.keys as i64
    }
    /// Of the bytes per cycle, Redis's key tables' share.
    fn table_bytes_per_cycle(&self) -> Option<f64> {
        let (a, b) = (self.mem_before?, self.mem_after?);
        (self.cycles > 0).then(|| (b.key_tables - a.key_tables) / self.cycles as f64)
    }
    /// The change of client buffers over the run, bytes in all.
    fn clients_delta(&self) -> Option<f64> {
        Some(self.mem_after?.clients - self.mem_before?.clients)
    }
    fn bytes_per_record(&self) -> Option<f64> {
        let n = self.records_left();
        (n > 0).then(|| (self.used_after - self.used_before) / n as f64)
    }
}

fn used_memory(admin: &mut redis::Connection) -> Result<f64, BoxError> {
    Ok(info_field(admin, "memory", "used_memory")
        .and_then(|v| v.parse().ok())
        .ok_or("no used_memory in INFO memory")?)
}

/// What `MEMORY STATS` says, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct MemStats {
    /// `total.allocated` (= `used_memory`).
    total: f64,
    /// Buffers and structures of clients (`clients.normal` + `clients.slaves`).
    clients: f64,
    /// Script and function caches (`lua.caches` + `functions.caches`).
    caches: f64,
    /// db 0's key tables (`overhead.hashtable.main` + `overhead.hashtable.expires`).
    key_tables: f64,
}

impl MemStats {
    /// Memory that holds data: `used_memory` without client buffers (a client's
    /// query buffer keeps the size of its last big command until Redis's cron
    /// shrinks it, seconds later) and script caches.
    fn data(&self) -> f64 {
        self.total - self.clients - self.caches
    }

    fn parse(v: &redis::Value) -> Option<MemStats> {
        fn pairs(v: &redis::Value) -> Vec<(String, &redis::Value)> {
            let name = |k: &redis::Value| match k {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => String::new(),
            };
            match v {
                redis::Value::Array(items) => items
                    .chunks(2)
                    .filter_map(|kv| Some((name(kv.first()?), kv.get(1)?)))
                    .collect(),
                redis::Value::Map(kvs) => kvs.iter().map(|(k, v)| (name(k), v)).collect(),
                _ => Vec::new(),
            }
        }
        fn sum(fields: &[(String, &redis::Value)], names: &[&str]) -> f64 {
            fields
                .iter()
                .filter(|(k, _)| names.contains(&k.as_str()))
                .filter_map(|(_, v)| match v {
                    redis::Value::Int(n) => Some(*n as f64),
                    _ => None,
                })
                .sum()
        }
        let top = pairs(v);
        let key_tables = top
            .iter()
            .find(|(k, _)| k == "db.0")
            .map(|(_, db)| {
                sum(
                    &pairs(db),
                    &["overhead.hashtable.main", "overhead.hashtable.expires"],
                )
            })
            .unwrap_or(0.0);
        let total = sum(&top, &["total.allocated"]);
        (total > 0.0).then(|| MemStats {
            total,
            clients: sum(&top, &["clients.normal", "clients.slaves"]),
            caches: sum(&top, &["lua.caches", "functions.caches"]),
            key_tables,
        })
    }
}

/// `MEMORY STATS`, read once Redis's key tables have settled: after many keys
/// come or go, Redis resizes its tables in its cron and rehashes them step by
/// step, and memory read meanwhile counts a table on its way out. Waits until
/// the key tables are the same over three reads 100 ms apart (at most 5 s).
fn settled_memory(admin: &mut redis::Connection) -> Option<MemStats> {
    let mut read = || -> Option<MemStats> {
        MemStats::parse(&redis::cmd("MEMORY").arg("STATS").query(admin).ok()?)
    };
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut last = read()?;
    let mut same = 0;
    while same < 3 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(100));
        let now = read()?;
        same = if now.key_tables == last.key_tables {
            same + 1
        } else {
            0
        };
        last = now;
    }
    Some(last)
}

/// [`settled_memory`] on an async connection.
async fn settled_memory_async(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<MemStats, BoxError> {
    async fn read(conn: &mut redis::aio::MultiplexedConnection) -> Result<MemStats, BoxError> {
        let v: redis::Value = redis::cmd("MEMORY").arg("STATS").query_async(conn).await?;
        Ok(MemStats::parse(&v).ok_or("no total.allocated in MEMORY STATS")?)
    }
    let give_up = Instant::now() + Duration::from_secs(5);
    let mut last = read(conn).await?;
    let mut same = 0;
    while same < 3 && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = read(conn).await?;
        same = if now.key_tables == last.key_tables {
            same + 1
        } else {
            0
        };
        last = now;
    }
    Ok(last)
}

/// The keys of a pool's lease records: `<prefix><token digits>`.
fn record_keys(admin: &mut redis::Connection, prefix: &str) -> redis::RedisResult<Vec<String>> {
    let pattern = format!("{prefix}[0-9]*");
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1_000)
            .query(admin)?;
        keys.extend(batch.into_iter().filter(|k| {
            k.strip_prefix(prefix)
                .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        }));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort_unstable();
    keys.dedup(); // SCAN may return a key twice
    Ok(keys)
}

/// Reads every record (its first word: `active` or `released`) and its PTTL.
/// With `delete_released`, deletes the released ones instead of keeping them
/// in the answer.
fn read_records(
    admin: &mut redis::Connection,
    prefix: &str,
    delete_released: bool,
) -> redis::RedisResult<(Records, usize)> {
    let keys = record_keys(admin, prefix)?;
    let mut out = Records::default();
    let mut deleted = 0;
    for chunk in keys.chunks(500) {
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query(admin)?;
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("PTTL").arg(k);
        }
        let ttls: Vec<i64> = pipe.query(admin)?;
        let mut released = Vec::new();
        for ((key, value), ttl) in chunk.iter().zip(values).zip(ttls) {
            let Some(value) = value else { continue }; // expired meanwhile
            match value.split(' ').next() {
                Some("released") if delete_released => released.push(key),
                Some("released") => out.released_pttl.push(ttl),
                Some("active") => out.active_pttl.push(ttl),
                _ => out.other += 1,
            }
            out.keys += 1;
        }
        if !released.is_empty() {
            let n: usize = redis::cmd("DEL").arg(&released).query(admin)?;
            deleted += n;
            out.keys -= released.len();
        }
    }
    out.released_pttl.sort_unstable();
    out.active_pttl.sort_unstable();
    Ok((out, deleted))
}

/// `n` acquire→release cycles with 300 s leases at c=64 on the 1k pool, with
/// Redis's `used_memory` and the pool's lease records read before and after.
/// Released records of earlier steps (each kept for the grace) are deleted
/// first, so what is left is this run's.
fn steady_run(url: &str, admin: &mut redis::Connection, n: usize) -> Result<Steady, BoxError> {
    let pool = pool_name(SMALL_POOL);
    let prefix = format!("{NAMESPACE}:{{{pool}}}:");
    let rt = Flavor::MultiThread.runtime();
    let m = manager(url)?;
    let options = AcquireOptions::new()
        .consumer("worker-1")
        .duration(STEADY_LEASE);
    // Open the manager's connections and warm its caches before measuring.
    rt.block_on(async {
        if let Some(lease) = m.acquire_proxy(&pool, options.clone()).await? {
            m.release_proxy(&lease).await?;
        }
        Ok::<_, lighthouse_lease::Error>(())
    })?;
    let (_, earlier_deleted) = read_records(admin, &prefix, true)?;
    let (before, _) = read_records(admin, &prefix, false)?;
    let mem_before = settled_memory(admin);
    let used_before = used_memory(admin)?;
    let started = Instant::now();
    let out = rt.block_on(steady_cycles(m.clone(), pool.clone(), options, n));
    let secs = started.elapsed().as_secs_f64();
    let mem_after = settled_memory(admin);
    let used_after = used_memory(admin)?;
    let (after, _) = read_records(admin, &prefix, false)?;
    drop(m);
    drop(rt);
    let s = Steady {
        asked: n,
        cycles: out.all_cycles,
        secs,
        exhausted: out.exhausted,
        error: out.error,
        earlier_deleted,
        used_before,
        used_after,
        mem_before,
        mem_after,
        before,
        after,
        grace_ms: i64::try_from(DEFAULT_RECORD_GRACE.as_millis()).unwrap_or(i64::MAX),
    };
    println!(
        "steady run on {pool}: {} acquire→release cycles at c={WIDE} with {} s leases in {:.1} s; used_memory {:+.0} B ({} B per cycle)",
        s.cycles,
        STEADY_LEASE.as_secs(),
        s.secs,
        s.used_after - s.used_before,
        opt(s.bytes_per_cycle(), 1)
    );
    Ok(s)
}

/// Runs `n` acquire→release cycles over `WIDE` tasks; gives up after 10 minutes.
async fn steady_cycles(m: Manager, pool: String, options: AcquireOptions, n: usize) -> WorkerOut {
    let left = Arc::new(AtomicUsize::new(n));
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut set = JoinSet::new();
    for _ in 0..WIDE {
        let (m, pool, options, left) = (m.clone(), pool.clone(), options.clone(), left.clone());
        set.spawn(async move {
            let mut out = WorkerOut::default();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
                .is_ok()
            {
                let lease = loop {
                    if Instant::now() > give_up {
                        out.error = Some("no free proxy for 10 minutes".into());
                        return out;
                    }
                    match m.acquire_proxy(&pool, options.clone()).await {
                        Ok(Some(lease)) => break lease,
                        Ok(None) => out.exhausted += 1,
                        Err(e) => {
                            out.error = Some(format!("acquire: {e}"));
                            return out;
                        }
                    }
                };
                match m.release_proxy(&lease).await {
                    Ok(ReleaseOutcome::Released) => out.all_cycles += 1,
                    Ok(other) => {
                        out.error = Some(format!("release answered {other:?}"));
                        return out;
                    }
                    Err(e) => {
                        out.error = Some(format!("release: {e}"));
                        return out;
                    }
                }
            }
            out
        });
    }
    let mut total = WorkerOut::default();
    while let Some(done) = set.join_next().await {
        let w = done.unwrap_or_else(|e| WorkerOut {
            error: Some(format!("task: {e}")),
            ..WorkerOut::default()
        });
        total.all_cycles += w.all_cycles;
        total.exhausted += w.exhausted;
        if total.error.is_none() {
            total.error = w.error;
        }
    }
    total
}

fn pttl_range(sorted_ms: &[i64]) -> String {
    match (sorted_ms.first(), sorted_ms.last()) {
        (Some(lo), Some(hi)) => format!(
            "min {:.1} s, median {:.1} s, max {:.1} s",
            *lo as f64 / 1e3,
            sorted_ms[sorted_ms.len() / 2] as f64 / 1e3,
            *hi as f64 / 1e3
        ),
        _ => "none".into(),
    }
}

fn print_steady(s: &Steady) {
    let pool = pool_name(SMALL_POOL);
    println!(
        "steady run on pool {pool}: {} of {} acquire→release cycles at c={WIDE} with {} s leases in {:.1} s ({:.0} cycles/s){}{}",
        s.cycles,
        s.asked,
        STEADY_LEASE.as_secs(),
        s.secs,
        s.cycles as f64 / s.secs.max(1e-9),
        if s.exhausted > 0 {
            format!("; {} acquires found no proxy", s.exhausted)
        } else {
            String::new()
        },
        s.error
            .as_deref()
            .map(|e| format!("  FAILED: {e}"))
            .unwrap_or_default()
    );
    println!(
        "  {} released records of earlier steps deleted first; used_memory {:.0} → {:.0} B (each read once Redis's key tables had settled): {:+.0} B, {} B left per cycle ({} B of it Redis's key tables; client buffers {} B in all), {} B per record left",
        s.earlier_deleted,
        s.used_before,
        s.used_after,
        s.used_after - s.used_before,
        opt(s.bytes_per_cycle(), 1),
        opt(s.table_bytes_per_cycle(), 1),
        s.clients_delta().map_or("-".into(), |c| format!("{c:+.0}")),
        opt(s.bytes_per_record(), 1)
    );
    println!(
        "  lease-record keys ({NAMESPACE}:{{{pool}}}:<token>): {} before ({} active, {} released), {} after ({} active, {} released, {} other)",
        s.before.keys,
        s.before.active_pttl.len(),
        s.before.released_pttl.len(),
        s.after.keys,
        s.after.active_pttl.len(),
        s.after.released_pttl.len(),
        s.after.other
    );
    let over = s.after.released_over(s.grace_ms);
    println!(
        "  released records' PTTL (all {} read): {}; {over} above the {} s record grace{}",
        s.after.released_pttl.len(),
        pttl_range(&s.after.released_pttl),
        s.grace_ms / 1_000,
        if over == 0 {
            " (ok: not lease + grace)".to_string()
        } else {
            format!(
                " (WRONG: a released record should keep only the grace, not {} s + grace)",
                STEADY_LEASE.as_secs()
            )
        }
    );
    let leaked = s.after.active_pttl.len() as i64 - s.before.active_pttl.len() as i64;
    let no_ttl = s.after.active_pttl.iter().filter(|t| **t == -1).count();
    println!(
        "  active records: {} without a TTL (a live lease's record has none) of {} ({} more than before the run{})",
        no_ttl,
        s.after.active_pttl.len(),
        leaked,
        if leaked == 0 {
            ": the standing leases only"
        } else {
            ": leases of the run still active"
        }
    );
    if let Some(b) = s.bytes_per_cycle() {
        let rate = s.cycles as f64 / s.secs.max(1e-9);
        println!(
            "  released records live {} s: at this run's {rate:.0} cycles/s they hold about {:.0} MB ({b:.0} B × cycles/s × grace)",
            s.grace_ms / 1_000,
            b * rate * s.grace_ms as f64 / 1e3 / 1e6
        );
    }
}

fn steady_json(s: &Steady) -> Value {
    let stats = |v: &[i64]| {
        json!({
            "count": v.len(),
            "min": v.first(),
            "median": v.get(v.len() / 2),
            "max": v.last(),
        })
    };
    json!({
        "pool": pool_name(SMALL_POOL),
        "concurrency": WIDE,
        "lease_secs": STEADY_LEASE.as_secs(),
        "cycles_asked": s.asked,
        "cycles": s.cycles,
        "seconds": s.secs,
        "cycles_per_sec": s.cycles as f64 / s.secs.max(1e-9),
        "exhausted": s.exhausted,
        "error": s.error,
        "earlier_released_records_deleted": s.earlier_deleted,
        "used_memory_before": s.used_before,
        "used_memory_after": s.used_after,
        "used_memory_delta": s.used_after - s.used_before,
        "bytes_per_cycle": s.bytes_per_cycle(),
        "key_tables_before": s.mem_before.map(|m| m.key_tables),
        "key_tables_after": s.mem_after.map(|m| m.key_tables),
        "key_table_bytes_per_cycle": s.table_bytes_per_cycle(),
        "client_buffers_delta": s.clients_delta(),
        "bytes_per_record_left": s.bytes_per_record(),
        "record_grace_ms": s.grace_ms,
        "records_before": {
            "keys": s.before.keys,
            "active": s.before.active_pttl.len(),
            "released": s.before.released_pttl.len(),
            "other": s.before.other,
        },
        "records_after": {
            "keys": s.after.keys,
            "active": s.after.active_pttl.len(),
            "released": s.after.released_pttl.len(),
            "other": s.after.other,
        },
        "released_pttl_ms": stats(&s.after.released_pttl),
        "released_over_grace": s.after.released_over(s.grace_ms),
        "active_pttl_ms": stats(&s.after.active_pttl),
    })
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
    println!("cycles/s, median of {rounds} round(s); * = the default c=1 runtime");
    println!("  cycle     = acquire_proxy + release_proxy (two round trips)");
    println!("  rotate    = one rotate_proxy that released the lease in hand and got the next (one round trip), held against the baselines' acquire→release cycles");
    println!("  slow-link = cycle through the delaying forwarder, held against redis-semaphore through the same forwarder");
    println!("ratios are taken within each round against that round's baseline, then the median (and the range, for redis-semaphore)");
    println!(
        "{:<18} {:<9} {:<8} {:>3} {:>10} {:>9} {:>9} {:>9} {:>8} {:>10} {:>11} {:>11}",
        "ours",
        "case",
        "runtime",
        "c",
        "cycles/s",
        "p50 us",
        "p99 us",
        "fcall us",
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
        let forwarder = r
            .forwarder_cpu_pct
            .map(|c| format!("  forwarder CPU {c:.0}%"))
            .unwrap_or_default();
        let range = match (r.vs_semaphore_min, r.vs_semaphore_max) {
            (Some(a), Some(b)) => format!("{a:.2}–{b:.2}"),
            _ => "-".to_string(),
        };
        println!(
            "{:<18} {:<9} {:<8} {:>3} {:>10.0} {:>9.1} {:>9.1} {:>9} {:>8} {:>10} {:>11} {:>11}{forwarder}{failed}",
            r.case.name(),
            r.case.kind.label(),
            format!("{}{mark}", r.case.flavor.label()),
            r.case.concurrency,
            r.cycles_per_sec,
            r.p50_us,
            r.p99_us,
            opt(r.script_us, 2),
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
            "{:<26} {:>3} {:>3} {:>10.0} {:>9} {:>9} {:>10}  {}{}",
            b.name,
            b.concurrency,
            b.pipeline,
            b.cycles_per_sec,
            opt(b.p50_us, 1),
            opt(b.p99_us, 1),
            opt(b.evalsha.map(|s| s.usec_per_call), 2),
            b.detail,
            b.forwarder_cpu_pct
                .map(|c| format!("; forwarder CPU {c:.0}%"))
                .unwrap_or_default()
        );
    }
    for line in skipped {
        println!("{line}");
    }
    println!();
    println!("server-side cost of our functions (INFO commandstats usec_per_call for fcall, {COST_LEASES} calls each)");
    println!(
        "{:<18} {:>12} {:>12} {:>12}",
        "pool / filter", "acquire us", "release us", "rotate us"
    );
    for c in cost {
        println!(
            "{:<18} {:>12} {:>12} {:>12}",
            format!("{} {}", size_label(c.size), c.filter),
            opt(c.acquire, 2),
            opt(c.release, 2),
            opt(c.rotate, 2)
        );
    }
    println!();
    println!("fcall us: Redis's time per FCALL of ours (acquire and release averaged; one rotate per call for rotate); evalsha us: the same for the baselines' EVALSHA; redis %: redis-server CPU over the case's wall time.");
    println!("Baseline A does acquire+release in ONE call (one round trip per cycle), as our rotate does; our cycle and redis-semaphore take two.");
}

/// `  acquire p50 … us  p99 … us` when measured.
fn acquire_latency(p50: Option<f64>, p99: Option<f64>) -> String {
    match (p50, p99) {
        (Some(a), Some(b)) => format!("  acquire p50 {a:.1} us  p99 {b:.1} us"),
        _ => String::new(),
    }
}

/// The slow-link case beside redis-semaphore through the same forwarder.
fn print_slow_link(slow: &SlowLink, results: &[Summary], baselines: &[Baseline]) {
    let Some(ours) = results.iter().find(|r| r.case.kind == CaseKind::SlowLink) else {
        return;
    };
    let theirs = baselines.iter().find(|b| b.name == SEMAPHORE_SLOW_BASELINE);
    println!();
    println!(
        "slow link, {:.1} ms each way (PING {} us), c={}: cycles/s, acquire p50/p99 us, cycle p50/p99 us",
        slow.rtt.as_secs_f64() * 1e3 / 2.0,
        opt(slow.ping_us, 0),
        ours.case.concurrency
    );
    println!(
        "  ours             {:>9.0}  {:>9} {:>9}  {:>9.0} {:>9.0}",
        ours.cycles_per_sec,
        opt(ours.acquire_p50_us, 0),
        opt(ours.acquire_p99_us, 0),
        ours.p50_us,
        ours.p99_us
    );
    if let Some(b) = theirs {
        println!(
            "  redis-semaphore  {:>9.0}  {:>9} {:>9}  {:>9} {:>9}",
            b.cycles_per_sec,
            opt(b.acquire_p50_us, 0),
            opt(b.acquire_p99_us, 0),
            opt(b.p50_us, 0),
            opt(b.p99_us, 0)
        );
        println!(
            "  ours / semaphore: cycles/s {}, acquire p50 {}, acquire p99 {}",
            opt(ours.vs_semaphore, 2),
            opt(
                ours.acquire_p50_us
                    .zip(b.acquire_p50_us)
                    .map(|(a, b)| a / b),
                2
            ),
            opt(
                ours.acquire_p99_us
                    .zip(b.acquire_p99_us)
                    .map(|(a, b)| a / b),
                2
            ),
        );
    }
}

/// The memory per proxy, the slow link and the steady run, after the table.
fn print_extras(pools: &[PoolSetup], slow: Option<&SlowLink>, steady: Option<&Steady>) {
    println!();
    println!("memory while loading: Redis's data (used_memory without client buffers and script caches, read once its key tables settled); raw used_memory deltas in brackets");
    for p in pools {
        println!(
            "  pool {:<12} {:>7} proxies, declared indexes {}: {:>6.0} B per proxy, {:>5.0} B per active lease  [{:.0} B, {:.0} B]",
            pool_name(p.size),
            p.size,
            indexes_label(&p.indexes),
            p.per_proxy,
            p.per_lease,
            p.per_proxy_raw,
            p.per_lease_raw
        );
    }
    if let Some(s) = slow {
        println!();
        println!(
            "slow link: RTT set {:.2} ms ({:.2} ms held each way); PING round trip median {} us through the forwarder, {} us direct",
            s.rtt.as_secs_f64() * 1e3,
            s.rtt.as_secs_f64() * 1e3 / 2.0,
            opt(s.ping_us, 0),
            opt(s.direct_ping_us, 0)
        );
    }
    if let Some(s) = steady {
        println!();
        print_steady(s);
    }
}

fn case_json(r: &CaseResult, baselines: &[Baseline]) -> Value {
    let (evalsha_name, semaphore_name) = r.case.kind.baselines();
    json!({
        "kind": r.case.kind.json(),
        "pool": r.case.pool(),
        "proxies": r.case.size,
        "filter": r.case.filter,
        "runtime": r.case.flavor.label(),
        "default": r.case.concurrency > 1 || r.case.flavor == DEFAULT_FLAVOR,
        "concurrency": r.case.concurrency,
        "cycles": r.cycles,
        "cycles_per_sec": r.cycles_per_sec,
        "p50_us": r.p50_us,
        "p99_us": r.p99_us,
        "acquire_p50_us": r.acquire_p50_us,
        "acquire_p99_us": r.acquire_p99_us,
        "exhausted": r.exhausted,
        "error": r.error,
        "fcall_calls": r.script.map(|s| s.calls),
        "fcall_usec_per_call": r.script.map(|s| s.usec_per_call),
        "redis_cpu_pct": r.redis_cpu_pct,
        "forwarder_cpu_pct": r.forwarder_cpu_pct,
        "ratio_baselines": {"evalsha": evalsha_name, "semaphore": semaphore_name},
        "ratio_vs_redis_benchmark_evalsha": evalsha_name.and_then(|name| ratio(
            r.cycles_per_sec,
            baseline_for(baselines, name, r.case.concurrency),
        )),
        "ratio_vs_redis_semaphore": ratio(
            r.cycles_per_sec,
            baseline_for(baselines, semaphore_name, r.case.concurrency),
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
        "acquire_p50_us": b.acquire_p50_us,
        "acquire_p99_us": b.acquire_p99_us,
        "evalsha_calls": b.evalsha.map(|s| s.calls),
        "evalsha_usec_per_call": b.evalsha.map(|s| s.usec_per_call),
        "forwarder_cpu_pct": b.forwarder_cpu_pct,
        "detail": b.detail,
    })
}
