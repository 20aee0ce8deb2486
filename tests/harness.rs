#![cfg(feature = "redis")]
//! The test harness's choice of a Redis (tests/support): `REDIS_URL`, then a
//! `redis-server` from PATH, then a `testcontainers` container; and the
//! container tier itself, which pings Redis through a container where a Docker
//! daemon answers and says it is skipped where none does.

mod support;

use std::cell::Cell;

use support::container::{RedisContainer, Unavailable};
use support::{pick, Picked, Sources, FORCE_CONTAINER};

/// Which tiers `pick` tried, in order.
#[derive(Default)]
struct Tried {
    spawn: Cell<u32>,
    container: Cell<u32>,
}

type Outcome = Result<Picked<&'static str, &'static str>, support::NoRedis>;

/// `pick` with stand-ins for `redis-server` and the container.
fn pick_with(
    sources: &Sources,
    spawn: Result<&'static str, String>,
    contain: Result<&'static str, Unavailable>,
    tried: &Tried,
) -> Outcome {
    pick(
        sources,
        || {
            tried.spawn.set(tried.spawn.get() + 1);
            spawn
        },
        || {
            tried.container.set(tried.container.get() + 1);
            contain
        },
    )
}

fn no_daemon() -> Unavailable {
    Unavailable::NoDaemon("no socket".into())
}

#[test]
fn the_tiers_are_redis_url_then_redis_server_then_a_container() {
    let url = Sources::from_vars(Some("redis://10.0.0.9:6379".into()), None);
    let none = Sources::from_vars(None, None);

    // 1. REDIS_URL wins; nothing is started.
    let t = Tried::default();
    let got = pick_with(&url, Ok("server"), Ok("container"), &t);
    assert!(matches!(got, Ok(Picked::External(u)) if u == "redis://10.0.0.9:6379"));
    assert_eq!((t.spawn.get(), t.container.get()), (0, 0));

    // 2. Without it, redis-server; no container is started.
    let t = Tried::default();
    let got = pick_with(&none, Ok("server"), Ok("container"), &t);
    assert!(matches!(got, Ok(Picked::Spawned("server"))));
    assert_eq!((t.spawn.get(), t.container.get()), (1, 0));

    // 3. Without redis-server, the container.
    let t = Tried::default();
    let got = pick_with(&none, Err("not on PATH".into()), Ok("container"), &t);
    assert!(matches!(got, Ok(Picked::Container("container"))));
    assert_eq!((t.spawn.get(), t.container.get()), (1, 1));

    // None: the error names the three ways and says why each failed.
    let t = Tried::default();
    let err = pick_with(&none, Err("not on PATH".into()), Err(no_daemon()), &t).unwrap_err();
    assert!(err.no_daemon());
    let text = err.to_string();
    for part in [
        "REDIS_URL",
        "redis-server",
        "Docker",
        "testcontainers",
        "not on PATH",
        "no Docker daemon answers (no socket)",
    ] {
        assert!(text.contains(part), "{part:?} missing from {text:?}");
    }
    let failed = Unavailable::Failed("pull refused".into());
    let err = pick_with(&none, Err("not on PATH".into()), Err(failed), &t).unwrap_err();
    assert!(!err.no_daemon(), "a daemon that answers is not skipped");

    // An empty REDIS_URL counts as unset.
    let empty = Sources::from_vars(Some("  ".into()), None);
    assert_eq!(empty, none);
}

#[test]
fn forcing_the_container_tier_skips_the_other_two() {
    for (value, forced) in [
        ("1", true),
        ("true", true),
        ("yes", true),
        ("0", false),
        ("", false),
        ("no", false),
    ] {
        let s = Sources::from_vars(None, Some(value.into()));
        assert_eq!(s.force_container, forced, "{FORCE_CONTAINER}={value:?}");
    }
    let forced = Sources::from_vars(Some("redis://10.0.0.9:6379".into()), Some("1".into()));
    let t = Tried::default();
    let got = pick_with(&forced, Ok("server"), Ok("container"), &t);
    assert!(matches!(got, Ok(Picked::Container("container"))));
    assert_eq!((t.spawn.get(), t.container.get()), (0, 1));
    let t = Tried::default();
    let err = pick_with(&forced, Ok("server"), Err(no_daemon()), &t).unwrap_err();
    assert_eq!(err.spawn, None, "redis-server was not tried");
    assert!(err.to_string().contains(FORCE_CONTAINER));
}

