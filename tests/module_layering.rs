//! The module layering the design keeps: `storage` may use `cooldown` (a
//! failure report carries its policy), never the other way round; `renew` builds
//! on `manager`, never the other way round. Shared limits live in a leaf module.

fn source(module: &str) -> String {
    let path = format!("{}/src/{module}.rs", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Whether `module`'s source names `other` as a crate path.
fn uses(module: &str, other: &str) -> bool {
    let src = source(module);
    src.contains(&format!("crate::{other}::")) || src.contains(&format!("crate::{other};"))
}

#[test]
fn storage_and_cooldown_do_not_depend_on_each_other_both_ways() {
    assert!(uses("storage", "cooldown"));
    assert!(
        !uses("cooldown", "storage"),
        "cooldown.rs uses crate::storage"
    );
}

#[test]
fn manager_does_not_depend_on_renew() {
    assert!(uses("renew", "manager"));
    assert!(!uses("manager", "renew"), "manager.rs uses crate::renew");
}

#[test]
fn limits_is_a_leaf() {
    assert!(!source("limits").contains("crate::"));
}
