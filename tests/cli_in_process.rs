//! The CLI's commands, run in process on InMemoryStorage (the spawned-binary tests
//! against Redis are in cli.rs): output, JSON, import errors.

use clap::Parser;
use lighthouse_lease::cli::{manager, run, Cli};
use lighthouse_lease::{AdminStorage, InMemoryStorage, LeaseStorage, ProxyManager};

struct Shell {
    m: ProxyManager<InMemoryStorage>,
    dir: std::path::PathBuf,
}

impl Shell {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("lighthouse-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Shell {
            m: manager(InMemoryStorage::new()),
            dir,
        }
    }
    async fn sh(&self, line: &str) -> Result<String, String> {
        let args = std::iter::once("lighthouse").chain(line.split_whitespace());
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        run(&cli, &self.m, &mut out)
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8(out).unwrap())
    }
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

#[tokio::test]
async fn pool_proxy_acquire_release_round_trip() {
    let sh = Shell::new();
    assert!(sh
        .sh("pool create latam-residential --description LATAM")
        .await
        .unwrap()
        .starts_with("created pool latam-residential"));
    let out = sh.sh("proxy add --pool latam-residential --host 1.1.1.1 --port 8080 --max-concurrency 1 --country ar --username me --password secret").await.unwrap();
    assert!(out.contains("http://me:***@1.1.1.1:8080"), "{out}");
    assert!(out.contains("country=AR"), "{out}");
    let out = sh
        .sh("acquire --pool latam-residential --consumer worker-1 --country AR")
        .await
        .unwrap();
    assert!(out.contains("proxy http://me:secret@1.1.1.1:8080"), "{out}");
    let lease_id = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("lease ")
        .to_string();
    let err = sh.sh("acquire --pool latam-residential").await.unwrap_err();
    assert!(err.contains("no proxy available"), "{err}");
    let leases = sh.sh("leases --pool latam-residential").await.unwrap();
    assert!(
        leases.contains(&lease_id) && leases.contains("worker-1"),
        "{leases}"
    );
    assert_eq!(
        sh.sh(&format!("release {lease_id}")).await.unwrap().trim(),
        format!("{lease_id}: released")
    );
    assert_eq!(
        sh.sh(&format!("release {lease_id} --pool latam-residential"))
            .await
            .unwrap()
            .trim(),
        format!("{lease_id}: already_released")
    );
    let stats = sh.sh("stats").await.unwrap();
    assert_eq!(
        stats.trim(),
        "latam-residential: 1 proxies, 1 active, 1 available, 0 leased, 0 leases, 0 cooling, 0 banned"
    );
    sh.sh("proxy add --pool latam-residential --host 2.2.2.2 --port 8080 --status banned")
        .await
        .unwrap();
    let stats = sh.sh("stats").await.unwrap();
    assert_eq!(
        stats.trim(),
        "latam-residential: 2 proxies, 1 active, 1 available, 0 leased, 0 leases, 0 cooling, 1 banned"
    );
}

#[tokio::test]
async fn json_output_is_machine_readable() {
    let sh = Shell::new();
    sh.sh("pool create p1").await.unwrap();
    sh.sh("proxy add --pool p1 --host 10.0.0.1 --port 3128")
        .await
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&sh.sh("acquire --pool p1 --json").await.unwrap()).unwrap();
    assert_eq!(v["proxy_url"], "http://10.0.0.1:3128");
    assert_eq!(v["status"], "active");
    let v: serde_json::Value =
        serde_json::from_str(&sh.sh("--json stats --pool p1").await.unwrap()).unwrap();
    assert_eq!(v["p1"]["total_leases"], 1);
    let v: serde_json::Value =
        serde_json::from_str(&sh.sh("--json proxy list --pool p1").await.unwrap()).unwrap();
    assert_eq!(v[0]["current_leases"], 1);
}

