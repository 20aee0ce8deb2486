//! The Lua scripts, one per state-changing operation (files in `lua/`).
//!
//! Each script is `lua/_lib.lua` (shared helpers; plus `lua/_lib_proxy.lua` for
//! the two scripts that write proxy fields) followed by the operation's file,
//! joined at compile time: scripts are never built from input. They are
//! invoked by SHA1 (`EVALSHA`) through [`redis::Script`], whose
//! `ScriptInvocation::invoke_async` answers a `NOSCRIPT` error (Redis restarted,
//! `SCRIPT FLUSH`, a failover to a replica that never saw the script) by sending
//! `SCRIPT LOAD` and then the same `EVALSHA` again on the same connection, so the
//! storage recovers by itself when Redis has lost its scripts.

use std::sync::LazyLock;

use redis::Script;

macro_rules! lua_script {
    ($(#[$doc:meta])* $name:ident, $file:literal) => {
        $(#[$doc])*
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../../lua/_lib.lua"),
                "\n",
                include_str!(concat!("../../lua/", $file))
            ))
        });
    };
    ($(#[$doc:meta])* $name:ident, $file:literal, with proxy helpers) => {
        $(#[$doc])*
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../../lua/_lib.lua"),
                "\n",
                include_str!("../../lua/_lib_proxy.lua"),
                "\n",
                include_str!(concat!("../../lua/", $file))
            ))
        });
    };
}

lua_script!(
    /// Reclaim expired leases, select, count and record a lease.
    ACQUIRE, "acquire.lua"
);
lua_script!(
    /// Release a lease at most once.
    RELEASE, "release.lua"
);
lua_script!(
    /// Renew a live lease.
    EXTEND, "extend.lua"
);
lua_script!(
    /// Expire one pool's due leases, in a bounded batch.
    CLEANUP, "cleanup.lua"
);
lua_script!(
    /// Add proxies to one pool, all or none.
    PROXY_ADD, "proxy_add.lua", with proxy helpers
);
lua_script!(
    /// Replace a proxy's fields and re-index it.
    PROXY_UPDATE, "proxy_update.lua", with proxy helpers
);
lua_script!(
    /// Set a proxy's status (and `checked_at` for a health result).
    PROXY_STATUS, "proxy_status.lua"
);
lua_script!(
    /// Remove a proxy and its index entries.
    PROXY_REMOVE, "proxy_remove.lua"
);
lua_script!(
    /// Create a pool.
    POOL_CREATE, "pool_create.lua"
);
lua_script!(
    /// Update a pool's description.
    POOL_UPDATE, "pool_update.lua"
);
lua_script!(
    /// Remove a pool in bounded batches.
    POOL_REMOVE, "pool_remove.lua"
);
lua_script!(
    /// Record a success or a failure: cooldown and ban.
    REPORT, "report.lua"
);
lua_script!(
    /// Compare proxies' lease counters with their live leases and repair drift.
    AUDIT, "audit.lua"
);

/// Read a pool's stats; read-only (`#!lua flags=no-writes`), so it runs when
/// Redis is out of memory. Standalone: a shebang must be the script's first line.
pub(crate) static STATS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/stats.lua")));

/// Every script, for [`crate::redis::RedisStorage::load_scripts`].
pub(crate) fn all() -> [&'static Script; 14] {
    [
        &ACQUIRE,
        &RELEASE,
        &EXTEND,
        &CLEANUP,
        &PROXY_ADD,
        &PROXY_UPDATE,
        &PROXY_STATUS,
        &PROXY_REMOVE,
        &POOL_CREATE,
        &POOL_UPDATE,
        &POOL_REMOVE,
        &AUDIT,
        &REPORT,
        &STATS,
    ]
}
