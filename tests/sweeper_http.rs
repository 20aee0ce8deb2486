#![cfg(feature = "cli")]
//! The sweeper's HTTP endpoint (axum) and exporter (`metrics-exporter-prometheus`),
//! in process against a private `redis-server`: `/metrics` after a known
//! sequence of operations carries the sweeper's counters and gauges and the
//! library's metrics with their values, latencies as histograms with buckets,
//! and the pool gauges (cooling and banned proxies too);
//! `/healthz` is 503 before the first sweep and 200 after.

mod support;

use std::time::Duration;

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::sweeper::http::{serve, Endpoint};
use lighthouse_lease::sweeper::metrics::prometheus_builder;
use lighthouse_lease::sweeper::{Sweeper, SweeperConfig};
use lighthouse_lease::{AcquireOptions, AdminStorage, Proxy, ProxyManager, ProxyPool, ProxyStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `(status, head, body)` of one request (async: the server runs on this thread).
async fn request(port: u16, method: &str, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    // The server closes the connection after the response.
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the server closed the connection")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

/// The value of the sample `name{labels}` (labels in any order), if present.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let mut have: Vec<&str> = rest.split(',').filter(|s| !s.is_empty()).collect();
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        have.sort();
        want.sort();
        (have == want).then(|| value.parse().ok())?
    })
}

