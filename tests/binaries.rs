#![cfg(feature = "cli")]
//! The two binaries, driven as a user would: spawned processes against a private
//! `redis-server`. `lighthouse` round trips and import errors; `lighthouse-sweeper`
//! reclaiming, stopping on SIGTERM, serving metrics, running twice at once,
//! surviving a Redis restart, and repairing counter drift.

mod support;
use support::{cn, pn};

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lighthouse_lease::redis::{RedisConfig, RedisStorage};
use lighthouse_lease::{AcquireRequest, AdminStorage, LeaseStorage, Proxy, ProxyPool};

const CLI: &str = env!("CARGO_BIN_EXE_lighthouse");
const SWEEPER: &str = env!("CARGO_BIN_EXE_lighthouse-sweeper");

fn cli(url: &str, ns: &str, args: &[&str]) -> Output {
    Command::new(CLI)
        .args(args)
        .env("REDIS_URL", url)
        .env("LIGHTHOUSE_NAMESPACE", ns)
        .output()
        .expect("run lighthouse")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Sidecar {
    child: Child,
    port: u16,
}

impl Sidecar {
    fn start(url: &str, ns: &str, extra: &[&str]) -> Sidecar {
        let port = free_port();
        let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        if !extra.contains(&"--interval") {
            args.extend(["--interval".into(), "1s".into()]);
        }
        let mut child = Command::new(SWEEPER)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(&args)
            .env("REDIS_URL", url)
            .env("LIGHTHOUSE_NAMESPACE", ns)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lighthouse-sweeper");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut logs = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut logs);
                }
                panic!("lighthouse-sweeper exited at start ({status}): {logs}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sweeper did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sidecar { child, port }
    }

    /// `(status code, body)` of a GET, or None if nothing answers.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((code, body))
    }

    fn wait_until(&self, limit: Duration, mut f: impl FnMut(&Self) -> bool) -> Duration {
        let start = Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < limit,
                "condition not met within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    fn metric(&self, line_start: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    fn terminate(mut self) -> (std::process::ExitStatus, Duration, String) {
        let start = Instant::now();
        // SAFETY-free: plain kill(2) through the `kill` command.
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sweeper ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut logs = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut logs);
        }
        (status, start.elapsed(), logs)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn storage(url: &str, ns: &str) -> RedisStorage {
    RedisStorage::new(RedisConfig::from_url(url).namespace(ns)).unwrap()
}

async fn pool_with(s: &RedisStorage, name: &str, proxies: usize, max: u32) -> Vec<Proxy> {
    let pool = s.create_pool(ProxyPool::new(name).unwrap()).await.unwrap();
    s.ensure_consumer(&cn("w")).await.unwrap();
    let list = (0..proxies)
        .map(|i| {
            Proxy::builder(pool.id, format!("10.1.{}.{}", i / 250, i % 250), 8080)
                .max_concurrency(max)
                .build()
                .unwrap()
        })
        .collect();
    s.add_proxies(list).await.unwrap()
}

#[test]
fn cli_round_trip() {
    let (url, ns) = (support::redis_url(), support::unique_namespace());
    assert!(
        ok(&cli(&url, &ns, &["pool", "create", "latam-residential"]))
            .contains("created pool latam-residential")
    );
    ok(&cli(
        &url,
        &ns,
        &[
            "proxy",
            "add",
            "--pool",
            "latam-residential",
            "--host",
            "1.1.1.1",
            "--port",
            "8080",
            "--max-concurrency",
            "1",
            "--country",
            "AR",
        ],
    ));
    let dir = std::env::temp_dir().join(format!("lh-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("p.csv");
    std::fs::write(
        &csv,
        "host,port,country\n2.2.2.2,3128,CL\n3.3.3.3,3128,BR\n",
    )
    .unwrap();
    assert!(ok(&cli(
        &url,
        &ns,
        &[
            "proxy",
            "import",
            "--pool",
            "latam-residential",
            csv.to_str().unwrap()
        ]
    ))
    .contains("imported 2"));
    let lease: serde_json::Value = serde_json::from_str(&ok(&cli(
        &url,
        &ns,
        &[
            "--json",
            "acquire",
            "--pool",
            "latam-residential",
            "--consumer",
            "ops",
            "--country",
            "CL",
        ],
    )))
    .unwrap();
    assert_eq!(lease["proxy_url"], "http://2.2.2.2:3128");
    let id = lease["id"].as_str().unwrap().to_string();
    assert!(ok(&cli(&url, &ns, &["leases", "--pool", "latam-residential"])).contains(&id));
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&cli(&url, &ns, &["--json", "stats"]))).unwrap();
    assert_eq!(stats["latam-residential"]["total_leases"], 1);
    assert_eq!(stats["latam-residential"]["total_proxies"], 3);
    assert_eq!(
        ok(&cli(&url, &ns, &["release", &id])).trim(),
        format!("{id}: released")
    );
    assert_eq!(
        ok(&cli(&url, &ns, &["release", &id])).trim(),
        format!("{id}: already_released")
    );
    assert!(ok(&cli(&url, &ns, &["sweep"])).contains("reclaimed 0"));
    let proxies: serde_json::Value = serde_json::from_str(&ok(&cli(
        &url,
        &ns,
        &["--json", "proxy", "list", "--pool", "latam-residential"],
    )))
    .unwrap();
    let first = proxies[0]["id"].as_str().unwrap().to_string();
    assert!(ok(&cli(&url, &ns, &["proxy", "set-status", &first, "banned"])).contains("banned"));
    ok(&cli(&url, &ns, &["consumer", "add", "worker-9"]));
    assert!(ok(&cli(&url, &ns, &["consumer", "list"])).contains("worker-9"));
    assert!(ok(&cli(&url, &ns, &["pool", "delete", "latam-residential"])).contains("deleted"));
    assert_eq!(ok(&cli(&url, &ns, &["pool", "list"])).trim(), "");
}

