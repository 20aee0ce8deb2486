//! The harness's last tier: Redis in a `redis:7-alpine` container, started with
//! the `testcontainers` crate, for machines with neither `REDIS_URL` nor
//! `redis-server` but with a Docker daemon.
//!
//! Where no Docker daemon answers, [`RedisContainer::start`] says so
//! ([`Unavailable::NoDaemon`]) and the tier is skipped with a clear line.

use std::fmt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// The image: `redis:7-alpine`.
pub const IMAGE: (&str, &str) = ("redis", "7-alpine");

/// Why the container tier gave no Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum Unavailable {
    /// No Docker daemon answers: the tier is skipped.
    NoDaemon(String),
    /// A daemon answers, but the container did not start or did not answer.
    Failed(String),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NoDaemon(why) => write!(
                f,
                "skipped: no Docker daemon answers ({why}), so no {}:{} container",
                IMAGE.0, IMAGE.1
            ),
            Unavailable::Failed(why) => write!(
                f,
                "a Docker daemon answers, but the {}:{} container failed: {why}",
                IMAGE.0, IMAGE.1
            ),
        }
    }
}

/// A Redis container, removed when dropped. A container held by a `static`
/// (never dropped) is removed by a watchdog process once the test process is
/// gone (with the `docker` CLI, where there is one).
pub struct RedisContainer {
    url: String,
    id: String,
    /// Tells the thread that owns the container to remove it.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    owner: Option<std::thread::JoinHandle<()>>,
    watchdog: Option<Child>,
}

impl fmt::Debug for RedisContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisContainer")
            .field("url", &self.url)
            .field("id", &self.id)
            .finish()
    }
}

impl RedisContainer {
    /// Starts the container and waits until Redis accepts connections.
    ///
    /// The container lives on a thread of its own with its own runtime, so this
    /// works from plain tests and from inside a tokio runtime alike.
    pub fn start() -> Result<RedisContainer, Unavailable> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let owner = std::thread::Builder::new()
            .name("redis-container".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Unavailable::Failed(format!("no runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(async move {
                    match run().await {
                        Ok((container, url)) => {
                            let id = container.id().to_string();
                            if ready_tx.send(Ok((url, id))).is_err() {
                                let _ = container.rm().await;
                                return;
                            }
                            // Until the owner is dropped (or the process ends).
                            let _ = stop_rx.await;
                            let _ = container.rm().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| Unavailable::Failed(format!("cannot spawn a thread: {e}")))?;
        let ready = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(Unavailable::Failed("the container thread died".into())));
        let (url, id) = match ready {
            Ok(started) => started,
            Err(e) => {
                let _ = owner.join();
                return Err(e);
            }
        };
        let watchdog = spawn_watchdog(&id);
        Ok(RedisContainer {
            url,
            id,
            stop: Some(stop_tx),
            owner: Some(owner),
            watchdog,
        })
    }

    /// `redis://<host>:<mapped port>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for RedisContainer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Starts the container; on failure, asks the daemon whether it is there at
/// all, to tell a machine without Docker from a container that failed.
async fn run() -> Result<(ContainerAsync<GenericImage>, String), Unavailable> {
    let request = GenericImage::new(IMAGE.0, IMAGE.1)
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_cmd(["redis-server", "--save", "", "--appendonly", "no"])
        .with_startup_timeout(Duration::from_secs(120));
    let container = match request.start().await {
        Ok(c) => c,
        Err(e) => {
            return Err(match daemon_answers().await {
                Err(why) => Unavailable::NoDaemon(why),
                Ok(()) => Unavailable::Failed(e.to_string()),
            })
        }
    };
    let host = container
        .get_host()
        .await
        .map_err(|e| Unavailable::Failed(format!("no host for the container: {e}")))?;
    let port = container
        .get_host_port_ipv4(6379)
        .await
        .map_err(|e| Unavailable::Failed(format!("port 6379 is not mapped: {e}")))?;
    Ok((container, format!("redis://{host}:{port}")))
}

/// Whether a Docker daemon answers `/_ping` where the environment says it is
/// (`DOCKER_HOST`, else the default socket).
pub async fn daemon_answers() -> Result<(), String> {
    let docker = testcontainers::bollard::Docker::connect_with_defaults()
        .map_err(|e| format!("cannot reach a Docker daemon: {e}"))?;
    docker
        .ping()
        .await
        .map(|_| ())
        .map_err(|e| format!("the Docker daemon does not answer: {e}"))
}

/// Removes the container once this test process is gone (statics are never
/// dropped); best effort, with the `docker` CLI.
fn spawn_watchdog(id: &str) -> Option<Child> {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; docker rm -f {id} >/dev/null 2>&1"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}
