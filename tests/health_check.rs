//! HealthChecker against a local target and local proxies, all started by each
//! test on 127.0.0.1 (ephemeral ports, so the tests run in parallel with anything).
//! Nothing leaves the machine.
#![cfg(feature = "health-check")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lighthouse_lease::{
    AcquireOptions, AdminStorage, Error, HealthCheckConfig, HealthChecker, InMemoryStorage, Proxy,
    ProxyManager, ProxyPool, ProxyProtocol, ProxyStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What `/slow` waits before answering.
const SLOW_DELAY: Duration = Duration::from_millis(600);
/// Header the test proxy adds to every request it forwards.
const VIA: &str = "x-via-test-proxy";
/// `base64("us er:p@ss:w/rd")`, the credentials of the auth-requiring proxy.
const BASIC: &str = "Basic dXMgZXI6cEBzczp3L3Jk";

type Log = Arc<Mutex<Vec<String>>>;

fn log_len(log: &Log) -> usize {
    log.lock().unwrap().len()
}

/// Reads a request head (up to the blank line); `None` if the peer hung up or sent junk.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 16 * 1024 || stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    String::from_utf8(buf).ok()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The target: `/ok` 204, `/slow` 204 after [`SLOW_DELAY`], anything else 500.
/// Logs each request as `<path> via=<yes|no>`.
async fn start_target() -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let via = if header(&head, VIA).is_some() {
                    "yes"
                } else {
                    "no"
                };
                seen.lock().unwrap().push(format!("{path} via={via}"));
                let status = match path.as_str() {
                    "/ok" => "204 No Content",
                    "/slow" => {
                        tokio::time::sleep(SLOW_DELAY).await;
                        "204 No Content"
                    }
                    _ => "500 Internal Server Error",
                };
                let reply =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (base, log)
}

/// A forward HTTP proxy for absolute-form requests (`GET http://host:port/path`).
/// Logs each request as `<request line> auth=<Proxy-Authorization or ->`. With
/// `required_auth`, anything else than that header gets `407`.
async fn start_http_proxy(required_auth: Option<&'static str>) -> (u16, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                let request_line = head.lines().next().unwrap_or("").to_string();
                let auth = header(&head, "proxy-authorization");
                seen.lock()
                    .unwrap()
                    .push(format!("{request_line} auth={}", auth.unwrap_or("-")));
                if required_auth.is_some() && auth != required_auth {
                    let _ = client
                        .write_all(
                            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                              Proxy-Authenticate: Basic realm=\"test\"\r\n\
                              Content-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
                let mut parts = request_line.split(' ');
                let (Some("GET"), Some(url)) = (parts.next(), parts.next()) else {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let Some((authority, path)) = url
                    .strip_prefix("http://")
                    .and_then(|rest| rest.find('/').map(|i| rest.split_at(i)))
                else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(authority).await else {
                    let _ = client
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let forwarded = format!(
                    "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{VIA}: 1\r\nConnection: close\r\n\r\n"
                );
                if upstream.write_all(forwarded.as_bytes()).await.is_ok() {
                    let _ = tokio::io::copy(&mut upstream, &mut client).await;
                }
            });
        }
    });
    (port, log)
}

/// A SOCKS5 proxy that requires username/password auth (RFC 1928, RFC 1929) and
/// logs each CONNECT as `<user>:<password> -> <port>`.
async fn start_socks5_proxy() -> (u16, Log) {
    async fn serve(mut client: TcpStream, seen: Log) -> std::io::Result<()> {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await?;
        let mut methods = vec![0u8; head[1] as usize];
        client.read_exact(&mut methods).await?;
        if head[0] != 5 || !methods.contains(&2) {
            return client.write_all(&[5, 0xff]).await;
        }
        client.write_all(&[5, 2]).await?;
        let mut ver_len = [0u8; 2];
        client.read_exact(&mut ver_len).await?;
        let mut user = vec![0u8; ver_len[1] as usize];
        client.read_exact(&mut user).await?;
        let mut pass_len = [0u8; 1];
        client.read_exact(&mut pass_len).await?;
        let mut pass = vec![0u8; pass_len[0] as usize];
        client.read_exact(&mut pass).await?;
        client.write_all(&[1, 0]).await?;
        let mut req = [0u8; 4];
        client.read_exact(&mut req).await?;
        if req[1] != 1 || req[3] != 1 {
            return client.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await;
        }
        let mut addr = [0u8; 6];
        client.read_exact(&mut addr).await?;
        let port = u16::from_be_bytes([addr[4], addr[5]]);
        seen.lock().unwrap().push(format!(
            "{}:{} -> {port}",
            String::from_utf8_lossy(&user),
            String::from_utf8_lossy(&pass)
        ));
        let ip = std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
        assert!(ip.is_loopback(), "the checker asked for {ip}");
        let mut upstream = TcpStream::connect((ip, port)).await?;
        client.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok(())
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(serve(client, seen.clone()));
        }
    });
    (port, log)
}

