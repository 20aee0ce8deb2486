//! One module per Lua operation: each encodes its operation's arguments and
//! decodes its reply into a typed value (`FromRedisValue`), beside the `lua/`
//! file it runs. `storage.rs` and `maintenance.rs` only call these.
//!
//! The operations are the functions of one Redis Functions library
//! ([`LIBRARY`]): the key table and limits `src/redis/keys.rs` generates, the
//! shared `lua/_lib*.lua` files, then each operation's file as the body of its
//! function, assembled once per process from compile-time text (never from
//! input). Loading helpers once (`FUNCTION LOAD`) instead of with every
//! `EVALSHA` saves each call the ~100,000 instructions Redis spent defining them
//! (callgrind: an `EVALSHA` of the helpers alone cost 114k instructions, an
//! empty one 16k, an `FCALL` of an empty function 13k).
//!
//! The library and its functions are named after a hash of its text
//! (`lighthouse_<hash>`, `lh_<hash>_<operation>`), so processes of different
//! versions never call each other's code. A call that finds the library missing
//! (a restart without persistence, `FUNCTION FLUSH`, a new Cluster master)
//! loads it (`FUNCTION LOAD REPLACE`, to every master in a Cluster) and runs
//! again, so the storage recovers by itself.

use std::sync::LazyLock;

use redis::{
    ErrorKind, FromRedisValue, ParsingError, RedisError, ServerErrorKind, ToRedisArgs, Value,
};
use uuid::Uuid;

use super::conn::{Conn, Repeat};

pub(crate) mod acquire;
pub(crate) mod audit;
pub(crate) mod cleanup;
pub(crate) mod cycle;
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
pub(crate) mod session_read;
pub(crate) mod site_read;
pub(crate) mod site_report;
pub(crate) mod stats;
pub(crate) mod success_read;
pub(crate) mod ticket;
pub(crate) mod ticket_read;
pub(crate) mod wait;

/// One operation: its function name (without the library's prefix), its Lua
/// file, whether it writes nothing (then it is registered `no-writes` and
/// called with `FCALL_RO`: it runs when Redis is out of memory, and on replicas),
/// and whether a call may be sent again after its connection broke (see
/// [`Repeat`]): reads always, writes when [`Op::idempotent`] says so.
#[derive(Debug)]
pub(crate) struct Op {
    name: &'static str,
    file: &'static str,
    read_only: bool,
    repeat: Repeat,
}

impl Op {
    pub(crate) const fn new(name: &'static str, file: &'static str, read_only: bool) -> Self {
        Op {
            name,
            file,
            read_only,
            repeat: if read_only {
                Repeat::Always
            } else {
                Repeat::IfUnsent
            },
        }
    }

    /// A write that does what it did once however often it runs (an update, a
    /// release by lease id): its calls may be sent again after a broken
    /// connection.
    pub(crate) const fn idempotent(mut self) -> Self {
        self.repeat = Repeat::Always;
        self
    }

    /// A call of this operation, to fill with keys and arguments.
    pub(crate) fn call(&'static self) -> Call {
        Call {
            op: self,
            keys: Vec::new(),
            args: Vec::new(),
            repeat: self.repeat,
        }
    }
}

/// Every operation of the library.
const OPS: [&Op; 25] = [
    &acquire::OP,
    &cycle::OP,
    &rotate::OP,
    &release::OP,
    &extend::OP,
    &cleanup::OP,
    &stats::OP,
    &session_read::OP,
    &site_report::OP,
    &site_read::OP,
    &success_read::OP,
    &proxy_add::OP,
    &proxy_update::OP,
    &proxy_status::OP,
    &report::OP,
    &proxy_remove::OP,
    &proxy_read::OP,
    &lease_read::OP,
    &pool_create::OP,
    &pool_update::OP,
    &pool_remove::OP,
    &audit::OP,
    &wait::OP,
    &ticket::OP,
    &ticket_read::OP,
];

/// The library: its text, and the prefix of its function names.
pub(crate) struct Library {
    pub(crate) text: String,
    pub(crate) name: String,
    prefix: String,
}