#[tokio::test]
async fn import_reads_csv_json_and_jsonl() {
    let sh = Shell::new();
    sh.sh("pool create p1").await.unwrap();
    let csv = sh.file("a.csv", "host,port,protocol,max_concurrency,country,latitude,longitude\n1.1.1.1,8080,http,2,AR,-34.6,-58.4\n2.2.2.2,1080,socks5,,CL,,\n");
    assert_eq!(
        sh.sh(&format!("proxy import --pool p1 {csv}"))
            .await
            .unwrap()
            .trim(),
        "imported 2 proxies into p1"
    );
    let json = sh.file(
        "b.json",
        r#"[{"host":"3.3.3.3","port":80,"username":"u","password":"p"}]"#,
    );
    assert!(sh
        .sh(&format!("proxy import --pool p1 {json}"))
        .await
        .unwrap()
        .contains("imported 1"));
    let jsonl = sh.file("c.jsonl", "{\"host\":\"4.4.4.4\",\"port\":81}\n\n{\"host\":\"5.5.5.5\",\"port\":82,\"status\":\"banned\"}\n");
    assert!(sh
        .sh(&format!("proxy import --pool p1 {jsonl}"))
        .await
        .unwrap()
        .contains("imported 2"));
    let proxies = sh.m.storage().list_proxies(&pn("p1")).await.unwrap();
    assert_eq!(proxies.len(), 5);
    assert_eq!(proxies[0].max_concurrency, Some(2));
    assert_eq!(proxies[0].latitude, Some(-34.6));
    assert_eq!(proxies[1].max_concurrency, None);
    assert_eq!(proxies[1].url(), "socks5://2.2.2.2:1080");
}

