//! A small network made of Linux network namespaces, for tests that cross a
//! real network (`tests/partition.rs`).
//!
//! [`Lab::new`] makes a bridge in the test's own namespace and, per host, a
//! namespace joined to the bridge by a veth pair (`eth0` inside, on a private
//! `10.231.<n>.0/24`; the bridge itself is `.254`, so the test process reaches
//! every host). [`Lab::cut`] takes a host's bridge port down: the host's
//! `eth0` loses carrier and every packet it sends is dropped silently, as in a
//! partition (no error, no reset: calls time out). [`Lab::heal`] brings it
//! back. [`Lab::mgmt_link`] gives a host a second link to the test process, on
//! `10.232.<n>.0/24`, which a cut does not touch.
//!
//! Names carry a random run id and the subnet a per-process counter, so tests
//! running in parallel never share anything. Everything is removed on drop:
//! the processes left in the namespaces are killed, the namespaces and links
//! deleted; a watchdog shell does the same if the test process dies first.
//!
//! `Lab::new` returns `Err(reason)` where namespaces cannot be made (not
//! root, no `ip`, `unshare` denied); tests then skip with that reason.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `ip` with these arguments; `Err` carries its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One host of a [`Lab`]: a namespace with `eth0` on the bridge.
#[derive(Debug)]
struct Host {
    role: String,
    netns: String,
    ip: Ipv4Addr,
    /// Its veth's end in the test's namespace, a port of the bridge.
    port: String,
    /// The test's end of its management link, if it has one.
    mgmt: Option<(String, Ipv4Addr)>,
}

/// Namespaces on a bridge; see the module docs.
#[derive(Debug)]
pub struct Lab {
    id: String,
    net: u8,
    bridge: String,
    hosts: Vec<Host>,
    watchdog: Option<Child>,
}

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// A lab with one namespace per role (`"redis"`, `"a"`, ...); hosts get
    /// `10.231.<n>.1`, `.2`, ... in the order given.
    pub fn new(roles: &[&str]) -> Result<Lab, String> {
        if !cfg!(target_os = "linux") {
            return Err("network namespaces are Linux only".into());
        }
        Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("no `ip` command (iproute2): {e}"))?;
        let id = format!("{:06x}", fastrand::u32(..0x100_0000));
        let net = pick_net()?;
        let mut lab = Lab {
            id: id.clone(),
            net,
            bridge: format!("lh{id}br"),
            hosts: Vec::new(),
            watchdog: None,
        };
        let namespaces: Vec<String> = roles.iter().map(|r| format!("lh-{id}-{r}")).collect();
        let links: Vec<String> = (0..roles.len())
            .flat_map(|i| [format!("lh{id}{i}"), format!("lh{id}{i}m")])
            .chain([lab.bridge.clone()])
            .collect();
        lab.watchdog = spawn_watchdog(&namespaces, &links);
        // The first step tells whether namespaces can be made here at all.
        ip(&["netns", "add", &namespaces[0]]).map_err(|e| {
            format!("cannot make a network namespace (root and unshare are needed): {e}")
        })?;
        lab.hosts.push(Host {
            role: roles[0].to_string(),
            netns: namespaces[0].clone(),
            ip: Ipv4Addr::new(10, 231, net, 1),
            port: format!("lh{id}{}", 0),
            mgmt: None,
        });
        // `ip netns exec` needs a mount namespace of its own (it remounts /sys).
        let probe = Command::new("ip")
            .args(["netns", "exec", &namespaces[0], "true"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `ip netns exec`: {e}"))?;
        if !probe.status.success() {
            return Err(format!(
                "`ip netns exec` does not work here: {}",
                String::from_utf8_lossy(&probe.stderr).trim()
            ));
        }
        ip(&["link", "add", &lab.bridge, "type", "bridge"])?;
        let gateway = format!("10.231.{net}.254/24");
        ip(&["addr", "add", &gateway, "dev", &lab.bridge])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        for (i, role) in roles.iter().enumerate() {
            if i > 0 {
                ip(&["netns", "add", &namespaces[i]])?;
                lab.hosts.push(Host {
                    role: role.to_string(),
                    netns: namespaces[i].clone(),
                    ip: Ipv4Addr::new(10, 231, net, i as u8 + 1),
                    port: format!("lh{id}{i}"),
                    mgmt: None,
                });
            }
            let h = &lab.hosts[i];
            let addr = format!("{}/24", h.ip);
            ip(&[
                "link", "add", &h.port, "type", "veth", "peer", "name", "eth0", "netns", &h.netns,
            ])?;
            ip(&["link", "set", &h.port, "master", &lab.bridge])?;
            ip(&["link", "set", &h.port, "up"])?;
            let ns = h.netns.as_str();
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn host(&self, role: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.role == role)
            .unwrap_or_else(|| panic!("no host {role:?} in the lab"))
    }

    /// The host's address on the bridge.
    pub fn ip(&self, role: &str) -> Ipv4Addr {
        self.host(role).ip
    }

    /// The host's namespace name.
    pub fn netns(&self, role: &str) -> &str {
        &self.host(role).netns
    }

    /// A short id of this lab, unique per run (for keys, namespaces, paths).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `program` run inside the host's namespace (`ip netns exec`).
    pub fn command(&self, role: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns(role)]).arg(program);
        cmd
    }

    /// Cuts the host off: its bridge port goes down, so its `eth0` loses
    /// carrier and drops what it sends, without an error to the sender.
    pub fn cut(&self, role: &str) -> Result<(), String> {
        ip(&["link", "set", &self.host(role).port, "down"])
    }

    /// Undoes [`Lab::cut`].
    pub fn heal(&self, role: &str) -> Result<(), String> {
        ip(&["link", "set", &self.host(role).port, "up"])
    }

    /// A second link from the test process to the host (`mgmt0` inside,
    /// `10.232.<n>.<i>`), which [`Lab::cut`] leaves alone. Returns the host's
    /// address on it.
    pub fn mgmt_link(&mut self, role: &str) -> Result<Ipv4Addr, String> {
        let i = self
            .hosts
            .iter()
            .position(|h| h.role == role)
            .unwrap_or_else(|| panic!("no host {role:?} in the lab"));
        let (net, id) = (self.net, self.id.clone());
        let ours = format!("lh{id}{i}m");
        let theirs = Ipv4Addr::new(10, 232, net, i as u8 + 1);
        let ns = self.hosts[i].netns.clone();
        ip(&[
            "link", "add", &ours, "type", "veth", "peer", "name", "mgmt0", "netns", &ns,
        ])?;
        self.hosts[i].mgmt = Some((ours.clone(), theirs));
        ip(&["addr", "add", &format!("10.232.{net}.254/32"), "dev", &ours])?;
        ip(&["link", "set", &ours, "up"])?;
        ip(&["route", "add", &format!("{theirs}/32"), "dev", &ours])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{theirs}/24"),
            "dev",
            "mgmt0",
        ])?;
        ip(&["-n", &ns, "link", "set", "mgmt0", "up"])?;
        Ok(theirs)
    }

    fn teardown(&mut self) {
        for h in &self.hosts {
            kill_namespace_processes(&h.netns);
            let _ = ip(&["netns", "del", &h.netns]);
            // Namespaces die asynchronously; take the links down with us now.
            let _ = ip(&["link", "del", &h.port]);
            if let Some((ours, _)) = &h.mgmt {
                let _ = ip(&["link", "del", ours]);
            }
        }
        let _ = ip(&["link", "del", &self.bridge]);
        self.hosts.clear();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Kills (SIGKILL) whatever still runs in a namespace.
fn kill_namespace_processes(netns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill")
            .args(["-9", pid])
            .stderr(Stdio::null())
            .status();
    }
}

