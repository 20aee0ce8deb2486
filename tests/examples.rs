#![cfg(feature = "redis")]
//! The examples run as a user runs them: the quickstart in memory and on Redis
//! tells the same story; the fleet example holds its limits.

mod support;

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/<name>` (cargo builds examples before integration tests).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

fn run(name: &str, redis: Option<&str>) -> String {
    let mut cmd = Command::new(example(name));
    cmd.env_remove("REDIS_URL");
    if let Some(url) = redis {
        cmd.env("REDIS_URL", url);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run example {name}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{name} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The story, without ids and times.
fn story(out: &str) -> Vec<String> {
    out.lines()
        .skip(1) // "storage: ..."
        .map(|l| {
            l.split_whitespace()
                .map(|w| {
                    if w.len() >= 32 && w.contains('-') || w.contains(':') && w.len() == 8 {
                        "_"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn quickstart_tells_the_same_story_in_memory_and_on_redis() {
    let memory = run("quickstart", None);
    assert!(memory.starts_with("storage: in memory"));
    for want in [
        "leased with country=AR source=oxylabs -> http://1.1.1.1:8080",
        "all slots in use: acquire_proxy returned None",
        "release again -> already_released",
        "Expired leases released: 1",
        "stats: 3 proxies, 3 available, 0 leases",
    ] {
        assert!(memory.contains(want), "missing {want:?} in\n{memory}");
    }
    let redis = run("quickstart", Some(&support::redis_url()));
    assert!(redis.starts_with("storage: Redis"));
    assert_eq!(story(&memory), story(&redis));
}

#[test]
fn fleet_holds_its_limits() {
    let out = run("fleet", Some(&support::redis_url()));
    assert!(out.contains("OK"), "{out}");
    let without = run("fleet", None);
    assert!(without.contains("REDIS_URL"), "{without}");
}
