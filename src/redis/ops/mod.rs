//! One module per Lua script: each encodes its script's arguments and decodes
//! its reply into a typed value (`FromRedisValue`), beside the `lua/` file it
//! runs. `storage.rs` and `maintenance.rs` only call these.
//!
//! A script is `src/redis/keys.rs`'s generated prelude (the key table and the
//! limits), then the shared libraries it needs, then its own file, assembled
//! once per process: scripts are never built from input. They are invoked by
//! SHA1 (`EVALSHA`) through [`redis::Script`], which answers `NOSCRIPT` (a
//! restart, `SCRIPT FLUSH`, a failover) with `SCRIPT LOAD` and the same call again.

use redis::{ParsingError, Value};
use uuid::Uuid;

pub(crate) mod acquire;
pub(crate) mod audit;
pub(crate) mod cleanup;
pub(crate) mod extend;
pub(crate) mod lease_read;
pub(crate) mod pool_create;
pub(crate) mod pool_remove;
pub(crate) mod pool_update;
pub(crate) mod proxy_add;
pub(crate) mod proxy_read;
pub(crate) mod proxy_remove;
pub(crate) mod proxy_status;
pub(crate) mod proxy_update;
pub(crate) mod release;
pub(crate) mod report;
pub(crate) mod rotate;
pub(crate) mod stats;
pub(crate) mod wait;

/// Shared helpers every hot script needs.
pub(crate) const LIB: &str = include_str!("../../../lua/_lib.lua");
/// Selection and granting (acquire, rotate).
pub(crate) const LIB_ACQUIRE: &str = include_str!("../../../lua/_lib_acquire.lua");
/// Proxy JSON checks and rewrites (the scripts that write proxies).
pub(crate) const LIB_PROXY: &str = include_str!("../../../lua/_lib_proxy.lua");

/// A script's text: a `#!lua` shebang line first when its file has one, then the
/// generated prelude, the libraries and the file.
pub(crate) fn assemble(file: &str, libs: &[&str]) -> String {
    let (shebang, body) = match file.strip_prefix("#!") {
        Some(_) => file.split_once('\n').unwrap_or((file, "")),
        None => ("", file),
    };
    let mut out = String::new();
    if !shebang.is_empty() {
        out.push_str(shebang);
        out.push('\n');
    }
    out.push_str(&super::keys::lua_prelude());
    for lib in libs {
        out.push_str(lib);
        out.push('\n');
    }
    out.push_str(body);
    out
}

/// `static SCRIPT: LazyLock<Script> = script!("file.lua", LIB, ...);`
macro_rules! script {
    ($file:literal $(, $lib:expr)* $(,)?) => {
        std::sync::LazyLock::new(|| {
            redis::Script::new(&$crate::redis::ops::assemble(
                include_str!(concat!("../../../lua/", $file)),
                &[$($lib),*],
            ))
        })
    };
}
pub(crate) use script;

/// Every script, for [`crate::redis::RedisStorage::load_scripts`].
pub(crate) fn all() -> Vec<&'static redis::Script> {
    vec![
        &acquire::SCRIPT,
        &rotate::SCRIPT,
        &release::SCRIPT,
        &extend::SCRIPT,
        &cleanup::SCRIPT,
        &stats::SCRIPT,
        &proxy_add::SCRIPT,
        &proxy_update::SCRIPT,
        &proxy_status::SCRIPT,
        &report::SCRIPT,
        &proxy_remove::SCRIPT,
        &proxy_read::SCRIPT,
        &lease_read::SCRIPT,
        &pool_create::SCRIPT,
        &pool_update::SCRIPT,
        &pool_remove::SCRIPT,
        &audit::SCRIPT,
        &wait::SCRIPT,
    ]
}

/// Reads a script's reply array item by item.
pub(crate) struct Items<'a> {
    items: &'a [Value],
    at: usize,
    what: &'static str,
}

pub(crate) fn bad(what: &str, detail: impl std::fmt::Display) -> ParsingError {
    ParsingError::from(format!("unexpected reply from {what}: {detail}"))
}

impl<'a> Items<'a> {
    /// The items of an array reply.
    pub(crate) fn of(v: &'a Value, what: &'static str) -> Result<Self, ParsingError> {
        match v {
            Value::Array(items) => Ok(Items { items, at: 0, what }),
            other => Err(bad(what, format!("{other:?}"))),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn left(&self) -> usize {
        self.items.len().saturating_sub(self.at)
    }

    pub(crate) fn next(&mut self) -> Result<&'a Value, ParsingError> {
        let v = self
            .items
            .get(self.at)
            .ok_or_else(|| bad(self.what, "too few items"))?;
        self.at += 1;
        Ok(v)
    }

    pub(crate) fn text(&mut self) -> Result<String, ParsingError> {
        let what = self.what;
        match self.next()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|e| bad(what, e)),
            Value::SimpleString(s) => Ok(s.clone()),
            Value::Okay => Ok("OK".into()),
            other => Err(bad(what, format!("{other:?} is not text"))),
        }
    }

    pub(crate) fn int(&mut self) -> Result<i64, ParsingError> {
        let what = self.what;
        match self.next()? {
            Value::Int(n) => Ok(*n),
            Value::BulkString(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(what, "not an integer")),
            other => Err(bad(what, format!("{other:?} is not an integer"))),
        }
    }

    pub(crate) fn uint(&mut self) -> Result<u64, ParsingError> {
        let what = self.what;
        u64::try_from(self.int()?).map_err(|e| bad(what, e))
    }

    pub(crate) fn uuid(&mut self) -> Result<Uuid, ParsingError> {
        let what = self.what;
        Uuid::parse_str(&self.text()?).map_err(|e| bad(what, e))
    }

    /// The first item as a status word, without moving on.
    pub(crate) fn peek_text(&self) -> Option<String> {
        match self.items.get(self.at)? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// The reply of the scripts that write one proxy (update, status, report).
#[derive(Debug)]
pub(crate) enum ProxyReply {
    /// The proxy as stored now: its JSON, live leases and seq.
    Ok { json: String, leases: u64 },
    /// No such proxy in this pool (or no such pool).
    NotFound,
    /// The proxy belongs to another pool.
    PoolMismatch,
    /// The pool was written by another layout.
    Schema(String),
}

impl redis::FromRedisValue for ProxyReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let mut it = Items::of(&v, "a proxy script")?;
        match it.text()?.as_str() {
            "OK" => Ok(ProxyReply::Ok {
                json: it.text()?,
                leases: it.uint()?,
            }),
            "NOT_FOUND" => Ok(ProxyReply::NotFound),
            "POOL_MISMATCH" => Ok(ProxyReply::PoolMismatch),
            "SCHEMA" => Ok(ProxyReply::Schema(it.text().unwrap_or_default())),
            other => Err(bad("a proxy script", other)),
        }
    }
}