/// A third octet for `10.231.<n>.0/24` (and `10.232.<n>.0/24`) that no
/// interface here uses: a per-process counter from a random start.
fn pick_net() -> Result<u8, String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map_err(|e| format!("cannot run `ip addr`: {e}"))?;
    let used = String::from_utf8_lossy(&out.stdout).to_string();
    let start = std::process::id() % 250;
    for _ in 0..250 {
        let n = ((start + NEXT_NET.fetch_add(1, Ordering::Relaxed)) % 250 + 1) as u8;
        let taken = [format!(" 10.231.{n}."), format!(" 10.232.{n}.")]
            .iter()
            .any(|p| used.contains(p.as_str()));
        if !taken {
            return Ok(n);
        }
    }
    Err("no free 10.231.<n>.0/24 subnet".into())
}

/// Removes the lab's namespaces and links once the test process is gone.
/// (A namespace outlives its name while cut-off TCP sockets in it still
/// retransmit, and keeps its veth pair: the links are deleted by name.)
fn spawn_watchdog(namespaces: &[String], links: &[String]) -> Option<Child> {
    let me = std::process::id();
    let (namespaces, links) = (namespaces.join(" "), links.join(" "));
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; \
         for ns in {namespaces}; do for p in $(ip netns pids $ns 2>/dev/null); do kill -9 $p; done; \
         ip netns del $ns 2>/dev/null; done; \
         for l in {links}; do ip link del $l 2>/dev/null; done; true"
    );
    sh_watchdog(&script)
}