#[tokio::test]
async fn a_bad_import_names_the_line_and_imports_nothing() {
    let sh = Shell::new();
    sh.sh("pool create p1").await.unwrap();
    let csv = sh.file(
        "bad.csv",
        "host,port\n1.1.1.1,8080\n2.2.2.2,70000\nbad host,80\n",
    );
    let err = sh
        .sh(&format!("proxy import --pool p1 {csv}"))
        .await
        .unwrap_err();
    assert!(
        err.contains("line 3: invalid proxy field `port`: 70000 is not in 1..=65535"),
        "{err}"
    );
    assert!(
        err.contains("and 1 more invalid records") && err.contains("nothing was imported"),
        "{err}"
    );
    assert!(sh
        .m
        .storage()
        .list_proxies(&pn("p1"))
        .await
        .unwrap()
        .is_empty());

    let out = sh
        .sh(&format!("proxy import --pool p1 {csv} --skip-invalid"))
        .await
        .unwrap();
    assert!(out.contains("imported 1 proxies"), "{out}");
    assert!(
        out.contains("skipped line 4: invalid proxy field `host`"),
        "{out}"
    );

    let json = sh.file(
        "bad.json",
        r#"[{"host":"1.1.1.1","port":1},{"host":"1.1.1.2","port":2,"colour":"red"}]"#,
    );
    let err = sh
        .sh(&format!("proxy import --pool p1 {json}"))
        .await
        .unwrap_err();
    assert!(err.contains("record 2: unknown field `colour`"), "{err}");
    let broken = sh.file("broken.json", "[{\"host\": \"1.1.1.1\",\n \"port\": }]");
    let err = sh
        .sh(&format!("proxy import --pool p1 {broken}"))
        .await
        .unwrap_err();
    assert!(err.contains("line 2: not a JSON array"), "{err}");
    let unknown = sh.file("proxies.txt", "x");
    let err = sh
        .sh(&format!("proxy import --pool p1 {unknown}"))
        .await
        .unwrap_err();
    assert!(err.contains("--format csv|json|jsonl"), "{err}");
    assert_eq!(
        sh.m.storage().list_proxies(&pn("p1")).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn errors_are_one_clear_line() {
    let sh = Shell::new();
    for (cmd, want) in [
        ("pool create bad{name}", "invalid pool name"),
        ("pool show nope", "pool \"nope\" does not exist"),
        ("pool delete nope", "does not exist"),
        ("proxy list --pool nope", "does not exist"),
        (
            "proxy remove 00000000-0000-0000-0000-000000000000",
            "proxy 00000000-0000-0000-0000-000000000000 does not exist",
        ),
        (
            "acquire --pool nope --radius-km 5",
            "radius_km is set without latitude",
        ),
        ("release 00000000-0000-0000-0000-000000000001", "no lease"),
    ] {
        let err = sh.sh(cmd).await.unwrap_err();
        assert!(err.contains(want), "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
    }
    assert!(sh
        .sh("proxy add --pool p --host h --port 99999")
        .await
        .unwrap_err()
        .contains("99999"));
}

#[tokio::test]
async fn bench_reports_cycles_and_percentiles_and_cleans_up() {
    let sh = Shell::new();
    let out = sh
        .sh("bench --concurrency 4 --duration 0.3 --proxies 50 --json")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["cycles"].as_u64().unwrap() > 0);
    assert!(v["cycles_per_sec"].as_f64().unwrap() > 0.0);
    let lat = v["latency_us"].as_array().unwrap();
    assert!(lat[0].as_u64() <= lat[3].as_u64());
    assert!(
        sh.m.storage().list_pools().await.unwrap().is_empty(),
        "the temporary pool is removed"
    );
}

/// `bench --rotate` loops on rotate_proxy: each cycle a rotate that released
/// the lease in hand and got the next, and the last lease is given back.
#[tokio::test]
async fn bench_rotate_counts_rotates_and_gives_the_last_lease_back() {
    let sh = Shell::new();
    sh.sh("pool create r").await.unwrap();
    for i in 0..3 {
        sh.sh(&format!("proxy add --pool r --host 10.0.0.{i} --port 80"))
            .await
            .unwrap();
    }
    let out = sh
        .sh("bench --pool r --concurrency 2 --duration 0.2 --rotate --json")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["cycles"].as_u64().unwrap() > 0);
    let stats =
        sh.m.storage()
            .pool_stats(&"r".try_into().unwrap())
            .await
            .unwrap();
    assert_eq!(
        stats.total_leases, 0,
        "every caller's last lease was released"
    );
}

#[tokio::test]
async fn pool_create_declares_indexes() {
    let sh = Shell::new();
    sh.sh("pool create eu --attributes country,city --orders latency")
        .await
        .unwrap();
    let out = sh.sh("pool show eu").await.unwrap();
    assert!(
        out.contains("indexes: attributes [country city], orders [load lat]"),
        "{out}"
    );
    sh.sh("pool create bare --attributes none").await.unwrap();
    let out = sh.sh("pool show bare").await.unwrap();
    assert!(
        out.contains("indexes: attributes [], orders [load]"),
        "{out}"
    );
    let err = sh
        .sh("pool create bad --attributes colour")
        .await
        .unwrap_err();
    assert!(err.contains("not an indexable attribute"), "{err}");
    // lowest_latency needs the latency order: the default pool says so clearly.
    sh.sh("pool create plain").await.unwrap();
    sh.sh("proxy add --pool plain --host 1.1.1.1 --port 80")
        .await
        .unwrap();
    let err = sh
        .sh("acquire --pool plain --selector lowest_latency")
        .await
        .unwrap_err();
    assert!(err.contains("latency order"), "{err}");
}

/// A pool name the test knows to be valid.
fn pn(name: &str) -> lighthouse_lease::PoolName {
    lighthouse_lease::PoolName::new(name).expect("a valid pool name")
}

#[tokio::test]
async fn acquire_in_a_session_and_show_the_proxy_it_keeps() {
    let sh = Shell::new();
    sh.sh("pool create p1").await.unwrap();
    for host in ["10.0.0.1", "10.0.0.2"] {
        sh.sh(&format!(
            "proxy add --pool p1 --host {host} --port 3128 --max-concurrency 4"
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        sh.sh("session cart-42 --pool p1").await.unwrap().trim(),
        "session cart-42: keeps no proxy"
    );
    let first = sh
        .sh("acquire --pool p1 --session cart-42 --session-ttl 600")
        .await
        .unwrap();
    assert!(first.contains("proxy http://10.0.0.1:3128"), "{first}");
    let again = sh.sh("acquire --pool p1 --session cart-42").await.unwrap();
    assert!(
        again.contains("proxy http://10.0.0.1:3128"),
        "the session keeps its proxy though 10.0.0.2 is idle: {again}"
    );
    let shown = sh.sh("session cart-42 --pool p1").await.unwrap();
    assert!(
        shown.starts_with("session cart-42: proxy ") && shown.contains("(10.0.0.1:3128) until "),
        "{shown}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&sh.sh("--json session cart-42 --pool p1").await.unwrap()).unwrap();
    assert_eq!(v["proxy"], "10.0.0.1:3128");
    let err = sh
        .sh("acquire --pool p1 --session-ttl 5")
        .await
        .unwrap_err();
    assert!(err.contains("--session"), "a TTL needs a session: {err}");
}

#[tokio::test]
async fn site_show_lists_rests_and_bans_and_lift_clears_them() {
    let sh = Shell::new();
    sh.sh("pool create p1").await.unwrap();
    for host in ["10.0.0.1", "10.0.0.2"] {
        sh.sh(&format!(
            "proxy add --pool p1 --host {host} --port 3128 --max-concurrency 4"
        ))
        .await
        .unwrap();
    }
    let proxies = sh.m.storage().list_proxies(&pn("p1")).await.unwrap();
    let x = proxies.iter().find(|p| p.host == "10.0.0.1").unwrap().id;
    sh.m.report_site_failure(&x, "shop.example", "403 from target")
        .await
        .unwrap();
    let shown = sh.sh("site show shop.example --pool p1").await.unwrap();
    assert!(
        shown.starts_with(&format!("{x} resting until "))
            && shown.contains("1 failures in a row, last: 403 from target"),
        "{shown}"
    );
    let out = sh
        .sh("acquire --pool p1 --site Shop.Example")
        .await
        .unwrap();
    assert!(
        out.contains("proxy http://10.0.0.2:3128"),
        "x rests for the site: {out}"
    );
    assert_eq!(
        sh.sh(&format!("site lift shop.example {x}"))
            .await
            .unwrap()
            .trim(),
        format!("{x}: lifted for shop.example")
    );
    assert_eq!(
        sh.sh("site show shop.example --pool p1")
            .await
            .unwrap()
            .trim(),
        "no proxy has a standing for shop.example"
    );
    let out = sh
        .sh("acquire --pool p1 --site shop.example")
        .await
        .unwrap();
    assert!(out.contains("proxy http://10.0.0.1:3128"), "lifted: {out}");
}

#[tokio::test]
async fn pool_create_with_a_rate_limit_rests_proxies_between_leases() {
    let sh = Shell::new();
    let out = sh
        .sh("pool create polite --rate-limit 10/60")
        .await
        .unwrap();
    assert!(out.starts_with("created pool polite"), "{out}");
    let shown = sh.sh("pool show polite").await.unwrap();
    assert!(
        shown.contains("rate limit: 10 leases per proxy per 60s (a rest of 6s after each)"),
        "{shown}"
    );
    sh.sh("proxy add --pool polite --host 10.0.0.1 --port 3128 --max-concurrency 4")
        .await
        .unwrap();
    sh.sh("acquire --pool polite").await.unwrap();
    let err = sh.sh("acquire --pool polite").await.unwrap_err();
    assert!(err.contains("no proxy available"), "it rests 6 s: {err}");
    let listed = sh.sh("proxy list --pool polite").await.unwrap();
    assert!(
        listed.contains(" resting-until="),
        "the rest shows: {listed}"
    );
    for bad in ["10", "0/60", "10/0", "x/60", "1/0.0004"] {
        let err = sh
            .sh(&format!("pool create p-{} --rate-limit {bad}", bad.len()))
            .await
            .unwrap_err();
        assert!(err.contains("rate limit"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_fair_wait_shows_in_tickets_and_pool_show_and_leaves_at_its_timeout() {
    let sh = Shell::new();
    sh.sh("pool create p1").await.unwrap();
    sh.sh("proxy add --pool p1 --host 10.0.0.1 --port 3128 --max-concurrency 1")
        .await
        .unwrap();
    assert_eq!(
        sh.sh("tickets --pool p1").await.unwrap().trim(),
        "no fair waiter in pool p1"
    );
    let held = sh.sh("acquire --pool p1").await.unwrap();
    assert!(held.contains("proxy http://10.0.0.1:3128"), "{held}");
    // A fair waiter of another host (here a task of this process) waits.
    let waiter = {
        let m = sh.m.clone();
        tokio::spawn(async move {
            m.acquire_proxy_wait(
                "p1",
                lighthouse_lease::AcquireOptions::new(),
                lighthouse_lease::WaitOptions::new(std::time::Duration::from_secs(30)).fair(true),
            )
            .await
        })
    };
    let mut listed = String::new();
    for _ in 0..100 {
        listed = sh.sh("tickets --pool p1").await.unwrap();
        if listed.contains("ticket") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        listed.trim().starts_with("1. ticket ") && listed.contains("honoured until "),
        "{listed}"
    );
    let shown = sh.sh("pool show p1").await.unwrap();
    assert!(
        shown.contains("fair waiters: 1 tickets queued, head #"),
        "{shown}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&sh.sh("--json tickets --pool p1").await.unwrap()).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert!(v[0]["number"].as_u64().is_some() && v[0]["honoured_until"].is_string());
    // A fair acquire from the CLI queues behind it and gives up at its timeout.
    let err = sh
        .sh("acquire --pool p1 --wait 1 --fair")
        .await
        .unwrap_err();
    assert!(err.contains("within 1 s"), "{err}");
    assert_eq!(
        sh.sh("--json tickets --pool p1")
            .await
            .unwrap()
            .trim()
            .matches("number")
            .count(),
        1,
        "the CLI's waiter left the queue at its timeout"
    );
    let err = sh.sh("acquire --pool p1 --fair").await.unwrap_err();
    assert!(err.contains("--wait"), "--fair needs --wait: {err}");
    waiter.abort();
}

#[tokio::test]
async fn pool_create_with_the_success_order_scores_and_best_success_picks_by_them() {
    let sh = Shell::new();
    let out = sh
        .sh("pool create scored --orders success --success-half-life 600 --exploration 0")
        .await
        .unwrap();
    assert!(out.starts_with("created pool scored"), "{out}");
    let shown = sh.sh("pool show scored").await.unwrap();
    assert!(
        shown.contains("success scoring: half-life 600s, exploration 0"),
        "{shown}"
    );
    for host in ["10.0.0.1", "10.0.0.2"] {
        sh.sh(&format!(
            "proxy add --pool scored --host {host} --port 3128"
        ))
        .await
        .unwrap();
    }
    let none = sh.sh("pool scores scored").await.unwrap();
    assert!(none.contains("no scores in pool scored"), "{none}");
    let proxies = sh.m.storage().list_proxies(&pn("scored")).await.unwrap();
    let second = proxies.iter().find(|p| p.host == "10.0.0.2").unwrap();
    sh.m.report_success(&second.id).await.unwrap();
    let got = sh
        .sh("acquire --pool scored --selector best_success")
        .await
        .unwrap();
    assert!(got.contains("10.0.0.2"), "the better score: {got}");
    let scores = sh.sh("pool scores scored").await.unwrap();
    assert!(
        scores.contains("10.0.0.2:3128") && scores.contains("score=0.667"),
        "{scores}"
    );
    let err = sh
        .sh("pool create plain --exploration 0.1")
        .await
        .unwrap_err();
    assert!(err.contains("success order"), "{err}");
    let err = sh
        .sh("pool create bad --orders success --exploration 2")
        .await
        .unwrap_err();
    assert!(err.contains("exploration"), "{err}");
}
