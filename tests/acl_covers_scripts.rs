//! The least-privilege ACL (`deploy/redis/users.acl`) lets the library's user
//! run every command the Lua scripts call: a script that starts calling a new
//! command must come with the ACL's update, or it would fail only in the
//! deployments that use the ACL.

use std::collections::BTreeSet;

#[test]
fn the_library_user_may_run_every_command_the_scripts_call() {
    let acl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/redis/users.acl"
    ))
    .expect("deploy/redis/users.acl");
    let user = acl
        .lines()
        .find(|l| l.starts_with("user lighthouse "))
        .expect("the lighthouse user");
    let allowed: BTreeSet<String> = user
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('+'))
        .map(str::to_ascii_lowercase)
        .collect();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/lua");
    let mut called = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("lua/") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("a script");
        for part in text.split("redis.call('").skip(1) {
            if let Some(name) = part.split('\'').next() {
                called.insert(name.to_ascii_lowercase());
            }
        }
    }
    assert!(called.len() > 20, "found the scripts' commands: {called:?}");
    let missing: Vec<_> = called.difference(&allowed).collect();
    assert!(
        missing.is_empty(),
        "deploy/redis/users.acl does not allow {missing:?}"
    );
}