#[test]
fn cli_errors_are_one_line_and_a_bad_import_imports_nothing() {
    let (url, ns) = (support::redis_url(), support::unique_namespace());
    ok(&cli(&url, &ns, &["pool", "create", "p1"]));
    let dir = std::env::temp_dir().join(format!("lh-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "host,port\n1.1.1.1,80\n2.2.2.2,0\n").unwrap();
    let out = cli(
        &url,
        &ns,
        &["proxy", "import", "--pool", "p1", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ")
            && err.contains("line 3")
            && err.contains("nothing was imported"),
        "{err}"
    );
    assert_eq!(
        ok(&cli(&url, &ns, &["proxy", "list", "--pool", "p1"])).trim(),
        ""
    );
    let out = cli(&url, &ns, &["acquire", "--pool", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim(),
        "error: pool \"nope\" does not exist"
    );
    let out = cli("redis://127.0.0.1:1", &ns, &["pool", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: ") && err.contains("Redis") && err.contains("refused"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_reclaims_a_1s_lease_within_its_interval_plus_1s_serves_metrics_and_stops_on_sigterm(
) {
    let (url, ns) = (support::redis_url(), support::unique_namespace());
    let s = storage(&url, &ns);
    let proxies = pool_with(&s, "p1", 2, 1).await;
    let side = Sidecar::start(&url, &ns, &[]);
    let lease = s
        .acquire(&AcquireRequest::new("p1", "w", Duration::from_secs(1)).unwrap())
        .await
        .unwrap()
        .unwrap();
    let expires = lease.expires_at;
    // Nothing but the sweeper gives the slot back: get_proxy only reads.
    let p = lease.proxy_id;
    let s2 = storage(&url, &ns);
    let mut freed_at = None;
    for _ in 0..100 {
        if s2.get_proxy(p).await.unwrap().unwrap().current_leases == 0 {
            freed_at = Some(chrono::Utc::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = (freed_at.expect("reclaimed") - expires).num_milliseconds();
    assert!(
        late <= 2_000,
        "reclaimed {late} ms after expiry (interval 1 s + 1 s allowed)"
    );
    assert!(proxies.iter().any(|x| x.id == p));
    let (code, body) = side.get("/metrics").unwrap();
    assert_eq!(code, 200);
    for want in [
        "lighthouse_sweeper_leases_reclaimed_total{pool=\"p1\"} 1",
        "lighthouse_pool_active_leases{pool=\"p1\"} 0",
        "lighthouse_pool_available_proxies{pool=\"p1\"} 2",
        "# TYPE lighthouse_sweeper_last_sweep_duration_seconds gauge",
        "lighthouse_sweeper_errors_total 0",
        "lighthouse_sweeper_redis_up 1",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
    assert_eq!(side.get("/healthz").unwrap(), (200, "ok\n".to_string()));
    assert_eq!(side.get("/nope").unwrap().0, 404);
    let (status, took, logs) = side.terminate();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(took < Duration::from_secs(2), "took {took:?} to stop");
    assert!(logs.contains("shutdown requested"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweepers_never_release_a_lease_twice() {
    let (url, ns) = (support::redis_url(), support::unique_namespace());
    let s = storage(&url, &ns);
    let proxies = pool_with(&s, "p1", 50, 40).await;
    // All leases expire together, after every acquire is done (an acquire also
    // reclaims expired leases, which the sweepers would then not count).
    let n = 1000;
    let lease = Duration::from_secs(4);
    let started = Instant::now();
    for _ in 0..n {
        s.acquire(&AcquireRequest::new("p1", "w", lease).unwrap())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(started.elapsed() < lease, "acquires too slow for this test");
    let a = Sidecar::start(&url, &ns, &["--interval", "100ms", "--batch-size", "50"]);
    let b = Sidecar::start(&url, &ns, &["--interval", "100ms", "--batch-size", "50"]);
    let total = |a: &Sidecar, b: &Sidecar| {
        a.metric("lighthouse_sweeper_leases_reclaimed_total{pool=\"p1\"}")
            .unwrap_or(0.0)
            + b.metric("lighthouse_sweeper_leases_reclaimed_total{pool=\"p1\"}")
                .unwrap_or(0.0)
    };
    a.wait_until(Duration::from_secs(15), |a| total(a, &b) >= n as f64);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        total(&a, &b),
        n as f64,
        "each lease is reclaimed exactly once"
    );
    for p in &proxies {
        assert_eq!(s.get_proxy(p.id).await.unwrap().unwrap().current_leases, 0);
    }
    assert_eq!(s.pool_stats(&pn("p1")).await.unwrap().total_leases, 0);
    let both = a
        .metric("lighthouse_sweeper_leases_reclaimed_total{pool=\"p1\"}")
        .unwrap_or(0.0)
        > 0.0
        && b.metric("lighthouse_sweeper_leases_reclaimed_total{pool=\"p1\"}")
            .unwrap_or(0.0)
            > 0.0;
    eprintln!("both sweepers reclaimed some: {both}");
    assert_eq!(a.terminate().0.code(), Some(0));
    assert_eq!(b.terminate().0.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_survives_a_redis_restart() {
    let server = support::server::RedisServer::spawn().unwrap();
    let (url, port, ns) = (server.url(), server.port(), "restart".to_string());
    let side = Sidecar::start(&url, &ns, &["--interval", "200ms"]);
    side.wait_until(Duration::from_secs(10), |s| {
        s.get("/healthz").is_some_and(|(c, _)| c == 200)
    });
    drop(server); // Redis goes away
    side.wait_until(Duration::from_secs(10), |s| {
        s.get("/healthz").is_some_and(|(c, _)| c == 503)
    });
    assert!(side.metric("lighthouse_sweeper_errors_total").unwrap() >= 1.0);
    std::thread::sleep(Duration::from_millis(1500));
    let _again = support::server::RedisServer::spawn_on(port).unwrap(); // and comes back
    side.wait_until(Duration::from_secs(40), |s| {
        s.get("/healthz").is_some_and(|(c, _)| c == 200)
    });
    // It sweeps the new server: a lease there is reclaimed.
    let s = storage(&url, &ns);
    let proxies = pool_with(&s, "p1", 1, 1).await;
    s.acquire(&AcquireRequest::new("p1", "w", Duration::from_millis(300)).unwrap())
        .await
        .unwrap()
        .unwrap();
    side.wait_until(Duration::from_secs(20), |s| {
        s.metric("lighthouse_sweeper_leases_reclaimed_total{pool=\"p1\"}") == Some(1.0)
    });
    assert_eq!(
        storage(&url, &ns)
            .get_proxy(proxies[0].id)
            .await
            .unwrap()
            .unwrap()
            .current_leases,
        0
    );
    let (status, _, logs) = side.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(logs.contains("sweep failed; will retry"), "{logs}");
    assert!(logs.contains("reachable again"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_repairs_counter_drift() {
    let (url, ns) = (support::redis_url(), support::unique_namespace());
    let s = storage(&url, &ns);
    let proxies = pool_with(&s, "p1", 3, 2).await;
    let lease = s
        .acquire(&AcquireRequest::new("p1", "w", Duration::from_secs(60)).unwrap())
        .await
        .unwrap()
        .unwrap();
    // Someone edits the count by hand: 7 leases, so the proxy (max 2) looks full:
    // its count moves from the load index's score to `held`.
    let prefix = format!("{ns}:{{p1}}:");
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let seq: u64 = redis::cmd("HGET")
        .arg(format!(
            "{prefix}ids:{}",
            &lease.proxy_id.simple().to_string()[..2]
        ))
        .arg(lease.proxy_id.to_string())
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::pipe()
        .zrem(format!("{prefix}idx:load:all"), seq)
        .ignore()
        .hset(format!("{prefix}held"), seq, 7)
        .ignore()
        .query_async(&mut raw)
        .await
        .unwrap();
    let side = Sidecar::start(&url, &ns, &["--audit-interval", "1s"]);
    side.wait_until(Duration::from_secs(15), |s| {
        s.metric("lighthouse_sweeper_counter_repairs_total")
            .unwrap_or(0.0)
            >= 1.0
    });
    assert_eq!(
        s.get_proxy(lease.proxy_id)
            .await
            .unwrap()
            .unwrap()
            .current_leases,
        1
    );
    assert_eq!(s.pool_stats(&pn("p1")).await.unwrap().total_leases, 1);
    assert_eq!(proxies.len(), 3);
    let (status, _, logs) = side.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(
        logs.contains("repaired a drifted lease counter")
            && logs.contains("recorded=7")
            && logs.contains("actual=1"),
        "{logs}"
    );
}