/// A proxy that accepts connections and then either hangs up at once or never
/// answers. Returns its port and how many connections it accepted.
async fn start_broken_proxy(hang: bool) -> (u16, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(Mutex::new(0));
    let accepted = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            *accepted.lock().unwrap() += 1;
            if hang {
                held.push(stream);
            }
        }
    });
    (port, count)
}

/// A port on 127.0.0.1 with nothing listening.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn proxy_at(port: u16) -> Proxy {
    Proxy::builder(uuid::Uuid::new_v4(), "127.0.0.1", port)
        .build()
        .unwrap()
}

fn checker(target: &str, path: &str) -> HealthChecker {
    HealthChecker::new(
        HealthCheckConfig::new()
            .target_url(format!("{target}{path}"))
            .timeout(Duration::from_secs(5))
            .attempts(3),
    )
    .unwrap()
}

#[tokio::test]
async fn healthy_proxy_is_active_with_its_latency_and_the_request_went_through_it() {
    let (target, target_log) = start_target().await;
    let (port, proxy_log) = start_http_proxy(None).await;
    let proxy = proxy_at(port);

    let before = chrono::Utc::now();
    let result = checker(&target, "/ok").check(&proxy).await;

    assert_eq!(result.proxy_id, proxy.id);
    assert_eq!(result.status, ProxyStatus::Active);
    let latency = result.latency.expect("an active proxy has a latency");
    assert!(latency > Duration::ZERO && latency < Duration::from_secs(2));
    assert!(result.checked_at >= before && result.checked_at <= chrono::Utc::now());
    // One attempt, in absolute form through the proxy; the target saw only the proxy.
    assert_eq!(
        *proxy_log.lock().unwrap(),
        vec![format!("GET {target}/ok HTTP/1.1 auth=-")]
    );
    assert_eq!(*target_log.lock().unwrap(), vec!["/ok via=yes".to_string()]);
}

#[tokio::test]
async fn slow_answer_makes_the_proxy_slow() {
    let (target, target_log) = start_target().await;
    let (port, _) = start_http_proxy(None).await;
    let checker = HealthChecker::new(
        HealthCheckConfig::new()
            .target_url(format!("{target}/slow"))
            .timeout(Duration::from_secs(5))
            .slow_threshold(Duration::from_millis(250)),
    )
    .unwrap();

    let result = checker.check(&proxy_at(port)).await;

    assert_eq!(result.status, ProxyStatus::Slow);
    assert!(result.latency.unwrap() >= SLOW_DELAY);
    // A slow success ends the check: no second attempt.
    assert_eq!(
        *target_log.lock().unwrap(),
        vec!["/slow via=yes".to_string()]
    );
}

#[tokio::test]
async fn unexpected_status_makes_the_proxy_inactive_after_every_attempt() {
    let (target, target_log) = start_target().await;
    let (port, proxy_log) = start_http_proxy(None).await;

    let result = checker(&target, "/bad").check(&proxy_at(port)).await;

    assert_eq!(result.status, ProxyStatus::Inactive);
    assert_eq!(result.latency, None);
    assert_eq!(log_len(&proxy_log), 3, "three attempts through the proxy");
    assert_eq!(
        *target_log.lock().unwrap(),
        vec!["/bad via=yes".to_string(); 3]
    );
}

#[tokio::test]
async fn expected_statuses_are_configurable() {
    let (target, _) = start_target().await;
    let (port, _) = start_http_proxy(None).await;
    let checker = HealthChecker::new(
        HealthCheckConfig::new()
            .target_url(format!("{target}/bad"))
            .expected_statuses([500]),
    )
    .unwrap();
    assert_eq!(
        checker.check(&proxy_at(port)).await.status,
        ProxyStatus::Active
    );
    let checker = HealthChecker::new(
        HealthCheckConfig::new()
            .target_url(format!("{target}/ok"))
            .expected_statuses([200]),
    )
    .unwrap();
    assert_eq!(
        checker.check(&proxy_at(port)).await.status,
        ProxyStatus::Inactive
    );
}

