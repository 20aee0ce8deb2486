#![cfg(feature = "cli")]
//! The sweeper's scheduled health checks, against a private `redis-server`, a
//! local target and local forward proxies (all on 127.0.0.1, ephemeral ports):
//! verdicts applied to the stored proxies, banned proxies left alone, the
//! concurrency bound held, metrics by result; and the binary's flags (off by
//! default, on with `--health-check-interval`).

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::sweeper::metrics::prometheus_builder;
use lighthouse_lease::sweeper::{Sweeper, SweeperConfig};
use lighthouse_lease::{
    AdminStorage, HealthCheckConfig, HealthChecker, Proxy, ProxyPool, ProxyStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 16 * 1024 || s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    String::from_utf8(buf).ok()
}

/// A target answering `204` to `GET /ok`, `500` to anything else.
async fn start_target() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let status = if head.starts_with("GET /ok ") {
                    "204 No Content"
                } else {
                    "500 Internal Server Error"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    base
}

/// What a set of test proxies saw: requests in all, requests in flight, the
/// most in flight at once.
#[derive(Default)]
struct Traffic {
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A forward HTTP proxy for absolute-form `GET http://host:port/path`, holding
/// each request `hold` before forwarding it (so that checks overlap when they
/// may), recording into `traffic`.
async fn start_proxy(traffic: Arc<Traffic>, hold: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let traffic = traffic.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                traffic.requests.fetch_add(1, Ordering::SeqCst);
                let now = traffic.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                traffic.max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                let url = head.split(' ').nth(1).unwrap_or("").to_string();
                if let Some((authority, path)) = url
                    .strip_prefix("http://")
                    .and_then(|r| r.find('/').map(|i| r.split_at(i)))
                {
                    if let Ok(mut up) = TcpStream::connect(authority).await {
                        let fwd = format!(
                            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
                        );
                        if up.write_all(fwd.as_bytes()).await.is_ok() {
                            let _ = tokio::io::copy(&mut up, &mut client).await;
                        }
                    }
                }
                traffic.in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    port
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn add(s: &RedisStorage, pool: &ProxyPool, port: u16, status: ProxyStatus) -> Proxy {
    s.add_proxy(
        Proxy::builder(pool.id, "127.0.0.1", port)
            .status(status)
            .build()
            .unwrap(),
    )
    .await
    .unwrap()
}

fn sample(body: &str, line_start: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "current_thread")]
async fn a_pass_applies_every_verdict_skips_banned_proxies_holds_the_bound_and_counts_by_result() {
    let recorder = prometheus_builder(Duration::from_secs(120)).build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let target = start_target().await;
    let good = Arc::new(Traffic::default());
    let banned_traffic = Arc::new(Traffic::default());
    let config = support::test_config();
    let s = RedisStorage::new(config.clone()).unwrap();
    let pool = s.create_pool(ProxyPool::new("p").unwrap()).await.unwrap();
    let mut healthy = Vec::new();
    for _ in 0..5 {
        let port = start_proxy(good.clone(), Duration::from_millis(150)).await;
        healthy.push(add(&s, &pool, port, ProxyStatus::Active).await);
    }
    // Down before: recovers.
    let port = start_proxy(good.clone(), Duration::from_millis(150)).await;
    let recovering = add(&s, &pool, port, ProxyStatus::Inactive).await;
    let dead = add(&s, &pool, closed_port().await, ProxyStatus::Active).await;
    let port = start_proxy(banned_traffic.clone(), Duration::ZERO).await;
    let banned = add(&s, &pool, port, ProxyStatus::Banned).await;

    let sweeper = Sweeper::new(RedisStorage::new(config).unwrap(), SweeperConfig::default());
    let checker = HealthChecker::new(
        HealthCheckConfig::new()
            .target_url(format!("{target}/ok"))
            .timeout(Duration::from_secs(5))
            .slow_threshold(Duration::from_secs(5))
            .attempts(1)
            .concurrency(2),
    )
    .unwrap();
    let pass = sweeper.health_check_once(&checker).await.unwrap();
    assert_eq!(
        (
            pass.pools,
            pass.active,
            pass.slow,
            pass.inactive,
            pass.failed_pools
        ),
        (1, 6, 0, 1, 0),
        "{pass:?}"
    );

    for p in healthy.iter().chain([&recovering]) {
        let stored = s.get_proxy(p.id).await.unwrap().unwrap();
        assert_eq!(stored.status, ProxyStatus::Active);
        assert!(stored.checked_at.is_some() && stored.latency_ms.is_some());
    }
    let stored = s.get_proxy(dead.id).await.unwrap().unwrap();
    assert_eq!(stored.status, ProxyStatus::Inactive);
    assert!(stored.checked_at.is_some());
    let stored = s.get_proxy(banned.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.checked_at),
        (ProxyStatus::Banned, None)
    );
    assert_eq!(banned_traffic.requests.load(Ordering::SeqCst), 0);
    assert_eq!(good.requests.load(Ordering::SeqCst), 6);
    let most = good.max_in_flight.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "{most} checks at once with a bound of 2"
    );

    let body = handle.render();
    assert_eq!(
        sample(
            &body,
            "lighthouse_sweeper_health_checks_total{pool=\"p\",result=\"active\"}"
        ),
        Some(6.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "lighthouse_sweeper_health_checks_total{pool=\"p\",result=\"inactive\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "lighthouse_sweeper_health_check_errors_total"),
        Some(0.0)
    );
    let status = sweeper.metrics().status();
    assert_eq!(status.last_health_check.map(|c| c.1), Some(7));
}

