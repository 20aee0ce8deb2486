//! A private `redis-server` for tests: spawned from PATH on a free loopback
//! port, without persistence, and killed when dropped (or, for a server shared
//! through a `static`, when the test process exits: a small watchdog shell
//! process kills it once the test binary is gone, since statics are never dropped).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process owned by the tests.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    watchdog: Option<Child>,
    port: u16,
    /// The empty working directory made for it, unless the test gave `--dir`.
    dir: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// Spawns `redis-server` from PATH; `Err` says why it could not.
    pub fn spawn() -> Result<RedisServer, String> {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().map_err(|e| format!("no free loopback port: {e}"))?;
            match Self::spawn_on(port) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Spawns `redis-server` on this port (to restart one on the port it had).
    #[allow(dead_code)]
    pub fn spawn_on(port: u16) -> Result<RedisServer, String> {
        Self::spawn_with(port, &["--appendonly", "no"])
    }

    /// A free loopback port for [`RedisServer::spawn_with`].
    #[allow(dead_code)]
    pub fn free_port() -> u16 {
        free_port().unwrap_or_else(|e| panic!("no free loopback port: {e}"))
    }

    /// Spawns `redis-server` on this port without RDB snapshots, with extra
    /// arguments (`--appendonly yes --dir D`, `--replicaof 127.0.0.1 P`, ...).
    pub fn spawn_with(port: u16, extra: &[&str]) -> Result<RedisServer, String> {
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn_args(port, &args, true)
    }

    /// Spawns a TLS-only `redis-server`: `extra` must set `--tls-port <port>`,
    /// `--port 0` and the certificate files. Ready when the port accepts TCP.
    #[allow(dead_code)]
    pub fn spawn_with_tls(port: u16, extra: &[&str]) -> Result<RedisServer, String> {
        let args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        Self::spawn_args(port, &args, false)
    }

    fn spawn_args(port: u16, args: &[String], plain: bool) -> Result<RedisServer, String> {
        // An empty working directory of its own: started in the crate's, it
        // would load any dump.rdb lying there (and, loading one as a primary,
        // keep a replication backlog that every write then feeds).
        let dir = if args.iter().any(|a| a == "--dir") {
            None
        } else {
            let d = std::env::temp_dir().join(format!(
                "lh-redis-{}-{port}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&d).map_err(|e| format!("cannot make {}: {e}", d.display()))?;
            Some(d)
        };
        let mut cmd = Command::new("redis-server");
        if let Some(d) = &dir {
            cmd.arg("--dir").arg(d);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--protected-mode", "yes"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server from PATH: {e}"))?;
        let mut server = RedisServer {
            child,
            watchdog: None,
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = if plain {
                ping(port)
            } else {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            };
            if ready {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server on port {port} exited: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {port} did not answer PING"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server.watchdog = spawn_watchdog(server.child.id());
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    #[allow(dead_code)]
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Whether a Redis answers `PING` on this loopback port.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Kills the server when this test process is gone.
fn spawn_watchdog(server_pid: u32) -> Option<Child> {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill {server_pid} 2>/dev/null"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}
