#![cfg(feature = "cli")]
//! The sweeper's read-only status page against a seeded private `redis-server`:
//! its HTML over plain HTTP (content, escaping, nothing that changes state), then
//! rendered in headless Chromium (Debian's `chromium`; `.ci/run` installs it):
//! the DOM Chromium built (`--dump-dom`) and a screenshot (`--screenshot`).
//! Without Chromium the browser half prints a SKIP line and the rest still runs.
//!
//! `LIGHTHOUSE_UPDATE_SCREENSHOT=1` copies the screenshot to
//! `docs/status-page.png` (the one the README shows).

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lighthouse_lease::redis::RedisStorage;
use lighthouse_lease::sweeper::http::{serve, Endpoint};
use lighthouse_lease::sweeper::metrics::prometheus_builder;
use lighthouse_lease::sweeper::{Sweeper, SweeperConfig};
use lighthouse_lease::{AcquireOptions, AdminStorage, Proxy, ProxyManager, ProxyPool, ProxyStatus};

const EVIL: &str = "<script>alert(1)</script> 403 from target";

/// Two pools: `latam-residential` (4 proxies × 2 slots, 3 leases by two
/// consumers, one proxy cooling down after a failure whose message is markup)
/// and `eu-datacenter` (3 proxies × 1 slot, one banned, one inactive, 1 lease).
async fn seed(config: lighthouse_lease::redis::RedisConfig) {
    let m = ProxyManager::builder(RedisStorage::new(config).unwrap())
        .auto_register_consumers(true)
        .build();
    let latam = m
        .storage()
        .create_pool(ProxyPool::new("latam-residential").unwrap())
        .await
        .unwrap();
    for i in 1..=4 {
        m.storage()
            .add_proxy(
                Proxy::builder(latam.id, format!("10.1.0.{i}"), 8000)
                    .max_concurrency(2)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    let eu = m
        .storage()
        .create_pool(ProxyPool::new("eu-datacenter").unwrap())
        .await
        .unwrap();
    for (i, status) in [
        ProxyStatus::Active,
        ProxyStatus::Banned,
        ProxyStatus::Inactive,
    ]
    .into_iter()
    .enumerate()
    {
        m.storage()
            .add_proxy(
                Proxy::builder(eu.id, format!("192.0.2.{}", i + 1), 3128)
                    .max_concurrency(1)
                    .status(status)
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    let hold = |who: &str| {
        AcquireOptions::new()
            .consumer(who)
            .duration(Duration::from_secs(3600))
    };
    let oldest = m
        .acquire_proxy("latam-residential", hold("crawler-alpha"))
        .await
        .unwrap()
        .unwrap();
    // Apart in time (Redis's clock, milliseconds), so that the order is known.
    tokio::time::sleep(Duration::from_millis(5)).await;
    m.acquire_proxy("latam-residential", hold("crawler-beta"))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    m.acquire_proxy("eu-datacenter", hold("crawler-beta"))
        .await
        .unwrap()
        .unwrap();
    let failing = m
        .acquire_proxy("latam-residential", hold("crawler-gamma"))
        .await
        .unwrap()
        .unwrap();
    let cooled = m.report_failure(&failing, EVIL).await.unwrap();
    assert!(cooled.cooldown_until.is_some());
    m.release_proxy(&failing).await.unwrap();
    assert_eq!(oldest.consumer_name, "crawler-alpha");
}

fn get(port: u16, method: &str, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(|name| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
}

/// Runs headless Chromium with `args` on `url`; its stdout. Killed after 90 s.
fn run_chromium(bin: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

#[test]
fn status_page_shows_pools_resting_proxies_oldest_leases_and_the_last_sweep() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = support::test_config();
    let recorder = prometheus_builder(Duration::from_secs(120)).build_recorder();
    let handle = recorder.handle();
    let (port, _stop) = rt.block_on(async {
        seed(config.clone()).await;
        let sweeper = Arc::new(Sweeper::new(
            RedisStorage::new(config.clone()).unwrap(),
            SweeperConfig::default(),
        ));
        let (tx, rx) = tokio::sync::watch::channel(false);
        sweeper.sweep_once(&rx).await.unwrap();
        assert_eq!(sweeper.audit_once().await.unwrap(), 0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(
            listener,
            Endpoint {
                sweeper,
                prometheus: handle,
                status_page: true,
            },
            rx,
        ));
        (port, tx)
    });

    // The HTML itself.
    let (code, head, html) = get(port, "GET", "/");
    assert_eq!(code, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    // Read-only and self-contained: no script, form, input, button, link, nor
    // anything loaded from elsewhere.
    for banned in [
        "<script", "<form", "<input", "<button", "<link", "<img", "<iframe", "href=", "src=",
        "url(",
    ] {
        assert!(!html.contains(banned), "{banned} on the page:\n{html}");
    }
    // The failure message is shown, escaped.
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; 403 from target"));
    // Nothing answers but GET.
    assert_eq!(get(port, "POST", "/").0, 405);

    // In a browser.
    let Some(bin) = chromium() else {
        eprintln!(
            "SKIP status_page_shows_pools_resting_proxies_oldest_leases_and_the_last_sweep \
             (browser half): no chromium on PATH (apt-get install chromium)"
        );
        return;
    };
    let profile = std::env::temp_dir().join(format!("lh-chromium-{}", std::process::id()));
    let url = format!("http://127.0.0.1:{port}/");
    let dom = run_chromium(&bin, &profile, &["--dump-dom"], &url);
    assert!(
        dom.contains("<table id=\"pools\">"),
        "no pools table:\n{dom}"
    );

    // Pools, in the DOM Chromium built: occupancy is live leases over slots.
    let row = |attr: &str, key: &str| -> String {
        let start = dom
            .find(&format!("{attr}=\"{key}\""))
            .unwrap_or_else(|| panic!("no row {attr}={key}:\n{dom}"));
        let end = dom[start..].find("</tr>").unwrap() + start;
        dom[start..end].to_string()
    };
    let latam = row("data-pool", "latam-residential");
    // 2 leases on 4 proxies × 2 slots (the cooling proxy is still active).
    assert!(latam.contains("width:25.0%"), "{latam}");
    assert!(latam.contains("class=\"pct\">25%<"), "{latam}");
    let eu = row("data-pool", "eu-datacenter");
    // 1 lease on the 1 active proxy's 1 slot: full.
    assert!(
        eu.contains("fill full") && eu.contains("class=\"pct\">100%<"),
        "{eu}"
    );

    // Resting proxies: banned, inactive, cooling (with until when).
    let resting = {
        let start = dom.find("<table id=\"resting\">").unwrap();
        let end = dom[start..].find("</table>").unwrap() + start;
        dom[start..end].to_string()
    };
    assert!(
        resting.contains("192.0.2.2:3128") && resting.contains(">banned<"),
        "{resting}"
    );
    assert!(
        resting.contains("192.0.2.3:3128") && resting.contains(">inactive<"),
        "{resting}"
    );
    assert!(
        resting.contains(">cooling<") && resting.contains("(in "),
        "{resting}"
    );
    assert!(resting.contains("&lt;script&gt;"), "{resting}");
    assert!(
        !dom.contains("<script"),
        "markup from the storage became an element"
    );

    // Oldest leases first, with their consumers.
    let leases = {
        let start = dom.find("<table id=\"leases\">").unwrap();
        let end = dom[start..].find("</table>").unwrap() + start;
        dom[start..end].to_string()
    };
    let consumers: Vec<&str> = leases
        .match_indices("class=\"consumer\">")
        .map(|(i, m)| {
            let rest = &leases[i + m.len()..];
            &rest[..rest.find('<').unwrap()]
        })
        .collect();
    assert_eq!(consumers, ["crawler-alpha", "crawler-beta", "crawler-beta"]);

    // The sweeper's own state.
    assert!(
        dom.contains("<dd id=\"redis\"><span class=\"ok\">up</span>"),
        "{dom}"
    );
    let last_sweep = {
        let start = dom.find("id=\"last-sweep\">").unwrap();
        &dom[start..start + dom[start..].find("</dd>").unwrap()]
    };
    assert!(
        last_sweep.contains(" ago)") && last_sweep.contains("reclaimed 0"),
        "{last_sweep}"
    );
    assert!(
        dom.contains("id=\"last-audit\">") && dom.contains("repaired 0"),
        "{dom}"
    );

    // A screenshot.
    let shot = profile.with_extension("png");
    run_chromium(
        &bin,
        &profile,
        &[
            "--window-size=1100,1000",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
    if std::env::var_os("LIGHTHOUSE_UPDATE_SCREENSHOT").is_some() {
        let to = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&shot, &to).unwrap();
        eprintln!("wrote {}", to.display());
    }
    let _ = std::fs::remove_file(&shot);
    let _ = std::fs::remove_dir_all(&profile);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The GET `/` status code of a `lighthouse-sweeper` started with `extra`.
fn binary_root_status(extra: &[&str]) -> u16 {
    let (url, ns) = (support::redis_url(), support::unique_namespace());
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lighthouse-sweeper"))
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("REDIS_URL", url)
        .env("LIGHTHOUSE_NAMESPACE", ns)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run lighthouse-sweeper");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "no listener");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _, _) = get(port, "GET", "/");
    let _ = child.kill();
    let _ = child.wait();
    code
}

#[test]
fn the_binary_serves_the_page_only_with_status_page() {
    assert_eq!(binary_root_status(&[]), 404);
    assert_eq!(binary_root_status(&["--status-page"]), 200);
}