const SWEEPER: &str = env!("CARGO_BIN_EXE_lighthouse-sweeper");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// Runs the sweeper binary until `done` says so (at most 20 s), then stops it.
fn with_sweeper(url: &str, ns: &str, extra: &[&str], mut done: impl FnMut(u16) -> bool) {
    let port = free_port();
    let mut child = Command::new(SWEEPER)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--interval", "100ms"])
        .args(extra)
        .env("REDIS_URL", url)
        .env("LIGHTHOUSE_NAMESPACE", ns)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run lighthouse-sweeper");
    let start = Instant::now();
    let mut ok = false;
    while start.elapsed() < Duration::from_secs(20) {
        if done(port) {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "the sweeper never got there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_checks_on_schedule_only_when_asked() {
    let target = start_target().await;
    let traffic = Arc::new(Traffic::default());
    let port = start_proxy(traffic.clone(), Duration::ZERO).await;
    let url = support::redis_url();
    let ns = support::unique_namespace();
    let s = RedisStorage::new(
        lighthouse_lease::redis::RedisConfig::from_url(url.clone()).namespace(ns.clone()),
    )
    .unwrap();
    let pool = s.create_pool(ProxyPool::new("p").unwrap()).await.unwrap();
    let up = add(&s, &pool, port, ProxyStatus::Inactive).await;
    let dead = add(&s, &pool, closed_port().await, ProxyStatus::Active).await;

    // Off by default: several sweeps, no check.
    let (u, n) = (url.clone(), ns.clone());
    tokio::task::spawn_blocking(move || {
        with_sweeper(&u, &n, &[], |port| {
            get(port, "/metrics")
                .and_then(|b| sample(&b, "lighthouse_sweeper_sweeps_total"))
                .is_some_and(|n| n >= 3.0)
        })
    })
    .await
    .unwrap();
    assert_eq!(traffic.requests.load(Ordering::SeqCst), 0);
    assert_eq!(
        s.get_proxy(dead.id).await.unwrap().unwrap().checked_at,
        None
    );

    // On: both verdicts applied, and counted on /metrics.
    let (u, n) = (url.clone(), ns.clone());
    let target_url = format!("{target}/ok");
    tokio::task::spawn_blocking(move || {
        let args = [
            "--health-check-interval",
            "200ms",
            "--health-check-target",
            &target_url,
            "--health-check-concurrency",
            "4",
            "--health-check-timeout",
            "5s",
        ];
        with_sweeper(&u, &n, &args, |port| {
            get(port, "/metrics").is_some_and(|b| {
                sample(
                    &b,
                    "lighthouse_sweeper_health_checks_total{pool=\"p\",result=\"active\"}",
                )
                .is_some_and(|n| n >= 1.0)
                    && sample(
                        &b,
                        "lighthouse_sweeper_health_checks_total{pool=\"p\",result=\"inactive\"}",
                    )
                    .is_some_and(|n| n >= 1.0)
            })
        })
    })
    .await
    .unwrap();
    assert_eq!(
        s.get_proxy(up.id).await.unwrap().unwrap().status,
        ProxyStatus::Active
    );
    assert_eq!(
        s.get_proxy(dead.id).await.unwrap().unwrap().status,
        ProxyStatus::Inactive
    );
    assert!(traffic.requests.load(Ordering::SeqCst) >= 1);
}