/// The real selection with the container tier forced (as
/// `LIGHTHOUSE_TEST_FORCE_CONTAINER=1` does): where a Docker daemon answers,
/// a `redis:7-alpine` container starts and answers PING; where none does, the
/// test says it skipped, and why, and passes.
#[test]
fn the_container_tier_pings_redis_or_is_skipped_without_docker() {
    let forced = Sources {
        force_container: true,
        ..Sources::from_env()
    };
    let container = match support::start_from(&forced) {
        Ok(Picked::Container(c)) => c,
        Ok(other) => panic!("forced to the container tier, the harness picked {other:?}"),
        Err(e) if e.no_daemon() => {
            println!(
                "SKIPPED the_container_tier_pings_redis_or_is_skipped_without_docker: \
                 container tier {}",
                e.container
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(container.url().starts_with("redis://"), "{container:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pong: String = rt.block_on(async {
        let mut conn = support::raw_conn(&container.url()).await;
        redis::cmd("PING").query_async(&mut conn).await.unwrap()
    });
    assert_eq!(pong, "PONG");
    // Dropped, the container is removed.
    let id = container.id().to_string();
    drop(container);
    let gone = rt.block_on(async {
        let docker = testcontainers::bollard::Docker::connect_with_defaults().unwrap();
        docker.inspect_container(&id, None).await.is_err()
    });
    assert!(gone, "container {id} is still there after the drop");
}

/// `RedisContainer::start` by itself, where no daemon answers, reports
/// `NoDaemon` (not a failure); where one does, it starts.
#[test]
fn without_a_daemon_the_container_tier_reports_no_daemon() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let daemon = rt.block_on(support::container::daemon_answers());
    match (daemon, RedisContainer::start()) {
        (Err(why), Err(Unavailable::NoDaemon(_))) => {
            println!("SKIPPED without_a_daemon_the_container_tier_reports_no_daemon: no Docker daemon ({why})");
        }
        (Err(why), other) => panic!("no daemon ({why}), yet the container tier said {other:?}"),
        (Ok(()), Ok(c)) => assert!(c.url().starts_with("redis://")),
        (Ok(()), Err(e)) => panic!("a Docker daemon answers, but: {e}"),
    }
}

/// Set in the child run of [`the_env_var_sends_the_harness_to_the_container`].
const CHILD: &str = "LIGHTHOUSE_HARNESS_CHILD";

/// Runs this test binary again with `LIGHTHOUSE_TEST_FORCE_CONTAINER=1` and a
/// `REDIS_URL` that must be ignored, for [`forced_from_the_environment`]: the
/// harness goes to the container tier, which pings Redis or is skipped without
/// a Docker daemon.
#[test]
fn the_env_var_sends_the_harness_to_the_container() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "forced_from_the_environment",
            "--exact",
            "--include-ignored",
            "--nocapture",
        ])
        .env(FORCE_CONTAINER, "1")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .env(CHILD, "1")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    let ran = stdout.contains("1 passed");
    let pinged = stdout.contains("LHH container PONG");
    let skipped = stdout.contains("SKIPPED forced_from_the_environment: container tier skipped");
    assert!(
        ran && (pinged || skipped),
        "the child neither pinged a container nor skipped:\n{stdout}\n{stderr}"
    );
    if skipped {
        println!(
            "SKIPPED the_env_var_sends_the_harness_to_the_container: no Docker daemon answers"
        );
    }
}

/// The child's side: the harness's own choice from the environment.
#[test]
#[ignore = "run by the_env_var_sends_the_harness_to_the_container"]
fn forced_from_the_environment() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let sources = Sources::from_env();
    assert!(sources.force_container, "{FORCE_CONTAINER} is read");
    match support::start_from(&sources) {
        Ok(Picked::Container(c)) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let pong: String = rt.block_on(async {
                let mut conn = support::raw_conn(&c.url()).await;
                redis::cmd("PING").query_async(&mut conn).await.unwrap()
            });
            println!("LHH container {pong}");
        }
        Ok(other) => panic!("forced to the container tier, the harness picked {other:?}"),
        Err(e) if e.no_daemon() => {
            println!(
                "SKIPPED forced_from_the_environment: container tier {}",
                e.container
            );
        }
        Err(e) => panic!("{e}"),
    }
}