/// The shared helpers and the library text, built on first use.
pub(crate) static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let mut body = String::new();
    body.push_str(&super::keys::lua_prelude());
    for lib in [
        include_str!("../../../lua/_lib.lua"),
        include_str!("../../../lua/_lib_acquire.lua"),
        include_str!("../../../lua/_lib_proxy.lua"),
        include_str!("../../../lua/_lib_fair.lua"),
    ] {
        body.push_str(lib);
        body.push('\n');
    }
    body.push_str(&super::keys::lua_fields());
    // One table of operations, not a local each: Lua 5.1 allows a chunk 200
    // locals, and the library's helpers use most of them.
    body.push_str("local OPS = {}\n");
    for op in OPS {
        body.push_str(&format!("OPS.{} = function()\n{}\nend\n", op.name, op.file));
    }
    // The hash of everything but the names it decides (redis-rs's SHA1 of a script).
    let hash = redis::Script::new(&body).get_hash()[..12].to_string();
    let prefix = format!("lh_{hash}_");
    let name = format!("lighthouse_{hash}");
    let mut text = format!("#!lua name={name}\n{body}");
    for op in OPS {
        let flags = if op.read_only {
            "{ 'no-writes' }"
        } else {
            "{}"
        };
        text.push_str(&format!(
            "redis.register_function{{ function_name = '{prefix}{n}', flags = {flags}, \
             callback = function(keys, args) reset(keys, args) return OPS.{n}() end }}\n",
            n = op.name
        ));
    }
    Library { text, name, prefix }
});

/// One call of an operation: `FCALL <function> <numkeys> <keys...> <args...>`.
pub(crate) struct Call {
    op: &'static Op,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
    repeat: Repeat,
}

impl Call {
    /// Adds a key (keys all go before the arguments, whatever the order of calls).
    pub(crate) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Lets this call be sent again after a broken connection (or not), when
    /// that depends on its arguments (an acquire whose requests all carry a
    /// request id).
    pub(crate) fn repeat(&mut self, repeat: Repeat) -> &mut Self {
        self.repeat = repeat;
        self
    }

    /// Adds an argument.
    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    fn cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd(if self.op.read_only {
            "FCALL_RO"
        } else {
            "FCALL"
        });
        cmd.arg(format!("{}{}", LIBRARY.prefix, self.op.name))
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    /// Runs the call; loads the library and runs it again when Redis does not
    /// have it.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut Conn<'_>,
    ) -> Result<T, RedisError> {
        let cmd = self.cmd();
        let before = conn.set_repeat(self.repeat);
        let out = match cmd.query_async(&mut *conn).await {
            Err(e) if library_missing(&e) => {
                // Loading is idempotent; the call then goes as it was going to.
                conn.set_repeat(Repeat::Always);
                let loaded = load(conn).await;
                conn.set_repeat(self.repeat);
                match loaded {
                    Ok(()) => cmd.query_async(&mut *conn).await,
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        conn.set_repeat(before);
        out
    }
}

/// `FUNCTION LOAD REPLACE` of the library (to every master of a Cluster).
pub(crate) async fn load(conn: &mut Conn<'_>) -> Result<(), RedisError> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&LIBRARY.text)
        .query_async::<String>(conn)
        .await
        .map(|_| ())
}

/// Whether Redis answered that it has no such function. Redis gives this error
/// no code of its own (it is `ERR Function not found`), so this is the one place
/// that reads an error's text.
fn library_missing(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && e.detail()
            .is_some_and(|d| d.starts_with("Function not found"))
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
}

/// The entries of a reply whose entries are strings (acquire.lua, rotate.lua):
/// the reply itself when it is one string, else the items of its array.
pub(crate) fn entries<'a>(v: &'a Value, what: &'static str) -> Result<Vec<&'a str>, ParsingError> {
    fn one<'a>(v: &'a Value, what: &'static str) -> Result<&'a str, ParsingError> {
        match v {
            Value::BulkString(b) => std::str::from_utf8(b).map_err(|e| bad(what, e)),
            Value::SimpleString(s) => Ok(s),
            other => Err(bad(what, format!("{other:?} is not text"))),
        }
    }
    match v {
        Value::Array(items) => items.iter().map(|i| one(i, what)).collect(),
        other => Ok(vec![one(other, what)?]),
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