#[tokio::test]
async fn proxy_down_is_inactive_and_the_target_is_never_reached_directly() {
    let (target, target_log) = start_target().await;

    let result = checker(&target, "/ok")
        .check(&proxy_at(closed_port().await))
        .await;

    assert_eq!(result.status, ProxyStatus::Inactive);
    assert_eq!(result.latency, None);
    assert_eq!(log_len(&target_log), 0, "no direct fallback to the target");
}

#[tokio::test]
async fn a_proxy_that_hangs_up_gets_exactly_the_configured_attempts() {
    let (target, target_log) = start_target().await;
    let (port, accepted) = start_broken_proxy(false).await;

    let result = checker(&target, "/ok").check(&proxy_at(port)).await;

    assert_eq!(result.status, ProxyStatus::Inactive);
    assert_eq!(*accepted.lock().unwrap(), 3);
    assert_eq!(log_len(&target_log), 0);
}

#[tokio::test]
async fn a_proxy_that_never_answers_times_out_on_each_attempt() {
    let (target, _) = start_target().await;
    let (port, accepted) = start_broken_proxy(true).await;
    let checker = HealthChecker::new(
        HealthCheckConfig::new()
            .target_url(format!("{target}/ok"))
            .timeout(Duration::from_millis(200))
            .attempts(2),
    )
    .unwrap();

    let start = Instant::now();
    let result = checker.check(&proxy_at(port)).await;

    assert_eq!(result.status, ProxyStatus::Inactive);
    assert_eq!(*accepted.lock().unwrap(), 2);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "took {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[tokio::test]
async fn credentials_are_sent_to_the_proxy_decoded() {
    let (target, target_log) = start_target().await;
    let (port, proxy_log) = start_http_proxy(Some(BASIC)).await;
    let good = Proxy::builder(uuid::Uuid::new_v4(), "127.0.0.1", port)
        .credentials("us er", "p@ss:w/rd")
        .build()
        .unwrap();
    assert!(good.url().contains("us%20er:p%40ss%3Aw%2Frd@"));

    let result = checker(&target, "/ok").check(&good).await;

    assert_eq!(result.status, ProxyStatus::Active);
    assert_eq!(
        *proxy_log.lock().unwrap(),
        vec![format!("GET {target}/ok HTTP/1.1 auth={BASIC}")]
    );
    assert_eq!(*target_log.lock().unwrap(), vec!["/ok via=yes".to_string()]);
}

#[tokio::test]
async fn a_proxy_refusing_the_credentials_is_inactive() {
    let (target, target_log) = start_target().await;
    let (port, proxy_log) = start_http_proxy(Some(BASIC)).await;
    let wrong = Proxy::builder(uuid::Uuid::new_v4(), "127.0.0.1", port)
        .credentials("us er", "wrong")
        .build()
        .unwrap();
    let anonymous = proxy_at(port);

    let checker = checker(&target, "/ok");
    assert_eq!(checker.check(&wrong).await.status, ProxyStatus::Inactive);
    assert_eq!(
        checker.check(&anonymous).await.status,
        ProxyStatus::Inactive
    );

    let log = proxy_log.lock().unwrap().clone();
    assert_eq!(log.len(), 6, "3 attempts each: {log:?}");
    assert!(log[..3]
        .iter()
        .all(|l| l.ends_with("auth=Basic dXMgZXI6d3Jvbmc=")));
    assert!(log[3..].iter().all(|l| l.ends_with("auth=-")));
    assert_eq!(log_len(&target_log), 0);
}

#[tokio::test]
async fn socks5_proxies_work_with_their_credentials() {
    let (target, target_log) = start_target().await;
    let (port, socks_log) = start_socks5_proxy().await;
    let proxy = Proxy::builder(uuid::Uuid::new_v4(), "127.0.0.1", port)
        .protocol(ProxyProtocol::Socks5)
        .credentials("me", "p@ss")
        .build()
        .unwrap();

    let result = checker(&target, "/ok").check(&proxy).await;

    assert_eq!(result.status, ProxyStatus::Active);
    let target_port = target.rsplit(':').next().unwrap();
    assert_eq!(
        *socks_log.lock().unwrap(),
        vec![format!("me:p@ss -> {target_port}")]
    );
    // Through a tunnel, so the target sees the checker's own request.
    assert_eq!(*target_log.lock().unwrap(), vec!["/ok via=no".to_string()]);
}

#[tokio::test]
async fn check_pool_applies_every_verdict_and_the_manager_stops_leasing_dead_proxies() {
    const POOL: &str = "health";
    let (target, _) = start_target().await;
    let (alive, proxy_log) = start_http_proxy(None).await;
    let dead = closed_port().await;

    let manager = ProxyManager::new(InMemoryStorage::new());
    let storage = manager.storage();
    let pool = storage
        .create_pool(ProxyPool::new(POOL).unwrap())
        .await
        .unwrap();
    let add = |port: u16, status: ProxyStatus| {
        let proxy = Proxy::builder(pool.id, "127.0.0.1", port)
            .status(status)
            .max_concurrency(1)
            .build()
            .unwrap();
        async move { storage.add_proxy(proxy).await.unwrap() }
    };
    let healthy = add(alive, ProxyStatus::Active).await;
    let down = add(dead, ProxyStatus::Active).await;
    let recovered = add(alive, ProxyStatus::Inactive).await;
    let banned = add(alive, ProxyStatus::Banned).await;

    let checker = HealthChecker::new(
        HealthCheckConfig::new()
            .target_url(format!("{target}/ok"))
            .timeout(Duration::from_secs(5))
            .concurrency(2),
    )
    .unwrap();
    let results = checker.check_pool(storage, POOL).await.unwrap();

    let verdicts: Vec<_> = results.iter().map(|r| (r.proxy_id, r.status)).collect();
    assert_eq!(
        verdicts,
        vec![
            (healthy.id, ProxyStatus::Active),
            (down.id, ProxyStatus::Inactive),
            (recovered.id, ProxyStatus::Active),
        ],
        "in pool order, the banned proxy skipped"
    );
    assert_eq!(log_len(&proxy_log), 2, "the banned proxy was not checked");
    for (id, status) in [
        (healthy.id, ProxyStatus::Active),
        (down.id, ProxyStatus::Inactive),
        (recovered.id, ProxyStatus::Active),
    ] {
        let stored = storage.get_proxy(id).await.unwrap().unwrap();
        assert_eq!(stored.status, status);
        let checked = results.iter().find(|r| r.proxy_id == id).unwrap();
        assert_eq!(stored.checked_at, Some(checked.checked_at));
    }
    let stored_banned = storage.get_proxy(banned.id).await.unwrap().unwrap();
    assert_eq!(stored_banned.status, ProxyStatus::Banned);
    assert_eq!(stored_banned.checked_at, None);

    // Only the two proxies that answered are leased; the dead one never is.
    let mut leased = Vec::new();
    while let Some(lease) = manager
        .acquire_proxy(POOL, AcquireOptions::new())
        .await
        .unwrap()
    {
        leased.push(lease.proxy_id);
    }
    leased.sort();
    let mut expected = vec![healthy.id, recovered.id];
    expected.sort();
    assert_eq!(leased, expected);
}

#[tokio::test]
async fn check_pool_of_an_unknown_pool_is_the_storage_error() {
    let checker = HealthChecker::new(HealthCheckConfig::new()).unwrap();
    let err = checker
        .check_pool(&InMemoryStorage::new(), "nope")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PoolNotFound { .. }), "{err:?}");
}