#[tokio::test]
async fn metrics_after_a_known_sequence_carry_the_sweepers_and_the_librarys_values() {
    // A recorder for this thread only (the test runtime is current-thread), with
    // the binary's exporter settings.
    let recorder = prometheus_builder(Duration::from_secs(120)).build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let config = support::test_config();
    let manager = ProxyManager::new(RedisStorage::new(config.clone()).unwrap());
    let pool = manager
        .storage()
        .create_pool(ProxyPool::new("p1").unwrap())
        .await
        .unwrap();
    let mut proxies = Vec::new();
    for i in 1..=3 {
        let added = manager
            .storage()
            .add_proxy(
                Proxy::builder(pool.id, format!("10.0.0.{i}"), 80)
                    .max_concurrency(1)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        proxies.push(added);
    }
    let sweeper = std::sync::Arc::new(Sweeper::new(
        RedisStorage::new(config).unwrap(),
        SweeperConfig::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(
        listener,
        Endpoint {
            sweeper: sweeper.clone(),
            prometheus: handle,
            status_page: false,
        },
        stop_rx.clone(),
    ));

    // Before any sweep: unhealthy, and the counters are already there at zero.
    let (code, _, body) = request(port, "GET", "/healthz").await;
    assert_eq!(
        (code, body.as_str()),
        (503, "unhealthy: no sweep has completed yet\n")
    );
    let (_, _, body) = request(port, "GET", "/metrics").await;
    assert_eq!(
        sample(&body, "lighthouse_sweeper_errors_total", &[]),
        Some(0.0)
    );
    assert_eq!(sample(&body, "lighthouse_sweeper_redis_up", &[]), Some(0.0));

    // Two 1 s leases that will expire, one that will not, and an acquire that
    // finds nothing.
    let short = AcquireOptions::new().duration(Duration::from_secs(1));
    for _ in 0..2 {
        manager
            .acquire_proxy("p1", short.clone())
            .await
            .unwrap()
            .unwrap();
    }
    let long = AcquireOptions::new().duration(Duration::from_secs(600));
    let kept = manager
        .acquire_proxy("p1", long.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(manager.acquire_proxy("p1", long).await.unwrap().is_none());

    // Sweep until the two expired leases are reclaimed (Redis's clock: real time).
    let mut reclaimed = 0;
    let mut sweeps = 0;
    for _ in 0..100 {
        let r = sweeper.sweep_once(&stop_rx).await.unwrap();
        sweeps += 1;
        reclaimed += r.reclaimed;
        if reclaimed >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(reclaimed, 2);

    let (code, head, body) = request(port, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let p1 = [("pool", "p1")];
    for (name, labels, want) in [
        ("lighthouse_sweeper_leases_reclaimed_total", &p1[..], 2.0),
        ("lighthouse_sweeper_sweeps_total", &[][..], sweeps as f64),
        ("lighthouse_sweeper_errors_total", &[], 0.0),
        ("lighthouse_sweeper_redis_up", &[], 1.0),
        (
            "lighthouse_sweeper_sweep_duration_seconds_count",
            &[],
            sweeps as f64,
        ),
        ("lighthouse_pool_active_leases", &p1, 1.0),
        ("lighthouse_pool_proxies", &p1, 3.0),
        ("lighthouse_pool_available_proxies", &p1, 2.0),
        ("lighthouse_pool_active_proxies", &p1, 3.0),
        ("lighthouse_pool_leased_proxies", &p1, 1.0),
        ("lighthouse_pool_cooling_proxies", &p1, 0.0),
        ("lighthouse_pool_banned_proxies", &p1, 0.0),
        (
            "lighthouse_acquire_total",
            &[("pool", "p1"), ("outcome", "leased")],
            3.0,
        ),
        (
            "lighthouse_acquire_total",
            &[("pool", "p1"), ("outcome", "none")],
            1.0,
        ),
        // A histogram with buckets (the dashboard's histogram_quantile needs them).
        (
            "lighthouse_acquire_duration_seconds_bucket",
            &[("pool", "p1"), ("le", "+Inf")],
            4.0,
        ),
        ("lighthouse_acquire_duration_seconds_count", &p1, 4.0),
    ] {
        assert_eq!(
            sample(&body, name, labels),
            Some(want),
            "{name}{labels:?} in\n{body}"
        );
    }
    assert!(body.contains("# TYPE lighthouse_acquire_duration_seconds histogram"));
    assert!(body.contains("# TYPE lighthouse_sweeper_last_sweep_duration_seconds gauge"));

    // Releasing shows up as the library's counter, next to the sweeper's.
    manager.release_proxy(&kept).await.unwrap();
    let (_, _, body) = request(port, "GET", "/metrics").await;
    assert_eq!(
        sample(
            &body,
            "lighthouse_release_total",
            &[("pool", "p1"), ("outcome", "released")]
        ),
        Some(1.0),
        "{body}"
    );

    // One proxy cools down (the default policy: 30 s less at most 20 % jitter),
    // one is banned by failures in a row (the default threshold, 5; the ban
    // ends its cooldown), one by the status API: the next sweep's gauges say so.
    manager
        .report_failure(&proxies[0], "timeout")
        .await
        .unwrap();
    for _ in 0..5 {
        manager.report_failure(&proxies[1], "403").await.unwrap();
    }
    manager
        .storage()
        .set_proxy_status(proxies[2].id, ProxyStatus::Banned)
        .await
        .unwrap();
    sweeper.sweep_once(&stop_rx).await.unwrap();
    let (_, _, body) = request(port, "GET", "/metrics").await;
    for (name, want) in [
        ("lighthouse_pool_cooling_proxies", 1.0),
        ("lighthouse_pool_banned_proxies", 2.0),
        ("lighthouse_pool_proxies", 3.0),
        ("lighthouse_pool_active_proxies", 1.0),
        ("lighthouse_pool_available_proxies", 0.0),
        ("lighthouse_pool_active_leases", 0.0),
    ] {
        assert_eq!(sample(&body, name, &p1), Some(want), "{name} in\n{body}");
    }
    assert!(body.contains("# TYPE lighthouse_pool_cooling_proxies gauge"));
    assert!(body.contains("# TYPE lighthouse_pool_banned_proxies gauge"));

    assert_eq!(
        request(port, "GET", "/healthz").await.0,
        200,
        "healthy after a sweep"
    );
    assert_eq!(request(port, "GET", "/nope").await.0, 404);
    assert_eq!(request(port, "POST", "/metrics").await.0, 405);
    // The status page is off unless asked for.
    assert_eq!(request(port, "GET", "/").await.0, 404);

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops on shutdown")
        .unwrap()
        .unwrap();
}