/// Runs `script` in the background, detached from the test's pipes.
fn sh_watchdog(script: &str) -> Option<Child> {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

// ---------------------------------------------------------------------------
// Processes.

/// A child process whose stdout lines and stderr are collected by threads;
/// killed on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` with piped stdout and stderr.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc, String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr,
        })
    }

    /// The rest of the first stdout line that contains `marker`, waiting until
    /// `deadline`. `Err` says what the process printed instead.
    pub fn wait_for(&mut self, marker: &str, deadline: Instant) -> Result<String, String> {
        if let Some(rest) = self
            .seen
            .iter()
            .find_map(|l| l.find(marker).map(|at| l[at + marker.len()..].to_string()))
        {
            return Ok(rest);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line
                        .find(marker)
                        .map(|at| line[at + marker.len()..].to_string());
                    self.seen.push(line);
                    if let Some(rest) = found {
                        return Ok(rest);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let d = self.describe();
                    return Err(format!(
                        "{} did not print {marker:?} in time
{d}",
                        self.name
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let d = self.describe();
                    return Err(format!(
                        "{} ended without printing {marker:?}
{d}",
                        self.name
                    ));
                }
            }
        }
    }

    /// Every stdout line containing `marker` so far (the rest of each line).
    pub fn all(&mut self, marker: &str) -> Vec<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen
            .iter()
            .filter_map(|l| l.find(marker).map(|at| l[at + marker.len()..].to_string()))
            .collect()
    }

    /// Waits for the process to exit, until `deadline`; `Err` if it is still
    /// running then (it is killed) or exited with a failure.
    pub fn wait_exit(&mut self, deadline: Instant) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    // Let the reader threads drain the pipes.
                    std::thread::sleep(Duration::from_millis(50));
                    return if status.success() {
                        Ok(())
                    } else {
                        {
                            let d = self.describe();
                            Err(format!(
                                "{} exited with {status}
{d}",
                                self.name
                            ))
                        }
                    };
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.child = None;
                    let d = self.describe();
                    return Err(format!(
                        "{} did not exit in time
{d}",
                        self.name
                    ));
                }
                Err(e) => return Err(format!("{}: {e}", self.name)),
            }
        }
    }

    /// Its stdout lines so far and its stderr, for a failure message.
    pub fn describe(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.seen.join("\n"),
            self.name,
            self.stderr.lock().unwrap_or_else(|e| e.into_inner())
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Redis servers.

/// A `redis-server` run by the test (inside a namespace, or on a Unix socket
/// only); killed on drop, its directory removed.
pub struct LabRedis {
    proc: Proc,
    dir: PathBuf,
    url: String,
    /// Kills the server and removes its directory if the test process dies.
    watchdog: Option<Child>,
}

impl LabRedis {
    /// `redis-server` inside the host's namespace, listening on its bridge
    /// address and `port` (the namespace is the server's own: no other server
    /// can hold the port). Ready once it answers PING through the bridge.
    pub fn in_namespace(lab: &Lab, role: &str, port: u16) -> Result<LabRedis, String> {
        let dir = temp_dir(&format!("lh-net-{}-{role}", lab.id()))?;
        let addr = lab.ip(role);
        let mut cmd = lab.command(role, "redis-server");
        cmd.args(["--bind", &addr.to_string()])
            .args(["--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            // Clients come from other namespaces, over the lab's private bridge.
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir);
        let proc = Proc::spawn(&format!("redis-server in {role}"), cmd)?;
        let mut server = LabRedis::new(proc, dir, format!("redis://{addr}:{port}"));
        let target = SocketAddr::from((addr, port));
        server.wait_ready(|| {
            TcpStream::connect_timeout(&target, Duration::from_millis(300))
                .ok()
                .is_some_and(ping)
        })?;
        Ok(server)
    }

    /// `redis-server` in the test's namespace on a Unix socket only: reachable
    /// from every namespace of the machine, whatever link is cut.
    pub fn on_unix_socket(name: &str) -> Result<LabRedis, String> {
        let dir = temp_dir(name)?;
        let sock = dir.join("redis.sock");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0"])
            .arg("--unixsocket")
            .arg(&sock)
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir);
        let proc = Proc::spawn(&format!("redis-server {name}"), cmd)?;
        let mut server = LabRedis::new(proc, dir, format!("redis+unix://{}", sock.display()));
        server.wait_ready(|| {
            std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .is_some_and(ping)
        })?;
        Ok(server)
    }

    fn new(proc: Proc, dir: PathBuf, url: String) -> LabRedis {
        let me = std::process::id();
        let watchdog = proc.child.as_ref().and_then(|c| {
            sh_watchdog(&format!(
                "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {} 2>/dev/null; rm -rf '{}'",
                c.id(),
                dir.display()
            ))
        });
        LabRedis {
            proc,
            dir,
            url,
            watchdog,
        }
    }

    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready() {
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer PING\n{}",
                    self.proc.describe()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Its URL (`redis://<addr>:<port>` or `redis+unix://<path>`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for LabRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.proc.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.proc.child = None;
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn temp_dir(name: &str) -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| format!("cannot make {}: {e}", d.display()))?;
    Ok(d)
}

/// Whether a Redis answers PING on this stream.
fn ping<S: Read + Write + SetTimeout>(mut s: S) -> bool {
    s.set_timeout(Duration::from_millis(500));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

trait SetTimeout {
    fn set_timeout(&self, t: Duration);
}
impl SetTimeout for TcpStream {
    fn set_timeout(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
    }
}
impl SetTimeout for std::os::unix::net::UnixStream {
    fn set_timeout(&self, t: Duration) {
        let _ = self.set_read_timeout(Some(t));
    }
}

/// One `GET path` over HTTP/1.1 with short timeouts: `(status, body)`, or
/// `None` when nothing answered.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}