#[test]
fn defaults_and_bad_settings() {
    let config = HealthCheckConfig::default();
    assert_eq!(config.target_url, "https://www.gstatic.com/generate_204");
    assert_eq!(config.timeout, Duration::from_secs(10));
    assert_eq!(config.attempts, 2);
    assert_eq!(config.slow_threshold, Duration::from_secs(2));
    assert!(config.is_expected(200) && config.is_expected(204) && config.is_expected(299));
    assert!(!config.is_expected(302) && !config.is_expected(407) && !config.is_expected(500));
    assert!(HealthChecker::new(config).is_ok());

    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 300..=200;
    let bad = [
        HealthCheckConfig::new().target_url("not a url"),
        HealthCheckConfig::new().target_url("ftp://127.0.0.1/x"),
        HealthCheckConfig::new().expected_statuses([]),
        HealthCheckConfig::new().expected_statuses([42]),
        HealthCheckConfig::new().expected_status_range(reversed),
        HealthCheckConfig::new().timeout(Duration::ZERO),
        HealthCheckConfig::new().attempts(0),
        HealthCheckConfig::new().slow_threshold(Duration::ZERO),
        HealthCheckConfig::new().concurrency(0),
    ];
    for config in bad {
        let err = HealthChecker::new(config.clone()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_)),
            "{config:?} gave {err:?}"
        );
    }
}
